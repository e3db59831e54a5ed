//! `ferry runs`: the list of runs (filtered with `--where`), and `ferry runs
//! diff` and `ferry runs compare`, whose logic is [`crate::compare`]'s.

use ferry_common::proto;

use super::shared::{Client, Output, Read, Rpc, get_run, summary_json};
use crate::compare::{self, Goal};
use crate::render;

/// The NOTE column of `ferry runs`: how a run came to be, and whether it was
/// collected.
pub(crate) fn run_note(run: &proto::RunSummary) -> String {
    let mut notes = Vec::new();
    if run.rerun_of > 0 {
        notes.push(format!("rerun of {}", run.rerun_of));
    }
    if !run.schedule.is_empty() {
        notes.push(format!("schedule {}", run.schedule));
    }
    if run.collected {
        notes.push("collected".to_string());
    }
    notes.join(", ")
}

/// The STEPS column of `ferry runs`: done of total, and how many were cached.
pub(crate) fn run_steps(run: &proto::RunSummary) -> String {
    if run.steps_cached > 0 {
        format!(
            "{}/{} ({} cached)",
            run.steps_done, run.steps_total, run.steps_cached
        )
    } else {
        format!("{}/{}", run.steps_done, run.steps_total)
    }
}

/// `ferry runs [--where CONDITIONS] [--limit N]`.
pub(crate) async fn list(
    client: &mut Client,
    read: Read,
    conditions: Option<&str>,
    limit: u32,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListRunsRequest {
        stale: read.stale,
        r#where: conditions.unwrap_or_default().to_string(),
        limit,
    };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.list_runs(request).await
        })
        .await?;
    let runs = answer.runs;
    if !answer.omitted.is_empty() {
        let ids: Vec<String> = answer.omitted.iter().map(u64::to_string).collect();
        eprintln!(
            "left out, too large to list: run {} ('ferry status ID' shows each)",
            ids.join(", ")
        );
    }
    if (runs.len() as u64) < answer.matched {
        // On stderr, so that the table or the JSON stays whole for scripts.
        eprintln!(
            "the newest {} of {} runs{}; --limit N shows more{}",
            runs.len(),
            answer.matched,
            conditions
                .map(|c| format!(" meeting {c:?}"))
                .unwrap_or_default(),
            if limit == 0 {
                " (the rest did not fit in one answer: narrow it with --where)"
            } else {
                ", --limit 0 every run"
            }
        );
    }
    if output == Output::Json {
        let list: Vec<_> = runs.iter().map(summary_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if runs.is_empty() && conditions.is_some() {
        println!("no run meets {:?}", conditions.unwrap_or_default());
        return Ok(());
    }
    let columns = conditions.map(compare::where_names).unwrap_or_default();
    let now = render::now_ms();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![
                r.run_id.to_string(),
                r.pipeline.clone(),
                r.state.clone(),
                run_steps(r),
            ];
            row.extend(columns.iter().map(|name| compare::where_value(r, name)));
            row.extend([
                r.submitter.clone(),
                render::ago(r.submitted_ms, now),
                if r.finished_ms > 0 {
                    render::duration_ms(r.finished_ms - r.submitted_ms)
                } else {
                    String::new()
                },
                run_note(r),
            ]);
            row
        })
        .collect();
    let mut headers = vec!["RUN", "PIPELINE", "STATE", "STEPS"];
    headers.extend(columns.iter().map(String::as_str));
    headers.extend(["BY", "SUBMITTED", "TOOK", "NOTE"]);
    println!("{}", render::table(&headers, &rows));
    Ok(())
}

/// `ferry runs diff A B`.
pub(crate) async fn diff(
    client: &mut Client,
    a: u64,
    b: u64,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let view_a = get_run(client, a, read).await?;
    let view_b = get_run(client, b, read).await?;
    let diff = compare::diff_runs(&view_a, &view_b);
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
    } else {
        println!("{}", compare::render_diff(&diff));
    }
    Ok(())
}

/// `ferry runs compare RUN...`.
pub(crate) async fn compare(
    client: &mut Client,
    runs: &[u64],
    metric: Option<&str>,
    goal: Goal,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let mut summaries = Vec::new();
    for run in runs {
        summaries.push(
            get_run(client, *run, read)
                .await?
                .summary
                .unwrap_or_default(),
        );
    }
    let comparison = compare::compare_runs(&summaries, metric, goal);
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        println!("{}", compare::render_comparison(&comparison));
    }
    Ok(())
}
