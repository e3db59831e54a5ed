//! The cluster's state as an administrator reads it, one line per thing, to
//! compare before and after a refused call: runs with their states, schedules
//! with their paused flags, pins, projects with their members, administrators,
//! secrets with their versions, workers with their modes, revocations and the
//! Raft members. (Not the audit log: reading is no change to it.)

use std::collections::BTreeSet;

use ferry_common::proto::{self, control_client::ControlClient};
use tonic::Status;
use tonic::transport::Channel;

pub type Fingerprint = BTreeSet<String>;

pub async fn fingerprint(admin: &mut ControlClient<Channel>) -> Result<Fingerprint, Status> {
    let mut lines = Fingerprint::new();
    let runs = admin
        .list_runs(proto::ListRunsRequest::default())
        .await?
        .into_inner();
    for run in runs.runs {
        lines.insert(format!("run {} {} {}", run.run_id, run.state, run.project));
    }
    let schedules = admin
        .list_schedules(proto::ListSchedulesRequest::default())
        .await?
        .into_inner();
    for schedule in schedules.schedules {
        lines.insert(format!(
            "schedule {} owner={} paused={}",
            schedule.name, schedule.owner, schedule.paused
        ));
    }
    let pins = admin
        .list_pins(proto::ListPinsRequest::default())
        .await?
        .into_inner();
    for pin in pins.pins {
        lines.insert(format!(
            "pin {} {} owner={}",
            pin.tag, pin.digest, pin.owner
        ));
    }
    let projects = admin
        .list_projects(proto::ListProjectsRequest::default())
        .await?
        .into_inner();
    for project in projects.projects {
        let members: Vec<String> = project
            .members
            .iter()
            .map(|m| format!("{}:{}", m.user, m.role))
            .collect();
        lines.insert(format!("project {} [{}]", project.name, members.join(" ")));
    }
    let admins = admin
        .list_admins(proto::ListAdminsRequest::default())
        .await?
        .into_inner();
    for entry in admins.admins {
        lines.insert(format!(
            "admin {} configured={}",
            entry.name, entry.configured
        ));
    }
    let secrets = admin
        .list_secrets(proto::ListSecretsRequest::default())
        .await?
        .into_inner();
    for secret in secrets.secrets {
        lines.insert(format!(
            "secret {}/{} v{} by={} key={}",
            secret.project, secret.name, secret.version, secret.set_by, secret.key_id
        ));
    }
    let workers = admin
        .list_workers(proto::ListWorkersRequest::default())
        .await?
        .into_inner();
    for worker in workers.workers {
        lines.insert(format!("worker {} mode={}", worker.name, worker.mode));
    }
    let revocations = admin
        .list_revocations(proto::ListRevocationsRequest::default())
        .await?
        .into_inner();
    for revoked in revocations.revocations {
        lines.insert(format!("revoked {} {}", revoked.kind, revoked.value));
    }
    let status = admin
        .cluster_status(proto::ClusterStatusRequest {})
        .await?
        .into_inner();
    for member in status.members {
        lines.insert(format!("member {} learner={}", member.id, member.learner));
    }
    Ok(lines)
}

/// What differs, in words.
pub fn difference(before: &Fingerprint, after: &Fingerprint) -> String {
    let gone: Vec<&String> = before.difference(after).collect();
    let new: Vec<&String> = after.difference(before).collect();
    format!("gone: {gone:?}; new: {new:?}")
}
