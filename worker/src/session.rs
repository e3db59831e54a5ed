//! The worker's session with the coordinators: find the leader among them,
//! register with capacity and the attempts still in hand, heartbeat, take
//! assignments and cancellations from one stream, start attempts, and deliver their
//! reports. [`Coordinators`] is the one shared choice of coordinator that the
//! session and every attempt call; a follower's leader hint, a lost connection or
//! a member without a leader moves it, and running attempts carry on through it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::channel::{ChannelError, parse_address};
use ferry_common::pki::{PkiError, TlsMaterial};
use ferry_common::proto::{self, agent_client::AgentClient, worker_message::Kind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::WorkerConfig;
use crate::executor::{Agent, ExecutorContext, run_attempt};
use crate::fingerprint::{Capacity, FingerprintError, discover};
use crate::usage::Monitor;
use crate::workdirs::WorkDirs;

/// Largest gRPC message accepted from the coordinator.
/// How often the process groups of running attempts are sampled (CPU, memory).
const USAGE_SAMPLE_PERIOD: Duration = Duration::from_millis(250);
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
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// The metadata key of a follower's `Unavailable` answer that names the leader's
/// client address (`HOST:PORT`).
pub const LEADER_METADATA_KEY: &str = "ferry-leader";

/// First wait before trying another coordinator after a failure; it doubles with
/// each failure in a row, up to [`SWITCH_BACKOFF_MAX`].
const SWITCH_BACKOFF_START: Duration = Duration::from_millis(50);
const SWITCH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The leader's address that a follower named in its answer, if it named one.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let hint = status
        .metadata()
        .get(LEADER_METADATA_KEY)?
        .to_str()
        .ok()?
        .trim();
    (!hint.is_empty() && parse_address(hint).is_ok()).then(|| hint.to_string())
}

/// Errors after which another coordinator, or the same one a little later, may
/// answer: not the leader, no leader yet, a member shutting down, a dropped
/// connection.
pub fn calls_for_another_coordinator(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// The wait before the next try after `failures` failures in a row.
fn switch_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (SWITCH_BACKOFF_START * 2u32.pow(doublings)).min(SWITCH_BACKOFF_MAX)
}

/// The coordinator in use: its client, and the generation of the choice, which
/// tells a failure on it from a failure on a coordinator already left behind.
#[derive(Clone)]
pub struct CurrentCoordinator {
    pub generation: u64,
    pub address: String,
    pub agent: Agent,
}

/// The one coordinator this worker talks to now, shared by the session and every
/// attempt, with one lazily connected channel per address it has used.
pub struct Coordinators {
    worker: String,
    /// The configured addresses, in the order they are tried; never empty.
    addresses: Vec<String>,
    tls: TlsMaterial,
    choice: Mutex<Choice>,
    /// The generation of the current choice, for the session to notice a switch
    /// made by an attempt's call.
    switched: watch::Sender<u64>,
}

struct Choice {
    current: CurrentCoordinator,
    /// Where in `addresses` the search for the leader stands; a failure without a
    /// hint moves to the address after it.
    position: usize,
    /// Failures in a row since a coordinator last answered; sets the backoff.
    failures: u32,
    clients: HashMap<String, Agent>,
}

impl Coordinators {
    /// Starts with the first configured address; nothing is dialled yet.
    pub fn new(
        worker: &str,
        addresses: Vec<String>,
        tls: TlsMaterial,
    ) -> Result<Coordinators, ChannelError> {
        let mut clients = HashMap::new();
        for address in &addresses {
            clients.insert(address.clone(), client_for(address, &tls)?);
        }
        let first = addresses.first().ok_or_else(|| ChannelError::BadAddress {
            address: String::new(),
            reason: "no coordinator address is configured".into(),
        })?;
        let current = CurrentCoordinator {
            generation: 0,
            address: first.clone(),
            agent: clients[first].clone(),
        };
        let (switched, _) = watch::channel(0);
        Ok(Coordinators {
            worker: worker.to_string(),
            addresses,
            tls,
            choice: Mutex::new(Choice {
                current,
                position: 0,
                failures: 0,
                clients,
            }),
            switched,
        })
    }

    pub fn current(&self) -> CurrentCoordinator {
        self.choice
            .lock()
            .expect("coordinator lock")
            .current
            .clone()
    }

    /// Changes to the generation of the current choice.
    pub fn switches(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// The coordinator of `generation` answered (whatever it said): the backoff
    /// starts over.
    pub fn answered(&self, generation: u64) {
        let mut choice = self.choice.lock().expect("coordinator lock");
        if choice.current.generation == generation {
            choice.failures = 0;
        }
    }

    /// The coordinator of `generation` failed with `status`. Unless someone already
    /// moved on from it, switch: to the leader it named, else to the next configured
    /// address. Returns how long to wait before the next try.
    pub fn failed(&self, generation: u64, status: &tonic::Status) -> Duration {
        let mut choice = self.choice.lock().expect("coordinator lock");
        if choice.current.generation != generation {
            // Another call already switched away from that coordinator.
            return Duration::ZERO;
        }
        choice.failures += 1;
        let hinted = leader_hint(status)
            .filter(|hint| *hint != choice.current.address)
            .and_then(|hint| match choice.clients.get(&hint) {
                Some(agent) => Some((hint, agent.clone())),
                None => match client_for(&hint, &self.tls) {
                    Ok(agent) => {
                        choice.clients.insert(hint.clone(), agent.clone());
                        Some((hint, agent))
                    }
                    Err(error) => {
                        tracing::warn!(worker = %self.worker, coordinator = %hint, %error, "ignoring the leader hint");
                        None
                    }
                },
            });
        let (address, agent, delay) = match hinted {
            Some((address, agent)) => {
                if let Some(position) = self.addresses.iter().position(|a| *a == address) {
                    choice.position = position;
                }
                // A hint is followed at once, unless hints have led round in a circle
                // for longer than one pass over the list.
                let delay = if choice.failures as usize <= self.addresses.len() + 1 {
                    Duration::ZERO
                } else {
                    switch_backoff(choice.failures)
                };
                (address, agent, delay)
            }
            None => {
                choice.position = (choice.position + 1) % self.addresses.len();
                let address = self.addresses[choice.position].clone();
                let agent = choice.clients[&address].clone();
                (address, agent, switch_backoff(choice.failures))
            }
        };
        let previous = std::mem::replace(
            &mut choice.current,
            CurrentCoordinator {
                generation: generation + 1,
                address: address.clone(),
                agent,
            },
        );
        self.switched.send_replace(generation + 1);
        if previous.address == address {
            tracing::warn!(worker = %self.worker, coordinator = %address, code = ?status.code(), reason = status.message(), ?delay, "the coordinator failed; trying it again");
        } else if delay.is_zero() {
            tracing::info!(worker = %self.worker, coordinator = %address, previous = %previous.address, "switching to the leader the coordinator named");
        } else {
            tracing::warn!(worker = %self.worker, coordinator = %address, previous = %previous.address, code = ?status.code(), reason = status.message(), ?delay, "switching coordinator");
        }
        delay
    }

    /// Makes a call on the current coordinator, and again on the next one after an
    /// error that calls for another coordinator, until it is answered or `give_up`
    /// (if any) passes; then the last error is returned.
    pub async fn call<T, F, Fut>(
        &self,
        give_up: Option<Instant>,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(Agent) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        loop {
            let coordinator = self.current();
            match call(coordinator.agent).await {
                Ok(response) => {
                    self.answered(coordinator.generation);
                    return Ok(response.into_inner());
                }
                Err(status) => match self.retry_after(coordinator.generation, &status, give_up) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(status),
                },
            }
        }
    }

    /// After the coordinator of `generation` answered a call with `status`: the wait
    /// before trying again (on the coordinator switched to), or `None` when the call
    /// should not be tried again (it was answered, or `give_up` comes first).
    pub fn retry_after(
        &self,
        generation: u64,
        status: &tonic::Status,
        give_up: Option<Instant>,
    ) -> Option<Duration> {
        if !calls_for_another_coordinator(status) {
            self.answered(generation);
            return None;
        }
        let delay = self.failed(generation, status);
        match give_up {
            Some(give_up) if Instant::now() + delay >= give_up => None,
            _ => Some(delay),
        }
    }
}

fn client_for(address: &str, tls: &TlsMaterial) -> Result<Agent, ChannelError> {
    let channel = ferry_common::channel::endpoint(address, tls)?.connect_lazy();
    Ok(AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
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
    let data_dir_error = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| WorkerError::DataDir { path, source }
    };
    for kept in ["logs", "metrics"] {
        let dir = config.data_dir.join(kept);
        std::fs::create_dir_all(&dir).map_err(data_dir_error(&dir))?;
    }
    let work = config.data_dir.join("work");
    let work_dirs = Arc::new(WorkDirs::open(work.clone()).map_err(data_dir_error(&work))?);
    let coordinators = Arc::new(Coordinators::new(
        &config.name,
        config.coordinators.clone(),
        tls,
    )?);
    tracing::info!(
        worker = %config.name,
        cpus = capacity.cpu_millis as f64 / 1000.0,
        memory_bytes = capacity.memory_bytes,
        gpus = capacity.gpus.len(),
        coordinators = %config.coordinators.join(","),
        "worker starting"
    );
    let ctx = ExecutorContext {
        coordinators: coordinators.clone(),
        data_dir: config.data_dir.clone(),
        gpus: capacity.gpus.clone(),
        max_log_bytes: config.max_log_bytes_per_attempt,
        monitor: Monitor::start(USAGE_SAMPLE_PERIOD, shutdown.clone()),
        reports: Reports::start(coordinators.clone(), shutdown.clone()),
        memory_limit_factor: config.memory_limit_factor,
        work_dirs,
    };
    let attempts = Attempts::default();
    let mut tasks = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        let coordinator = coordinators.current();
        let generation = coordinator.generation;
        let ended = tokio::select! {
            result = session(&config, &capacity, &ctx, coordinator, &attempts, &mut tasks, shutdown.clone()) => result,
            _ = stop.wait_for(|s| *s) => Ok(SessionEnd::Switched),
        };
        if *shutdown.borrow() {
            break;
        }
        let delay = match ended {
            // Re-register at once with the coordinator an attempt's call moved to.
            Ok(SessionEnd::Switched) => Duration::ZERO,
            Ok(SessionEnd::StreamEnded) => {
                tracing::warn!(worker = %config.name, "assignment stream ended; reconnecting");
                coordinators.failed(
                    generation,
                    &tonic::Status::unavailable("the assignment stream ended"),
                )
            }
            // `failed` says what happened and where the session goes next.
            Err(status) => coordinators.failed(generation, &status),
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    tracing::info!("worker stopping; cancelling running attempts");
    for cancel in attempts.0.lock().expect("attempts lock").values() {
        let _ = cancel.send(true);
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Why a session ended without an error.
enum SessionEnd {
    /// The coordinator closed the assignment stream.
    StreamEnded,
    /// Another call switched to another coordinator.
    Switched,
}

/// One session with `coordinator`: register, then serve the assignment stream and
/// heartbeat until something fails or the choice of coordinator changes.
async fn session(
    config: &WorkerConfig,
    capacity: &Capacity,
    ctx: &ExecutorContext,
    coordinator: CurrentCoordinator,
    attempts: &Attempts,
    tasks: &mut JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, tonic::Status> {
    let mut switches = ctx.coordinators.switches();
    if *switches.borrow_and_update() != coordinator.generation {
        return Ok(SessionEnd::Switched);
    }
    let mut agent = coordinator.agent.clone();
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
    ctx.coordinators.answered(coordinator.generation);
    tracing::info!(
        worker = %config.name,
        coordinator = %coordinator.address,
        session = %registered.session,
        running = attempts.refs().len(),
        "registered with the coordinator"
    );
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        registered.heartbeat_interval_ms.max(100) as u64,
    ));
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(message) = message? else { return Ok(SessionEnd::StreamEnded) };
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
            _ = switches.changed() => return Ok(SessionEnd::Switched),
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
    tracing::debug!(run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt, "assignment received");
    let ctx = ctx.clone();
    let attempts = attempts.clone();
    tasks.spawn(async move {
        let report = run_attempt(&ctx, assignment, cancelled).await;
        tracing::info!(
            run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt,
            outcome = %report.outcome, exit_code = report.exit_code, reason = %report.reason,
            "attempt ended"
        );
        ctx.reports.deliver(report, shutdown).await;
        attempts.0.lock().expect("attempts lock").remove(&key);
    });
}

/// Most reports sent in one call.
const REPORT_BATCH: usize = 64;

/// Sends attempts' final reports, several per call: one call is in flight at a
/// time, and what piles up meanwhile goes in the next, so that a busy worker
/// sends few calls and an idle one sends each report at once.
#[derive(Clone)]
pub struct Reports {
    queue: mpsc::UnboundedSender<(proto::StepFinishedRequest, oneshot::Sender<()>)>,
}

impl Reports {
    /// Starts the sender; it stops when the worker shuts down.
    pub fn start(coordinators: Arc<Coordinators>, shutdown: watch::Receiver<bool>) -> Reports {
        let (queue, mut pending) =
            mpsc::unbounded_channel::<(proto::StepFinishedRequest, oneshot::Sender<()>)>();
        tokio::spawn(async move {
            let mut batched = true;
            while let Some(first) = pending.recv().await {
                let mut batch = vec![first];
                while batch.len() < REPORT_BATCH {
                    match pending.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                // Answered, or the worker stops (what is left is dropped with it).
                if batched && deliver_batch(&coordinators, &mut batch, shutdown.clone()).await {
                    continue;
                }
                // A coordinator without batch calls: one report per call.
                batched = false;
                for (report, done) in batch {
                    deliver(&coordinators, report, shutdown.clone()).await;
                    let _ = done.send(());
                }
            }
        });
        Reports { queue }
    }

    /// Delivers one report (see [`deliver`]); returns once it was answered or the
    /// worker stops.
    pub async fn deliver(
        &self,
        report: proto::StepFinishedRequest,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (done, answered) = oneshot::channel();
        if self.queue.send((report, done)).is_err() {
            return;
        }
        tokio::select! {
            _ = answered => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
}

/// Delivers a batch of reports, retrying what could not be taken, until each is
/// answered (its sender told) or the worker stops, and returns true. Returns
/// false, with the batch untouched, when the coordinator has no batch call.
async fn deliver_batch(
    coordinators: &Coordinators,
    batch: &mut Vec<(proto::StepFinishedRequest, oneshot::Sender<()>)>,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let mut delay = Duration::from_millis(100);
    while !batch.is_empty() {
        let request = proto::StepsFinishedRequest {
            reports: batch.iter().map(|(report, _)| report.clone()).collect(),
        };
        let answer = tokio::select! {
            answer = coordinators.call(None, |mut agent| {
                let request = request.clone();
                async move { agent.steps_finished(request).await }
            }) => answer,
            _ = shutdown.wait_for(|s| *s) => return true,
        };
        match answer {
            Ok(answer) if answer.acks.len() == batch.len() => {
                let mut again = Vec::new();
                for ((report, done), ack) in batch.drain(..).zip(answer.acks) {
                    if ack.retry {
                        again.push((report, done));
                        continue;
                    }
                    if !ack.accepted {
                        tracing::warn!(detail = %ack.detail, "report refused as stale");
                    }
                    let _ = done.send(());
                }
                *batch = again;
            }
            Ok(answer) => {
                tracing::warn!(
                    sent = batch.len(),
                    answered = answer.acks.len(),
                    "the coordinator answered a different number of reports; sending them again"
                );
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => return false,
            Err(status) if ferry_common::channel::is_refusal(status.code()) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "reports refused");
                for (_, done) in batch.drain(..) {
                    let _ = done.send(());
                }
                return true;
            }
            Err(status) => tracing::debug!(%status, "reports not delivered; retrying"),
        }
        if batch.is_empty() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return true,
        }
        delay = (delay * 2).min(Duration::from_secs(3));
    }
    true
}

/// Delivers a report to the current coordinator, retrying through failovers and
/// restarts until it is answered (accepted or refused as stale) or the worker stops.
/// A report is idempotent (by step and attempt), so sending it again is safe.
async fn deliver(
    coordinators: &Coordinators,
    report: proto::StepFinishedRequest,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let answer = tokio::select! {
            answer = coordinators.call(None, |mut agent| {
                let report = report.clone();
                async move { agent.step_finished(report).await }
            }) => answer,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match answer {
            Ok(ack) => {
                if !ack.accepted {
                    tracing::warn!(detail = %ack.detail, "report refused as stale");
                }
                return;
            }
            Err(status) if ferry_common::channel::is_refusal(status.code()) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable_with_hint(hint: &str) -> tonic::Status {
        let mut status = tonic::Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, hint.parse().unwrap());
        status
    }

    fn coordinators(addresses: &[&str]) -> (tempfile::TempDir, Coordinators) {
        let dir = tempfile::tempdir().unwrap();
        ferry_common::pki::init_ca(dir.path()).unwrap();
        ferry_common::pki::issue(
            dir.path(),
            dir.path(),
            ferry_common::pki::Role::Worker,
            "w1",
            &[],
            &[],
        )
        .unwrap();
        let tls = ferry_common::pki::TlsFiles::in_dir(dir.path(), "w1")
            .load()
            .unwrap();
        let addresses = addresses.iter().map(|a| a.to_string()).collect();
        (dir, Coordinators::new("w1", addresses, tls).unwrap())
    }

    #[test]
    fn the_leader_hint_comes_from_an_unavailable_answer_only() {
        assert_eq!(
            leader_hint(&unavailable_with_hint("10.0.0.2:7443")).as_deref(),
            Some("10.0.0.2:7443")
        );
        assert_eq!(
            leader_hint(&unavailable_with_hint(" b:2 ")).as_deref(),
            Some("b:2")
        );
        // No leader known: no hint.
        assert_eq!(leader_hint(&tonic::Status::unavailable("no leader")), None);
        // An empty or malformed hint is no hint.
        assert_eq!(leader_hint(&unavailable_with_hint("")), None);
        assert_eq!(leader_hint(&unavailable_with_hint("nohost")), None);
        // Only `Unavailable` carries a hint.
        let mut refused = tonic::Status::permission_denied("no");
        refused
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "b:2".parse().unwrap());
        assert_eq!(leader_hint(&refused), None);
    }

    #[test]
    fn failures_that_call_for_another_coordinator() {
        assert!(calls_for_another_coordinator(&tonic::Status::unavailable(
            "x"
        )));
        assert!(calls_for_another_coordinator(&tonic::Status::unknown(
            "h2 error"
        )));
        assert!(calls_for_another_coordinator(&tonic::Status::cancelled(
            "x"
        )));
        assert!(!calls_for_another_coordinator(
            &tonic::Status::permission_denied("x")
        ));
        assert!(!calls_for_another_coordinator(&tonic::Status::not_found(
            "x"
        )));
    }

    #[test]
    fn backoff_starts_short_and_is_capped() {
        assert_eq!(switch_backoff(1), Duration::from_millis(50));
        assert_eq!(switch_backoff(2), Duration::from_millis(100));
        assert_eq!(switch_backoff(4), Duration::from_millis(400));
        assert_eq!(switch_backoff(6), Duration::from_secs(1));
        assert_eq!(switch_backoff(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_hint_is_followed_at_once_and_failures_move_down_the_list() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2", "c:3"]);
        let mut switches = coordinators.switches();
        let first = coordinators.current();
        assert_eq!((first.generation, first.address.as_str()), (0, "a:1"));

        // A follower names the leader: switch to it without waiting.
        let delay = coordinators.failed(0, &unavailable_with_hint("c:3"));
        assert_eq!(delay, Duration::ZERO);
        let now = coordinators.current();
        assert_eq!((now.generation, now.address.as_str()), (1, "c:3"));
        assert!(switches.has_changed().unwrap());
        assert_eq!(*switches.borrow_and_update(), 1);

        // A failure reported on a coordinator already left behind changes nothing.
        assert_eq!(
            coordinators.failed(0, &tonic::Status::unavailable("gone")),
            Duration::ZERO
        );
        assert_eq!(coordinators.current().generation, 1);
        assert!(!switches.has_changed().unwrap());

        // The leader dies: the next address after it (wrapping), with a short wait
        // that grows while nobody answers.
        let delay = coordinators.failed(1, &tonic::Status::unavailable("connection refused"));
        assert_eq!(coordinators.current().address, "a:1");
        assert_eq!(delay, switch_backoff(2));
        let delay = coordinators.failed(2, &tonic::Status::unavailable("no leader"));
        assert_eq!(coordinators.current().address, "b:2");
        assert_eq!(delay, switch_backoff(3));

        // An answer resets the backoff.
        coordinators.answered(3);
        let delay = coordinators.failed(3, &tonic::Status::unknown("stream reset"));
        assert_eq!(delay, switch_backoff(1));
        assert_eq!(coordinators.current().address, "c:3");
    }

    #[tokio::test]
    async fn hints_outside_the_list_are_followed_and_hints_to_itself_are_not() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        // The leader's advertised address need not be one of the configured ones.
        coordinators.failed(0, &unavailable_with_hint("10.1.1.1:7443"));
        assert_eq!(coordinators.current().address, "10.1.1.1:7443");
        // A member naming itself as the leader while refusing: try the next one.
        coordinators.failed(1, &unavailable_with_hint("10.1.1.1:7443"));
        assert_eq!(coordinators.current().address, "b:2");
    }

    #[tokio::test]
    async fn hints_going_round_in_a_circle_are_slowed_down() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        let mut delays = Vec::new();
        for generation in 0..6 {
            let hint = if generation % 2 == 0 { "b:2" } else { "a:1" };
            delays.push(coordinators.failed(generation, &unavailable_with_hint(hint)));
        }
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert!(delays[3..].iter().all(|d| !d.is_zero()), "{delays:?}");
    }

    #[tokio::test]
    async fn a_call_follows_the_switch_and_gives_up_on_time() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        let mut seen = Vec::new();
        let answer = coordinators
            .call(None, |_agent| {
                let address = coordinators.current().address;
                seen.push(address.clone());
                async move {
                    if address == "a:1" {
                        Err(unavailable_with_hint("b:2"))
                    } else {
                        Ok(tonic::Response::new(7))
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(seen, ["a:1", "b:2"]);

        // An answer that is not about leadership or reachability is returned as is.
        let refused: Result<(), _> = coordinators
            .call(None, |_agent| async {
                Err(tonic::Status::permission_denied("not yours"))
            })
            .await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);

        let give_up = Instant::now() + Duration::from_millis(300);
        let down: Result<(), _> = coordinators
            .call(Some(give_up), |_agent| async {
                Err(tonic::Status::unavailable("connection refused"))
            })
            .await;
        assert_eq!(down.unwrap_err().code(), tonic::Code::Unavailable);
        assert!(Instant::now() < give_up + Duration::from_millis(50));
    }
}
