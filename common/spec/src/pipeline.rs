//! [`parse_pipeline`]: reads a spec file, runs every check, and resolves the
//! pipeline once no check has failed. The pipeline-wide fields (name, `params`,
//! run settings) are checked here; the checks of each step, of the references
//! between steps and of the expanded size live in the sibling modules.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_yaml::Value;

use super::checker::{Checker, check_duration};
use super::container::{RawContainer, check_container};
use super::expand::{Links, check_expanded_size, check_step_total, expand_step, trial_name};
use super::gather::check_gathers;
use super::graph::{StepNames, resolve_references, topological_order};
use super::limits::SubmitLimits;
use super::locate::{Locator, strip_comment};
use super::names::{
    describe_name_rule, env_var_name, is_param_name, is_pipeline_name, is_step_name,
};
use super::partial::Partial;
use super::raw::{RawPipeline, describe_value, kind_of, positive_u32, scalar_text};
use super::step::check_step;
use super::suggest::suggest;
use super::types::{Diagnostic, Gather, Pipeline, SpecError};
use super::{DEFAULT_PROJECT, PRIORITY_RANGE};

/// Parses, validates and resolves a pipeline spec. `file_name` is used only in
/// messages; `overrides` are the `--param NAME=VALUE` values (see
/// [`parse_param_override`](super::parse_param_override)). All semantic
/// problems found are reported together; a YAML syntax, unknown-field or type
/// error is reported alone. Counts are checked against the default
/// [`SubmitLimits`]; see [`parse_pipeline_within`].
pub fn parse_pipeline(
    file_name: &str,
    yaml: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<Pipeline, SpecError> {
    parse_pipeline_within(file_name, yaml, overrides, &SubmitLimits::default())
}

/// [`parse_pipeline`] with the step, trial and expanded-size counts checked
/// against `limits` (a submission goes through
/// [`parse_submission`](super::parse_submission), which checks the file's size
/// first).
pub fn parse_pipeline_within(
    file_name: &str,
    yaml: &str,
    overrides: &BTreeMap<String, String>,
    limits: &SubmitLimits,
) -> Result<Pipeline, SpecError> {
    let empty = yaml.lines().all(|l| {
        let t = strip_comment(l).trim();
        t.is_empty() || t == "---"
    });
    if empty {
        return Err(SpecError::single(
            file_name,
            "the file is empty; a pipeline needs a `name` and `steps`".to_string(),
        ));
    }
    let raw: RawPipeline = serde_yaml::from_str(yaml).map_err(|e| yaml_error(file_name, &e))?;
    let steps = raw.steps.unwrap_or_default();
    let ck = Checker::new(file_name, Locator::new(yaml, steps.len()), *limits);

    // Pipeline name.
    let name = match raw.name {
        Some(name) => {
            if !is_pipeline_name(&name) {
                let at = ck.loc.top("name", Some(&name));
                ck.error(
                    at,
                    format!(
                        "pipeline name {name:?} is invalid: {}",
                        describe_name_rule("A-Z, a-z, 0-9, '_', '.', '-'")
                    ),
                );
            }
            name
        }
        None => {
            ck.error(
                None,
                "the pipeline has no `name` (add e.g. `name: my-pipeline` at the top)".to_string(),
            );
            String::new()
        }
    };
    let params = check_params(&ck, raw.params.unwrap_or_default().0, overrides);
    let run_settings = check_run_settings(
        &ck,
        &raw.priority,
        &raw.project,
        &raw.max_parallel,
        &raw.timeout,
    );

    let top = RawContainer {
        image: &raw.image,
        image_pull: &raw.image_pull,
        shm_size: &raw.shm_size,
        network: &raw.network,
        read_only_root: &raw.read_only_root,
    };
    let container_defaults = check_container(&ck, "the pipeline", |key| ck.loc.top(key, None), top);

    if steps.is_empty() {
        let at = ck.loc.top("steps", None);
        ck.error(at, "the pipeline has no steps".to_string());
    }

    // Step names.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut names_in_order: Vec<&str> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let Some(name) = step.name.as_deref() else {
            let at = ck.loc.step_head(i, None);
            ck.error(at, format!("step #{} has no `name`", i + 1));
            continue;
        };
        if !is_step_name(name) {
            let at = ck.loc.step_head(i, Some(name));
            ck.error(
                at,
                format!(
                    "step name {name:?} is invalid: {}",
                    describe_name_rule("A-Z, a-z, 0-9, '_', '-'")
                ),
            );
        }
        match index.get(name) {
            Some(&first) => {
                let first_line = ck.loc.step_head(first, Some(name)).map(|p| p.0);
                let at = ck.loc.step_head(i, Some(name));
                let first = first_line
                    .map(|l| format!(" (first at line {l})"))
                    .unwrap_or_default();
                ck.error(
                    at,
                    format!("step {name:?} is defined more than once{first}"),
                );
            }
            None => {
                index.insert(name.to_string(), i);
                names_in_order.push(name);
            }
        }
    }

    // Each step on its own.
    let partials: Vec<Partial> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| check_step(&ck, i, step, &params, &container_defaults))
        .collect();

    // References between steps.
    let known = StepNames {
        steps: &steps,
        index: &index,
        in_order: &names_in_order,
    };
    let (mut deps, mut inputs) = resolve_references(&ck, known, &partials);

    let mut gathers: Vec<Vec<Gather>> = partials
        .iter()
        .enumerate()
        .map(|(i, p)| check_gathers(&ck, i, known, &p.gather, &mut deps[i]))
        .collect();

    // The order is found on the steps as written; each matrix step is expanded
    // in its place afterwards.
    let order = topological_order(&ck, &steps, &deps);
    check_step_total(&ck, &partials);
    check_expanded_size(&ck, &partials, &deps);

    let mut diagnostics = ck.into_diagnostics();
    if !diagnostics.is_empty() {
        // In file order; unlocated ones (e.g. about `--param`) first.
        diagnostics.sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
        return Err(SpecError { diagnostics });
    }

    // What each step stands for when another step needs it: itself, or every
    // trial of its matrix.
    let expanded_names: Vec<Vec<String>> = partials
        .iter()
        .map(|p| match &p.matrix {
            Some(matrix) => (0..matrix.len()).map(|k| trial_name(&p.name, k)).collect(),
            None => vec![p.name.clone()],
        })
        .collect();
    let mut partials: Vec<Option<Partial>> = partials.into_iter().map(Some).collect();
    let mut resolved = Vec::new();
    for i in order {
        let Some(p) = partials[i].take() else {
            continue;
        };
        let needs: BTreeSet<&String> = deps[i].iter().flat_map(|&j| &expanded_names[j]).collect();
        let links = Links {
            needs: needs.into_iter().cloned().collect(),
            inputs: std::mem::take(&mut inputs[i]),
            gather: std::mem::take(&mut gathers[i]),
        };
        expand_step(p, links, &mut resolved);
    }
    Ok(Pipeline {
        name,
        params,
        steps: resolved,
        priority: run_settings.priority,
        project: run_settings.project,
        max_parallel: run_settings.max_parallel,
        timeout_ms: run_settings.timeout_ms,
    })
}

/// A serde_yaml error as a diagnostic, its position taken out of the message.
fn yaml_error(file: &str, err: &serde_yaml::Error) -> SpecError {
    let mut message = err.to_string();
    let location = err.location();
    if let Some(loc) = &location {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(i) = message.find(&suffix) {
            message.replace_range(i..i + suffix.len(), "");
        }
    }
    SpecError {
        diagnostics: vec![Diagnostic {
            file: file.to_string(),
            line: location.as_ref().map(serde_yaml::Location::line),
            column: location.as_ref().map(serde_yaml::Location::column),
            message,
        }],
    }
}

/// Checks parameter names and defaults, applies overrides; returns the resolved
/// values of every declared parameter.
fn check_params(
    ck: &Checker<'_>,
    raw: BTreeMap<String, Value>,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &raw {
        if !is_param_name(name) {
            let at = ck.loc.top("params", Some(name));
            ck.error(
                at,
                format!(
                    "parameter name {name:?} is invalid: it must start with a letter or '_' \
                     and contain only letters, digits and '_'"
                ),
            );
        } else {
            let var = env_var_name("FERRY_PARAM_", name);
            if let Some(other) = vars.get(&var) {
                let at = ck
                    .loc
                    .top("params", Some(name))
                    .max(ck.loc.top("params", Some(other)));
                ck.error(
                    at,
                    format!(
                        "parameters {other:?} and {name:?} both become the environment \
                         variable {var}"
                    ),
                );
            } else {
                vars.insert(var, name.clone());
            }
        }
        let text = scalar_text(value).unwrap_or_else(|| {
            let at = ck.loc.top("params", Some(name));
            ck.error(
                at,
                format!(
                    "parameter {name:?} has {} as its default; a default must be a string, \
                     integer, float or bool",
                    kind_of(value)
                ),
            );
            String::new()
        });
        values.insert(name.clone(), text);
    }
    let declared: Vec<&str> = raw.keys().map(String::as_str).collect();
    for (name, value) in overrides {
        match values.get_mut(name) {
            Some(slot) => *slot = value.clone(),
            None => {
                let hint = suggest(name, declared.iter().copied())
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                let list = if declared.is_empty() {
                    "it declares no parameters".to_string()
                } else {
                    format!("it declares: {}", declared.join(", "))
                };
                ck.error(
                    None,
                    format!(
                        "--param {name}={}: the pipeline has no parameter {name:?} \
                         ({list}{hint})",
                        super::limits::cut_short(value)
                    ),
                );
            }
        }
    }
    // Parameters travel in every run record and view: bounded like any input.
    for problem in super::limits::param_value_problems(
        values
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    ) {
        ck.error(ck.loc.top("params", None), problem);
    }
    values
}

/// The run-wide settings at the top of a pipeline.
struct RunSettings {
    priority: i32,
    project: String,
    max_parallel: Option<u32>,
    timeout_ms: Option<u64>,
}

/// Checks `priority`, `project`, `max_parallel` and `timeout` at the top of the
/// pipeline; a field left out or refused keeps its default.
fn check_run_settings(
    ck: &Checker<'_>,
    priority: &Option<Value>,
    project: &Option<Value>,
    max_parallel: &Option<Value>,
    timeout: &Option<Value>,
) -> RunSettings {
    let mut settings = RunSettings {
        priority: 0,
        project: DEFAULT_PROJECT.to_string(),
        max_parallel: None,
        timeout_ms: None,
    };
    if let Some(v) = priority {
        match v.as_i64().filter(|p| PRIORITY_RANGE.contains(p)) {
            Some(p) => settings.priority = p as i32,
            None => {
                let at = ck.loc.top("priority", None);
                ck.error(
                    at,
                    format!(
                        "priority must be an integer from {} to {} (higher runs first), got {}",
                        PRIORITY_RANGE.start(),
                        PRIORITY_RANGE.end(),
                        describe_value(v)
                    ),
                );
            }
        }
    }
    if let Some(v) = project {
        match v.as_str() {
            Some(name) if is_pipeline_name(name) => settings.project = name.to_string(),
            _ => {
                let at = ck.loc.top("project", None);
                ck.error(
                    at,
                    format!(
                        "project must be a name ({}), got {}",
                        describe_name_rule("A-Z, a-z, 0-9, '_', '.', '-'"),
                        describe_value(v)
                    ),
                );
            }
        }
    }
    if let Some(v) = max_parallel {
        match positive_u32(v) {
            Some(n) => settings.max_parallel = Some(n),
            None => {
                let at = ck.loc.top("max_parallel", None);
                ck.error(
                    at,
                    format!(
                        "max_parallel must be a positive integer (steps of this run at once), got {}",
                        describe_value(v)
                    ),
                );
            }
        }
    }
    if let Some(v) = timeout {
        let at = ck.loc.top("timeout", None);
        settings.timeout_ms = check_duration(ck, at, "the pipeline's timeout", v);
    }
    settings
}
