//! A run's page: its summary, the DAG (trials of a sweep grouped into one box),
//! its steps, and the actions; and `/runs/N/events`, the server-sent events
//! that keep the page's states live.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use ferry_common::proto;
use futures::{Stream, StreamExt};
use minijinja::context;
use serde::Serialize;

use super::{now_ms, whole_run};
use crate::commands::runs::run_steps;
use crate::render;
use crate::ui::error::PageResult;
use crate::ui::{Shared, dag};

/// How often the events stream asks the cluster for the run's states.
const POLL: Duration = Duration::from_millis(400);

/// States in the order a group of trials is coloured by: the first any of its
/// trials is in.
const GROUP_PRECEDENCE: &[&str] = &[
    "running",
    "assigned",
    "queued",
    "failed",
    "timed_out",
    "waiting",
    "cancelled",
    "skipped",
    "succeeded",
];

/// One box of the DAG: a step, or every trial of a sweep.
#[derive(Serialize, Clone, PartialEq, Debug)]
pub(crate) struct Shape {
    pub(crate) key: String,
    pub(crate) state: String,
    pub(crate) detail: String,
    pub(crate) href: String,
    /// The steps it stands for (indices in the run view).
    #[serde(skip)]
    members: Vec<usize>,
}

/// The run's graph as drawn. Pure.
#[derive(Debug, PartialEq)]
pub(crate) struct Graph {
    pub(crate) boxes: Vec<Shape>,
    pub(crate) edges: Vec<(usize, usize)>,
}

/// Groups the run's steps into boxes (a sweep's trials by `trial_of`) and
/// links each box to those it needs.
pub(crate) fn graph(run: u64, steps: &[proto::StepView]) -> Graph {
    let mut boxes: Vec<Shape> = Vec::new();
    let mut box_of_key: HashMap<&str, usize> = HashMap::new();
    let mut box_of_step: HashMap<&str, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        let key = if step.trial_of.is_empty() {
            step.name.as_str()
        } else {
            step.trial_of.as_str()
        };
        let index = *box_of_key.entry(key).or_insert_with(|| {
            boxes.push(Shape {
                key: key.to_string(),
                state: String::new(),
                detail: String::new(),
                href: String::new(),
                members: Vec::new(),
            });
            boxes.len() - 1
        });
        boxes[index].members.push(i);
        box_of_step.insert(step.name.as_str(), index);
    }
    for b in &mut boxes {
        describe(run, b, steps);
    }
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for step in steps {
        let to = box_of_step[step.name.as_str()];
        for need in &step.needs {
            if let Some(&from) = box_of_step.get(need.as_str())
                && from != to
                && !edges.contains(&(from, to))
            {
                edges.push((from, to));
            }
        }
    }
    edges.sort_unstable();
    Graph { boxes, edges }
}

/// A box's state, its second line and its link.
fn describe(run: u64, b: &mut Shape, steps: &[proto::StepView]) {
    let members: Vec<&proto::StepView> = b.members.iter().map(|i| &steps[*i]).collect();
    if let [step] = members.as_slice()
        && step.trial_of.is_empty()
    {
        b.state = step.state.clone();
        b.detail = step_detail(step);
        b.href = format!("/runs/{run}/steps/{}", crate::ui::query::encode(&step.name));
        return;
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &members {
        *counts.entry(step.state.as_str()).or_default() += 1;
    }
    b.state = GROUP_PRECEDENCE
        .iter()
        .find(|s| counts.contains_key(**s))
        .map(|s| s.to_string())
        .unwrap_or_else(|| members[0].state.clone());
    let parts: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let reused = members.iter().filter(|s| !s.reused.is_empty()).count();
    let mut detail = format!("{} trials: {}", members.len(), parts.join(", "));
    if reused > 0 {
        detail.push_str(&format!(" ({reused} cached)"));
    }
    b.detail = detail;
    b.href = format!("#sweep-{}", b.key);
}

/// What a single step's box says under its name.
fn step_detail(step: &proto::StepView) -> String {
    match step.reused.as_str() {
        "" => {}
        how => return format!("{how} from run {}", step.reused_run),
    }
    let mut parts = Vec::new();
    if step.attempt > 1 {
        parts.push(format!("attempt {}", step.attempt));
    }
    if step.started_ms > 0 {
        let end = if step.finished_ms > 0 {
            step.finished_ms
        } else {
            now_ms()
        };
        parts.push(render::duration_ms(end - step.started_ms));
    }
    parts.join(", ")
}

#[derive(Serialize)]
struct StepRow {
    name: String,
    href: String,
    state: String,
    attempt: u32,
    worker: String,
    duration: String,
    reason: String,
    reused: String,
    reused_run: u64,
    matrix: String,
}

fn step_row(run: u64, step: &proto::StepView) -> StepRow {
    let duration = if step.started_ms > 0 {
        let end = if step.finished_ms > 0 {
            step.finished_ms
        } else {
            now_ms()
        };
        render::duration_ms(end - step.started_ms)
    } else {
        String::new()
    };
    StepRow {
        name: step.name.clone(),
        href: format!("/runs/{run}/steps/{}", crate::ui::query::encode(&step.name)),
        state: step.state.clone(),
        attempt: step.attempt,
        worker: step.worker.clone(),
        duration,
        reason: step.reason.clone(),
        reused: step.reused.clone(),
        reused_run: step.reused_run,
        matrix: crate::compare::key_values(&step.matrix),
    }
}

/// A box in the steps table: a step, or a sweep with its trials.
#[derive(Serialize)]
struct Section {
    key: String,
    state: String,
    detail: String,
    sweep: bool,
    rows: Vec<StepRow>,
}

/// `GET /runs/{run}`.
pub(crate) async fn page(State(ui): State<Shared>, Path(run): Path<u64>) -> PageResult {
    let view = whole_run(&ui, run, false).await?;
    let summary = view.summary.clone().unwrap_or_default();
    let drawn = graph(run, &view.steps);
    let nodes: Vec<dag::Node<'_>> = drawn
        .boxes
        .iter()
        .map(|b| dag::Node {
            key: &b.key,
            label: &b.key,
            state: &b.state,
            detail: (!b.detail.is_empty()).then_some(b.detail.as_str()),
            href: &b.href,
        })
        .collect();
    let svg = dag::render(&nodes, &drawn.edges);
    let sections: Vec<Section> = drawn
        .boxes
        .iter()
        .map(|b| Section {
            key: b.key.clone(),
            state: b.state.clone(),
            detail: b.detail.clone(),
            sweep: b.members.len() > 1 || !view.steps[b.members[0]].trial_of.is_empty(),
            rows: b
                .members
                .iter()
                .map(|i| step_row(run, &view.steps[*i]))
                .collect(),
        })
        .collect();
    // What a re-run may start from: any step or sweep, by the name written.
    let from_choices: Vec<&str> = drawn.boxes.iter().map(|b| b.key.as_str()).collect();
    let end = if summary.finished_ms > 0 {
        summary.finished_ms
    } else {
        now_ms()
    };
    let mut params: Vec<(&String, &String)> = view.params.iter().collect();
    params.sort();
    ui.views.page(
        "run.html",
        context! {
            title => format!("Run {run}"),
            run => run,
            summary => context! {
                pipeline => summary.pipeline,
                state => summary.state,
                submitter => summary.submitter,
                project => summary.project,
                submitted_ms => summary.submitted_ms,
                duration => render::duration_ms(end - summary.submitted_ms),
                steps => run_steps(view.summary.as_ref().unwrap_or(&Default::default())),
                reason => summary.reason,
                rerun_of => summary.rerun_of,
                schedule => summary.schedule,
                collected => summary.collected,
            },
            running => summary.state == "running",
            params => params,
            bundle => view.bundle_digest,
            trimmed => view.trimmed,
            dag => svg,
            sections => sections,
            from_choices => from_choices,
            csrf => ui.guard.token(),
            request_id => ferry_client::new_request_id(),
        },
        &ui.guard.cookie(),
    )
}

/// What the events stream sends: the run's state and every box's.
#[derive(Serialize, PartialEq, Clone)]
struct Update {
    state: String,
    steps: String,
    boxes: Vec<BoxUpdate>,
    /// Each step's state, for the steps table.
    step_states: BTreeMap<String, String>,
    done: bool,
}

#[derive(Serialize, PartialEq, Clone)]
struct BoxUpdate {
    key: String,
    state: String,
    detail: String,
}

fn update(run: u64, view: &proto::RunView) -> Update {
    let summary = view.summary.clone().unwrap_or_default();
    let drawn = graph(run, &view.steps);
    Update {
        done: summary.state != "running",
        steps: run_steps(&summary),
        state: summary.state,
        boxes: drawn
            .boxes
            .into_iter()
            .map(|b| BoxUpdate {
                key: b.key,
                state: b.state,
                detail: b.detail,
            })
            .collect(),
        step_states: view
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.state.clone()))
            .collect(),
    }
}

/// `GET /runs/{run}/events`: an `update` event whenever the run's states
/// change, until it ends (then one last event, and the stream closes).
pub(crate) async fn events(
    State(ui): State<Shared>,
    Path(run): Path<u64>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = ui.clone();
    let stream = async_stream::stream! {
        let mut last: Option<Update> = None;
        let mut failures = 0u32;
        loop {
            match whole_run(&ui, run, false).await {
                Ok(view) => {
                    failures = 0;
                    let now = update(run, &view);
                    if last.as_ref() != Some(&now) {
                        if let Ok(data) = serde_json::to_string(&now) {
                            yield Ok(Event::default().event("update").data(data));
                        }
                        if now.done {
                            break;
                        }
                        last = Some(now);
                    }
                }
                Err(error) => {
                    yield Ok(Event::default().event("problem").data(error.to_string()));
                    // Asking again will not help: the run is gone, or not
                    // the user's to see, or the request is wrong.
                    if matches!(error.status().as_u16(), 400 | 403 | 404) {
                        break;
                    }
                    failures += 1;
                }
            }
            // Polls more slowly while the cluster keeps failing.
            tokio::time::sleep(POLL * (1 << failures.min(4))).await;
        }
    };
    let stream = stream.take_until(async move { stop.stopped().await });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, state: &str, needs: &[&str], trial_of: &str) -> proto::StepView {
        proto::StepView {
            name: name.into(),
            state: state.into(),
            needs: needs.iter().map(|n| n.to_string()).collect(),
            trial_of: trial_of.into(),
            ..Default::default()
        }
    }

    #[test]
    fn trials_are_grouped_and_linked_once() {
        let steps = vec![
            step("prep", "succeeded", &[], ""),
            step("train.0", "succeeded", &["prep"], "train"),
            step("train.1", "running", &["prep"], "train"),
            step("train.2", "failed", &["prep"], "train"),
            step("select", "waiting", &["train.0", "train.1", "train.2"], ""),
        ];
        let g = graph(7, &steps);
        let keys: Vec<&str> = g.boxes.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["prep", "train", "select"]);
        assert_eq!(g.edges, [(0, 1), (1, 2)]);
        assert_eq!(g.boxes[1].state, "running");
        assert_eq!(
            g.boxes[1].detail,
            "3 trials: 1 failed, 1 running, 1 succeeded"
        );
        assert_eq!(g.boxes[0].href, "/runs/7/steps/prep");
        assert_eq!(g.boxes[1].href, "#sweep-train");
    }

    #[test]
    fn a_finished_sweep_with_a_failure_is_failed() {
        let steps = vec![
            step("t.0", "succeeded", &[], "t"),
            step("t.1", "failed", &[], "t"),
        ];
        assert_eq!(graph(1, &steps).boxes[0].state, "failed");
    }

    #[test]
    fn reused_steps_say_where_from() {
        let mut s = step("split", "succeeded", &[], "");
        s.reused = "cached".into();
        s.reused_run = 3;
        assert_eq!(graph(4, &[s]).boxes[0].detail, "cached from run 3");
    }
}
