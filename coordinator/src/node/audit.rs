//! The audit log as the node writes it. A client's command (and a worker's
//! registration) is wrapped by the leader in a `Request` naming the caller, so
//! the state machine records it when it applies the entry; what a member
//! refuses before proposing anything, and membership changes (Raft
//! configuration changes, outside the state machine), are recorded by an
//! `Audit` entry this member proposes under its own certificate.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_common::pki::{Identity, Role};

use super::{Node, authorize};
use crate::state::{AuditNote, AuditOutcome, Command, Described, Requester, describe};

/// The name the audit log gives a certificate.
pub fn requester(identity: &Identity) -> Requester {
    Requester {
        name: identity.name.clone(),
        role: authorize::cert_role(identity.role),
    }
}

/// Who the audit log names for `caller`'s `command`, if it is recorded: every
/// command a client asks for, and a worker's registration. A worker's step
/// reports are the run's own history and the leader's loops are not requests.
pub fn audited(caller: &Identity, command: &Command) -> Option<Requester> {
    let recorded = match caller.role {
        Role::Client => true,
        Role::Worker => matches!(command, Command::RegisterWorker { .. }),
        Role::Coordinator => false,
    };
    recorded.then(|| requester(caller))
}

/// How many refusals of one caller a member records one by one per minute;
/// beyond that it counts them and says how many in the caller's next record,
/// so that a flood of refused calls can neither fill the log (and push older
/// records out) nor go unseen.
pub const REFUSALS_PER_MINUTE: u32 = 30;

/// Per caller: when its current minute began, how many of its refusals were
/// recorded in it, and how many went unrecorded since its last record.
#[derive(Default)]
pub struct RefusalLimiter {
    callers: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32, u64)>>,
}

impl RefusalLimiter {
    /// `Some(n)`: record this refusal, saying that `n` before it were not;
    /// `None`: count it only.
    fn admit(&self, caller: &str, now: std::time::Instant) -> Option<u64> {
        let mut callers = ferry_common::locks::lock(&self.callers, "refusal limiter");
        // Forget callers quiet for a minute, so the map stays small.
        if callers.len() > 1024 {
            callers.retain(|_, (start, _, skipped)| {
                *skipped > 0 || now.duration_since(*start).as_secs() < 60
            });
        }
        let entry = callers.entry(caller.to_string()).or_insert((now, 0, 0));
        if now.duration_since(entry.0).as_secs() >= 60 {
            entry.0 = now;
            entry.1 = 0;
        }
        if entry.1 >= REFUSALS_PER_MINUTE {
            entry.2 += 1;
            return None;
        }
        entry.1 += 1;
        Some(std::mem::take(&mut entry.2))
    }
}

/// Counts the request ids this process made.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// When this process started (ns since the epoch): ids of a restarted member
/// differ from those it made before.
static STARTED: LazyLock<u128> = LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
});

impl Node {
    /// A request id for a request that came without one, unique in the
    /// cluster: this member, this process, a count.
    pub fn new_request_id(&self) -> String {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        format!("member-{}/{:x}-{n}", self.id, *STARTED)
    }

    /// What `command` is about, as this member's state says.
    pub fn describe(&self, command: &Command) -> Described {
        self.read(|state| describe(command, state))
    }

    /// Records `outcome` of `caller`'s request in the audit log (a refusal
    /// before proposing, a membership change). A record that cannot be written
    /// (no leader in time) is logged here instead; the caller's answer does not
    /// wait on it longer than a proposal's budget.
    pub async fn record(&self, caller: &Identity, about: Described, outcome: AuditOutcome) {
        self.record_with_id(caller, about, outcome, None).await
    }

    /// [`Node::record`] for request `id`: a note for an id already recorded is
    /// dropped when applied (a refusal on a follower and on the leader).
    async fn record_with_id(
        &self,
        caller: &Identity,
        about: Described,
        outcome: AuditOutcome,
        id: Option<String>,
    ) {
        let note = AuditNote {
            by: requester(caller),
            about,
            outcome,
            id,
        };
        let summary = note.about.summary.clone();
        let command = Command::Audit {
            note: Box::new(note),
            now_ms: 0,
        };
        // This member's own record: nothing to authorize here (the leader
        // checks that a coordinator forwards it).
        let own_id = self.new_request_id();
        let proposal = self.propose_authorized(&self.identity, command, None, false, own_id);
        if let Err(error) = proposal.await {
            tracing::warn!(caller = %caller, %summary, %error, "could not write the audit log");
        }
    }

    /// Records that `caller` was refused `about` for `reason`, and gives the
    /// reason back.
    pub async fn refused(&self, caller: &Identity, about: Described, reason: String) -> String {
        let id = crate::api::request_id::current().map(|id| format!("{}/{id}", caller.uri()));
        self.refused_as(caller, about, reason, id).await
    }

    /// [`Node::refused`] for request `id`.
    pub(super) async fn refused_as(
        &self,
        caller: &Identity,
        about: Described,
        reason: String,
        id: Option<String>,
    ) -> String {
        if caller.role == Role::Coordinator {
            return reason;
        }
        let Some(skipped) = self
            .refusals
            .admit(&caller.uri(), std::time::Instant::now())
        else {
            tracing::debug!(caller = %caller, %reason, "refusal counted, not recorded (too many this minute)");
            return reason;
        };
        let recorded = if skipped == 0 {
            reason.clone()
        } else {
            format!(
                "{reason} (and {skipped} earlier refusals of this caller on member {} were \
                 not recorded one by one: more than {REFUSALS_PER_MINUTE} a minute)",
                self.id
            )
        };
        let outcome = AuditOutcome::Refused { reason: recorded };
        self.record_with_id(caller, about, outcome, id).await;
        reason
    }
}
