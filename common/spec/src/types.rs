//! The public types of a spec: the resolved [`Pipeline`] and its [`Step`]s as the
//! coordinator stores them, and the [`SpecError`] a spec is refused with.
//!
//! These are what the other crates see; everything else under `spec` only
//! produces them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{DEFAULT_PROJECT, DEFAULT_RETRY_BACKOFF_MS};

fn default_project() -> String {
    DEFAULT_PROJECT.to_string()
}

fn default_retry_backoff_ms() -> u64 {
    DEFAULT_RETRY_BACKOFF_MS
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A validated, resolved pipeline, as the coordinator stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    /// Resolved parameter values (defaults overridden by `--param`), rendered as
    /// strings: `42`, `0.3`, `true`, `text`.
    pub params: BTreeMap<String, String>,
    /// In a topological order: every step after all its dependencies; ties broken
    /// by the order in the file.
    pub steps: Vec<Step>,
    /// Higher runs are placed first (default 0).
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i32,
    /// Who the run is accounted to for quotas and fair share.
    #[serde(default = "default_project")]
    pub project: String,
    /// Most steps of one run that may hold a worker at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// The whole run is stopped (and fails) after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One resolved step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Argument vector, parameters substituted. `shell: S` becomes
    /// `["/bin/sh", "-c", S]`.
    pub command: Vec<String>,
    /// Explicit `needs` ∪ steps referenced by inputs ∪ the trials of gathered
    /// sweeps; a matrix step named in `needs` stands for all its trials (`train.0`,
    /// `train.1`, ...). Sorted, deduplicated.
    pub needs: Vec<String>,
    /// Sorted by name.
    pub inputs: Vec<Input>,
    /// As declared, normalized (no `./`, no empty components).
    pub outputs: Vec<String>,
    /// Parameters substituted.
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub retries: u32,
    pub timeout_ms: Option<u64>,
    /// Constraints on the GPUs counted in `resources.gpus`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub gpu: GpuConstraint,
    /// Labels a worker must carry to run the step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Delay before the first retry; each further retry waits twice as long.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// The pipeline parameters the step sees, by name: those it names as
    /// `${params.NAME}` in its command, shell or env, and those listed under its
    /// `params:`. Only these are exported to it (`FERRY_PARAM_<NAME>`) and only
    /// these enter its cache key. Sorted, deduplicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    /// Step caching (`cache:`); on unless `cache: false`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub cache: CacheSpec,
    /// Set on each step expanded from a step written with `matrix:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// Sweeps (steps written with `matrix:`) whose every trial this step receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gather: Vec<Gather>,
    /// Cluster secrets the step receives (`secrets:`), by name: the values are
    /// never in the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::SecretUse>,
    /// The image the step runs in, and how (`image:` and the container
    /// settings, the step's over the pipeline's); none: a process on the
    /// worker's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
}

/// How a step runs in a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// As written: a reference (`python:3.11-slim`, `registry/team/x@sha256:...`);
    /// the worker resolves it to the image's ID before the step starts.
    pub image: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub pull: ImagePull,
    /// The container's `/dev/shm`; none: the runtime's default (64 MiB in Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: Network,
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only_root: bool,
}

/// When the worker pulls a step's image (`image_pull:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImagePull {
    /// Only when the worker does not have it.
    #[default]
    IfNotPresent,
    /// Before every attempt (a moved tag is followed).
    Always,
    /// Never: a missing image fails the attempt.
    Never,
}

/// The network a step's container joins (`network:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The runtime's default bridge: outbound access.
    #[default]
    Bridge,
    /// No network at all.
    None,
}

/// How a step is cached (`cache:` on a step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSpec {
    /// `cache: false` turns caching off for the step.
    pub enabled: bool,
    /// `cache.version`: change it to invalidate earlier results on purpose.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `cache.paths`: files or folders of the code bundle (relative, normalized)
    /// that stand for the step's code in its cache key instead of the whole
    /// bundle. Empty: the whole bundle. Sorted, deduplicated; a folder is
    /// written without its trailing `/`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// `cache.secrets: true`: the names and versions (never the values) of the
    /// step's secrets enter its cache key, so setting a secret again invalidates
    /// the step's earlier results.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secrets: bool,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            enabled: true,
            version: String::new(),
            paths: Vec::new(),
            secrets: false,
        }
    }
}

/// One combination of a step written with `matrix:`; the step is expanded into
/// one step per combination, named `<step>.<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The step as written (`train`).
    pub of: String,
    /// 0-based, in expansion order.
    pub index: u32,
    /// This combination's values (`${matrix.NAME}`, `FERRY_MATRIX_<NAME>`).
    pub values: BTreeMap<String, String>,
    /// Most trials of this sweep that may hold a worker at once (`max_parallel`
    /// on the matrix step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// A sweep a step gathers: it needs every trial of `step` and receives their
/// outputs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gather {
    /// The matrix step as written (`train`).
    pub step: String,
    /// Pick the best trial by this metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestBy>,
}

/// Which trial is best: the one whose last value of `metric` is highest (`max`)
/// or lowest (`min`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BestBy {
    pub metric: String,
    pub goal: Goal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    #[default]
    Max,
    Min,
}

impl Goal {
    pub fn as_str(self) -> &'static str {
        match self {
            Goal::Max => "max",
            Goal::Min => "min",
        }
    }

    /// Whether `a` is better than `b` (NaN is never better).
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::Max => a > b,
            Goal::Min => a < b,
        }
    }
}

/// Which GPUs may serve a step: a model (case-insensitive substring of the name
/// the driver reports, e.g. `H100`) and a minimum of memory per GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct GpuConstraint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_memory_bytes: u64,
}

/// An input of a step: the output `output` of step `step`, made available to the
/// step under the local name `name` (env var `FERRY_INPUT_<NAME>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    pub step: String,
    pub output: String,
}

/// Resources a step reserves on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

/// One or more problems with a spec (or with a `--param`), ready to show to a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct SpecError {
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem, with its position in the file when known (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

pub(super) fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `file` of diagnostics about the command line rather than a spec file.
pub(super) const COMMAND_LINE: &str = "command line";

impl SpecError {
    pub(crate) fn single(file: &str, message: String) -> Self {
        SpecError {
            diagnostics: vec![Diagnostic {
                file: file.to_string(),
                line: None,
                column: None,
                message,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_format() {
        let d = Diagnostic {
            file: "pipeline.yaml".into(),
            line: Some(14),
            column: Some(7),
            message: "boom".into(),
        };
        assert_eq!(d.to_string(), "error: pipeline.yaml:14:7: boom");
        let e = SpecError {
            diagnostics: vec![
                d,
                Diagnostic {
                    file: "p.yaml".into(),
                    line: None,
                    column: None,
                    message: "bang".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "error: pipeline.yaml:14:7: boom\nerror: p.yaml: bang"
        );
    }
}
