//! The Raft loop: one task owns the raft-rs `RawNode` and drives it through
//! `tick`/`step`/`propose`, then handles each `Ready` in the order raft-rs
//! requires: send what may go before persistence, install a snapshot, apply the
//! committed entries to the state machine, append new entries and the hard state,
//! make the log durable once, and only then answer proposers, send the messages
//! that depend on it, and let the state machine carry out the outcomes.
//!
//! Proposals from many callers are batched into one entry; the proposer learns its
//! result when that entry is applied. An entry proposed here but replaced by
//! another leader's entry at the same index fails its callers with
//! `NotCommitted`, which is safe to retry.
//!
//! The state machine is never written record by record: the log (a snapshot of the
//! whole state plus the entries after it) is its durable form. Compaction every
//! `snapshot_every` entries replaces the oldest entries with a fresh snapshot; a
//! start decodes the snapshot and raft-rs hands back the committed entries after
//! it, which are applied again exactly as the first time.
//!
//! The loop is generic over the state machine, the log and the network, so that
//! `consensus::sim` runs several drivers in one test against an in-memory network.
//! Work that blocks (encoding and writing a snapshot, reading one for a follower,
//! installing one from the leader) runs on blocking threads, never on the loop's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::storage::{LogStore, LogStoreError};
use super::{
    Answer, Committed, ConsensusError, DriverError, DriverExit, Feedback, Input, LocalStatus,
    Network, Proposal, RoleInfo, SnapshotImage, StateMachine,
};
use crate::config::RaftSettings;

/// Most commands in one Raft entry.
const MAX_COMMANDS_PER_ENTRY: usize = 4096;

/// The commands of one Raft entry, as read back ([`EntryBatchRef`] also names
/// the proposing member and its batch number, for whoever reads a log).
#[derive(Deserialize)]
#[serde(bound = "C: DeserializeOwned")]
struct EntryBatch<C> {
    commands: Vec<C>,
}

/// What one Raft entry carries: commands proposed together on one member.
#[derive(Serialize)]
struct EntryBatchRef<'a, C: Serialize> {
    origin: u64,
    seq: u64,
    commands: &'a [C],
}

/// The data of the entry that carries `batch`: an [`EntryBatchRef`], written
/// around the commands' own JSON where their proposers encoded it (off the
/// loop), else encoded here.
fn entry_data<S: StateMachine>(origin: u64, seq: u64, batch: &[Proposal<S>]) -> Vec<u8> {
    if batch.iter().any(|p| p.encoded.is_none()) {
        let commands: Vec<&S::Command> = batch.iter().map(|p| &p.command).collect();
        return serde_json::to_vec(&EntryBatchRef {
            origin,
            seq,
            commands: &commands,
        })
        .expect("commands always serialize");
    }
    let size: usize = batch
        .iter()
        .filter_map(|p| p.encoded.as_ref())
        .map(Vec::len)
        .sum();
    let mut data = Vec::with_capacity(size + batch.len() + 64);
    data.extend_from_slice(format!(r#"{{"origin":{origin},"seq":{seq},"commands":["#).as_bytes());
    for (i, encoded) in batch.iter().filter_map(|p| p.encoded.as_ref()).enumerate() {
        if i > 0 {
            data.push(b',');
        }
        data.extend_from_slice(encoded);
    }
    data.extend_from_slice(b"]}");
    data
}

/// The Raft log as raft-rs sees it: the durable log, except that the snapshot a
/// follower needs is read on a blocking thread ahead of time (raft-rs asks for it
/// on the loop, and reading means reading and verifying a whole file), and a
/// snapshot made before a peer joined is not offered to that peer (it would
/// refuse a snapshot whose configuration leaves it out). Raft asks again at its
/// next heartbeat; meanwhile the loop reads the snapshot, or makes a fresh one.
#[derive(Clone)]
pub struct DriverLog<L> {
    log: L,
    /// A fresh snapshot is wanted (for a peer the current one leaves out).
    snapshot_wanted: Arc<AtomicBool>,
    /// The snapshot with its data, read for followers that need it (one copy in
    /// memory, dropped when a newer snapshot replaces it).
    prepared: Arc<Mutex<Option<Snapshot>>>,
    /// The snapshot must be read (nothing is prepared, or an older one is).
    read_wanted: Arc<AtomicBool>,
}

impl<L: LogStore> DriverLog<L> {
    fn new(log: L) -> DriverLog<L> {
        DriverLog {
            log,
            snapshot_wanted: Arc::default(),
            prepared: Arc::default(),
            read_wanted: Arc::default(),
        }
    }

    fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::SeqCst)
    }

    fn take_read_request(&self) -> bool {
        self.read_wanted.swap(false, Ordering::SeqCst)
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        ferry_common::locks::lock(&self.prepared, "prepared snapshot")
    }
}

impl<L: LogStore> Storage for DriverLog<L> {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.log.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size, context)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.log.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || {
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ))
        };
        let current = self.log.first_index()?.saturating_sub(1);
        let prepared = self.prepared().clone();
        match prepared {
            Some(snapshot)
                if snapshot.get_metadata().index == current
                    && snapshot.get_metadata().index >= request_index =>
            {
                let conf = snapshot.get_metadata().get_conf_state();
                if conf.voters.contains(&to) || conf.learners.contains(&to) {
                    return Ok(snapshot);
                }
                self.snapshot_wanted.store(true, Ordering::SeqCst);
                unavailable()
            }
            _ => {
                // raft-rs treats any other storage error here as fatal: a snapshot
                // that cannot be read yet is only "temporarily unavailable".
                self.read_wanted.store(true, Ordering::SeqCst);
                unavailable()
            }
        }
    }
}

/// An entry proposed here and not yet applied, by log index. The entry applied
/// at that index is this one exactly when its term matches (Raft's log matching),
/// and then its commands are taken from here instead of decoded again.
struct PendingBatch<S: StateMachine> {
    term: u64,
    commands: Vec<S::Command>,
    replies: Vec<oneshot::Sender<Answer<S>>>,
}

/// What a blocking job of the loop finished.
enum Background {
    /// The snapshot's index (or why none was made), its size and how long it took.
    Compacted(Result<u64, LogStoreError>, usize, std::time::Duration),
    SnapshotRead(Result<Snapshot, raft::Error>),
}

pub struct Driver<S: StateMachine, L: LogStore, N: Network> {
    raw: RawNode<DriverLog<L>>,
    log: L,
    wanted: DriverLog<L>,
    machine: Arc<S>,
    network: Arc<N>,
    settings: RaftSettings,
    applied: u64,
    snapshot_index: u64,
    /// The index of the snapshot being made on another thread, if any.
    compacting: Option<u64>,
    /// A snapshot is being read for a follower on another thread.
    reading: bool,
    background: mpsc::UnboundedSender<Background>,
    finished: mpsc::UnboundedReceiver<Background>,
    next_seq: u64,
    pending: BTreeMap<u64, PendingBatch<S>>,
    next_read: u64,
    reads_asked: HashMap<Vec<u8>, oneshot::Sender<()>>,
    reads_waiting: Vec<(u64, oneshot::Sender<()>)>,
    role: watch::Sender<RoleInfo>,
    /// Set once this member applied its own removal.
    removed: bool,
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

/// The snapshot every initial member starts from: index 1, term 1, the initial
/// voters, and `data`, the state machine holding only the members. A member added
/// later has an empty log and so receives the leader's snapshot before any entry.
pub fn bootstrap_snapshot(voters: &[u64], data: Vec<u8>) -> Snapshot {
    let mut snapshot = Snapshot {
        data: data.into(),
        ..Default::default()
    };
    let metadata = snapshot.mut_metadata();
    metadata.index = 1;
    metadata.term = 1;
    metadata.mut_conf_state().voters = voters.to_vec();
    snapshot
}

pub fn raft_config(id: u64, settings: &RaftSettings, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: settings.election_ticks,
        heartbeat_tick: settings.heartbeat_ticks,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

type Answers<S> = Vec<(
    Result<<S as StateMachine>::Outcome, <S as StateMachine>::Rejection>,
    Option<oneshot::Sender<Answer<S>>>,
)>;

impl<S: StateMachine, L: LogStore, N: Network> Driver<S, L, N> {
    /// A driver over `log`, whose state machine has applied everything up to
    /// `applied` (the snapshot's index at start: raft-rs hands back the committed
    /// entries after it).
    pub fn new(
        id: u64,
        log: L,
        applied: u64,
        machine: Arc<S>,
        network: Arc<N>,
        settings: RaftSettings,
        role: watch::Sender<RoleInfo>,
    ) -> Result<Self, DriverError> {
        let config = raft_config(id, &settings, applied);
        Self::with_config(config, log, machine, network, settings, role)
    }

    /// As [`Driver::new`], with raft-rs's configuration given whole (the
    /// simulation fixes each member's election timeout, which raft-rs otherwise
    /// draws at random).
    pub fn with_config(
        config: raft::Config,
        log: L,
        machine: Arc<S>,
        network: Arc<N>,
        settings: RaftSettings,
        role: watch::Sender<RoleInfo>,
    ) -> Result<Self, DriverError> {
        let applied = config.applied;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let snapshot_index = log.first_index()?.saturating_sub(1);
        let (background, finished) = mpsc::unbounded_channel();
        let wanted = DriverLog::new(log.clone());
        let raw = RawNode::new(&config, wanted.clone(), &logger)?;
        Ok(Driver {
            raw,
            log,
            wanted,
            machine,
            network,
            settings,
            applied,
            snapshot_index,
            compacting: None,
            reading: false,
            background,
            finished,
            next_seq: 1,
            pending: BTreeMap::new(),
            next_read: 1,
            reads_asked: HashMap::new(),
            reads_waiting: Vec::new(),
            role,
            removed: false,
        })
    }

    /// Runs until `shutdown` turns true, this member is removed from the cluster,
    /// or the log cannot be written (an error: the member must stop serving).
    pub async fn run(
        mut self,
        mut proposals: mpsc::Receiver<Proposal<S>>,
        mut inputs: mpsc::Receiver<Input>,
        mut feedback: mpsc::Receiver<Feedback>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<DriverExit, DriverError> {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.settings.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.campaign_if_alone();
        // A loop that does not come round for several ticks cannot answer
        // heartbeats: followers start elections, a leader loses its quorum. Say
        // so, with how long, so that a stall is seen where it happens.
        let stall = Duration::from_millis(self.settings.tick_ms.saturating_mul(4).max(100));
        let mut last_round = std::time::Instant::now();
        let exit = loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break Ok(DriverExit::Shutdown),
                Some(done) = self.finished.recv() => self.background_finished(done),
                _ = ticker.tick() => self.tick(),
                Some(input) = inputs.recv() => {
                    self.handle_input(input);
                    while let Ok(input) = inputs.try_recv() {
                        self.handle_input(input);
                    }
                }
                Some(first) = proposals.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_COMMANDS_PER_ENTRY {
                        match proposals.try_recv() {
                            Ok(proposal) => batch.push(proposal),
                            Err(_) => break,
                        }
                    }
                    self.propose(batch);
                }
                Some(event) = feedback.recv() => self.handle_feedback(event),
            }
            let woke = std::time::Instant::now();
            let away = woke - last_round;
            if away > stall {
                tracing::warn!(
                    away_ms = away.as_millis() as u64,
                    "the Raft loop did not run for several ticks"
                );
            }
            // Test builds only: a Raft loop that dies, or ends by itself.
            if ferry_common::faults::should_return("coordinator.raft") {
                break Ok(DriverExit::Shutdown);
            }
            if let Err(error) = self.process_ready().await {
                break Err(error);
            }
            last_round = std::time::Instant::now();
            let busy = last_round - woke;
            if busy > stall {
                tracing::warn!(
                    busy_ms = busy.as_millis() as u64,
                    "one round of the Raft loop took several ticks"
                );
            }
            if self.removed {
                break Ok(DriverExit::Removed);
            }
        };
        self.fail_all_pending(ConsensusError::ShuttingDown);
        exit
    }

    /// A one-member cluster elects itself at once instead of after a timeout.
    pub fn campaign_if_alone(&mut self) {
        if self.raw.raft.prs().conf().voters().ids().len() == 1
            && self.raw.raft.promotable()
            && let Err(error) = self.raw.campaign()
        {
            tracing::warn!(%error, "cannot start an election");
        }
    }

    /// One tick of Raft's logical clock; may start a compaction or a snapshot read.
    pub fn tick(&mut self) {
        self.raw.tick();
        if let Err(error) = self.start_background_work() {
            tracing::warn!(%error, "cannot make a snapshot");
        }
    }

    /// Handles whatever raft-rs has ready, then publishes the role.
    pub async fn process_ready(&mut self) -> Result<(), DriverError> {
        if self.raw.has_ready() {
            self.on_ready().await?;
        }
        self.publish_role();
        Ok(())
    }

    /// The id of this member.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    fn publish_role(&mut self) {
        let raft = &self.raw.raft;
        let info = RoleInfo {
            id: raft.id,
            leader: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
            term: raft.term,
            role: role_name(raft.state),
        };
        let was_leader = self.role.borrow().is_leader();
        let now_leader = info.is_leader();
        self.role.send_if_modified(|current| {
            if *current == info {
                return false;
            }
            tracing::info!(term = info.term, leader = ?info.leader, role = info.role, "raft role changed");
            *current = info;
            true
        });
        if was_leader && !now_leader && !self.pending.is_empty() {
            // Entries proposed here may still commit under the next leader, or may
            // be lost: the proposers are told the outcome is unknown rather than
            // left waiting (or told to retry something that may have happened).
            tracing::info!(
                batches = self.pending.len(),
                "leadership lost with proposals in flight"
            );
            self.fail_all_pending(ConsensusError::Unknown);
        }
        // Reads whose callers gave up are forgotten.
        self.reads_asked.retain(|_, reply| !reply.is_closed());
        self.reads_waiting.retain(|(_, reply)| !reply.is_closed());
    }

    pub fn handle_feedback(&mut self, event: Feedback) {
        match event {
            Feedback::Unreachable(id) => self.raw.report_unreachable(id),
            Feedback::Removed => {
                tracing::warn!(
                    id = self.id(),
                    "the leader says this member was removed from the cluster"
                );
                self.removed = true;
            }
            Feedback::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    pub fn handle_input(&mut self, input: Input) {
        match input {
            Input::Message(message) => {
                if let Err(error) = self.raw.step(*message) {
                    tracing::debug!(%error, "raft message refused");
                }
            }
            Input::ReadIndex(reply) => {
                let context = self.next_read.to_be_bytes().to_vec();
                self.next_read += 1;
                self.raw.read_index(context.clone());
                self.reads_asked.insert(context, reply);
            }
            Input::ConfChange(change, reply) => {
                let result = if self.raw.raft.state != StateRole::Leader {
                    Err(ConsensusError::NotLeader)
                } else if self.raw.raft.has_pending_conf() {
                    // raft-rs would turn the change into an empty entry without a
                    // word: one change at a time, and the caller hears why.
                    Err(ConsensusError::Refused(
                        "another membership change is still being applied; retry once it is"
                            .to_string(),
                    ))
                } else {
                    self.raw
                        .propose_conf_change(Vec::new(), change)
                        .map_err(|e| ConsensusError::Refused(e.to_string()))
                };
                let _ = reply.send(result);
            }
            Input::TransferLeadership(reply) => {
                let _ = reply.send(self.transfer_leadership());
            }
            Input::Status(reply) => {
                let raft = &self.raw.raft;
                let leading = raft.state == StateRole::Leader;
                let matched = if leading {
                    raft.prs()
                        .iter()
                        .map(|(id, pr)| (*id, pr.matched))
                        .collect()
                } else {
                    BTreeMap::new()
                };
                let replicating = raft
                    .prs()
                    .iter()
                    .filter(|(_, pr)| leading && pr.state == raft::ProgressState::Replicate)
                    .map(|(id, _)| *id)
                    .collect();
                let conf = raft.prs().conf().to_conf_state();
                let _ = reply.send(LocalStatus {
                    replicating,
                    voters: conf.voters.iter().copied().collect(),
                    learners: conf.learners.iter().copied().collect(),
                    id: raft.id,
                    role: role_name(raft.state),
                    leader: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
                    term: raft.term,
                    commit: raft.raft_log.committed,
                    applied: self.applied,
                    last_index: raft.raft_log.last_index(),
                    matched,
                });
            }
        }
    }

    /// Hands leadership to the most up-to-date follower; returns its id.
    fn transfer_leadership(&mut self) -> Option<u64> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let me = raft.id;
        let voters: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
        let best = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id)?;
        tracing::info!(to = best, "transferring leadership");
        self.raw.transfer_leader(best);
        Some(best)
    }

    /// Proposes a batch of commands as one entry (on the leader only).
    pub fn propose(&mut self, batch: Vec<Proposal<S>>) {
        if self.raw.raft.state != StateRole::Leader {
            for proposal in batch {
                let _ = proposal.reply.send(Err(ConsensusError::NotLeader));
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let data = entry_data(self.raw.raft.id, seq, &batch);
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                let batch = PendingBatch {
                    term,
                    commands,
                    replies,
                };
                self.pending.insert(index, batch);
            }
            Err(error) => {
                // Dropped: a leadership transfer is under way, or the leader just
                // stepped down. Nothing was appended, so a retry is safe.
                tracing::debug!(%error, "proposal dropped");
                for reply in replies {
                    let _ = reply.send(Err(ConsensusError::NotLeader));
                }
            }
        }
    }

    fn fail_all_pending(&mut self, error: ConsensusError) {
        for (_, batch) in std::mem::take(&mut self.pending) {
            for reply in batch.replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    async fn on_ready(&mut self) -> Result<(), DriverError> {
        let mut ready = self.raw.ready();
        // A leader may send before its own write is durable (Raft thesis 10.2.1).
        self.network.send(ready.take_messages());
        let mut answers = Vec::new();
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone()).await?;
        }
        self.apply_entries(ready.take_committed_entries(), &mut answers)?;
        if !ready.entries().is_empty() {
            self.log.append(ready.entries())?;
        }
        if let Some(hard_state) = ready.hs() {
            self.log.set_hard_state(hard_state)?;
        }
        for read in ready.take_read_states() {
            if let Some(reply) = self.reads_asked.remove(&read.request_ctx) {
                self.reads_waiting.push((read.index, reply));
            }
        }
        self.log.flush().await?;
        self.network.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hard_state = self.log.hard_state();
            hard_state.commit = commit;
            self.log.set_hard_state(&hard_state)?;
        }
        self.network.send(light.take_messages());
        let more = light.take_committed_entries();
        if !more.is_empty() {
            self.apply_entries(more, &mut answers)?;
            self.log.flush().await?;
        }
        self.raw.advance_apply_to(self.applied);
        self.answer(answers);
        self.start_background_work()?;
        Ok(())
    }

    fn answer(&mut self, answers: Answers<S>) {
        for (outcome, reply) in answers {
            if let Ok(outcome) = &outcome {
                self.machine.deliver(outcome);
            }
            if let Some(reply) = reply {
                let _ = reply.send(Ok(outcome));
            }
        }
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_waiting)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_waiting = waiting;
        for (_, reply) in ready {
            let _ = reply.send(());
        }
        self.machine.applied();
    }

    /// Installs a snapshot from the leader: decoding it and writing it to the log
    /// happen on a blocking thread (the loop waits: raft-rs needs it durable before
    /// anything else), and the state is replaced only once both succeeded.
    async fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), DriverError> {
        let index = snapshot.get_metadata().index;
        tracing::info!(
            index,
            bytes = snapshot.data.len(),
            "installing a snapshot from the leader"
        );
        let (machine, log) = (self.machine.clone(), self.log.clone());
        let restored = tokio::task::spawn_blocking(move || {
            // Decoded before anything is written: a snapshot that does not decode
            // changes nothing here.
            let restored = machine
                .decode(&snapshot.data)
                .map_err(|detail| DriverError::Snapshot { index, detail })?;
            log.apply_snapshot(snapshot)?;
            Ok::<_, DriverError>(restored)
        })
        .await
        .map_err(|e| DriverError::Background(e.to_string()))??;
        self.machine.restore(restored);
        self.network.set_peers(&self.machine.peers());
        self.applied = index;
        self.snapshot_index = index;
        // A snapshot read ahead for followers is older than this one now.
        *self.wanted.prepared() = None;
        Ok(())
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        answers: &mut Answers<S>,
    ) -> Result<(), DriverError> {
        if entries.is_empty() {
            return Ok(());
        }
        let me = self.raw.raft.id;
        let mut committed = Vec::new();
        let mut replies: Vec<Option<oneshot::Sender<Answer<S>>>> = Vec::new();
        let mut members_changed = false;
        for entry in &entries {
            if entry.index <= self.applied {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    let ours = self
                        .pending
                        .get(&entry.index)
                        .is_some_and(|p| p.term == entry.term);
                    let commands = match self.pending.remove(&entry.index) {
                        Some(batch) if ours => {
                            // One reply per command, as proposed.
                            replies.extend(batch.replies.into_iter().map(Some));
                            batch.commands
                        }
                        _ => {
                            let batch: EntryBatch<S::Command> = serde_json::from_slice(&entry.data)
                                .map_err(|e| DriverError::Undecodable {
                                    index: entry.index,
                                    detail: e.to_string(),
                                })?;
                            replies.extend(batch.commands.iter().map(|_| None));
                            batch.commands
                        }
                    };
                    committed.push(Committed::Commands(commands));
                }
                EntryType::EntryConfChange => {
                    let change = ConfChange::parse_from_bytes(&entry.data).map_err(|e| {
                        DriverError::Undecodable {
                            index: entry.index,
                            detail: e.to_string(),
                        }
                    })?;
                    let conf_state = self.raw.apply_conf_change(&change)?;
                    self.log.set_conf_state(&conf_state)?;
                    members_changed = true;
                    match change.get_change_type() {
                        kind @ (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) => {
                            committed.push(Committed::MemberAdded {
                                id: change.node_id,
                                context: change.context.to_vec(),
                                learner: kind == ConfChangeType::AddLearnerNode,
                            });
                        }
                        ConfChangeType::RemoveNode => {
                            committed.push(Committed::MemberRemoved { id: change.node_id });
                            self.removed |= change.node_id == me;
                        }
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    return Err(DriverError::JointChange { index: entry.index });
                }
            }
            self.applied = entry.index;
        }
        if !committed.is_empty() {
            let outcomes = self.machine.apply(committed);
            debug_assert_eq!(outcomes.len(), replies.len());
            answers.extend(outcomes.into_iter().zip(replies));
        }
        if members_changed {
            self.network.set_peers(&self.machine.peers());
        }
        // Pending batches at or below the applied index that were not matched above
        // were replaced by another leader's entries: they will never commit.
        let applied = self.applied;
        let later = self.pending.split_off(&(applied + 1));
        for (_, batch) in std::mem::replace(&mut self.pending, later) {
            for reply in batch.replies {
                let _ = reply.send(Err(ConsensusError::NotCommitted));
            }
        }
        Ok(())
    }

    /// Starts, on blocking threads, a snapshot of the state at the applied index
    /// when `snapshot_every` entries were applied since the last one or a peer
    /// needs a fresher one, and a read of the current snapshot when a follower
    /// needs it. Taking the image is cheap (the state machine shares its records);
    /// the log is truncated only once the snapshot is durable.
    fn start_background_work(&mut self) -> Result<(), DriverError> {
        if self.wanted.take_read_request() && !self.reading && self.compacting.is_none() {
            self.reading = true;
            let (log, done) = (self.log.clone(), self.background.clone());
            tokio::task::spawn_blocking(move || {
                let _ = done.send(Background::SnapshotRead(log.snapshot(0, 0)));
            });
        }
        if self.compacting.is_some() || self.reading {
            return Ok(());
        }
        let due = self.applied >= self.snapshot_index + self.settings.snapshot_every;
        if !due && !self.wanted.take_snapshot_request() {
            return Ok(());
        }
        let index = self.applied;
        let term = self.raw.raft.raft_log.term(index)?;
        let conf_state: ConfState = self.raw.raft.prs().conf().to_conf_state();
        let image = self.machine.image();
        let (log, done) = (self.log.clone(), self.background.clone());
        self.compacting = Some(index);
        tokio::task::spawn_blocking(move || {
            let began = std::time::Instant::now();
            let data = image.encode();
            drop(image);
            let encode_ms = began.elapsed().as_millis() as u64;
            let bytes = data.len();
            let mut snapshot = Snapshot {
                data: data.into(),
                ..Default::default()
            };
            let metadata = snapshot.mut_metadata();
            metadata.index = index;
            metadata.term = term;
            metadata.set_conf_state(conf_state);
            let result = log.compact(snapshot);
            if result.is_ok() {
                tracing::info!(
                    index,
                    bytes,
                    encode_ms,
                    total_ms = began.elapsed().as_millis() as u64,
                    "log compacted into a snapshot"
                );
            }
            let _ = done.send(Background::Compacted(
                result.map(|()| index),
                bytes,
                began.elapsed(),
            ));
        });
        Ok(())
    }

    fn background_finished(&mut self, done: Background) {
        match done {
            Background::Compacted(result, bytes, took) => {
                self.compacting = None;
                match result {
                    Ok(index) => {
                        self.machine.snapshot_made(bytes, took);
                        self.snapshot_index = self.snapshot_index.max(index);
                        // A copy read for followers is older now: free it; the
                        // next follower that needs one gets the new one read.
                        *self.wanted.prepared() = None;
                    }
                    // The log keeps its entries; the next compaction tries again.
                    // (Refused also when a snapshot from the leader was installed
                    // meanwhile.)
                    Err(error) => tracing::warn!(%error, "cannot make a snapshot"),
                }
            }
            Background::SnapshotRead(result) => {
                self.reading = false;
                match result {
                    Ok(snapshot) => *self.wanted.prepared() = Some(snapshot),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the snapshot for a follower")
                    }
                }
            }
        }
    }

    /// Waits for the blocking jobs in flight (tests use it to stay deterministic).
    #[cfg(test)]
    pub async fn settle_background(&mut self) {
        while self.compacting.is_some() || self.reading {
            match self.finished.recv().await {
                Some(done) => self.background_finished(done),
                None => break,
            }
        }
    }

    /// Whether this member applied its own removal.
    #[cfg(test)]
    pub fn removed(&self) -> bool {
        self.removed
    }

    #[cfg(test)]
    pub fn raw(&self) -> &RawNode<DriverLog<L>> {
        &self.raw
    }
}
