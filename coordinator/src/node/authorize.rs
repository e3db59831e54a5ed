//! Who may propose which command: one table, role by command, checked on the
//! member that received the call and again on the leader for a forwarded command
//! (on the original caller, not on the forwarding coordinator).
//!
//! A pure function of the caller's identity and the command: unit-tested here
//! without a network. Membership changes are decided beside the table
//! ([`authorize_membership`]): administrators only.

use ferry_common::pki::{Identity, Role};

use crate::state::Command;

/// Who may propose a kind of command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// A client certificate whose name is the command's owner (the submitter of a
    /// run, the owner of a schedule).
    OwningClient,
    /// Any client certificate.
    AnyClient,
    /// The worker certificate whose name the command carries.
    NamedWorker,
    /// A coordinator certificate: the leader's own loops.
    Coordinator,
}

/// The kinds of command, without their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    SubmitRun,
    RerunRun,
    CreateSchedule,
    PauseSchedule,
    DeleteSchedule,
    PinArtifact,
    UnpinArtifact,
    Collect,
    CancelRun,
    SetWorkerMode,
    RegisterWorker,
    StepStarted,
    StepFinished,
    FireSchedule,
    Assign,
    WorkerLost,
    TimeOutRun,
    SetSecret,
    ResealSecret,
    DeleteSecret,
}

/// One row of the table: who may propose a kind of command, and what it does in
/// words (for the refusal).
pub struct Rule {
    pub kind: CommandKind,
    pub allowed: Allowed,
    pub action: &'static str,
}

/// The whole table: every kind of command has exactly one row (tested).
pub const RULES: &[Rule] = &[
    rule(CommandKind::SubmitRun, Allowed::OwningClient, "submit runs"),
    rule(CommandKind::RerunRun, Allowed::OwningClient, "start runs"),
    rule(
        CommandKind::CreateSchedule,
        Allowed::OwningClient,
        "create schedules",
    ),
    rule(
        CommandKind::PauseSchedule,
        Allowed::AnyClient,
        "pause or resume schedules",
    ),
    rule(
        CommandKind::DeleteSchedule,
        Allowed::AnyClient,
        "delete schedules",
    ),
    rule(
        CommandKind::PinArtifact,
        Allowed::AnyClient,
        "pin artifacts",
    ),
    rule(
        CommandKind::UnpinArtifact,
        Allowed::AnyClient,
        "unpin artifacts",
    ),
    rule(CommandKind::Collect, Allowed::AnyClient, "collect garbage"),
    rule(CommandKind::CancelRun, Allowed::AnyClient, "cancel runs"),
    rule(
        CommandKind::SetWorkerMode,
        Allowed::AnyClient,
        "cordon or drain workers",
    ),
    rule(
        CommandKind::RegisterWorker,
        Allowed::NamedWorker,
        "register workers",
    ),
    rule(
        CommandKind::StepStarted,
        Allowed::NamedWorker,
        "report steps",
    ),
    rule(
        CommandKind::StepFinished,
        Allowed::NamedWorker,
        "report steps",
    ),
    rule(
        CommandKind::FireSchedule,
        Allowed::Coordinator,
        "fire schedules",
    ),
    rule(CommandKind::Assign, Allowed::Coordinator, "assign work"),
    rule(
        CommandKind::WorkerLost,
        Allowed::Coordinator,
        "declare workers lost",
    ),
    rule(
        CommandKind::TimeOutRun,
        Allowed::Coordinator,
        "time out runs",
    ),
    // Secrets: like the other client commands of a project; `set` speaks for
    // its caller (recorded as who set it).
    rule(CommandKind::SetSecret, Allowed::OwningClient, "set secrets"),
    rule(
        CommandKind::ResealSecret,
        Allowed::AnyClient,
        "seal secrets again",
    ),
    rule(
        CommandKind::DeleteSecret,
        Allowed::AnyClient,
        "delete secrets",
    ),
];

const fn rule(kind: CommandKind, allowed: Allowed, action: &'static str) -> Rule {
    Rule {
        kind,
        allowed,
        action,
    }
}

/// A command's kind and the name it speaks for (its owner or its worker).
fn classify(command: &Command) -> (CommandKind, Option<&str>) {
    match command {
        Command::SubmitRun { submitter, .. } => (CommandKind::SubmitRun, Some(submitter)),
        Command::RerunRun { submitter, .. } => (CommandKind::RerunRun, Some(submitter)),
        Command::CreateSchedule { schedule, .. } => {
            (CommandKind::CreateSchedule, Some(&schedule.owner))
        }
        Command::PauseSchedule { .. } => (CommandKind::PauseSchedule, None),
        Command::DeleteSchedule { .. } => (CommandKind::DeleteSchedule, None),
        Command::PinArtifact { .. } => (CommandKind::PinArtifact, None),
        Command::UnpinArtifact { .. } => (CommandKind::UnpinArtifact, None),
        Command::Collect { .. } => (CommandKind::Collect, None),
        Command::CancelRun { .. } => (CommandKind::CancelRun, None),
        Command::SetWorkerMode { .. } => (CommandKind::SetWorkerMode, None),
        Command::RegisterWorker { worker, .. } => (CommandKind::RegisterWorker, Some(&worker.name)),
        Command::StepStarted { worker, .. } => (CommandKind::StepStarted, Some(worker)),
        Command::StepFinished { worker, .. } => (CommandKind::StepFinished, Some(worker)),
        Command::FireSchedule { .. } => (CommandKind::FireSchedule, None),
        Command::Assign { .. } => (CommandKind::Assign, None),
        Command::WorkerLost { .. } => (CommandKind::WorkerLost, None),
        Command::TimeOutRun { .. } => (CommandKind::TimeOutRun, None),
        Command::SetSecret { set_by, .. } => (CommandKind::SetSecret, Some(set_by)),
        Command::ResealSecret { .. } => (CommandKind::ResealSecret, None),
        Command::DeleteSecret { .. } => (CommandKind::DeleteSecret, None),
    }
}

/// The row of a kind of command.
pub fn rule_of(kind: CommandKind) -> &'static Rule {
    RULES
        .iter()
        .find(|rule| rule.kind == kind)
        .expect("every kind of command has a row (tested)")
}

/// Decides whether `caller` may propose `command`; a refusal says who may.
pub fn authorize(caller: &Identity, command: &Command) -> Result<(), String> {
    let (kind, subject) = classify(command);
    let rule = rule_of(kind);
    let subject = subject.unwrap_or_default();
    let allowed = match rule.allowed {
        Allowed::OwningClient => caller.role == Role::Client && caller.name == subject,
        Allowed::AnyClient => caller.role == Role::Client,
        Allowed::NamedWorker => caller.role == Role::Worker && caller.name == subject,
        Allowed::Coordinator => caller.role == Role::Coordinator,
    };
    if allowed {
        return Ok(());
    }
    Err(match rule.allowed {
        Allowed::OwningClient if caller.role == Role::Client => format!(
            "{caller} may not {} for \"{subject}\" (only under its own name)",
            rule.action
        ),
        Allowed::OwningClient | Allowed::AnyClient => format!(
            "{caller} may not {} (client certificates only)",
            rule.action
        ),
        Allowed::NamedWorker => format!("{caller} may not report for worker \"{subject}\""),
        Allowed::Coordinator => format!("{caller} may not {} (the leader only)", rule.action),
    })
}

/// Decides whether `caller` may change the cluster's membership (add, promote or
/// remove a member): a client certificate whose name is among `admins` (the
/// `admins` of coordinator.toml). Not a command of the table above: a membership
/// change is a Raft configuration change, proposed on the leader only. A refusal
/// says what is needed.
pub fn authorize_membership(
    caller: &Identity,
    admins: &std::collections::BTreeSet<String>,
) -> Result<(), String> {
    if caller.role == Role::Client && admins.contains(&caller.name) {
        return Ok(());
    }
    let needed = "changing the cluster's membership needs an administrator: a client \
                  certificate whose name is listed in `admins` in coordinator.toml";
    Err(if admins.is_empty() {
        format!(
            "{caller} may not change the cluster's membership: no administrators are \
             configured (`admins` in coordinator.toml is empty); {needed}"
        )
    } else if caller.role != Role::Client {
        format!(
            "{caller} may not change the cluster's membership (client certificates only); {needed}"
        )
    } else {
        format!(
            "{caller} may not change the cluster's membership: it is not an administrator; {needed}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_clients_may_change_the_membership() {
        let admins: std::collections::BTreeSet<String> = ["alice".to_string()].into();
        assert!(authorize_membership(&identity(Role::Client, "alice"), &admins).is_ok());
        let bob = authorize_membership(&identity(Role::Client, "bob"), &admins).unwrap_err();
        assert!(
            bob.starts_with(
                "client \"bob\" may not change the cluster's membership: it is not an administrator"
            ) && bob.contains("listed in `admins` in coordinator.toml"),
            "{bob}"
        );
        // A worker or a coordinator named like an administrator is not one.
        let worker = authorize_membership(&identity(Role::Worker, "alice"), &admins).unwrap_err();
        assert!(worker.contains("(client certificates only)"), "{worker}");
        assert!(authorize_membership(&identity(Role::Coordinator, "alice"), &admins).is_err());
        let nobody = std::collections::BTreeSet::new();
        let refusal = authorize_membership(&identity(Role::Client, "alice"), &nobody).unwrap_err();
        assert!(
            refusal.contains("no administrators are configured"),
            "{refusal}"
        );
    }

    fn identity(role: Role, name: &str) -> Identity {
        Identity {
            role,
            name: name.to_string(),
        }
    }

    const ALL_KINDS: [CommandKind; 20] = [
        CommandKind::SubmitRun,
        CommandKind::RerunRun,
        CommandKind::CreateSchedule,
        CommandKind::PauseSchedule,
        CommandKind::DeleteSchedule,
        CommandKind::PinArtifact,
        CommandKind::UnpinArtifact,
        CommandKind::Collect,
        CommandKind::CancelRun,
        CommandKind::SetWorkerMode,
        CommandKind::RegisterWorker,
        CommandKind::StepStarted,
        CommandKind::StepFinished,
        CommandKind::FireSchedule,
        CommandKind::Assign,
        CommandKind::WorkerLost,
        CommandKind::TimeOutRun,
        CommandKind::SetSecret,
        CommandKind::ResealSecret,
        CommandKind::DeleteSecret,
    ];

    #[test]
    fn every_kind_has_exactly_one_row() {
        assert_eq!(RULES.len(), ALL_KINDS.len());
        for kind in ALL_KINDS {
            assert_eq!(
                RULES.iter().filter(|rule| rule.kind == kind).count(),
                1,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn who_may_do_what() {
        let alice = identity(Role::Client, "alice");
        let bob = identity(Role::Client, "bob");
        let worker = identity(Role::Worker, "w1");
        let other_worker = identity(Role::Worker, "w2");
        let coordinator = identity(Role::Coordinator, "2");
        let cancel = Command::CancelRun { run: 1, now_ms: 0 };
        assert!(authorize(&alice, &cancel).is_ok());
        assert!(authorize(&bob, &cancel).is_ok());
        let refusal = authorize(&worker, &cancel).unwrap_err();
        assert!(refusal.contains("may not cancel runs (client certificates only)"));
        assert!(authorize(&coordinator, &cancel).is_err());

        let lost = Command::WorkerLost {
            worker: "w1".to_string(),
            session: "s".to_string(),
            reason: String::new(),
            now_ms: 0,
        };
        assert!(authorize(&coordinator, &lost).is_ok());
        assert!(
            authorize(&alice, &lost)
                .unwrap_err()
                .contains("may not declare workers lost (the leader only)")
        );
        assert!(authorize(&worker, &lost).is_err());

        let pin = Command::UnpinArtifact {
            tag: "best".to_string(),
            now_ms: 0,
        };
        assert!(authorize(&alice, &pin).is_ok());
        assert!(authorize(&worker, &pin).is_err());
        assert!(authorize(&other_worker, &pin).is_err());

        let rerun = Command::RerunRun {
            source: 1,
            from: None,
            submitter: "alice".to_string(),
            request_id: None,
            now_ms: 0,
        };
        assert!(authorize(&alice, &rerun).is_ok());
        assert!(
            authorize(&bob, &rerun)
                .unwrap_err()
                .contains("may not start runs for \"alice\" (only under its own name)")
        );
        assert!(authorize(&worker, &rerun).is_err());
    }
}
