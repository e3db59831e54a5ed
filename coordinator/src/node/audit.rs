//! The audit log as the node writes it. A client's command (and a worker's
//! registration) is wrapped by the leader in a `Request` naming the caller, so
//! the state machine records it when it applies the entry; what a member
//! refuses before proposing anything, and membership changes (Raft
//! configuration changes, outside the state machine), are recorded by an
//! `Audit` entry this member proposes under its own certificate.

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

impl Node {
    /// What `command` is about, as this member's state says.
    pub fn describe(&self, command: &Command) -> Described {
        self.read(|state| describe(command, state))
    }

    /// Records `outcome` of `caller`'s request in the audit log (a refusal
    /// before proposing, a membership change). A record that cannot be written
    /// (no leader in time) is logged here instead; the caller's answer does not
    /// wait on it longer than a proposal's budget.
    pub async fn record(&self, caller: &Identity, about: Described, outcome: AuditOutcome) {
        let note = AuditNote {
            by: requester(caller),
            about,
            outcome,
        };
        let summary = note.about.summary.clone();
        let command = Command::Audit {
            note: Box::new(note),
            now_ms: 0,
        };
        // This member's own record: nothing to authorize here (the leader
        // checks that a coordinator forwards it).
        let proposal = self.propose_authorized(&self.identity, command, None, false);
        if let Err(error) = proposal.await {
            tracing::warn!(caller = %caller, %summary, %error, "could not write the audit log");
        }
    }

    /// Records that `caller` was refused `about` for `reason`, and gives the
    /// reason back.
    pub async fn refused(&self, caller: &Identity, about: Described, reason: String) -> String {
        if caller.role != Role::Coordinator {
            let outcome = AuditOutcome::Refused {
                reason: reason.clone(),
            };
            self.record(caller, about, outcome).await;
        }
        reason
    }
}
