//! The runs page: newest first, filtered by pipeline, state, project and a
//! `--where` condition, a page of [`PAGE`] runs at a time.

use std::collections::BTreeSet;

use axum::extract::{Query, State};
use ferry_common::proto;
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::now_ms;
use crate::commands::runs::{run_note, run_steps};
use crate::compare;
use crate::render;
use crate::ui::Shared;
use crate::ui::error::{PageResult, UiError};
use crate::ui::query::encode;

/// Runs a page shows.
pub(crate) const PAGE: usize = 100;

#[derive(Deserialize, Default, Serialize, Clone)]
#[serde(default)]
pub(crate) struct Filters {
    pub(crate) pipeline: String,
    pub(crate) state: String,
    pub(crate) project: String,
    #[serde(rename = "where")]
    pub(crate) conditions: String,
    /// Only runs older than this one (the next page).
    #[serde(skip_serializing)]
    pub(crate) before: Option<u64>,
}

impl Filters {
    fn any(&self) -> bool {
        !(self.pipeline.is_empty()
            && self.state.is_empty()
            && self.project.is_empty()
            && self.conditions.is_empty())
    }

    fn keeps(&self, run: &proto::RunSummary) -> bool {
        (self.pipeline.is_empty() || run.pipeline == self.pipeline)
            && (self.state.is_empty() || run.state == self.state)
            && (self.project.is_empty() || run.project == self.project)
    }

    /// The query string of these filters with `before` (none: the newest).
    fn older(&self, before: Option<u64>) -> String {
        let mut pairs = vec![];
        for (key, value) in [
            ("pipeline", &self.pipeline),
            ("state", &self.state),
            ("project", &self.project),
            ("where", &self.conditions),
        ] {
            if !value.is_empty() {
                pairs.push(format!("{key}={}", encode(value)));
            }
        }
        if let Some(before) = before {
            pairs.push(format!("before={before}"));
        }
        format!("/runs?{}", pairs.join("&"))
    }
}

#[derive(Serialize)]
struct Row {
    id: u64,
    pipeline: String,
    state: String,
    steps: String,
    duration: String,
    submitted_ms: i64,
    submitter: String,
    project: String,
    where_values: Vec<String>,
    note: String,
}

fn row(run: &proto::RunSummary, where_names: &[String], now: i64) -> Row {
    let end = if run.finished_ms > 0 {
        run.finished_ms
    } else {
        now
    };
    Row {
        id: run.run_id,
        pipeline: run.pipeline.clone(),
        state: run.state.clone(),
        steps: run_steps(run),
        duration: render::duration_ms(end - run.submitted_ms),
        submitted_ms: run.submitted_ms,
        submitter: run.submitter.clone(),
        project: run.project.clone(),
        where_values: where_names
            .iter()
            .map(|name| compare::where_value(run, name))
            .collect(),
        note: run_note(run),
    }
}

/// What the page shows of a listing: the newest [`PAGE`] runs that pass the
/// filters, and the link to the older ones. Pure.
pub(crate) struct Listing {
    rows: Vec<Row>,
    matched: usize,
    older: Option<String>,
    pipelines: BTreeSet<String>,
    projects: BTreeSet<String>,
}

fn listing(runs: &[proto::RunSummary], filters: &Filters, now: i64) -> Listing {
    let where_names = compare::where_names(&filters.conditions);
    let mut pipelines = BTreeSet::new();
    let mut projects = BTreeSet::new();
    let mut matched = 0usize;
    let mut rows = Vec::with_capacity(PAGE);
    let mut more = false;
    // Oldest first from the cluster: newest first here.
    for run in runs.iter().rev() {
        pipelines.insert(run.pipeline.clone());
        if !run.project.is_empty() {
            projects.insert(run.project.clone());
        }
        if !filters.keeps(run) {
            continue;
        }
        matched += 1;
        if filters.before.is_some_and(|before| run.run_id >= before) {
            continue;
        }
        if rows.len() < PAGE {
            rows.push(row(run, &where_names, now));
        } else {
            more = true;
        }
    }
    let older = more
        .then(|| rows.last().map(|last| filters.older(Some(last.id))))
        .flatten();
    Listing {
        rows,
        matched,
        older,
        pipelines,
        projects,
    }
}

/// `GET /runs`.
pub(crate) async fn list(State(ui): State<Shared>, Query(filters): Query<Filters>) -> PageResult {
    let request = proto::ListRunsRequest {
        stale: false,
        r#where: filters.conditions.trim().to_string(),
        limit: 0,
    };
    let (runs, omitted, problem) = match ui
        .gateway
        .call(|mut client| {
            let request = request.clone();
            async move { client.list_runs(request).await }
        })
        .await
    {
        Ok(answer) => (answer.runs, answer.omitted.len(), None),
        // A condition the cluster cannot read: say so on the page, with the
        // form to fix it.
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            (Vec::new(), 0, Some(status.message().to_string()))
        }
        Err(status) => return Err(UiError::Cluster(status)),
    };
    let shown = listing(&runs, &filters, now_ms());
    ui.views.page(
        "runs.html",
        context! {
            title => "Runs",
            filters => &filters,
            filtered => filters.any(),
            problem => problem,
            runs => shown.rows,
            shown => shown.rows_len(),
            matched => shown.matched,
            omitted => omitted,
            older => shown.older,
            newest => filters.before.map(|_| filters.older(None)),
            pipelines => shown.pipelines,
            projects => shown.projects,
            where_names => compare::where_names(&filters.conditions),
        },
        &ui.guard.cookie(),
    )
}

impl Listing {
    fn rows_len(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u64, pipeline: &str, state: &str) -> proto::RunSummary {
        proto::RunSummary {
            run_id: id,
            pipeline: pipeline.into(),
            state: state.into(),
            submitted_ms: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn newest_first_filtered_and_paged() {
        let runs: Vec<_> = (1..=250)
            .map(|i| run(i, if i % 2 == 0 { "even" } else { "odd" }, "succeeded"))
            .collect();
        let filters = Filters {
            pipeline: "even".into(),
            ..Default::default()
        };
        let page = listing(&runs, &filters, 2_000);
        assert_eq!(page.matched, 125);
        assert_eq!(page.rows.len(), PAGE);
        assert_eq!(page.rows[0].id, 250);
        assert_eq!(page.rows[99].id, 52);
        let older = page.older.expect("a next page");
        assert_eq!(older, "/runs?pipeline=even&before=52");
        let next = listing(
            &runs,
            &Filters {
                before: Some(52),
                ..filters
            },
            2_000,
        );
        assert_eq!(next.rows.len(), 25);
        assert_eq!(next.rows[0].id, 50);
        assert!(next.older.is_none());
        assert_eq!(page.pipelines.len(), 2);
    }
}
