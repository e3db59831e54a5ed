//! The coordinator's runtime around the state machine: one apply loop that takes
//! proposed commands in batches, applies them, persists the result with the applied
//! index, and only then answers the proposers and pushes work to workers; and the
//! scheduling loop that turns free capacity into `Assign` commands.
//!
//! Raft slots in between `propose` and `apply` in the next step of the design: the
//! apply loop will consume committed entries instead of local proposals.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry_common::proto;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::blobs::BlobStore;
use crate::scheduler;
use crate::state::{AttemptKey, Command, Outcome, State, StateError};
use crate::store::{Store, StoreError};

/// Most commands applied (and flushed) together.
const MAX_BATCH: usize = 512;
/// Room in each worker's assignment stream before it is considered stuck.
pub const WORKER_STREAM_DEPTH: usize = 1024;

pub type WorkerSender = mpsc::Sender<Result<proto::WorkerMessage, Status>>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] StateError),
    #[error("the coordinator could not persist the change: {0}")]
    Storage(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
}

struct WorkerLink {
    session: String,
    sender: WorkerSender,
}

pub struct Node {
    state: RwLock<State>,
    proposals: mpsc::Sender<Proposal>,
    pub store: Store,
    pub blobs: BlobStore,
    state_version: watch::Sender<u64>,
    log_version: watch::Sender<u64>,
    links: Mutex<HashMap<String, WorkerLink>>,
    heartbeats: Mutex<HashMap<String, i64>>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The node's background tasks; stopping them is part of shutting the node down.
pub struct NodeTasks {
    handles: Vec<JoinHandle<()>>,
}

impl NodeTasks {
    pub async fn join(self) {
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

impl Node {
    /// Loads the state from the store and starts the apply and scheduling loops,
    /// which run until `shutdown` turns true.
    pub fn start(
        store: Store,
        blobs: BlobStore,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<Node>, NodeTasks), StoreError> {
        let (state, applied) = store.load()?;
        tracing::info!(
            applied_index = applied,
            runs = state.runs.len(),
            workers = state.workers.len(),
            "state loaded"
        );
        let (proposals, receiver) = mpsc::channel(4096);
        let node = Arc::new(Node {
            state: RwLock::new(state),
            proposals,
            store,
            blobs,
            state_version: watch::channel(0).0,
            log_version: watch::channel(0).0,
            links: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
        });
        let apply = tokio::spawn(apply_loop(
            node.clone(),
            receiver,
            applied,
            shutdown.clone(),
        ));
        let schedule = tokio::spawn(schedule_loop(node.clone(), shutdown));
        Ok((
            node,
            NodeTasks {
                handles: vec![apply, schedule],
            },
        ))
    }

    /// Proposes a command and waits until it is applied and durable.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        answer.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    /// Runs `read` on the current state.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.state.read().expect("state lock poisoned"))
    }

    pub fn subscribe_state(&self) -> watch::Receiver<u64> {
        self.state_version.subscribe()
    }

    pub fn subscribe_logs(&self) -> watch::Receiver<u64> {
        self.log_version.subscribe()
    }

    pub fn logs_appended(&self) {
        self.log_version.send_modify(|v| *v += 1);
    }

    pub fn heartbeat(&self, worker: &str) {
        self.heartbeats
            .lock()
            .expect("heartbeat lock")
            .insert(worker.to_string(), now_ms());
    }

    pub fn last_heartbeat(&self, worker: &str) -> Option<i64> {
        self.heartbeats
            .lock()
            .expect("heartbeat lock")
            .get(worker)
            .copied()
    }

    pub fn is_connected(&self, worker: &str) -> bool {
        self.links
            .lock()
            .expect("links lock")
            .get(worker)
            .is_some_and(|link| !link.sender.is_closed())
    }

    /// Attaches a worker's assignment stream (replacing an older one) and sends it
    /// every attempt that is assigned to it but not yet started.
    pub fn attach_worker(&self, worker: &str, session: &str, sender: WorkerSender) {
        self.links.lock().expect("links lock").insert(
            worker.to_string(),
            WorkerLink {
                session: session.to_string(),
                sender,
            },
        );
        self.heartbeat(worker);
        let pending = self.read(|state| state.assigned_to(worker));
        for key in pending {
            self.push_assignment(&key, worker);
        }
        tracing::info!(worker, session, "worker stream attached");
        self.state_version.send_modify(|v| *v += 1);
    }

    pub fn session_of(&self, worker: &str) -> Option<String> {
        self.links
            .lock()
            .expect("links lock")
            .get(worker)
            .map(|link| link.session.clone())
    }

    fn send_to_worker(&self, worker: &str, message: proto::WorkerMessage) {
        let mut links = self.links.lock().expect("links lock");
        let Some(link) = links.get(worker) else {
            return;
        };
        if let Err(error) = link.sender.try_send(Ok(message)) {
            // A full or closed stream is dropped: the worker reconnects and is sent
            // everything still assigned to it.
            tracing::warn!(worker, %error, "worker stream is not accepting; dropping it");
            links.remove(worker);
        }
    }

    /// Stops, on the worker, every attempt it says it runs that is no longer an
    /// active attempt of its own (cancelled or retried elsewhere while it was
    /// disconnected, or a cancel that was lost): fencing for processes, not only
    /// for reports.
    pub fn stop_stale_attempts(&self, worker: &str, running: Vec<AttemptKey>) {
        let stale: Vec<AttemptKey> = self.read(|state| {
            running
                .into_iter()
                .filter(|key| !state.holds(worker, key))
                .collect()
        });
        for key in stale {
            tracing::info!(run = key.run, step = %key.step, attempt = key.attempt, worker, "stopping a stale attempt");
            self.send_to_worker(
                worker,
                proto::WorkerMessage {
                    kind: Some(proto::worker_message::Kind::Cancel(attempt_ref(&key))),
                },
            );
        }
    }

    fn push_assignment(&self, key: &AttemptKey, worker: &str) {
        let assignment = self.read(|state| build_assignment(state, key));
        match assignment {
            Some(assignment) => {
                tracing::info!(run = key.run, step = %key.step, attempt = key.attempt, worker, "assigned");
                self.send_to_worker(
                    worker,
                    proto::WorkerMessage {
                        kind: Some(proto::worker_message::Kind::Assign(assignment)),
                    },
                );
            }
            None => tracing::warn!(%key, "cannot build the assignment"),
        }
    }

    fn carry_out(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Assigned(assigned) => {
                for (key, worker) in assigned {
                    self.push_assignment(key, worker);
                }
            }
            Outcome::Cancelled { stop } => {
                for (key, worker) in stop {
                    tracing::info!(run = key.run, step = %key.step, attempt = key.attempt, worker, "cancelling");
                    self.send_to_worker(
                        worker,
                        proto::WorkerMessage {
                            kind: Some(proto::worker_message::Kind::Cancel(attempt_ref(key))),
                        },
                    );
                }
            }
            Outcome::Registered { .. } | Outcome::RunSubmitted(_) | Outcome::Report { .. } => {}
        }
    }
}

pub fn attempt_ref(key: &AttemptKey) -> proto::AttemptRef {
    proto::AttemptRef {
        run_id: key.run,
        step: key.step.clone(),
        attempt: key.attempt,
    }
}

fn resources_to_proto(resources: ferry_common::spec::Resources) -> proto::Resources {
    proto::Resources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        gpus: resources.gpus,
    }
}

/// The message a worker needs to run one attempt: command, environment, bundle,
/// the artifacts to stage as inputs, and the GPUs it may use.
pub fn build_assignment(state: &State, key: &AttemptKey) -> Option<proto::Assignment> {
    let run = state.runs.get(&key.run)?;
    let spec = run.pipeline.steps.iter().find(|s| s.name == key.step)?;
    let attempt = run
        .step(&key.step)?
        .attempts
        .iter()
        .find(|a| a.number == key.attempt)?;
    let mut inputs = Vec::new();
    for input in &spec.inputs {
        let artifact = state.resolve_output(key.run, &input.step, &input.output)?;
        let file_name = input
            .output
            .rsplit('/')
            .next()
            .unwrap_or(&input.output)
            .to_string();
        inputs.push(proto::InputFile {
            name: input.name.clone(),
            file_name,
            digest: artifact.digest.clone(),
            size: artifact.size,
        });
    }
    let mut env = spec.env.clone();
    for (name, value) in &run.pipeline.params {
        env.insert(
            ferry_common::spec::env_var_name("FERRY_PARAM_", name),
            value.clone(),
        );
    }
    Some(proto::Assignment {
        attempt: Some(attempt_ref(key)),
        command: spec.command.clone(),
        env: env.into_iter().collect(),
        bundle_digest: run.bundle_digest.clone(),
        inputs,
        outputs: spec.outputs.clone(),
        resources: Some(resources_to_proto(spec.resources)),
        gpu_indices: attempt.gpus.clone(),
        timeout_ms: spec.timeout_ms.unwrap_or(0),
        pipeline: run.pipeline.name.clone(),
    })
}

async fn apply_loop(
    node: Arc<Node>,
    mut receiver: mpsc::Receiver<Proposal>,
    mut applied: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            proposal = receiver.recv() => match proposal {
                Some(proposal) => proposal,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(proposal) => batch.push(proposal),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        let staged = {
            let mut state = node.state.write().expect("state lock poisoned");
            for proposal in &batch {
                results.push(state.apply(proposal.command.clone()));
            }
            applied += batch.len() as u64;
            node.store.stage(&mut state, applied)
        };
        let durable = match staged {
            Ok(()) => node.store.flush().await,
            Err(e) => Err(e),
        };
        if let Err(error) = durable {
            // The in-memory state is now ahead of the disk: stop serving rather than
            // acknowledge something that may be lost.
            tracing::error!(%error, "cannot persist applied commands; stopping the apply loop");
            for proposal in batch {
                let _ = proposal
                    .reply
                    .send(Err(ProposeError::Storage(error.to_string())));
            }
            break;
        }
        for (proposal, result) in batch.into_iter().zip(results) {
            if let Ok(outcome) = &result {
                node.carry_out(outcome);
            }
            let _ = proposal.reply.send(result.map_err(ProposeError::from));
        }
        node.state_version.send_modify(|v| *v += 1);
    }
    tracing::info!("apply loop stopped");
}

async fn schedule_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = node.subscribe_state();
    loop {
        let accepting: BTreeSet<String> = {
            let links = node.links.lock().expect("links lock");
            links
                .iter()
                .filter(|(_, link)| !link.sender.is_closed())
                .map(|(name, _)| name.clone())
                .collect()
        };
        let placements = node.read(|state| {
            let (queue, workers) = scheduler::snapshot(state, &accepting);
            scheduler::place(&queue, &workers)
        });
        if !placements.is_empty() {
            let command = Command::Assign {
                placements,
                now_ms: now_ms(),
            };
            if let Err(error) = node.propose(command).await {
                tracing::warn!(%error, "could not propose assignments");
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!("scheduler stopped");
}
