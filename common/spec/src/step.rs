//! The checks of one step on its own: command or shell, outputs, env,
//! resources, retries, timeouts, node selector and the parameters it reads.
//! Its `matrix`, `cache` and `gather` are checked by their own modules; what
//! involves other steps is checked later, in `graph` and `gather`.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use super::cache::check_cache;
use super::checker::{Checker, StepContext, check_duration};
use super::container::{ContainerFields, RawContainer, check_container};
use super::gather::check_gather_item;
use super::matrix::{check_matrix, matrix_keys};
use super::names::is_param_name;
use super::partial::Partial;
use super::paths::normalize_output;
use super::raw::{RawStep, describe_value, kind_of, positive_u32, scalar_text};
use super::secrets::check_secrets;
use super::suggest::{did_you_mean, suggest};
use super::template::{Scope, StepText, Template};
use super::types::{GpuConstraint, Resources};
use super::units::{format_duration_ms, parse_cpu_millis, parse_memory_bytes};
use super::{
    DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES, DEFAULT_RETRY_BACKOFF_MS, MAX_RETRIES,
    MAX_RETRY_BACKOFF_MS, MAX_SELECTOR_LABELS,
};

/// Checks everything about one step that does not involve other steps.
pub(super) fn check_step(
    ck: &Checker<'_>,
    i: usize,
    step: &RawStep,
    params: &BTreeMap<String, String>,
    container_defaults: &ContainerFields,
) -> Partial {
    let me = step.name.as_deref();
    let label = me.map_or_else(|| format!("#{}", i + 1), |n| format!("{n:?}"));
    let cx = StepContext {
        ck,
        i,
        me,
        label: &label,
    };

    // Matrix first: its keys are what `${matrix.NAME}` may name. They are taken
    // even from an invalid matrix, so that one mistake is reported once.
    let matrix = step.matrix.as_ref().and_then(|m| check_matrix(&cx, m));
    let matrix_keys = step.matrix.as_ref().map(matrix_keys);
    let mut text = StepText {
        scope: Scope {
            params,
            matrix_keys: matrix_keys.as_ref(),
        },
        used_params: BTreeSet::new(),
    };

    // Command.
    let command = match (&step.command, &step.shell) {
        (Some(_), Some(_)) => {
            let at = cx.at("shell", None);
            cx.error(
                at,
                format!("step {label} has both `command` and `shell`; use exactly one"),
            );
            Vec::new()
        }
        (None, None) => {
            let at = cx.head();
            cx.error(
                at,
                format!(
                    "step {label} has neither `command` (an argument list) nor `shell` \
                     (a command line for /bin/sh)"
                ),
            );
            Vec::new()
        }
        (None, Some(script)) => {
            if script.trim().is_empty() {
                let at = cx.at("shell", None);
                cx.error(at, format!("step {label} has an empty `shell` script"));
            }
            let what = format!("the shell script of step {label}");
            let script = text.substitute(&cx, "shell", &what, script);
            vec![
                Template::literal("/bin/sh"),
                Template::literal("-c"),
                script,
            ]
        }
        (Some(command), None) => check_command(&cx, &mut text, command),
    };

    // Outputs.
    let mut outputs: Vec<String> = Vec::new();
    for output in step.outputs.iter().flatten() {
        let token = if output.is_empty() { "\"\"" } else { output };
        let at = cx.at("outputs", Some(token));
        match normalize_output(output) {
            Err(why) => cx.error(at, format!("output {output:?} of step {label} {why}")),
            Ok(norm) if outputs.contains(&norm) => {
                cx.error(
                    at,
                    format!("output {output:?} of step {label} is declared twice"),
                );
            }
            Ok(norm) => {
                let clash = outputs.iter().find(|o| {
                    norm.strip_prefix(o.as_str())
                        .is_some_and(|r| r.starts_with('/'))
                        || o.strip_prefix(norm.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                });
                if let Some(other) = clash {
                    cx.error(
                        at,
                        format!(
                            "output {output:?} of step {label} clashes with output {other:?}: \
                             one would be a file inside the other"
                        ),
                    );
                } else {
                    outputs.push(norm);
                }
            }
        }
    }

    // Env.
    let mut env: BTreeMap<String, Template> = BTreeMap::new();
    for (key, value) in step.env.iter().flat_map(|m| &m.0) {
        if !is_param_name(key) {
            let at = cx.at("env", Some(key));
            cx.error(
                at,
                format!(
                    "env var name {key:?} of step {label} is invalid: it must start with a \
                     letter or '_' and contain only letters, digits and '_'"
                ),
            );
            continue;
        }
        if key.starts_with("FERRY_") {
            let at = cx.at("env", Some(key));
            cx.error(
                at,
                format!(
                    "env var {key:?} of step {label} uses the reserved prefix FERRY_ \
                     (Ferry sets those variables itself)"
                ),
            );
            continue;
        }
        let Some(value_text) = scalar_text(value) else {
            let at = cx.at("env", Some(key));
            cx.error(
                at,
                format!(
                    "env var {key:?} of step {label} has {} as its value; env values must be \
                     strings, numbers or booleans",
                    kind_of(value)
                ),
            );
            continue;
        };
        let what = format!("env var {key} of step {label}");
        let value = text.substitute(&cx, "env", &what, &value_text);
        env.insert(key.clone(), value);
    }

    // Resources.
    let mut gpu = GpuConstraint::default();
    let mut resources = Resources {
        cpu_millis: DEFAULT_CPU_MILLIS,
        memory_bytes: DEFAULT_MEMORY_BYTES,
        gpus: 0,
    };
    if let Some(r) = &step.resources {
        if let Some(v) = &r.cpu {
            let parsed = match v {
                Value::Number(_) | Value::String(_) => {
                    parse_cpu_millis(&scalar_text(v).unwrap_or_default())
                }
                _ => Err(format!(
                    "it is {}; use a number of cores such as 0.5 or 2, or millicores such as \
                     \"500m\"",
                    kind_of(v)
                )),
            };
            match parsed {
                Ok(m) => resources.cpu_millis = m,
                Err(e) => {
                    let at = cx.at("resources", Some("cpu"));
                    cx.error(at, format!("resources.cpu of step {label} is invalid: {e}"));
                }
            }
        }
        if let Some(v) = &r.memory {
            let parsed = match v {
                Value::Number(_) | Value::String(_) => {
                    parse_memory_bytes(&scalar_text(v).unwrap_or_default())
                }
                _ => Err(format!(
                    "it is {}; use bytes or a size such as \"512Mi\" or \"2G\"",
                    kind_of(v)
                )),
            };
            match parsed {
                Ok(b) => resources.memory_bytes = b,
                Err(e) => {
                    let at = cx.at("resources", Some("memory"));
                    cx.error(
                        at,
                        format!("resources.memory of step {label} is invalid: {e}"),
                    );
                }
            }
        }
        if let Some(v) = &r.gpu {
            let count_of = |v: &Value| match v {
                Value::Number(n) => n.as_u64().and_then(|g| u32::try_from(g).ok()),
                Value::String(s) => s.trim().parse::<u32>().ok(),
                _ => None,
            };
            let at = cx.at("resources", Some("gpu"));
            match v {
                Value::Mapping(map) => {
                    for (key, value) in map {
                        match key.as_str() {
                            Some("count") => match count_of(value) {
                                Some(g) => resources.gpus = g,
                                None => cx.error(
                                    at,
                                    format!(
                                        "resources.gpu.count of step {label} must be a non-negative integer, got {}",
                                        describe_value(value)
                                    ),
                                ),
                            },
                            Some("model") => match scalar_text(value) {
                                Some(model) if !model.trim().is_empty() => {
                                    gpu.model = Some(model.trim().to_string());
                                }
                                _ => cx.error(
                                    at,
                                    format!(
                                        "resources.gpu.model of step {label} must be a model name such as \"H100\", got {}",
                                        describe_value(value)
                                    ),
                                ),
                            },
                            Some("min_memory") => {
                                match parse_memory_bytes(&scalar_text(value).unwrap_or_default()) {
                                    Ok(bytes) => gpu.min_memory_bytes = bytes,
                                    Err(e) => cx.error(
                                        at,
                                        format!(
                                            "resources.gpu.min_memory of step {label} is invalid: {e}"
                                        ),
                                    ),
                                }
                            }
                            _ => cx.error(
                                at,
                                format!(
                                    "resources.gpu of step {label} has an unknown field {}; use `count`, `model` and `min_memory`",
                                    describe_value(key)
                                ),
                            ),
                        }
                    }
                    if resources.gpus == 0 && gpu != GpuConstraint::default() {
                        cx.error(
                            at,
                            format!(
                                "resources.gpu of step {label} sets a model or min_memory but no `count`; add e.g. `count: 1`"
                            ),
                        );
                    }
                }
                other => match count_of(other) {
                    Some(g) => resources.gpus = g,
                    None => cx.error(
                        at,
                        format!(
                            "resources.gpu of step {label} must be a non-negative integer or a map with `count`, `model` and `min_memory`, got {}",
                            describe_value(other)
                        ),
                    ),
                },
            }
        }
    }

    // Retries.
    let mut retries = 0;
    if let Some(v) = &step.retries {
        match v.as_u64().filter(|&r| r <= u64::from(MAX_RETRIES)) {
            Some(r) => retries = u32::try_from(r).unwrap_or(MAX_RETRIES),
            None => {
                let at = cx.at("retries", None);
                let got = describe_value(v);
                cx.error(
                    at,
                    format!(
                        "retries of step {label} must be an integer from 0 to {MAX_RETRIES}, got {got}"
                    ),
                );
            }
        }
    }

    // Timeout and retry backoff.
    let timeout_ms = step.timeout.as_ref().and_then(|v| {
        let at = cx.at("timeout", None);
        check_duration(ck, at, &format!("timeout of step {label}"), v)
    });
    let retry_backoff_ms = step
        .retry_backoff
        .as_ref()
        .and_then(|v| {
            let at = cx.at("retry_backoff", None);
            let what = format!("retry_backoff of step {label}");
            let ms = check_duration(ck, at, &what, v)?;
            if ms > MAX_RETRY_BACKOFF_MS {
                cx.error(
                    at,
                    format!(
                        "{what} is {}; at most {} is allowed",
                        v.as_str().unwrap_or_default(),
                        format_duration_ms(MAX_RETRY_BACKOFF_MS)
                    ),
                );
                return None;
            }
            Some(ms)
        })
        .unwrap_or(DEFAULT_RETRY_BACKOFF_MS);

    // Node selector.
    let mut node_selector = BTreeMap::new();
    if let Some(map) = &step.node_selector {
        let at = cx.at("node_selector", None);
        if map.0.len() > MAX_SELECTOR_LABELS {
            cx.error(
                at,
                format!(
                    "node_selector of step {label} has {} labels; at most {MAX_SELECTOR_LABELS} are allowed",
                    map.0.len()
                ),
            );
        }
        for (key, value) in &map.0 {
            match scalar_text(value) {
                Some(text) if !key.trim().is_empty() => {
                    node_selector.insert(key.clone(), text);
                }
                Some(_) => cx.error(at, format!("node_selector of step {label} has an empty label name")),
                None => cx.error(
                    cx.at("node_selector", Some(key)),
                    format!(
                        "node_selector label {key:?} of step {label} must be a plain value such as \"a\", got {}",
                        describe_value(value)
                    ),
                ),
            }
        }
    }

    // What the step reads of the pipeline: the parameters it names, and those it
    // lists because it reads them from its environment.
    let mut used_params = text.used_params;
    for name in step.params.iter().flatten() {
        if params.contains_key(name) {
            used_params.insert(name.clone());
        } else {
            let at = cx.at("params", Some(name));
            let hint = if params.is_empty() {
                " (it declares no parameters)".to_string()
            } else {
                did_you_mean(suggest(name, params.keys().map(String::as_str)))
            };
            cx.error(
                at,
                format!(
                    "step {label} lists {name:?} under `params`, but the pipeline has no \
                     parameter {name:?}{hint}"
                ),
            );
        }
    }

    let cache = step
        .cache
        .as_ref()
        .map(|c| check_cache(&cx, c))
        .unwrap_or_default();
    let max_parallel = step
        .max_parallel
        .as_ref()
        .and_then(|v| check_step_max_parallel(&cx, step, v));
    let gather = step
        .gather
        .iter()
        .flatten()
        .filter_map(|item| check_gather_item(&cx, item))
        .collect();
    let env_names = env.keys().cloned().collect();
    let secrets = step
        .secrets
        .as_ref()
        .map(|v| check_secrets(&cx, v, &env_names))
        .unwrap_or_default();
    let own = RawContainer {
        image: &step.image,
        image_pull: &step.image_pull,
        shm_size: &step.shm_size,
        network: &step.network,
        read_only_root: &step.read_only_root,
    };
    let container = check_container(ck, &format!("step {label}"), |key| cx.at(key, None), own)
        .resolve(container_defaults, ck, &label);

    Partial {
        name: me.unwrap_or_default().to_string(),
        command,
        outputs,
        env,
        resources,
        retries,
        timeout_ms,
        gpu,
        node_selector,
        retry_backoff_ms,
        params: used_params.into_iter().collect(),
        cache,
        matrix,
        max_parallel,
        gather,
        secrets,
        container,
    }
}

/// A step's `command:`: a non-empty list of arguments, each with its
/// placeholders substituted.
fn check_command(cx: &StepContext<'_>, text: &mut StepText<'_>, command: &Value) -> Vec<Template> {
    let label = cx.label;
    let items = match command {
        Value::Sequence(items) => items,
        Value::String(_) => {
            let at = cx.at("command", None);
            cx.error(
                at,
                format!(
                    "the command of step {label} is a string, but it must be a list of arguments \
                     such as [\"python3\", \"train.py\"]; to run a command line with /bin/sh, use \
                     `shell:` instead"
                ),
            );
            return Vec::new();
        }
        other => {
            let at = cx.at("command", None);
            cx.error(
                at,
                format!(
                    "the command of step {label} is {}, but it must be a list of arguments such as \
                     [\"python3\", \"train.py\"]",
                    kind_of(other)
                ),
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        let at = cx.at("command", None);
        cx.error(at, format!("step {label} has an empty command"));
        return Vec::new();
    }
    let what = format!("the command of step {label}");
    let mut argv = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let Some(argument) = scalar_text(item) else {
            let at = cx.at("command", None);
            cx.error(
                at,
                format!(
                    "argument {} of the command of step {label} is {}; arguments must be strings, \
                     numbers or booleans",
                    n + 1,
                    kind_of(item)
                ),
            );
            continue;
        };
        argv.push(text.substitute(cx, "command", &what, &argument));
    }
    if argv.first().is_some_and(Template::is_blank) {
        let at = cx.at("command", None);
        cx.error(
            at,
            format!("the first argument of the command of step {label} (the program) is empty"),
        );
    }
    argv
}

/// `max_parallel` on a step: how many of its trials may run at once.
fn check_step_max_parallel(cx: &StepContext<'_>, step: &RawStep, value: &Value) -> Option<u32> {
    let label = cx.label;
    let at = cx.at("max_parallel", None);
    if step.matrix.is_none() {
        cx.error(
            at,
            format!(
                "max_parallel of step {label} limits how many of its trials run at once, but \
                 the step has no `matrix`; to limit the whole run, set max_parallel at the top \
                 of the pipeline"
            ),
        );
        return None;
    }
    let limit = positive_u32(value);
    if limit.is_none() {
        cx.error(
            at,
            format!(
                "max_parallel of step {label} must be a positive integer (trials of this step \
                 at once), got {}",
                describe_value(value)
            ),
        );
    }
    limit
}
