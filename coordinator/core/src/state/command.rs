//! The commands that change the state, and what they carry: each one is
//! replicated through the Raft log and applied by [`State::apply`](super::State::apply),
//! with the time it happened inside it.

use std::collections::BTreeMap;

use ferry_spec::Pipeline;
use serde::{Deserialize, Serialize};

use crate::access::ProjectRole;

use super::{
    AttemptKey, AttemptUsage, AuditNote, MetricPoint, RanImage, Request, RevocationTarget, RunId,
    Schedule, SealedValue, Worker, WorkerMode,
};

/// One placement decided by the scheduler and carried by [`Command::Assign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub run: RunId,
    pub step: String,
    pub worker: String,
    pub gpus: Vec<u32>,
}

/// A placement of a step of the run a command is about, decided by the leader
/// when it proposes the command: one of the first steps of the run a
/// `SubmitRun` creates (see [`first_placements`](crate::scheduler::first_placements)),
/// or a dependent that a `StepFinished` makes ready (see
/// [`next_placements`](crate::scheduler::next_placements)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstPlacement {
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
    /// A container step's image, as the worker resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<RanImage>,
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
        /// Set by the leader only (whatever a caller sent is replaced): the
        /// run's first steps placed in the same entry as the submission, each
        /// checked again when applied like an `Assign`'s placement.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        placements: Vec<FirstPlacement>,
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
    /// the newest `keep_last` of each pipeline are deleted (see [`gc_plan`](super::gc_plan)).
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
        /// Set by the leader only (whatever a caller sent is replaced): the
        /// dependents the report makes ready, placed in the same entry as the
        /// report; applied only when the attempt succeeded, each checked again
        /// like an `Assign`'s placement.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        placements: Vec<FirstPlacement>,
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
    /// `ferry projects create`: a project whose first member, `owner`, owns it.
    CreateProject {
        name: String,
        owner: String,
        now_ms: i64,
    },
    /// `ferry projects members add|remove`: `role` none removes the member.
    SetProjectMember {
        project: String,
        user: String,
        role: Option<ProjectRole>,
        now_ms: i64,
    },
    /// `ferry groups add|remove`: `user` joins or leaves `group`.
    SetGroupMember {
        group: String,
        user: String,
        member: bool,
        now_ms: i64,
    },
    /// `ferry groups delete`: the group and every role given to it.
    DeleteGroup {
        group: String,
        now_ms: i64,
    },
    /// `ferry admins add|remove`.
    SetAdmin {
        user: String,
        admin: bool,
        now_ms: i64,
    },
    /// `ferry certs revoke` (administrators): adds a serial number or a holder
    /// name to the certificate deny list (see `revocation`).
    RevokeCertificate {
        target: RevocationTarget,
        /// The administrator who asked.
        by: String,
        now_ms: i64,
    },
    /// `ferry secrets set`: the value sealed by the member that received it.
    SetSecret {
        project: String,
        name: String,
        sealed: SealedValue,
        set_by: String,
        now_ms: i64,
    },
    /// `ferry secrets rotate-key`: the same value of a secret, sealed again with
    /// the current key; ignored unless the secret still has `version`.
    ResealSecret {
        project: String,
        name: String,
        version: u64,
        sealed: SealedValue,
        now_ms: i64,
    },
    /// `ferry secrets delete`.
    DeleteSecret {
        project: String,
        name: String,
        now_ms: i64,
    },
    /// A caller's command, as the leader proposes it: applied as the command,
    /// and recorded in the audit log with its outcome (see `audit`).
    Request(Box<Request>),
    /// A record for the audit log made outside the state machine's
    /// transitions: a request refused before it was proposed, a membership
    /// change.
    Audit {
        note: Box<AuditNote>,
        now_ms: i64,
    },
    /// The leader's audit retention: records older than `keep_ms` before
    /// `now_ms` go, and the oldest beyond the newest `keep_max`.
    TrimAudit {
        keep_ms: u64,
        keep_max: u64,
        now_ms: i64,
    },
    /// A worker resolved the image of the attempt `key` to `image`, before
    /// running anything: the step's cache key is computed with the image's
    /// ID, and the attempt either goes on or ends (`Deferred`) because its
    /// result exists or is being computed by an identical step.
    ImageResolved {
        key: AttemptKey,
        worker: String,
        image: RanImage,
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

impl Command {
    /// Sets the time the command happened to `now_ms`, the clock of the member
    /// that proposes it. Only the leader proposes, so every time the state machine
    /// compares (a run's submission against its timeout, a retry's backoff, a
    /// schedule's ticks) comes from one clock, whichever member a client reached.
    pub fn stamp(&mut self, now: i64) {
        match self {
            Command::SubmitRun { now_ms, .. }
            | Command::RerunRun { now_ms, .. }
            | Command::CreateSchedule { now_ms, .. }
            | Command::PauseSchedule { now_ms, .. }
            | Command::DeleteSchedule { now_ms, .. }
            | Command::FireSchedule { now_ms, .. }
            | Command::PinArtifact { now_ms, .. }
            | Command::UnpinArtifact { now_ms, .. }
            | Command::Collect { now_ms, .. }
            | Command::Assign { now_ms, .. }
            | Command::StepStarted { now_ms, .. }
            | Command::StepFinished { now_ms, .. }
            | Command::CancelRun { now_ms, .. }
            | Command::SetWorkerMode { now_ms, .. }
            | Command::WorkerLost { now_ms, .. }
            | Command::TimeOutRun { now_ms, .. }
            | Command::CreateProject { now_ms, .. }
            | Command::SetProjectMember { now_ms, .. }
            | Command::SetAdmin { now_ms, .. }
            | Command::SetGroupMember { now_ms, .. }
            | Command::DeleteGroup { now_ms, .. }
            | Command::RevokeCertificate { now_ms, .. }
            | Command::SetSecret { now_ms, .. }
            | Command::ResealSecret { now_ms, .. }
            | Command::DeleteSecret { now_ms, .. }
            | Command::Audit { now_ms, .. }
            | Command::TrimAudit { now_ms, .. }
            | Command::ImageResolved { now_ms, .. } => *now_ms = now,
            Command::Request(request) => request.command.stamp(now),
            Command::RegisterWorker { worker, now_ms, .. } => {
                worker.registered_ms = now;
                *now_ms = now;
            }
        }
    }

    /// The time the command carries.
    pub fn now_ms(&self) -> i64 {
        match self {
            Command::SubmitRun { now_ms, .. }
            | Command::RerunRun { now_ms, .. }
            | Command::CreateSchedule { now_ms, .. }
            | Command::PauseSchedule { now_ms, .. }
            | Command::DeleteSchedule { now_ms, .. }
            | Command::FireSchedule { now_ms, .. }
            | Command::PinArtifact { now_ms, .. }
            | Command::UnpinArtifact { now_ms, .. }
            | Command::Collect { now_ms, .. }
            | Command::Assign { now_ms, .. }
            | Command::StepStarted { now_ms, .. }
            | Command::StepFinished { now_ms, .. }
            | Command::CancelRun { now_ms, .. }
            | Command::SetWorkerMode { now_ms, .. }
            | Command::WorkerLost { now_ms, .. }
            | Command::TimeOutRun { now_ms, .. }
            | Command::CreateProject { now_ms, .. }
            | Command::SetProjectMember { now_ms, .. }
            | Command::SetAdmin { now_ms, .. }
            | Command::SetGroupMember { now_ms, .. }
            | Command::DeleteGroup { now_ms, .. }
            | Command::RevokeCertificate { now_ms, .. }
            | Command::SetSecret { now_ms, .. }
            | Command::ResealSecret { now_ms, .. }
            | Command::DeleteSecret { now_ms, .. }
            | Command::Audit { now_ms, .. }
            | Command::TrimAudit { now_ms, .. }
            | Command::ImageResolved { now_ms, .. }
            | Command::RegisterWorker { now_ms, .. } => *now_ms,
            Command::Request(request) => request.command.now_ms(),
        }
    }

    /// Whether only the leader makes the command, for its own loops or around a
    /// caller's command (never forwarded by another member).
    pub fn leader_only(&self) -> bool {
        matches!(
            self,
            Command::Assign { .. }
                | Command::FireSchedule { .. }
                | Command::WorkerLost { .. }
                | Command::TimeOutRun { .. }
                | Command::Request(_)
                | Command::TrimAudit { .. }
        )
    }

    /// Whether the command may be proposed again after an attempt whose outcome is
    /// unknown (the leader went silent or changed while it was in flight, so the
    /// first may still be committed): applying it twice leaves the state as
    /// applying it once, and [`State::settle_resend`](super::State::settle_resend)
    /// turns the refusal a second application meets into the first one's answer.
    /// Not so: a submission without a request id (it would start a second run),
    /// and the scheduler's `Assign` (the leader's own, never forwarded; the
    /// scheduler places again on its next pass).
    pub fn safe_to_resend(&self) -> bool {
        match self {
            Command::SubmitRun { request_id, .. } | Command::RerunRun { request_id, .. } => {
                request_id.is_some()
            }
            // A second application would make another version (or record).
            Command::Assign { .. } | Command::SetSecret { .. } | Command::Audit { .. } => false,
            Command::Request(request) => request.command.safe_to_resend(),
            Command::CreateSchedule { .. }
            | Command::PauseSchedule { .. }
            | Command::DeleteSchedule { .. }
            | Command::FireSchedule { .. }
            | Command::PinArtifact { .. }
            | Command::UnpinArtifact { .. }
            | Command::Collect { .. }
            | Command::RegisterWorker { .. }
            | Command::StepStarted { .. }
            | Command::ImageResolved { .. }
            | Command::StepFinished { .. }
            | Command::CancelRun { .. }
            | Command::SetWorkerMode { .. }
            | Command::WorkerLost { .. }
            | Command::TimeOutRun { .. }
            | Command::CreateProject { .. }
            | Command::SetProjectMember { .. }
            | Command::SetAdmin { .. }
            | Command::SetGroupMember { .. }
            | Command::DeleteGroup { .. }
            | Command::RevokeCertificate { .. }
            | Command::ResealSecret { .. }
            | Command::DeleteSecret { .. }
            | Command::TrimAudit { .. } => true,
        }
    }

    /// Whether applying the command may make room for a queued step: end an
    /// attempt (room on a worker, a run's or sweep's `max_parallel`, a project's
    /// quota), or add or reopen a worker. A step that becomes queued is noticed
    /// by the index itself ([`Runs::settle`](super::Runs::settle)).
    pub fn may_free_room(&self) -> bool {
        match self {
            Command::Request(request) => request.command.may_free_room(),
            Command::StepFinished { .. }
            | Command::ImageResolved { .. }
            | Command::CancelRun { .. }
            | Command::TimeOutRun { .. }
            | Command::WorkerLost { .. }
            | Command::RegisterWorker { .. }
            | Command::SetWorkerMode { .. }
            | Command::Collect { .. } => true,
            Command::SubmitRun { .. }
            | Command::RerunRun { .. }
            | Command::Assign { .. }
            | Command::StepStarted { .. }
            | Command::CreateSchedule { .. }
            | Command::PauseSchedule { .. }
            | Command::DeleteSchedule { .. }
            | Command::FireSchedule { .. }
            | Command::PinArtifact { .. }
            | Command::UnpinArtifact { .. }
            | Command::CreateProject { .. }
            | Command::SetProjectMember { .. }
            | Command::SetAdmin { .. }
            | Command::SetGroupMember { .. }
            | Command::DeleteGroup { .. }
            | Command::RevokeCertificate { .. }
            | Command::SetSecret { .. }
            | Command::ResealSecret { .. }
            | Command::DeleteSecret { .. }
            | Command::Audit { .. }
            | Command::TrimAudit { .. } => false,
        }
    }
}
