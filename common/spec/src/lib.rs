//! Pipeline specs: parsing, validation and resolution; and `cron`, the schedule
//! expressions a pipeline can be run on.
//!
//! A crate of its own so that the coordinator's pure core (`ferry-coordinator-core`)
//! can use it without pulling in any IO or async dependency: the compiler keeps
//! this crate pure. `ferry_common::spec` and `ferry_common::cron` re-export it.
//!
//! A pipeline is written in YAML (see [`parse_pipeline`]) and resolved into a
//! [`Pipeline`]: parameters substituted, dependencies made explicit, resources
//! parsed, steps in a topological order. The module is pure (no IO, no clock) so
//! the client and the coordinator accept exactly the same specs and report the
//! same, user-facing diagnostics.
//!
//! serde_yaml gives no positions for values, so semantic errors are located with a
//! small heuristic over the source text (`Locator`): it finds the block of each
//! step under `steps:`, then the field, then the offending token. When it is
//! unsure it gives no position rather than a wrong one.
//!
//! The module is split along the stages a spec goes through:
//!
//! - `types`: the public, resolved types (`Pipeline`, `Step`, ...) and the
//!   errors (`SpecError`, `Diagnostic`);
//! - `raw`: the structs serde reads the YAML into, before any checking;
//! - `units`, `names`, `paths`: parsing and formatting of durations, sizes and
//!   CPU amounts, of names and environment variables, and of relative paths;
//! - `template` and `suggest`: `${...}` substitution and "did you mean" hints;
//! - `locate` and `checker`: positions in the source text and the diagnostics
//!   sink that checks report to;
//! - `pipeline`: [`parse_pipeline`], which drives the checks below;
//! - `container`: `image` and the container settings, at the top (every step's
//!   default) and on a step;
//! - `step`, `matrix`, `cache`, `gather`: the checks of one step (and the
//!   expansion of a step written with `matrix:` into its trials);
//! - `partial` and `expand`: a step as checked on its own, and the limits and
//!   expansion of the whole pipeline into trials;
//! - `graph`: references between steps, their order and cycles;
//! - `limits`: bounds on parameter values and on what a worker advertises.

mod cache;
mod checker;
mod container;
pub mod cron;
mod expand;
mod gather;
mod graph;
pub mod limits;
mod locate;
mod matrix;
mod names;
mod partial;
mod paths;
mod pipeline;
mod raw;
mod secrets;
mod step;
mod submit;
mod suggest;
mod template;
mod types;
mod units;

#[cfg(test)]
mod tests;

pub use limits::{
    MAX_EXPANDED_BYTES_CEILING, MAX_SPEC_BYTES_CEILING, MAX_SUBMIT_MESSAGE_BYTES, SubmitLimits,
};
pub use names::{env_var_name, parse_param_override};
pub use paths::validate_output_path;
pub use pipeline::{parse_pipeline, parse_pipeline_within};
pub use secrets::{
    MAX_SECRET_NAME_LEN, MAX_SECRETS_PER_STEP, SecretTarget, SecretUse, check_secret_name,
};
pub use submit::{parse_submission, schedule_problem};
pub use types::{
    BestBy, CacheSpec, ContainerSpec, Diagnostic, Gather, Goal, GpuConstraint, ImagePull, Input,
    Network, Pipeline, Resources, SpecError, Step, Trial,
};
pub use units::{
    format_bytes, format_duration_ms, parse_cpu_millis, parse_duration_ms, parse_memory_bytes,
};

/// CPU reserved for a step that declares none (half a core).
pub const DEFAULT_CPU_MILLIS: u64 = 500;
/// Memory reserved for a step that declares none (256 MiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Largest accepted `retries`.
pub const MAX_RETRIES: u32 = 20;
/// Longest accepted pipeline or step name.
pub const MAX_NAME_LEN: usize = 64;
/// First delay before a failed step is retried (it doubles with each retry).
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 1000;
/// Longest delay between two attempts of a step.
pub const MAX_RETRY_BACKOFF_MS: u64 = 10 * 60 * 1000;
/// Most bytes a pipeline may take once its sweeps are expanded (estimated):
/// the expanded pipeline is what the coordinators store and replicate. The
/// default of `[limits] max_expanded_bytes` ([`SubmitLimits`]): room for
/// [`MAX_STEPS`] plain steps (about 300 bytes each by the estimate).
pub const MAX_EXPANDED_BYTES: usize = 48 * 1024 * 1024;
/// Accepted `priority` range.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;
/// The project of a pipeline that names none.
pub const DEFAULT_PROJECT: &str = "default";
/// Most labels a `node_selector` may ask for.
pub const MAX_SELECTOR_LABELS: usize = 32;
/// Most combinations (trials) one step written with `matrix:` may expand to:
/// the default of `[limits] max_trials_per_step` ([`SubmitLimits`]).
pub const MAX_TRIALS_PER_STEP: usize = 10_000;
/// Most steps a pipeline may have once every `matrix:` step is expanded: the
/// default of `[limits] max_steps` ([`SubmitLimits`]).
pub const MAX_STEPS: usize = 100_000;
/// Largest pipeline file (bytes) a submission may carry: the default of
/// `[limits] max_spec_bytes` ([`SubmitLimits`]): room for [`MAX_STEPS`]
/// steps written out one by one (a short step takes 40 to 80 bytes).
pub const MAX_SPEC_BYTES: usize = 8 * 1024 * 1024;
/// Longest metric name (in bytes) that `gather` may pick the best trial by; the
/// same bound applies to the metrics steps report (the worker skips longer names,
/// the coordinator refuses a report with one).
pub const MAX_METRIC_NAME_LEN: usize = 128;
/// Most metric values kept per attempt: the worker keeps the first ones and the
/// last of each name, the coordinator refuses a report with more.
pub const MAX_METRICS_PER_ATTEMPT: usize = 10_000;
/// Most bytes of a step's `FERRY_METRICS` file the worker reads.
pub const MAX_METRICS_FILE_BYTES: u64 = 4 * 1024 * 1024;
