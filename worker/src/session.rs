//! The worker's session with the coordinator: register with capacity and the
//! attempts still in hand, heartbeat, take assignments and cancellations from one
//! stream, start attempts, and deliver their reports. A lost connection is retried
//! with backoff; running attempts carry on through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::pki::PkiError;
use ferry_common::proto::{self, agent_client::AgentClient, worker_message::Kind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::WorkerConfig;
use crate::executor::{Agent, ExecutorContext, run_attempt};
use crate::fingerprint::{Capacity, FingerprintError, discover};

/// Largest gRPC message accepted from the coordinator.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Tls(#[from] PkiError),
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    #[error(transparent)]
    Channel(#[from] ferry_common::channel::ChannelError),
    #[error(
        "the worker is named \"{config}\" in its configuration but its certificate is for \"{cert}\""
    )]
    NameMismatch { config: String, cert: String },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

type Key = (u64, String, u32);

fn key_of(attempt: &proto::AttemptRef) -> Key {
    (attempt.run_id, attempt.step.clone(), attempt.attempt)
}

/// Attempts this worker holds (running, or finished and not yet reported), with
/// the switch that cancels each.
#[derive(Clone, Default)]
struct Attempts(Arc<Mutex<HashMap<Key, watch::Sender<bool>>>>);

impl Attempts {
    fn refs(&self) -> Vec<proto::AttemptRef> {
        self.0
            .lock()
            .expect("attempts lock")
            .keys()
            .map(|(run_id, step, attempt)| proto::AttemptRef {
                run_id: *run_id,
                step: step.clone(),
                attempt: *attempt,
            })
            .collect()
    }
}

/// Runs the worker until `shutdown` turns true; then cancels what still runs.
pub async fn run(config: WorkerConfig, shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
    let tls = config.tls.load()?;
    if tls.identity.name != config.name {
        return Err(WorkerError::NameMismatch {
            config: config.name.clone(),
            cert: tls.identity.name.clone(),
        });
    }
    let capacity = discover(&config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| WorkerError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let channel = ferry_common::channel::endpoint(&config.coordinator, &tls)?.connect_lazy();
    let agent = AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(
        worker = %config.name,
        cpus = capacity.cpu_millis as f64 / 1000.0,
        memory_bytes = capacity.memory_bytes,
        gpus = capacity.gpus.len(),
        coordinator = %config.coordinator,
        "worker starting"
    );
    let ctx = ExecutorContext {
        agent: agent.clone(),
        data_dir: config.data_dir.clone(),
        gpus: capacity.gpus.clone(),
        max_log_bytes: config.max_log_bytes_per_attempt,
    };
    let attempts = Attempts::default();
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut stop = shutdown.clone();
    loop {
        let session = tokio::select! {
            result = session(&config, &capacity, &ctx, &attempts, &mut tasks, shutdown.clone()) => result,
            _ = stop.wait_for(|s| *s) => Ok(()),
        };
        if *shutdown.borrow() {
            break;
        }
        match session {
            Ok(()) => tracing::warn!("assignment stream ended; reconnecting"),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "session with the coordinator failed; reconnecting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
    tracing::info!("worker stopping; cancelling running attempts");
    for cancel in attempts.0.lock().expect("attempts lock").values() {
        let _ = cancel.send(true);
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn session(
    config: &WorkerConfig,
    capacity: &Capacity,
    ctx: &ExecutorContext,
    attempts: &Attempts,
    tasks: &mut JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::Status> {
    let mut agent = ctx.agent.clone();
    let registered = agent
        .register(proto::RegisterRequest {
            name: config.name.clone(),
            capacity: Some(proto::Resources {
                cpu_millis: capacity.cpu_millis,
                memory_bytes: capacity.memory_bytes,
                gpus: capacity.gpus.len() as u32,
            }),
            labels: config.labels.clone().into_iter().collect(),
            gpus: capacity.gpus.clone(),
            running: attempts.refs(),
        })
        .await?
        .into_inner();
    let mut stream = agent
        .assignments(proto::AssignmentsRequest {
            name: config.name.clone(),
            session: registered.session.clone(),
        })
        .await?
        .into_inner();
    tracing::info!(session = %registered.session, "registered with the coordinator");
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        registered.heartbeat_interval_ms.max(100) as u64,
    ));
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(message) = message? else { return Ok(()) };
                match message.kind {
                    Some(Kind::Assign(assignment)) => start(ctx, attempts, tasks, assignment, shutdown.clone()),
                    Some(Kind::Cancel(attempt)) => {
                        if let Some(cancel) = attempts.0.lock().expect("attempts lock").get(&key_of(&attempt)) {
                            tracing::info!(run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt, "cancel requested");
                            let _ = cancel.send(true);
                        }
                    }
                    None => {}
                }
            }
            _ = heartbeat.tick() => {
                agent.heartbeat(proto::HeartbeatRequest {
                    name: config.name.clone(),
                    session: registered.session.clone(),
                    running: attempts.refs(),
                }).await?;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

fn start(
    ctx: &ExecutorContext,
    attempts: &Attempts,
    tasks: &mut JoinSet<()>,
    assignment: proto::Assignment,
    shutdown: watch::Receiver<bool>,
) {
    let Some(attempt) = assignment.attempt.clone() else {
        return;
    };
    let key = key_of(&attempt);
    let (cancel, cancelled) = watch::channel(false);
    {
        let mut held = attempts.0.lock().expect("attempts lock");
        if held.contains_key(&key) {
            // Sent again after a reconnect: it is already in hand.
            return;
        }
        held.insert(key.clone(), cancel);
    }
    tracing::info!(run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt, "assignment received");
    let ctx = ctx.clone();
    let attempts = attempts.clone();
    tasks.spawn(async move {
        let report = run_attempt(&ctx, assignment, cancelled).await;
        tracing::info!(
            run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt,
            outcome = %report.outcome, exit_code = report.exit_code, reason = %report.reason,
            "attempt ended"
        );
        deliver(&ctx.agent, report, shutdown).await;
        attempts.0.lock().expect("attempts lock").remove(&key);
    });
}

/// Delivers a report, retrying through coordinator restarts until it is answered
/// (accepted or refused as stale) or the worker stops.
async fn deliver(
    agent: &Agent,
    report: proto::StepFinishedRequest,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match agent.clone().step_finished(report.clone()).await {
            Ok(ack) => {
                let ack = ack.into_inner();
                if !ack.accepted {
                    tracing::warn!(detail = %ack.detail, "report refused as stale");
                }
                return;
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::NotFound
                        | tonic::Code::FailedPrecondition
                ) =>
            {
                tracing::warn!(code = ?status.code(), message = status.message(), "report refused");
                return;
            }
            Err(status) => {
                tracing::debug!(%status, "report not delivered; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(3));
            }
        }
    }
}
