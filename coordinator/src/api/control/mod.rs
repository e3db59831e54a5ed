//! The control service, for clients: submit, inspect and cancel runs, follow logs,
//! list and download artifacts, list workers. Only client certificates may call it.
//!
//! This module holds the service and its tonic trait impl, which only hands each
//! call to the module of its area; those check the caller's role, convert the
//! request, propose or read, and build the answer from `views`.

mod artifacts;
mod audit;
mod certs;
mod cluster;
mod logs;
mod policy;
mod runs;
mod schedules;
mod secrets;
mod submit;
mod views;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;

use ferry_common::proto::{self, control_server::Control};
use tonic::{Request, Response, Status, Streaming};

use super::limits::until_revoked;
use super::{ResponseStream, propose_status};
use crate::node::{Node, authorize};
use crate::state::{Run, RunId};
use ferry_common::pki::{Identity, peer_certificate};

/// (bundle digest, cache.paths) → the digest of those files.
type CodeMemo = HashMap<(String, Vec<String>), String>;

/// Cheap to clone (shared parts): a `SubmitRuns` stream holds a clone.
#[derive(Clone)]
pub struct ControlService {
    node: Arc<Node>,
    parsed: Arc<submit::ParsedPipelines>,
    code_memo: Arc<std::sync::Mutex<CodeMemo>>,
    /// Long-lived answer streams (logs, downloads, submission streams) open
    /// per client.
    streams: Arc<super::limits::StreamSlots>,
}

impl ControlService {
    pub fn new(node: Arc<Node>) -> ControlService {
        ControlService {
            node,
            parsed: Default::default(),
            code_memo: Default::default(),
            streams: super::limits::StreamSlots::new(
                "log, download and submission streams",
                super::limits::MAX_CLIENT_STREAMS_PER_CALLER,
            ),
        }
    }

    /// The administrators configured on this member.
    fn admins(&self) -> &std::collections::BTreeSet<String> {
        self.node.membership.admins()
    }

    /// Refuses unless `caller` may make the change `action` (a row of the
    /// table that concerns no project or run), recording a refusal in the
    /// audit log under `summary`.
    async fn may_change(
        &self,
        caller: &ferry_common::pki::Identity,
        action: crate::access::Action,
        summary: String,
    ) -> Result<(), Status> {
        let allowed = self
            .node
            .read(|state| authorize::may(caller, action, state, self.admins()));
        let Err(reason) = allowed else {
            return Ok(());
        };
        let about = crate::state::Described {
            action,
            project: None,
            summary,
        };
        let reason = self.node.refused(caller, about, reason).await;
        Err(Status::permission_denied(reason))
    }

    /// Refuses unless `caller` may do `action`, a row of the table that
    /// concerns no project or run.
    fn may(
        &self,
        caller: &ferry_common::pki::Identity,
        action: crate::access::Action,
    ) -> Result<(), Status> {
        self.node
            .read(|state| authorize::may(caller, action, state, self.admins()))
            .map_err(Status::permission_denied)
    }

    /// Refuses unless `caller` may read run `id` (the table's `ReadRun` row):
    /// status, logs, artifacts, metrics, lineage. A run that does not exist is
    /// not found.
    fn may_read_run(&self, caller: &Identity, id: RunId) -> Result<(), Status> {
        self.node.read(|state| {
            let run = state
                .runs
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("run {id} does not exist")))?;
            authorize::may_read_run(caller, run, state, self.admins())
                .map_err(Status::permission_denied)
        })
    }

    /// Linearizable unless the caller asked for this replica's possibly stale view.
    async fn consistent_read(&self, stale: bool) -> Result<(), Status> {
        if stale {
            return Ok(());
        }
        self.node.read_barrier().await.map_err(propose_status)
    }
}

/// Logs and artifacts of a run `ferry gc` collected are gone: say so.
fn refuse_collected(run: &Run) -> Result<(), Status> {
    if run.collected_ms.is_some() {
        return Err(Status::failed_precondition(format!(
            "run {} was garbage-collected (ferry gc): its logs and artifacts are deleted; \
             its record, metrics and lineage remain",
            run.id
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn upload_bundle(
        &self,
        request: Request<Streaming<proto::Chunk>>,
    ) -> Result<Response<proto::BlobRef>, Status> {
        submit::upload_bundle(self, request).await
    }

    async fn has_blob(
        &self,
        request: Request<proto::BlobRef>,
    ) -> Result<Response<proto::HasBlobResponse>, Status> {
        submit::has_blob(self, request).await
    }

    async fn submit_run(
        &self,
        request: Request<proto::SubmitRunRequest>,
    ) -> Result<Response<proto::SubmitRunResponse>, Status> {
        submit::submit_run(self, request).await
    }

    type SubmitRunsStream = ResponseStream<proto::SubmitRunsReply>;

    async fn submit_runs(
        &self,
        request: Request<Streaming<proto::SubmitRunsRequest>>,
    ) -> Result<Response<Self::SubmitRunsStream>, Status> {
        let facts = peer_certificate(&request)?;
        let stream = submit::submit_runs(self, request)?;
        Ok(Response::new(until_revoked(
            stream,
            self.node.clone(),
            facts,
        )))
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        runs::list_runs(self, request).await
    }

    async fn get_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::RunView>, Status> {
        runs::get_run(self, request).await
    }

    async fn cancel_run(
        &self,
        request: Request<proto::CancelRunRequest>,
    ) -> Result<Response<proto::RunView>, Status> {
        runs::cancel_run(self, request).await
    }

    async fn list_workers(
        &self,
        request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        workers::list_workers(self, request).await
    }

    async fn set_worker_mode(
        &self,
        request: Request<proto::SetWorkerModeRequest>,
    ) -> Result<Response<proto::WorkerView>, Status> {
        workers::set_worker_mode(self, request).await
    }

    type StreamLogsStream = ResponseStream<proto::LogLine>;

    async fn stream_logs(
        &self,
        request: Request<proto::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let facts = peer_certificate(&request)?;
        let stream = logs::stream_logs(self, request).await?;
        Ok(stream.map(|stream| until_revoked(stream, self.node.clone(), facts)))
    }

    async fn list_artifacts(
        &self,
        request: Request<proto::ListArtifactsRequest>,
    ) -> Result<Response<proto::ListArtifactsResponse>, Status> {
        artifacts::list_artifacts(self, request).await
    }

    type DownloadArtifactStream = ResponseStream<proto::Chunk>;

    async fn download_artifact(
        &self,
        request: Request<proto::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let facts = peer_certificate(&request)?;
        let stream = artifacts::download_artifact(self, request).await?;
        Ok(stream.map(|stream| until_revoked(stream, self.node.clone(), facts)))
    }

    async fn rerun_run(
        &self,
        request: Request<proto::RerunRunRequest>,
    ) -> Result<Response<proto::SubmitRunResponse>, Status> {
        submit::rerun_run(self, request).await
    }

    async fn lineage(
        &self,
        request: Request<proto::LineageRequest>,
    ) -> Result<Response<proto::LineageResponse>, Status> {
        artifacts::lineage(self, request).await
    }

    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::ScheduleView>, Status> {
        schedules::create_schedule(self, request).await
    }

    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        schedules::list_schedules(self, request).await
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::PauseScheduleRequest>,
    ) -> Result<Response<proto::ScheduleView>, Status> {
        schedules::pause_schedule(self, request).await
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::DeleteScheduleRequest>,
    ) -> Result<Response<proto::ScheduleView>, Status> {
        schedules::delete_schedule(self, request).await
    }

    async fn pin_artifact(
        &self,
        request: Request<proto::PinArtifactRequest>,
    ) -> Result<Response<proto::PinView>, Status> {
        artifacts::pin_artifact(self, request).await
    }

    async fn unpin_artifact(
        &self,
        request: Request<proto::UnpinArtifactRequest>,
    ) -> Result<Response<proto::PinView>, Status> {
        artifacts::unpin_artifact(self, request).await
    }

    async fn list_pins(
        &self,
        request: Request<proto::ListPinsRequest>,
    ) -> Result<Response<proto::ListPinsResponse>, Status> {
        artifacts::list_pins(self, request).await
    }

    async fn collect_garbage(
        &self,
        request: Request<proto::CollectGarbageRequest>,
    ) -> Result<Response<proto::CollectGarbageResponse>, Status> {
        artifacts::collect_garbage(self, request).await
    }

    async fn cluster_status(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        cluster::cluster_status(self, request).await
    }

    async fn add_member(
        &self,
        request: Request<proto::AddMemberRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        cluster::add_member(self, request).await
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        cluster::remove_member(self, request).await
    }

    async fn create_project(
        &self,
        request: Request<proto::CreateProjectRequest>,
    ) -> Result<Response<proto::ProjectView>, Status> {
        policy::create_project(self, request).await
    }

    async fn list_projects(
        &self,
        request: Request<proto::ListProjectsRequest>,
    ) -> Result<Response<proto::ListProjectsResponse>, Status> {
        policy::list_projects(self, request).await
    }

    async fn set_project_member(
        &self,
        request: Request<proto::SetProjectMemberRequest>,
    ) -> Result<Response<proto::ProjectView>, Status> {
        policy::set_project_member(self, request).await
    }

    async fn list_admins(
        &self,
        request: Request<proto::ListAdminsRequest>,
    ) -> Result<Response<proto::ListAdminsResponse>, Status> {
        policy::list_admins(self, request).await
    }

    async fn set_group_member(
        &self,
        request: Request<proto::SetGroupMemberRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        policy::set_group_member(self, request).await
    }

    async fn delete_group(
        &self,
        request: Request<proto::DeleteGroupRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        policy::delete_group(self, request).await
    }

    async fn list_groups(
        &self,
        request: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        policy::list_groups(self, request).await
    }

    async fn set_admin(
        &self,
        request: Request<proto::SetAdminRequest>,
    ) -> Result<Response<proto::ListAdminsResponse>, Status> {
        policy::set_admin(self, request).await
    }

    async fn revoke_certificate(
        &self,
        request: Request<proto::RevokeCertificateRequest>,
    ) -> Result<Response<proto::RevokeCertificateResponse>, Status> {
        certs::revoke_certificate(self, request).await
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        audit::list_audit(self, request).await
    }

    async fn get_limits(
        &self,
        request: Request<proto::GetLimitsRequest>,
    ) -> Result<Response<proto::LimitsView>, Status> {
        submit::get_limits(self, request).await
    }

    async fn list_revocations(
        &self,
        request: Request<proto::ListRevocationsRequest>,
    ) -> Result<Response<proto::ListRevocationsResponse>, Status> {
        certs::list_revocations(self, request).await
    }

    async fn set_secret(
        &self,
        request: Request<proto::SetSecretRequest>,
    ) -> Result<Response<proto::SecretView>, Status> {
        secrets::set_secret(self, request).await
    }

    async fn list_secrets(
        &self,
        request: Request<proto::ListSecretsRequest>,
    ) -> Result<Response<proto::ListSecretsResponse>, Status> {
        secrets::list_secrets(self, request).await
    }

    async fn delete_secret(
        &self,
        request: Request<proto::DeleteSecretRequest>,
    ) -> Result<Response<proto::SecretView>, Status> {
        secrets::delete_secret(self, request).await
    }

    async fn rotate_secrets_key(
        &self,
        request: Request<proto::RotateSecretsKeyRequest>,
    ) -> Result<Response<proto::RotateSecretsKeyResponse>, Status> {
        secrets::rotate_secrets_key(self, request).await
    }
}
