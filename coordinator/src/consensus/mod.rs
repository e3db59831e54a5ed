//! Raft around a replicated state machine: the durable Raft log (`storage`), the
//! peer transport over mutual TLS (`transport`), and the loop that drives raft-rs
//! and applies committed commands (`driver`).
//!
//! API boundary: consensus knows nothing of runs, workers or the coordinator's
//! runtime. It talks to the state machine through [`StateMachine`] (apply,
//! snapshot image, restore, outcome delivery) and to the other members through
//! [`Network`]; it owns its errors ([`ConsensusError`] for a proposer,
//! [`DriverError`] for the loop itself). That boundary is what lets `sim` test the
//! driver deterministically in memory.

pub mod driver;
pub mod storage;
pub mod transport;

#[cfg(test)]
mod sim;

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{ConfChange, Message};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

pub use storage::LogStoreError;

/// What the Raft loop hands to the state machine, in log order.
#[derive(Debug)]
pub enum Committed<C> {
    /// The commands of one normal entry.
    Commands(Vec<C>),
    /// A member joined (as a learner, which does not vote) or a learner was
    /// promoted to voter (`learner` false); `context` is what the proposer of the
    /// change attached (the coordinator attaches the member's addresses).
    MemberAdded {
        id: u64,
        context: Vec<u8>,
        learner: bool,
    },
    MemberRemoved {
        id: u64,
    },
}

/// A state machine replicated by Raft. Every member applies the same committed
/// entries in the same order, so `apply` must be deterministic.
pub trait StateMachine: Send + Sync + 'static {
    type Command: Serialize + DeserializeOwned + Send + 'static;
    type Outcome: Send + 'static;
    /// A command the state machine refused (the refusal is the same on every member).
    type Rejection: Send + 'static;
    /// The state at one applied index, cheap to take on the Raft loop and encoded on
    /// another thread.
    type Image: SnapshotImage;
    /// A decoded snapshot, ready to replace the state.
    type Restored: Send + 'static;

    /// Applies committed entries in order under one exclusive access; returns one
    /// result per command, in order (membership changes produce none).
    fn apply(
        &self,
        committed: Vec<Committed<Self::Command>>,
    ) -> Vec<Result<Self::Outcome, Self::Rejection>>;
    /// Every member's peer address, by id (for the transport).
    fn peers(&self) -> BTreeMap<u64, String>;
    fn image(&self) -> Self::Image;
    /// Decodes a snapshot's data without touching the state (a snapshot that does
    /// not decode changes nothing). Runs on a blocking thread.
    fn decode(&self, data: &[u8]) -> Result<Self::Restored, String>;
    fn restore(&self, restored: Self::Restored);
    /// Carries out an outcome once its entry is durable (before its proposer hears).
    fn deliver(&self, outcome: &Self::Outcome);
    /// Called after each batch of entries was applied and answered.
    fn applied(&self);
    /// The log was compacted into a snapshot of `bytes` bytes, which took
    /// `took` to encode and store (for metrics; nothing by default).
    fn snapshot_made(&self, _bytes: usize, _took: std::time::Duration) {}
}

/// The state at one applied index; `encode` gives the snapshot's data.
pub trait SnapshotImage: Send + 'static {
    fn encode(&self) -> Vec<u8>;
}

/// How Raft messages reach the other members. Sending never waits: a message
/// that cannot be queued is dropped (Raft resends) and reported as
/// [`Feedback::Unreachable`].
pub trait Network: Send + Sync + 'static {
    fn send(&self, messages: Vec<Message>);
    /// The members to keep links to, with their peer addresses.
    fn set_peers(&self, peers: &BTreeMap<u64, String>);
}

/// What the network tells the Raft loop.
#[derive(Debug)]
pub enum Feedback {
    Unreachable(u64),
    /// The leader said this member is no longer in the cluster.
    Removed,
    SnapshotSent {
        to: u64,
        ok: bool,
    },
}

/// Why a proposal was not applied (as opposed to applied and refused by the state
/// machine, which is its outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    #[error("this coordinator is not the leader")]
    NotLeader,
    #[error(
        "the change was not committed (leadership changed while it was in flight); it is safe to retry"
    )]
    NotCommitted,
    #[error(
        "leadership changed before the change was confirmed: it may or may not have been \
         applied; check before repeating it (a retried `ferry run` is never applied twice)"
    )]
    Unknown,
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("the change was refused: {0}")]
    Refused(String),
}

/// A proposer's answer: the state machine's result once the entry is applied and
/// durable, or why it was not applied.
pub type Answer<S> =
    Result<Result<<S as StateMachine>::Outcome, <S as StateMachine>::Rejection>, ConsensusError>;

pub struct Proposal<S: StateMachine> {
    pub command: S::Command,
    pub reply: oneshot::Sender<Answer<S>>,
    /// The command as the JSON its entry carries, when the proposer encoded it
    /// already (off the Raft loop: a 100,000-step submission is 28 MB of it);
    /// else the loop encodes it.
    pub encoded: Option<Vec<u8>>,
}

/// Requests to the Raft loop other than proposals.
pub enum Input {
    Message(Box<Message>),
    /// A linearizable read: answered once this member has applied everything the
    /// leader had committed when the read arrived.
    ReadIndex(oneshot::Sender<()>),
    ConfChange(ConfChange, oneshot::Sender<Result<(), ConsensusError>>),
    TransferLeadership(oneshot::Sender<Option<u64>>),
    Status(oneshot::Sender<LocalStatus>),
}

/// Who leads, as this member sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleInfo {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub role: &'static str,
}

impl RoleInfo {
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.id)
    }
}

/// This member's Raft view, for `ferry cluster status`.
#[derive(Debug, Clone, Default)]
pub struct LocalStatus {
    pub id: u64,
    pub role: &'static str,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    /// The leader's record of what each follower has (matched index).
    pub matched: BTreeMap<u64, u64>,
    /// The members the leader is streaming entries to (raft-rs's `Replicate`
    /// progress state, as opposed to probing or sending a snapshot); leader only.
    pub replicating: BTreeSet<u64>,
    /// The configuration this member knows: who votes, who only learns.
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
}

/// Why the Raft loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverExit {
    /// Asked to stop.
    Shutdown,
    /// This member was removed from the cluster: it must not serve again.
    Removed,
}

/// A failure of the Raft loop itself: the member must stop serving.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft entry {index} does not decode: {detail}")]
    Undecodable { index: u64, detail: String },
    #[error("raft entry {index} is a joint configuration change, which Ferry does not make")]
    JointChange { index: u64 },
    #[error("the snapshot at index {index} from the leader does not decode: {detail}")]
    Snapshot { index: u64, detail: String },
    #[error("a background job of the Raft loop died: {0}")]
    Background(String),
}
