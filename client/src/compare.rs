//! Comparing runs and steps, for `ferry runs diff`, `ferry runs compare`,
//! `ferry runs --where` and `ferry metrics --metric`: plain functions from the
//! views the coordinator answers with to what differs, what ranks first, and the
//! text that shows it. Nothing here talks to the network.

use std::collections::{BTreeMap, BTreeSet};

use ferry_common::digest::short;
use ferry_common::proto;
use serde::Serialize;

use crate::render;

/// Which end of a metric is better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Higher is better (accuracy).
    #[default]
    Max,
    /// Lower is better (loss).
    Min,
}

/// Positions of `values`, best first per `goal`; values that are missing (or NaN)
/// come last, in their original order. Ties keep their original order too.
pub fn rank(values: &[Option<f64>], goal: Goal) -> Vec<usize> {
    let mut present: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.filter(|v| !v.is_nan()).map(|v| (i, v)))
        .collect();
    // A stable sort on values that are never NaN: ties stay in order.
    present.sort_by(|(_, a), (_, b)| match goal {
        Goal::Max => b.total_cmp(a),
        Goal::Min => a.total_cmp(b),
    });
    let ranked: BTreeSet<usize> = present.iter().map(|(i, _)| *i).collect();
    let mut order: Vec<usize> = present.into_iter().map(|(i, _)| i).collect();
    order.extend((0..values.len()).filter(|i| !ranked.contains(i)));
    order
}

/// Per metric name, the last value reported, in first-reported order.
pub fn last_values(metrics: &[proto::Metric]) -> Vec<(String, f64)> {
    let mut names: Vec<(String, f64)> = Vec::new();
    for metric in metrics {
        match names.iter_mut().find(|(name, _)| *name == metric.name) {
            Some((_, value)) => *value = metric.value,
            None => names.push((metric.name.clone(), metric.value)),
        }
    }
    names
}

/// The metrics that stand for a step's result: those of the attempt that produced
/// it (in an earlier run, for a cached or reused step), else those of its latest
/// attempt (a step that failed).
pub fn step_metrics(step: &proto::StepView) -> &[proto::Metric] {
    if !step.metrics.is_empty() {
        return &step.metrics;
    }
    step.attempts.last().map_or(&[], |a| a.metrics.as_slice())
}

/// `k=5 weights=distance`: a map's entries in name order.
pub fn key_values(map: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = map.iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------ --where

/// The names the conditions of `ferry runs --where` test (`accuracy>0.9,seed=42`
/// gives accuracy, seed), in order, once each. The coordinator parses and checks
/// the conditions; this only picks the columns to show, so it is lenient.
pub fn where_names(conditions: &str) -> Vec<String> {
    let text = conditions.replace(" and ", ",").replace(" AND ", ",");
    let mut names: Vec<String> = Vec::new();
    for part in text.split(',') {
        let name = part
            .split(['=', '!', '<', '>'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A run's value for a `--where` name: its metric of that name, else its
/// parameter (the order the coordinator looks them up in).
pub fn where_value(run: &proto::RunSummary, name: &str) -> String {
    match (run.metrics.get(name), run.params.get(name)) {
        (Some(value), _) => render::metric(*value),
        (None, Some(text)) => text.clone(),
        (None, None) => String::new(),
    }
}

// ------------------------------------------------------------------ diff

/// What differs between two runs, for `ferry runs diff A B`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDiff {
    pub a: RunSide,
    pub b: RunSide,
    /// Pipeline parameters. (A sweep's trials are matched by their values, so a
    /// trial whose values changed is a step only in one run.)
    pub params: Vec<ParamDiff>,
    pub code: CodeDiff,
    pub inputs: Vec<InputDiff>,
    pub steps: Vec<StepDiff>,
    pub metrics: Vec<MetricDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSide {
    pub run: u64,
    pub pipeline: String,
    pub state: String,
}

/// A parameter set differently; `None` where a run does not have it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamDiff {
    pub name: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeDiff {
    pub same: bool,
    pub a: String,
    pub b: String,
}

/// An input of a step present in both runs whose content differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputDiff {
    pub step: String,
    pub input: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDiff {
    pub step: String,
    pub change: StepChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepChange {
    OnlyInA,
    OnlyInB,
    /// Both ran it, with different cache keys: its command, code, parameters or
    /// inputs changed, so one run's result would not stand for the other's.
    CacheKeyDiffers,
}

/// A metric of a step present in both runs whose last value differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDiff {
    pub step: String,
    pub name: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// B − A, when both have it.
    pub delta: Option<f64>,
}

fn side(view: &proto::RunView) -> RunSide {
    let summary = view.summary.clone().unwrap_or_default();
    RunSide {
        run: summary.run_id,
        pipeline: summary.pipeline,
        state: summary.state,
    }
}

/// Values of two maps that differ, by name in order; `None` for a missing one.
fn differing<V: PartialEq + Clone>(
    a: &std::collections::HashMap<String, V>,
    b: &std::collections::HashMap<String, V>,
) -> Vec<(String, Option<V>, Option<V>)> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|name| a.get(*name) != b.get(*name))
        .map(|name| (name.clone(), a.get(name).cloned(), b.get(name).cloned()))
        .collect()
}

/// How a step is matched between two runs: by name, and a sweep's trial by its
/// sweep and values (`train (depth=5 lr=0.1)`), as the cache matches it, since
/// adding values to a grid renumbers the trials.
pub fn step_identity(step: &proto::StepView) -> String {
    if step.trial_of.is_empty() {
        step.name.clone()
    } else {
        format!("{} ({})", step.trial_of, key_values(&step.matrix))
    }
}

/// The last value of each metric of `step`, in order.
fn metric_values(step: &proto::StepView) -> Vec<(String, f64)> {
    last_values(step_metrics(step))
}

pub fn diff_runs(a: &proto::RunView, b: &proto::RunView) -> RunDiff {
    let params: Vec<ParamDiff> = differing(&a.params, &b.params)
        .into_iter()
        .map(|(name, va, vb)| ParamDiff { name, a: va, b: vb })
        .collect();
    let by_identity = |view: &'_ proto::RunView| -> BTreeMap<String, usize> {
        view.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (step_identity(s), i))
            .collect()
    };
    let (ids_a, ids_b) = (by_identity(a), by_identity(b));

    let mut inputs = Vec::new();
    let mut steps = Vec::new();
    let mut metrics = Vec::new();
    let mut metric_rows = |label: &str, values_a: &[(String, f64)], values_b: &[(String, f64)]| {
        let mut names: Vec<&String> = values_a.iter().map(|(n, _)| n).collect();
        for (name, _) in values_b {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let find = |values: &[(String, f64)], name: &str| {
            values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
        };
        for name in names {
            let (va, vb) = (find(values_a, name), find(values_b, name));
            if va != vb {
                metrics.push(MetricDiff {
                    step: label.to_string(),
                    name: name.clone(),
                    a: va,
                    b: vb,
                    delta: va.zip(vb).map(|(va, vb)| vb - va),
                });
            }
        }
    };
    // Steps only in one run: listed, with the metrics they reported.
    for step in &a.steps {
        let label = step_identity(step);
        if !ids_b.contains_key(&label) {
            steps.push(StepDiff {
                step: label.clone(),
                change: StepChange::OnlyInA,
            });
            metric_rows(&label, &metric_values(step), &[]);
        }
    }
    for step in &b.steps {
        let label = step_identity(step);
        if !ids_a.contains_key(&label) {
            steps.push(StepDiff {
                step: label.clone(),
                change: StepChange::OnlyInB,
            });
            metric_rows(&label, &[], &metric_values(step));
        }
    }
    for step_a in &a.steps {
        let label = step_identity(step_a);
        let Some(step_b) = ids_b.get(&label).map(|i| &b.steps[*i]) else {
            continue;
        };
        let digests = |step: &proto::StepView| -> std::collections::HashMap<String, String> {
            step.inputs
                .iter()
                .map(|i| (i.name.clone(), i.digest.clone()))
                .collect()
        };
        for (input, va, vb) in differing(&digests(step_a), &digests(step_b)) {
            inputs.push(InputDiff {
                step: label.clone(),
                input,
                a: va,
                b: vb,
            });
        }
        // A step that never got as far as its cache key (skipped, cancelled) says
        // nothing about whether it would run again.
        if !step_a.cache_key.is_empty()
            && !step_b.cache_key.is_empty()
            && step_a.cache_key != step_b.cache_key
        {
            steps.push(StepDiff {
                step: label.clone(),
                change: StepChange::CacheKeyDiffers,
            });
        }
        metric_rows(&label, &metric_values(step_a), &metric_values(step_b));
    }
    RunDiff {
        a: side(a),
        b: side(b),
        params,
        code: CodeDiff {
            same: a.bundle_digest == b.bundle_digest,
            a: a.bundle_digest.clone(),
            b: b.bundle_digest.clone(),
        },
        inputs,
        steps,
        metrics,
    }
}

/// A section: its title and table, or one line when nothing differs.
fn section(out: &mut Vec<String>, title: &str, headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push(format!("{title}: no differences"));
        return;
    }
    let table = render::table(headers, rows);
    let indented: Vec<String> = table.lines().map(|l| format!("  {l}")).collect();
    out.push(format!("{title}:\n{}", indented.join("\n")));
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

pub fn render_diff(diff: &RunDiff) -> String {
    let run_a = format!("RUN {}", diff.a.run);
    let run_b = format!("RUN {}", diff.b.run);
    let mut out = Vec::new();
    let name = |side: &RunSide| format!("run {} ({}, {})", side.run, side.pipeline, side.state);
    out.push(format!("{} vs {}", name(&diff.a), name(&diff.b)));

    let rows: Vec<Vec<String>> = diff
        .params
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                or_dash(p.a.as_deref()),
                or_dash(p.b.as_deref()),
            ]
        })
        .collect();
    section(&mut out, "params", &["PARAM", &run_a, &run_b], &rows);

    out.push(if diff.code.same {
        format!("code: same code bundle {}", short(&diff.code.a))
    } else {
        format!(
            "code: bundle {} in run {}, {} in run {}",
            short(&diff.code.a),
            diff.a.run,
            short(&diff.code.b),
            diff.b.run
        )
    });

    let short_or_dash = |d: &Option<String>| or_dash(d.as_deref().map(short));
    let rows: Vec<Vec<String>> = diff
        .inputs
        .iter()
        .map(|i| {
            vec![
                i.step.clone(),
                i.input.clone(),
                short_or_dash(&i.a),
                short_or_dash(&i.b),
            ]
        })
        .collect();
    section(
        &mut out,
        "inputs",
        &["STEP", "INPUT", &run_a, &run_b],
        &rows,
    );

    let rows: Vec<Vec<String>> = diff
        .steps
        .iter()
        .map(|s| {
            let change = match s.change {
                StepChange::OnlyInA => format!("only in run {}", diff.a.run),
                StepChange::OnlyInB => format!("only in run {}", diff.b.run),
                StepChange::CacheKeyDiffers => {
                    "differs: its cache key changed, so it would run again".to_string()
                }
            };
            vec![s.step.clone(), change]
        })
        .collect();
    section(&mut out, "steps", &["STEP", "CHANGE"], &rows);

    let value = |v: Option<f64>| v.map_or("-".to_string(), render::metric);
    let rows: Vec<Vec<String>> = diff
        .metrics
        .iter()
        .map(|m| {
            vec![
                m.step.clone(),
                m.name.clone(),
                value(m.a),
                value(m.b),
                m.delta.map(render::delta).unwrap_or_default(),
            ]
        })
        .collect();
    section(
        &mut out,
        "metrics",
        &["STEP", "METRIC", &run_a, &run_b, "DELTA"],
        &rows,
    );
    out.join("\n")
}

// ------------------------------------------------------------------ compare

/// Runs side by side, for `ferry runs compare`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Parameters whose values are not the same in every run.
    pub params: Vec<String>,
    /// Every metric any run reported (the ranking metric first).
    pub metrics: Vec<String>,
    /// Best first when ranked by a metric; else in the order asked for.
    pub runs: Vec<ComparedRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranked_by: Option<Ranking>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    pub metric: String,
    pub goal: Goal,
    /// The run with the best value; none when no run reported the metric.
    pub best: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparedRun {
    pub run: u64,
    pub pipeline: String,
    pub state: String,
    pub params: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    pub best: bool,
}

pub fn compare_runs(runs: &[proto::RunSummary], metric: Option<&str>, goal: Goal) -> Comparison {
    let names: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    let params: Vec<String> = names
        .into_iter()
        .filter(|name| {
            let first = runs.first().and_then(|r| r.params.get(*name));
            runs.iter().any(|r| r.params.get(*name) != first)
        })
        .cloned()
        .collect();
    let mut metrics: Vec<String> = runs
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if let Some(metric) = metric {
        metrics.retain(|m| m != metric);
        metrics.insert(0, metric.to_string());
    }
    let mut compared: Vec<ComparedRun> = runs
        .iter()
        .map(|r| ComparedRun {
            run: r.run_id,
            pipeline: r.pipeline.clone(),
            state: r.state.clone(),
            params: r
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            metrics: r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            best: false,
        })
        .collect();
    let ranked_by = metric.map(|metric| {
        let values: Vec<Option<f64>> = compared
            .iter()
            .map(|r| r.metrics.get(metric).copied())
            .collect();
        let order = rank(&values, goal);
        let best = order
            .first()
            .copied()
            .filter(|i| values[*i].is_some_and(|v| !v.is_nan()));
        if let Some(best) = best {
            compared[best].best = true;
        }
        let best_run = best.map(|i| compared[i].run);
        let mut slots: Vec<Option<ComparedRun>> = compared.drain(..).map(Some).collect();
        compared = order.iter().filter_map(|i| slots[*i].take()).collect();
        Ranking {
            metric: metric.to_string(),
            goal,
            best: best_run,
        }
    });
    Comparison {
        params,
        metrics,
        runs: compared,
        ranked_by,
    }
}

pub fn render_comparison(comparison: &Comparison) -> String {
    let mut headers: Vec<String> = ["RUN", "PIPELINE", "STATE"].map(String::from).to_vec();
    headers.extend(comparison.params.iter().cloned());
    headers.extend(comparison.metrics.iter().cloned());
    if comparison.ranked_by.is_some() {
        headers.push("BEST".into());
    }
    let rows: Vec<Vec<String>> = comparison
        .runs
        .iter()
        .map(|r| {
            let mut row = vec![r.run.to_string(), r.pipeline.clone(), r.state.clone()];
            row.extend(
                comparison
                    .params
                    .iter()
                    .map(|p| r.params.get(p).cloned().unwrap_or_else(|| "-".into())),
            );
            row.extend(
                comparison
                    .metrics
                    .iter()
                    .map(|m| r.metrics.get(m).map_or("-".into(), |v| render::metric(*v))),
            );
            if comparison.ranked_by.is_some() {
                row.push(if r.best { "*".into() } else { String::new() });
            }
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut out = render::table(&headers, &rows);
    if let Some(ranking) = &comparison.ranked_by {
        let best = ranking
            .best
            .and_then(|run| comparison.runs.iter().find(|r| r.run == run));
        match best {
            Some(best) => out.push_str(&format!(
                "\nbest: run {} ({} = {})",
                best.run,
                ranking.metric,
                render::metric(best.metrics[&ranking.metric])
            )),
            None => out.push_str(&format!(
                "\nbest: none of these runs reported {:?}",
                ranking.metric
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn metric(name: &str, value: f64) -> proto::Metric {
        proto::Metric {
            name: name.into(),
            value,
            has_step: false,
            step: 0,
            count: 1,
        }
    }

    fn step(name: &str, cache_key: &str, inputs: &[(&str, &str)]) -> proto::StepView {
        proto::StepView {
            name: name.into(),
            state: "succeeded".into(),
            cache_key: cache_key.into(),
            inputs: inputs
                .iter()
                .map(|(name, digest)| proto::InputView {
                    name: (*name).into(),
                    digest: (*digest).into(),
                    size: 10,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn run(
        id: u64,
        params: &[(&str, &str)],
        bundle: &str,
        steps: Vec<proto::StepView>,
    ) -> proto::RunView {
        let params: HashMap<String, String> = params
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        proto::RunView {
            summary: Some(proto::RunSummary {
                run_id: id,
                pipeline: "iris".into(),
                state: "succeeded".into(),
                params: params.clone(),
                ..Default::default()
            }),
            steps,
            params,
            bundle_digest: bundle.into(),
            ..Default::default()
        }
    }

    fn digest(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn ranking_puts_the_best_first_and_the_missing_last() {
        let values = [Some(0.5), None, Some(0.9), Some(f64::NAN), Some(0.5)];
        assert_eq!(rank(&values, Goal::Max), [2, 0, 4, 1, 3]);
        assert_eq!(rank(&values, Goal::Min), [0, 4, 2, 1, 3]);
        assert_eq!(rank(&[], Goal::Max), Vec::<usize>::new());
        assert_eq!(rank(&[None, None], Goal::Min), [0, 1]);
    }

    #[test]
    fn last_values_keep_first_reported_order() {
        let metrics = [metric("loss", 0.3), metric("acc", 0.8), metric("loss", 0.1)];
        assert_eq!(
            last_values(&metrics),
            [("loss".to_string(), 0.1), ("acc".to_string(), 0.8)]
        );
    }

    #[test]
    fn a_cached_step_stands_for_its_producing_attempt() {
        let mut cached = step("train", "k", &[]);
        cached.reused = "cached".into();
        cached.metrics = vec![metric("acc", 0.9)];
        assert_eq!(step_metrics(&cached)[0].value, 0.9);
        let mut failed = step("train", "k", &[]);
        failed.attempts = vec![
            proto::AttemptView {
                metrics: vec![metric("acc", 0.1)],
                ..Default::default()
            },
            proto::AttemptView {
                metrics: vec![metric("acc", 0.2)],
                ..Default::default()
            },
        ];
        assert_eq!(step_metrics(&failed)[0].value, 0.2);
        assert!(step_metrics(&step("x", "", &[])).is_empty());
    }

    #[test]
    fn where_names_pick_the_columns() {
        assert_eq!(
            where_names("accuracy>0.9, seed=42 and model != knn,accuracy<1"),
            ["accuracy", "seed", "model"]
        );
        assert!(where_names(" , ").is_empty());
        let summary = proto::RunSummary {
            params: HashMap::from([
                ("seed".into(), "42".into()),
                ("accuracy".into(), "x".into()),
            ]),
            metrics: HashMap::from([("accuracy".into(), 0.95)]),
            ..Default::default()
        };
        assert_eq!(where_value(&summary, "accuracy"), "0.95");
        assert_eq!(where_value(&summary, "seed"), "42");
        assert_eq!(where_value(&summary, "other"), "");
    }

    fn two_runs() -> (proto::RunView, proto::RunView) {
        // The same trial (k=3), renumbered in run 7 by a value added to the grid.
        let mut train_a = step("train.0", "key-a", &[("train", &digest('a'))]);
        train_a.trial_of = "train".into();
        train_a.matrix = HashMap::from([("k".into(), "3".into()), ("w".into(), "uniform".into())]);
        train_a.metrics = vec![
            metric("acc", 0.93),
            metric("loss", 0.2),
            metric("same", 1.0),
        ];
        let mut train_b = step("train.1", "key-b", &[("train", &digest('b'))]);
        train_b.trial_of = "train".into();
        train_b.matrix = HashMap::from([("k".into(), "3".into()), ("w".into(), "uniform".into())]);
        train_b.metrics = vec![metric("acc", 0.956), metric("same", 1.0)];
        let mut added = step("train.0", "key-n", &[("train", &digest('b'))]);
        added.trial_of = "train".into();
        added.matrix = HashMap::from([("k".into(), "1".into()), ("w".into(), "uniform".into())]);
        added.metrics = vec![metric("acc", 0.9)];
        let a = run(
            5,
            &[("k", "3"), ("seed", "1")],
            &digest('c'),
            vec![
                step("split", "key-s", &[("raw", &digest('d'))]),
                train_a,
                step("report", "key-r", &[]),
            ],
        );
        let b = run(
            7,
            &[("k", "5"), ("seed", "1"), ("extra", "x")],
            &digest('c'),
            vec![
                step("split", "key-s", &[("raw", &digest('d'))]),
                added,
                train_b,
                step("plot", "", &[]),
            ],
        );
        (a, b)
    }

    #[test]
    fn a_diff_names_params_inputs_steps_and_metrics() {
        let (a, b) = two_runs();
        let diff = diff_runs(&a, &b);
        assert_eq!((diff.a.run, diff.b.run), (5, 7));
        let param = |name: &str, a: Option<&str>, b: Option<&str>| ParamDiff {
            name: name.into(),
            a: a.map(String::from),
            b: b.map(String::from),
        };
        assert_eq!(
            diff.params,
            [
                param("extra", None, Some("x")),
                param("k", Some("3"), Some("5"))
            ]
        );
        assert!(diff.code.same);
        // train.0 of run 5 and train.1 of run 7 are the same trial (k=3).
        let trial = "train (k=3 w=uniform)";
        assert_eq!(diff.inputs.len(), 1);
        assert_eq!(
            (diff.inputs[0].step.as_str(), diff.inputs[0].input.as_str()),
            (trial, "train")
        );
        let steps: Vec<(&str, StepChange)> = diff
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.change))
            .collect();
        assert_eq!(
            steps,
            [
                ("report", StepChange::OnlyInA),
                ("train (k=1 w=uniform)", StepChange::OnlyInB),
                ("plot", StepChange::OnlyInB),
                (trial, StepChange::CacheKeyDiffers),
            ]
        );
        // The new trial's metric too, though run 5 has no such trial.
        let metrics: Vec<(&str, &str, Option<f64>, Option<f64>)> = diff
            .metrics
            .iter()
            .map(|m| (m.step.as_str(), m.name.as_str(), m.a, m.b))
            .collect();
        assert_eq!(
            metrics,
            [
                ("train (k=1 w=uniform)", "acc", None, Some(0.9)),
                (trial, "acc", Some(0.93), Some(0.956)),
                (trial, "loss", Some(0.2), None),
            ]
        );
        assert!((diff.metrics[1].delta.unwrap() - 0.026).abs() < 1e-9);
        assert_eq!(diff.metrics[2].delta, None);

        let text = render_diff(&diff);
        assert!(
            text.starts_with("run 5 (iris, succeeded) vs run 7 (iris, succeeded)\nparams:\n"),
            "{text}"
        );
        assert!(text.contains("  PARAM  RUN 5  RUN 7"), "{text}");
        assert!(text.contains("  k      3      5"), "{text}");
        assert!(
            text.contains(&format!("code: same code bundle {}", short(&digest('c')))),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{trial}  train  {}  {}",
                short(&digest('a')),
                short(&digest('b'))
            )),
            "{text}"
        );
        assert!(
            text.contains("report                 only in run 5"),
            "{text}"
        );
        assert!(
            text.contains("train (k=1 w=uniform)  only in run 7"),
            "{text}"
        );
        assert!(text.contains("would run again"), "{text}");
        assert!(
            text.contains(&format!("{trial}  acc     0.93   0.956  +0.026")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{trial}  loss    0.2    -")),
            "{text}"
        );

        let json = serde_json::to_value(&diff).unwrap();
        assert_eq!(json["steps"][0]["change"], "only_in_a");
        assert_eq!(json["params"][0]["a"], serde_json::Value::Null);
        assert_eq!(json["inputs"][0]["step"], trial);
    }

    #[test]
    fn identical_runs_diff_to_nothing_compactly() {
        let (a, _) = two_runs();
        let mut b = a.clone();
        b.summary.as_mut().unwrap().run_id = 6;
        let diff = diff_runs(&a, &b);
        assert!(diff.params.is_empty() && diff.inputs.is_empty());
        assert!(diff.steps.is_empty() && diff.metrics.is_empty());
        let text = render_diff(&diff);
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            [
                "params: no differences",
                format!("code: same code bundle {}", short(&digest('c'))).as_str(),
                "inputs: no differences",
                "steps: no differences",
                "metrics: no differences",
            ]
        );
        b.bundle_digest = digest('e');
        let text = render_diff(&diff_runs(&a, &b));
        assert!(
            text.contains(&format!(
                "code: bundle {} in run 5, {} in run 6",
                short(&digest('c')),
                short(&digest('e'))
            )),
            "{text}"
        );
    }

    #[test]
    fn a_step_without_a_cache_key_is_not_said_to_differ() {
        let a = run(1, &[], "", vec![step("s", "", &[])]);
        let b = run(2, &[], "", vec![step("s", "key", &[])]);
        assert!(diff_runs(&a, &b).steps.is_empty());
    }

    fn summary(id: u64, params: &[(&str, &str)], metrics: &[(&str, f64)]) -> proto::RunSummary {
        proto::RunSummary {
            run_id: id,
            pipeline: "iris".into(),
            state: "succeeded".into(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            metrics: metrics.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_comparison_shows_differing_params_and_every_metric() {
        let runs = [
            summary(
                1,
                &[("k", "3"), ("seed", "1")],
                &[("loss", 0.3), ("acc", 0.9)],
            ),
            summary(2, &[("k", "5"), ("seed", "1")], &[("acc", 0.95)]),
        ];
        let comparison = compare_runs(&runs, None, Goal::Max);
        assert_eq!(comparison.params, ["k"]);
        assert_eq!(comparison.metrics, ["acc", "loss"]);
        assert_eq!(comparison.runs[0].run, 1);
        assert!(comparison.ranked_by.is_none());
        let text = render_comparison(&comparison);
        assert_eq!(
            text,
            "RUN  PIPELINE  STATE      k  acc   loss\n\
             1    iris      succeeded  3  0.9   0.3\n\
             2    iris      succeeded  5  0.95  -"
        );
    }

    #[test]
    fn ranking_by_a_metric_sorts_marks_and_names_the_best() {
        let runs = [
            summary(1, &[("k", "3")], &[("loss", 0.3), ("acc", 0.9)]),
            summary(2, &[("k", "5")], &[("loss", 0.1)]),
            summary(3, &[("k", "7")], &[("loss", 0.2), ("acc", 0.97)]),
        ];
        let comparison = compare_runs(&runs, Some("acc"), Goal::Max);
        let order: Vec<u64> = comparison.runs.iter().map(|r| r.run).collect();
        assert_eq!(order, [3, 1, 2]);
        assert_eq!(comparison.metrics, ["acc", "loss"]);
        assert_eq!(comparison.ranked_by.as_ref().unwrap().best, Some(3));
        let text = render_comparison(&comparison);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "RUN  PIPELINE  STATE      k  acc   loss  BEST");
        assert_eq!(lines[1], "3    iris      succeeded  7  0.97  0.2   *");
        assert_eq!(lines[3], "2    iris      succeeded  5  -     0.1");
        assert_eq!(lines[4], "best: run 3 (acc = 0.97)");

        let by_loss = compare_runs(&runs, Some("loss"), Goal::Min);
        let order: Vec<u64> = by_loss.runs.iter().map(|r| r.run).collect();
        assert_eq!(order, [2, 3, 1]);
        assert_eq!(by_loss.metrics, ["loss", "acc"]);

        let nobody = compare_runs(&runs, Some("f1"), Goal::Max);
        assert_eq!(nobody.ranked_by.as_ref().unwrap().best, None);
        assert!(nobody.runs.iter().all(|r| !r.best));
        assert!(render_comparison(&nobody).ends_with("best: none of these runs reported \"f1\""));
        let json = serde_json::to_value(&comparison).unwrap();
        assert_eq!(json["ranked_by"]["goal"], "max");
        assert_eq!(json["runs"][0]["best"], true);
    }
}
