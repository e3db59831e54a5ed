//! Pipeline specs: parsing, validation and resolution.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

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
/// the expanded pipeline is what the coordinators store and replicate.
pub const MAX_EXPANDED_BYTES: usize = 4 * 1024 * 1024;
/// Accepted `priority` range.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;
/// The project of a pipeline that names none.
pub const DEFAULT_PROJECT: &str = "default";
/// Most labels a `node_selector` may ask for.
pub const MAX_SELECTOR_LABELS: usize = 32;
/// Most combinations (trials) one step written with `matrix:` may expand to.
pub const MAX_TRIALS_PER_STEP: usize = 1000;
/// Most steps a pipeline may have once every `matrix:` step is expanded.
pub const MAX_STEPS: usize = 5000;
/// Longest metric name (in bytes) that `gather` may pick the best trial by; the
/// same bound applies to the metrics steps report.
pub const MAX_METRIC_NAME_LEN: usize = 128;

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
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            enabled: true,
            version: String::new(),
            paths: Vec::new(),
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

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `file` of diagnostics about the command line rather than a spec file.
const COMMAND_LINE: &str = "command line";

impl SpecError {
    fn single(file: &str, message: String) -> Self {
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

// ---------------------------------------------------------------------------
// Raw, as written in the file.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pipeline: a map with `name`, `params` and `steps`"
)]
struct RawPipeline {
    name: Option<String>,
    params: Option<UniqueMap<Value>>,
    steps: Option<Vec<RawStep>>,
    priority: Option<Value>,
    project: Option<Value>,
    max_parallel: Option<Value>,
    timeout: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a step: a map with `name` and `command` or `shell`"
)]
struct RawStep {
    name: Option<String>,
    command: Option<Value>,
    shell: Option<String>,
    needs: Option<Vec<String>>,
    inputs: Option<UniqueMap<String>>,
    outputs: Option<Vec<String>>,
    env: Option<UniqueMap<Value>>,
    resources: Option<RawResources>,
    retries: Option<Value>,
    timeout: Option<Value>,
    retry_backoff: Option<Value>,
    node_selector: Option<UniqueMap<Value>>,
    params: Option<Vec<String>>,
    cache: Option<Value>,
    matrix: Option<Value>,
    max_parallel: Option<Value>,
    gather: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "resources: a map with `cpu`, `memory` and `gpu`"
)]
struct RawResources {
    cpu: Option<Value>,
    memory: Option<Value>,
    gpu: Option<Value>,
}

/// A string-keyed map that rejects duplicate keys (serde_yaml keeps the last one
/// when deserializing into a `BTreeMap`). `null` is an empty map.
struct UniqueMap<V>(BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(UniqueMap::default())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key {key:?}"
                        )));
                    }
                    let value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(UniqueMap(map))
            }
        }

        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

// ---------------------------------------------------------------------------
// Public helpers.

/// Parses one `--param NAME=VALUE` argument. The value may be empty and may contain
/// `=`; the name must be a valid parameter name.
pub fn parse_param_override(text: &str) -> Result<(String, String), SpecError> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(SpecError::single(
            COMMAND_LINE,
            format!("--param {text:?} is not of the form NAME=VALUE (e.g. --param seed=42)"),
        ));
    };
    if !is_param_name(name) {
        return Err(SpecError::single(
            COMMAND_LINE,
            format!(
                "--param {text:?}: {name:?} is not a valid parameter name \
                 (letters, digits and '_', not starting with a digit)"
            ),
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Parses a duration such as `500ms`, `30s`, `10m`, `1h`, `1h30m`, `1.5h` or `2d`
/// into milliseconds. Components are `<number><unit>` with units `ms`, `s`, `m`,
/// `h`, `d`; fractions of a millisecond are dropped. `0s` gives `Ok(0)`: callers
/// that need a positive duration check that themselves.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    const HINT: &str = "use e.g. 500ms, 30s, 10m, 1h or 1h30m";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the duration is empty ({HINT})"));
    }
    let bytes = t.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0;
    while pos < bytes.len() {
        let num_start = pos;
        while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
            pos += 1;
        }
        let number = &t[num_start..pos];
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit = &t[unit_start..pos];
        if number.is_empty() {
            return Err(format!("{text:?} is not a duration ({HINT})"));
        }
        if unit.is_empty() {
            return Err(format!(
                "{text:?} is not a duration: {number:?} has no unit ({HINT})"
            ));
        }
        let unit_ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration: unknown unit {unit:?} (units are ms, s, m, h, d)"
                ));
            }
        };
        let (value, _exact) = scaled_decimal(number, unit_ms)
            .map_err(|why| format!("{text:?} is not a duration: {why}"))?;
        total = total
            .checked_add(value)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    }
    u64::try_from(total).map_err(|_| format!("{text:?} is too long a duration"))
}

/// Renders a duration in milliseconds the way specs write durations and reasons
/// say them: `250ms`, `1.5s`, `2m`, `1m30s`, `1h30m`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{:.1}s", ms as f64 / 1000.0)
        };
    }
    let minutes = ms / 60_000;
    let seconds = (ms % 60_000) / 1000;
    if minutes < 60 {
        return if seconds == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{seconds}s")
        };
    }
    let (hours, minutes) = (minutes / 60, minutes % 60);
    if minutes == 0 {
        format!("{hours}h")
    } else {
        format!("{hours}h{minutes}m")
    }
}

/// Renders a size the way Ferry shows sizes: `512 B`, `1.5 KiB`, `40.0 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a memory size: a plain number of bytes (`1048576`) or a number with a
/// binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal (`K`, `M`, `G`, `T`) suffix, e.g.
/// `512Mi`, `1.5Gi`, `2G`. Fractions of a byte are dropped; the size must be > 0.
pub fn parse_memory_bytes(text: &str) -> Result<u64, String> {
    const HINT: &str =
        "use bytes or a suffix: Ki, Mi, Gi, Ti (powers of 1024) or K, M, G, T (powers of 1000)";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the memory size is empty ({HINT})"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; a memory size must be positive"
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?} is not a memory size ({HINT})"));
    }
    let multiplier: u128 = match suffix {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a memory size: unknown suffix {suffix:?} ({HINT})"
            ));
        }
    };
    let (bytes, _exact) = scaled_decimal(number, multiplier)
        .map_err(|why| format!("{text:?} is not a memory size: {why}"))?;
    if bytes == 0 {
        return Err(format!("memory size {text:?} must be greater than zero"));
    }
    u64::try_from(bytes).map_err(|_| format!("memory size {text:?} is too large"))
}

/// Parses a CPU amount: a number of cores (`2`, `0.5`) or millicores (`500m`).
/// The amount must be a whole number of millicores and greater than zero.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    const HINT: &str = "use a number of cores such as 0.5 or 2, or millicores such as \"500m\"";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the CPU amount is empty ({HINT})"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; a CPU amount must be positive"
        ));
    }
    let millis = if let Some(m) = t.strip_suffix('m') {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{text:?} is not a CPU amount: millicores must be a whole number ({HINT})"
            ));
        }
        m.parse::<u64>()
            .map_err(|_| format!("CPU amount {text:?} is too large"))?
    } else {
        if !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("{text:?} is not a CPU amount ({HINT})"));
        }
        let (millis, exact) = scaled_decimal(t, 1_000)
            .map_err(|why| format!("{text:?} is not a CPU amount: {why}"))?;
        if !exact {
            return Err(format!(
                "CPU amount {text:?} is finer than one millicore (0.001 cores)"
            ));
        }
        u64::try_from(millis).map_err(|_| format!("CPU amount {text:?} is too large"))?
    };
    if millis == 0 {
        return Err(format!("CPU amount {text:?} must be greater than zero"));
    }
    Ok(millis)
}

/// Validates and normalizes an output path: relative, naming a file inside the
/// step's work directory. `./a//b.txt` becomes `a/b.txt`. The error reads as a
/// sentence: `output path "../x" leaves the step's work directory`.
pub fn validate_output_path(path: &str) -> Result<String, String> {
    normalize_output(path).map_err(|why| format!("output path {path:?} {why}"))
}

/// The problem with an output path, as a predicate: `is empty`, `leaves the step's
/// work directory`, ...
fn normalize_output(path: &str) -> Result<String, String> {
    const ROOT: &str = "the step's work directory";
    check_relative(path, "outputs", ROOT)?;
    if path.ends_with('/') {
        return Err("ends with '/'; an output must name a file".to_string());
    }
    let parts = relative_parts(path, ROOT)?;
    if parts.is_empty() {
        return Err("does not name a file".to_string());
    }
    Ok(parts.join("/"))
}

/// Like [`normalize_output`], for a file or folder of the code bundle (`cache.paths`):
/// a trailing `/` marks a folder and is dropped.
fn normalize_bundle_path(path: &str) -> Result<String, String> {
    const ROOT: &str = "the code bundle";
    check_relative(path, "cache paths", ROOT)?;
    let parts = relative_parts(path, ROOT)?;
    if parts.is_empty() {
        return Err(
            "names the whole code bundle; leave out `paths` to key the cache on all of it"
                .to_string(),
        );
    }
    Ok(parts.join("/"))
}

/// The problems a relative path can show before it is split: empty, odd
/// characters, absolute. `kind` and `root` complete the sentence "`kind` are
/// paths relative to `root`".
fn check_relative(path: &str, kind: &str, root: &str) -> Result<(), String> {
    if path.trim().is_empty() {
        return Err("is empty".to_string());
    }
    if path.contains('\0') {
        return Err("contains a NUL character".to_string());
    }
    if path.contains('\\') {
        return Err("contains a backslash; separate directories with '/'".to_string());
    }
    if path.starts_with('/') {
        return Err(format!("is absolute; {kind} are paths relative to {root}"));
    }
    Ok(())
}

/// The components of a relative path, without empty and `.` ones. A `..` is
/// refused: one that climbs above `root` says so, any other asks to drop it.
fn relative_parts<'p>(path: &'p str, root: &str) -> Result<Vec<&'p str>, String> {
    let mut parts: Vec<&str> = Vec::new();
    let mut depth: i64 = 0;
    let mut escapes = false;
    let mut dotdot = false;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                dotdot = true;
                depth -= 1;
                if depth < 0 {
                    escapes = true;
                }
            }
            _ => {
                depth += 1;
                parts.push(part);
            }
        }
    }
    if escapes {
        return Err(format!("leaves {root}"));
    }
    if dotdot {
        return Err("contains a '..' component; write the path without it".to_string());
    }
    Ok(parts)
}

/// Environment variable naming: `prefix` followed by `name` upper-cased, with every
/// character outside `[A-Z0-9_]` replaced by `_`. A `_` is inserted after a
/// non-empty prefix that does not end with one, so `("FERRY_INPUT", "model")` and
/// `("FERRY_INPUT_", "model")` both give `FERRY_INPUT_MODEL`.
pub fn env_var_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len() + 1);
    out.push_str(prefix);
    if !prefix.is_empty() && !prefix.ends_with('_') {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// `digits[.digits]` times `scale`, exactly, rounded down. Returns whether the
/// result was exact.
fn scaled_decimal(number: &str, scale: u128) -> Result<(u128, bool), String> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{number:?} is not a number"));
    }
    let too_large = || format!("{number:?} is too large");
    let mut value: u128 = 0;
    for b in int.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    value = value.checked_mul(scale).ok_or_else(too_large)?;
    // Fraction digits beyond 30 cannot change the result for any scale we use.
    let frac = &frac[..frac.len().min(30)];
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for b in frac.bytes() {
        numerator = numerator * 10 + u128::from(b - b'0');
        denominator *= 10;
    }
    let scaled = numerator.checked_mul(scale).ok_or_else(too_large)?;
    let value = value
        .checked_add(scaled / denominator)
        .ok_or_else(too_large)?;
    Ok((value, scaled % denominator == 0))
}

// ---------------------------------------------------------------------------
// Name rules.

fn is_pipeline_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_step_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

fn is_input_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `[A-Za-z_][A-Za-z0-9_]*`: parameter and env var names.
fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn describe_name_rule(chars: &str) -> String {
    format!("use 1 to {MAX_NAME_LEN} characters from {chars}")
}

// ---------------------------------------------------------------------------
// Values.

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "no value (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A value for a message: numbers and booleans as written, strings quoted, others
/// by kind.
fn describe_value(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => kind_of(other).to_string(),
    }
}

/// A problem with a `${...}` placeholder.
enum PlaceholderError {
    Unclosed(String),
    Malformed(String),
    /// `${params.NAME}` of an undeclared parameter.
    Unknown {
        raw: String,
        name: String,
    },
    /// `${matrix.NAME}` of a key the step's matrix does not define.
    UnknownMatrixKey {
        raw: String,
        name: String,
    },
    /// `${matrix.NAME}` in a step without `matrix`.
    NoMatrix(String),
}

/// Text with its parameters substituted and its `${matrix.NAME}` placeholders
/// left to be filled in for each trial, so that a value is never substituted
/// into twice.
#[derive(Debug, Clone, Default)]
struct Template {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone)]
enum TemplatePart {
    Text(String),
    MatrixValue(String),
}

impl Template {
    fn literal(text: &str) -> Self {
        let mut template = Template::default();
        template.push_text(text);
        template
    }

    fn push_text(&mut self, text: &str) {
        match self.parts.last_mut() {
            Some(TemplatePart::Text(last)) => last.push_str(text),
            _ if text.is_empty() => {}
            _ => self.parts.push(TemplatePart::Text(text.to_string())),
        }
    }

    /// Whether the text is only whitespace whatever the matrix values.
    fn is_blank(&self) -> bool {
        self.parts
            .iter()
            .all(|p| matches!(p, TemplatePart::Text(t) if t.trim().is_empty()))
    }

    /// The text with the matrix values of one trial (none for a plain step).
    fn render(&self, matrix_values: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(text) => out.push_str(text),
                TemplatePart::MatrixValue(name) => {
                    out.push_str(matrix_values.get(name).map_or("", String::as_str));
                }
            }
        }
        out
    }
}

/// What the placeholders of one step may name.
#[derive(Clone, Copy)]
struct Scope<'a> {
    params: &'a BTreeMap<String, String>,
    /// The keys of the step's matrix; `None` for a step without `matrix`.
    matrix_keys: Option<&'a BTreeSet<String>>,
}

/// Substitutes `${params.NAME}` placeholders and keeps `${matrix.NAME}` ones for
/// later; only `${` starts a placeholder. Adds every parameter named to `used`.
fn substitute(
    text: &str,
    scope: Scope<'_>,
    used: &mut BTreeSet<String>,
) -> Result<Template, Vec<PlaceholderError>> {
    let mut out = Template::default();
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_text(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            errors.push(PlaceholderError::Unclosed(rest[start..].to_string()));
            rest = "";
            break;
        };
        let inner = &after[..end];
        let raw = &rest[start..start + 2 + end + 1];
        let param = inner.strip_prefix("params.").filter(|n| is_param_name(n));
        let matrix_key = inner.strip_prefix("matrix.").filter(|n| is_param_name(n));
        match (param, matrix_key) {
            (Some(name), _) => match scope.params.get(name) {
                Some(value) => {
                    out.push_text(value);
                    used.insert(name.to_string());
                }
                None => errors.push(PlaceholderError::Unknown {
                    raw: raw.to_string(),
                    name: name.to_string(),
                }),
            },
            (None, Some(name)) => match scope.matrix_keys {
                Some(keys) if keys.contains(name) => {
                    out.parts.push(TemplatePart::MatrixValue(name.to_string()));
                }
                Some(_) => errors.push(PlaceholderError::UnknownMatrixKey {
                    raw: raw.to_string(),
                    name: name.to_string(),
                }),
                None => errors.push(PlaceholderError::NoMatrix(raw.to_string())),
            },
            (None, None) => errors.push(PlaceholderError::Malformed(raw.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_text(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------
// Suggestions.

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate within edit distance 2 (and closer than the typed
/// name's own length, so `ab` never suggests `cd`); ties go to the first.
fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = name.chars().count();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == name {
            continue;
        }
        let d = levenshtein(name, candidate);
        if d <= 2 && d < len && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

fn did_you_mean(s: Option<&str>) -> String {
    s.map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Locating things in the source text.

/// 1-based (line, column).
type Pos = (usize, usize);

/// The lines of one step item under `steps:`: `[start, end)`, with `col` the byte
/// column at which its keys start (`name` in `  - name: x`).
#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    end: usize,
    col: usize,
}

/// Heuristic positions of things in the YAML text, for block-style YAML. Every
/// lookup returns `None` rather than guessing when the text does not look as
/// expected (flow style, odd indentation, ...).
struct Locator<'a> {
    /// Source lines with comments removed.
    lines: Vec<&'a str>,
    /// One block per step, or `None` if the items could not be matched to the
    /// parsed steps one to one.
    steps: Option<Vec<Block>>,
}

/// Characters that make up names and paths; a token match must not be glued to
/// more of these.
fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The line without a trailing `# comment` (a `#` at the start or after
/// whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev: Option<char> = None;
    let mut escaped = false;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quote = None;
                }
            }
            Some(q) => {
                if c == q {
                    if chars.peek().is_some_and(|&(_, n)| n == q) {
                        chars.next(); // '' is an escaped quote
                    } else {
                        quote = None;
                    }
                }
            }
            None => {
                let at_boundary =
                    prev.is_none_or(|p| p.is_whitespace() || matches!(p, '[' | '{' | ','));
                if (c == '"' || c == '\'') && at_boundary {
                    quote = Some(c);
                } else if c == '#' && prev.is_none_or(char::is_whitespace) {
                    return &line[..i];
                }
            }
        }
        prev = Some(c);
    }
    line
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

fn is_item_line(trimmed: &str) -> bool {
    trimmed == "-" || trimmed.starts_with("- ") || trimmed.starts_with("-\t")
}

/// The byte offset of the first occurrence of `token` in `line` at or after
/// `from` that is not glued to other name characters.
fn find_token(line: &str, from: usize, token: &str) -> Option<usize> {
    if token.is_empty() {
        return None;
    }
    let hay = line.get(from..)?;
    let first = token.chars().next()?;
    let last = token.chars().next_back()?;
    hay.match_indices(token).map(|(i, _)| from + i).find(|&i| {
        let before_ok = !is_token_char(first)
            || line[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !is_token_char(c));
        let after_ok = !is_token_char(last)
            || line[i + token.len()..]
                .chars()
                .next()
                .is_none_or(|c| !is_token_char(c));
        before_ok && after_ok
    })
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, step_count: usize) -> Self {
        let lines: Vec<&str> = text.lines().map(strip_comment).collect();
        let mut locator = Locator { lines, steps: None };
        locator.steps = locator.find_steps(step_count);
        locator
    }

    fn pos(&self, line: usize, byte: usize) -> Option<Pos> {
        let text = self.lines.get(line)?;
        let column = text.get(..byte)?.chars().count() + 1;
        Some((line + 1, column))
    }

    /// The field `key` among the lines `[start, end)` whose keys sit at byte column
    /// `col`: (line, end of the field's lines).
    fn find_field(
        &self,
        start: usize,
        end: usize,
        col: usize,
        key: &str,
    ) -> Option<(usize, usize)> {
        let end = end.min(self.lines.len());
        let line = (start..end).find(|&l| {
            let text = self.lines[l];
            let (Some(prefix), Some(rest)) = (text.get(..col), text.get(col..)) else {
                return false;
            };
            let prefix_ok = if l == start {
                prefix.chars().all(|c| c == ' ' || c == '-')
            } else {
                prefix.chars().all(|c| c == ' ')
            };
            prefix_ok
                && rest
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start_matches(' ').starts_with(':'))
        })?;
        let field_end = (line + 1..end)
            .find(|&l| {
                let text = self.lines[l];
                if is_blank(text) {
                    return false;
                }
                let indent = indent_of(text);
                indent < col || indent == col && !is_item_line(text.trim_start())
            })
            .unwrap_or(end);
        Some((line, field_end))
    }

    /// The first occurrence of `token` in the lines `[start, end)`, searching the
    /// first line only from byte `from`.
    fn search(&self, start: usize, end: usize, from: usize, token: &str) -> Option<Pos> {
        let end = end.min(self.lines.len());
        (start..end).find_map(|l| {
            let skip = if l == start { from } else { 0 };
            find_token(self.lines[l], skip, token).and_then(|b| self.pos(l, b))
        })
    }

    /// Position of `token` within the field `key` of a block (or of the key itself
    /// when the token is not found); `None` if the field is not found.
    fn in_field(&self, block: Block, key: &str, token: Option<&str>) -> Option<Pos> {
        let (line, field_end) = self.find_field(block.start, block.end, block.col, key)?;
        if let Some(token) = token {
            let after_key = block.col + key.len();
            if let Some(p) = self.search(line, field_end, after_key, token) {
                return Some(p);
            }
        }
        self.pos(line, block.col)
    }

    fn top_block(&self) -> Block {
        Block {
            start: 0,
            end: self.lines.len(),
            col: 0,
        }
    }

    /// A top-level field (or `token` inside it).
    fn top(&self, key: &str, token: Option<&str>) -> Option<Pos> {
        self.in_field(self.top_block(), key, token)
    }

    fn find_steps(&self, step_count: usize) -> Option<Vec<Block>> {
        let (line, end) = self.find_field(0, self.lines.len(), 0, "steps")?;
        let after = self.lines[line].get("steps".len()..)?.trim_start();
        if after.trim() != ":" {
            return None; // flow style or something unexpected
        }
        let mut starts = Vec::new();
        let mut item_indent = None;
        for l in line + 1..end {
            let text = self.lines[l];
            if is_blank(text) {
                continue;
            }
            let indent = indent_of(text);
            let item = is_item_line(text.trim_start());
            match item_indent {
                None if item => {
                    item_indent = Some(indent);
                    starts.push(l);
                }
                None => return None,
                Some(ii) if indent == ii && item => starts.push(l),
                Some(ii) if indent <= ii => return None,
                Some(_) => {}
            }
        }
        if starts.len() != step_count {
            return None;
        }
        let blocks = starts
            .iter()
            .enumerate()
            .map(|(k, &start)| {
                let end = starts.get(k + 1).copied().unwrap_or(end);
                let text = self.lines[start];
                let dash = indent_of(text);
                let after_dash = &text[dash + 1..];
                let col = if after_dash.trim().is_empty() {
                    (start + 1..end)
                        .find(|&l| !is_blank(self.lines[l]))
                        .map_or(dash + 2, |l| indent_of(self.lines[l]))
                } else {
                    dash + 1 + indent_of(after_dash)
                };
                Block { start, end, col }
            })
            .collect();
        Some(blocks)
    }

    fn step_block(&self, i: usize) -> Option<Block> {
        self.steps.as_ref()?.get(i).copied()
    }

    /// The start of step `i`: its `name` value, or its `-`.
    fn step_head(&self, i: usize, name: Option<&str>) -> Option<Pos> {
        let block = self.step_block(i)?;
        self.in_field(block, "name", name)
            .or_else(|| self.pos(block.start, indent_of(self.lines[block.start])))
    }

    /// `token` within field `key` of step `i`, else the field, else `token`
    /// anywhere in the step, else the step's head.
    fn step(&self, i: usize, name: Option<&str>, key: &str, token: Option<&str>) -> Option<Pos> {
        let block = self.step_block(i)?;
        self.in_field(block, key, token)
            .or_else(|| token.and_then(|t| self.search(block.start, block.end, 0, t)))
            .or_else(|| self.step_head(i, name))
    }
}

// ---------------------------------------------------------------------------
// Validation.

struct Checker<'a> {
    file: &'a str,
    loc: Locator<'a>,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, at: Option<Pos>, message: String) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_string(),
            line: at.map(|p| p.0),
            column: at.map(|p| p.1),
            message,
        });
    }
}

/// What one step resolves to on its own, before looking at other steps.
struct Partial {
    name: String,
    /// Parameters substituted; matrix values still to fill in per trial.
    command: Vec<Template>,
    outputs: Vec<String>,
    env: BTreeMap<String, Template>,
    resources: Resources,
    retries: u32,
    timeout_ms: Option<u64>,
    gpu: GpuConstraint,
    node_selector: BTreeMap<String, String>,
    retry_backoff_ms: u64,
    /// Named in the step's texts or listed under its `params`; sorted.
    params: Vec<String>,
    cache: CacheSpec,
    /// `None` for a plain step, and for a step whose matrix is invalid.
    matrix: Option<Matrix>,
    max_parallel: Option<u32>,
    /// As written: the gathered steps are checked against the others later.
    gather: Vec<Gather>,
}

/// Parses, validates and resolves a pipeline spec. `file_name` is used only in
/// messages; `overrides` are the `--param NAME=VALUE` values (see
/// [`parse_param_override`]). All semantic problems found are reported together;
/// a YAML syntax, unknown-field or type error is reported alone.
pub fn parse_pipeline(
    file_name: &str,
    yaml: &str,
    overrides: &BTreeMap<String, String>,
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
    let mut ck = Checker {
        file: file_name,
        loc: Locator::new(yaml, steps.len()),
        diagnostics: Vec::new(),
    };

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
    let params = check_params(&mut ck, raw.params.unwrap_or_default().0, overrides);
    let run_settings = check_run_settings(
        &mut ck,
        &raw.priority,
        &raw.project,
        &raw.max_parallel,
        &raw.timeout,
    );

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
        .map(|(i, step)| check_step(&mut ck, i, step, &params))
        .collect();

    // References between steps.
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

    let mut gathers: Vec<Vec<Gather>> = partials
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let known = StepNames {
                steps: &steps,
                index: &index,
                in_order: &names_in_order,
            };
            check_gathers(&mut ck, i, known, &p.gather, &mut deps[i])
        })
        .collect();

    // The order is found on the steps as written; each matrix step is expanded
    // in its place afterwards.
    let order = topological_order(&mut ck, &steps, &deps);
    check_step_total(&mut ck, &partials);
    check_expanded_size(&mut ck, &partials, &deps);

    if !ck.diagnostics.is_empty() {
        // In file order; unlocated ones (e.g. about `--param`) first.
        let mut diagnostics = ck.diagnostics;
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

/// The steps of a pipeline as written, for resolving references between them.
#[derive(Clone, Copy)]
struct StepNames<'a> {
    steps: &'a [RawStep],
    /// Step name → position in `steps`.
    index: &'a HashMap<String, usize>,
    /// Every distinct name, in file order (for suggestions).
    in_order: &'a [&'a str],
}

/// Resolves the `gather:` of step `i`: each entry must be a matrix step other
/// than the step itself, named once. Adds the gathered steps to `deps`.
fn check_gathers(
    ck: &mut Checker<'_>,
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

/// Reports a pipeline with more than [`MAX_STEPS`] steps once its matrices are
/// expanded. Counts only: nothing is expanded yet.
fn check_step_total(ck: &mut Checker<'_>, partials: &[Partial]) {
    let matrix_steps = partials.iter().filter(|p| p.matrix.is_some()).count();
    let trials = partials
        .iter()
        .filter_map(|p| p.matrix.as_ref())
        .fold(0usize, |sum, m| sum.saturating_add(m.len()));
    let total = trials.saturating_add(partials.len() - matrix_steps);
    if total <= MAX_STEPS {
        return;
    }
    let at = ck.loc.top("steps", None);
    let message = if matrix_steps == 0 {
        format!("the pipeline has {total} steps; at most {MAX_STEPS} are allowed")
    } else {
        format!(
            "the pipeline expands to {total} steps ({trials} of them trials of matrix steps); \
             at most {MAX_STEPS} are allowed"
        )
    };
    ck.error(at, message);
}

/// Reports a pipeline whose expansion would be too large to store and
/// replicate: each trial carries its own copy of its step's command and
/// environment, and each step needing a sweep names every trial. Estimated before
/// anything is expanded.
fn check_expanded_size(ck: &mut Checker<'_>, partials: &[Partial], deps: &[BTreeSet<usize>]) {
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
    if total <= MAX_EXPANDED_BYTES {
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
            format_bytes(MAX_EXPANDED_BYTES as u64)
        ),
    );
}

/// The name of trial `index` of matrix step `step`. Step names cannot contain
/// `.`, so it never clashes with a step as written.
fn trial_name(step: &str, index: usize) -> String {
    format!("{step}.{index}")
}

/// What a step receives from other steps, resolved.
struct Links {
    needs: Vec<String>,
    inputs: Vec<Input>,
    gather: Vec<Gather>,
}

/// The resolved step(s) of one checked step: the step itself, or one per
/// combination of its matrix (`<step>.<index>`, in index order), each with the
/// combination's values substituted and exported as `FERRY_MATRIX_<NAME>`.
fn expand_step(p: Partial, links: Links, out: &mut Vec<Step>) {
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
    ck: &mut Checker<'_>,
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
                        "--param {name}={value}: the pipeline has no parameter {name:?} \
                         ({list}{hint})"
                    ),
                );
            }
        }
    }
    values
}

/// Substitutes the placeholders in the texts of one step (command, shell, env)
/// and remembers the parameters they name.
struct StepText<'a> {
    i: usize,
    me: Option<&'a str>,
    scope: Scope<'a>,
    /// Parameters named so far.
    used_params: BTreeSet<String>,
}

impl StepText<'_> {
    /// `text` with its placeholders substituted, reporting problems as being in
    /// `what` (e.g. `the command of step "x"`), located in field `key` of the step.
    fn substitute(&mut self, ck: &mut Checker<'_>, key: &str, what: &str, text: &str) -> Template {
        match substitute(text, self.scope, &mut self.used_params) {
            Ok(template) => template,
            Err(errors) => {
                for error in errors {
                    self.report(ck, key, what, error);
                }
                Template::default()
            }
        }
    }

    fn report(&self, ck: &mut Checker<'_>, key: &str, what: &str, error: PlaceholderError) {
        let (i, step) = (self.i, self.me);
        match error {
            PlaceholderError::Unclosed(raw) => {
                let token = raw.lines().next().unwrap_or_default().trim_end();
                let at = ck.loc.step(i, step, key, Some(token));
                ck.error(
                    at,
                    format!("placeholder {raw:?} in {what} is not closed (missing '}}')"),
                );
            }
            PlaceholderError::Malformed(raw) => {
                let at = ck.loc.step(i, step, key, Some(&raw));
                let forms = if self.scope.matrix_keys.is_some() {
                    "${params.NAME} or ${matrix.NAME}"
                } else {
                    "${params.NAME}"
                };
                ck.error(
                    at,
                    format!("placeholder {raw:?} in {what} is not of the form {forms}"),
                );
            }
            PlaceholderError::Unknown { raw, name } => {
                let at = ck.loc.step(i, step, key, Some(&raw));
                let names = self.scope.params.keys().map(String::as_str);
                let hint = did_you_mean(suggest(&name, names));
                ck.error(
                    at,
                    format!(
                        "{raw} in {what} refers to parameter {name:?}, which is not \
                         declared{hint}"
                    ),
                );
            }
            PlaceholderError::UnknownMatrixKey { raw, name } => {
                let at = ck.loc.step(i, step, key, Some(&raw));
                let keys = self.scope.matrix_keys.into_iter().flatten();
                let hint = match suggest(&name, keys.clone().map(String::as_str)) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!(
                        "it defines: {}",
                        keys.map(String::as_str).collect::<Vec<_>>().join(", ")
                    ),
                };
                ck.error(
                    at,
                    format!(
                        "{raw} in {what} refers to matrix key {name:?}, which the step's \
                         matrix does not define ({hint})"
                    ),
                );
            }
            PlaceholderError::NoMatrix(raw) => {
                let at = ck.loc.step(i, step, key, Some(&raw));
                ck.error(
                    at,
                    format!(
                        "{raw} in {what} refers to a matrix value, but the step has no \
                         `matrix` (add e.g. `matrix: {{lr: [0.1, 0.01]}}`)"
                    ),
                );
            }
        }
    }
}

/// Checks everything about one step that does not involve other steps.
fn check_step(
    ck: &mut Checker<'_>,
    i: usize,
    step: &RawStep,
    params: &BTreeMap<String, String>,
) -> Partial {
    let me = step.name.as_deref();
    let label = me.map_or_else(|| format!("#{}", i + 1), |n| format!("{n:?}"));

    // Matrix first: its keys are what `${matrix.NAME}` may name. They are taken
    // even from an invalid matrix, so that one mistake is reported once.
    let matrix = step
        .matrix
        .as_ref()
        .and_then(|m| check_matrix(ck, i, me, &label, m));
    let matrix_keys = step.matrix.as_ref().map(matrix_keys);
    let mut text = StepText {
        i,
        me,
        scope: Scope {
            params,
            matrix_keys: matrix_keys.as_ref(),
        },
        used_params: BTreeSet::new(),
    };

    // Command.
    let command = match (&step.command, &step.shell) {
        (Some(_), Some(_)) => {
            let at = ck.loc.step(i, me, "shell", None);
            ck.error(
                at,
                format!("step {label} has both `command` and `shell`; use exactly one"),
            );
            Vec::new()
        }
        (None, None) => {
            let at = ck.loc.step_head(i, me);
            ck.error(
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
                let at = ck.loc.step(i, me, "shell", None);
                ck.error(at, format!("step {label} has an empty `shell` script"));
            }
            let what = format!("the shell script of step {label}");
            let script = text.substitute(ck, "shell", &what, script);
            vec![
                Template::literal("/bin/sh"),
                Template::literal("-c"),
                script,
            ]
        }
        (Some(command), None) => check_command(ck, &mut text, &label, command),
    };

    // Outputs.
    let mut outputs: Vec<String> = Vec::new();
    for output in step.outputs.iter().flatten() {
        let token = if output.is_empty() { "\"\"" } else { output };
        let at = ck.loc.step(i, me, "outputs", Some(token));
        match normalize_output(output) {
            Err(why) => ck.error(at, format!("output {output:?} of step {label} {why}")),
            Ok(norm) if outputs.contains(&norm) => {
                ck.error(
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
                    ck.error(
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
            let at = ck.loc.step(i, me, "env", Some(key));
            ck.error(
                at,
                format!(
                    "env var name {key:?} of step {label} is invalid: it must start with a \
                     letter or '_' and contain only letters, digits and '_'"
                ),
            );
            continue;
        }
        if key.starts_with("FERRY_") {
            let at = ck.loc.step(i, me, "env", Some(key));
            ck.error(
                at,
                format!(
                    "env var {key:?} of step {label} uses the reserved prefix FERRY_ \
                     (Ferry sets those variables itself)"
                ),
            );
            continue;
        }
        let Some(value_text) = scalar_text(value) else {
            let at = ck.loc.step(i, me, "env", Some(key));
            ck.error(
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
        let value = text.substitute(ck, "env", &what, &value_text);
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
                    let at = ck.loc.step(i, me, "resources", Some("cpu"));
                    ck.error(at, format!("resources.cpu of step {label} is invalid: {e}"));
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
                    let at = ck.loc.step(i, me, "resources", Some("memory"));
                    ck.error(
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
            let at = ck.loc.step(i, me, "resources", Some("gpu"));
            match v {
                Value::Mapping(map) => {
                    for (key, value) in map {
                        match key.as_str() {
                            Some("count") => match count_of(value) {
                                Some(g) => resources.gpus = g,
                                None => ck.error(
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
                                _ => ck.error(
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
                                    Err(e) => ck.error(
                                        at,
                                        format!(
                                            "resources.gpu.min_memory of step {label} is invalid: {e}"
                                        ),
                                    ),
                                }
                            }
                            _ => ck.error(
                                at,
                                format!(
                                    "resources.gpu of step {label} has an unknown field {}; use `count`, `model` and `min_memory`",
                                    describe_value(key)
                                ),
                            ),
                        }
                    }
                    if resources.gpus == 0 && gpu != GpuConstraint::default() {
                        ck.error(
                            at,
                            format!(
                                "resources.gpu of step {label} sets a model or min_memory but no `count`; add e.g. `count: 1`"
                            ),
                        );
                    }
                }
                other => match count_of(other) {
                    Some(g) => resources.gpus = g,
                    None => ck.error(
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
                let at = ck.loc.step(i, me, "retries", None);
                let got = describe_value(v);
                ck.error(
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
        let at = ck.loc.step(i, me, "timeout", None);
        check_duration(ck, at, &format!("timeout of step {label}"), v)
    });
    let retry_backoff_ms = step
        .retry_backoff
        .as_ref()
        .and_then(|v| {
            let at = ck.loc.step(i, me, "retry_backoff", None);
            let what = format!("retry_backoff of step {label}");
            let ms = check_duration(ck, at, &what, v)?;
            if ms > MAX_RETRY_BACKOFF_MS {
                ck.error(
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
        let at = ck.loc.step(i, me, "node_selector", None);
        if map.0.len() > MAX_SELECTOR_LABELS {
            ck.error(
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
                Some(_) => ck.error(at, format!("node_selector of step {label} has an empty label name")),
                None => ck.error(
                    ck.loc.step(i, me, "node_selector", Some(key)),
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
            let at = ck.loc.step(i, me, "params", Some(name));
            let hint = if params.is_empty() {
                " (it declares no parameters)".to_string()
            } else {
                did_you_mean(suggest(name, params.keys().map(String::as_str)))
            };
            ck.error(
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
        .map(|c| check_cache(ck, i, me, &label, c))
        .unwrap_or_default();
    let max_parallel = step
        .max_parallel
        .as_ref()
        .and_then(|v| check_step_max_parallel(ck, i, step, &label, v));
    let gather = step
        .gather
        .iter()
        .flatten()
        .filter_map(|item| check_gather_item(ck, i, me, &label, item))
        .collect();

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
    }
}

/// A duration field (`30s`, `10m`, `1h30m`): a positive number of milliseconds,
/// or an error naming `what` and saying how to write one.
fn check_duration(ck: &mut Checker<'_>, at: Option<Pos>, what: &str, v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => match parse_duration_ms(s) {
            Ok(0) => ck.error(at, format!("{what} must be greater than zero")),
            Ok(ms) => return Some(ms),
            Err(e) => ck.error(at, format!("{what} is invalid: {e}")),
        },
        Value::Number(n) => ck.error(
            at,
            format!("{what} is {n}, which has no unit; write e.g. \"{n}s\" or \"{n}m\""),
        ),
        other => ck.error(
            at,
            format!(
                "{what} is {}; write a duration such as \"30s\", \"10m\" or \"1h30m\"",
                kind_of(other)
            ),
        ),
    }
    None
}

/// The run-wide settings at the top of a pipeline.
struct RunSettings {
    priority: i32,
    project: String,
    max_parallel: Option<u32>,
    timeout_ms: Option<u64>,
}

fn check_run_settings(
    ck: &mut Checker<'_>,
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

fn check_command(
    ck: &mut Checker<'_>,
    text: &mut StepText<'_>,
    label: &str,
    command: &Value,
) -> Vec<Template> {
    let (i, me) = (text.i, text.me);
    let items = match command {
        Value::Sequence(items) => items,
        Value::String(_) => {
            let at = ck.loc.step(i, me, "command", None);
            ck.error(
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
            let at = ck.loc.step(i, me, "command", None);
            ck.error(
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
        let at = ck.loc.step(i, me, "command", None);
        ck.error(at, format!("step {label} has an empty command"));
        return Vec::new();
    }
    let what = format!("the command of step {label}");
    let mut argv = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let Some(argument) = scalar_text(item) else {
            let at = ck.loc.step(i, me, "command", None);
            ck.error(
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
        argv.push(text.substitute(ck, "command", &what, &argument));
    }
    if argv.first().is_some_and(Template::is_blank) {
        let at = ck.loc.step(i, me, "command", None);
        ck.error(
            at,
            format!("the first argument of the command of step {label} (the program) is empty"),
        );
    }
    argv
}

// ---------------------------------------------------------------------------
// Matrix, cache and gather.

/// A step's checked `matrix:`: its keys, sorted, and its combinations.
struct Matrix {
    keys: Vec<String>,
    combinations: Combinations,
}

/// The combinations of a matrix, values in the order of its keys.
enum Combinations {
    /// Every listed value of each key: the cartesian product, the last key
    /// varying fastest.
    Grid(Vec<Vec<String>>),
    /// One row per combination, in the order written.
    List(Vec<Vec<String>>),
}

impl Matrix {
    /// How many trials the step expands to (at most [`MAX_TRIALS_PER_STEP`]: a
    /// matrix is only built once its size is checked).
    fn len(&self) -> usize {
        match &self.combinations {
            Combinations::Grid(columns) => columns
                .iter()
                .fold(1, |count: usize, column| count.saturating_mul(column.len())),
            Combinations::List(rows) => rows.len(),
        }
    }

    /// The values of trial `index` (0-based, below [`Matrix::len`]), by key.
    fn values(&self, index: usize) -> BTreeMap<String, String> {
        let row: Vec<&String> = match &self.combinations {
            Combinations::List(rows) => rows.get(index).into_iter().flatten().collect(),
            Combinations::Grid(columns) => {
                // `index` in a mixed radix, the last column the lowest digit.
                let mut rest = index;
                let mut row: Vec<&String> = columns
                    .iter()
                    .rev()
                    .filter_map(|column| {
                        let size = column.len().max(1);
                        let value = column.get(rest % size);
                        rest /= size;
                        value
                    })
                    .collect();
                row.reverse();
                row
            }
        };
        self.keys
            .iter()
            .cloned()
            .zip(row.into_iter().cloned())
            .collect()
    }
}

/// The names a matrix uses, as written, even when it is invalid.
fn matrix_keys(matrix: &Value) -> BTreeSet<String> {
    let maps: Vec<&serde_yaml::Mapping> = match matrix {
        Value::Mapping(map) => vec![map],
        Value::Sequence(items) => items.iter().filter_map(Value::as_mapping).collect(),
        _ => Vec::new(),
    };
    maps.into_iter()
        .flat_map(|map| map.keys())
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Checks a step's `matrix:`: a map from names to lists of values (a grid), or
/// a list of maps (one per combination). `None` when it is invalid; every
/// problem is reported.
fn check_matrix(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    matrix: &Value,
) -> Option<Matrix> {
    match matrix {
        Value::Mapping(map) => check_matrix_grid(ck, i, me, label, map),
        Value::Sequence(items) => check_matrix_list(ck, i, me, label, items),
        other => {
            let at = ck.loc.step(i, me, "matrix", None);
            ck.error(
                at,
                format!(
                    "matrix of step {label} must be a map from names to lists of values \
                     (e.g. {{lr: [0.1, 0.01]}}) or a list of combinations \
                     (e.g. [{{lr: 0.1}}, {{lr: 0.01}}]), got {}",
                    describe_value(other)
                ),
            );
            None
        }
    }
}

/// `matrix: {lr: [0.1, 0.01], depth: [3, 5]}`.
fn check_matrix_grid(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    map: &serde_yaml::Mapping,
) -> Option<Matrix> {
    let at = ck.loc.step(i, me, "matrix", None);
    if map.is_empty() {
        ck.error(
            at,
            format!("matrix of step {label} is empty; give each name its values, e.g. {{lr: [0.1, 0.01]}}"),
        );
        return None;
    }
    let mut ok = true;
    let mut names = MatrixNames::default();
    let mut columns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, values) in map {
        let Some(name) = names.check(ck, i, me, label, key) else {
            ok = false;
            continue;
        };
        match check_matrix_column(ck, i, me, label, &name, values) {
            Some(column) => {
                columns.insert(name, column);
            }
            None => ok = false,
        }
    }
    // Sizes are multiplied with overflow checks before anything is expanded, so
    // a huge grid costs nothing but this message.
    let count = columns
        .values()
        .try_fold(1usize, |count, column| count.checked_mul(column.len()));
    ok &= check_trial_count(ck, at, label, count);
    ok.then(|| Matrix {
        keys: columns.keys().cloned().collect(),
        combinations: Combinations::Grid(columns.into_values().collect()),
    })
}

/// The values of one key of a grid: a non-empty list of distinct scalars.
fn check_matrix_column(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    name: &str,
    values: &Value,
) -> Option<Vec<String>> {
    let at = ck.loc.step(i, me, "matrix", Some(name));
    let Value::Sequence(items) = values else {
        ck.error(
            at,
            format!(
                "matrix key {name:?} of step {label} must list its values \
                 (e.g. {name}: [1, 2]), got {}",
                describe_value(values)
            ),
        );
        return None;
    };
    if items.is_empty() {
        ck.error(
            at,
            format!("matrix key {name:?} of step {label} lists no values"),
        );
        return None;
    }
    let mut ok = true;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut column = Vec::with_capacity(items.len());
    for item in items {
        match scalar_text(item) {
            Some(text) if seen.contains(&text) => {
                ok = false;
                ck.error(
                    at,
                    format!(
                        "matrix key {name:?} of step {label} lists {} twice; every \
                         combination must be different",
                        describe_value(item)
                    ),
                );
            }
            Some(text) => {
                seen.insert(text.clone());
                column.push(text);
            }
            None => {
                ok = false;
                ck.error(
                    at,
                    format!(
                        "a value of matrix key {name:?} of step {label} is {}; matrix values \
                         must be strings, numbers or booleans",
                        kind_of(item)
                    ),
                );
            }
        }
    }
    ok.then_some(column)
}

/// `matrix: [{lr: 0.1, depth: 3}, {lr: 0.01, depth: 5}]`.
fn check_matrix_list(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    items: &[Value],
) -> Option<Matrix> {
    let at = ck.loc.step(i, me, "matrix", None);
    if items.is_empty() {
        ck.error(
            at,
            format!(
                "matrix of step {label} is empty; list at least one combination, e.g. [{{lr: 0.1}}]"
            ),
        );
        return None;
    }
    if !check_trial_count(ck, at, label, Some(items.len())) {
        return None;
    }
    let mut ok = true;
    let mut names = MatrixNames::default();
    // (entry number, values by key) of each valid entry.
    let mut rows: Vec<(usize, BTreeMap<String, String>)> = Vec::new();
    for (n, item) in items.iter().enumerate() {
        match check_matrix_entry(ck, i, me, label, n + 1, item, &mut names) {
            Some(row) => rows.push((n + 1, row)),
            None => ok = false,
        }
    }
    if let Some((first_entry, first)) = rows.first() {
        for (entry, row) in &rows[1..] {
            if row.keys().ne(first.keys()) {
                ok = false;
                let keys = |row: &BTreeMap<String, String>| {
                    row.keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                ck.error(
                    at,
                    format!(
                        "matrix entry #{entry} of step {label} sets {} but entry #{first_entry} \
                         sets {}; every entry must set the same keys",
                        keys(row),
                        keys(first)
                    ),
                );
            }
        }
    }
    let mut seen: HashMap<Vec<&String>, usize> = HashMap::new();
    for (entry, row) in &rows {
        let values: Vec<&String> = row.values().collect();
        if let Some(earlier) = seen.get(&values) {
            ok = false;
            let combination: Vec<String> = row.iter().map(|(k, v)| format!("{k}={v}")).collect();
            ck.error(
                at,
                format!(
                    "matrix entries #{earlier} and #{entry} of step {label} are the same \
                     combination ({}); every combination must be different",
                    combination.join(", ")
                ),
            );
        } else {
            seen.insert(values, *entry);
        }
    }
    if !ok {
        return None;
    }
    let keys: Vec<String> = rows
        .first()
        .map(|(_, row)| row.keys().cloned().collect())
        .unwrap_or_default();
    let rows = rows
        .into_iter()
        .map(|(_, row)| row.into_values().collect())
        .collect();
    Some(Matrix {
        keys,
        combinations: Combinations::List(rows),
    })
}

/// One combination of a list-form matrix: a non-empty map from names to scalars.
fn check_matrix_entry(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    entry: usize,
    item: &Value,
    names: &mut MatrixNames,
) -> Option<BTreeMap<String, String>> {
    let at = ck.loc.step(i, me, "matrix", None);
    let Value::Mapping(map) = item else {
        ck.error(
            at,
            format!(
                "matrix entry #{entry} of step {label} is {}; each entry must be a map of \
                 values such as {{lr: 0.1, depth: 3}}",
                kind_of(item)
            ),
        );
        return None;
    };
    if map.is_empty() {
        ck.error(
            at,
            format!("matrix entry #{entry} of step {label} is empty"),
        );
        return None;
    }
    let mut ok = true;
    let mut row = BTreeMap::new();
    for (key, value) in map {
        let Some(name) = names.check(ck, i, me, label, key) else {
            ok = false;
            continue;
        };
        match scalar_text(value) {
            Some(text) => {
                row.insert(name, text);
            }
            None => {
                ok = false;
                let at = ck.loc.step(i, me, "matrix", Some(&name));
                ck.error(
                    at,
                    format!(
                        "value {name:?} of matrix entry #{entry} of step {label} is {}; matrix \
                         values must be strings, numbers or booleans",
                        kind_of(value)
                    ),
                );
            }
        }
    }
    ok.then_some(row)
}

/// Reports a matrix that expands to too many trials; `None` is an overflow.
fn check_trial_count(
    ck: &mut Checker<'_>,
    at: Option<Pos>,
    label: &str,
    count: Option<usize>,
) -> bool {
    let count = match count {
        Some(n) if n <= MAX_TRIALS_PER_STEP => return true,
        Some(n) => n.to_string(),
        None => format!("more than {}", usize::MAX),
    };
    ck.error(
        at,
        format!(
            "matrix of step {label} expands to {count} combinations; at most \
             {MAX_TRIALS_PER_STEP} are allowed"
        ),
    );
    false
}

/// Checks the names of one matrix, each once however often it is written, and
/// that no two of them become the same environment variable.
#[derive(Default)]
struct MatrixNames {
    /// By the key as written (`describe_value`): the name, if valid.
    checked: HashMap<String, Option<String>>,
    /// `FERRY_MATRIX_<NAME>` → the name that became it.
    vars: BTreeMap<String, String>,
}

impl MatrixNames {
    fn check(
        &mut self,
        ck: &mut Checker<'_>,
        i: usize,
        me: Option<&str>,
        label: &str,
        key: &Value,
    ) -> Option<String> {
        let written = describe_value(key);
        if let Some(result) = self.checked.get(&written) {
            return result.clone();
        }
        let result = self.check_new(ck, i, me, label, key);
        self.checked.insert(written, result.clone());
        result
    }

    fn check_new(
        &mut self,
        ck: &mut Checker<'_>,
        i: usize,
        me: Option<&str>,
        label: &str,
        key: &Value,
    ) -> Option<String> {
        let name = key.as_str().filter(|n| is_param_name(n));
        let at = ck.loc.step(i, me, "matrix", scalar_text(key).as_deref());
        let Some(name) = name else {
            ck.error(
                at,
                format!(
                    "matrix key {} of step {label} is invalid: it must start with a letter or \
                     '_' and contain only letters, digits and '_'",
                    describe_value(key)
                ),
            );
            return None;
        };
        let var = env_var_name("FERRY_MATRIX_", name);
        if let Some(other) = self.vars.get(&var) {
            ck.error(
                at,
                format!(
                    "matrix keys {other:?} and {name:?} of step {label} both become the \
                     environment variable {var}"
                ),
            );
            return None;
        }
        self.vars.insert(var, name.to_string());
        Some(name.to_string())
    }
}

/// `cache: false`, `cache: true` or `cache: {version: 2, paths: [src/], enabled: true}`.
fn check_cache(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    cache: &Value,
) -> CacheSpec {
    let mut spec = CacheSpec::default();
    let map = match cache {
        Value::Bool(enabled) => {
            spec.enabled = *enabled;
            return spec;
        }
        Value::Mapping(map) => map,
        other => {
            let at = ck.loc.step(i, me, "cache", None);
            ck.error(
                at,
                format!(
                    "cache of step {label} must be true, false or a map with `version`, \
                     `paths` and `enabled`, got {}",
                    describe_value(other)
                ),
            );
            return spec;
        }
    };
    for (key, value) in map {
        let at = ck.loc.step(i, me, "cache", key.as_str());
        match key.as_str() {
            Some("enabled") => match value {
                Value::Bool(enabled) => spec.enabled = *enabled,
                other => ck.error(
                    at,
                    format!(
                        "cache.enabled of step {label} must be true or false, got {}",
                        describe_value(other)
                    ),
                ),
            },
            Some("version") => match scalar_text(value) {
                Some(version) => spec.version = version,
                None => ck.error(
                    at,
                    format!(
                        "cache.version of step {label} must be a plain value such as 2 or \
                         \"v2\", got {}",
                        describe_value(value)
                    ),
                ),
            },
            Some("paths") => spec.paths = check_cache_paths(ck, i, me, label, value),
            other => {
                let hint =
                    did_you_mean(other.and_then(|k| suggest(k, ["version", "paths", "enabled"])));
                ck.error(
                    at,
                    format!(
                        "cache of step {label} has an unknown field {}{hint}; use `version`, \
                         `paths` and `enabled`",
                        describe_value(key)
                    ),
                );
            }
        }
    }
    spec
}

/// `cache.paths`: files or folders of the code bundle; normalized, sorted,
/// deduplicated.
fn check_cache_paths(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    value: &Value,
) -> Vec<String> {
    let items = match value {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        other => {
            let at = ck.loc.step(i, me, "cache", Some("paths"));
            ck.error(
                at,
                format!(
                    "cache.paths of step {label} must be a list of files or folders of the code \
                     bundle such as [\"src/\", \"train.py\"], got {}",
                    describe_value(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut paths = BTreeSet::new();
    for item in items {
        let path = match item {
            Value::String(_) | Value::Number(_) => scalar_text(item).unwrap_or_default(),
            other => {
                let at = ck.loc.step(i, me, "cache", Some("paths"));
                ck.error(
                    at,
                    format!(
                        "cache.paths of step {label} lists {}; each entry must be a path such \
                         as \"src/\" or \"train.py\"",
                        describe_value(other)
                    ),
                );
                continue;
            }
        };
        match normalize_bundle_path(&path) {
            Ok(normalized) => {
                paths.insert(normalized);
            }
            Err(why) => {
                let token = if path.is_empty() { "\"\"" } else { &path };
                let at = ck.loc.step(i, me, "cache", Some(token));
                ck.error(at, format!("cache path {path:?} of step {label} {why}"));
            }
        }
    }
    paths.into_iter().collect()
}

/// A positive integer that fits a `u32`.
fn positive_u32(value: &Value) -> Option<u32> {
    value
        .as_u64()
        .filter(|n| *n >= 1)
        .and_then(|n| u32::try_from(n).ok())
}

/// `max_parallel` on a step: how many of its trials may run at once.
fn check_step_max_parallel(
    ck: &mut Checker<'_>,
    i: usize,
    step: &RawStep,
    label: &str,
    value: &Value,
) -> Option<u32> {
    let at = ck.loc.step(i, step.name.as_deref(), "max_parallel", None);
    if step.matrix.is_none() {
        ck.error(
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
        ck.error(
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

/// One entry of a step's `gather:`: a step name, or a map with `step`, `best`
/// and `goal`. Whether the step exists and has a matrix is checked later,
/// against the other steps.
fn check_gather_item(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    item: &Value,
) -> Option<Gather> {
    match item {
        Value::String(step) => Some(Gather {
            step: step.clone(),
            best: None,
        }),
        Value::Mapping(map) => check_gather_map(ck, i, me, label, map),
        other => {
            let at = ck.loc.step(i, me, "gather", None);
            ck.error(
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

const GATHER_EXAMPLE: &str = "{step: train, best: accuracy, goal: max}";

fn check_gather_map(
    ck: &mut Checker<'_>,
    i: usize,
    me: Option<&str>,
    label: &str,
    map: &serde_yaml::Mapping,
) -> Option<Gather> {
    let mut ok = true;
    let (mut step, mut metric, mut goal) = (None, None, None);
    for (key, value) in map {
        let at = ck.loc.step(i, me, "gather", key.as_str());
        match key.as_str() {
            Some("step") => match value.as_str() {
                Some(name) => step = Some(name.to_string()),
                None => {
                    ok = false;
                    ck.error(
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
                    ck.error(
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
                    ck.error(
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
                ck.error(
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
    let at = ck.loc.step(i, me, "gather", step.as_deref());
    let Some(step) = step else {
        if ok {
            ck.error(
                at,
                format!(
                    "an entry of gather of step {label} has no `step`; write e.g. {GATHER_EXAMPLE}"
                ),
            );
        }
        return None;
    };
    if goal.is_some() && metric.is_none() {
        ck.error(
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

/// Kahn's algorithm, ties broken by file order. Reports every cycle it can
/// separate; returns the (possibly partial) order.
fn topological_order(
    ck: &mut Checker<'_>,
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
    let mut remaining: BTreeSet<usize> = (0..n).filter(|i| !order.contains(i)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Pipeline, SpecError> {
        parse_pipeline("pipeline.yaml", yaml, &BTreeMap::new())
    }

    fn parse_with(yaml: &str, overrides: &[(&str, &str)]) -> Result<Pipeline, SpecError> {
        let overrides = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_pipeline("pipeline.yaml", yaml, &overrides)
    }

    fn errors(yaml: &str) -> Vec<Diagnostic> {
        match parse(yaml) {
            Ok(p) => panic!("expected an error, got {p:#?}"),
            Err(e) => e.diagnostics,
        }
    }

    /// The only diagnostic whose message contains all of `words`; panics with
    /// every diagnostic otherwise.
    fn find<'a>(diags: &'a [Diagnostic], words: &[&str]) -> &'a Diagnostic {
        let hits: Vec<&Diagnostic> = diags
            .iter()
            .filter(|d| words.iter().all(|w| d.message.contains(w)))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "expected one diagnostic with {words:?}, got:\n{}",
            render(diags)
        );
        hits[0]
    }

    /// Exactly one diagnostic, containing `words`, at `line` (if given).
    fn single(yaml: &str, words: &[&str], line: Option<usize>) -> Diagnostic {
        let diags = errors(yaml);
        assert_eq!(
            diags.len(),
            1,
            "expected one diagnostic:\n{}",
            render(&diags)
        );
        let d = find(&diags, words).clone();
        assert_eq!(d.line, line, "wrong line for {d}");
        d
    }

    const IRIS: &str = r#"
name: iris
params:
  seed: 42
  test_fraction: 0.3
  verbose: true
  label: species
steps:
  - name: evaluate
    command: ["python3", "eval.py", "--model", "model.json"]
    inputs:
      test: split/test.csv
      model: train/model.json
    outputs: [report.json]
  - name: split        # first real step
    command: ["python3", "split.py", "--seed", "${params.seed}", "--fraction=${params.test_fraction}", 3]
    outputs: [train.csv, ./test.csv]
    resources: {cpu: 2, memory: 1Gi, gpu: 1}
  - name: train
    shell: "python3 train.py --label ${params.label} | tee log.txt"
    needs: [split, split]
    inputs:
      train: split/train.csv
    outputs:
      - model.json
      - models/m.json
    env:
      VERBOSE: "${params.verbose}"
      SEED: ${params.seed}
      N: 3
      LITERAL: "$$HOME costs $5"
    retries: 2
    timeout: 1h30m
"#;

    #[test]
    fn valid_pipeline_resolves() {
        let p = parse(IRIS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.name, "iris");
        let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["split", "train", "evaluate"]);
        assert_eq!(
            p.params,
            BTreeMap::from([
                ("label".to_string(), "species".to_string()),
                ("seed".to_string(), "42".to_string()),
                ("test_fraction".to_string(), "0.3".to_string()),
                ("verbose".to_string(), "true".to_string()),
            ])
        );

        let split = &p.steps[0];
        assert_eq!(
            split.command,
            ["python3", "split.py", "--seed", "42", "--fraction=0.3", "3"]
        );
        assert_eq!(split.outputs, ["train.csv", "test.csv"]);
        assert!(split.needs.is_empty());
        assert_eq!(
            split.resources,
            Resources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                gpus: 1
            }
        );
        assert_eq!(split.retries, 0);
        assert_eq!(split.timeout_ms, None);

        let train = &p.steps[1];
        assert_eq!(
            train.command,
            [
                "/bin/sh",
                "-c",
                "python3 train.py --label species | tee log.txt"
            ]
        );
        assert_eq!(train.needs, ["split"]);
        assert_eq!(
            train.inputs,
            [Input {
                name: "train".into(),
                step: "split".into(),
                output: "train.csv".into()
            }]
        );
        assert_eq!(train.outputs, ["model.json", "models/m.json"]);
        assert_eq!(train.env["VERBOSE"], "true");
        assert_eq!(train.env["SEED"], "42");
        assert_eq!(train.env["N"], "3");
        assert_eq!(train.env["LITERAL"], "$$HOME costs $5");
        assert_eq!(train.retries, 2);
        assert_eq!(train.timeout_ms, Some(90 * 60 * 1000));
        assert_eq!(
            train.resources,
            Resources {
                cpu_millis: DEFAULT_CPU_MILLIS,
                memory_bytes: DEFAULT_MEMORY_BYTES,
                gpus: 0
            }
        );

        let evaluate = &p.steps[2];
        assert_eq!(evaluate.needs, ["split", "train"]);
        let inputs: Vec<(&str, &str, &str)> = evaluate
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.step.as_str(), i.output.as_str()))
            .collect();
        assert_eq!(
            inputs,
            [
                ("model", "train", "model.json"),
                ("test", "split", "test.csv")
            ]
        );
    }

    #[test]
    fn resolved_pipeline_round_trips_through_json() {
        let p = parse(IRIS).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let back: Pipeline = serde_json::from_str(&json).unwrap();
        assert_eq!(p, back);
    }

    #[test]
    fn overrides_beat_defaults() {
        let p = parse_with(IRIS, &[("seed", "7"), ("label", "petal width")]).unwrap();
        assert_eq!(p.params["seed"], "7");
        assert_eq!(p.params["test_fraction"], "0.3");
        assert_eq!(p.steps[0].command[3], "7");
        assert_eq!(p.steps[1].env["SEED"], "7");
        assert_eq!(
            p.steps[1].command[2],
            "python3 train.py --label petal width | tee log.txt"
        );
    }

    #[test]
    fn ties_follow_file_order() {
        let yaml = "name: t\nsteps:\n- name: d\n  command: [x]\n  needs: [c]\n- name: b\n  command: [x]\n- name: c\n  command: [x]\n  needs: [a]\n- name: a\n  command: [x]\n- name: e\n  command: [x]\n";
        let p = parse(yaml).unwrap();
        let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c", "d", "e"]);
    }

    #[test]
    fn minimal_pipeline_gets_defaults() {
        let p = parse("name: one\nsteps:\n  - name: only\n    command: [true]\n").unwrap();
        assert!(p.params.is_empty());
        let s = &p.steps[0];
        assert_eq!(s.command, ["true"]);
        assert!(s.needs.is_empty() && s.inputs.is_empty() && s.outputs.is_empty());
        assert!(s.env.is_empty());
        assert_eq!(s.resources.cpu_millis, 500);
        assert_eq!(s.resources.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(s.resources.gpus, 0);
        assert_eq!(s.retries, 0);
        assert_eq!(s.timeout_ms, None);
    }

    #[test]
    fn null_collections_are_empty() {
        let p = parse(
            "name: n\nparams:\nsteps:\n  - name: a\n    command: [x]\n    needs:\n    inputs:\n    outputs:\n    env:\n    resources:\n",
        )
        .unwrap();
        assert!(p.steps[0].needs.is_empty());
    }

    #[test]
    fn resources_in_all_forms() {
        let yaml = "name: r\nsteps:\n  - name: a\n    command: [x]\n    resources: {cpu: 0.5, memory: 1048576, gpu: 2}\n  - name: b\n    command: [x]\n    resources:\n      cpu: \"250m\"\n      memory: 2G\n";
        let p = parse(yaml).unwrap();
        assert_eq!(
            p.steps[0].resources,
            Resources {
                cpu_millis: 500,
                memory_bytes: 1 << 20,
                gpus: 2
            }
        );
        assert_eq!(
            p.steps[1].resources,
            Resources {
                cpu_millis: 250,
                memory_bytes: 2_000_000_000,
                gpus: 0
            }
        );
    }

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

    // ---- YAML-level errors --------------------------------------------------

    #[test]
    fn yaml_syntax_error_is_located() {
        let d = single(
            "name: x\nsteps:\n  - name: a\n    command: [x\n",
            &["flow sequence"],
            Some(5),
        );
        assert!(!d.message.contains("at line 5"), "{d}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let d = single(
            "name: x\nsteps:\n  - name: a\n    comand: [x]\n",
            &["unknown field `comand`", "`command`"],
            Some(4),
        );
        assert_eq!(d.column, Some(5));
        assert!(!d.to_string().contains("column 5"), "{d}");
        single(
            "name: x\nowner: me\nsteps:\n  - name: a\n    command: [x]\n",
            &["unknown field `owner`"],
            Some(2),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n    resources: {cpu: 1, disk: 3}\n",
            &["unknown field `disk`", "`memory`"],
            Some(5),
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        single(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: a\n",
            &["needs", "expected a sequence"],
            Some(5),
        );
        single("name: x\nsteps: {a: 1}\n", &["steps", "sequence"], Some(2));
        single("just text\n", &["expected a pipeline"], Some(1));
        single(
            "name: x\nparams:\n  a: 1\n  a: 2\nsteps:\n  - name: a\n    command: [x]\n",
            &["duplicate key \"a\""],
            Some(3),
        );
        single(
            "name: x\nname: y\nsteps:\n  - name: a\n    command: [x]\n",
            &["duplicate field `name`"],
            Some(1),
        );
    }

    #[test]
    fn empty_file() {
        single("", &["empty"], None);
        single("# nothing\n\n---\n", &["empty"], None);
    }

    // ---- names and structure -------------------------------------------------

    #[test]
    fn missing_name_and_steps() {
        let diags = errors("params: {a: 1}\n");
        find(&diags, &["no `name`"]);
        find(&diags, &["no steps"]);
        single("name: x\nsteps: []\n", &["no steps"], Some(2));
    }

    #[test]
    fn invalid_names() {
        single(
            "name: my pipeline\nsteps:\n  - name: a\n    command: [x]\n",
            &["pipeline name \"my pipeline\" is invalid"],
            Some(1),
        );
        let long = "a".repeat(65);
        single(
            &format!("name: {long}\nsteps:\n  - name: a\n    command: [x]\n"),
            &["pipeline name", "invalid"],
            Some(1),
        );
        let d = single(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n  - name: b.c\n    command: [x]\n",
            &["step name \"b.c\" is invalid"],
            Some(5),
        );
        assert_eq!(d.column, Some(11));
        single(
            "name: x\nsteps:\n  - command: [x]\n",
            &["step #1 has no `name`"],
            Some(3),
        );
    }

    #[test]
    fn duplicate_step_points_at_second() {
        let d = single(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n  - name: b\n    command: [x]\n  - name: a\n    command: [y]\n",
            &["step \"a\" is defined more than once", "first at line 3"],
            Some(7),
        );
        assert_eq!(d.column, Some(11));
    }

    #[test]
    fn command_and_shell() {
        single(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n    shell: echo hi\n",
            &["step \"a\" has both `command` and `shell`"],
            Some(5),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    outputs: [o]\n",
            &["step \"a\" has neither `command`", "shell"],
            Some(3),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    command: []\n",
            &["step \"a\" has an empty command"],
            Some(4),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    shell: \"  \"\n",
            &["empty `shell`"],
            Some(4),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    command: python3 train.py\n",
            &["command of step \"a\" is a string", "shell"],
            Some(4),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    command: [python3, [a]]\n",
            &["argument 2", "a list"],
            Some(4),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    command: [\"\", a]\n",
            &["the program", "empty"],
            Some(4),
        );
    }

    // ---- dependencies --------------------------------------------------------

    #[test]
    fn unknown_need_with_suggestion() {
        let yaml = "name: x\nsteps:\n  - name: split\n    command: [x]\n  - name: train\n    command: [x]\n    needs:\n      - split\n      - splt\n";
        let d = single(
            yaml,
            &["step \"train\" needs \"splt\", which is not a step (did you mean \"split\"?)"],
            Some(9),
        );
        assert_eq!(d.column, Some(9));
        assert_eq!(
            d.to_string(),
            "error: pipeline.yaml:9:9: step \"train\" needs \"splt\", which is not a step (did you mean \"split\"?)"
        );
        let d = single(
            "name: x\nsteps:\n  - name: split\n    command: [x]\n  - name: train\n    command: [x]\n    needs: [zzzzzz]\n",
            &["needs \"zzzzzz\", which is not a step"],
            Some(7),
        );
        assert!(!d.message.contains("did you mean"), "{d}");
    }

    #[test]
    fn need_token_is_not_matched_inside_other_words() {
        // "a" appears inside "data" and "ab" before the real entry.
        let yaml = "name: x\nsteps:\n  - name: data\n    command: [x]\n  - name: ab\n    command: [x]\n  - name: c\n    command: [x]\n    needs: [data, ab, a]\n";
        let d = single(yaml, &["needs \"a\""], Some(9));
        assert_eq!(d.column, Some(23));
    }

    #[test]
    fn self_need() {
        single(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: [a]\n",
            &["step \"a\" needs itself"],
            Some(5),
        );
    }

    #[test]
    fn cycle_is_printed() {
        let yaml = "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: [c]\n  - name: b\n    command: [x]\n    needs: [a]\n  - name: c\n    command: [x]\n    needs: [b]\n  - name: d\n    command: [x]\n    needs: [c]\n";
        let d = single(yaml, &["steps form a cycle: a → b → c → a"], Some(5));
        assert_eq!(d.column, Some(13));
    }

    #[test]
    fn cycle_through_inputs_and_two_cycles() {
        let yaml = "name: x\nsteps:\n  - name: a\n    command: [x]\n    inputs: {i: b/o}\n    outputs: [o]\n  - name: b\n    command: [x]\n    inputs: {i: a/o}\n    outputs: [o]\n  - name: c\n    command: [x]\n    needs: [d]\n  - name: d\n    command: [x]\n    needs: [c]\n";
        let diags = errors(yaml);
        assert_eq!(diags.len(), 2, "{}", render(&diags));
        let d = find(&diags, &["a → b → a"]);
        assert_eq!(d.line, Some(5));
        let d = find(&diags, &["c → d → c"]);
        assert_eq!(d.line, Some(13));
    }

    // ---- inputs --------------------------------------------------------------

    const TWO: &str = "name: x\nsteps:\n  - name: train\n    command: [x]\n    outputs: [weights.bin]\n  - name: evaluate\n    command: [x]\n    inputs:\n";

    #[test]
    fn input_points_at_undeclared_output() {
        let d = single(
            &format!("{TWO}      model: train/model.json\n"),
            &[
                "input \"model\" of step \"evaluate\" points at \"train/model.json\", but step \"train\" declares no output \"model.json\" (it declares: weights.bin)",
            ],
            Some(9),
        );
        assert_eq!(d.column, Some(14));
    }

    #[test]
    fn input_errors() {
        single(
            &format!("{TWO}      model: model.json\n"),
            &["\"model.json\"", "not of the form <step>/<output>"],
            Some(9),
        );
        single(
            &format!("{TWO}      model: trian/weights.bin\n"),
            &["no step \"trian\"", "did you mean \"train\""],
            Some(9),
        );
        single(
            &format!("{TWO}      my-model: train/weights.bin\n"),
            &["input name \"my-model\"", "invalid"],
            Some(9),
        );
        single(
            &format!("{TWO}      model: evaluate/x\n"),
            &["output of the step itself"],
            Some(9),
        );
        single(
            &format!("{TWO}      model: train/./weights.bin\n      Model: train/weights.bin\n"),
            &["FERRY_INPUT_MODEL"],
            Some(10),
        );
        single(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n  - name: b\n    command: [x]\n    inputs: {i: a/o}\n",
            &["declares no output \"o\"", "declares no outputs"],
            Some(7),
        );
    }

    #[test]
    fn input_reference_splits_at_first_slash() {
        let p = parse(&format!(
            "{TWO}      w: train/weights.bin\n  - name: deep\n    command: [x]\n    outputs: [models/m.json]\n  - name: use\n    command: [x]\n    inputs: {{m: deep/models/m.json}}\n"
        ))
        .unwrap();
        let step = p.steps.iter().find(|s| s.name == "use").unwrap();
        assert_eq!(step.inputs[0].step, "deep");
        assert_eq!(step.inputs[0].output, "models/m.json");
        assert_eq!(step.needs, ["deep"]);
    }

    // ---- outputs -------------------------------------------------------------

    #[test]
    fn output_errors() {
        let base = "name: x\nsteps:\n  - name: train\n    command: [x]\n    outputs:\n";
        let d = single(
            &format!("{base}      - ok.txt\n      - ../model.json\n"),
            &["output \"../model.json\" of step \"train\" leaves the step's work directory"],
            Some(7),
        );
        assert_eq!(d.column, Some(9));
        single(
            &format!("{base}      - /etc/passwd\n"),
            &["\"/etc/passwd\"", "absolute"],
            Some(6),
        );
        single(&format!("{base}      - \"\"\n"), &["is empty"], Some(6));
        single(
            &format!("{base}      - a.txt\n      - ./a.txt\n"),
            &["\"./a.txt\"", "declared twice"],
            Some(7),
        );
        single(
            &format!("{base}      - models\n      - models/m.json\n"),
            &["clashes"],
            Some(7),
        );
    }

    // ---- resources, retries, timeout ------------------------------------------

    #[test]
    fn resource_errors() {
        let base = "name: x\nsteps:\n  - name: a\n    command: [x]\n    resources:\n";
        let d = single(
            &format!("{base}      cpu: 1\n      memory: 12GB\n"),
            &["resources.memory of step \"a\"", "\"12GB\"", "suffix"],
            Some(7),
        );
        assert_eq!(d.column, Some(7));
        single(
            &format!("{base}      cpu: lots\n"),
            &["resources.cpu", "\"lots\""],
            Some(6),
        );
        single(
            &format!("{base}      cpu: 0\n"),
            &["resources.cpu", "greater than zero"],
            Some(6),
        );
        single(
            &format!("{base}      gpu: -1\n"),
            &["resources.gpu", "non-negative integer", "-1"],
            Some(6),
        );
        single(
            &format!("{base}      gpu: 1.5\n"),
            &["resources.gpu"],
            Some(6),
        );
        single(
            &format!("{base}      memory: [1]\n"),
            &["resources.memory", "a list"],
            Some(6),
        );
    }

    #[test]
    fn retries_and_timeout_errors() {
        let base = "name: x\nsteps:\n  - name: a\n    command: [x]\n";
        single(
            &format!("{base}    retries: 21\n"),
            &["retries of step \"a\"", "0 to 20", "21"],
            Some(5),
        );
        single(
            &format!("{base}    retries: -1\n"),
            &["retries", "-1"],
            Some(5),
        );
        single(
            &format!("{base}    retries: two\n"),
            &["retries", "\"two\""],
            Some(5),
        );
        single(
            &format!("{base}    timeout: 10 minutes\n"),
            &["timeout of step \"a\"", "\"10 minutes\""],
            Some(5),
        );
        single(
            &format!("{base}    timeout: 0s\n"),
            &["timeout", "greater than zero"],
            Some(5),
        );
        single(
            &format!("{base}    timeout: 30\n"),
            &["timeout", "no unit", "30s"],
            Some(5),
        );
        let p = parse(&format!("{base}    retries: 20\n    timeout: 500ms\n")).unwrap();
        assert_eq!(p.steps[0].retries, 20);
        assert_eq!(p.steps[0].timeout_ms, Some(500));
    }

    // ---- parameters ----------------------------------------------------------

    #[test]
    fn param_default_must_be_scalar() {
        let yaml = "name: x\nparams:\n  ok: 1\n  list: [1, 2]\n  map: {a: 1}\n  none:\nsteps:\n  - name: a\n    command: [x]\n";
        let diags = errors(yaml);
        assert_eq!(diags.len(), 3, "{}", render(&diags));
        assert_eq!(
            find(&diags, &["parameter \"list\"", "a list"]).line,
            Some(4)
        );
        assert_eq!(find(&diags, &["parameter \"map\"", "a map"]).line, Some(5));
        assert_eq!(find(&diags, &["parameter \"none\"", "null"]).line, Some(6));
    }

    #[test]
    fn invalid_param_name() {
        single(
            "name: x\nparams:\n  1seed: 1\nsteps:\n  - name: a\n    command: [x]\n",
            &["parameter name \"1seed\" is invalid"],
            Some(3),
        );
        single(
            "name: x\nparams:\n  seed: 1\n  SEED: 2\nsteps:\n  - name: a\n    command: [x]\n",
            &["FERRY_PARAM_SEED"],
            Some(4),
        );
    }

    #[test]
    fn unknown_override() {
        let err = parse_with(IRIS, &[("sed", "1")]).unwrap_err();
        assert_eq!(err.diagnostics.len(), 1);
        let d = &err.diagnostics[0];
        assert!(d.message.contains("no parameter \"sed\""), "{d}");
        assert!(d.message.contains("did you mean \"seed\""), "{d}");
        assert!(
            d.message
                .contains("it declares: label, seed, test_fraction, verbose"),
            "{d}"
        );
        assert_eq!(d.line, None);
        let err = parse_with(
            "name: x\nsteps:\n  - name: a\n    command: [x]\n",
            &[("seed", "1")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("declares no parameters"), "{err}");
    }

    #[test]
    fn param_override_parsing() {
        assert_eq!(
            parse_param_override("seed=42").unwrap(),
            ("seed".to_string(), "42".to_string())
        );
        assert_eq!(
            parse_param_override("q=a=b").unwrap(),
            ("q".to_string(), "a=b".to_string())
        );
        assert_eq!(
            parse_param_override("empty=").unwrap(),
            ("empty".to_string(), String::new())
        );
        let e = parse_param_override("seed").unwrap_err();
        assert!(e.to_string().contains("\"seed\""), "{e}");
        assert!(e.to_string().contains("NAME=VALUE"), "{e}");
        let e = parse_param_override("=3").unwrap_err();
        assert!(e.to_string().contains("not a valid parameter name"), "{e}");
    }

    #[test]
    fn undeclared_placeholder() {
        let yaml = "name: x\nparams:\n  seed: 1\nsteps:\n  - name: a\n    command:\n      - run\n      - \"--seed=${params.sed}\"\n";
        let d = single(
            yaml,
            &[
                "${params.sed}",
                "the command of step \"a\"",
                "not declared",
                "did you mean \"seed\"",
            ],
            Some(8),
        );
        assert_eq!(d.column, Some(17));
    }

    #[test]
    fn malformed_placeholders() {
        let base = "name: x\nparams:\n  seed: 1\nsteps:\n  - name: a\n";
        single(
            &format!("{base}    command: [run, \"${{params.seed\"]\n"),
            &["\"${params.seed\"", "not closed"],
            Some(6),
        );
        single(
            &format!("{base}    command: [run]\n    env:\n      A: \"${{seed}}\"\n"),
            &[
                "\"${seed}\"",
                "env var A of step \"a\"",
                "not of the form ${params.NAME}",
            ],
            Some(8),
        );
        single(
            &format!("{base}    shell: echo ${{params.}}\n"),
            &["\"${params.}\"", "shell script"],
            Some(6),
        );
        // `$$` and a lone `$` are not special.
        let p = parse(&format!(
            "{base}    shell: echo $$ $HOME ${{params.seed}}$\n"
        ))
        .unwrap();
        assert_eq!(p.steps[0].command[2], "echo $$ $HOME 1$");
    }

    #[test]
    fn env_names() {
        let base = "name: x\nsteps:\n  - name: a\n    command: [x]\n    env:\n";
        single(
            &format!("{base}      OK: 1\n      1BAD: x\n"),
            &["env var name \"1BAD\"", "invalid"],
            Some(7),
        );
        single(
            &format!("{base}      FERRY_TOKEN: x\n"),
            &["\"FERRY_TOKEN\"", "reserved prefix FERRY_"],
            Some(6),
        );
        single(
            &format!("{base}      LIST: [1]\n"),
            &["env var \"LIST\"", "a list"],
            Some(6),
        );
    }

    #[test]
    fn collects_many_errors() {
        let yaml = "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: [b, zz]\n    outputs: [../o]\n    retries: 99\n  - name: b\n    command: [x]\n    needs: [a]\n    timeout: soon\n";
        let diags = errors(yaml);
        assert_eq!(diags.len(), 5, "{}", render(&diags));
        assert_eq!(find(&diags, &["\"zz\""]).line, Some(5));
        assert_eq!(find(&diags, &["../o"]).line, Some(6));
        assert_eq!(find(&diags, &["retries"]).line, Some(7));
        assert_eq!(find(&diags, &["timeout"]).line, Some(11));
        assert_eq!(find(&diags, &["cycle: a → b → a"]).line, Some(5));
    }

    // ---- locator robustness --------------------------------------------------

    #[test]
    fn flow_style_steps_still_validate() {
        let d = single(
            "name: x\nsteps: [{name: a, command: [x], needs: [q]}]\n",
            &["needs \"q\""],
            None,
        );
        assert_eq!(d.column, None);
    }

    #[test]
    fn zero_indented_steps_and_comments() {
        let yaml = "# header: needs\nname: x # trailing\nsteps:\n# a comment mentioning zz\n- name: a   # zz\n  command: [x]\n  needs: [zz]  # zz\n";
        let d = single(yaml, &["needs \"zz\""], Some(7));
        assert_eq!(d.column, Some(11));
    }

    #[test]
    fn bare_dash_items() {
        let yaml = "name: x\nsteps:\n  -\n    name: a\n    command: [x]\n    needs: [b]\n";
        single(yaml, &["needs \"b\""], Some(6));
    }

    #[test]
    fn locator_never_panics_on_odd_text() {
        for yaml in [
            "name: x\nsteps:\n  - name: é\n    command: [x]\n",
            "name: x\nsteps:\n\t- name: a\n",
            "name: x\nsteps:\n  - name: a\n    command: [\"${params.ü\"]\n",
            "name: \"x\"\nsteps:\n  - \"name\": a\n    command: [x]\n    needs: [ü]\n",
            "name: x\nsteps:\n  - name: a\n    shell: |\n      echo ${oops}\n      - fake item\n",
            "---\nname: x\nsteps:\n- {name: a}\n-\n- name: b\n",
        ] {
            let _ = parse(yaml);
        }
        let loc = Locator::new("a:\n  - é: ü\n- x\n", 2);
        assert!(loc.steps.is_none());
        assert_eq!(find_token("ééé", 1, "é"), None);
    }

    #[test]
    fn comment_stripping() {
        assert_eq!(strip_comment("a: b # c"), "a: b ");
        assert_eq!(strip_comment("a: \"b # c\" # d"), "a: \"b # c\" ");
        assert_eq!(strip_comment("a: 'it''s # x'"), "a: 'it''s # x'");
        assert_eq!(strip_comment("a: b#c"), "a: b#c");
        assert_eq!(strip_comment("# all"), "");
    }

    // ---- parsers ---------------------------------------------------------------

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1m30s500ms"), Ok(90_500));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2d"), Ok(172_800_000));
        assert_eq!(parse_duration_ms(" 5s "), Ok(5_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        for bad in [
            "", "10", "1h30", "10 m", "10M", "5us", "m", "-1s", "1..5s", "ms5",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_duration_ms("10").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("99999999999999999999d").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_bytes("1024"), Ok(1024));
        assert_eq!(parse_memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_bytes("1Ki"), Ok(1024));
        assert_eq!(parse_memory_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_memory_bytes("1Ti"), Ok(1 << 40));
        assert_eq!(parse_memory_bytes("1K"), Ok(1000));
        assert_eq!(parse_memory_bytes("3M"), Ok(3_000_000));
        assert_eq!(parse_memory_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_memory_bytes("1T"), Ok(1_000_000_000_000));
        assert_eq!(parse_memory_bytes("1.5Gi"), Ok(3 << 29));
        for bad in [
            "", "0", "12GB", "1 Gi", "Mi", "-1Mi", "1mi", "lots", "1.2.3M",
        ] {
            assert!(parse_memory_bytes(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_memory_bytes("12GB").unwrap_err().contains("\"GB\""));
        assert!(parse_memory_bytes("99999999999999999999Ti").is_err());
    }

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("1.25"), Ok(1250));
        assert_eq!(parse_cpu_millis("2.0"), Ok(2000));
        assert_eq!(parse_cpu_millis(".5"), Ok(500));
        for bad in ["", "0", "0m", "0.0001", "1.5m", "m", "-1", "two", "1e3"] {
            assert!(parse_cpu_millis(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn output_paths() {
        assert_eq!(validate_output_path("./ok.txt"), Ok("ok.txt".to_string()));
        assert_eq!(validate_output_path("a/b.json"), Ok("a/b.json".to_string()));
        assert_eq!(
            validate_output_path("models//m.json"),
            Ok("models/m.json".to_string())
        );
        let e = validate_output_path("../x").unwrap_err();
        assert!(e.contains("leaves the step's work directory"), "{e}");
        assert!(
            validate_output_path("/etc/passwd")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            validate_output_path("a/../../b")
                .unwrap_err()
                .contains("leaves")
        );
        assert!(validate_output_path("a/../b").unwrap_err().contains(".."));
        for bad in ["", " ", ".", "./", "dir/", "a\\b"] {
            assert!(validate_output_path(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_name("FERRY_INPUT_", "model"), "FERRY_INPUT_MODEL");
        assert_eq!(env_var_name("FERRY_INPUT", "model"), "FERRY_INPUT_MODEL");
        assert_eq!(
            env_var_name("FERRY_PARAM_", "test-fraction.x"),
            "FERRY_PARAM_TEST_FRACTION_X"
        );
        assert_eq!(env_var_name("", "a b"), "A_B");
        assert_eq!(env_var_name("P_", "é1"), "P__1");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("splt", ["train", "split"]), Some("split"));
        assert_eq!(suggest("ab", ["cd"]), None);
        assert_eq!(suggest("tran", ["train", "trains"]), Some("train"));
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn scheduling_fields_resolve() {
        let p = parse(
            r#"name: sched
project: vision
priority: 10
max_parallel: 8
timeout: 2h
steps:
  - name: train
    command: ["true"]
    retries: 3
    retry_backoff: 30s
    node_selector: {zone: a, accelerator: h100}
    resources:
      gpu: {count: 2, model: H100, min_memory: 40Gi}
  - name: eval
    command: ["true"]
    resources: {gpu: 1}
"#,
        )
        .unwrap();
        assert_eq!(p.project, "vision");
        assert_eq!(p.priority, 10);
        assert_eq!(p.max_parallel, Some(8));
        assert_eq!(p.timeout_ms, Some(2 * 3600 * 1000));
        let train = &p.steps[0];
        assert_eq!(train.resources.gpus, 2);
        assert_eq!(train.gpu.model.as_deref(), Some("H100"));
        assert_eq!(train.gpu.min_memory_bytes, 40 << 30);
        assert_eq!(train.retry_backoff_ms, 30_000);
        assert_eq!(train.node_selector["zone"], "a");
        assert_eq!(train.node_selector["accelerator"], "h100");
        let eval = &p.steps[1];
        assert_eq!(eval.resources.gpus, 1);
        assert_eq!(eval.gpu, GpuConstraint::default());
        assert_eq!(eval.retry_backoff_ms, DEFAULT_RETRY_BACKOFF_MS);
        assert!(eval.node_selector.is_empty());

        let plain = parse("name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n").unwrap();
        assert_eq!(plain.project, DEFAULT_PROJECT);
        assert_eq!(plain.priority, 0);
        assert_eq!(plain.max_parallel, None);
        assert_eq!(plain.timeout_ms, None);
        // A pipeline stored before these fields existed reads with their defaults.
        let mut old = serde_json::to_value(&plain).unwrap();
        old.as_object_mut().unwrap().remove("project");
        old["steps"][0]
            .as_object_mut()
            .unwrap()
            .remove("retry_backoff_ms");
        let old: Pipeline = serde_json::from_value(old).unwrap();
        assert_eq!(old, plain);
    }

    #[test]
    fn bad_scheduling_fields_are_named() {
        let step = "steps:\n  - name: a\n    command: [\"true\"]\n";
        single(
            &format!("name: p\npriority: 5000\n{step}"),
            &["priority must be an integer from -1000 to 1000", "5000"],
            Some(2),
        );
        single(
            &format!("name: p\nproject: \"a b\"\n{step}"),
            &["project must be a name", "\"a b\""],
            Some(2),
        );
        single(
            &format!("name: p\nmax_parallel: 0\n{step}"),
            &["max_parallel must be a positive integer", "0"],
            Some(2),
        );
        single(
            &format!("name: p\ntimeout: 30\n{step}"),
            &["the pipeline's timeout is 30, which has no unit"],
            Some(2),
        );
        let base = "name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n";
        single(
            &format!("{base}    retry_backoff: 2h\n"),
            &["retry_backoff of step \"a\" is 2h; at most 10m is allowed"],
            Some(5),
        );
        single(
            &format!("{base}    node_selector: {{zone: [a]}}\n"),
            &["node_selector label \"zone\" of step \"a\" must be a plain value"],
            Some(5),
        );
        single(
            &format!("{base}    resources:\n      gpu: {{count: 1, modle: H100}}\n"),
            &[
                "resources.gpu of step \"a\" has an unknown field \"modle\"",
                "`model`",
            ],
            Some(6),
        );
        single(
            &format!("{base}    resources:\n      gpu: {{model: H100}}\n"),
            &["sets a model or min_memory but no `count`"],
            Some(6),
        );
        single(
            &format!("{base}    resources:\n      gpu: {{count: 1, min_memory: lots}}\n"),
            &["resources.gpu.min_memory of step \"a\" is invalid"],
            Some(6),
        );
    }

    // ---- matrix --------------------------------------------------------------

    const SWEEP: &str = r#"name: sweep
params:
  epochs: 3
steps:
  - name: report
    command: [report]
    needs: [train]
  - name: train
    command: [python3, train.py, "--lr=${matrix.lr}", --depth, "${matrix.depth}", "--epochs=${params.epochs}"]
    matrix:
      lr: [0.1, 0.01]
      depth: [3, 5, 7]
    inputs: {data: prep/data.csv}
    outputs: [model.json]
    env:
      TAG: "lr${matrix.lr}-d${matrix.depth}"
    max_parallel: 2
  - name: prep
    command: [prep]
    outputs: [data.csv]
"#;

    fn names(p: &Pipeline) -> Vec<&str> {
        p.steps.iter().map(|s| s.name.as_str()).collect()
    }

    fn step<'a>(p: &'a Pipeline, name: &str) -> &'a Step {
        p.steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name:?} in {:?}", names(p)))
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn grid_matrix_expands_in_place() {
        let p = parse(SWEEP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(&p),
            [
                "prep", "train.0", "train.1", "train.2", "train.3", "train.4", "train.5", "report"
            ]
        );
        // Keys in sorted order (depth, lr), the last one varying fastest.
        let expected = [
            ("3", "0.1"),
            ("3", "0.01"),
            ("5", "0.1"),
            ("5", "0.01"),
            ("7", "0.1"),
            ("7", "0.01"),
        ];
        for (index, (depth, lr)) in expected.iter().enumerate() {
            let s = step(&p, &format!("train.{index}"));
            assert_eq!(
                s.command,
                [
                    "python3",
                    "train.py",
                    &format!("--lr={lr}"),
                    "--depth",
                    depth,
                    "--epochs=3"
                ]
            );
            assert_eq!(
                s.trial,
                Some(Trial {
                    of: "train".into(),
                    index: index as u32,
                    values: values(&[("depth", depth), ("lr", lr)]),
                    max_parallel: Some(2),
                })
            );
            assert_eq!(
                s.env,
                values(&[
                    ("FERRY_MATRIX_DEPTH", depth),
                    ("FERRY_MATRIX_LR", lr),
                    ("TAG", &format!("lr{lr}-d{depth}")),
                ])
            );
            // Everything else is the step as written.
            assert_eq!(s.needs, ["prep"]);
            assert_eq!(s.inputs[0].step, "prep");
            assert_eq!(s.outputs, ["model.json"]);
            assert_eq!(s.params, ["epochs"]);
            assert!(s.gather.is_empty());
        }
        // `needs: [train]` stands for every trial.
        let report = step(&p, "report");
        assert_eq!(
            report.needs,
            [
                "train.0", "train.1", "train.2", "train.3", "train.4", "train.5"
            ]
        );
        assert_eq!(report.trial, None);
        assert!(step(&p, "prep").trial.is_none());
    }

    #[test]
    fn list_matrix_keeps_the_written_order() {
        let yaml = r#"name: sweep
steps:
  - name: train
    shell: "train --lr ${matrix.lr} --opt ${matrix.opt}"
    matrix:
      - {lr: 0.1, opt: adam}
      - {opt: sgd, lr: 0.5}
      - {lr: 0.1, opt: sgd}
"#;
        let p = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&p), ["train.0", "train.1", "train.2"]);
        let scripts: Vec<&str> = p.steps.iter().map(|s| s.command[2].as_str()).collect();
        assert_eq!(
            scripts,
            [
                "train --lr 0.1 --opt adam",
                "train --lr 0.5 --opt sgd",
                "train --lr 0.1 --opt sgd"
            ]
        );
        let trial = p.steps[1].trial.as_ref().unwrap();
        assert_eq!(trial.of, "train");
        assert_eq!(trial.index, 1);
        assert_eq!(trial.values, values(&[("lr", "0.5"), ("opt", "sgd")]));
        assert_eq!(trial.max_parallel, None);
        assert_eq!(p.steps[1].env["FERRY_MATRIX_OPT"], "sgd");
    }

    #[test]
    fn many_trials_are_all_needed() {
        let yaml = "name: s\nsteps:\n  - name: train\n    command: [t]\n    matrix: {seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}\n  - name: after\n    command: [a]\n    needs: [train, train]\n";
        let p = parse(yaml).unwrap();
        let after = step(&p, "after");
        let expected: BTreeSet<String> = (0..12).map(|k| format!("train.{k}")).collect();
        assert_eq!(
            after.needs.iter().cloned().collect::<BTreeSet<_>>(),
            expected
        );
        assert_eq!(after.needs.len(), 12);
        assert!(after.needs.is_sorted());
        assert_eq!(p.steps[11].name, "train.11");
        assert_eq!(p.steps[11].trial.as_ref().unwrap().values["seed"], "11");
    }

    #[test]
    fn max_parallel_only_on_matrix_steps() {
        let base = "name: s\nsteps:\n  - name: a\n    command: [x]\n";
        single(
            &format!("{base}    max_parallel: 2\n"),
            &[
                "max_parallel of step \"a\" limits how many of its trials run at once, but the step has no `matrix`",
                "at the top of the pipeline",
            ],
            Some(5),
        );
        let sweep = format!("{base}    matrix: {{x: [1, 2]}}\n");
        for bad in ["0", "-1", "1.5", "two", "99999999999"] {
            single(
                &format!("{sweep}    max_parallel: {bad}\n"),
                &["max_parallel of step \"a\" must be a positive integer", bad],
                Some(6),
            );
        }
        let p = parse(&format!("{sweep}    max_parallel: 1\n")).unwrap();
        assert!(
            p.steps
                .iter()
                .all(|s| s.trial.as_ref().unwrap().max_parallel == Some(1))
        );
        assert_eq!(p.max_parallel, None);
    }

    /// `count` values `0..count` for a grid key.
    fn range(count: usize) -> String {
        let items: Vec<String> = (0..count).map(|n| n.to_string()).collect();
        format!("[{}]", items.join(", "))
    }

    #[test]
    fn trials_per_step_are_limited() {
        let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
        let d = single(
            &format!("{base}    matrix: {{a: {}, b: {}}}\n", range(40), range(30)),
            &[],
            Some(5),
        );
        assert_eq!(
            d.message,
            "matrix of step \"train\" expands to 1200 combinations; at most 1000 are allowed"
        );
        let entries: Vec<String> = (0..1001).map(|n| format!("{{a: {n}}}")).collect();
        single(
            &format!("{base}    matrix: [{}]\n", entries.join(", ")),
            &["matrix of step \"train\" expands to 1001 combinations; at most 1000"],
            Some(5),
        );
        let p = parse(&format!(
            "{base}    matrix: {{a: {r}, b: {r}, c: {r}}}\n",
            r = range(10)
        ))
        .unwrap();
        assert_eq!(p.steps.len(), MAX_TRIALS_PER_STEP);
        assert_eq!(p.steps[999].name, "train.999");
        assert_eq!(
            p.steps[999].trial.as_ref().unwrap().values,
            values(&[("a", "9"), ("b", "9"), ("c", "9")])
        );
    }

    #[test]
    fn huge_grids_are_refused_before_expansion() {
        let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
        single(
            &format!(
                "{base}    matrix: {{a: {r}, b: {r}, c: {r}}}\n",
                r = range(100)
            ),
            &["expands to 1000000 combinations; at most 1000 are allowed"],
            Some(5),
        );
        // 10^40 combinations: only counting, never expanding, can answer this.
        let keys: Vec<String> = (0..40).map(|k| format!("k{k}: {}", range(10))).collect();
        single(
            &format!("{base}    matrix: {{{}}}\n", keys.join(", ")),
            &[&format!(
                "expands to more than {} combinations; at most 1000 are allowed",
                usize::MAX
            )],
            Some(5),
        );
    }

    #[test]
    fn expanded_pipeline_is_limited() {
        let sweep = |name: &str| {
            format!(
                "  - name: {name}\n    command: [x]\n    matrix: {{a: {r}, b: {r}, c: {r}}}\n",
                r = range(10)
            )
        };
        let five: String = (0..5).map(|k| sweep(&format!("s{k}"))).collect();
        let p = parse(&format!("name: big\nsteps:\n{five}")).unwrap();
        assert_eq!(p.steps.len(), MAX_STEPS);
        let d = single(
            &format!("name: big\nsteps:\n{five}  - name: one_more\n    command: [x]\n"),
            &[],
            Some(2),
        );
        assert_eq!(
            d.message,
            "the pipeline expands to 5001 steps (5000 of them trials of matrix steps); at most 5000 are allowed"
        );
        let plain: String = (0..=MAX_STEPS)
            .map(|k| format!("  - name: s{k}\n    command: [x]\n"))
            .collect();
        single(
            &format!("name: big\nsteps:\n{plain}"),
            &["the pipeline has 5001 steps; at most 5000 are allowed"],
            Some(2),
        );
    }

    #[test]
    fn duplicate_combinations() {
        let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
        single(
            &format!("{base}    matrix:\n      depth: [1, 2]\n      lr: [0.1, 0.2, 0.1]\n"),
            &[
                "matrix key \"lr\" of step \"train\" lists 0.1 twice; every combination must be different",
            ],
            Some(7),
        );
        single(
            &format!("{base}    matrix: {{lr: [1, \"1\"]}}\n"),
            &["matrix key \"lr\"", "lists \"1\" twice"],
            Some(5),
        );
        single(
            &format!(
                "{base}    matrix:\n      - {{lr: 0.1, opt: adam}}\n      - {{lr: 0.1, opt: sgd}}\n      - {{opt: adam, lr: 0.1}}\n"
            ),
            &[
                "matrix entries #1 and #3 of step \"train\" are the same combination (lr=0.1, opt=adam)",
            ],
            Some(5),
        );
    }

    #[test]
    fn bad_matrix_shapes() {
        let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
        let cases: &[(&str, &[&str], usize)] = &[
            (
                "    matrix: 3\n",
                &[
                    "matrix of step \"train\" must be a map from names to lists of values",
                    "got 3",
                ],
                5,
            ),
            (
                "    matrix: {}\n",
                &["matrix of step \"train\" is empty"],
                5,
            ),
            (
                "    matrix: []\n",
                &["matrix of step \"train\" is empty"],
                5,
            ),
            (
                "    matrix:\n      lr: 0.1\n",
                &[
                    "matrix key \"lr\" of step \"train\" must list its values",
                    "got 0.1",
                ],
                6,
            ),
            (
                "    matrix:\n      lr: []\n",
                &["matrix key \"lr\" of step \"train\" lists no values"],
                6,
            ),
            (
                "    matrix:\n      lr: [0.1, [1]]\n",
                &[
                    "a value of matrix key \"lr\" of step \"train\" is a list",
                    "strings, numbers or booleans",
                ],
                6,
            ),
            (
                "    matrix:\n      - {lr: 0.1}\n      - 7\n",
                &["matrix entry #2 of step \"train\" is a number; each entry must be a map"],
                5,
            ),
            (
                "    matrix:\n      - {lr: 0.1}\n      - {}\n",
                &["matrix entry #2 of step \"train\" is empty"],
                5,
            ),
            (
                "    matrix:\n      - {lr: 0.1, opt: adam}\n      - {lr: 0.2}\n",
                &[
                    "matrix entry #2 of step \"train\" sets lr but entry #1 sets lr, opt; every entry must set the same keys",
                ],
                5,
            ),
            (
                "    matrix:\n      - {lr: {a: 1}}\n",
                &["value \"lr\" of matrix entry #1 of step \"train\" is a map"],
                6,
            ),
        ];
        for (field, words, line) in cases {
            single(&format!("{base}{field}"), words, Some(*line));
        }
    }

    #[test]
    fn bad_matrix_names() {
        let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n    matrix:\n";
        let d = single(
            &format!("{base}      ok: [1]\n      1lr: [1, 2]\n"),
            &[
                "matrix key \"1lr\" of step \"train\" is invalid: it must start with a letter or '_'",
            ],
            Some(7),
        );
        assert_eq!(d.column, Some(7));
        single(
            &format!("{base}      lr-x: [1]\n"),
            &["matrix key \"lr-x\"", "invalid"],
            Some(6),
        );
        single(
            &format!("{base}      7: [1]\n"),
            &["matrix key 7 of step \"train\" is invalid"],
            Some(6),
        );
        single(
            &format!("{base}      LR: [1]\n      lr: [2]\n"),
            &[
                "matrix keys \"LR\" and \"lr\" of step \"train\" both become the environment variable FERRY_MATRIX_LR",
            ],
            Some(7),
        );
        // A bad name in many entries is reported once.
        single(
            &format!("{base}      - {{1x: 1}}\n      - {{1x: 2}}\n"),
            &["matrix key \"1x\""],
            Some(6),
        );
    }

    #[test]
    fn matrix_placeholders_are_checked() {
        let plain = "name: s\nsteps:\n  - name: a\n";
        let d = single(
            &format!("{plain}    command: [run, \"--lr=${{matrix.lr}}\"]\n"),
            &[
                "${matrix.lr} in the command of step \"a\" refers to a matrix value, but the step has no `matrix`",
            ],
            Some(4),
        );
        assert_eq!(d.column, Some(26));
        single(
            &format!("{plain}    shell: echo\n    env:\n      LR: \"${{matrix.lr}}\"\n"),
            &[
                "${matrix.lr} in env var LR of step \"a\"",
                "has no `matrix`",
            ],
            Some(6),
        );
        let sweep = "name: s\nsteps:\n  - name: a\n    matrix: {lr: [1, 2], depth: [3]}\n";
        single(
            &format!("{sweep}    shell: \"train ${{matrix.lrr}}\"\n"),
            &[
                "${matrix.lrr} in the shell script of step \"a\" refers to matrix key \"lrr\", which the step's matrix does not define (did you mean \"lr\"?)",
            ],
            Some(5),
        );
        single(
            &format!("{sweep}    shell: \"train ${{matrix.width}}\"\n"),
            &["matrix key \"width\"", "(it defines: depth, lr)"],
            Some(5),
        );
        single(
            &format!("{sweep}    shell: \"train ${{matrix}}\"\n"),
            &[
                "\"${matrix}\"",
                "not of the form ${params.NAME} or ${matrix.NAME}",
            ],
            Some(5),
        );
        // A matrix value may be the program itself.
        let p = parse(&format!("{sweep}    command: [\"${{matrix.lr}}\"]\n")).unwrap();
        assert_eq!(p.steps[1].command, ["2"]);
        // An invalid matrix still defines its keys: one mistake, one message.
        single(
            "name: s\nsteps:\n  - name: a\n    matrix: {lr: [1, 1]}\n    shell: \"t ${matrix.lr}\"\n",
            &["lists 1 twice"],
            Some(4),
        );
        // A parameter whose value looks like a placeholder is not substituted again.
        let p = parse(
            "name: s\nparams:\n  raw: \"${matrix.lr}\"\nsteps:\n  - name: a\n    matrix: {lr: [1]}\n    shell: \"t ${params.raw} ${matrix.lr}\"\n"
        )
        .unwrap();
        assert_eq!(p.steps[0].command[2], "t ${matrix.lr} 1");
    }

    // ---- gather --------------------------------------------------------------

    const GATHER: &str = r#"name: g
steps:
  - name: pick
    command: [p]
    gather:
      - {step: train, best: accuracy}
      - {step: eval, best: loss, goal: min}
  - name: train
    command: [t]
    matrix: {lr: [1, 2]}
    outputs: [model.json]
  - name: eval
    command: [e]
    matrix: {split: [a, b]}
    gather: [train]
"#;

    #[test]
    fn gather_forms() {
        let p = parse(GATHER).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(&p),
            ["train.0", "train.1", "eval.0", "eval.1", "pick"]
        );
        for eval in ["eval.0", "eval.1"] {
            let s = step(&p, eval);
            assert_eq!(s.needs, ["train.0", "train.1"]);
            assert_eq!(
                s.gather,
                [Gather {
                    step: "train".into(),
                    best: None
                }]
            );
        }
        let pick = step(&p, "pick");
        assert_eq!(pick.needs, ["eval.0", "eval.1", "train.0", "train.1"]);
        assert_eq!(
            pick.gather,
            [
                Gather {
                    step: "train".into(),
                    best: Some(BestBy {
                        metric: "accuracy".into(),
                        goal: Goal::Max
                    })
                },
                Gather {
                    step: "eval".into(),
                    best: Some(BestBy {
                        metric: "loss".into(),
                        goal: Goal::Min
                    })
                },
            ]
        );
        assert!(pick.inputs.is_empty());
    }

    #[test]
    fn a_pipeline_too_large_once_expanded_is_refused_before_expansion() {
        let script = "x".repeat(10_000);
        let values: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let yaml = format!(
            "name: big\nsteps:\n  - name: t\n    matrix: {{i: [{}]}}\n    shell: \"echo ${{matrix.i}} {script}\"\n",
            values.join(", ")
        );
        single(
            &yaml,
            &[
                "the pipeline expands to about 9.9 MiB",
                "step \"t\" alone takes about",
                "at most 4.0 MiB are allowed",
            ],
            Some(2),
        );
        // The same sweep with the script in a file is fine.
        let small = yaml.replace(&script, "train.sh");
        assert!(parse_pipeline("pipeline.yaml", &small, &BTreeMap::new()).is_ok());
    }

    #[test]
    fn gather_errors() {
        let base = "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1, 2]}\n  - name: prep\n    command: [p]\n  - name: pick\n    command: [x]\n";
        let long = "m".repeat(MAX_METRIC_NAME_LEN + 1);
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                "    gather: [trian]\n".into(),
                vec![
                    "step \"pick\" gathers \"trian\", which is not a step (did you mean \"train\"?)",
                ],
            ),
            (
                "    gather: [prep]\n".into(),
                vec![
                    "step \"pick\" gathers \"prep\", which is not a matrix step",
                    "use `needs` or `inputs`",
                ],
            ),
            (
                "    gather: [train, {step: train, best: acc}]\n".into(),
                vec!["step \"pick\" gathers \"train\" twice"],
            ),
            (
                "    gather: [pick]\n".into(),
                vec!["step \"pick\" gathers itself"],
            ),
            (
                "    gather: [{step: train, goal: min}]\n".into(),
                vec!["gather of \"train\" by step \"pick\" sets `goal` without `best`"],
            ),
            (
                "    gather: [{step: train, best: acc, goal: up}]\n".into(),
                vec!["gather.goal of step \"pick\" must be max or min, got \"up\""],
            ),
            (
                "    gather: [{step: train, best: \"\"}]\n".into(),
                vec![
                    "gather.best of step \"pick\" must be a metric name of 1 to 128 bytes, got \"\"",
                ],
            ),
            (
                format!("    gather: [{{step: train, best: {long}}}]\n"),
                vec!["gather.best of step \"pick\" must be a metric name"],
            ),
            (
                "    gather: [{step: train, best: 3}]\n".into(),
                vec!["gather.best", "got 3"],
            ),
            (
                "    gather: [{stpe: train}]\n".into(),
                vec![
                    "gather of step \"pick\" has an unknown field \"stpe\" (did you mean \"step\"?); use `step`, `best` and `goal`",
                ],
            ),
            (
                "    gather: [{best: acc}]\n".into(),
                vec!["an entry of gather of step \"pick\" has no `step`"],
            ),
            (
                "    gather: [{step: [train]}]\n".into(),
                vec!["gather.step of step \"pick\" must be a step name, got a list"],
            ),
            (
                "    gather: [7]\n".into(),
                vec!["gather of step \"pick\" lists 7; each entry must be a step name or a map"],
            ),
        ];
        for (field, words) in cases {
            single(&format!("{base}{field}"), &words, Some(10));
        }
        single(
            "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1]}\n    gather: [train]\n",
            &["step \"train\" gathers itself"],
            Some(6),
        );
        single(
            &format!("{base}    gather: train\n"),
            &["gather", "expected a sequence"],
            Some(10),
        );
        // Two sweeps behind one environment variable.
        single(
            "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1]}\n  - name: train_best\n    command: [t]\n    matrix: {lr: [1]}\n  - name: pick\n    command: [x]\n    gather: [{step: train, best: acc}, train_best]\n",
            &[
                "step \"pick\" gathers \"train\" and \"train_best\", which both set the environment variable FERRY_GATHER_TRAIN_BEST",
            ],
            Some(11),
        );
    }

    #[test]
    fn gather_cycles_are_found() {
        let yaml = "name: g\nsteps:\n  - name: a\n    command: [x]\n    matrix: {n: [1]}\n    gather: [b]\n  - name: b\n    command: [x]\n    matrix: {n: [1]}\n    gather: [a]\n";
        let d = single(yaml, &["steps form a cycle: a → b → a"], Some(6));
        assert_eq!(d.column, Some(14));
    }

    #[test]
    fn input_from_a_matrix_step_is_refused() {
        let yaml = "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1, 2]}\n    outputs: [model.json]\n  - name: select\n    command: [s]\n    inputs:\n      m: train/model.json\n";
        let d = single(yaml, &[], Some(10));
        assert_eq!(
            d.message,
            "input \"m\" of step \"select\" points at \"train/model.json\", but \"train\" is a matrix step (one step per combination); use `gather: [train]` to receive every trial's outputs"
        );
    }

    #[test]
    fn matrix_steps_take_inputs_and_needs() {
        let yaml = "name: g\nsteps:\n  - name: prep\n    command: [p]\n    outputs: [d.csv]\n  - name: setup\n    command: [s]\n  - name: train\n    command: [t]\n    needs: [setup]\n    inputs: {d: prep/d.csv}\n    matrix: {lr: [1, 2]}\n";
        let p = parse(yaml).unwrap();
        assert_eq!(names(&p), ["prep", "setup", "train.0", "train.1"]);
        for s in &p.steps[2..] {
            assert_eq!(s.needs, ["prep", "setup"]);
            assert_eq!(
                s.inputs,
                [Input {
                    name: "d".into(),
                    step: "prep".into(),
                    output: "d.csv".into()
                }]
            );
        }
        single(
            "name: g\nsteps:\n  - name: a\n    command: [x]\n    needs: [a.0]\n  - name: b\n    command: [x]\n",
            &["step \"a\" needs \"a.0\", which is not a step"],
            Some(5),
        );
    }

    // ---- cache ---------------------------------------------------------------

    #[test]
    fn cache_forms() {
        let base = "name: c\nsteps:\n  - name: a\n    command: [x]\n";
        let cache_of = |field: &str| {
            parse(&format!("{base}{field}")).unwrap().steps[0]
                .cache
                .clone()
        };
        assert_eq!(cache_of(""), CacheSpec::default());
        assert!(CacheSpec::default().enabled);
        assert!(!cache_of("    cache: false\n").enabled);
        assert_eq!(cache_of("    cache: true\n"), CacheSpec::default());
        assert_eq!(
            cache_of(
                "    cache:\n      version: 2\n      paths: [src/, ./train.py, src, lib//util/]\n      enabled: false\n"
            ),
            CacheSpec {
                enabled: false,
                version: "2".into(),
                paths: vec!["lib/util".into(), "src".into(), "train.py".into()],
            }
        );
        let spec = cache_of("    cache: {version: \"v3-${params.x}\"}\n");
        assert!(spec.enabled);
        assert_eq!(spec.version, "v3-${params.x}");
        assert!(cache_of("    cache: {paths: []}\n").paths.is_empty());
    }

    #[test]
    fn cache_errors() {
        let base = "name: c\nsteps:\n  - name: a\n    command: [x]\n";
        let cases: &[(&str, &[&str], usize)] = &[
            (
                "    cache: maybe\n",
                &[
                    "cache of step \"a\" must be true, false or a map with `version`, `paths` and `enabled`, got \"maybe\"",
                ],
                5,
            ),
            (
                "    cache: {verison: 2}\n",
                &[
                    "cache of step \"a\" has an unknown field \"verison\" (did you mean \"version\"?); use `version`, `paths` and `enabled`",
                ],
                5,
            ),
            (
                "    cache:\n      enabled: yes\n",
                &["cache.enabled of step \"a\" must be true or false, got \"yes\""],
                6,
            ),
            (
                "    cache:\n      version: [1]\n",
                &[
                    "cache.version of step \"a\" must be a plain value",
                    "got a list",
                ],
                6,
            ),
            (
                "    cache:\n      paths: src\n",
                &[
                    "cache.paths of step \"a\" must be a list of files or folders",
                    "got \"src\"",
                ],
                6,
            ),
            (
                "    cache:\n      paths:\n        - src/\n        - ../shared\n",
                &["cache path \"../shared\" of step \"a\" leaves the code bundle"],
                8,
            ),
            (
                "    cache:\n      paths: [/etc]\n",
                &[
                    "cache path \"/etc\" of step \"a\" is absolute; cache paths are paths relative to the code bundle",
                ],
                6,
            ),
            (
                "    cache:\n      paths: [a/../b]\n",
                &["cache path \"a/../b\"", "'..'"],
                6,
            ),
            (
                "    cache:\n      paths: [./]\n",
                &["cache path \"./\" of step \"a\" names the whole code bundle"],
                6,
            ),
            (
                "    cache:\n      paths: [\"\"]\n",
                &["cache path \"\" of step \"a\" is empty"],
                6,
            ),
            (
                "    cache:\n      paths: [[a]]\n",
                &["cache.paths of step \"a\" lists a list"],
                6,
            ),
        ];
        for (field, words, line) in cases {
            single(&format!("{base}{field}"), words, Some(*line));
        }
    }

    // ---- params a step reads ---------------------------------------------------

    #[test]
    fn step_params_are_referenced_and_listed() {
        let yaml = r#"name: p
params:
  seed: 1
  lr: 0.1
  data_dir: /data
  unused: x
steps:
  - name: a
    command: [run, "--seed=${params.seed}"]
    env:
      LR: "${params.lr}"
    params: [data_dir, seed, data_dir]
  - name: b
    shell: "echo ${params.seed} ${params.seed}"
  - name: c
    command: [x]
"#;
        let p = parse(yaml).unwrap();
        assert_eq!(step(&p, "a").params, ["data_dir", "lr", "seed"]);
        assert_eq!(step(&p, "b").params, ["seed"]);
        assert!(step(&p, "c").params.is_empty());

        let p = parse(IRIS).unwrap();
        assert_eq!(step(&p, "split").params, ["seed", "test_fraction"]);
        assert_eq!(step(&p, "train").params, ["label", "seed", "verbose"]);
        assert!(step(&p, "evaluate").params.is_empty());
    }

    #[test]
    fn unknown_listed_params() {
        let d = single(
            "name: p\nparams:\n  seed: 1\nsteps:\n  - name: a\n    command: [x]\n    params: [seed, sed]\n",
            &[],
            Some(7),
        );
        assert_eq!(
            d.message,
            "step \"a\" lists \"sed\" under `params`, but the pipeline has no parameter \"sed\" (did you mean \"seed\"?)"
        );
        assert_eq!(d.column, Some(20));
        single(
            "name: p\nsteps:\n  - name: a\n    command: [x]\n    params: [seed]\n",
            &["no parameter \"seed\" (it declares no parameters)"],
            Some(5),
        );
    }

    // ---- compatibility ---------------------------------------------------------

    #[test]
    fn plain_steps_get_the_new_defaults() {
        let p = parse(IRIS).unwrap();
        for s in &p.steps {
            assert_eq!(s.cache, CacheSpec::default());
            assert_eq!(s.trial, None);
            assert!(s.gather.is_empty());
            let json = serde_json::to_value(s).unwrap();
            for absent in ["cache", "trial", "gather"] {
                assert!(json.get(absent).is_none(), "{absent} in {json}");
            }
        }
    }

    #[test]
    fn sweep_round_trips_through_json() {
        let mut p = parse(GATHER).unwrap();
        p.steps[0].cache = CacheSpec {
            enabled: false,
            version: "7".into(),
            paths: vec!["src".into()],
        };
        p.steps[1].trial.as_mut().unwrap().max_parallel = Some(3);
        let json = serde_json::to_string(&p).unwrap();
        let back: Pipeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        let p = parse(SWEEP).unwrap();
        let back: Pipeline = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn old_step_json_reads_with_cache_on() {
        let p = parse("name: o\nsteps:\n  - name: a\n    command: [x]\n").unwrap();
        let mut json = serde_json::to_value(&p.steps[0]).unwrap();
        let fields = json.as_object_mut().unwrap();
        for new in ["params", "cache", "trial", "gather"] {
            fields.remove(new);
        }
        let old: Step = serde_json::from_value(json).unwrap();
        assert!(old.cache.enabled);
        assert_eq!(old, p.steps[0]);
        // A cache map that leaves `enabled` out means on.
        let mut json = serde_json::to_value(&p.steps[0]).unwrap();
        json["cache"] = serde_json::json!({"version": "2"});
        let step: Step = serde_json::from_value(json).unwrap();
        assert!(step.cache.enabled);
        assert_eq!(step.cache.version, "2");
    }
}
