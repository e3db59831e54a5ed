//! Metric curves: a run's (one chart per metric, every value over `step`, the
//! trials of a sweep overlaid with the best marked) and several runs' side by
//! side (`/compare?run=A&run=B`, with the table `ferry runs compare` gives).

use std::collections::BTreeMap;

use axum::extract::RawQuery;
use axum::extract::{Path, State};
use ferry_common::proto;
use minijinja::context;
use serde::Serialize;

use super::whole_run;
use crate::compare::{self, Goal};
use crate::ui::Shared;
use crate::ui::chart::{self, Emphasis};
use crate::ui::error::{PageResult, UiError};
use crate::ui::query::pairs;

/// Runs the comparison takes at most.
const MAX_COMPARED: usize = 20;

/// One line of a chart: a step's values of one metric, as (x, y).
#[derive(Debug, PartialEq, Clone)]
pub(crate) struct Curve {
    pub(crate) label: String,
    /// The sweep it is a trial of (empty: none), or the run it belongs to.
    pub(crate) group: String,
    pub(crate) points: Vec<(f64, f64)>,
}

/// The values a step shows: its latest attempt's, or, for a step that took an
/// earlier run's result, those of the attempt that made it.
fn shown(step: &proto::StepView) -> &[proto::Metric] {
    match step.attempts.last() {
        Some(attempt) => &attempt.metrics,
        None => &step.metrics,
    }
}

/// Every metric's curves, by name (in the order first reported). A value
/// without a `step` is placed at its position among the step's values of that
/// name. Pure.
pub(crate) fn curves(steps: &[proto::StepView], prefix: &str) -> Vec<(String, Vec<Curve>)> {
    let mut by_name: Vec<(String, Vec<Curve>)> = Vec::new();
    for step in steps {
        let mut per_name: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for value in shown(step) {
            let points = per_name.entry(value.name.as_str()).or_insert_with(|| {
                order.push(value.name.as_str());
                Vec::new()
            });
            let x = if value.has_step {
                value.step as f64
            } else {
                points.len() as f64
            };
            points.push((x, value.value));
        }
        for name in order {
            let points = per_name.remove(name).unwrap_or_default();
            let curve = Curve {
                label: format!("{prefix}{}", step.name),
                group: step.trial_of.clone(),
                points,
            };
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, list)) => list.push(curve),
                None => by_name.push((name.to_string(), vec![curve])),
            }
        }
    }
    by_name
}

/// When every curve is one value reported at x 0 (no `step`), spreads them
/// out: curve i at x i. True if it did. Pure.
pub(crate) fn spread_single_values(curves: &mut [Curve]) -> bool {
    if curves.len() < 2
        || !curves
            .iter()
            .all(|c| c.points.len() == 1 && c.points[0].0 == 0.0)
    {
        return false;
    }
    for (i, curve) in curves.iter_mut().enumerate() {
        curve.points[0].0 = i as f64;
    }
    true
}

/// The index of the best curve by its last value, under `goal`.
pub(crate) fn best(curves: &[Curve], goal: Goal) -> Option<usize> {
    let last: Vec<Option<f64>> = curves
        .iter()
        .map(|c| c.points.last().map(|p| p.1))
        .collect();
    compare::rank(&last, goal)
        .first()
        .copied()
        .filter(|i| last[*i].is_some_and(|v| !v.is_nan()))
}

/// One chart as SVG: `best` drawn on top; with many curves, the rest faint.
fn draw(
    name: &str,
    x_label: &str,
    curves: &[Curve],
    best: Option<usize>,
) -> Result<String, UiError> {
    let many = curves.len() > 12;
    let series: Vec<chart::Series<'_>> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| chart::Series {
            label: &c.label,
            points: &c.points,
            emphasis: if Some(i) == best {
                Emphasis::Best
            } else if many {
                Emphasis::Faint
            } else {
                Emphasis::Normal
            },
        })
        .collect();
    chart::line_chart(name, x_label, name, &series)
        .map_err(|error| UiError::Internal(format!("cannot draw {name}: {error}")))
}

#[derive(Serialize)]
struct Chart {
    name: String,
    svg: String,
    points: usize,
    best: String,
}

fn parse_goal(text: Option<&str>) -> Result<Goal, UiError> {
    match text.unwrap_or("max") {
        "" | "max" => Ok(Goal::Max),
        "min" => Ok(Goal::Min),
        other => Err(UiError::BadRequest(format!(
            "goal must be max or min, got {other:?}"
        ))),
    }
}

/// `GET /runs/{run}/metrics[?goal=min]`.
pub(crate) async fn run(
    State(ui): State<Shared>,
    Path(run): Path<u64>,
    RawQuery(query): RawQuery,
) -> PageResult {
    let query = pairs(query.as_deref());
    let goal = parse_goal(
        query
            .iter()
            .find(|(k, _)| k == "goal")
            .map(|(_, v)| v.as_str()),
    )?;
    let view = whole_run(&ui, run, true).await?;
    let mut charts = Vec::new();
    for (name, mut list) in curves(&view.steps, "") {
        // Steps that each reported one value without a `step` (a sweep's
        // final scores): side by side, one x per step, in pipeline order.
        let x_label = if spread_single_values(&mut list) {
            "step of the run (pipeline order)"
        } else {
            "step"
        };
        // The best is marked among the trials of a sweep (or among the steps,
        // when no sweep reported the metric).
        let trials: Vec<usize> = (0..list.len())
            .filter(|i| !list[*i].group.is_empty())
            .collect();
        let best = if trials.is_empty() {
            best(&list, goal)
        } else {
            let subset: Vec<Curve> = trials
                .iter()
                .map(|i| Curve {
                    label: String::new(),
                    group: String::new(),
                    points: list[*i].points.clone(),
                })
                .collect();
            best(&subset, goal).map(|b| trials[b])
        };
        charts.push(Chart {
            svg: draw(&name, x_label, &list, best)?,
            points: list.iter().map(|c| c.points.len()).sum(),
            best: best.map(|b| list[b].label.clone()).unwrap_or_default(),
            name,
        });
    }
    ui.views.page(
        "metrics.html",
        context! {
            title => format!("Metrics · run {run}"),
            run => run,
            goal => if goal == Goal::Min { "min" } else { "max" },
            charts => charts,
        },
        &ui.guard.cookie(),
    )
}

/// `GET /compare?run=A&run=B[&metric=M&goal=min]`.
pub(crate) async fn compare(State(ui): State<Shared>, RawQuery(query): RawQuery) -> PageResult {
    let query = pairs(query.as_deref());
    let goal = parse_goal(
        query
            .iter()
            .find(|(k, _)| k == "goal")
            .map(|(_, v)| v.as_str()),
    )?;
    let metric = query
        .iter()
        .find(|(k, v)| k == "metric" && !v.is_empty())
        .map(|(_, v)| v.clone());
    let mut runs: Vec<u64> = Vec::new();
    for (key, value) in &query {
        if key == "run" {
            let id = value.trim().parse::<u64>().map_err(|_| {
                UiError::BadRequest(format!("run must be a run number, got {value:?}"))
            })?;
            if !runs.contains(&id) {
                runs.push(id);
            }
        }
    }
    if runs.is_empty() {
        return Err(UiError::BadRequest(
            "select the runs to compare on the runs page (compare?run=A&run=B)".into(),
        ));
    }
    if runs.len() > MAX_COMPARED {
        return Err(UiError::BadRequest(format!(
            "at most {MAX_COMPARED} runs can be compared at once; {} were selected",
            runs.len()
        )));
    }
    let mut summaries = Vec::new();
    let mut by_name: Vec<(String, Vec<Curve>)> = Vec::new();
    for id in &runs {
        let view = whole_run(&ui, *id, true).await?;
        let reporting = view.steps.iter().filter(|s| !shown(s).is_empty()).count();
        let prefix = format!("run {id} ");
        for (name, mut list) in curves(&view.steps, &prefix) {
            for curve in &mut list {
                if reporting == 1 {
                    curve.label = format!("run {id}");
                }
                curve.group = id.to_string();
            }
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, all)) => all.extend(list),
                None => by_name.push((name, list)),
            }
        }
        summaries.push(view.summary.unwrap_or_default());
    }
    let comparison = compare::compare_runs(&summaries, metric.as_deref(), goal);
    let best_run = comparison.ranked_by.as_ref().and_then(|r| r.best);
    let mut charts = Vec::new();
    for (name, list) in by_name {
        // The best run's curves are marked: its first one of this metric.
        let best = best_run.and_then(|b| list.iter().position(|c| c.group == b.to_string()));
        charts.push(Chart {
            svg: draw(&name, "step", &list, best)?,
            points: list.iter().map(|c| c.points.len()).sum(),
            best: best.map(|b| list[b].label.clone()).unwrap_or_default(),
            name,
        });
    }
    let table: Vec<_> = comparison
        .runs
        .iter()
        .map(|r| {
            context! {
                run => r.run,
                pipeline => r.pipeline,
                state => r.state,
                best => r.best,
                params => comparison.params.iter().map(|p| r.params.get(p).cloned().unwrap_or_default()).collect::<Vec<_>>(),
                metrics => comparison.metrics.iter().map(|m| r.metrics.get(m).map(|v| crate::render::metric(*v)).unwrap_or_default()).collect::<Vec<_>>(),
            }
        })
        .collect();
    ui.views.page(
        "compare.html",
        context! {
            title => "Compare runs",
            runs => runs,
            params => comparison.params,
            metrics => comparison.metrics,
            table => table,
            metric => metric.unwrap_or_default(),
            goal => if goal == Goal::Min { "min" } else { "max" },
            charts => charts,
        },
        &ui.guard.cookie(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, value: f64, step: Option<i64>) -> proto::Metric {
        proto::Metric {
            name: name.into(),
            value,
            has_step: step.is_some(),
            step: step.unwrap_or(0),
            count: 0,
        }
    }

    fn trial(name: &str, values: Vec<proto::Metric>) -> proto::StepView {
        proto::StepView {
            name: name.into(),
            trial_of: "train".into(),
            attempts: vec![proto::AttemptView {
                attempt: 1,
                metrics: values,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn every_value_is_a_point_and_the_best_is_found() {
        let steps = vec![
            trial(
                "train.0",
                vec![
                    metric("loss", 1.0, Some(0)),
                    metric("loss", 0.5, Some(10)),
                    metric("accuracy", 0.7, None),
                ],
            ),
            trial(
                "train.1",
                vec![metric("loss", 0.9, Some(0)), metric("loss", 0.2, Some(10))],
            ),
        ];
        let charts = curves(&steps, "");
        assert_eq!(charts.len(), 2);
        assert_eq!(charts[0].0, "loss");
        assert_eq!(charts[0].1[0].points, [(0.0, 1.0), (10.0, 0.5)]);
        assert_eq!(charts[1].0, "accuracy");
        assert_eq!(charts[1].1[0].points, [(0.0, 0.7)]);
        assert_eq!(best(&charts[0].1, Goal::Min), Some(1));
        assert_eq!(best(&charts[0].1, Goal::Max), Some(0));
        let mut scores = vec![
            Curve {
                label: "a".into(),
                group: String::new(),
                points: vec![(0.0, 0.5)],
            },
            Curve {
                label: "b".into(),
                group: String::new(),
                points: vec![(0.0, 0.7)],
            },
        ];
        assert!(spread_single_values(&mut scores));
        assert_eq!(scores[1].points, [(1.0, 0.7)]);
        assert!(!spread_single_values(&mut charts[0].1.clone()));
    }
}
