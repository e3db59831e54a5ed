//! The coordinator's runtime around the state machine: it holds the state that
//! the Raft loop (`consensus::driver`, through [`machine::Replica`]) applies
//! committed commands to, turns a proposal into a Raft proposal here or a
//! forwarded one on the leader, makes reads linearizable, and keeps the leader's
//! worker streams. `authorize` is the table of who may propose what,
//! `assignment` builds what a worker is sent, `workers` holds the streams and
//! carries out outcomes, `loops` the leader's background loops, `membership`
//! membership changes (learners, promotion, safety checks) and cluster status.

mod assignment;
pub mod audit;
pub mod authorize;
mod in_flight;
pub mod live_logs;
mod loops;
pub mod machine;
pub mod membership;
pub mod metrics;
mod propose;
pub mod secrets;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

use ferry_common::locks::{lock, read as read_lock, write};
use std::time::Duration;

use ferry_common::pki::TlsMaterial;
use ferry_common::proto;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Status;

pub use assignment::{attempt_ref, build_assignment};
pub use ferry_common::time::now_ms;

use crate::blobs::BlobStore;
use crate::config::CoordinatorConfig;
use crate::consensus::driver::{self, Driver};
use crate::consensus::storage::{self, LogStore, WalLog};
use crate::consensus::transport::Transport;
use crate::consensus::{
    ConsensusError, DriverError, DriverExit, Input, LocalStatus, Proposal, RoleInfo,
};
use crate::scheduler;
use crate::state::{Member, RunId, State, StateError};
use crate::store::{Store, StoreError};

/// Room in each worker's assignment stream before it is considered stuck.
pub const WORKER_STREAM_DEPTH: usize = 1024;

pub type WorkerSender = mpsc::Sender<Result<proto::WorkerMessage, Status>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] StateError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error(
        "no leader could be reached within {0:?}: fewer than a majority of coordinators may be up"
    )]
    NoLeader(Duration),
    #[error("{}", .0.message())]
    Remote(Status),
    #[error("{0}")]
    Denied(String),
    /// A forward that ended without the leader's answer (it may have been applied).
    #[error("the leader did not answer: {0}")]
    Unanswered(String),
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] crate::consensus::storage::LogStoreError),
    #[error("invalid cluster configuration: {0}")]
    Cluster(#[from] crate::config::ClusterConfigError),
    #[error(transparent)]
    Driver(#[from] DriverError),
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
    #[error("secrets_key in coordinator.toml: {0}")]
    Secrets(#[from] ferry_common::secrets::SecretsError),
}

struct WorkerLink {
    session: String,
    sender: WorkerSender,
}

pub struct Node {
    pub id: u64,
    state: RwLock<State>,
    proposals: mpsc::Sender<Proposal<machine::Replica>>,
    inputs: mpsc::Sender<Input>,
    role: watch::Receiver<RoleInfo>,
    pub transport: Arc<Transport>,
    pub store: Store,
    pub blobs: BlobStore,
    state_version: watch::Sender<u64>,
    log_version: watch::Sender<u64>,
    /// The newest lines of running attempts (leader only; `live_logs`).
    pub live_logs: live_logs::LiveLogs,
    links: Mutex<HashMap<String, WorkerLink>>,
    heartbeats: Mutex<HashMap<String, i64>>,
    /// When this member last became the leader: a worker's lease runs from its last
    /// heartbeat to this leader, or from here.
    leading_since_ms: Mutex<i64>,
    /// The worker lease and project quotas this member schedules with.
    pub lease_ms: u64,
    /// Every deadline of a call this member makes, from its Raft and lease settings.
    pub timings: ferry_common::timing::Timings,
    /// `[retention]`: the automatic `gc` policy and the grace period of blobs.
    pub retention: crate::config::RetentionSettings,
    /// `[audit]`: how long the audit log keeps its records (the leader trims).
    pub audit: crate::config::AuditSettings,
    /// `[limits]`: what a submitted pipeline is checked against.
    pub limits: ferry_common::spec::SubmitLimits,
    /// This member's own certificate identity: it records what it refused.
    pub identity: ferry_common::pki::Identity,
    /// How many refusals of each caller this member records one by one.
    refusals: audit::RefusalLimiter,
    quotas: BTreeMap<String, scheduler::Quota>,
    /// Why each queued step stayed queued in the last scheduling pass (leader only).
    waiting: Mutex<HashMap<RunId, BTreeMap<String, String>>>,
    /// The last scheduling pass found nothing to place and nothing waiting: a
    /// submission's first steps may then be placed with it (leader only).
    scheduler_idle: std::sync::atomic::AtomicBool,
    /// Requests being proposed here, by id: a retry joins the first (leader).
    in_flight: in_flight::InFlight,
    /// What this member counts for Prometheus (served when `[metrics]` is set).
    pub metrics: metrics::NodeMetrics,
    /// Turns true when this member must stop serving (storage failure, removed).
    stop: watch::Sender<Option<String>>,
    /// Administrators, learners and their promotion.
    pub membership: membership::Membership,
    /// The secrets keys (`secrets_key`, `secrets_keys`): this member seals the
    /// values it receives and, as the leader, opens them for assignments.
    pub keyring: Option<Arc<ferry_common::secrets::Keyring>>,
}

/// The node's background tasks, each supervised (`ferry_common::tasks`): one
/// that ends before shutdown, or panics, stops the process. Stopping them is part
/// of shutting the node down.
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
        let keyring = config.secrets_keyring()?.map(Arc::new);
        let snapshots = config.data_dir.join("snapshots");
        let log = WalLog::open(&config.data_dir.join("raft-log"), &snapshots)?;
        storage::move_sled_log_into(store.db(), &snapshots, &log)?;
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
                    learner: false,
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
            let mut base =
                existing.unwrap_or_else(|| State::from_records(Vec::new(), Vec::new(), 1));
            for member in &members {
                base.set_member(member.clone());
            }
            let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
            let snapshot = driver::bootstrap_snapshot(&voters, Store::snapshot_data(&base));
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
        let identity = tls.identity.clone();
        let membership = membership::Membership::new(
            config.admin_names()?,
            tls.clone(),
            Duration::from_millis(config.raft.tick_ms * config.raft.election_ticks as u64),
        );
        let (feedback_sender, feedback) = mpsc::channel(1024);
        let transport = Arc::new(Transport::new(
            config.id,
            tls,
            feedback_sender,
            config.timings(),
        ));
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
                        learner: false,
                    },
                );
            }
        }
        transport.set_members(
            &address_book
                .values()
                .map(|m| (m.id, m.peer_address.clone()))
                .collect(),
        );
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
            live_logs: live_logs::LiveLogs::default(),
            links: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            leading_since_ms: Mutex::new(now_ms()),
            lease_ms: config.scheduling.worker_lease_ms,
            timings: config.timings(),
            retention: config.retention.clone(),
            audit: config.audit.clone(),
            limits: config.limits,
            identity: identity.clone(),
            refusals: audit::RefusalLimiter::default(),
            quotas: config.scheduling.quotas()?,
            waiting: Mutex::new(HashMap::new()),
            scheduler_idle: std::sync::atomic::AtomicBool::new(false),
            in_flight: in_flight::InFlight::default(),
            metrics: metrics::NodeMetrics::default(),
            stop: watch::channel(None).0,
            membership,
            keyring,
        });
        let driver = Driver::new(
            config.id,
            log,
            applied,
            Arc::new(machine::Replica::new(node.clone())),
            transport,
            config.raft.clone(),
            role_sender,
        )?;
        let raft = {
            let (node, shutdown) = (node.clone(), shutdown.clone());
            async move {
                let exit = driver
                    .run(
                        proposal_receiver,
                        input_receiver,
                        feedback,
                        shutdown.clone(),
                    )
                    .await;
                match exit {
                    Ok(DriverExit::Shutdown) => return,
                    Ok(DriverExit::Removed) => node.removed_from_cluster(),
                    Err(error) => {
                        tracing::error!(%error, "the Raft loop failed; stopping this member");
                        node.fail_stop(error);
                    }
                }
                // The member stops serving through `serve`; this task ends with
                // the rest at shutdown, so its supervisor sees an orderly end.
                let mut shutdown = shutdown;
                let _ = shutdown.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks: Vec<(&'static str, loops::Task)> = vec![
            ("raft", Box::pin(raft)),
            (
                "scheduler",
                Box::pin(loops::schedule_loop(node.clone(), shutdown.clone())),
            ),
            (
                "leases",
                Box::pin(loops::lease_loop(node.clone(), shutdown.clone())),
            ),
            (
                "cron",
                Box::pin(loops::cron_loop(node.clone(), shutdown.clone())),
            ),
            (
                "leadership",
                Box::pin(loops::leadership_loop(node.clone(), shutdown.clone())),
            ),
            (
                "membership",
                Box::pin(membership::membership_loop(node.clone(), shutdown.clone())),
            ),
        ];
        tasks.push((
            "audit retention",
            Box::pin(loops::audit_retention_loop(node.clone(), shutdown.clone())),
        ));
        if let Some(keep_last) = node.retention.keep_last {
            let retention = loops::retention_loop(node.clone(), keep_last, shutdown.clone());
            tasks.push(("retention", Box::pin(retention)));
        }
        let handles = tasks
            .into_iter()
            .map(|(name, task)| ferry_common::tasks::spawn(name, shutdown.clone(), task))
            .collect();
        Ok((node, NodeTasks { handles }))
    }

    /// Hands a Raft message from a peer to the Raft loop.
    pub async fn step(&self, message: raft::eraftpb::Message) -> Result<(), Status> {
        self.inputs
            .send(Input::Message(Box::new(message)))
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    /// This member's Raft view.
    pub async fn local_status(&self) -> Result<LocalStatus, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Status(reply))
            .await
            .map_err(|_| ConsensusError::ShuttingDown)?;
        Ok(answer.await.map_err(|_| ConsensusError::ShuttingDown)?)
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

    fn fail_stop(&self, error: DriverError) {
        self.stop
            .send_replace(Some(format!("the Raft loop failed: {error}")));
    }

    fn removed_from_cluster(&self) {
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
        write(&self.state, "state")
    }

    pub(crate) fn state_changed(&self) {
        self.state_version.send_modify(|v| *v += 1);
    }

    /// Runs `read` on the current state.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&read_lock(&self.state, "state"))
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
        lock(&self.waiting, "waiting")
            .get(&run)
            .cloned()
            .unwrap_or_default()
    }
}
