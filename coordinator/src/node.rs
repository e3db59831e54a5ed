//! The coordinator's runtime around the state machine: the Raft loop
//! (`consensus::driver`) applies committed commands; this module holds the state it
//! applies them to, turns a proposal into a Raft proposal here or a forwarded one
//! on the leader, makes reads linearizable, runs the scheduling loop on the leader
//! only, and keeps the leader's worker streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ferry_common::pki::{Identity, Role, TlsMaterial};
use ferry_common::proto;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::blobs::BlobStore;
use crate::config::CoordinatorConfig;
use crate::consensus::driver::{self, Driver, Input, LocalStatus, Proposal, RoleInfo};
use crate::consensus::storage::{LogStore, SledLog};
use crate::consensus::transport::Transport;
use crate::scheduler;
use crate::state::{AttemptKey, Command, Member, Outcome, RunId, State, StateError};
use crate::store::{Store, StoreError};

/// Room in each worker's assignment stream before it is considered stuck.
pub const WORKER_STREAM_DEPTH: usize = 1024;
/// How long a proposal or a read waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);

pub type WorkerSender = mpsc::Sender<Result<proto::WorkerMessage, Status>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] StateError),
    #[error("the coordinator could not persist the change: {0}")]
    Storage(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("this coordinator is not the leader")]
    NotLeader,
    #[error(
        "no leader could be reached within {0:?}: fewer than a majority of coordinators may be up"
    )]
    NoLeader(Duration),
    #[error(
        "the change was not committed (leadership changed while it was in flight); it is safe to retry"
    )]
    NotCommitted,
    #[error(
        "leadership changed before the change was confirmed: it may or may not have been \
         applied; check before repeating it (a retried `ferry run` is never applied twice)"
    )]
    Unknown,
    #[error("the change was refused: {0}")]
    Refused(String),
    #[error("{}", .0.message())]
    Remote(Status),
    #[error("{0}")]
    Denied(String),
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] crate::consensus::storage::LogStoreError),
    #[error("invalid cluster configuration: {0}")]
    Cluster(#[from] crate::config::ClusterConfigError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(
        "member {id} was removed from the cluster and must not serve again; \
         to bring this machine back, empty its data directory and add it as a new member"
    )]
    Removed { id: u64 },
    #[error(
        "the stored state is inconsistent with the Raft log: {detail}; this replica \
         refuses to serve. Restore its data directory from a backup, or empty it, \
         remove the member and add it again so it copies the state from the others"
    )]
    Inconsistent { detail: String },
}

struct WorkerLink {
    session: String,
    sender: WorkerSender,
}

pub struct Node {
    pub id: u64,
    state: RwLock<State>,
    proposals: mpsc::Sender<Proposal>,
    inputs: mpsc::Sender<Input>,
    role: watch::Receiver<RoleInfo>,
    pub transport: Arc<Transport>,
    pub store: Store,
    pub blobs: BlobStore,
    state_version: watch::Sender<u64>,
    log_version: watch::Sender<u64>,
    links: Mutex<HashMap<String, WorkerLink>>,
    heartbeats: Mutex<HashMap<String, i64>>,
    /// When this member last became the leader: a worker's lease runs from its last
    /// heartbeat to this leader, or from here.
    leading_since_ms: Mutex<i64>,
    /// The worker lease and project quotas this member schedules with.
    pub lease_ms: u64,
    /// `[retention]`: the automatic `gc` policy and the grace period of blobs.
    pub retention: crate::config::RetentionSettings,
    quotas: BTreeMap<String, scheduler::Quota>,
    /// Why each queued step stayed queued in the last scheduling pass (leader only).
    waiting: Mutex<HashMap<RunId, BTreeMap<String, String>>>,
    /// Turns true when this member must stop serving (storage failure, removed).
    stop: watch::Sender<Option<String>>,
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

/// Decides whether `caller` may make `command`: a forwarded command is authorized
/// on the leader on the original caller, not on the forwarding coordinator.
pub fn authorize(caller: &Identity, command: &Command) -> Result<(), ProposeError> {
    let worker_named = |worker: &str| {
        if caller.role == Role::Worker && caller.name == worker {
            Ok(())
        } else {
            Err(ProposeError::Denied(format!(
                "{caller} may not report for worker \"{worker}\""
            )))
        }
    };
    match command {
        Command::SubmitRun { submitter, .. } => {
            if caller.role == Role::Client && caller.name == *submitter {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not submit runs (client certificates only)"
                )))
            }
        }
        Command::RerunRun { submitter, .. } => {
            if caller.role == Role::Client && caller.name == *submitter {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not start runs (client certificates only)"
                )))
            }
        }
        Command::CreateSchedule { schedule, .. } => {
            if caller.role == Role::Client && caller.name == schedule.owner {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not create schedules (client certificates only)"
                )))
            }
        }
        Command::PauseSchedule { .. }
        | Command::DeleteSchedule { .. }
        | Command::PinArtifact { .. }
        | Command::UnpinArtifact { .. }
        | Command::Collect { .. } => {
            if caller.role == Role::Client {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not change schedules, pins or collect garbage \
                     (client certificates only)"
                )))
            }
        }
        Command::FireSchedule { .. } => {
            if caller.role == Role::Coordinator {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not fire schedules (the leader only)"
                )))
            }
        }
        Command::CancelRun { .. } => {
            if caller.role == Role::Client {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not cancel runs (client certificates only)"
                )))
            }
        }
        Command::RegisterWorker { worker, .. } => worker_named(&worker.name),
        Command::StepStarted { worker, .. } | Command::StepFinished { worker, .. } => {
            worker_named(worker)
        }
        Command::SetWorkerMode { .. } => {
            if caller.role == Role::Client {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not cordon or drain workers (client certificates only)"
                )))
            }
        }
        Command::Assign { .. } | Command::WorkerLost { .. } | Command::TimeOutRun { .. } => {
            if caller.role == Role::Coordinator {
                Ok(())
            } else {
                Err(ProposeError::Denied(format!(
                    "{caller} may not assign work, declare workers lost or time out runs \
                     (the leader only)"
                )))
            }
        }
    }
}

impl Node {
    /// Opens the Raft log beside the state (bootstrapping a new cluster from the
    /// configured members), checks that the two agree, and starts the Raft loop
    /// and the scheduling loop, which run until `shutdown` turns true.
    pub fn start(
        config: &CoordinatorConfig,
        tls: TlsMaterial,
        store: Store,
        blobs: BlobStore,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<Node>, NodeTasks), NodeError> {
        let initial = config.initial_members()?;
        let log = SledLog::open(store.db(), &config.data_dir.join("snapshots"))?;
        if log.is_empty() && !config.join {
            let members: Vec<Member> = initial
                .iter()
                .map(|m| Member {
                    id: m.id,
                    client_address: m.client_address.clone(),
                    peer_address: m
                        .peer_address
                        .clone()
                        .unwrap_or_else(|| m.client_address.clone()),
                })
                .collect();
            // A data directory from a coordinator that ran before replication holds
            // state but no Raft log: a one-member cluster carries it over; several
            // members cannot (each would start from different state).
            let existing = store.load_legacy()?;
            if let Some(existing) = &existing {
                if members.len() > 1 {
                    return Err(NodeError::Inconsistent {
                        detail: format!(
                            "the data directory holds {} runs from a single coordinator but no \
                             Raft log, and the configuration names {} members; start it alone \
                             first (no `members`), then add the others with `ferry cluster \
                             add-member`",
                            existing.runs.len(),
                            members.len()
                        ),
                    });
                }
                tracing::info!(
                    runs = existing.runs.len(),
                    "carrying the state of a one-coordinator installation into the Raft log"
                );
            }
            let base = existing.unwrap_or_else(|| State::from_records(Vec::new(), Vec::new(), 1));
            let snapshot = driver::bootstrap_snapshot(&members, base);
            log.apply_snapshot(snapshot)?;
            log.sync()?;
            tracing::info!(members = ?members.iter().map(|m| m.id).collect::<Vec<_>>(), "bootstrapped a new cluster");
        } else if log.is_empty()
            && let Some(existing) = store.load_legacy()?
        {
            return Err(NodeError::Inconsistent {
                detail: format!(
                    "the data directory holds {} runs from a single coordinator, and this \
                     member is configured to join a cluster; a joining member copies the \
                     cluster's state and must start with an empty data directory",
                    existing.runs.len()
                ),
            });
        }
        // Whatever the pre-replication layout held is in the log now.
        store.clear_legacy()?;
        // The state is the log's snapshot plus its entries: decode the snapshot here;
        // raft-rs hands the committed entries after it to the Raft loop, which
        // applies them again.
        let snapshot = raft::Storage::snapshot(&log, 0, config.id)?;
        let applied = snapshot.get_metadata().index;
        let state = Store::state_from_snapshot(&snapshot.data)?;
        let hard_state = log.hard_state();
        let conf_state = raft::Storage::initial_state(&log)?.conf_state;
        if !conf_state.voters.is_empty()
            && !conf_state.voters.contains(&config.id)
            && !conf_state.learners.contains(&config.id)
        {
            return Err(NodeError::Removed { id: config.id });
        }
        tracing::info!(
            id = config.id,
            snapshot_index = applied,
            commit_index = hard_state.commit,
            to_replay = hard_state.commit.saturating_sub(applied),
            term = hard_state.term,
            runs = state.runs.len(),
            workers = state.workers.len(),
            "state loaded"
        );
        let (feedback_sender, feedback) = mpsc::channel(1024);
        let transport = Arc::new(Transport::new(config.id, tls, feedback_sender));
        // A joining member knows no members until the leader's snapshot arrives;
        // the configured ones let it answer the leader meanwhile.
        let mut address_book = state.members.clone();
        if address_book.is_empty() {
            for m in &config.members {
                address_book.insert(
                    m.id,
                    Member {
                        id: m.id,
                        client_address: m.client_address.clone(),
                        peer_address: m
                            .peer_address
                            .clone()
                            .unwrap_or_else(|| m.client_address.clone()),
                    },
                );
            }
        }
        transport.set_members(&address_book);
        let (proposals, proposal_receiver) = mpsc::channel(8192);
        let (inputs, input_receiver) = mpsc::channel(8192);
        let (role_sender, role) = watch::channel(RoleInfo {
            id: config.id,
            role: "follower",
            ..Default::default()
        });
        let node = Arc::new(Node {
            id: config.id,
            state: RwLock::new(state),
            proposals,
            inputs,
            role,
            transport: transport.clone(),
            store,
            blobs,
            state_version: watch::channel(0).0,
            log_version: watch::channel(0).0,
            links: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            leading_since_ms: Mutex::new(now_ms()),
            lease_ms: config.scheduling.worker_lease_ms,
            retention: config.retention.clone(),
            quotas: config.scheduling.quotas()?,
            waiting: Mutex::new(HashMap::new()),
            stop: watch::channel(None).0,
        });
        let driver = Driver::new(
            config.id,
            log,
            applied,
            node.clone(),
            transport,
            config.raft.clone(),
            role_sender,
        )?;
        let raft = tokio::spawn(driver.run(
            proposal_receiver,
            input_receiver,
            feedback,
            shutdown.clone(),
        ));
        let schedule = tokio::spawn(schedule_loop(node.clone(), shutdown.clone()));
        let leases = tokio::spawn(lease_loop(node.clone(), shutdown.clone()));
        let cron = tokio::spawn(cron_loop(node.clone(), shutdown.clone()));
        let retention = tokio::spawn(retention_loop(node.clone(), shutdown.clone()));
        let leadership = tokio::spawn(leadership_loop(node.clone(), shutdown));
        Ok((
            node,
            NodeTasks {
                handles: vec![raft, schedule, leases, cron, retention, leadership],
            },
        ))
    }

    /// Proposes a command on behalf of `caller` and waits until it is committed,
    /// applied and durable. On a follower the command is forwarded to the leader
    /// with the caller's identity.
    pub async fn propose_as(
        &self,
        caller: &Identity,
        command: Command,
    ) -> Result<Outcome, ProposeError> {
        authorize(caller, &command)?;
        let deadline = Instant::now() + LEADER_WAIT;
        let mut role = self.role.clone();
        loop {
            let info = role.borrow_and_update().clone();
            let attempt = match info.leader {
                Some(leader) if leader == self.id => self.propose_local(command.clone()).await,
                Some(leader) => self.forward(leader, caller, &command).await,
                None => Err(ProposeError::NotLeader),
            };
            match attempt {
                Err(ProposeError::NotLeader) | Err(ProposeError::NotCommitted) => {}
                Err(ProposeError::Remote(status)) if status.code() == tonic::Code::Unavailable => {}
                other => return other,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProposeError::NoLeader(LEADER_WAIT));
            }
            // Wait for a role change, or retry soon: the leader may have moved.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), role.changed()).await;
        }
    }

    /// Proposes a command of the coordinator itself (the scheduler), on the leader.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        self.propose_local(command).await
    }

    async fn propose_local(&self, command: Command) -> Result<Outcome, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        answer.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    async fn forward(
        &self,
        leader: u64,
        caller: &Identity,
        command: &Command,
    ) -> Result<Outcome, ProposeError> {
        let Some(mut client) = self.transport.client(leader) else {
            return Err(ProposeError::NotLeader);
        };
        let request = proto::ForwardRequest {
            caller: caller.uri(),
            command: serde_json::to_vec(command).expect("commands serialize"),
        };
        let response = client
            .forward(request)
            .await
            .map_err(ProposeError::Remote)?
            .into_inner();
        serde_json::from_slice(&response.outcome)
            .map_err(|e| ProposeError::Refused(format!("the leader's answer does not decode: {e}")))
    }

    /// Waits until this member has applied everything committed when the call
    /// began (Raft ReadIndex), so that a read after it is linearizable. Fails when
    /// no quorum confirms a leader in time (a minority answers no such read).
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (reply, answer) = oneshot::channel();
            self.inputs
                .send(Input::ReadIndex(reply))
                .await
                .map_err(|_| ProposeError::ShuttingDown)?;
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), answer).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::NoLeader(Duration::from_secs(5)));
            }
        }
    }

    /// Proposes adding (or removing) a member, then waits until it is applied.
    pub async fn change_membership(
        &self,
        add: Option<Member>,
        remove: Option<u64>,
    ) -> Result<(), ProposeError> {
        let mut change = raft::eraftpb::ConfChange::default();
        let id = match (&add, remove) {
            (Some(member), _) => {
                change.set_change_type(raft::eraftpb::ConfChangeType::AddNode);
                change.node_id = member.id;
                change.context = serde_json::to_vec(member)
                    .expect("members serialize")
                    .into();
                member.id
            }
            (None, Some(id)) => {
                change.set_change_type(raft::eraftpb::ConfChangeType::RemoveNode);
                change.node_id = id;
                id
            }
            (None, None) => return Ok(()),
        };
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::ConfChange(change, reply))
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        answer.await.map_err(|_| ProposeError::ShuttingDown)??;
        let mut changes = self.subscribe_state();
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let done = self.read(|state| state.members.contains_key(&id) == add.is_some());
            if done {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProposeError::NotCommitted);
            }
            let _ = tokio::time::timeout(left, changes.changed()).await;
        }
    }

    /// Hands a Raft message from a peer to the Raft loop.
    pub async fn step(&self, message: raft::eraftpb::Message) -> Result<(), Status> {
        self.inputs
            .send(Input::Message(Box::new(message)))
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    /// Which workers have a live stream and when each last sent a heartbeat: the
    /// leader's in-memory view (a follower asks the leader; an empty view when no
    /// leader answers).
    pub async fn live_workers(&self) -> HashMap<String, (bool, i64)> {
        let info = self.role();
        match info.leader {
            Some(leader) if leader == self.id => self.local_live_workers(),
            Some(leader) => {
                let Some(mut client) = self.transport.client(leader) else {
                    return HashMap::new();
                };
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    client.live_workers(proto::ClusterStatusRequest {}),
                )
                .await
                {
                    Ok(Ok(response)) => response
                        .into_inner()
                        .workers
                        .into_iter()
                        .map(|w| (w.name, (w.connected, w.last_heartbeat_ms)))
                        .collect(),
                    _ => HashMap::new(),
                }
            }
            None => HashMap::new(),
        }
    }

    pub fn local_live_workers(&self) -> HashMap<String, (bool, i64)> {
        let heartbeats = self.heartbeats.lock().expect("heartbeat lock").clone();
        let links = self.links.lock().expect("links lock");
        let mut live: HashMap<String, (bool, i64)> = heartbeats
            .into_iter()
            .map(|(name, at)| (name, (false, at)))
            .collect();
        for (name, link) in links.iter() {
            live.entry(name.clone()).or_insert((false, 0)).0 = !link.sender.is_closed();
        }
        live
    }

    /// This member's own line of `ferry cluster status`.
    pub async fn member_status(&self) -> Result<proto::MemberStatus, Status> {
        let local = self
            .local_status()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let member = self.read(|state| state.members.get(&self.id).cloned());
        Ok(proto::MemberStatus {
            id: self.id,
            client_address: member
                .as_ref()
                .map(|m| m.client_address.clone())
                .unwrap_or_default(),
            peer_address: member.map(|m| m.peer_address).unwrap_or_default(),
            role: local.role.to_string(),
            term: local.term,
            commit_index: local.commit,
            applied_index: local.applied,
            lag: 0,
            last_contact_ms: 0,
            reachable: true,
            error: String::new(),
        })
    }

    /// Every member's status, as seen from this one: each is asked for its own
    /// view; the lag is measured against the leader's commit index.
    pub async fn cluster_status(&self) -> proto::ClusterStatusResponse {
        let members: Vec<Member> = self.read(|state| state.members.values().cloned().collect());
        let mut statuses = Vec::new();
        for member in members {
            let status = if member.id == self.id {
                self.member_status().await
            } else {
                match self.transport.client(member.id) {
                    Some(mut client) => tokio::time::timeout(
                        Duration::from_secs(1),
                        client.describe_self(proto::ClusterStatusRequest {}),
                    )
                    .await
                    .map_err(|_| Status::deadline_exceeded("no answer within 1 s"))
                    .and_then(|r| r.map(|r| r.into_inner())),
                    None => Err(Status::unavailable("no link to this member")),
                }
            };
            let mut status = status.unwrap_or_else(|error| proto::MemberStatus {
                id: member.id,
                role: "unreachable".to_string(),
                reachable: false,
                error: error.message().to_string(),
                ..Default::default()
            });
            status.client_address = member.client_address.clone();
            status.peer_address = member.peer_address.clone();
            if member.id != self.id {
                status.last_contact_ms = self
                    .transport
                    .since_contact(member.id)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(-1);
            }
            statuses.push(status);
        }
        let leader_commit = statuses
            .iter()
            .filter(|s| s.role == "leader")
            .map(|s| s.commit_index)
            .max()
            .unwrap_or_else(|| statuses.iter().map(|s| s.commit_index).max().unwrap_or(0));
        for status in &mut statuses {
            if status.reachable {
                status.lag = leader_commit.saturating_sub(status.applied_index);
            }
        }
        proto::ClusterStatusResponse {
            leader_id: self.role().leader.unwrap_or(0),
            members: statuses,
            answered_by: self.id,
        }
    }

    /// This member's Raft view.
    pub async fn local_status(&self) -> Result<LocalStatus, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Status(reply))
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        answer.await.map_err(|_| ProposeError::ShuttingDown)
    }

    /// On SIGTERM: a leader hands leadership to an up-to-date follower and waits
    /// (briefly) until another member leads, so clients barely notice the stop.
    pub async fn step_down(&self) {
        if !self.role().is_leader() {
            return;
        }
        let (reply, answer) = oneshot::channel();
        if self
            .inputs
            .send(Input::TransferLeadership(reply))
            .await
            .is_err()
        {
            return;
        }
        let Ok(Some(to)) = answer.await else {
            return;
        };
        let mut role = self.role.clone();
        let waited = tokio::time::timeout(
            Duration::from_secs(2),
            role.wait_for(|info| info.leader.is_some_and(|leader| leader != self.id)),
        )
        .await;
        match waited {
            Ok(Ok(_)) => tracing::info!(to, "leadership handed over"),
            _ => tracing::warn!(
                to,
                "leadership transfer did not finish in 2 s; stopping anyway"
            ),
        }
    }

    pub fn role(&self) -> RoleInfo {
        self.role.borrow().clone()
    }

    pub fn subscribe_role(&self) -> watch::Receiver<RoleInfo> {
        self.role.clone()
    }

    /// The leader's client address, when another member leads.
    pub fn leader_hint(&self) -> Option<String> {
        let leader = self.role().leader?;
        self.read(|state| state.members.get(&leader).map(|m| m.client_address.clone()))
    }

    /// For calls only the leader serves: `Unavailable` naming the leader otherwise.
    pub fn require_leader(&self) -> Result<(), Status> {
        let info = self.role();
        if info.is_leader() {
            return Ok(());
        }
        let hint = self.leader_hint();
        let mut status = Status::unavailable(match &hint {
            Some(address) => format!(
                "coordinator {} is not the leader; the leader is at {address}",
                self.id
            ),
            None => format!(
                "coordinator {} knows no leader yet (an election may be under way); retry shortly",
                self.id
            ),
        });
        if let Some(address) = hint
            && let Ok(value) = address.parse()
        {
            status.metadata_mut().insert("ferry-leader", value);
        }
        Err(status)
    }

    /// Turns true (with the reason) when this member must stop serving.
    pub fn subscribe_stop(&self) -> watch::Receiver<Option<String>> {
        self.stop.subscribe()
    }

    pub(crate) fn fail_stop(&self, error: String) {
        self.stop
            .send_replace(Some(format!("cannot persist: {error}")));
    }

    pub(crate) fn removed_from_cluster(&self) {
        tracing::warn!(
            id = self.id,
            "this member was removed from the cluster; it stops serving"
        );
        self.stop.send_replace(Some(format!(
            "member {} was removed from the cluster",
            self.id
        )));
    }

    pub(crate) fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("state lock poisoned")
    }

    pub(crate) fn replace_state(&self, state: State) {
        *self.state_mut() = state;
    }

    pub(crate) fn state_changed(&self) {
        self.state_version.send_modify(|v| *v += 1);
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

    /// Why the last scheduling pass left a run's queued steps queued (on the
    /// leader; empty elsewhere), by step name.
    pub fn waiting_reasons(&self, run: RunId) -> BTreeMap<String, String> {
        self.waiting
            .lock()
            .expect("waiting lock")
            .get(&run)
            .cloned()
            .unwrap_or_default()
    }

    pub fn heartbeat(&self, worker: &str) {
        self.heartbeats
            .lock()
            .expect("heartbeat lock")
            .insert(worker.to_string(), now_ms());
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
        // Only the member holding the worker's stream (the leader) sends it work;
        // every other member applies the same Assign and has nothing to push.
        if !self.links.lock().expect("links lock").contains_key(worker) {
            return;
        }
        let assignment = self.read(|state| build_assignment(state, key));
        match assignment {
            Some(assignment) => {
                tracing::debug!(run = key.run, step = %key.step, attempt = key.attempt, worker, "assigned");
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

    pub(crate) fn carry_out(&self, outcome: &Outcome) {
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
            Outcome::WorkerLost { worker, ended } => {
                // Closing its stream makes a worker that is in fact alive register
                // again; what it still runs is then stopped as stale.
                if self
                    .links
                    .lock()
                    .expect("links lock")
                    .remove(worker)
                    .is_some()
                {
                    tracing::info!(worker, "closed the stream of a lost worker");
                }
                for key in ended {
                    tracing::warn!(run = key.run, step = %key.step, attempt = key.attempt, worker, "attempt lost with its worker");
                }
            }
            Outcome::Collected {
                runs,
                blobs,
                at_ms,
                grace_ms,
            } => {
                // Every member deletes its own copies. What is referenced again
                // by now (a member applying the entry late or again after a
                // restart) or was written within the grace period before the
                // collection (an upload whose record is not committed yet) stays.
                let live = self.read(crate::state::live_blobs);
                // The proposer's grace period, the same on every member.
                let before_ms = at_ms.saturating_sub(*grace_ms as i64);
                let store = self.store.clone();
                let blob_store = self.blobs.clone();
                let runs = runs.clone();
                let blobs: Vec<String> = blobs
                    .iter()
                    .map(|(digest, _)| digest.clone())
                    .filter(|digest| !live.contains(digest))
                    .collect();
                tokio::spawn(async move {
                    let mut freed = 0u64;
                    for digest in &blobs {
                        match blob_store.delete(digest, before_ms).await {
                            Ok(bytes) => freed += bytes,
                            Err(error) => tracing::warn!(digest, %error, "could not delete a blob"),
                        }
                    }
                    let mut lines = 0;
                    for run in &runs {
                        match store.delete_logs(*run) {
                            Ok(n) => lines += n,
                            Err(error) => tracing::warn!(run, %error, "could not delete log lines"),
                        }
                    }
                    tracing::info!(
                        runs = runs.len(),
                        blobs = blobs.len(),
                        freed,
                        lines,
                        "garbage collected"
                    );
                });
            }
            Outcome::Registered { .. }
            | Outcome::RunSubmitted(_)
            | Outcome::Report { .. }
            | Outcome::WorkerMode(_)
            | Outcome::Done
            | Outcome::Unchanged => {}
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
    // A step sees the parameters it names (they are what its cache key holds).
    for name in &spec.params {
        if let Some(value) = run.pipeline.params.get(name) {
            env.insert(
                ferry_common::spec::env_var_name("FERRY_PARAM_", name),
                value.clone(),
            );
        }
    }
    let gathers = spec
        .gather
        .iter()
        .map(|gather| gather_input(state, run, gather))
        .collect();
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
        gathers,
    })
}

/// Every trial of the sweep `gather.step` for a gathering step: their output
/// files, and a manifest (`trials.json`) with each trial's values, outputs and
/// metrics (the last value of each), and the best trial when one was asked for.
fn gather_input(
    state: &State,
    run: &crate::state::Run,
    gather: &ferry_common::spec::Gather,
) -> proto::GatherInput {
    let mut files = Vec::new();
    let mut trials = Vec::new();
    let mut best: Option<(f64, String)> = None;
    for (index, (record, spec)) in run.steps.iter().zip(&run.pipeline.steps).enumerate() {
        let Some(trial) = spec.trial.as_ref().filter(|t| t.of == gather.step) else {
            continue;
        };
        let mut outputs = serde_json::Map::new();
        for artifact in &record.outputs {
            let path = format!("{}/{}", record.name, artifact.name);
            outputs.insert(artifact.name.clone(), serde_json::Value::from(path.clone()));
            files.push(proto::InputFile {
                name: path,
                file_name: artifact.name.clone(),
                digest: artifact.digest.clone(),
                size: artifact.size,
            });
        }
        let metrics = last_metrics(state, run, index);
        if let Some(by) = &gather.best
            && let Some(value) = metrics.get(&by.metric).copied()
            && !value.is_nan()
            && best
                .as_ref()
                .is_none_or(|(current, _)| by.goal.better(value, *current))
        {
            best = Some((value, record.name.clone()));
        }
        trials.push(serde_json::json!({
            "step": record.name,
            "index": trial.index,
            "values": trial.values,
            "state": record.state.as_str(),
            "dir": record.name,
            "outputs": outputs,
            "metrics": metrics,
        }));
    }
    let best_trial = best.map(|(_, name)| name).unwrap_or_default();
    let manifest = serde_json::json!({
        "step": gather.step,
        "best": if best_trial.is_empty() { serde_json::Value::Null } else { best_trial.clone().into() },
        "metric": gather.best.as_ref().map(|b| b.metric.clone()),
        "goal": gather.best.as_ref().map(|b| b.goal.as_str()),
        "trials": trials,
    });
    proto::GatherInput {
        step: gather.step.clone(),
        files,
        manifest_json: serde_json::to_string_pretty(&manifest).expect("the manifest serializes"),
        best_trial,
    }
}

/// The last value of each metric the attempt that produced a step's result
/// reported (following a cached or reused step to the one that ran).
fn last_metrics(state: &State, run: &crate::state::Run, index: usize) -> BTreeMap<String, f64> {
    state
        .producing_attempt(run, index)
        .map(|attempt| {
            attempt
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.value))
                .collect()
        })
        .unwrap_or_default()
}

/// Drops every worker stream when this member stops leading, so that workers
/// find the new leader; a new leader starts every worker's lease afresh.
async fn leadership_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut role = node.subscribe_role();
    let mut leading = false;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            changed = role.changed() => if changed.is_err() { break },
        }
        let now_leading = role.borrow_and_update().is_leader();
        if leading && !now_leading {
            let dropped = std::mem::take(&mut *node.links.lock().expect("links lock"));
            tracing::info!(
                workers = dropped.len(),
                "no longer the leader; closing worker streams"
            );
        }
        if !leading && now_leading {
            node.heartbeats.lock().expect("heartbeat lock").clear();
            *node.leading_since_ms.lock().expect("leading lock") = now_ms();
        }
        if !now_leading {
            node.waiting.lock().expect("waiting lock").clear();
        }
        leading = now_leading;
        node.state_changed();
    }
    node.links.lock().expect("links lock").clear();
}

/// Shortest time between two scheduling passes while work is queued: each pass
/// then places a bigger batch (measured: 5 ms gave ~1,450 no-op steps/s on two
/// cores, 20 ms ~1,550); an idle cluster schedules a change at once.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(20);

/// Only the leader schedules; a new leader resumes from the replicated state.
async fn schedule_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = node.subscribe_state();
    loop {
        if !node.role().is_leader() {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let accepting: BTreeSet<String> = {
            let links = node.links.lock().expect("links lock");
            links
                .iter()
                .filter(|(_, link)| !link.sender.is_closed())
                .map(|(name, _)| name.clone())
                .collect()
        };
        // Nothing can be placed without a connected worker: skip the scan of the
        // queue (it grows with every queued step).
        let now = now_ms();
        let (placements, next_retry, left_waiting) = if accepting.is_empty() {
            node.waiting.lock().expect("waiting lock").clear();
            (Vec::new(), None, false)
        } else {
            let (plan, next_retry) = node.read(|state| {
                let (queue, next_retry) = scheduler::ready_queue(state, now);
                let workers = scheduler::worker_slots(state, &accepting);
                let limits = scheduler::limits(state, &node.quotas);
                (scheduler::plan(&queue, &workers, &limits), next_retry)
            });
            let left_waiting = !plan.waiting.is_empty();
            let mut waiting: HashMap<RunId, BTreeMap<String, String>> = HashMap::new();
            for w in plan.waiting {
                waiting.entry(w.run).or_default().insert(w.step, w.reason);
            }
            *node.waiting.lock().expect("waiting lock") = waiting;
            (plan.placements, next_retry, left_waiting)
        };
        let busy = !placements.is_empty() || left_waiting;
        if !placements.is_empty() {
            let command = Command::Assign {
                placements,
                now_ms: now_ms(),
            };
            if let Err(error) = node.propose(command).await {
                tracing::warn!(%error, "could not propose assignments");
            }
        }
        // Wake for the next change, the end of the earliest retry backoff, or a
        // second from now at the latest. After a pass that placed work or left
        // some waiting (under load), the next is at least MIN_PASS_INTERVAL later,
        // so that one pass serves the changes of several commands; after a pass
        // with nothing to place, the next change is scheduled at once.
        let wait = next_retry
            .map(|at| Duration::from_millis(at.saturating_sub(now).clamp(1, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        let pass_began = Instant::now();
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        let since = pass_began.elapsed();
        if busy && since < MIN_PASS_INTERVAL {
            tokio::time::sleep(MIN_PASS_INTERVAL - since).await;
        }
    }
    tracing::info!("scheduler stopped");
}

/// On the leader: declares lost every worker whose lease ran out (a committed
/// `WorkerLost`, so its attempts are retried elsewhere), and times out runs past
/// their pipeline's timeout. Runs five times per lease.
/// How often the leader looks for schedule ticks that came.
const CRON_PERIOD: Duration = Duration::from_millis(250);

/// Most missed ticks counted for one firing (the count is shown, not replayed).
const MAX_MISSED_COUNT: u64 = 10_000;

/// Leader only: fires each active schedule's latest tick that came since its
/// last firing. The firing is a command carrying its tick, and the state machine
/// starts one run per tick at most, so a tick fires once across retries and
/// failovers; ticks missed while no leader was up are counted, and only the
/// latest of them fires.
async fn cron_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(CRON_PERIOD) => {}
        }
        if !node.role().is_leader() {
            continue;
        }
        let now = now_ms();
        let due: Vec<(String, ferry_common::cron::Due)> = node.read(|state| {
            state
                .catalog
                .schedules
                .values()
                .filter(|s| !s.paused)
                .filter_map(|s| {
                    let cron = ferry_common::cron::Cron::parse(&s.cron).ok()?;
                    Some((s.name.clone(), cron.due(s.after_ms, now, MAX_MISSED_COUNT)?))
                })
                .collect()
        });
        for (name, due) in due {
            let missed = due.count.saturating_sub(1);
            tracing::info!(schedule = %name, tick_ms = due.latest_ms, missed, "schedule fires");
            let command = Command::FireSchedule {
                name: name.clone(),
                tick_ms: due.latest_ms,
                missed,
                now_ms: now,
            };
            if let Err(error) = node.propose(command).await {
                tracing::warn!(schedule = %name, %error, "could not fire the schedule");
            }
        }
    }
}

/// Leader only: `[retention] keep_last` makes the leader collect garbage by
/// itself every `interval_ms`, as `ferry gc --keep-last N` would.
async fn retention_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let Some(keep_last) = node.retention.keep_last else {
        return;
    };
    let period = Duration::from_millis(node.retention.interval_ms);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(period) => {}
        }
        if !node.role().is_leader() {
            continue;
        }
        let command = Command::Collect {
            keep_last,
            now_ms: now_ms(),
            grace_ms: node.retention.grace_ms,
        };
        match node.propose(command).await {
            Ok(Outcome::Collected { runs, blobs, .. }) => {
                tracing::info!(
                    keep_last,
                    runs = runs.len(),
                    blobs = blobs.len(),
                    "retention policy applied"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not apply the retention policy"),
        }
    }
}

async fn lease_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis((node.lease_ms / 5).max(50));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(period) => {}
        }
        if !node.role().is_leader() {
            continue;
        }
        let now = now_ms();
        let since = *node.leading_since_ms.lock().expect("leading lock");
        let heartbeats = node.heartbeats.lock().expect("heartbeat lock").clone();
        let (expired, timed_out) = node.read(|state| {
            let expired: Vec<(String, String, i64)> = state
                .workers
                .values()
                .filter(|w| w.lost_ms.is_none())
                .filter_map(|w| {
                    let last = heartbeats.get(&w.name).copied().unwrap_or(since).max(since);
                    let silent = now.saturating_sub(last);
                    (silent > node.lease_ms as i64)
                        .then(|| (w.name.clone(), w.session.clone(), silent))
                })
                .collect();
            (expired, state.runs_past_timeout(now))
        });
        for (worker, session, silent) in expired {
            let reason = format!(
                "no heartbeat from \"{worker}\" for {} (lease {})",
                ferry_common::spec::format_duration_ms(silent as u64),
                ferry_common::spec::format_duration_ms(node.lease_ms)
            );
            tracing::warn!(
                worker,
                silent_ms = silent,
                "worker lease expired; declaring it lost"
            );
            let command = Command::WorkerLost {
                worker,
                session,
                reason,
                now_ms: now,
            };
            if let Err(error) = node.propose(command).await {
                tracing::warn!(%error, "could not declare a worker lost");
            }
        }
        for run in timed_out {
            tracing::warn!(run, "run timed out");
            if let Err(error) = node.propose(Command::TimeOutRun { run, now_ms: now }).await {
                tracing::warn!(run, %error, "could not time out the run");
            }
        }
    }
}
