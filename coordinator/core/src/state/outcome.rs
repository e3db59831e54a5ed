//! What applying a command answers: an [`Outcome`] when it was accepted (a
//! refused worker report is an outcome too), a [`StateError`] when the command
//! itself cannot apply.

use serde::{Deserialize, Serialize};

use super::{AttemptKey, RevocationTarget, RunId, WorkerMode};

/// The result of applying a command that was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A run was submitted (or a resubmission named it); `assigned`: its first
    /// attempts placed with the submission, to be pushed to their workers.
    RunSubmitted {
        run: RunId,
        assigned: Vec<(AttemptKey, String)>,
    },
    /// Attempts that were placed and must now be pushed to their workers.
    Assigned(Vec<(AttemptKey, String)>),
    /// A worker registered; these attempts, still assigned to it but not started,
    /// must be pushed to it again.
    Registered { resend: Vec<AttemptKey> },
    /// A worker report: `accepted` is false for a stale or fenced report.
    /// `assigned`: the dependents of a finished step placed with its report,
    /// to be pushed to their workers.
    Report {
        accepted: bool,
        detail: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        assigned: Vec<(AttemptKey, String)>,
    },
    /// The answer to a worker's resolved image: run the attempt, or stop it
    /// (`reason` says why: its step took a cached result, waits for an
    /// identical step, or the report was fenced).
    ImageChecked { run: bool, reason: String },
    /// A run was cancelled (or timed out); these attempts must be stopped on their
    /// workers.
    Cancelled { stop: Vec<(AttemptKey, String)> },
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
    /// A schedule, pin or secret was created, changed or deleted.
    Done,
    /// A secret was set; its new version.
    SecretSet { version: u64 },
    /// `ferry gc` at `at_ms`: these runs' logs and these blobs are to be
    /// deleted on every member (a blob written since `at_ms` minus a grace period,
    /// or referenced again by then, is kept).
    Collected {
        runs: Vec<RunId>,
        blobs: Vec<(String, u64)>,
        at_ms: i64,
        grace_ms: u64,
    },
    /// A certificate serial or name is on the deny list; `already`: it was
    /// before this command.
    Revoked {
        target: RevocationTarget,
        already: bool,
    },
}

impl Outcome {
    /// A worker report taken, with nothing placed.
    pub fn report_accepted() -> Outcome {
        Outcome::Report {
            accepted: true,
            detail: String::new(),
            assigned: Vec::new(),
        }
    }

    /// A worker report refused (stale or fenced), and why.
    pub fn report_refused(detail: String) -> Outcome {
        Outcome::Report {
            accepted: false,
            detail,
            assigned: Vec::new(),
        }
    }

    /// A run submitted (or named again by a resubmission) with nothing placed.
    pub fn submitted(run: RunId) -> Outcome {
        Outcome::RunSubmitted {
            run,
            assigned: Vec::new(),
        }
    }
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
    #[error(
        "a project named \"{0}\" already exists (\"default\" always does); choose another name"
    )]
    ProjectExists(String),
    #[error(
        "there is no project named \"{0}\"; an administrator creates it with 'ferry projects create {0}'"
    )]
    ProjectNotFound(String),
    #[error(
        "\"{user}\" is the last owner of project \"{project}\"; make another member owner first"
    )]
    LastProjectOwner { project: String, user: String },
    #[error("\"{user}\" is not a member of project \"{project}\"")]
    NotAProjectMember { project: String, user: String },
    #[error("\"{user}\" is not in group \"{group}\" (see `ferry groups list`)")]
    NotAGroupMember { group: String, user: String },
    #[error("\"{0}\" is not an administrator added by 'ferry admins add'")]
    NotAnAdmin(String),
    #[error("refused: {0}")]
    InvalidRequest(String),
    #[error(
        "there is no group \"{0}\"; an administrator makes it with 'ferry groups add GROUP USER'"
    )]
    GroupNotFound(String),
    #[error("cannot revoke: {0}")]
    InvalidRevocation(String),
    #[error(
        "the certificate deny list is full ({0} entries); revoke by name instead of by serial, \
         or start a new cluster CA"
    )]
    TooManyRevocations(usize),
    #[error("project \"{project}\" has no secret named \"{name}\" (see `ferry secrets list`)")]
    SecretNotFound { project: String, name: String },
}
