//! The audit log: who asked for what, when, in which project, and what came of
//! it. It is replicated state: an accepted request is recorded when its entry
//! is applied (the leader wraps a client's command in a [`Request`] that names
//! the caller and what the command is about), so every member holds the same
//! records and a request is recorded exactly once, in the same entry that
//! carries it; a refusal before the log (the caller may not) or a change made
//! outside the state machine (the cluster's membership) is recorded by its own
//! [`Command::Audit`] entry. Records hold names, numbers and words made by
//! [`describe`] from a command's kind and names, never a value the command
//! carries (a secret's sealed bytes, a pipeline's parameters).
//!
//! Records are kept in shared chunks so that a snapshot image copies pointers,
//! at most [`MAX_AUDIT_RECORDS`] of them (the oldest go first), and
//! [`Command::TrimAudit`] (the leader's retention) drops those older than the
//! configured age.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Command, Outcome, State, StateError};
use crate::access::{Action, CertRole};

/// The most records the log keeps, whatever the retention says: the oldest
/// go first.
pub const MAX_AUDIT_RECORDS: usize = 200_000;

/// Records per shared chunk.
const CHUNK: usize = 1024;

/// How many of the latest request ids the log remembers to tell a repeat:
/// far more than the requests of one retry budget.
pub const RECENT_IDS: usize = 10_000;

/// Who made a request: the name and role of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub name: String,
    pub role: CertRole,
}

/// What a request is about, in words, as the member that took it saw the
/// state then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Described {
    pub action: Action,
    /// The project of the thing acted on, if it is in one.
    pub project: Option<String>,
    pub summary: String,
}

/// A caller's command as the leader proposes it: applied like the command
/// alone, and recorded with what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub by: Requester,
    pub about: Described,
    /// An earlier attempt of the same request may have been applied: a refusal
    /// that only says so is recorded as a repeat, not a refusal.
    #[serde(default)]
    pub resent: bool,
    /// The same on every try of one request (a client's retries to other
    /// members, a member's resends): a second application is a repeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub command: Command,
}

/// A record made outside the state machine's own transitions (a refusal, a
/// membership change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNote {
    pub by: Requester,
    pub about: Described,
    pub outcome: AuditOutcome,
    /// The request's id: a note for a request already recorded is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What came of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditOutcome {
    Accepted {
        detail: String,
    },
    Refused {
        reason: String,
    },
    /// A request sent again (a retried submission with the same request id, a
    /// command resent across a leader change) whose first attempt had been
    /// applied: it changed nothing.
    Repeated {
        detail: String,
    },
}

/// One request in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Counts on from 1 across the cluster's life (trimmed records keep theirs).
    pub seq: u64,
    /// The leader's clock when it proposed the entry.
    pub time_ms: i64,
    pub caller: String,
    pub role: CertRole,
    pub project: Option<String>,
    pub action: Action,
    pub summary: String,
    pub outcome: AuditOutcome,
}

/// The records, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    chunks: VecDeque<Arc<Vec<AuditRecord>>>,
    len: usize,
    next_seq: u64,
    /// The latest request ids, oldest first, and the same as a set.
    recent: VecDeque<String>,
    recent_set: std::collections::HashSet<String>,
}

impl AuditLog {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &AuditRecord> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// The time of the oldest record.
    pub fn oldest_ms(&self) -> Option<i64> {
        self.iter().next().map(|record| record.time_ms)
    }

    /// How many records retention has dropped so far (the records numbered
    /// below the oldest kept one).
    pub fn dropped(&self) -> u64 {
        let next = self.next_seq.max(1);
        next - 1 - self.len as u64
    }

    /// Remembers request `id`; whether it was known already.
    fn seen(&mut self, id: &str) -> bool {
        if self.recent_set.contains(id) {
            return true;
        }
        self.recent.push_back(id.to_string());
        self.recent_set.insert(id.to_string());
        if self.recent.len() > RECENT_IDS
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        false
    }

    fn push(&mut self, time_ms: i64, by: Requester, about: Described, outcome: AuditOutcome) {
        self.next_seq = self.next_seq.max(1);
        // Never earlier than the record before it (leaders' clocks differ a
        // little), so that the log is in time order for `--since` and trims.
        let newest = self.iter().next_back().map_or(i64::MIN, |r| r.time_ms);
        let record = AuditRecord {
            seq: self.next_seq,
            time_ms: time_ms.max(newest),
            caller: by.name,
            role: by.role,
            project: about.project,
            action: about.action,
            summary: about.summary,
            outcome,
        };
        self.next_seq += 1;
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => Arc::make_mut(chunk).push(record),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(record);
                self.chunks.push_back(Arc::new(chunk));
            }
        }
        self.len += 1;
        if self.len > MAX_AUDIT_RECORDS {
            self.drop_oldest(self.len - MAX_AUDIT_RECORDS);
        }
    }

    /// Drops the records older than `before_ms` and, beyond them, the oldest
    /// until at most `keep_max` are left. Returns how many went.
    pub fn trim(&mut self, before_ms: i64, keep_max: usize) -> usize {
        let old = self.iter().take_while(|r| r.time_ms < before_ms).count();
        let count = old.max(self.len.saturating_sub(keep_max));
        self.drop_oldest(count);
        count
    }

    fn drop_oldest(&mut self, mut count: usize) {
        while count > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() <= count {
                count -= front.len();
                self.len -= front.len();
                self.chunks.pop_front();
            } else {
                Arc::make_mut(front).drain(..count);
                self.len -= count;
                count = 0;
            }
        }
    }
}

/// Equal when they hold the same records and number the next alike, however
/// they are cut into chunks.
impl PartialEq for AuditLog {
    fn eq(&self, other: &AuditLog) -> bool {
        self.len == other.len
            && self.next_seq == other.next_seq
            && self.recent == other.recent
            && self.iter().eq(other.iter())
    }
}

impl Eq for AuditLog {}

/// The log as a snapshot holds it.
#[derive(Serialize, Deserialize)]
struct AuditData {
    records: Vec<AuditRecord>,
    next_seq: u64,
    #[serde(default)]
    recent_ids: Vec<String>,
}

impl Serialize for AuditLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Records<'a>(&'a AuditLog);
        impl Serialize for Records<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter())
            }
        }
        let mut data = serializer.serialize_struct("AuditData", 3)?;
        data.serialize_field("records", &Records(self))?;
        data.serialize_field("next_seq", &self.next_seq)?;
        data.serialize_field("recent_ids", &self.recent)?;
        data.end()
    }
}

impl<'de> Deserialize<'de> for AuditLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let data = AuditData::deserialize(deserializer)?;
        let len = data.records.len();
        let mut chunks = VecDeque::new();
        let mut records = data.records.into_iter().peekable();
        while records.peek().is_some() {
            chunks.push_back(Arc::new(records.by_ref().take(CHUNK).collect()));
        }
        let recent: VecDeque<String> = data.recent_ids.into();
        let recent_set = recent.iter().cloned().collect();
        Ok(AuditLog {
            chunks,
            len,
            next_seq: data.next_seq,
            recent,
            recent_set,
        })
    }
}

impl State {
    /// Applies a caller's command and records it with what came of it.
    pub(super) fn apply_request(&mut self, request: Request) -> Result<Outcome, StateError> {
        let Request {
            by,
            about,
            resent,
            id,
            command,
        } = request;
        let time_ms = command.now_ms();
        // Only the leader wraps a command, and only once.
        if matches!(
            command,
            Command::Request(_) | Command::Audit { .. } | Command::TrimAudit { .. }
        ) {
            return Err(StateError::InvalidRequest(
                "a request wraps a caller's command, not another request".to_string(),
            ));
        }
        let repeated_id = id.as_deref().is_some_and(|id| self.audit.seen(id));
        let duplicate = repeated_id || self.is_duplicate_submission(&command);
        let copy = resent.then(|| command.clone());
        let answer = self.apply(command);
        let outcome = match (&answer, copy) {
            (Ok(outcome), _) if duplicate => AuditOutcome::Repeated {
                detail: detail(outcome),
            },
            (Ok(outcome), _) => AuditOutcome::Accepted {
                detail: detail(outcome),
            },
            // A second try of a request that was applied: its refusal only
            // says so.
            (Err(refusal), _) if repeated_id => AuditOutcome::Repeated {
                detail: refusal.to_string(),
            },
            (Err(refusal), Some(command)) => {
                match self.settle_resend(&command, Err(refusal.clone())) {
                    Ok(outcome) => AuditOutcome::Repeated {
                        detail: detail(&outcome),
                    },
                    Err(refusal) => AuditOutcome::Refused {
                        reason: refusal.to_string(),
                    },
                }
            }
            (Err(refusal), None) => AuditOutcome::Refused {
                reason: refusal.to_string(),
            },
        };
        self.audit.push(time_ms, by, about, outcome);
        answer
    }

    /// Records a note (a refusal, a membership change), unless its request
    /// was recorded already.
    pub(super) fn record_note(&mut self, note: AuditNote, now_ms: i64) -> Outcome {
        if note.id.as_deref().is_some_and(|id| self.audit.seen(id)) {
            return Outcome::Unchanged;
        }
        self.audit.push(now_ms, note.by, note.about, note.outcome);
        Outcome::Done
    }

    /// A submission whose request id already started a run.
    fn is_duplicate_submission(&self, command: &Command) -> bool {
        match command {
            Command::SubmitRun { request_id, .. } | Command::RerunRun { request_id, .. } => {
                request_id
                    .as_ref()
                    .is_some_and(|id| self.requests.contains_key(id))
            }
            _ => false,
        }
    }
}

/// What an accepted command did, in a few words.
fn detail(outcome: &Outcome) -> String {
    match outcome {
        Outcome::RunSubmitted { run, .. } => format!("run {run}"),
        Outcome::Cancelled { stop } => format!("{} attempts stopped", stop.len()),
        Outcome::WorkerMode(mode) => format!("now {}", mode_name(*mode)),
        Outcome::SecretSet { version } => format!("version {version}"),
        Outcome::Collected { runs, blobs, .. } => {
            format!("{} runs and {} blobs collected", runs.len(), blobs.len())
        }
        Outcome::Revoked { already: true, .. } => "already revoked".to_string(),
        Outcome::Report {
            accepted: false,
            detail,
            ..
        } => format!("ignored: {detail}"),
        _ => String::new(),
    }
}

fn mode_name(mode: super::WorkerMode) -> &'static str {
    match mode {
        super::WorkerMode::Active => "active",
        super::WorkerMode::Cordoned => "cordoned",
        super::WorkerMode::Draining => "draining",
    }
}

/// What `command` is about, in words, given the state it is proposed on: its
/// action, the project of what it acts on, and a summary naming the things
/// (never a value it carries).
pub fn describe(command: &Command, state: &State) -> Described {
    let run_project = |id: &u64| state.runs.get(id).map(|r| r.pipeline.project.clone());
    let artifact_project = |digest: &str| {
        state
            .runs
            .values()
            .find(|run| {
                run.steps
                    .iter()
                    .any(|step| step.outputs.iter().any(|o| o.digest == digest))
            })
            .map(|run| run.pipeline.project.clone())
    };
    let about = |action, project: Option<String>, summary: String| Described {
        action,
        project,
        summary,
    };
    match command {
        Command::SubmitRun { pipeline, .. } => about(
            Action::SubmitRun,
            Some(pipeline.project.clone()),
            format!(
                "submit pipeline \"{}\" ({} steps)",
                pipeline.name,
                pipeline.steps.len()
            ),
        ),
        Command::RerunRun { source, from, .. } => about(
            Action::RerunRun,
            run_project(source),
            match from {
                Some(step) => format!("rerun run {source} from \"{step}\""),
                None => format!("rerun run {source}"),
            },
        ),
        Command::CreateSchedule { schedule, .. } => about(
            Action::CreateSchedule,
            Some(schedule.pipeline.project.clone()),
            format!(
                "create schedule \"{}\" ({}) of pipeline \"{}\"",
                schedule.name, schedule.cron, schedule.pipeline.name
            ),
        ),
        Command::PauseSchedule { name, paused, .. } => about(
            Action::PauseSchedule,
            schedule_project(state, name),
            format!(
                "{} schedule \"{name}\"",
                if *paused { "pause" } else { "resume" }
            ),
        ),
        Command::DeleteSchedule { name, .. } => about(
            Action::DeleteSchedule,
            schedule_project(state, name),
            format!("delete schedule \"{name}\""),
        ),
        Command::FireSchedule { name, tick_ms, .. } => about(
            Action::FireSchedule,
            schedule_project(state, name),
            format!("fire schedule \"{name}\" for tick {tick_ms}"),
        ),
        Command::PinArtifact { tag, digest, .. } => about(
            Action::PinArtifact,
            artifact_project(digest),
            format!("pin {digest} as \"{tag}\""),
        ),
        Command::UnpinArtifact { tag, .. } => about(
            Action::UnpinArtifact,
            state
                .catalog
                .pins
                .get(tag)
                .and_then(|pin| artifact_project(&pin.digest)),
            format!("unpin \"{tag}\""),
        ),
        Command::Collect { keep_last, .. } => about(
            Action::Collect,
            None,
            format!("collect garbage, keeping the last {keep_last} runs of each pipeline"),
        ),
        Command::RegisterWorker { worker, .. } => about(
            Action::RegisterWorker,
            None,
            format!(
                "register worker \"{}\" ({} GPUs)",
                worker.name,
                worker.gpus.len()
            ),
        ),
        Command::Assign { placements, .. } => about(
            Action::Assign,
            None,
            format!("assign {} steps", placements.len()),
        ),
        Command::StepStarted { key, worker, .. } => about(
            Action::StepStarted,
            run_project(&key.run),
            format!(
                "report run {} step \"{}\" attempt {} started on \"{worker}\"",
                key.run, key.step, key.attempt
            ),
        ),
        Command::ImageResolved { key, worker, .. } => about(
            Action::StepStarted,
            run_project(&key.run),
            format!(
                "report run {} step \"{}\" attempt {} resolved its image on \"{worker}\"",
                key.run, key.step, key.attempt
            ),
        ),
        Command::StepFinished { key, worker, .. } => about(
            Action::StepFinished,
            run_project(&key.run),
            format!(
                "report run {} step \"{}\" attempt {} finished on \"{worker}\"",
                key.run, key.step, key.attempt
            ),
        ),
        Command::CancelRun { run, .. } => about(
            Action::CancelRun,
            run_project(run),
            format!("cancel run {run}"),
        ),
        Command::SetWorkerMode { worker, mode, .. } => about(
            Action::SetWorkerMode,
            None,
            format!("set worker \"{worker}\" {}", mode_name(*mode)),
        ),
        Command::WorkerLost { worker, .. } => about(
            Action::WorkerLost,
            None,
            format!("declare worker \"{worker}\" lost"),
        ),
        Command::TimeOutRun { run, .. } => about(
            Action::TimeOutRun,
            run_project(run),
            format!("time out run {run}"),
        ),
        Command::CreateProject { name, owner, .. } => about(
            Action::CreateProject,
            Some(name.clone()),
            format!("create project \"{name}\" owned by \"{owner}\""),
        ),
        Command::SetProjectMember {
            project,
            user,
            role,
            ..
        } => about(
            Action::SetProjectMember,
            Some(project.clone()),
            match role {
                Some(role) => format!("make \"{user}\" {role} of project \"{project}\""),
                None => format!("remove \"{user}\" from project \"{project}\""),
            },
        ),
        Command::SetAdmin { user, admin, .. } => about(
            Action::SetAdmin,
            None,
            if *admin {
                format!("make \"{user}\" an administrator")
            } else {
                format!("remove administrator \"{user}\"")
            },
        ),
        Command::SetGroupMember {
            group,
            user,
            member,
            ..
        } => about(
            Action::SetGroupMember,
            None,
            if *member {
                format!("add \"{user}\" to group \"{group}\"")
            } else {
                format!("remove \"{user}\" from group \"{group}\"")
            },
        ),
        Command::DeleteGroup { group, .. } => about(
            Action::SetGroupMember,
            None,
            format!("delete group \"{group}\" and every role given to it"),
        ),
        Command::RevokeCertificate { target, .. } => about(
            Action::RevokeCertificate,
            None,
            format!("revoke the certificate with {target}"),
        ),
        Command::SetSecret { project, name, .. } => about(
            Action::SetSecret,
            Some(project.clone()),
            format!("set secret \"{name}\" of project \"{project}\""),
        ),
        Command::ResealSecret {
            project,
            name,
            version,
            ..
        } => about(
            Action::ResealSecret,
            Some(project.clone()),
            format!("seal secret \"{name}\" version {version} of project \"{project}\" again"),
        ),
        Command::DeleteSecret { project, name, .. } => about(
            Action::DeleteSecret,
            Some(project.clone()),
            format!("delete secret \"{name}\" of project \"{project}\""),
        ),
        Command::Request(request) => request.about.clone(),
        Command::Audit { .. } => {
            about(Action::RecordAudit, None, "write the audit log".to_string())
        }
        Command::TrimAudit { .. } => {
            about(Action::TrimAudit, None, "trim the audit log".to_string())
        }
    }
}

fn schedule_project(state: &State, name: &str) -> Option<String> {
    state
        .catalog
        .schedules
        .get(name)
        .map(|schedule| schedule.pipeline.project.clone())
}

#[cfg(test)]
mod tests;
