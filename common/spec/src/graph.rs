//! The graph of steps: references between them (`needs`, `inputs`), the order
//! they run in, and the cycles that prevent one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_yaml::Value;

use super::checker::Checker;
use super::locate::{Locator, Pos};
use super::names::{env_var_name, is_input_name};
use super::partial::Partial;
use super::paths::normalize_output;
use super::raw::RawStep;
use super::suggest::{did_you_mean, suggest};
use super::types::Input;

/// The steps of a pipeline as written, for resolving references between them.
#[derive(Clone, Copy)]
pub(super) struct StepNames<'a> {
    pub(super) steps: &'a [RawStep],
    /// Step name → position in `steps`.
    pub(super) index: &'a HashMap<String, usize>,
    /// Every distinct name, in file order (for suggestions).
    pub(super) in_order: &'a [&'a str],
}

/// Resolves the `needs` and `inputs` of every step against the other steps:
/// for each step, the steps it depends on and its inputs. A reference that
/// cannot be resolved is reported and left out.
pub(super) fn resolve_references(
    ck: &Checker<'_>,
    known: StepNames<'_>,
    partials: &[Partial],
) -> (Vec<BTreeSet<usize>>, Vec<Vec<Input>>) {
    let StepNames {
        steps,
        index,
        in_order: names_in_order,
    } = known;
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); steps.len()];
    let mut inputs: Vec<Vec<Input>> = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        let me = step.name.as_deref();
        let label = me.unwrap_or("?");
        for need in step.needs.iter().flatten() {
            if Some(need.as_str()) == me {
                let at = ck.loc.step(i, me, "needs", Some(need));
                ck.error(at, format!("step {label:?} needs itself"));
            } else if let Some(&j) = index.get(need.as_str()) {
                deps[i].insert(j);
            } else {
                let at = ck.loc.step(i, me, "needs", Some(need));
                let hint = did_you_mean(suggest(need, names_in_order.iter().copied()));
                ck.error(
                    at,
                    format!("step {label:?} needs {need:?}, which is not a step{hint}"),
                );
            }
        }

        let mut input_vars: BTreeMap<String, &str> = BTreeMap::new();
        for (local, reference) in step.inputs.iter().flat_map(|m| &m.0) {
            if !is_input_name(local) {
                let at = ck.loc.step(i, me, "inputs", Some(local));
                ck.error(
                    at,
                    format!(
                        "input name {local:?} of step {label:?} is invalid: \
                         use only letters, digits and '_'"
                    ),
                );
            } else {
                let var = env_var_name("FERRY_INPUT_", local);
                if let Some(other) = input_vars.get(&var) {
                    let at = ck.loc.step(i, me, "inputs", Some(local)).max(ck.loc.step(
                        i,
                        me,
                        "inputs",
                        Some(other),
                    ));
                    ck.error(
                        at,
                        format!(
                            "inputs {other:?} and {local:?} of step {label:?} both become \
                             the environment variable {var}"
                        ),
                    );
                } else {
                    input_vars.insert(var, local);
                }
            }
            let at = ck.loc.step(i, me, "inputs", Some(reference));
            let what = format!("input {local:?} of step {label:?}");
            let parts = reference
                .split_once('/')
                .filter(|(s, o)| !s.is_empty() && !o.is_empty());
            let Some((source, output)) = parts else {
                ck.error(
                    at,
                    format!(
                        "{what} is {reference:?}, which is not of the form <step>/<output> \
                         (e.g. \"train/model.json\")"
                    ),
                );
                continue;
            };
            if Some(source) == me {
                ck.error(
                    at,
                    format!("{what} points at {reference:?}, an output of the step itself"),
                );
                continue;
            }
            let Some(&j) = index.get(source) else {
                let hint = did_you_mean(suggest(source, names_in_order.iter().copied()));
                ck.error(
                    at,
                    format!(
                        "{what} points at {reference:?}, but there is no step {source:?}{hint}"
                    ),
                );
                continue;
            };
            deps[i].insert(j);
            if steps[j].matrix.is_some() {
                ck.error(
                    at,
                    format!(
                        "{what} points at {reference:?}, but {source:?} is a matrix step (one \
                         step per combination); use `gather: [{source}]` to receive every \
                         trial's outputs"
                    ),
                );
                continue;
            }
            let output = normalize_output(output).unwrap_or_else(|_| output.to_string());
            let declared = &partials[j].outputs;
            if !declared.contains(&output) {
                let list: Vec<&str> = declared.iter().map(String::as_str).collect();
                let (start, end) = if list.is_empty() {
                    ("", "declares no outputs")
                } else {
                    ("declares: ", "")
                };
                let hint = suggest(&output, list.iter().copied())
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                ck.error(
                    at,
                    format!(
                        "{what} points at {reference:?}, but step {source:?} declares no \
                         output {output:?} (it {start}{}{end}{hint})",
                        list.join(", ")
                    ),
                );
                continue;
            }
            inputs[i].push(Input {
                name: local.clone(),
                step: source.to_string(),
                output,
            });
        }
    }
    (deps, inputs)
}

/// Kahn's algorithm, ties broken by file order. Reports every cycle it can
/// separate; returns the (possibly partial) order.
pub(super) fn topological_order(
    ck: &Checker<'_>,
    steps: &[RawStep],
    deps: &[BTreeSet<usize>],
) -> Vec<usize> {
    let n = deps.len();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pending: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() == n {
        return order;
    }

    let name = |i: usize| steps[i].name.as_deref().unwrap_or("?");
    let mut ordered = vec![false; n];
    for &i in &order {
        ordered[i] = true;
    }
    let mut remaining: BTreeSet<usize> = (0..n).filter(|&i| !ordered[i]).collect();
    loop {
        // Drop steps that are merely downstream of a cycle.
        loop {
            let free: Vec<usize> = remaining
                .iter()
                .copied()
                .filter(|&i| deps[i].iter().all(|d| !remaining.contains(d)))
                .collect();
            if free.is_empty() {
                break;
            }
            for i in free {
                remaining.remove(&i);
            }
        }
        let Some(&start) = remaining.first() else {
            break;
        };
        // Every remaining step needs another remaining step: walk until a repeat.
        let mut path = vec![start];
        let mut cur = start;
        let cycle = loop {
            let Some(&next) = deps[cur].iter().find(|d| remaining.contains(d)) else {
                break None; // cannot happen after pruning; stay safe
            };
            if let Some(k) = path.iter().position(|&p| p == next) {
                break Some(path[k..].to_vec());
            }
            path.push(next);
            cur = next;
        };
        let Some(mut cycle) = cycle else { break };
        // `cycle` runs in "needs" order; print it in execution order, starting
        // at the step that comes first in the file.
        cycle.reverse();
        let first = cycle
            .iter()
            .enumerate()
            .min_by_key(|&(_, &s)| s)
            .map_or(0, |(k, _)| k);
        cycle.rotate_left(first);
        let head = cycle[0];
        let before = cycle[cycle.len() - 1]; // `head` needs `before`
        let mut text: Vec<&str> = cycle.iter().map(|&s| name(s)).collect();
        text.push(name(head));
        let at = locate_edge(&ck.loc, head, &steps[head], name(before));
        ck.error(at, format!("steps form a cycle: {}", text.join(" → ")));
        for s in cycle {
            remaining.remove(&s);
        }
    }
    order
}

/// Where step `i` refers to step `target` (its `needs` entry, an input or a
/// `gather` entry).
fn locate_edge(loc: &Locator<'_>, i: usize, step: &RawStep, target: &str) -> Option<Pos> {
    let me = step.name.as_deref();
    if step.needs.iter().flatten().any(|n| n == target) {
        return loc.step(i, me, "needs", Some(target));
    }
    let reference = step
        .inputs
        .iter()
        .flat_map(|m| m.0.values())
        .find(|r| r.split_once('/').is_some_and(|(s, _)| s == target));
    if let Some(r) = reference {
        return loc.step(i, me, "inputs", Some(r));
    }
    let gathers = step
        .gather
        .iter()
        .flatten()
        .any(|g| gather_target(g) == Some(target));
    if gathers {
        return loc.step(i, me, "gather", Some(target));
    }
    loc.step_head(i, me)
}

/// The step a `gather:` entry names, as written.
fn gather_target(entry: &Value) -> Option<&str> {
    match entry {
        Value::Mapping(map) => map.get("step").and_then(Value::as_str),
        other => other.as_str(),
    }
}
