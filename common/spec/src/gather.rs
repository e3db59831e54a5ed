//! `gather:`: the sweeps (steps written with `matrix:`) a step receives every
//! trial of, and which trial is best by a metric. Each entry is checked on its
//! own first, then against the other steps.

use std::collections::BTreeSet;

use serde_yaml::Value;

use super::MAX_METRIC_NAME_LEN;
use super::checker::{Checker, StepContext};
use super::graph::StepNames;
use super::names::env_var_name;
use super::raw::describe_value;
use super::suggest::{did_you_mean, suggest};
use super::types::{BestBy, Gather, Goal};

/// One entry of a step's `gather:`: a step name, or a map with `step`, `best`
/// and `goal`. Whether the step exists and has a matrix is checked later,
/// against the other steps.
pub(super) fn check_gather_item(cx: &StepContext<'_>, item: &Value) -> Option<Gather> {
    let label = cx.label;
    match item {
        Value::String(step) => Some(Gather {
            step: step.clone(),
            best: None,
        }),
        Value::Mapping(map) => check_gather_map(cx, map),
        other => {
            let at = cx.at("gather", None);
            cx.error(
                at,
                format!(
                    "gather of step {label} lists {}; each entry must be a step name or a map \
                     such as {GATHER_EXAMPLE}",
                    describe_value(other)
                ),
            );
            None
        }
    }
}

/// How a `gather:` entry with a metric is written, for messages.
const GATHER_EXAMPLE: &str = "{step: train, best: accuracy, goal: max}";

fn check_gather_map(cx: &StepContext<'_>, map: &serde_yaml::Mapping) -> Option<Gather> {
    let label = cx.label;
    let mut ok = true;
    let (mut step, mut metric, mut goal) = (None, None, None);
    for (key, value) in map {
        let at = cx.at("gather", key.as_str());
        match key.as_str() {
            Some("step") => match value.as_str() {
                Some(name) => step = Some(name.to_string()),
                None => {
                    ok = false;
                    cx.error(
                        at,
                        format!(
                            "gather.step of step {label} must be a step name, got {}",
                            describe_value(value)
                        ),
                    );
                }
            },
            Some("best") => match value.as_str() {
                Some(m) if !m.trim().is_empty() && m.len() <= MAX_METRIC_NAME_LEN => {
                    metric = Some(m.to_string());
                }
                _ => {
                    ok = false;
                    cx.error(
                        at,
                        format!(
                            "gather.best of step {label} must be a metric name of 1 to \
                             {MAX_METRIC_NAME_LEN} bytes, got {}",
                            describe_value(value)
                        ),
                    );
                }
            },
            Some("goal") => match value.as_str() {
                Some("max") => goal = Some(Goal::Max),
                Some("min") => goal = Some(Goal::Min),
                _ => {
                    ok = false;
                    cx.error(
                        at,
                        format!(
                            "gather.goal of step {label} must be max or min, got {}",
                            describe_value(value)
                        ),
                    );
                }
            },
            other => {
                ok = false;
                let hint = did_you_mean(other.and_then(|k| suggest(k, ["step", "best", "goal"])));
                cx.error(
                    at,
                    format!(
                        "gather of step {label} has an unknown field {}{hint}; use `step`, \
                         `best` and `goal`",
                        describe_value(key)
                    ),
                );
            }
        }
    }
    let at = cx.at("gather", step.as_deref());
    let Some(step) = step else {
        if ok {
            cx.error(
                at,
                format!(
                    "an entry of gather of step {label} has no `step`; write e.g. {GATHER_EXAMPLE}"
                ),
            );
        }
        return None;
    };
    if goal.is_some() && metric.is_none() {
        cx.error(
            at,
            format!(
                "gather of {step:?} by step {label} sets `goal` without `best`; `goal` says \
                 whether the highest or the lowest value of the `best` metric wins"
            ),
        );
        return None;
    }
    let best = metric.map(|metric| BestBy {
        metric,
        goal: goal.unwrap_or_default(),
    });
    ok.then_some(Gather { step, best })
}

/// Resolves the `gather:` of step `i`: each entry must be a matrix step other
/// than the step itself, named once. Adds the gathered steps to `deps`.
pub(super) fn check_gathers(
    ck: &Checker<'_>,
    i: usize,
    known: StepNames<'_>,
    wanted: &[Gather],
    deps: &mut BTreeSet<usize>,
) -> Vec<Gather> {
    let me = known.steps[i].name.as_deref();
    let label = me.unwrap_or("?");
    let mut gathered: Vec<Gather> = Vec::new();
    for entry in wanted {
        let name = entry.step.as_str();
        let at = ck.loc.step(i, me, "gather", Some(name));
        if Some(name) == me {
            ck.error(at, format!("step {label:?} gathers itself"));
            continue;
        }
        let Some(&j) = known.index.get(name) else {
            let hint = did_you_mean(suggest(name, known.in_order.iter().copied()));
            ck.error(
                at,
                format!("step {label:?} gathers {name:?}, which is not a step{hint}"),
            );
            continue;
        };
        if known.steps[j].matrix.is_none() {
            ck.error(
                at,
                format!(
                    "step {label:?} gathers {name:?}, which is not a matrix step; `gather` \
                     receives every trial of a step written with `matrix` (for a plain step, \
                     use `needs` or `inputs`)"
                ),
            );
            continue;
        }
        if gathered.iter().any(|g| g.step == name) {
            ck.error(at, format!("step {label:?} gathers {name:?} twice"));
            continue;
        }
        // Each gathered sweep is named by FERRY_GATHER_<STEP> (and _BEST): two
        // sweeps must not end up behind one variable.
        let vars = gather_vars(entry);
        if let Some(other) = gathered
            .iter()
            .find(|g| gather_vars(g).iter().any(|v| vars.contains(v)))
        {
            let var = gather_vars(other)
                .into_iter()
                .find(|v| vars.contains(v))
                .unwrap_or_default();
            ck.error(
                at,
                format!(
                    "step {label:?} gathers {:?} and {name:?}, which both set the \
                     environment variable {var}; rename one of the sweeps",
                    other.step
                ),
            );
            continue;
        }
        deps.insert(j);
        gathered.push(entry.clone());
    }
    gathered
}

/// The environment variables a gathered sweep sets in the gathering step.
fn gather_vars(gather: &Gather) -> Vec<String> {
    let dir = env_var_name("FERRY_GATHER_", &gather.step);
    let mut vars = vec![dir.clone()];
    if gather.best.is_some() {
        vars.push(format!("{dir}_BEST"));
    }
    vars
}
