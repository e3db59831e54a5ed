//! `ferry status` and `ferry watch` (also `run --watch` and `rerun --watch`):
//! a run's steps as a table, its JSON view, and following a run until it ends.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Read, get_run, get_run_request, summary_json};
use crate::render;

fn step_time(step: &proto::StepView, now: i64) -> String {
    if step.started_ms == 0 {
        return String::new();
    }
    let end = if step.finished_ms > 0 {
        step.finished_ms
    } else {
        now
    };
    render::duration_ms(end - step.started_ms)
}

/// What a step's STATE column says: "cached" or "reused" for a step that took
/// an earlier run's result instead of running.
fn step_state(step: &proto::StepView) -> &str {
    if step.reused.is_empty() {
        &step.state
    } else {
        &step.reused
    }
}

/// What a step's NOTE column says: where a cached or reused result came from,
/// and the step's reason.
fn step_note(step: &proto::StepView) -> String {
    if step.reused.is_empty() {
        return step.reason.clone();
    }
    let from = format!("from run {} step {}", step.reused_run, step.reused_step);
    if step.reason.is_empty() {
        from
    } else {
        format!("{from}; {}", step.reason)
    }
}

fn step_rows(view: &proto::RunView, now: i64) -> Vec<Vec<String>> {
    view.steps
        .iter()
        .map(|step| {
            vec![
                step.name.clone(),
                step_state(step).to_string(),
                if step.attempt > 0 {
                    step.attempt.to_string()
                } else {
                    String::new()
                },
                step.worker.clone(),
                step_time(step, now),
                if step.has_exit_code {
                    step.exit_code.to_string()
                } else {
                    String::new()
                },
                step_note(step),
            ]
        })
        .collect()
}

const STEP_HEADERS: [&str; 7] = ["STEP", "STATE", "ATTEMPT", "WORKER", "TIME", "EXIT", "NOTE"];

fn metrics_json(metrics: &[proto::Metric]) -> serde_json::Value {
    metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "value": m.value,
                "step": if m.has_step { json!(m.step) } else { json!(null) },
                "count": m.count.max(1),
            })
        })
        .collect()
}

fn view_json(view: &proto::RunView) -> serde_json::Value {
    let summary = view.summary.clone().unwrap_or_default();
    let mut json = summary_json(&summary);
    json["bundle"] = json!(view.bundle_digest);
    json["params"] = json!(view.params);
    if !view.trimmed.is_empty() {
        json["trimmed"] = json!(view.trimmed);
    }
    json["step_counts"] = json!(view.step_counts);
    json["steps_offset"] = json!(view.steps_offset);
    json["steps_matched"] = json!(view.steps_matched);
    json["steps"] = view
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "state": s.state,
                "attempt": s.attempt,
                "worker": s.worker,
                "started_ms": s.started_ms,
                "finished_ms": s.finished_ms,
                "exit_code": if s.has_exit_code { json!(s.exit_code) } else { json!(null) },
                "reason": s.reason,
                "needs": s.needs,
                "reused": if s.reused.is_empty() { json!(null) } else { json!(s.reused) },
                "reused_run": if s.reused.is_empty() { json!(null) } else { json!(s.reused_run) },
                "reused_step": if s.reused.is_empty() { json!(null) } else { json!(s.reused_step) },
                "cache_key": s.cache_key,
                "inputs": s.inputs.iter().map(|i| json!({
                    "name": i.name,
                    "digest": i.digest,
                    "size": i.size,
                })).collect::<Vec<_>>(),
                "trial_of": if s.trial_of.is_empty() { json!(null) } else { json!(s.trial_of) },
                "matrix": s.matrix,
                "metrics": metrics_json(&s.metrics),
                "attempts": s.attempts.iter().map(|a| json!({
                    "attempt": a.attempt,
                    "worker": a.worker,
                    "outcome": a.outcome,
                    "started_ms": a.started_ms,
                    "finished_ms": a.finished_ms,
                    "exit_code": if a.has_exit_code { json!(a.exit_code) } else { json!(null) },
                    "reason": a.reason,
                    "gpus": a.gpus,
                    "cpu_time_ms": a.cpu_time_ms,
                    "peak_memory_bytes": a.peak_memory_bytes,
                    "image_id": (!a.image_id.is_empty()).then_some(&a.image_id),
                    "image_repo_digest": (!a.image_repo_digest.is_empty()).then_some(&a.image_repo_digest),
                    "metrics": metrics_json(&a.metrics),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json
}

/// The lines under `ferry status`'s first line that say how a run came to be
/// and what is left of it.
fn origin_lines(summary: &proto::RunSummary) -> Vec<String> {
    let mut lines = Vec::new();
    if summary.rerun_of > 0 {
        lines.push(format!("re-run of run {}", summary.rerun_of));
    }
    if !summary.schedule.is_empty() {
        let tick = if summary.schedule_tick_ms > 0 {
            format!(
                " for its tick at {}",
                render::utc_time(summary.schedule_tick_ms)
            )
        } else {
            String::new()
        };
        lines.push(format!("started by schedule {}{tick}", summary.schedule));
    }
    if summary.collected {
        lines.push("collected: its logs and artifacts were deleted by 'ferry gc'".to_string());
    }
    lines
}

/// Which steps `ferry status` asks for: `--state`, `--page` (from 1), `--limit`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct StepQuery {
    /// Only the steps in this state (waiting, queued, assigned, running,
    /// succeeded, failed, timed_out, cancelled, skipped).
    #[arg(long, value_name = "STATE")]
    pub(crate) state: Option<String>,
    /// Which page of steps to show, from 1.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) page: u32,
    /// Steps per page (at most 5,000; default: every step of a run of at most
    /// 1,000 steps, else 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub(crate) limit: Option<u32>,
}

impl StepQuery {
    /// Whether it asks for anything but the default.
    fn paged(&self) -> bool {
        self.state.is_some() || self.page > 1 || self.limit.is_some()
    }

    fn request(&self, run: u64, read: Read) -> proto::GetRunRequest {
        let page = self.page.max(1);
        // The coordinator's default page is 100 steps: a later page needs its size.
        let limit = self
            .limit
            .unwrap_or(if page > 1 { DEFAULT_PAGE } else { 0 });
        proto::GetRunRequest {
            run_id: run,
            stale: read.stale,
            step_offset: (page - 1).saturating_mul(limit),
            step_limit: limit,
            step_state: self.state.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// The page size the coordinator gives a run too large to show whole.
const DEFAULT_PAGE: u32 = 100;

/// The steps' counts by state, in the order a step goes through them:
/// `succeeded 99000 · running 800 · queued 200`.
fn counts_line(counts: &std::collections::HashMap<String, u64>) -> String {
    const ORDER: [&str; 9] = [
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "skipped",
        "running",
        "assigned",
        "queued",
        "waiting",
    ];
    let mut parts: Vec<String> = ORDER
        .iter()
        .filter_map(|state| counts.get(*state).map(|n| format!("{state} {}", n)))
        .collect();
    // A state this client does not know yet is shown too.
    let mut others: Vec<(&String, &u64)> = counts
        .iter()
        .filter(|(state, _)| !ORDER.contains(&state.as_str()))
        .collect();
    others.sort();
    parts.extend(
        others
            .into_iter()
            .map(|(state, n)| format!("{state} {}", n)),
    );
    parts.join(" · ")
}

/// The line under a page of steps: which steps these are and how to see more.
fn page_line(view: &proto::RunView, query: &StepQuery, run: u64) -> String {
    let shown = view.steps.len() as u64;
    let which = query
        .state
        .as_deref()
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    let matched = view.steps_matched;
    if matched == 0 {
        return format!("no{which} steps");
    }
    if shown == 0 {
        return format!(
            "no{which} steps from step {}: there are {matched}",
            view.steps_offset + 1
        );
    }
    let first = view.steps_offset + 1;
    let last = view.steps_offset + shown;
    let mut line = format!("{which} steps {}–{} of {}", first, last, matched);
    line = line.trim_start().to_string();
    if last < matched {
        let page = query.page.max(1) + 1;
        let limit = query
            .limit
            .map(|l| format!(" --limit {l}"))
            .unwrap_or_default();
        let state = query
            .state
            .as_deref()
            .map(|s| format!(" --state {s}"))
            .unwrap_or_default();
        line.push_str(&format!(
            "; next: ferry status {run}{state} --page {page}{limit}"
        ));
    }
    line
}

/// `ferry status RUN`: the run, then a row per step (and, with `attempts`, a
/// row per attempt of each step). A run too large to list whole (or a page
/// asked for) also gets its steps' counts by state and a line saying which
/// steps are listed.
pub(crate) async fn status(
    client: &mut Client,
    run: u64,
    attempts: bool,
    query: &StepQuery,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let view = get_run_request(client, query.request(run, read)).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&view_json(&view))?);
        return Ok(());
    }
    let summary = view.summary.clone().unwrap_or_default();
    let now = render::now_ms();
    if !view.trimmed.is_empty() {
        eprintln!("note: {}", view.trimmed);
    }
    println!(
        "run {} ({}) {} — submitted by {}, {} of {} steps done{}",
        summary.run_id,
        summary.pipeline,
        summary.state,
        summary.submitter,
        summary.steps_done,
        summary.steps_total,
        if summary.steps_cached > 0 {
            format!(" ({} from earlier runs)", summary.steps_cached)
        } else {
            String::new()
        }
    );
    for line in origin_lines(&summary) {
        println!("{line}");
    }
    if !summary.reason.is_empty() {
        println!("{}", summary.reason);
    }
    if summary.priority != 0 || !matches!(summary.project.as_str(), "" | "default") {
        println!("project {}, priority {}", summary.project, summary.priority);
    }
    let paged = query.paged() || view.steps_matched > view.steps.len() as u64;
    if paged {
        println!("steps: {}", counts_line(&view.step_counts));
    }
    if !view.steps.is_empty() || !paged {
        println!("{}", render::table(&STEP_HEADERS, &step_rows(&view, now)));
    }
    if paged {
        println!("{}", page_line(&view, query, run));
    }
    if attempts {
        let rows: Vec<Vec<String>> = view
            .steps
            .iter()
            .flat_map(|step| {
                step.attempts.iter().map(move |a| {
                    vec![
                        step.name.clone(),
                        a.attempt.to_string(),
                        a.worker.clone(),
                        a.outcome.clone(),
                        if a.started_ms > 0 && a.finished_ms > 0 {
                            render::duration_ms(a.finished_ms - a.started_ms)
                        } else {
                            String::new()
                        },
                        if a.has_exit_code {
                            a.exit_code.to_string()
                        } else {
                            String::new()
                        },
                        if a.finished_ms > 0 {
                            render::duration_ms(a.cpu_time_ms as i64)
                        } else {
                            String::new()
                        },
                        if a.peak_memory_bytes > 0 {
                            render::bytes(a.peak_memory_bytes)
                        } else {
                            String::new()
                        },
                        a.gpus
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        // `sha256:` and the first 12 hex digits, as `docker images`.
                        a.image_id.strip_prefix("sha256:").map_or_else(
                            || a.image_id.clone(),
                            |hex| hex.chars().take(12).collect(),
                        ),
                        a.reason.clone(),
                    ]
                })
            })
            .collect();
        println!();
        println!(
            "{}",
            render::table(
                &[
                    "STEP", "ATTEMPT", "WORKER", "OUTCOME", "TIME", "EXIT", "CPU", "PEAK MEM",
                    "GPUS", "IMAGE", "REASON"
                ],
                &rows
            )
        );
    }
    Ok(())
}

/// Follows a run until it ends. On a terminal the table is redrawn in place;
/// otherwise each change of a step's state is printed once.
pub(crate) async fn watch(client: &mut Client, run: u64) -> anyhow::Result<ExitCode> {
    let tty = std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let started = std::time::Instant::now();
    loop {
        let view = get_run(client, run, Read::default()).await?;
        let summary = view.summary.clone().unwrap_or_default();
        let now = render::now_ms();
        let mut out = std::io::stdout().lock();
        if tty {
            if drawn_lines > 0 {
                write!(out, "\x1b[{drawn_lines}A\x1b[J")?;
            }
            let table = render::table(&STEP_HEADERS, &step_rows(&view, now));
            let header = format!(
                "run {} ({}) {} {} {}/{} steps",
                summary.run_id,
                summary.pipeline,
                summary.state,
                render::bar(summary.steps_done, summary.steps_total, 20),
                summary.steps_done,
                summary.steps_total
            );
            writeln!(out, "{header}\n{table}")?;
            drawn_lines = 2 + table.matches('\n').count();
        } else {
            for step in &view.steps {
                let state = step_state(step);
                if seen.get(&step.name).map(String::as_str) != Some(state) {
                    seen.insert(step.name.clone(), state.to_string());
                    let mut line = format!(
                        "[{}/{}] {:<12} {}",
                        summary.steps_done, summary.steps_total, step.name, state
                    );
                    if step.attempt > 0 {
                        line.push_str(&format!(" (attempt {}", step.attempt));
                        if !step.worker.is_empty() {
                            line.push_str(&format!(" on {}", step.worker));
                        }
                        line.push(')');
                    }
                    let time = step_time(step, now);
                    if step.finished_ms > 0 && !time.is_empty() {
                        line.push_str(&format!(" in {time}"));
                    }
                    let note = step_note(step);
                    if !note.is_empty() && step.state != "running" {
                        line.push_str(&format!(" — {note}"));
                    }
                    writeln!(out, "{line}")?;
                }
            }
        }
        out.flush()?;
        drop(out);
        if summary.state != "running" {
            let took = if summary.finished_ms > 0 {
                render::duration_ms(summary.finished_ms - summary.submitted_ms)
            } else {
                render::duration_ms(started.elapsed().as_millis() as i64)
            };
            println!("run {run} {} in {took}", summary.state);
            return Ok(if summary.state == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
