//! Who may propose which command and read what: the caller's certificate and
//! the thing a command or read acts on, related through the replicated policy
//! (`state::policy`) and the configured administrators, then decided by the
//! one table, [`crate::access`]. Checked on the member that received the call
//! and again on the leader for a forwarded command (on the original caller, not
//! on the forwarding coordinator); the control service's reads and listings and
//! the agent service's blob downloads ask here too.
//!
//! Pure functions of the identity, the command and the state: unit-tested here
//! without a network.

use std::collections::BTreeSet;

use ferry_common::pki::{Identity, Role};

use crate::access::{Action, CertRole, Denied, Relation, decide};
use crate::state::{Caller, Command, Run, State};

/// The table's name for a certificate's role.
pub fn cert_role(role: Role) -> CertRole {
    match role {
        Role::Client => CertRole::Client,
        Role::Worker => CertRole::Worker,
        Role::Coordinator => CertRole::Coordinator,
    }
}

/// The caller as the policy sees it.
pub fn caller<'a>(identity: &'a Identity, admins: &'a BTreeSet<String>) -> Caller<'a> {
    Caller {
        cert: cert_role(identity.role),
        name: &identity.name,
        configured_admins: admins,
    }
}

/// A refusal in words: who asked, what for, and the role it needs.
pub fn refusal(identity: &Identity, denied: &Denied, subject: &str) -> String {
    let subject = if subject.is_empty() {
        String::new()
    } else {
        format!(" ({subject})")
    };
    format!(
        "{identity} may not {}{subject}: that needs {}",
        denied.what, denied.needed
    )
}

/// Decides whether `identity` may propose `command` given `state`; a refusal
/// names the role needed.
pub fn authorize(
    identity: &Identity,
    command: &Command,
    state: &State,
    admins: &BTreeSet<String>,
) -> Result<(), String> {
    let caller = caller(identity, admins);
    let policy = &state.policy;
    let anything = || caller.relation(policy, "", "");
    let named = |worker: &str| Relation {
        named_worker: identity.role == Role::Worker && identity.name == worker,
        ..Relation::stranger(caller.cert)
    };
    let run_relation = |id| {
        state
            .runs
            .get(id)
            .map_or_else(anything, |run| caller.to_run(policy, run))
    };
    let creation = |project: &str, owner: &str| -> Result<Relation, String> {
        let relation = Relation {
            as_self: owner == identity.name,
            ..caller.relation(policy, project, owner)
        };
        // An administrator may use a project nobody created (its quotas may
        // be configured); anyone else only one it is a member of.
        if !relation.admin && !policy.project_exists(project) && relation.cert == CertRole::Client {
            return Err(format!(
                "{identity} may not use project \"{project}\": it does not exist; an \
                 administrator creates it with 'ferry projects create {project}' and adds \
                 members with 'ferry projects members add'"
            ));
        }
        Ok(relation)
    };
    let (action, relation, subject) = match command {
        Command::SubmitRun {
            pipeline,
            submitter,
            ..
        } => (
            Action::SubmitRun,
            creation(&pipeline.project, submitter)?,
            format!("in project \"{}\"", pipeline.project),
        ),
        Command::RerunRun {
            source, submitter, ..
        } => {
            let Some(run) = state.runs.get(source) else {
                // Whether it exists is the state machine's answer.
                let relation = creation("", submitter).unwrap_or_else(|_| anything());
                return check(identity, Action::RerunRun, &relation, "");
            };
            let subject = format!("run {source}");
            check(
                identity,
                Action::ReadRun,
                &caller.to_run(policy, run),
                &subject,
            )?;
            (
                Action::RerunRun,
                creation(&run.pipeline.project, submitter)?,
                format!("from {subject} in project \"{}\"", run.pipeline.project),
            )
        }
        Command::CreateSchedule { schedule, .. } => (
            Action::CreateSchedule,
            creation(&schedule.pipeline.project, &schedule.owner)?,
            format!("in project \"{}\"", schedule.pipeline.project),
        ),
        Command::PauseSchedule { name, .. } | Command::DeleteSchedule { name, .. } => {
            let action = if matches!(command, Command::PauseSchedule { .. }) {
                Action::PauseSchedule
            } else {
                Action::DeleteSchedule
            };
            let relation = state
                .catalog
                .schedules
                .get(name)
                .map_or_else(anything, |schedule| {
                    caller.relation(policy, &schedule.pipeline.project, &schedule.owner)
                });
            (action, relation, format!("schedule \"{name}\""))
        }
        Command::PinArtifact { digest, owner, .. } => (
            Action::PinArtifact,
            Relation {
                as_self: *owner == identity.name,
                ..caller.to_artifact(state, digest, None)
            },
            format!("artifact {digest}"),
        ),
        Command::UnpinArtifact { tag, .. } => {
            let relation = state.catalog.pins.get(tag).map_or_else(anything, |pin| {
                caller.to_artifact(state, &pin.digest, Some(&pin.owner))
            });
            (Action::UnpinArtifact, relation, format!("pin \"{tag}\""))
        }
        Command::Collect { .. } => (Action::Collect, anything(), String::new()),
        Command::CancelRun { run, .. } => {
            (Action::CancelRun, run_relation(run), format!("run {run}"))
        }
        Command::SetWorkerMode { worker, .. } => (
            Action::SetWorkerMode,
            anything(),
            format!("worker \"{worker}\""),
        ),
        Command::CreateProject { name, .. } => (
            Action::CreateProject,
            anything(),
            format!("project \"{name}\""),
        ),
        Command::SetProjectMember { project, .. } => (
            Action::SetProjectMember,
            caller.relation(policy, project, ""),
            format!("project \"{project}\""),
        ),
        Command::SetAdmin { user, .. } => {
            (Action::SetAdmin, anything(), format!("user \"{user}\""))
        }
        Command::SetGroupMember { group, .. } | Command::DeleteGroup { group, .. } => (
            Action::SetGroupMember,
            anything(),
            format!("group \"{group}\""),
        ),
        Command::SetSecret {
            project,
            name,
            set_by,
            ..
        } => {
            // A new version of an existing secret: as for its owner; a new
            // secret: created under the caller's name in a project it may use
            // (its editors', or in `default` anyone's own: the secret is not
            // the caller's before it exists, so setting it does not make the
            // caller its owner in a project).
            let relation = match state.secret(project, name) {
                Some(secret) => caller.relation(policy, project, &secret.set_by),
                None => {
                    let relation = creation(project, set_by)?;
                    Relation {
                        as_self: set_by == &identity.name,
                        owns: relation.owns && relation.open_project,
                        ..relation
                    }
                }
            };
            (
                Action::SetSecret,
                relation,
                format!("secret \"{name}\" of project \"{project}\""),
            )
        }
        Command::DeleteSecret { project, name, .. } => {
            let owner = state
                .secret(project, name)
                .map_or("", |s| s.set_by.as_str());
            (
                Action::DeleteSecret,
                caller.relation(policy, project, owner),
                format!("secret \"{name}\" of project \"{project}\""),
            )
        }
        Command::ResealSecret { project, name, .. } => (
            Action::ResealSecret,
            anything(),
            format!("secret \"{name}\" of project \"{project}\""),
        ),
        Command::RevokeCertificate { target, .. } => (
            Action::RevokeCertificate,
            anything(),
            format!("certificate {target}"),
        ),
        Command::RegisterWorker { worker, .. } => (
            Action::RegisterWorker,
            named(&worker.name),
            format!("worker \"{}\"", worker.name),
        ),
        Command::StepStarted { worker, .. } | Command::ImageResolved { worker, .. } => (
            Action::StepStarted,
            named(worker),
            format!("worker \"{worker}\""),
        ),
        Command::StepFinished { worker, .. } => (
            Action::StepFinished,
            named(worker),
            format!("worker \"{worker}\""),
        ),
        Command::FireSchedule { .. } => (Action::FireSchedule, anything(), String::new()),
        Command::Assign { .. } => (Action::Assign, anything(), String::new()),
        Command::WorkerLost { .. } => (Action::WorkerLost, anything(), String::new()),
        Command::TimeOutRun { .. } => (Action::TimeOutRun, anything(), String::new()),
        // The leader wraps a caller's command itself; one that arrives wrapped
        // is a member's own record.
        Command::Request(_) | Command::Audit { .. } => {
            (Action::RecordAudit, anything(), String::new())
        }
        Command::TrimAudit { .. } => (Action::TrimAudit, anything(), String::new()),
    };
    check(identity, action, &relation, &subject)
}

fn check(
    identity: &Identity,
    action: Action,
    relation: &Relation,
    subject: &str,
) -> Result<(), String> {
    decide(action, relation).map_err(|denied| refusal(identity, &denied, subject))
}

/// Whether `identity` may read `run` (status, logs, artifacts, metrics,
/// lineage); listings keep only the runs this allows.
pub fn may_read_run(
    identity: &Identity,
    run: &Run,
    state: &State,
    admins: &BTreeSet<String>,
) -> Result<(), String> {
    let relation = caller(identity, admins).to_run(&state.policy, run);
    check(
        identity,
        Action::ReadRun,
        &relation,
        &format!("run {}", run.id),
    )
}

/// Whether `identity` may use secret `name` of `project` in a run (an editor of
/// the project, the one who set it, or an administrator).
pub fn may_use_secret(
    identity: &Identity,
    project: &str,
    name: &str,
    state: &State,
    admins: &BTreeSet<String>,
) -> Result<(), String> {
    let owner = state
        .secret(project, name)
        .map_or("", |s| s.set_by.as_str());
    let relation = caller(identity, admins).relation(&state.policy, project, owner);
    check(
        identity,
        Action::UseSecret,
        &relation,
        &format!("secret \"{name}\" of project \"{project}\""),
    )
}

/// Whether `identity` may see a secret (never its value) in a listing.
pub fn may_read_secret(
    identity: &Identity,
    secret: &crate::state::Secret,
    state: &State,
    admins: &BTreeSet<String>,
) -> bool {
    let relation =
        caller(identity, admins).relation(&state.policy, &secret.project, &secret.set_by);
    decide(Action::ReadSecret, &relation).is_ok()
}

/// Whether `identity` may see schedule `name` in a listing.
pub fn may_read_schedule(
    identity: &Identity,
    schedule: &crate::state::Schedule,
    state: &State,
    admins: &BTreeSet<String>,
) -> bool {
    let relation = caller(identity, admins).relation(
        &state.policy,
        &schedule.pipeline.project,
        &schedule.owner,
    );
    decide(Action::ReadSchedule, &relation).is_ok()
}

/// Whether `identity` may see a pin in a listing.
pub fn may_read_pin(
    identity: &Identity,
    pin: &crate::state::Pin,
    state: &State,
    admins: &BTreeSet<String>,
) -> bool {
    let relation = caller(identity, admins).to_artifact(state, &pin.digest, Some(&pin.owner));
    decide(Action::ReadPin, &relation).is_ok()
}

/// Whether `identity` may read the audit records of `project` (none: the
/// records that concern no project): the project's owners and administrators.
pub fn may_read_audit(
    identity: &Identity,
    project: Option<&str>,
    state: &State,
    admins: &BTreeSet<String>,
) -> Result<(), String> {
    let relation = caller(identity, admins).relation(&state.policy, project.unwrap_or(""), "");
    let subject = project.map_or_else(
        || "records of no project".to_string(),
        |project| format!("records of project \"{project}\""),
    );
    check(identity, Action::ReadAudit, &relation, &subject)
}

/// Whether a worker certificate may download blob `digest`: only for an
/// attempt assigned to it.
pub fn may_fetch_blob(identity: &Identity, digest: &str, state: &State) -> Result<(), String> {
    let relation = Relation {
        named_worker: identity.role == Role::Worker
            && state.worker_needs_blob(&identity.name, digest),
        ..Relation::stranger(cert_role(identity.role))
    };
    check(
        identity,
        Action::FetchBlob,
        &relation,
        &format!("blob {digest}"),
    )
}

/// Whether `identity` may do an action that concerns no project or run (list
/// workers, change the membership, ...).
pub fn may(
    identity: &Identity,
    action: Action,
    state: &State,
    admins: &BTreeSet<String>,
) -> Result<(), String> {
    let relation = caller(identity, admins).relation(&state.policy, "", "");
    check(identity, action, &relation, "")
}

#[cfg(test)]
mod tests;
