//! Making each cell's call over gRPC with the caller's certificate, on the
//! fixtures of project `p`; a call that would use its fixture up (cancel,
//! delete, unpin) gets a fresh one made by `p`'s owner first, so that every
//! allowed call can succeed and every refused one is refused on a live thing.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_common::proto::{self, agent_client::AgentClient, control_client::ControlClient};
use futures::StreamExt;
use tonic::Status;
use tonic::transport::Channel;

use super::cases::{Caller, Case};

/// A run that waits (its worker is cordoned: it stays queued).
pub const WAIT_SPEC: &str =
    "name: wait\nproject: p\nsteps:\n  - name: wait\n    command: [sleep, \"600\"]\n";

/// A waiting run whose step asks for `p`'s secret `token`.
pub const SECRET_SPEC: &str = "name: secret\nproject: p\nsteps:\n  - name: wait\n    command: [sleep, \"600\"]\n    secrets: [{name: token, env: TOKEN}]\n";

/// A run that makes an artifact.
pub const MAKE_SPEC: &str = "name: make\nproject: p\nsteps:\n  - name: make\n    shell: \"echo model-bytes > model.bin\"\n    outputs: [model.bin]\n";

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What the fixtures of project `p` are.
pub struct Fixtures {
    /// The code bundle of every run (uploaded by `p`'s owner).
    pub bundle: String,
    pub bundle_size: u64,
    /// The bundle's bytes, uploaded again by each caller.
    pub bundle_bytes: Vec<u8>,
    /// A finished run with an artifact (step `make`, file `model.bin`).
    pub done_run: u64,
    pub artifact: String,
    /// A run whose step `wait` runs on worker `w1` (attempt `running_attempt`).
    pub running_run: u64,
    pub running_attempt: u32,
    pub schedule: String,
    pub pin: String,
    pub secret: String,
}

/// What an answered call said, where the matrix checks more than the answer.
#[derive(Debug, Default)]
pub struct Answer {
    /// A listing: whether the fixture is in it.
    pub listed: Option<bool>,
    /// A worker's report: whether it was taken.
    pub accepted: Option<bool>,
}

/// A fixture made for one call.
pub struct Fresh {
    run: u64,
    name: String,
}

pub struct Ctx {
    pub control: BTreeMap<Caller, ControlClient<Channel>>,
    pub agent: BTreeMap<Caller, AgentClient<Channel>>,
    /// `p`'s owner, who makes fresh fixtures.
    pub owner: ControlClient<Channel>,
    pub fixtures: Fixtures,
    made: u32,
}

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| Status::deadline_exceeded("no answer in 20 s"))?
        .map(tonic::Response::into_inner)
}

/// Reads a server stream to its end (a refusal may come with the first item).
async fn drain<T>(stream: tonic::Streaming<T>) -> Result<(), Status> {
    tokio::time::timeout(CALL_TIMEOUT, async {
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            item?;
        }
        Ok(())
    })
    .await
    .map_err(|_| Status::deadline_exceeded("the stream did not end in 20 s"))?
}

/// A blob sent as an upload: a first chunk naming it, then its bytes.
pub fn chunks(bytes: &[u8]) -> Vec<proto::Chunk> {
    let digest = blake3::hash(bytes).to_hex().to_string();
    let size = bytes.len() as u64;
    [Vec::new(), bytes.to_vec()]
        .into_iter()
        .map(|data| proto::Chunk {
            digest: digest.clone(),
            size,
            data: data.into(),
            zeros: 0,
            digest_last: false,
        })
        .collect()
}

/// A submission of `spec` with code bundle `bundle`.
fn submission(spec: &str, bundle: &str) -> proto::SubmitRunRequest {
    proto::SubmitRunRequest {
        spec_yaml: spec.to_string(),
        spec_file: "matrix.yaml".to_string(),
        bundle_digest: bundle.to_string(),
        ..Default::default()
    }
}

pub async fn submit(
    client: &mut ControlClient<Channel>,
    spec: &str,
    bundle: &str,
) -> Result<u64, Status> {
    let request = submission(spec, bundle);
    Ok(bounded(client.submit_run(request)).await?.run_id)
}

/// One submission on a `SubmitRuns` stream; a refusal in its reply as the
/// status `SubmitRun` would answer.
pub async fn submit_on_stream(
    client: &mut ControlClient<Channel>,
    spec: &str,
    bundle: &str,
) -> Result<u64, Status> {
    let batch = proto::SubmitRunsRequest {
        runs: vec![submission(spec, bundle)],
    };
    let mut replies = bounded(client.submit_runs(futures::stream::iter([batch]))).await?;
    let answer = tokio::time::timeout(CALL_TIMEOUT, replies.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no answer in 20 s"))??
        .and_then(|reply| reply.answers.into_iter().next())
        .ok_or_else(|| Status::internal("the SubmitRuns stream ended unanswered"))?;
    if answer.code != 0 {
        return Err(Status::new(tonic::Code::from(answer.code), answer.message));
    }
    Ok(answer.run_id)
}

pub fn schedule_request(name: &str, bundle: &str) -> proto::CreateScheduleRequest {
    proto::CreateScheduleRequest {
        name: name.to_string(),
        cron: "0 0 1 1 *".to_string(),
        spec_yaml: MAKE_SPEC.to_string(),
        spec_file: "make.yaml".to_string(),
        bundle_digest: bundle.to_string(),
        ..Default::default()
    }
}

pub fn secret_request(name: &str, value: &str) -> proto::SetSecretRequest {
    proto::SetSecretRequest {
        project: "p".to_string(),
        name: name.to_string(),
        value: value.as_bytes().to_vec(),
    }
}

impl Ctx {
    pub fn new(
        control: BTreeMap<Caller, ControlClient<Channel>>,
        agent: BTreeMap<Caller, AgentClient<Channel>>,
        owner: ControlClient<Channel>,
        fixtures: Fixtures,
    ) -> Ctx {
        Ctx {
            control,
            agent,
            owner,
            fixtures,
            made: 0,
        }
    }

    /// A name nothing has yet.
    fn fresh(&mut self, what: &str) -> String {
        self.made += 1;
        format!("{what}-{}", self.made)
    }

    fn attempt(&self) -> Option<proto::AttemptRef> {
        Some(proto::AttemptRef {
            run_id: self.fixtures.running_run,
            step: "wait".to_string(),
            attempt: self.fixtures.running_attempt,
        })
    }

    fn finished(&self) -> proto::StepFinishedRequest {
        proto::StepFinishedRequest {
            attempt: self.attempt(),
            outcome: "exited".to_string(),
            has_exit_code: true,
            exit_code: 0,
            ..Default::default()
        }
    }

    /// Makes the fresh fixture `case`'s call as `caller` will use, if any.
    pub async fn prepare(&mut self, case: Case, caller: Caller) -> Result<Fresh, Status> {
        let (bundle, artifact) = (self.fixtures.bundle.clone(), self.fixtures.artifact.clone());
        let run = match case {
            Case::CancelRun => submit(&mut self.owner, WAIT_SPEC, &bundle).await?,
            _ => 0,
        };
        let name = match case {
            Case::DeleteSchedule => {
                let name = self.fresh("doomed");
                bounded(self.owner.create_schedule(schedule_request(&name, &bundle))).await?;
                name
            }
            Case::UnpinArtifact => {
                let tag = self.fresh("doomed");
                let request = proto::PinArtifactRequest {
                    digest: artifact,
                    tag: tag.clone(),
                };
                bounded(self.owner.pin_artifact(request)).await?;
                tag
            }
            Case::DeleteGroup => {
                // A group of its own, so that deleting it takes nothing else.
                let name = self.fresh("doomed");
                let request = proto::SetGroupMemberRequest {
                    group: name.clone(),
                    user: "nobody".into(),
                    member: true,
                };
                let admin = self.control.get_mut(&Caller::Admin).expect("the admin");
                bounded(admin.set_group_member(request)).await?;
                name
            }
            Case::DeleteSecret => {
                let name = self.fresh("doomed");
                bounded(self.owner.set_secret(secret_request(&name, "old"))).await?;
                name
            }
            _ => self.fresh(&format!("by-{}", caller.label().replace(['(', ')'], ""))),
        };
        Ok(Fresh { run, name })
    }

    /// Makes `case`'s call as `caller`, on `fresh` where it uses a fixture up.
    pub async fn call(
        &mut self,
        case: Case,
        caller: Caller,
        fresh: Fresh,
    ) -> Result<Answer, Status> {
        if case.service() == super::cases::Service::Agent {
            return self.call_agent(case, caller).await;
        }
        let mut answer = Answer::default();
        let f = &self.fixtures;
        let (bundle, done, artifact) = (f.bundle.clone(), f.done_run, f.artifact.clone());
        let (schedule, pin, secret) = (f.schedule.clone(), f.pin.clone(), f.secret.clone());
        let Fresh {
            run: fresh_run,
            name: fresh_name,
        } = fresh;
        let client = self.control.get_mut(&caller).expect("a control client");
        match case {
            Case::UploadBundle => {
                let upload = futures::stream::iter(chunks(&self.fixtures.bundle_bytes));
                bounded(client.upload_bundle(upload)).await?;
            }
            Case::HasBlob => {
                let blob = proto::BlobRef {
                    digest: bundle,
                    size: self.fixtures.bundle_size,
                };
                bounded(client.has_blob(blob)).await?;
            }
            Case::GetLimits => {
                bounded(client.get_limits(proto::GetLimitsRequest {})).await?;
            }
            Case::SubmitRun => {
                submit(client, WAIT_SPEC, &bundle).await?;
            }
            Case::SubmitRuns => {
                submit_on_stream(client, WAIT_SPEC, &bundle).await?;
            }
            Case::SubmitRunWithSecret => {
                submit(client, SECRET_SPEC, &bundle).await?;
            }
            Case::ListRuns => {
                let runs = bounded(client.list_runs(proto::ListRunsRequest::default())).await?;
                answer.listed = Some(runs.runs.iter().any(|r| r.run_id == done));
            }
            Case::GetRun => {
                let request = proto::GetRunRequest {
                    run_id: done,
                    ..Default::default()
                };
                bounded(client.get_run(request)).await?;
            }
            Case::CancelRun => {
                let request = proto::CancelRunRequest { run_id: fresh_run };
                bounded(client.cancel_run(request)).await?;
            }
            Case::ListWorkers => {
                bounded(client.list_workers(proto::ListWorkersRequest::default())).await?;
            }
            Case::SetWorkerMode => {
                // Cordoned already: an allowed call changes nothing.
                let request = proto::SetWorkerModeRequest {
                    name: "w1".to_string(),
                    mode: "cordoned".to_string(),
                };
                bounded(client.set_worker_mode(request)).await?;
            }
            Case::StreamLogs => {
                let request = proto::StreamLogsRequest {
                    run_id: done,
                    step: String::new(),
                    follow: false,
                };
                drain(bounded(client.stream_logs(request)).await?).await?;
            }
            Case::ListArtifacts => {
                let request = proto::ListArtifactsRequest {
                    run_id: done,
                    stale: false,
                };
                bounded(client.list_artifacts(request)).await?;
            }
            Case::DownloadArtifact => {
                let request = proto::DownloadArtifactRequest {
                    run_id: done,
                    step: "make".to_string(),
                    name: "model.bin".to_string(),
                    offset: 0,
                };
                drain(bounded(client.download_artifact(request)).await?).await?;
            }
            Case::ClusterStatus => {
                bounded(client.cluster_status(proto::ClusterStatusRequest {})).await?;
            }
            Case::AddMember => {
                // Member id 0 is invalid: an allowed call changes nothing.
                let request = proto::AddMemberRequest {
                    id: 0,
                    client_address: "127.0.0.1:9".to_string(),
                    peer_address: String::new(),
                };
                bounded(client.add_member(request)).await?;
            }
            Case::RemoveMember => {
                let request = proto::RemoveMemberRequest { id: 99 };
                bounded(client.remove_member(request)).await?;
            }
            Case::RerunRun => {
                let request = proto::RerunRunRequest {
                    run_id: done,
                    from: "make".to_string(),
                    request_id: fresh_name,
                };
                bounded(client.rerun_run(request)).await?;
            }
            Case::Lineage => {
                let request = proto::LineageRequest {
                    digest: artifact,
                    stale: false,
                };
                bounded(client.lineage(request)).await?;
            }
            Case::CreateSchedule => {
                bounded(client.create_schedule(schedule_request(&fresh_name, &bundle))).await?;
            }
            Case::ListSchedules => {
                let listed =
                    bounded(client.list_schedules(proto::ListSchedulesRequest::default())).await?;
                answer.listed = Some(listed.schedules.iter().any(|s| s.name == schedule));
            }
            Case::PauseSchedule => {
                let request = proto::PauseScheduleRequest {
                    name: schedule,
                    paused: true,
                };
                bounded(client.pause_schedule(request)).await?;
            }
            Case::DeleteSchedule => {
                let request = proto::DeleteScheduleRequest { name: fresh_name };
                bounded(client.delete_schedule(request)).await?;
            }
            Case::PinArtifact => {
                let request = proto::PinArtifactRequest {
                    digest: artifact,
                    tag: fresh_name,
                };
                bounded(client.pin_artifact(request)).await?;
            }
            Case::UnpinArtifact => {
                let request = proto::UnpinArtifactRequest { tag: fresh_name };
                bounded(client.unpin_artifact(request)).await?;
            }
            Case::ListPins => {
                let listed = bounded(client.list_pins(proto::ListPinsRequest::default())).await?;
                answer.listed = Some(listed.pins.iter().any(|p| p.tag == pin));
            }
            Case::CollectGarbage => {
                let request = proto::CollectGarbageRequest {
                    keep_last: 1000,
                    dry_run: true,
                };
                bounded(client.collect_garbage(request)).await?;
            }
            Case::CreateProject => {
                let request = proto::CreateProjectRequest {
                    name: fresh_name,
                    owner: String::new(),
                };
                bounded(client.create_project(request)).await?;
            }
            Case::ListProjects => {
                bounded(client.list_projects(proto::ListProjectsRequest::default())).await?;
            }
            Case::SetProjectMember => {
                let request = proto::SetProjectMemberRequest {
                    project: "p".to_string(),
                    user: fresh_name,
                    role: "viewer".to_string(),
                };
                bounded(client.set_project_member(request)).await?;
            }
            Case::ListAdmins => {
                bounded(client.list_admins(proto::ListAdminsRequest::default())).await?;
            }
            Case::SetAdmin => {
                let request = proto::SetAdminRequest {
                    user: fresh_name,
                    admin: true,
                };
                bounded(client.set_admin(request)).await?;
            }
            Case::RevokeCertificate => {
                let request = proto::RevokeCertificateRequest {
                    serial: String::new(),
                    name: fresh_name,
                };
                bounded(client.revoke_certificate(request)).await?;
            }
            Case::SetGroupMember => {
                let request = proto::SetGroupMemberRequest {
                    group: "matrix".into(),
                    user: fresh_name,
                    member: true,
                };
                bounded(client.set_group_member(request)).await?;
            }
            Case::ListGroups => {
                bounded(client.list_groups(proto::ListGroupsRequest::default())).await?;
            }
            Case::DeleteGroup => {
                let request = proto::DeleteGroupRequest { group: fresh_name };
                bounded(client.delete_group(request)).await?;
            }
            Case::ListAudit => {
                // The records of project `p`: its owners' and administrators'.
                let request = proto::ListAuditRequest {
                    project: "p".into(),
                    ..Default::default()
                };
                bounded(client.list_audit(request)).await?;
            }
            Case::ListRevocations => {
                bounded(client.list_revocations(proto::ListRevocationsRequest::default())).await?;
            }
            Case::SetSecretVersion => {
                bounded(client.set_secret(secret_request(&secret, "newer"))).await?;
            }
            Case::SetSecretNew => {
                bounded(client.set_secret(secret_request(&fresh_name, "planted"))).await?;
            }
            Case::ListSecrets => {
                let listed =
                    bounded(client.list_secrets(proto::ListSecretsRequest::default())).await?;
                answer.listed = Some(
                    listed
                        .secrets
                        .iter()
                        .any(|s| s.project == "p" && s.name == secret),
                );
            }
            Case::DeleteSecret => {
                let request = proto::DeleteSecretRequest {
                    project: "p".to_string(),
                    name: fresh_name,
                };
                bounded(client.delete_secret(request)).await?;
            }
            Case::RotateSecretsKey => {
                bounded(client.rotate_secrets_key(proto::RotateSecretsKeyRequest {})).await?;
            }
            agent => unreachable!("{agent:?} is an agent call"),
        }
        Ok(answer)
    }

    async fn call_agent(&mut self, case: Case, caller: Caller) -> Result<Answer, Status> {
        let mut answer = Answer::default();
        let attempt = self.attempt();
        let finished = self.finished();
        let (bundle, bundle_size) = (self.fixtures.bundle.clone(), self.fixtures.bundle_size);
        let client = self.agent.get_mut(&caller).expect("an agent client");
        match case {
            Case::RegisterOther => {
                let request = proto::RegisterRequest {
                    name: "w1".to_string(),
                    capacity: Some(proto::Resources {
                        cpu_millis: 1000,
                        memory_bytes: 1 << 30,
                        gpus: 0,
                    }),
                    ..Default::default()
                };
                bounded(client.register(request)).await?;
            }
            Case::HeartbeatOther => {
                let request = proto::HeartbeatRequest {
                    name: "w1".to_string(),
                    ..Default::default()
                };
                bounded(client.heartbeat(request)).await?;
            }
            Case::AssignmentsOther => {
                let request = proto::AssignmentsRequest {
                    name: "w1".to_string(),
                    session: "forged".to_string(),
                };
                // Dropped at once if answered: it would take w1's stream.
                bounded(client.assignments(request)).await?;
            }
            Case::StepStartedForeign => {
                let request = proto::StepStartedRequest { attempt };
                answer.accepted = Some(bounded(client.step_started(request)).await?.accepted);
            }
            Case::ImageResolvedForeign => {
                let request = proto::ImageResolvedRequest {
                    attempt,
                    image_id: "sha256:forged".to_string(),
                    image_repo_digest: String::new(),
                };
                answer.accepted = Some(bounded(client.image_resolved(request)).await?.run);
            }
            Case::PushLogsForeign => {
                let request = proto::LogBatch {
                    attempt,
                    lines: vec![proto::LogLine {
                        text: "forged".to_string(),
                        stream: "stdout".to_string(),
                        ..Default::default()
                    }],
                };
                answer.accepted = Some(bounded(client.push_logs(request)).await?.accepted);
            }
            Case::UploadArtifact => {
                let upload = futures::stream::iter(chunks(b"an artifact from the matrix"));
                bounded(client.upload_artifact(upload)).await?;
            }
            Case::FetchBlobUnassigned => {
                let request = proto::BlobRef {
                    digest: bundle,
                    size: bundle_size,
                };
                drain(bounded(client.fetch_blob(request)).await?).await?;
            }
            Case::BlobUrlsUnassigned => {
                let request = proto::BlobUrlsRequest {
                    digests: vec![bundle],
                };
                bounded(client.blob_urls(request)).await?;
            }
            Case::PrepareUploadForeign => {
                let request = proto::PrepareUploadRequest {
                    attempt,
                    digest: blake3::hash(b"forged").to_hex().to_string(),
                    size: 6,
                    ..Default::default()
                };
                bounded(client.prepare_upload(request)).await?;
            }
            Case::CompleteUploadForeign => {
                let request = proto::CompleteUploadRequest {
                    attempt,
                    digest: blake3::hash(b"forged").to_hex().to_string(),
                    size: 6,
                    ..Default::default()
                };
                bounded(client.complete_upload(request)).await?;
            }
            Case::StepFinishedForeign => {
                answer.accepted = Some(bounded(client.step_finished(finished)).await?.accepted);
            }
            Case::StepsFinishedForeign => {
                let request = proto::StepsFinishedRequest {
                    reports: vec![finished],
                };
                let acks = bounded(client.steps_finished(request)).await?.acks;
                answer.accepted = Some(acks.iter().all(|ack| ack.accepted));
            }
            control => unreachable!("{control:?} is a control call"),
        }
        Ok(answer)
    }
}
