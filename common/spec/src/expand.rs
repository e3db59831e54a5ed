//! Expanding a checked pipeline: the limits on the expanded pipeline (counted
//! before anything is expanded, so a matrix too large to accept costs no more than
//! its message) and the expansion of each step into one step per trial.

use std::collections::{BTreeMap, BTreeSet};

use super::checker::Checker;
use super::matrix::Matrix;
use super::names::env_var_name;
use super::partial::Partial;
use super::template::{Template, TemplatePart};
use super::types::{Gather, Input, Step, Trial};
use super::units::format_bytes;

/// Reports a pipeline with more than `max_steps` steps once its matrices are
/// expanded. Counts only: nothing is expanded yet.
pub(super) fn check_step_total(ck: &Checker<'_>, partials: &[Partial]) {
    let matrix_steps = partials.iter().filter(|p| p.matrix.is_some()).count();
    let trials = partials
        .iter()
        .filter_map(|p| p.matrix.as_ref())
        .fold(0usize, |sum, m| sum.saturating_add(m.len()));
    let total = trials.saturating_add(partials.len() - matrix_steps);
    let max_steps = ck.limits.max_steps;
    if total <= max_steps {
        return;
    }
    let at = ck.loc.top("steps", None);
    let message = if matrix_steps == 0 {
        format!("the pipeline has {total} steps; at most {max_steps} are allowed")
    } else {
        format!(
            "the pipeline expands to {total} steps ({trials} of them trials of matrix steps); \
             at most {max_steps} are allowed"
        )
    };
    ck.error(at, message);
}

/// Reports a pipeline whose expansion would be too large to store and
/// replicate: each trial carries its own copy of its step's command and
/// environment, and each step needing a sweep names every trial. Estimated before
/// anything is expanded.
pub(super) fn check_expanded_size(
    ck: &Checker<'_>,
    partials: &[Partial],
    deps: &[BTreeSet<usize>],
) {
    // Room for a substituted matrix value, and for a step's fixed fields.
    const VALUE: usize = 64;
    const STEP: usize = 256;
    let template = |t: &Template| -> usize {
        t.parts
            .iter()
            .map(|part| match part {
                TemplatePart::Text(text) => text.len(),
                TemplatePart::MatrixValue(_) => VALUE,
            })
            .sum()
    };
    let copies = |p: &Partial| p.matrix.as_ref().map_or(1, Matrix::len);
    let mut total = 0usize;
    let mut largest: Option<(usize, &str)> = None;
    for (i, p) in partials.iter().enumerate() {
        let own = STEP
            .saturating_add(p.name.len())
            .saturating_add(p.command.iter().map(template).sum::<usize>())
            .saturating_add(
                p.env
                    .iter()
                    .map(|(k, v)| k.len().saturating_add(template(v)))
                    .sum::<usize>(),
            )
            .saturating_add(p.outputs.iter().map(String::len).sum::<usize>());
        let needs: usize = deps[i]
            .iter()
            .filter_map(|&j| partials.get(j))
            .map(|d| copies(d).saturating_mul(d.name.len().saturating_add(8)))
            .sum();
        let bytes = copies(p).saturating_mul(own.saturating_add(needs));
        total = total.saturating_add(bytes);
        if largest.is_none_or(|(b, _)| bytes > b) {
            largest = Some((bytes, &p.name));
        }
    }
    let max_bytes = ck.limits.max_expanded_bytes;
    if total <= max_bytes {
        return;
    }
    let at = ck.loc.top("steps", None);
    let biggest = largest
        .map(|(bytes, name)| {
            format!(
                "; step {name:?} alone takes about {}",
                format_bytes(bytes as u64)
            )
        })
        .unwrap_or_default();
    ck.error(
        at,
        format!(
            "the pipeline expands to about {} (every trial holds its own command and \
             environment){biggest}; at most {} are allowed: move long scripts into files \
             of the code bundle, or use fewer combinations",
            format_bytes(total as u64),
            format_bytes(max_bytes as u64)
        ),
    );
}

/// The name of trial `index` of matrix step `step`. Step names cannot contain
/// `.`, so it never clashes with a step as written.
pub(super) fn trial_name(step: &str, index: usize) -> String {
    format!("{step}.{index}")
}

/// What a step receives from other steps, resolved.
pub(super) struct Links {
    pub(super) needs: Vec<String>,
    pub(super) inputs: Vec<Input>,
    pub(super) gather: Vec<Gather>,
}

/// The resolved step(s) of one checked step: the step itself, or one per
/// combination of its matrix (`<step>.<index>`, in index order), each with the
/// combination's values substituted and exported as `FERRY_MATRIX_<NAME>`.
pub(super) fn expand_step(p: Partial, links: Links, out: &mut Vec<Step>) {
    let Partial {
        name,
        command,
        outputs,
        env,
        resources,
        retries,
        timeout_ms,
        gpu,
        node_selector,
        retry_backoff_ms,
        params,
        cache,
        matrix,
        max_parallel,
        gather: _,
        secrets,
        container,
    } = p;
    let render = |values: &BTreeMap<String, String>| {
        let command: Vec<String> = command.iter().map(|t| t.render(values)).collect();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(key, value)| (key.clone(), value.render(values)))
            .collect();
        (command, env)
    };
    let (plain_command, plain_env) = render(&BTreeMap::new());
    let plain = Step {
        name: name.clone(),
        command: plain_command,
        needs: links.needs,
        inputs: links.inputs,
        outputs,
        env: plain_env,
        resources,
        retries,
        timeout_ms,
        gpu,
        node_selector,
        retry_backoff_ms,
        params,
        cache,
        trial: None,
        gather: links.gather,
        secrets,
        container,
    };
    let Some(matrix) = matrix else {
        out.push(plain);
        return;
    };
    out.reserve(matrix.len());
    for index in 0..matrix.len() {
        let values = matrix.values(index);
        let (command, mut env) = render(&values);
        for (key, value) in &values {
            env.insert(env_var_name("FERRY_MATRIX_", key), value.clone());
        }
        out.push(Step {
            name: trial_name(&name, index),
            command,
            env,
            trial: Some(Trial {
                of: name.clone(),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                values,
                max_parallel,
            }),
            ..plain.clone()
        });
    }
}
