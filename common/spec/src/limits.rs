//! Bounds on what a client or a worker may hand the coordinators that are not
//! part of a step's own checks: pipeline parameter values (checked by
//! `parse_pipeline`, so the CLI refuses exactly what the coordinator refuses) and
//! what a worker advertises when it registers (checked by the worker at start and
//! by the coordinator's agent service). Every check is pure; each message names
//! the field and the limit and never echoes an oversize value whole. Also the
//! limits on a submitted pipeline ([`SubmitLimits`], the coordinators'
//! `[limits]`; checked by `parse_submission`).

use serde::{Deserialize, Serialize};

use super::{MAX_EXPANDED_BYTES, MAX_SPEC_BYTES, MAX_STEPS, MAX_TRIALS_PER_STEP};

/// Longest value (in bytes) one pipeline parameter may have, a default or a
/// `--param` override.
pub const MAX_PARAM_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes all of a pipeline's parameter values may take together.
pub const MAX_PARAMS_TOTAL_BYTES: usize = 1024 * 1024;
/// Most labels a worker may advertise.
pub const MAX_WORKER_LABELS: usize = 64;
/// Longest label key (bytes) a worker may advertise.
pub const MAX_LABEL_KEY_BYTES: usize = 128;
/// Longest label value (bytes) a worker may advertise.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Most GPUs a worker may advertise.
pub const MAX_WORKER_GPUS: usize = 64;
/// Longest GPU UUID or model name (bytes) a worker may advertise.
pub const MAX_GPU_FIELD_BYTES: usize = 256;
/// Most attempts a re-registering worker may say it still holds.
pub const MAX_RUNNING_AT_REGISTRATION: usize = 4096;

/// Largest `max_spec_bytes` a cluster may set: a pipeline file travels in one
/// gRPC message ([`MAX_SUBMIT_MESSAGE_BYTES`] at most, with its parameters).
pub const MAX_SPEC_BYTES_CEILING: usize = 12 * 1024 * 1024;
/// Largest message a client may send the coordinators' `Control` service (and
/// the most they accept): a pipeline file at [`MAX_SPEC_BYTES_CEILING`], its
/// parameters ([`MAX_PARAMS_TOTAL_BYTES`]) and room to spare.
pub const MAX_SUBMIT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest `max_expanded_bytes` a cluster may set: the expanded pipeline is one
/// Raft entry (JSON about the size the estimate gives), replicated to every
/// member in one peer message of at most 64 MiB; the rest is the estimate's
/// margin.
pub const MAX_EXPANDED_BYTES_CEILING: usize = 56 * 1024 * 1024;

/// The bounds on one submitted pipeline (`[limits]` in coordinator.toml; every
/// member should set the same values). `Default` is today's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitLimits {
    /// Largest pipeline file, in bytes, checked before it is parsed.
    pub max_spec_bytes: usize,
    /// Most steps once every `matrix:` step is expanded.
    pub max_steps: usize,
    /// Most trials one `matrix:` step may expand to.
    pub max_trials_per_step: usize,
    /// Most bytes the expanded pipeline may take (estimated).
    pub max_expanded_bytes: usize,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits {
            max_spec_bytes: MAX_SPEC_BYTES,
            max_steps: MAX_STEPS,
            max_trials_per_step: MAX_TRIALS_PER_STEP,
            max_expanded_bytes: MAX_EXPANDED_BYTES,
        }
    }
}

impl SubmitLimits {
    /// Why these limits cannot be used, if they cannot: the key (as in
    /// `[limits]`) and what is wrong with its value.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let bounds = [
            (
                "max_spec_bytes",
                self.max_spec_bytes,
                MAX_SPEC_BYTES_CEILING,
            ),
            ("max_steps", self.max_steps, usize::MAX),
            ("max_trials_per_step", self.max_trials_per_step, usize::MAX),
            (
                "max_expanded_bytes",
                self.max_expanded_bytes,
                MAX_EXPANDED_BYTES_CEILING,
            ),
        ];
        for (key, value, ceiling) in bounds {
            if value == 0 {
                return Some((key, "must be at least 1 (it is 0)".to_string()));
            }
            if value > ceiling {
                return Some((key, format!("must be at most {ceiling} (it is {value})")));
            }
        }
        if self.max_trials_per_step > self.max_steps {
            return Some((
                "max_trials_per_step",
                format!(
                    "must not exceed max_steps ({}; it is {})",
                    self.max_steps, self.max_trials_per_step
                ),
            ));
        }
        None
    }
}

/// How many characters of a value a message shows before cutting it short.
const SHOWN_CHARS: usize = 60;

/// `value` for an error message: quoted, cut to its first characters with how
/// long it was when it is long.
pub fn shown_value(value: &str) -> String {
    if value.chars().count() <= SHOWN_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(SHOWN_CHARS).collect();
    format!("{head:?}… ({} bytes)", value.len())
}

/// `value` for an error message as it is, or cut to its first characters with
/// how long it was when it is long (unquoted, unlike [`shown_value`]).
pub fn cut_short(value: &str) -> String {
    if value.chars().count() <= SHOWN_CHARS {
        return value.to_string();
    }
    let head: String = value.chars().take(SHOWN_CHARS).collect();
    format!("{head}… ({} bytes)", value.len())
}

/// The problems with a pipeline's parameter values (`name`, `value` pairs): each
/// value over [`MAX_PARAM_VALUE_BYTES`], then all of them together over
/// [`MAX_PARAMS_TOTAL_BYTES`]. Empty when they are within bounds.
pub fn param_value_problems<'a>(
    values: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut total = 0usize;
    for (name, value) in values {
        total = total.saturating_add(name.len()).saturating_add(value.len());
        if value.len() > MAX_PARAM_VALUE_BYTES {
            problems.push(format!(
                "parameter {name:?} has a value of {} bytes; a parameter value may have at \
                 most {MAX_PARAM_VALUE_BYTES} bytes (pass large data as an input file in the \
                 code bundle or an artifact instead)",
                value.len()
            ));
        }
    }
    if total > MAX_PARAMS_TOTAL_BYTES {
        problems.push(format!(
            "the parameters take {total} bytes together (names and values); the limit is \
             {MAX_PARAMS_TOTAL_BYTES} bytes"
        ));
    }
    problems
}

/// Why a worker's advertised inventory is refused, if it is: too many labels, a
/// label key or value too long, too many GPUs, or a GPU's UUID or model too long.
/// `gpus` gives each GPU's (uuid, model).
pub fn worker_inventory_problem<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    gpus: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    let mut count = 0usize;
    for (key, value) in labels {
        count += 1;
        if count > MAX_WORKER_LABELS {
            return Some(format!(
                "the worker advertises more than {MAX_WORKER_LABELS} labels; the limit is \
                 {MAX_WORKER_LABELS}"
            ));
        }
        if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES {
            return Some(format!(
                "label key {} has {} bytes; a label key must have 1 to {MAX_LABEL_KEY_BYTES} \
                 bytes",
                shown_value(key),
                key.len()
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Some(format!(
                "label {key:?} has a value of {} bytes; a label value may have at most \
                 {MAX_LABEL_VALUE_BYTES} bytes",
                value.len()
            ));
        }
    }
    let mut count = 0usize;
    for (uuid, model) in gpus {
        count += 1;
        if count > MAX_WORKER_GPUS {
            return Some(format!(
                "the worker advertises more than {MAX_WORKER_GPUS} GPUs; the limit is \
                 {MAX_WORKER_GPUS}"
            ));
        }
        for (field, text) in [("uuid", uuid), ("model", model)] {
            if text.len() > MAX_GPU_FIELD_BYTES {
                return Some(format!(
                    "GPU #{count}'s {field} has {} bytes; the limit is {MAX_GPU_FIELD_BYTES} \
                     bytes",
                    text.len()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_values_within_bounds_pass() {
        let big = "x".repeat(MAX_PARAM_VALUE_BYTES);
        assert!(param_value_problems([("a", big.as_str()), ("b", "1")]).is_empty());
        assert!(param_value_problems([]).is_empty());
    }

    #[test]
    fn an_oversize_value_is_named_with_the_limit() {
        let big = "x".repeat(7 * 1024 * 1024);
        let problems = param_value_problems([("blob", big.as_str())]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"blob\"") && problems[0].contains("65536"));
        assert!(problems[1].contains("1048576"));
        // Never the value itself.
        assert!(problems.iter().all(|p| p.len() < 400));
    }

    #[test]
    fn many_values_within_the_per_value_bound_can_exceed_the_total() {
        let value = "y".repeat(MAX_PARAM_VALUE_BYTES);
        let names: Vec<String> = (0..17).map(|i| format!("p{i}")).collect();
        let problems = param_value_problems(names.iter().map(|n| (n.as_str(), value.as_str())));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("together"));
    }

    #[test]
    fn worker_inventories_are_bounded() {
        let none: [(&str, &str); 0] = [];
        assert_eq!(worker_inventory_problem([("zone", "a")], none), None);
        let huge = "v".repeat(6 * 1024 * 1024);
        let refused = worker_inventory_problem([("zone", huge.as_str())], none).unwrap();
        assert!(
            refused.contains("\"zone\"") && refused.contains("256"),
            "{refused}"
        );
        assert!(refused.len() < 300);
        let long_key = "k".repeat(MAX_LABEL_KEY_BYTES + 1);
        assert!(worker_inventory_problem([(long_key.as_str(), "")], none).is_some());
        assert!(worker_inventory_problem([("", "x")], none).is_some());
        let keys: Vec<String> = (0..=MAX_WORKER_LABELS).map(|i| format!("k{i}")).collect();
        let refused =
            worker_inventory_problem(keys.iter().map(|k| (k.as_str(), "v")), none).unwrap();
        assert!(refused.contains("64 labels"), "{refused}");
        let gpus = vec![("GPU-1", "H100"); 50_000];
        let refused = worker_inventory_problem(none, gpus).unwrap();
        assert!(refused.contains("64 GPUs"), "{refused}");
        assert_eq!(
            worker_inventory_problem(none, vec![("GPU-1", "H100"); 64]),
            None
        );
        let model = "m".repeat(MAX_GPU_FIELD_BYTES + 1);
        assert!(worker_inventory_problem(none, [("GPU-1", model.as_str())]).is_some());
    }

    #[test]
    fn long_values_are_shown_cut_short() {
        assert_eq!(shown_value("abc"), "\"abc\"");
        assert_eq!(cut_short("abc"), "abc");
        assert!(cut_short(&"x".repeat(100)).ends_with("… (100 bytes)"));
        let shown = shown_value(&"é".repeat(1000));
        assert!(shown.ends_with("(2000 bytes)") && shown.chars().count() < 100);
    }
}
