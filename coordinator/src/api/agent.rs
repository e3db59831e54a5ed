//! The agent service, for workers: register, heartbeat, receive assignments over one
//! stream, report starts and ends, ship logs and artifacts, fetch bundles and inputs.
//! Only worker certificates may call it, and a worker may speak only for itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_common::pki::{Identity, Role, peer_certificate, require_role};
use ferry_common::proto::{self, agent_server::Agent};
use ferry_common::spec::Resources;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::limits::until_revoked;
use super::{ResponseStream, propose_status, send_blob};
use crate::access::{Action, CertRole, Relation, decide};
use crate::node::{Node, authorize, now_ms};
use crate::state::{
    AttemptKey, AttemptReport, AttemptUsage, Command, GpuInfo, MAX_METRIC_NAME_LEN,
    MAX_METRICS_PER_ATTEMPT, MetricPoint, Outcome, RanImage, ReportedOutcome, Worker,
};
use crate::store::LogRecord;

mod direct;

/// Bounds on what one worker message may carry.
const MAX_LOG_LINES_PER_BATCH: usize = 5000;
const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

pub struct AgentService {
    node: Arc<Node>,
}

impl AgentService {
    pub fn new(node: Arc<Node>) -> AgentService {
        AgentService { node }
    }
}

/// The caller must be a worker, and must speak under its own certificate's name.
/// The longest container runtime name a worker may advertise.
const MAX_RUNTIME_NAME: usize = 128;

fn worker_identity<T>(request: &Request<T>, claimed: Option<&str>) -> Result<Identity, Status> {
    let identity = require_role(request, Role::Worker)?;
    if let Some(claimed) = claimed
        && claimed != identity.name
    {
        return Err(not_this_worker(
            Action::RegisterWorker,
            format!(
                "worker certificate \"{}\" cannot act as worker \"{claimed}\"",
                identity.name
            ),
        ));
    }
    Ok(identity)
}

/// A worker's call about another worker or its attempt, refused with the role
/// the table's row for `action` needs.
fn not_this_worker(action: Action, refusal: String) -> Status {
    let relation = Relation::stranger(CertRole::Worker);
    match decide(action, &relation) {
        Err(denied) => {
            Status::permission_denied(format!("{refusal}: that needs {}", denied.needed))
        }
        Ok(()) => Status::permission_denied(refusal),
    }
}

fn attempt_key(attempt: Option<proto::AttemptRef>) -> Result<AttemptKey, Status> {
    let attempt =
        attempt.ok_or_else(|| Status::invalid_argument("the request names no attempt"))?;
    Ok(AttemptKey {
        run: attempt.run_id,
        step: attempt.step,
        attempt: attempt.attempt,
    })
}

fn request_running(running: Vec<proto::AttemptRef>) -> Vec<AttemptKey> {
    running
        .into_iter()
        .map(|a| AttemptKey {
            run: a.run_id,
            step: a.step,
            attempt: a.attempt,
        })
        .collect()
}

/// A registration's labels, GPU inventory and attempts in hand must be within
/// the bounds of `ferry_common::spec::limits` (the worker checks the same at
/// start): refused whole, nothing proposed.
fn check_registration(register: &proto::RegisterRequest) -> Result<(), Status> {
    use ferry_common::spec::limits;
    let problem = limits::worker_inventory_problem(
        register
            .labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
        register
            .gpus
            .iter()
            .map(|gpu| (gpu.uuid.as_str(), gpu.model.as_str())),
    );
    if let Some(problem) = problem {
        return Err(Status::invalid_argument(format!(
            "registration of worker {:?} refused: {problem}",
            register.name
        )));
    }
    if register.running.len() > limits::MAX_RUNNING_AT_REGISTRATION {
        return Err(Status::invalid_argument(format!(
            "registration of worker {:?} refused: it names {} attempts in hand; the limit is {}",
            register.name,
            register.running.len(),
            limits::MAX_RUNNING_AT_REGISTRATION
        )));
    }
    Ok(())
}

/// Most reports one `StepsFinished` call may carry.
const MAX_REPORTS_PER_CALL: usize = 256;

/// The longest image ID and repository digest a worker may report.
const MAX_IMAGE_REF: usize = 1024;

/// The image a worker reports an attempt ran (none when `id` is empty), with
/// its bounds checked.
fn ran_image(id: String, repo_digest: String) -> Result<Option<RanImage>, Status> {
    if id.len() > MAX_IMAGE_REF || repo_digest.len() > MAX_IMAGE_REF {
        return Err(Status::invalid_argument(format!(
            "an image ID or repository digest is at most {MAX_IMAGE_REF} bytes"
        )));
    }
    Ok((!id.is_empty()).then(|| RanImage {
        id,
        repo_digest: (!repo_digest.is_empty()).then_some(repo_digest),
    }))
}

fn report_ack(outcome: Outcome) -> proto::Ack {
    match outcome {
        Outcome::Report {
            accepted, detail, ..
        } => proto::Ack {
            accepted,
            detail,
            retry: false,
        },
        _ => proto::Ack {
            accepted: true,
            detail: String::new(),
            retry: false,
        },
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let identity = worker_identity(&request, Some(&request.get_ref().name))?;
        self.node.require_leader()?;
        let register = request.into_inner();
        check_registration(&register)?;
        let capacity = register
            .capacity
            .ok_or_else(|| Status::invalid_argument("the registration carries no capacity"))?;
        let gpus: Vec<GpuInfo> = register
            .gpus
            .into_iter()
            .map(|g| GpuInfo {
                index: g.index,
                uuid: g.uuid,
                model: g.model,
                memory_bytes: g.memory_bytes,
            })
            .collect();
        let session = format!("{}-{}", identity.name, now_ms());
        let runtime = register.container_runtime.trim().to_string();
        if runtime.len() > MAX_RUNTIME_NAME {
            return Err(Status::invalid_argument(format!(
                "the container runtime a worker advertises is at most {MAX_RUNTIME_NAME} bytes \
                 (\"docker 28.2.2\"), got {}",
                runtime.len()
            )));
        }
        let worker = Worker {
            name: identity.name.clone(),
            capacity: Resources {
                cpu_millis: capacity.cpu_millis,
                memory_bytes: capacity.memory_bytes,
                gpus: gpus.len() as u32,
            },
            gpus,
            labels: register.labels.into_iter().collect::<BTreeMap<_, _>>(),
            registered_ms: now_ms(),
            session: session.clone(),
            mode: Default::default(),
            lost_ms: None,
            container_runtime: (!runtime.is_empty()).then_some(runtime),
        };
        let running = request_running(register.running);
        self.node
            .propose_as(
                &identity,
                Command::RegisterWorker {
                    worker,
                    running,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        self.node.heartbeat(&identity.name);
        tracing::info!(worker = %identity.name, %session, "worker registered");
        Ok(Response::new(proto::RegisterResponse {
            session,
            heartbeat_interval_ms: (self.node.lease_ms / 5).clamp(100, u64::from(u32::MAX)) as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::Ack>, Status> {
        let identity = worker_identity(&request, Some(&request.get_ref().name))?;
        self.node.require_leader()?;
        let heartbeat = request.into_inner();
        let record = self.node.read(|state| {
            state
                .workers
                .get(&identity.name)
                .map(|w| (w.session.clone(), w.lost_ms))
        });
        match record {
            None => {
                return Err(Status::failed_precondition(format!(
                    "worker \"{}\" is not registered; register first",
                    identity.name
                )));
            }
            Some((_, Some(_))) => {
                return Err(Status::failed_precondition(format!(
                    "worker \"{}\" was declared lost (no heartbeat within the lease); register \
                     again (what it still runs will be stopped)",
                    identity.name
                )));
            }
            Some((session, None))
                if !heartbeat.session.is_empty() && session != heartbeat.session =>
            {
                return Err(Status::failed_precondition(format!(
                    "session \"{}\" of worker \"{}\" is not current; register again",
                    heartbeat.session, identity.name
                )));
            }
            Some(_) => {}
        }
        self.node.heartbeat(&identity.name);
        let running = request_running(heartbeat.running);
        self.node.stop_stale_attempts(&identity.name, running);
        Ok(Response::new(proto::Ack {
            accepted: true,
            detail: String::new(),
            retry: false,
        }))
    }

    type AssignmentsStream = ResponseStream<proto::WorkerMessage>;

    async fn assignments(
        &self,
        request: Request<proto::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let identity = worker_identity(&request, Some(&request.get_ref().name))?;
        let facts = peer_certificate(&request)?;
        self.node.require_leader()?;
        let session = request.into_inner().session;
        let current = self
            .node
            .read(|state| state.workers.get(&identity.name).map(|w| w.session.clone()));
        if current.as_deref() != Some(session.as_str()) {
            return Err(Status::failed_precondition(format!(
                "session \"{session}\" of worker \"{}\" is not current; register again",
                identity.name
            )));
        }
        let (sender, receiver) = mpsc::channel(crate::node::WORKER_STREAM_DEPTH);
        self.node.attach_worker(&identity.name, &session, sender);
        Ok(Response::new(until_revoked(
            Box::pin(ReceiverStream::new(receiver)),
            self.node.clone(),
            facts,
        )))
    }

    async fn step_started(
        &self,
        request: Request<proto::StepStartedRequest>,
    ) -> Result<Response<proto::Ack>, Status> {
        let identity = worker_identity(&request, None)?;
        self.node.require_leader()?;
        let key = attempt_key(request.into_inner().attempt)?;
        let outcome = self
            .node
            .propose_as(
                &identity,
                Command::StepStarted {
                    key: key.clone(),
                    worker: identity.name.clone(),
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        tracing::debug!(run = key.run, step = %key.step, attempt = key.attempt, worker = %identity.name, "step started");
        Ok(Response::new(report_ack(outcome)))
    }

    async fn image_resolved(
        &self,
        request: Request<proto::ImageResolvedRequest>,
    ) -> Result<Response<proto::ImageResolvedResponse>, Status> {
        let identity = worker_identity(&request, None)?;
        self.node.require_leader()?;
        let resolved = request.into_inner();
        let key = attempt_key(resolved.attempt)?;
        let image = ran_image(resolved.image_id, resolved.image_repo_digest)?
            .ok_or_else(|| Status::invalid_argument("the resolved image has no ID"))?;
        let outcome = self
            .node
            .propose_as(
                &identity,
                Command::ImageResolved {
                    key: key.clone(),
                    worker: identity.name.clone(),
                    image,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        let (run, reason) = match outcome {
            Outcome::ImageChecked { run, reason } => (run, reason),
            other => (false, format!("unexpected answer {other:?}")),
        };
        tracing::debug!(run = key.run, step = %key.step, attempt = key.attempt, worker = %identity.name, go = run, %reason, "image resolved");
        Ok(Response::new(proto::ImageResolvedResponse { run, reason }))
    }

    async fn push_logs(
        &self,
        request: Request<proto::LogBatch>,
    ) -> Result<Response<proto::Ack>, Status> {
        let identity = worker_identity(&request, None)?;
        self.node.require_leader()?;
        let batch = request.into_inner();
        let key = attempt_key(batch.attempt)?;
        if batch.lines.len() > MAX_LOG_LINES_PER_BATCH {
            return Err(Status::invalid_argument(format!(
                "a log batch may carry at most {MAX_LOG_LINES_PER_BATCH} lines"
            )));
        }
        let owner = self.node.read(|state| {
            state
                .runs
                .get(&key.run)
                .and_then(|run| run.step(&key.step))
                .and_then(|step| step.attempts.iter().find(|a| a.number == key.attempt))
                .map(|attempt| (attempt.worker.clone(), attempt.finished_ms.is_none()))
        });
        let (owner, running) = match owner {
            Some((owner, running)) => (Some(owner), running),
            None => (None, false),
        };
        if owner.as_deref() != Some(identity.name.as_str()) {
            return Err(not_this_worker(
                Action::StepStarted,
                format!("{key} was not assigned to worker \"{}\"", identity.name),
            ));
        }
        let records: Vec<LogRecord> = batch
            .lines
            .into_iter()
            .map(|line| {
                let mut text = line.text;
                if text.len() > MAX_LOG_LINE_BYTES {
                    let mut cut = MAX_LOG_LINE_BYTES;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push_str(" …[line truncated]");
                }
                LogRecord {
                    step: key.step.clone(),
                    attempt: key.attempt,
                    stream: if line.stream == "stderr" {
                        "stderr"
                    } else {
                        "stdout"
                    }
                    .to_string(),
                    seq: line.seq,
                    timestamp_ms: line.timestamp_ms,
                    text,
                }
            })
            .collect();
        // Live lines are kept in memory, the newest of each running attempt
        // (`node::live_logs`): the attempt's log is stored once, as the blob
        // its worker uploads with the report. Lines of an attempt that has
        // already ended add nothing (its blob has them).
        if running {
            self.node
                .live_logs
                .append(key.run, &key.step, key.attempt, records);
            self.node.logs_appended();
        }
        let node = &self.node;
        node.live_logs.sweep(|run, step, attempt| {
            node.read(|state| {
                state
                    .runs
                    .get(&run)
                    .and_then(|run| run.step(step))
                    .and_then(|step| step.attempts.iter().find(|a| a.number == attempt))
                    .is_some_and(|attempt| attempt.finished_ms.is_none())
            })
        });
        Ok(Response::new(proto::Ack {
            accepted: true,
            detail: String::new(),
            retry: false,
        }))
    }

    async fn upload_artifact(
        &self,
        request: Request<Streaming<proto::Chunk>>,
    ) -> Result<Response<proto::BlobRef>, Status> {
        let caller = worker_identity(&request, None)?;
        let admins = self.node.membership.admins();
        self.node
            .read(|state| authorize::may(&caller, Action::UploadArtifact, state, admins))
            .map_err(Status::permission_denied)?;
        let blob = self.node.receive_replicated(request.into_inner()).await?;
        self.node.metrics.blob_uploaded("artifact", blob.size);
        Ok(Response::new(blob))
    }

    type FetchBlobStream = ResponseStream<proto::Chunk>;

    async fn fetch_blob(
        &self,
        request: Request<proto::BlobRef>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let identity = worker_identity(&request, None)?;
        let facts = peer_certificate(&request)?;
        let digest = request.into_inner().digest;
        // Only the blobs of attempts assigned to this worker (the table's
        // `FetchBlob` row).
        self.node
            .read(|state| crate::node::authorize::may_fetch_blob(&identity, &digest, state))
            .map_err(Status::permission_denied)?;
        self.node.ensure_blob(&digest).await?;
        Ok(Response::new(until_revoked(
            send_blob(&self.node.blobs, &digest).await?,
            self.node.clone(),
            facts,
        )))
    }

    async fn blob_urls(
        &self,
        request: Request<proto::BlobUrlsRequest>,
    ) -> Result<Response<proto::BlobUrlsResponse>, Status> {
        let identity = worker_identity(&request, None)?;
        let answer = direct::blob_urls(&self.node, &identity, request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn prepare_upload(
        &self,
        request: Request<proto::PrepareUploadRequest>,
    ) -> Result<Response<proto::PrepareUploadResponse>, Status> {
        let identity = worker_identity(&request, None)?;
        let answer = direct::prepare_upload(&self.node, &identity, request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn complete_upload(
        &self,
        request: Request<proto::CompleteUploadRequest>,
    ) -> Result<Response<proto::BlobRef>, Status> {
        let identity = worker_identity(&request, None)?;
        let answer = direct::complete_upload(&self.node, &identity, request.into_inner()).await?;
        self.node.metrics.blob_uploaded("artifact", answer.size);
        Ok(Response::new(answer))
    }

    async fn step_finished(
        &self,
        request: Request<proto::StepFinishedRequest>,
    ) -> Result<Response<proto::Ack>, Status> {
        let identity = worker_identity(&request, None)?;
        self.node.require_leader()?;
        let ack = self.finish(&identity, request.into_inner()).await?;
        Ok(Response::new(ack))
    }

    async fn steps_finished(
        &self,
        request: Request<proto::StepsFinishedRequest>,
    ) -> Result<Response<proto::StepsFinishedResponse>, Status> {
        let identity = worker_identity(&request, None)?;
        self.node.require_leader()?;
        let reports = request.into_inner().reports;
        if reports.len() > MAX_REPORTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} reports in one call; at most {MAX_REPORTS_PER_CALL}",
                reports.len()
            )));
        }
        // Proposed together, so that they share Raft entries.
        let answers = futures::future::join_all(
            reports
                .into_iter()
                .map(|finished| self.finish(&identity, finished)),
        )
        .await;
        let acks = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(ack) => ack,
                Err(status) => proto::Ack {
                    accepted: false,
                    detail: status.message().to_string(),
                    retry: !ferry_common::channel::is_refusal(status.code()),
                },
            })
            .collect();
        Ok(Response::new(proto::StepsFinishedResponse { acks }))
    }
}

impl AgentService {
    /// Takes one report: checks it, makes sure its outputs and log are stored,
    /// and proposes `StepFinished`.
    async fn finish(
        &self,
        identity: &Identity,
        finished: proto::StepFinishedRequest,
    ) -> Result<proto::Ack, Status> {
        let key = attempt_key(finished.attempt)?;
        let outcome = match finished.outcome.as_str() {
            "exited" => ReportedOutcome::Exited,
            "timed_out" => ReportedOutcome::TimedOut,
            "cancelled" => ReportedOutcome::Cancelled,
            "error" => ReportedOutcome::Error,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown outcome \"{other}\"; expected exited, timed_out, cancelled or error"
                )));
            }
        };
        for output in &finished.outputs {
            // Uploads reach a majority before they are acknowledged; a new leader
            // that missed one copies it from a peer here.
            let stored = self.node.ensure_blob(&output.digest).await.ok();
            if stored != Some(output.size) {
                return Err(Status::failed_precondition(format!(
                    "output \"{}\" ({}) was not uploaded before the report",
                    output.name, output.digest
                )));
            }
        }
        let log = match finished.log {
            Some(log) if !log.digest.is_empty() => {
                let stored = self.node.ensure_blob(&log.digest).await.ok();
                if stored != Some(log.size) {
                    return Err(Status::failed_precondition(format!(
                        "the attempt's log ({}) was not uploaded before the report",
                        log.digest
                    )));
                }
                Some((log.digest, log.size))
            }
            _ => None,
        };
        check_metrics(&finished.metrics)?;
        let image = ran_image(finished.image_id, finished.image_repo_digest)?;
        let report = AttemptReport {
            metrics: finished
                .metrics
                .into_iter()
                .map(|m| MetricPoint {
                    name: m.name,
                    value: m.value,
                    step: m.has_step.then_some(m.step),
                })
                .collect(),
            log,
            outcome,
            exit_code: finished.has_exit_code.then_some(finished.exit_code),
            reason: (!finished.reason.is_empty()).then_some(finished.reason),
            outputs: finished
                .outputs
                .into_iter()
                .map(|o| (o.name, o.digest, o.size))
                .collect(),
            ran_ms: finished.has_ran_ms.then_some(finished.ran_ms),
            image,
            usage: (finished.cpu_time_ms > 0 || finished.peak_memory_bytes > 0).then_some(
                AttemptUsage {
                    cpu_time_ms: finished.cpu_time_ms,
                    peak_memory_bytes: finished.peak_memory_bytes,
                },
            ),
        };
        let outcome = self
            .node
            .propose_as(
                identity,
                Command::StepFinished {
                    key: key.clone(),
                    worker: identity.name.clone(),
                    report,
                    now_ms: now_ms(),
                    placements: Vec::new(),
                },
            )
            .await
            .map_err(propose_status)?;
        let ack = report_ack(outcome);
        if ack.accepted {
            // The report is applied: the attempt's blob is its log now.
            self.node
                .live_logs
                .drop_attempt(key.run, &key.step, key.attempt);
        }
        // Routine at debug (one line per step is a write per step at thousands of
        // steps a second); a refused report is worth a warning.
        if ack.accepted {
            tracing::debug!(run = key.run, step = %key.step, attempt = key.attempt, worker = %identity.name, "step finished");
        } else {
            tracing::warn!(
                run = key.run, step = %key.step, attempt = key.attempt, worker = %identity.name,
                detail = %ack.detail, "report refused"
            );
        }
        Ok(ack)
    }
}

/// The metrics of a report, before they go into a replicated command: bounded,
/// named, and finite (a NaN or an infinity has no JSON form, so no record in a
/// Raft entry or a snapshot could hold it).
fn check_metrics(metrics: &[proto::Metric]) -> Result<(), Status> {
    if metrics.len() > MAX_METRICS_PER_ATTEMPT {
        return Err(Status::invalid_argument(format!(
            "{} metric values in one report; at most {MAX_METRICS_PER_ATTEMPT}",
            metrics.len()
        )));
    }
    if let Some(long) = metrics
        .iter()
        .find(|m| m.name.is_empty() || m.name.len() > MAX_METRIC_NAME_LEN)
    {
        return Err(Status::invalid_argument(format!(
            "metric name {:?} must have 1 to {MAX_METRIC_NAME_LEN} bytes",
            long.name
        )));
    }
    if let Some(odd) = metrics.iter().find(|m| !m.value.is_finite()) {
        return Err(Status::invalid_argument(format!(
            "metric {:?} has the value {}: only finite numbers are metrics",
            odd.name, odd.value
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_carry_only_finite_named_metrics() {
        let metric = |name: &str, value: f64| proto::Metric {
            name: name.into(),
            value,
            ..Default::default()
        };
        assert!(check_metrics(&[metric("loss", 0.5), metric("acc", -1e300)]).is_ok());
        for (bad, says) in [
            (metric("loss", f64::NAN), "\"loss\" has the value NaN"),
            (metric("loss", f64::INFINITY), "has the value inf"),
            (metric("", 1.0), "must have 1 to 128 bytes"),
            (metric(&"n".repeat(129), 1.0), "must have 1 to 128 bytes"),
        ] {
            let status = check_metrics(&[metric("ok", 1.0), bad]).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(says), "{}", status.message());
        }
        let many = vec![metric("m", 1.0); MAX_METRICS_PER_ATTEMPT + 1];
        assert!(check_metrics(&many).is_err());
    }
}
