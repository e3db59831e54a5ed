//! `ferry metrics`: the metrics a run's steps reported, per step and name, and
//! the best step by one of them.

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Read, get_run_view};
use crate::compare::{self, Goal};
use crate::render;

/// The metrics `ferry metrics` shows for a step: those of its latest attempt, or,
/// for a step that took an earlier run's result, those of the attempt that
/// produced it. None for a step that has neither.
fn shown_metrics(step: &proto::StepView) -> Option<(Option<u32>, &[proto::Metric])> {
    match step.attempts.last() {
        Some(attempt) => Some((Some(attempt.attempt), attempt.metrics.as_slice())),
        None if !step.metrics.is_empty() => Some((None, step.metrics.as_slice())),
        None => None,
    }
}

/// `ferry metrics RUN`: the metrics of each step's latest attempt (or, for a
/// cached step, of the attempt that produced its result). With `metric`, the
/// steps are sorted by it, best first, and the best one is marked.
pub(crate) async fn metrics(
    client: &mut Client,
    run: u64,
    metric: Option<&str>,
    goal: Goal,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    // JSON is for scripts: every value (a training curve); the table shows the
    // last value of each metric and how many there were.
    let view = get_run_view(client, run, read, output == Output::Json).await?;
    let shown: Vec<(&proto::StepView, Option<u32>, &[proto::Metric])> = view
        .steps
        .iter()
        .filter_map(|step| {
            let (attempt, metrics) = shown_metrics(step)?;
            Some((step, attempt, metrics))
        })
        .collect();
    // Steps in pipeline order, or best first by the metric asked for.
    let value_of = |metrics: &[proto::Metric], name: &str| {
        metrics
            .iter()
            .rev()
            .find(|m| m.name == name)
            .map(|m| m.value)
    };
    let (order, best) = match metric {
        Some(name) => {
            let values: Vec<Option<f64>> =
                shown.iter().map(|(_, _, m)| value_of(m, name)).collect();
            let order = compare::rank(&values, goal);
            let best = order
                .first()
                .copied()
                .filter(|i| values[*i].is_some_and(|v| !v.is_nan()));
            (order, best)
        }
        None => ((0..shown.len()).collect(), None),
    };
    if output == Output::Json {
        let steps: Vec<_> = order
            .iter()
            .map(|i| {
                let (step, attempt, metrics) = shown[*i];
                let mut entry = json!({
                    "step": step.name,
                    "attempt": attempt,
                    "metrics": metrics.iter().map(|m| json!({
                        "name": m.name,
                        "value": m.value,
                        "step": if m.has_step { json!(m.step) } else { json!(null) },
                    })).collect::<Vec<_>>(),
                });
                if !step.reused.is_empty() {
                    entry["reused"] = json!(step.reused);
                    entry["reused_run"] = json!(step.reused_run);
                    entry["reused_step"] = json!(step.reused_step);
                }
                if !step.trial_of.is_empty() {
                    entry["trial_of"] = json!(step.trial_of);
                    entry["matrix"] = json!(step.matrix);
                }
                if metric.is_some() {
                    entry["best"] = json!(best == Some(*i));
                }
                entry
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&steps)?);
        return Ok(());
    }
    let trials = shown.iter().any(|(step, _, _)| !step.matrix.is_empty());
    let mut rows = Vec::new();
    for i in &order {
        let (step, attempt, metrics) = shown[*i];
        for (name, _) in compare::last_values(metrics) {
            let values: Vec<&proto::Metric> = metrics.iter().filter(|m| m.name == name).collect();
            let last = values.last().expect("a value per name");
            let mut row = vec![
                step.name.clone(),
                match attempt {
                    Some(attempt) => attempt.to_string(),
                    None => step.reused.clone(),
                },
                name.clone(),
                render::metric(last.value),
                if last.has_step {
                    last.step.to_string()
                } else {
                    String::new()
                },
                values
                    .iter()
                    .map(|m| m.count.max(1))
                    .sum::<u32>()
                    .to_string(),
            ];
            if trials {
                row.push(compare::key_values(&step.matrix));
            }
            if metric.is_some() {
                let marked = best == Some(*i) && Some(name.as_str()) == metric;
                row.push(if marked { "*".into() } else { String::new() });
            }
            rows.push(row);
        }
    }
    if rows.is_empty() {
        println!(
            "run {run} has no metrics (a step reports them as JSON lines in the file named by FERRY_METRICS)"
        );
        return Ok(());
    }
    let mut headers = vec!["STEP", "ATTEMPT", "METRIC", "LAST", "AT STEP", "VALUES"];
    if trials {
        headers.push("MATRIX");
    }
    if metric.is_some() {
        headers.push("BEST");
    }
    println!("{}", render::table(&headers, &rows));
    if let Some(name) = metric {
        match best {
            Some(i) => {
                let (step, _, metrics) = shown[i];
                let value = value_of(metrics, name).unwrap_or(f64::NAN);
                let matrix = if step.matrix.is_empty() {
                    String::new()
                } else {
                    format!(", {}", compare::key_values(&step.matrix))
                };
                println!(
                    "best: {} ({name} = {}{matrix})",
                    step.name,
                    render::metric(value)
                );
            }
            None => println!("best: no step of run {run} reported {name:?}"),
        }
    }
    Ok(())
}
