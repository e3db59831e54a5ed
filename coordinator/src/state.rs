//! The coordinator's state machine: every pipeline, run, step, attempt, worker and
//! artifact record, changed only by applying a [`Command`].
//!
//! Architecture invariant: `apply` is deterministic. It reads no clock (time travels
//! inside each command), uses no randomness, does no IO, and iterates only ordered
//! collections, so every replica that applies the same commands in the same order
//! holds the same state. The store persists what `apply` marks dirty together with
//! the applied index.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferry_common::spec::{Pipeline, Resources, format_duration_ms};
use serde::{Deserialize, Serialize};

mod cache;
pub(crate) mod catalog;
mod lineage;

pub use cache::cache_key;
pub use catalog::{CacheEntry, Catalog, GcPlan, Pin, Schedule, gc_plan, live_blobs};
pub use lineage::LineageNode;

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
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
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

/// Most metric values kept per attempt, and the longest metric name.
pub const MAX_METRICS_PER_ATTEMPT: usize = 10_000;
pub const MAX_METRIC_NAME_LEN: usize = 128;

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
    /// Its cache key (see [`cache_key`]), once its inputs are known; none when
    /// caching is off for the step.
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
    /// One record per pipeline step, in the pipeline's (topological) order.
    pub steps: Vec<StepRecord>,
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
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Run {
    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
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

/// One placement decided by the scheduler and carried by [`Command::Assign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub run: RunId,
    pub step: String,
    pub worker: String,
    pub gpus: Vec<u32>,
}

/// What a worker reports when an attempt ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub outcome: ReportedOutcome,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub outputs: Vec<(String, String, u64)>,
    /// The attempt's whole log as a blob (digest, size), when the worker sent one.
    #[serde(default)]
    pub log: Option<(String, u64)>,
    #[serde(default)]
    pub usage: Option<AttemptUsage>,
    /// How long the process ran, by the worker's clock: gives the start time of
    /// an attempt whose start was never reported (a short step's worker does not
    /// report the start).
    #[serde(default)]
    pub ran_ms: Option<u64>,
    #[serde(default)]
    pub metrics: Vec<MetricPoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedOutcome {
    Exited,
    TimedOut,
    Cancelled,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SubmitRun {
        pipeline: Pipeline,
        bundle_digest: String,
        submitter: String,
        #[serde(default)]
        request_id: Option<String>,
        #[serde(default)]
        options: SubmitOptions,
        now_ms: i64,
    },
    /// `ferry rerun`: a new run of `source`'s pipeline and code that keeps the
    /// outputs of its successful steps (by reference) and runs again from `from`
    /// (a step, or a sweep by its name) or else from the steps that did not
    /// succeed.
    RerunRun {
        source: RunId,
        from: Option<String>,
        submitter: String,
        #[serde(default)]
        request_id: Option<String>,
        now_ms: i64,
    },
    CreateSchedule {
        schedule: Schedule,
        now_ms: i64,
    },
    /// Pause or resume a schedule; a resumed schedule does not fire for the
    /// ticks it missed while paused.
    PauseSchedule {
        name: String,
        paused: bool,
        now_ms: i64,
    },
    DeleteSchedule {
        name: String,
        now_ms: i64,
    },
    /// The leader saw tick `tick_ms` of a schedule come (and `missed` earlier
    /// ticks go by without firing, e.g. while the cluster was down): starts one
    /// run for it, unless this tick or a later one already fired.
    FireSchedule {
        name: String,
        tick_ms: i64,
        missed: u64,
        now_ms: i64,
    },
    /// `ferry artifacts pin`: keeps an artifact through `ferry gc`.
    PinArtifact {
        tag: String,
        digest: String,
        owner: String,
        now_ms: i64,
    },
    UnpinArtifact {
        tag: String,
        now_ms: i64,
    },
    /// `ferry gc --keep-last N`: the logs and artifacts of finished runs beyond
    /// the newest `keep_last` of each pipeline are deleted (see [`gc_plan`]).
    /// Blobs written within `grace_ms` before `now_ms` are kept for a later
    /// collection (absent from entries made before it existed: 0).
    Collect {
        keep_last: u32,
        now_ms: i64,
        #[serde(default)]
        grace_ms: u64,
    },
    RegisterWorker {
        worker: Worker,
        /// Attempts the worker still runs or has not yet reported.
        running: Vec<AttemptKey>,
        now_ms: i64,
    },
    Assign {
        placements: Vec<Placement>,
        now_ms: i64,
    },
    StepStarted {
        key: AttemptKey,
        worker: String,
        now_ms: i64,
    },
    StepFinished {
        key: AttemptKey,
        worker: String,
        report: AttemptReport,
        now_ms: i64,
    },
    CancelRun {
        run: RunId,
        now_ms: i64,
    },
    /// An operator's `ferry workers cordon|drain|uncordon`.
    SetWorkerMode {
        worker: String,
        mode: WorkerMode,
        now_ms: i64,
    },
    /// The leader saw no heartbeat from the worker's session `session` within the
    /// lease: its attempts end as lost (and are retried elsewhere). Ignored if the
    /// worker registered a new session since.
    WorkerLost {
        worker: String,
        session: String,
        reason: String,
        now_ms: i64,
    },
    /// The run has been running longer than its pipeline's `timeout`.
    TimeOutRun {
        run: RunId,
        now_ms: i64,
    },
}

/// How a run is submitted, beside its pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SubmitOptions {
    /// `ferry run --no-cache`.
    #[serde(default)]
    pub no_cache: bool,
    /// Per step with `cache.paths`: the digest of those files in the bundle.
    #[serde(default)]
    pub code_digests: BTreeMap<String, String>,
}

/// The result of applying a command that was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    RunSubmitted(RunId),
    /// Attempts that were placed and must now be pushed to their workers.
    Assigned(Vec<(AttemptKey, String)>),
    /// A worker registered; these attempts, still assigned to it but not started,
    /// must be pushed to it again.
    Registered {
        resend: Vec<AttemptKey>,
    },
    /// A worker report: `accepted` is false for a stale or fenced report.
    Report {
        accepted: bool,
        detail: String,
    },
    /// A run was cancelled (or timed out); these attempts must be stopped on their
    /// workers.
    Cancelled {
        stop: Vec<(AttemptKey, String)>,
    },
    /// A worker's mode changed.
    WorkerMode(WorkerMode),
    /// A worker was declared lost (`ended` lists the attempts that ended with it;
    /// empty when the command was stale). Its stream must be closed.
    WorkerLost {
        worker: String,
        ended: Vec<AttemptKey>,
    },
    /// A `TimeOutRun` that came too early or too late changed nothing.
    Unchanged,
    /// A schedule or pin was created, changed or deleted.
    Done,
    /// `ferry gc` at `at_ms`: these runs' logs and these blobs are to be
    /// deleted on every member (a blob written since `at_ms` minus a grace period,
    /// or referenced again by then, is kept).
    Collected {
        runs: Vec<RunId>,
        blobs: Vec<(String, u64)>,
        at_ms: i64,
        grace_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    #[error("run {0} does not exist")]
    RunNotFound(RunId),
    #[error("run {run} has no step \"{step}\"")]
    StepNotFound { run: RunId, step: String },
    #[error("run {run} already {state}; only a running run can be cancelled")]
    RunAlreadyFinished { run: RunId, state: &'static str },
    #[error("worker \"{0}\" is not registered")]
    WorkerNotFound(String),
    #[error("run {run} is still {state}; rerun it once it has finished (or cancel it)")]
    RunStillRunning { run: RunId, state: &'static str },
    #[error(
        "run {0} succeeded: every step would be reused; name a step to run again from with --from STEP"
    )]
    NothingToRerun(RunId),
    #[error("run {run} has no step or sweep \"{step}\" (it has: {steps})")]
    NoSuchRerunStep {
        run: RunId,
        step: String,
        steps: String,
    },
    #[error(
        "run {0} was garbage-collected: its artifacts are deleted (or will be, once the grace \
         period is over), so it cannot be re-run; 'ferry run' its pipeline again instead"
    )]
    RunCollected(RunId),
    #[error("a schedule named \"{0}\" already exists; delete it first or choose another name")]
    ScheduleExists(String),
    #[error("there is no schedule named \"{0}\"")]
    ScheduleNotFound(String),
    #[error("no artifact has the digest {0} (see `ferry artifacts RUN` for digests)")]
    ArtifactNotFound(String),
    #[error("there is no pin named \"{0}\"")]
    PinNotFound(String),
    #[error(
        "the tag \"{tag}\" already pins {digest}; unpin it first ('ferry artifacts unpin {tag}') \
         or choose another tag"
    )]
    PinTaken { tag: String, digest: String },
}

/// How [`State::end_run`] ends a run and what it leaves behind.
struct RunEnd {
    attempts: AttemptOutcome,
    active_steps: StepState,
    other_steps: StepState,
    run: RunState,
    reason: String,
}

/// How many times an attempt lost with its worker is retried (beyond `retries`).
pub const LOST_RETRIES: u32 = 3;

/// The wait before retry number `retry` (from 1): `backoff_ms` doubled for each
/// retry after the first, at most [`MAX_RETRY_BACKOFF_MS`].
pub fn retry_delay_ms(backoff_ms: u64, retry: u32) -> u64 {
    let doublings = retry.saturating_sub(1).min(32);
    backoff_ms
        .saturating_mul(1u64 << doublings)
        .min(ferry_common::spec::MAX_RETRY_BACKOFF_MS)
}

/// Records changed by the commands applied since the last persist.
#[derive(Debug, Default)]
pub struct Dirty {
    pub runs: BTreeSet<RunId>,
    pub workers: BTreeSet<String>,
    pub members: BTreeSet<u64>,
    pub meta: bool,
}

/// A coordinator of the Raft group: its id and where clients and peers reach it.
/// Members change only through applied Raft configuration changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub client_address: String,
    pub peer_address: String,
}

#[derive(Debug, Default)]
pub struct State {
    /// Shared so that a snapshot can hold the runs of one moment while later
    /// commands change others (`Arc::make_mut` copies only a run still held).
    pub runs: BTreeMap<RunId, Arc<Run>>,
    pub workers: BTreeMap<String, Worker>,
    pub loads: BTreeMap<String, WorkerLoad>,
    pub next_run_id: RunId,
    /// The coordinators of the cluster, by Raft id.
    pub members: BTreeMap<u64, Member>,
    /// Derived: submission request ids to the run they started.
    pub requests: BTreeMap<String, RunId>,
    /// The cache index, schedules and pins.
    pub catalog: Catalog,
    /// Derived: per cache key, the step computing it (assigned or running, in a
    /// run that reads the cache).
    pub cache_owners: BTreeMap<String, (RunId, String)>,
    /// Derived: per cache key, the other steps (queued, or waiting behind the
    /// owner) that will take its result.
    pub cache_pending: BTreeMap<String, BTreeSet<(RunId, String)>>,
    pub dirty: Dirty,
}

impl State {
    /// Rebuilds the derived worker loads from persisted runs and workers.
    pub fn from_records(runs: Vec<Run>, workers: Vec<Worker>, next_run_id: RunId) -> State {
        let mut state = State {
            runs: runs.into_iter().map(|r| (r.id, Arc::new(r))).collect(),
            workers: workers.into_iter().map(|w| (w.name.clone(), w)).collect(),
            loads: BTreeMap::new(),
            next_run_id: next_run_id.max(1),
            members: BTreeMap::new(),
            requests: BTreeMap::new(),
            catalog: Catalog::default(),
            cache_owners: BTreeMap::new(),
            cache_pending: BTreeMap::new(),
            dirty: Dirty::default(),
        };
        for run in state.runs.values() {
            if let Some(request) = &run.request_id {
                state.requests.insert(request.clone(), run.id);
            }
            if run.state.is_terminal() || run.no_cache {
                continue;
            }
            for step in &run.steps {
                let Some(key) = &step.cache_key else { continue };
                let me = (run.id, step.name.clone());
                if step.state.is_active() {
                    state.cache_owners.insert(key.clone(), me);
                } else if !step.state.is_terminal() {
                    state
                        .cache_pending
                        .entry(key.clone())
                        .or_default()
                        .insert(me);
                }
            }
        }
        for name in state.workers.keys() {
            state.loads.insert(name.clone(), WorkerLoad::default());
        }
        for run in state.runs.values() {
            for step in &run.steps {
                if !step.state.is_active() {
                    continue;
                }
                if let Some(attempt) = step.current_attempt() {
                    let key = AttemptKey {
                        run: run.id,
                        step: step.name.clone(),
                        attempt: attempt.number,
                    };
                    state
                        .loads
                        .entry(attempt.worker.clone())
                        .or_default()
                        .attempts
                        .insert(key, (attempt.resources, attempt.gpus.clone()));
                }
            }
        }
        state
    }

    /// Sets the cache index, schedules and pins (a restart or a snapshot).
    pub fn with_catalog(mut self, catalog: Catalog) -> State {
        self.catalog = catalog;
        self
    }

    /// Sets the cluster's members (a restart or a snapshot); not a change to persist.
    pub fn with_members(mut self, members: impl IntoIterator<Item = Member>) -> State {
        self.members = members.into_iter().map(|m| (m.id, m)).collect();
        self
    }

    /// Records a member added by an applied configuration change (or the initial
    /// members at bootstrap).
    pub fn set_member(&mut self, member: Member) {
        self.dirty.members.insert(member.id);
        self.members.insert(member.id, member);
    }

    /// Forgets a member removed by an applied configuration change.
    pub fn remove_member(&mut self, id: u64) {
        self.dirty.members.insert(id);
        self.members.remove(&id);
    }

    pub fn apply(&mut self, command: Command) -> Result<Outcome, StateError> {
        match command {
            Command::SubmitRun {
                pipeline,
                bundle_digest,
                submitter,
                request_id,
                options,
                now_ms,
            } => {
                // A retried submission (same request id) answers with the run the
                // first one started instead of starting another.
                if let Some(id) = request_id.as_ref().and_then(|r| self.requests.get(r)) {
                    return Ok(Outcome::RunSubmitted(*id));
                }
                let id = self.create_run(
                    pipeline,
                    bundle_digest,
                    submitter,
                    request_id,
                    options,
                    now_ms,
                );
                self.advance(id, now_ms);
                Ok(Outcome::RunSubmitted(id))
            }
            Command::RerunRun {
                source,
                from,
                submitter,
                request_id,
                now_ms,
            } => {
                if let Some(id) = request_id.as_ref().and_then(|r| self.requests.get(r)) {
                    return Ok(Outcome::RunSubmitted(*id));
                }
                self.rerun(source, from.as_deref(), submitter, request_id, now_ms)
            }
            Command::CreateSchedule { schedule, now_ms } => self.create_schedule(schedule, now_ms),
            Command::PauseSchedule {
                name,
                paused,
                now_ms,
            } => self.pause_schedule(&name, paused, now_ms),
            Command::DeleteSchedule { name, now_ms: _ } => self.delete_schedule(&name),
            Command::FireSchedule {
                name,
                tick_ms,
                missed,
                now_ms,
            } => Ok(self.fire_schedule(&name, tick_ms, missed, now_ms)),
            Command::PinArtifact {
                tag,
                digest,
                owner,
                now_ms,
            } => self.pin(tag, digest, owner, now_ms),
            Command::UnpinArtifact { tag, now_ms: _ } => self.unpin(&tag),
            Command::Collect {
                keep_last,
                now_ms,
                grace_ms,
            } => Ok(self.collect(keep_last, now_ms, grace_ms)),
            Command::RegisterWorker {
                worker,
                running,
                now_ms,
            } => Ok(self.register_worker(worker, running, now_ms)),
            Command::Assign { placements, now_ms } => Ok(self.assign(placements, now_ms)),
            Command::StepStarted {
                key,
                worker,
                now_ms,
            } => self.step_started(&key, &worker, now_ms),
            Command::StepFinished {
                key,
                worker,
                report,
                now_ms,
            } => self.step_finished(&key, &worker, report, now_ms),
            Command::CancelRun { run, now_ms } => self.cancel_run(run, now_ms),
            Command::SetWorkerMode {
                worker,
                mode,
                now_ms: _,
            } => {
                let record = self
                    .workers
                    .get_mut(&worker)
                    .ok_or_else(|| StateError::WorkerNotFound(worker.clone()))?;
                record.mode = mode;
                self.dirty.workers.insert(worker);
                Ok(Outcome::WorkerMode(mode))
            }
            Command::WorkerLost {
                worker,
                session,
                reason,
                now_ms,
            } => Ok(self.worker_lost(worker, &session, &reason, now_ms)),
            Command::TimeOutRun { run, now_ms } => Ok(self.time_out_run(run, now_ms)),
        }
    }

    /// Records a new run with every step waiting; [`State::advance`] then moves
    /// the steps whose dependencies are met.
    fn create_run(
        &mut self,
        pipeline: Pipeline,
        bundle_digest: String,
        submitter: String,
        request_id: Option<String>,
        options: SubmitOptions,
        now_ms: i64,
    ) -> RunId {
        let id = self.next_run_id.max(1);
        if let Some(request) = &request_id {
            self.requests.insert(request.clone(), id);
        }
        self.next_run_id = id + 1;
        self.dirty.meta = true;
        let steps = pipeline
            .steps
            .iter()
            .map(|step| StepRecord {
                name: step.name.clone(),
                state: StepState::Waiting,
                attempts: Vec::new(),
                outputs: Vec::new(),
                reason: None,
                not_before_ms: None,
                inputs: Vec::new(),
                cache_key: None,
                reused: None,
            })
            .collect();
        let run = Run {
            id,
            pipeline,
            bundle_digest,
            submitter,
            submitted_ms: now_ms,
            finished_ms: None,
            state: RunState::Running,
            steps,
            reason: None,
            request_id,
            no_cache: options.no_cache,
            code_digests: options.code_digests,
            rerun_of: None,
            schedule: None,
            collected_ms: None,
            released: false,
        };
        self.runs.insert(id, Arc::new(run));
        self.dirty.runs.insert(id);
        id
    }

    fn register_worker(
        &mut self,
        worker: Worker,
        running: Vec<AttemptKey>,
        now_ms: i64,
    ) -> Outcome {
        let name = worker.name.clone();
        let mut worker = worker;
        // The operator's choice outlives a restart of the worker; being lost does not.
        worker.mode = self.workers.get(&name).map_or(worker.mode, |w| w.mode);
        worker.lost_ms = None;
        self.workers.insert(name.clone(), worker);
        self.dirty.workers.insert(name.clone());
        let load = self.loads.entry(name.clone()).or_default().clone();
        let still_running: BTreeSet<AttemptKey> = running.into_iter().collect();
        let mut resend = Vec::new();
        for key in load.attempts.keys() {
            let Some(step) = self.runs.get(&key.run).and_then(|run| run.step(&key.step)) else {
                continue;
            };
            if step.state == StepState::Assigned && !still_running.contains(key) {
                // Never reached the worker (or it was lost in transit): send it again.
                resend.push(key.clone());
            } else if !still_running.contains(key) {
                self.end_attempt(
                    key,
                    AttemptOutcome::Lost,
                    None,
                    Some(format!(
                        "worker \"{name}\" re-registered without this attempt (it restarted)"
                    )),
                    Vec::new(),
                    now_ms,
                );
            }
        }
        Outcome::Registered { resend }
    }

    fn assign(&mut self, placements: Vec<Placement>, now_ms: i64) -> Outcome {
        let mut assigned = Vec::new();
        for placement in placements {
            if let Some(key) = self.assign_one(&placement, now_ms) {
                assigned.push((key, placement.worker));
            }
        }
        Outcome::Assigned(assigned)
    }

    /// Applies one placement if it is still valid: the step is queued, the worker is
    /// registered, takes work (not lost, cordoned or draining: a placement decided
    /// just before that changed is dropped, and the step stays queued), and has
    /// room (the no-oversubscription invariant is enforced here as well as in the
    /// scheduler).
    fn assign_one(&mut self, placement: &Placement, now_ms: i64) -> Option<AttemptKey> {
        self.workers
            .get(&placement.worker)
            .filter(|w| w.schedulable())?;
        let run = self.runs.get(&placement.run)?;
        if run.state.is_terminal() {
            return None;
        }
        let index = run.step_index(&placement.step)?;
        if run.steps[index].state != StepState::Queued {
            return None;
        }
        // An identical step computes (or computed) its result: take that instead.
        if let Some(key) = run.steps[index].cache_key.clone()
            && !run.no_cache
            && self.defer_to_cache(&key, placement.run, index, now_ms)
        {
            return None;
        }
        let worker = self.workers.get(&placement.worker)?;
        let run = self.runs.get(&placement.run)?;
        let resources = run
            .pipeline
            .steps
            .iter()
            .find(|s| s.name == placement.step)?
            .resources;
        let load = self.loads.entry(worker.name.clone()).or_default();
        let used = load.in_use();
        let gpus_in_use = load.gpus_in_use();
        let fits = used.cpu_millis.saturating_add(resources.cpu_millis)
            <= worker.capacity.cpu_millis
            && used.memory_bytes.saturating_add(resources.memory_bytes)
                <= worker.capacity.memory_bytes
            && placement.gpus.len() == resources.gpus as usize
            && placement.gpus.iter().all(|g| {
                !gpus_in_use.contains(g) && worker.gpus.iter().any(|known| known.index == *g)
            })
            && placement.gpus.iter().collect::<BTreeSet<_>>().len() == placement.gpus.len();
        if !fits {
            return None;
        }
        let run = self.runs.get_mut(&placement.run).map(Arc::make_mut)?;
        let step = &mut run.steps[index];
        let number = step.attempts.len() as u32 + 1;
        step.attempts.push(Attempt {
            number,
            worker: placement.worker.clone(),
            gpus: placement.gpus.clone(),
            resources,
            assigned_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            outcome: None,
            exit_code: None,
            reason: None,
            log: None,
            usage: None,
            metrics: Vec::new(),
        });
        step.state = StepState::Assigned;
        step.reason = None;
        step.not_before_ms = None;
        let key = AttemptKey {
            run: placement.run,
            step: placement.step.clone(),
            attempt: number,
        };
        load.attempts
            .insert(key.clone(), (resources, placement.gpus.clone()));
        self.dirty.runs.insert(placement.run);
        self.claim_cache_key(placement.run, index);
        Some(key)
    }

    /// Checks that a report names the current attempt of an active step, made by the
    /// worker that attempt was given to. Anything else is stale and must be refused.
    fn fence(&self, key: &AttemptKey, worker: &str) -> Result<Result<(), String>, StateError> {
        let run = self
            .runs
            .get(&key.run)
            .ok_or(StateError::RunNotFound(key.run))?;
        let step = run
            .step(&key.step)
            .ok_or_else(|| StateError::StepNotFound {
                run: key.run,
                step: key.step.clone(),
            })?;
        let Some(current) = step.current_attempt() else {
            return Ok(Err(format!("{key} was never assigned")));
        };
        if current.number != key.attempt {
            return Ok(Err(format!(
                "{key} is stale: the current attempt is {}",
                current.number
            )));
        }
        if current.worker != worker {
            return Ok(Err(format!(
                "{key} belongs to worker \"{}\", not \"{worker}\"",
                current.worker
            )));
        }
        if !step.state.is_active() {
            return Ok(Err(format!(
                "{key} already ended ({})",
                step.state.as_str()
            )));
        }
        Ok(Ok(()))
    }

    fn step_started(
        &mut self,
        key: &AttemptKey,
        worker: &str,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if let Err(detail) = self.fence(key, worker)? {
            return Ok(Outcome::Report {
                accepted: false,
                detail,
            });
        }
        let run = self
            .runs
            .get_mut(&key.run)
            .map(Arc::make_mut)
            .expect("fenced");
        let index = run.step_index(&key.step).expect("fenced");
        let step = &mut run.steps[index];
        step.state = StepState::Running;
        if let Some(attempt) = step.attempts.last_mut() {
            attempt.started_ms.get_or_insert(now_ms);
        }
        self.dirty.runs.insert(key.run);
        Ok(Outcome::Report {
            accepted: true,
            detail: String::new(),
        })
    }

    fn step_finished(
        &mut self,
        key: &AttemptKey,
        worker: &str,
        report: AttemptReport,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if let Err(detail) = self.fence(key, worker)? {
            return Ok(Outcome::Report {
                accepted: false,
                detail,
            });
        }
        let declared = self.runs[&key.run]
            .pipeline
            .steps
            .iter()
            .find(|s| s.name == key.step)
            .map(|s| s.outputs.clone())
            .unwrap_or_default();
        let (outcome, reason) = match report.outcome {
            ReportedOutcome::Exited if report.exit_code == Some(0) => {
                let missing: Vec<&String> = declared
                    .iter()
                    .filter(|d| !report.outputs.iter().any(|(name, _, _)| name == *d))
                    .collect();
                if missing.is_empty() {
                    (AttemptOutcome::Succeeded, report.reason)
                } else {
                    (
                        AttemptOutcome::Failed,
                        Some(format!("declared outputs were not reported: {missing:?}")),
                    )
                }
            }
            ReportedOutcome::Exited => (
                AttemptOutcome::Failed,
                report.reason.or_else(|| {
                    Some(match report.exit_code {
                        Some(code) => format!("exited with code {code}"),
                        None => "killed by a signal".to_string(),
                    })
                }),
            ),
            ReportedOutcome::TimedOut => (AttemptOutcome::TimedOut, report.reason),
            // The run was not cancelled (the fence passed), so the worker stopped the
            // attempt on its own, e.g. while shutting down: the attempt is lost and the
            // step is retried per its policy, like any other lost attempt.
            ReportedOutcome::Cancelled => (
                AttemptOutcome::Lost,
                Some(format!(
                    "stopped by the worker: {}",
                    report.reason.as_deref().unwrap_or("no reason given")
                )),
            ),
            ReportedOutcome::Error => (AttemptOutcome::Failed, report.reason),
        };
        let outputs = if outcome == AttemptOutcome::Succeeded {
            // Only declared outputs become artifacts: downstream steps and users
            // can rely on the spec for what a step produced.
            report
                .outputs
                .into_iter()
                .filter(|(name, _, _)| declared.contains(name))
                .collect()
        } else {
            Vec::new()
        };
        if (report.log.is_some()
            || report.usage.is_some()
            || report.ran_ms.is_some()
            || !report.metrics.is_empty())
            && let Some(attempt) = self
                .runs
                .get_mut(&key.run)
                .map(Arc::make_mut)
                .and_then(|run| run.steps.iter_mut().find(|s| s.name == key.step))
                .and_then(|step| step.attempts.last_mut())
        {
            if report.log.is_some() {
                attempt.log = report.log;
            }
            attempt.usage = report.usage;
            attempt.metrics = report.metrics;
            if attempt.started_ms.is_none()
                && let Some(ran) = report.ran_ms
            {
                attempt.started_ms =
                    Some(now_ms.saturating_sub(ran as i64).max(attempt.assigned_ms));
            }
        }
        self.end_attempt(key, outcome, report.exit_code, reason, outputs, now_ms);
        Ok(Outcome::Report {
            accepted: true,
            detail: String::new(),
        })
    }

    /// Ends the current attempt of a step, frees its worker capacity, and moves the
    /// step (and through it the run) forward: success readies dependents, a failure
    /// is retried while retries remain, and a final failure skips every dependent.
    fn end_attempt(
        &mut self,
        key: &AttemptKey,
        outcome: AttemptOutcome,
        exit_code: Option<i32>,
        reason: Option<String>,
        outputs: Vec<(String, String, u64)>,
        now_ms: i64,
    ) {
        let Some(run) = self.runs.get_mut(&key.run).map(Arc::make_mut) else {
            return;
        };
        let Some(index) = run.step_index(&key.step) else {
            return;
        };
        let retries = run.pipeline.steps[index].retries;
        let backoff_ms = run.pipeline.steps[index].retry_backoff_ms;
        let step = &mut run.steps[index];
        let Some(attempt) = step.attempts.last_mut() else {
            return;
        };
        attempt.finished_ms = Some(now_ms);
        attempt.outcome = Some(outcome);
        attempt.exit_code = exit_code;
        attempt.reason = reason.clone();
        let worker = attempt.worker.clone();
        if let Some(load) = self.loads.get_mut(&worker) {
            load.attempts.remove(key);
        }
        self.dirty.runs.insert(key.run);
        match outcome {
            AttemptOutcome::Succeeded => {
                step.state = StepState::Succeeded;
                step.reason = None;
                step.outputs = outputs
                    .into_iter()
                    .map(|(name, digest, size)| ArtifactRecord {
                        name,
                        digest,
                        size,
                        attempt: key.attempt,
                    })
                    .collect();
            }
            AttemptOutcome::Cancelled => {
                step.state = StepState::Cancelled;
                step.reason = reason;
            }
            AttemptOutcome::Failed | AttemptOutcome::TimedOut | AttemptOutcome::Lost => {
                // A failure of the step itself uses up its `retries` and waits an
                // exponential backoff; an attempt lost with its worker is retried at
                // once, up to LOST_RETRIES times, without using up `retries`.
                let lost = step
                    .attempts
                    .iter()
                    .filter(|a| a.outcome == Some(AttemptOutcome::Lost))
                    .count() as u32;
                let failures = step.attempts.len() as u32 - lost;
                let why = reason.unwrap_or_else(|| outcome.as_str().to_string());
                if outcome == AttemptOutcome::Lost && lost <= LOST_RETRIES {
                    step.state = StepState::Queued;
                    step.not_before_ms = None;
                    step.reason = Some(format!("retrying after attempt {}: {why}", key.attempt));
                } else if outcome != AttemptOutcome::Lost && failures <= retries {
                    let delay = retry_delay_ms(backoff_ms, failures);
                    step.state = StepState::Queued;
                    step.not_before_ms = Some(now_ms.saturating_add(delay as i64));
                    step.reason = Some(format!(
                        "retry {failures} of {retries} in {} after attempt {}: {why}",
                        format_duration_ms(delay),
                        key.attempt
                    ));
                } else {
                    step.state = if outcome == AttemptOutcome::TimedOut {
                        StepState::TimedOut
                    } else {
                        StepState::Failed
                    };
                    step.reason = Some(if outcome == AttemptOutcome::Lost {
                        format!("{why} (lost {lost} times; giving up)")
                    } else {
                        why
                    });
                    let failed = step.name.clone();
                    Self::skip_dependents(run, &failed);
                }
            }
        }
        let settled = (run.steps[index].cache_key.clone(), run.steps[index].state);
        // Its own run goes on first, so that its next steps take the lead over
        // identical steps of runs that wait for this one.
        self.advance(key.run, now_ms);
        if let (Some(cache_key), state) = settled {
            self.settle_cache(&cache_key, key.run, &key.step, state, now_ms);
        }
    }

    /// Marks every step that depends, directly or not, on `failed` as skipped. The
    /// steps are in topological order, so one forward pass reaches them all.
    fn skip_dependents(run: &mut Run, failed: &str) {
        let mut blocked: BTreeSet<String> = BTreeSet::from([failed.to_string()]);
        for (record, spec) in run.steps.iter_mut().zip(&run.pipeline.steps) {
            if let Some(cause) = spec.needs.iter().find(|need| blocked.contains(*need)) {
                if record.state == StepState::Waiting {
                    record.state = StepState::Skipped;
                    record.reason = Some(format!("dependency \"{cause}\" did not succeed"));
                }
                blocked.insert(record.name.clone());
            }
        }
    }

    fn finish_run_if_done(run: &mut Run, now_ms: i64) {
        if run.state.is_terminal() || !run.steps.iter().all(|s| s.state.is_terminal()) {
            return;
        }
        run.state = if run.steps.iter().all(|s| s.state == StepState::Succeeded) {
            RunState::Succeeded
        } else if run.steps.iter().any(|s| s.state == StepState::Cancelled) {
            RunState::Cancelled
        } else {
            RunState::Failed
        };
        run.finished_ms = Some(now_ms);
    }

    fn cancel_run(&mut self, run_id: RunId, now_ms: i64) -> Result<Outcome, StateError> {
        let run = self
            .runs
            .get(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        if run.state.is_terminal() {
            return Err(StateError::RunAlreadyFinished {
                run: run_id,
                state: run.state.as_str(),
            });
        }
        let stop = self.end_run(
            run_id,
            now_ms,
            RunEnd {
                attempts: AttemptOutcome::Cancelled,
                active_steps: StepState::Cancelled,
                other_steps: StepState::Cancelled,
                run: RunState::Cancelled,
                reason: "run cancelled".to_string(),
            },
        );
        Ok(Outcome::Cancelled { stop })
    }

    /// Ends a running run at once: its active attempts end with `end.attempts`
    /// (their capacity freed; returned, to be stopped on their workers), its open
    /// steps take the states `end` names, and the run ends in `end.run`.
    fn end_run(&mut self, run_id: RunId, now_ms: i64, end: RunEnd) -> Vec<(AttemptKey, String)> {
        let Some(run) = self.runs.get(&run_id) else {
            return Vec::new();
        };
        // Steps that own or wait for a cache key give it up.
        let keyed: Vec<(String, String)> = run
            .steps
            .iter()
            .filter(|s| !s.state.is_terminal())
            .filter_map(|s| Some((s.cache_key.clone()?, s.name.clone())))
            .collect();
        let stop = self.end_run_steps(run_id, now_ms, end);
        for (cache_key, step) in keyed {
            self.settle_cache(&cache_key, run_id, &step, StepState::Cancelled, now_ms);
        }
        stop
    }

    fn end_run_steps(
        &mut self,
        run_id: RunId,
        now_ms: i64,
        end: RunEnd,
    ) -> Vec<(AttemptKey, String)> {
        let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) else {
            return Vec::new();
        };
        let mut stop = Vec::new();
        for step in &mut run.steps {
            if step.state.is_terminal() {
                continue;
            }
            if step.state.is_active()
                && let Some(attempt) = step.attempts.last_mut()
            {
                attempt.finished_ms = Some(now_ms);
                attempt.outcome = Some(end.attempts);
                attempt.reason = Some(end.reason.clone());
                let key = AttemptKey {
                    run: run_id,
                    step: step.name.clone(),
                    attempt: attempt.number,
                };
                if let Some(load) = self.loads.get_mut(&attempt.worker) {
                    load.attempts.remove(&key);
                }
                stop.push((key, attempt.worker.clone()));
                step.state = end.active_steps;
            } else {
                step.state = end.other_steps;
            }
            step.reason = Some(end.reason.clone());
            step.not_before_ms = None;
        }
        run.state = end.run;
        if end.run != RunState::Cancelled {
            run.reason = Some(end.reason);
        }
        run.finished_ms = Some(now_ms);
        self.dirty.runs.insert(run_id);
        stop
    }

    /// Running runs whose pipeline timeout has passed at `now_ms`.
    pub fn runs_past_timeout(&self, now_ms: i64) -> Vec<RunId> {
        self.runs
            .values()
            .filter(|r| !r.state.is_terminal())
            .filter(|r| {
                r.pipeline
                    .timeout_ms
                    .is_some_and(|t| now_ms.saturating_sub(r.submitted_ms) >= t as i64)
            })
            .map(|r| r.id)
            .collect()
    }

    fn worker_lost(&mut self, name: String, session: &str, reason: &str, now_ms: i64) -> Outcome {
        let Some(worker) = self.workers.get_mut(&name) else {
            return Outcome::WorkerLost {
                worker: name,
                ended: Vec::new(),
            };
        };
        if worker.session != session || worker.lost_ms.is_some() {
            // It registered again since the leader decided, or is already lost.
            return Outcome::WorkerLost {
                worker: name,
                ended: Vec::new(),
            };
        }
        worker.lost_ms = Some(now_ms);
        self.dirty.workers.insert(name.clone());
        let held: Vec<AttemptKey> = self
            .loads
            .get(&name)
            .map(|load| load.attempts.keys().cloned().collect())
            .unwrap_or_default();
        for key in &held {
            self.end_attempt(
                key,
                AttemptOutcome::Lost,
                None,
                Some(format!("worker lost: {reason}")),
                Vec::new(),
                now_ms,
            );
        }
        Outcome::WorkerLost {
            worker: name,
            ended: held,
        }
    }

    /// Stops a run that outlived its pipeline's timeout: running attempts end as
    /// timed out (and are stopped on their workers), steps not yet finished are
    /// skipped, and the run fails with the reason.
    fn time_out_run(&mut self, run_id: RunId, now_ms: i64) -> Outcome {
        let Some(run) = self.runs.get(&run_id) else {
            return Outcome::Unchanged;
        };
        let Some(timeout) = run.pipeline.timeout_ms else {
            return Outcome::Unchanged;
        };
        if run.state.is_terminal() || now_ms.saturating_sub(run.submitted_ms) < timeout as i64 {
            return Outcome::Unchanged;
        }
        let stop = self.end_run(
            run_id,
            now_ms,
            RunEnd {
                attempts: AttemptOutcome::TimedOut,
                active_steps: StepState::TimedOut,
                other_steps: StepState::Skipped,
                run: RunState::Failed,
                reason: format!("the run timed out after {}", format_duration_ms(timeout)),
            },
        );
        Outcome::Cancelled { stop }
    }

    /// Whether `key` is an assigned or running attempt of `worker`.
    pub fn holds(&self, worker: &str, key: &AttemptKey) -> bool {
        self.loads
            .get(worker)
            .is_some_and(|load| load.attempts.contains_key(key))
    }

    /// The attempts currently assigned to (not yet started on) a worker.
    pub fn assigned_to(&self, worker: &str) -> Vec<AttemptKey> {
        self.loads
            .get(worker)
            .map(|load| {
                load.attempts
                    .keys()
                    .filter(|key| {
                        self.runs
                            .get(&key.run)
                            .and_then(|run| run.step(&key.step))
                            .is_some_and(|step| step.state == StepState::Assigned)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The artifact an input of a step resolves to, from the producing step's record.
    pub fn resolve_output(&self, run: RunId, step: &str, output: &str) -> Option<&ArtifactRecord> {
        self.runs
            .get(&run)?
            .step(step)?
            .outputs
            .iter()
            .find(|artifact| artifact.name == output)
    }
}

#[cfg(test)]
mod tests;
