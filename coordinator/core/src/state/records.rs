//! The records the state machine keeps: runs with their steps, attempts,
//! artifacts and metrics; workers and what they hold; the cluster's members.
//! Plain data (serialized into the store and snapshots); the transitions that
//! change them live with [`State::apply`](super::State::apply).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use ferry_spec::{Pipeline, Resources};
use serde::{Deserialize, Serialize};

use super::Steps;

pub type RunId = u64;

/// Names one attempt of one step of one run: the unit of fencing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptKey {
    pub run: RunId,
    pub step: String,
    pub attempt: u32,
}

impl std::fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} step {} attempt {}",
            self.run, self.step, self.attempt
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != RunState::Running
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Some dependency has not succeeded yet.
    Waiting,
    /// Ready to run, waiting for a worker with room.
    Queued,
    /// Placed on a worker, not yet reported as started.
    Assigned,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// Never started because a dependency did not succeed.
    Skipped,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Queued => "queued",
            StepState::Assigned => "assigned",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::TimedOut => "timed_out",
            StepState::Cancelled => "cancelled",
            StepState::Skipped => "skipped",
        }
    }

    /// The state named `name` (as [`StepState::as_str`] writes it).
    pub fn parse(name: &str) -> Option<StepState> {
        super::STEP_STATES.into_iter().find(|s| s.as_str() == name)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Succeeded
                | StepState::Failed
                | StepState::TimedOut
                | StepState::Cancelled
                | StepState::Skipped
        )
    }

    /// Whether an attempt of the step holds capacity on a worker.
    pub fn is_active(self) -> bool {
        matches!(self, StepState::Assigned | StepState::Running)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// The worker no longer runs it (it restarted, or was declared lost).
    Lost,
    /// Stopped before its command ran: once the worker had resolved the
    /// step's image, the step's cache key named a result that exists or that
    /// an identical step is computing, and the step takes that instead.
    Deferred,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Deferred => "deferred",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub worker: String,
    pub gpus: Vec<u32>,
    pub resources: Resources,
    pub assigned_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub outcome: Option<AttemptOutcome>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// The attempt's whole log as a blob (digest, size), once it has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<(String, u64)>,
    /// What its processes used, as the worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AttemptUsage>,
    /// What the step reported through `FERRY_METRICS`, in the order written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricPoint>,
    /// The image a container step ran, as its worker resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<RanImage>,
}

/// The image an attempt ran: its ID (`sha256:...`, what the engine ran) and
/// its repository digest where it has one (`name@sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RanImage {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
}

/// One metric value a step reported: a name, a value and an optional step
/// number (an epoch, an iteration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricPoint {
    pub name: String,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
}

// Values are data, never computed on: equal when their bits are (so that a NaN a
// step reported still compares equal to itself across replicas).
impl PartialEq for MetricPoint {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.value.to_bits() == other.value.to_bits()
            && self.step == other.step
    }
}

impl Eq for MetricPoint {}

/// The bounds on an attempt's metrics, defined once with the spec.
pub use ferry_spec::{MAX_METRIC_NAME_LEN, MAX_METRICS_PER_ATTEMPT};

/// CPU time and peak memory of an attempt's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptUsage {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub state: StepState,
    pub attempts: Vec<Attempt>,
    pub outputs: Vec<ArtifactRecord>,
    pub reason: Option<String>,
    /// A step waiting to be retried is not placed before this time (exponential
    /// backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
    /// The artifacts the step was given, resolved when its dependencies
    /// succeeded: (input name, digest, size). A gathering step's inputs are every
    /// trial's outputs, named `<trial>/<output>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputRecord>,
    /// Its cache key (see [`cache_key`](super::cache_key)), once its inputs are known (and,
    /// for a step with an image, once a worker resolved the image to its ID:
    /// the key of the attempt that last resolved it); none when caching is
    /// off for the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// Set when the step did not run in this run: its outputs are those of the
    /// step that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<Reuse>,
}

/// One resolved input of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub name: String,
    pub digest: String,
    pub size: u64,
}

/// Where the result of a step that did not run came from: the step (of an
/// earlier run) that produced it, found through the cache or by `ferry rerun`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reuse {
    pub run: RunId,
    pub step: String,
    pub how: ReuseKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReuseKind {
    /// Its cache key was known.
    Cached,
    /// `ferry rerun` kept the successful step of the run it re-ran.
    Rerun,
}

impl ReuseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReuseKind::Cached => "cached",
            ReuseKind::Rerun => "reused",
        }
    }
}

impl StepRecord {
    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub pipeline: Pipeline,
    pub bundle_digest: String,
    pub submitter: String,
    pub submitted_ms: i64,
    pub finished_ms: Option<i64>,
    pub state: RunState,
    /// One record per pipeline step, in the pipeline's (topological) order,
    /// with their positions by name and counts by state (`state::steps`).
    pub steps: Steps,
    /// Why the run ended, when not by its steps alone (e.g. its timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The client's id for this submission, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `ferry run --no-cache` (and every `ferry rerun`): its steps do not take
    /// results from the cache (their own results still enter it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_cache: bool,
    /// Per step with `cache.paths`: the digest of those files in the bundle,
    /// which stands for the code in its cache key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub code_digests: BTreeMap<String, String>,
    /// The run this one re-ran (`ferry rerun`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RunId>,
    /// The schedule and tick that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<(String, i64)>,
    /// When `ferry gc` removed its logs and artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_ms: Option<i64>,
    /// Collected, and none of its blobs is kept by anything else any more.
    #[serde(default, skip_serializing_if = "is_false")]
    pub released: bool,
    /// Derived on first use: the sweeps with a `max_parallel` (see
    /// [`Run::sweep_limits`]).
    #[serde(skip)]
    pub(super) sweep_limits: OnceLock<Vec<(String, u32)>>,
    /// Derived on first use: each step's dependents (see [`Run::dependents`]).
    #[serde(skip)]
    pub(super) dependents: OnceLock<Vec<Vec<u32>>>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Run {
    /// The record of the step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.named(name)
    }

    /// The positions of the steps that need step `index` (its direct
    /// dependents), ascending; found once per run.
    pub fn dependents(&self, index: usize) -> &[u32] {
        let all = self.dependents.get_or_init(|| {
            let mut all = vec![Vec::new(); self.pipeline.steps.len()];
            for (i, spec) in self.pipeline.steps.iter().enumerate() {
                for need in &spec.needs {
                    if let Some(j) = self.step_index(need) {
                        all[j].push(u32::try_from(i).unwrap_or(u32::MAX));
                    }
                }
            }
            all
        });
        all.get(index).map_or(&[], Vec::as_slice)
    }

    /// The spec of the step named `name`.
    pub fn spec(&self, name: &str) -> Option<&ferry_spec::Step> {
        self.pipeline.steps.get(self.step_index(name)?)
    }

    /// The position of the step named `name` in `steps` (and in the pipeline).
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.position(name)
    }

    /// The sweeps of its pipeline with a `max_parallel`, and that limit, by
    /// sweep name (found once, not per scheduling pass).
    pub fn sweep_limits(&self) -> &[(String, u32)] {
        self.sweep_limits.get_or_init(|| {
            let limits: BTreeMap<&str, u32> = self
                .pipeline
                .steps
                .iter()
                .filter_map(|s| s.trial.as_ref())
                .filter_map(|t| t.max_parallel.map(|max| (t.of.as_str(), max)))
                .collect();
            limits
                .into_iter()
                .map(|(sweep, max)| (sweep.to_string(), max))
                .collect()
        })
    }

    /// What stands for the code of step `name` in its cache key.
    pub fn code_digest(&self, name: &str) -> &str {
        self.code_digests
            .get(name)
            .map_or(&self.bundle_digest, String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub name: String,
    pub capacity: Resources,
    pub gpus: Vec<GpuInfo>,
    pub labels: BTreeMap<String, String>,
    pub registered_ms: i64,
    pub session: String,
    /// Whether the scheduler may give it new work (kept across re-registrations).
    #[serde(default)]
    pub mode: WorkerMode,
    /// When the leader declared it lost (no heartbeat within the lease); cleared
    /// when it registers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_ms: Option<i64>,
    /// The container runtime it runs steps with an `image` in (`docker
    /// 28.2.2`); none: it runs processes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
}

impl Worker {
    /// Whether new attempts may be placed on it (its stream must also be live).
    pub fn schedulable(&self) -> bool {
        self.mode == WorkerMode::Active && self.lost_ms.is_none()
    }
}

/// What an operator allows on a worker: `ferry workers cordon|drain|uncordon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    /// Takes new work.
    #[default]
    Active,
    /// Takes no new work; what runs there goes on.
    Cordoned,
    /// Takes no new work and is being emptied: running steps finish, then it is
    /// idle and can be taken down.
    Draining,
}

impl WorkerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Active => "active",
            WorkerMode::Cordoned => "cordoned",
            WorkerMode::Draining => "draining",
        }
    }
}

/// What an attempt holds on its worker while it is assigned or running. Derived
/// from the runs when the state is loaded; kept up to date by `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerLoad {
    pub attempts: BTreeMap<AttemptKey, (Resources, Vec<u32>)>,
}

impl WorkerLoad {
    pub fn in_use(&self) -> Resources {
        let mut total = Resources::default();
        for (resources, _) in self.attempts.values() {
            total.cpu_millis = total.cpu_millis.saturating_add(resources.cpu_millis);
            total.memory_bytes = total.memory_bytes.saturating_add(resources.memory_bytes);
            total.gpus = total.gpus.saturating_add(resources.gpus);
        }
        total
    }

    pub fn gpus_in_use(&self) -> BTreeSet<u32> {
        self.attempts
            .values()
            .flat_map(|(_, gpus)| gpus.iter().copied())
            .collect()
    }
}

/// A coordinator of the Raft group: its id and where clients and peers reach it.
/// Members change only through applied Raft configuration changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub client_address: String,
    pub peer_address: String,
    /// A learner copies the log but does not vote: a member added by `ferry
    /// cluster add-member` is one until the leader promotes it. (Absent, and so
    /// false, in records made before learners existed, when every member voted.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learner: bool,
}
