//! The Raft loop: one task owns the raft-rs `RawNode` and drives it through
//! `tick`/`step`/`propose`, then handles each `Ready` in the order raft-rs
//! requires: send what may go before persistence, install a snapshot, apply the
//! committed entries to the in-memory state machine, append new entries and the
//! hard state, flush the log once, and only then
//! answer proposers, send the messages that depend on the flush, and push work to
//! workers.
//!
//! Proposals from many callers are batched into one entry (`EntryBatch`); the
//! proposer learns its result when that entry is applied. An entry proposed here
//! but replaced by another leader's entry at the same index fails its callers with
//! `NotCommitted`, which is safe to retry.
//!
//! The state machine is never written record by record: the log (a snapshot of the
//! whole state plus the entries after it) is its durable form. Compaction every
//! `snapshot_every` entries replaces the oldest entries with a fresh snapshot; a
//! start decodes the snapshot and raft-rs hands back the committed entries after
//! it, which are applied again exactly as the first time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::storage::{LogStore, SledLog};
use super::transport::{Feedback, Transport};
use crate::config::RaftSettings;
use crate::node::{Node, ProposeError};
use crate::state::{Command, Member, Outcome, StateError};
use crate::store::{StateImage, Store};

/// Most commands in one Raft entry.
const MAX_COMMANDS_PER_ENTRY: usize = 4096;

/// The commands of one Raft entry, as read back ([`EntryBatchRef`] also names
/// the proposing member and its batch number, for whoever reads a log).
#[derive(Deserialize)]
struct EntryBatch {
    commands: Vec<Command>,
}

/// What one Raft entry carries: commands proposed together on one member.
#[derive(Serialize)]
struct EntryBatchRef<'a> {
    origin: u64,
    seq: u64,
    commands: &'a [Command],
}

pub struct Proposal {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// Requests to the Raft loop other than proposals.
pub enum Input {
    Message(Box<Message>),
    /// A linearizable read: answered once this member has applied everything the
    /// leader had committed when the read arrived.
    ReadIndex(oneshot::Sender<()>),
    ConfChange(ConfChange, oneshot::Sender<Result<(), ProposeError>>),
    TransferLeadership(oneshot::Sender<Option<u64>>),
    Status(oneshot::Sender<LocalStatus>),
}

/// The Raft log as raft-rs sees it: the sled log, except that a snapshot made
/// before a peer joined is not offered to that peer (it would refuse a snapshot
/// whose configuration leaves it out). Raft then asks again, and the loop makes a
/// fresh snapshot meanwhile.
#[derive(Clone)]
pub struct DriverLog {
    log: SledLog,
    snapshot_wanted: Arc<AtomicBool>,
}

impl DriverLog {
    fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::SeqCst)
    }
}

impl Storage for DriverLog {
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
        let snapshot = self.log.snapshot(request_index, to);
        if let Ok(snapshot) = &snapshot {
            let conf = snapshot.get_metadata().get_conf_state();
            if !conf.voters.contains(&to) && !conf.learners.contains(&to) {
                self.snapshot_wanted.store(true, Ordering::SeqCst);
                return Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ));
            }
        } else {
            self.snapshot_wanted.store(true, Ordering::SeqCst);
        }
        snapshot
    }
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
}

/// An entry proposed here and not yet applied, by log index. The entry applied
/// at that index is this one exactly when its term matches (Raft's log matching),
/// and then its commands are taken from here instead of decoded again.
struct PendingBatch {
    term: u64,
    commands: Vec<Command>,
    replies: Vec<oneshot::Sender<Result<Outcome, ProposeError>>>,
}

pub struct Driver {
    raw: RawNode<DriverLog>,
    log: SledLog,
    wanted: DriverLog,
    node: Arc<Node>,
    transport: Arc<Transport>,
    settings: RaftSettings,
    applied: u64,
    snapshot_index: u64,
    /// The index of the snapshot being made on another thread, if any.
    compacting: Option<u64>,
    compacted: mpsc::UnboundedSender<Result<u64, String>>,
    compactions: Option<mpsc::UnboundedReceiver<Result<u64, String>>>,
    next_seq: u64,
    pending: BTreeMap<u64, PendingBatch>,
    next_read: u64,
    reads_asked: HashMap<Vec<u8>, oneshot::Sender<()>>,
    reads_waiting: Vec<(u64, oneshot::Sender<()>)>,
    role: watch::Sender<RoleInfo>,
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
/// voters, and a state holding only the members. A member added later has an
/// empty log and so receives the leader's snapshot before any entry. `base` is
/// the state a one-coordinator installation (before replication) left behind.
pub fn bootstrap_snapshot(members: &[Member], base: crate::state::State) -> Snapshot {
    let mut state = base;
    for member in members {
        state.set_member(member.clone());
    }
    let mut snapshot = Snapshot {
        data: Store::snapshot_data(&state).into(),
        ..Default::default()
    };
    let metadata = snapshot.mut_metadata();
    metadata.index = 1;
    metadata.term = 1;
    metadata.mut_conf_state().voters = members.iter().map(|m| m.id).collect();
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

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        log: SledLog,
        applied: u64,
        node: Arc<Node>,
        transport: Arc<Transport>,
        settings: RaftSettings,
        role: watch::Sender<RoleInfo>,
    ) -> Result<Driver, raft::Error> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let snapshot_index = log.first_index()?.saturating_sub(1);
        let (compacted, compactions) = mpsc::unbounded_channel();
        let wanted = DriverLog {
            log: log.clone(),
            snapshot_wanted: Arc::default(),
        };
        let raw = RawNode::new(
            &raft_config(id, &settings, applied),
            wanted.clone(),
            &logger,
        )?;
        Ok(Driver {
            raw,
            log,
            wanted,
            node,
            transport,
            settings,
            applied,
            snapshot_index,
            compacting: None,
            compacted,
            compactions: Some(compactions),
            next_seq: 1,
            pending: BTreeMap::new(),
            next_read: 1,
            reads_asked: HashMap::new(),
            reads_waiting: Vec::new(),
            role,
        })
    }

    pub async fn run(
        mut self,
        mut proposals: mpsc::Receiver<Proposal>,
        mut inputs: mpsc::Receiver<Input>,
        mut feedback: mpsc::Receiver<Feedback>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.settings.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A one-member cluster elects itself at once instead of after a timeout.
        if self.raw.raft.prs().conf().voters().ids().len() == 1
            && self.raw.raft.promotable()
            && let Err(error) = self.raw.campaign()
        {
            tracing::warn!(%error, "cannot start an election");
        }
        let mut compactions = self.compactions.take().expect("run is called once");
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                Some(result) = compactions.recv() => self.compaction_finished(result),
                _ = ticker.tick() => {
                    self.raw.tick();
                    if let Err(error) = self.maybe_compact() {
                        tracing::warn!(%error, "cannot make a snapshot");
                    }
                }
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
            if self.raw.has_ready()
                && let Err(error) = self.on_ready().await
            {
                tracing::error!(%error, "the Raft loop cannot persist; stopping this member");
                self.node.fail_stop(error);
                break;
            }
            self.publish_role();
        }
        self.fail_all_pending(ProposeError::ShuttingDown);
        tracing::info!("raft loop stopped");
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
            self.fail_all_pending(ProposeError::Unknown);
        }
        // Reads whose callers gave up are forgotten.
        self.reads_asked.retain(|_, reply| !reply.is_closed());
        self.reads_waiting.retain(|(_, reply)| !reply.is_closed());
    }

    fn handle_feedback(&mut self, event: Feedback) {
        match event {
            Feedback::Unreachable(id) => self.raw.report_unreachable(id),
            Feedback::Removed => self.node.removed_from_cluster(),
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

    fn handle_input(&mut self, input: Input) {
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
                    Err(ProposeError::NotLeader)
                } else {
                    self.raw
                        .propose_conf_change(Vec::new(), change)
                        .map_err(|e| ProposeError::Refused(e.to_string()))
                };
                let _ = reply.send(result);
            }
            Input::TransferLeadership(reply) => {
                let _ = reply.send(self.transfer_leadership());
            }
            Input::Status(reply) => {
                let raft = &self.raw.raft;
                let matched = if raft.state == StateRole::Leader {
                    raft.prs()
                        .iter()
                        .map(|(id, pr)| (*id, pr.matched))
                        .collect()
                } else {
                    BTreeMap::new()
                };
                let _ = reply.send(LocalStatus {
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

    fn propose(&mut self, batch: Vec<Proposal>) {
        if self.raw.raft.state != StateRole::Leader {
            for proposal in batch {
                let _ = proposal.reply.send(Err(ProposeError::NotLeader));
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let data = serde_json::to_vec(&EntryBatchRef {
            origin: self.raw.raft.id,
            seq,
            commands: &commands,
        })
        .expect("commands always serialize");
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
                    let _ = reply.send(Err(ProposeError::NotLeader));
                }
            }
        }
    }

    fn fail_all_pending(&mut self, error: ProposeError) {
        for (_, batch) in std::mem::take(&mut self.pending) {
            for reply in batch.replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    async fn on_ready(&mut self) -> Result<(), String> {
        let mut ready = self.raw.ready();
        // A leader may send before its own write is durable (Raft thesis 10.2.1).
        self.transport.send(ready.take_messages());
        let mut answers = Vec::new();
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        self.apply_entries(ready.take_committed_entries(), &mut answers)?;
        if !ready.entries().is_empty() {
            self.log
                .append(ready.entries())
                .map_err(|e| e.to_string())?;
        }
        if let Some(hard_state) = ready.hs() {
            self.log
                .set_hard_state(hard_state)
                .map_err(|e| e.to_string())?;
        }
        for read in ready.take_read_states() {
            if let Some(reply) = self.reads_asked.remove(&read.request_ctx) {
                self.reads_waiting.push((read.index, reply));
            }
        }
        self.node.store.flush().await.map_err(|e| e.to_string())?;
        self.transport.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hard_state = self.log.hard_state();
            hard_state.commit = commit;
            self.log
                .set_hard_state(&hard_state)
                .map_err(|e| e.to_string())?;
        }
        self.transport.send(light.take_messages());
        let more = light.take_committed_entries();
        if !more.is_empty() {
            self.apply_entries(more, &mut answers)?;
            self.node.store.flush().await.map_err(|e| e.to_string())?;
        }
        self.raw.advance_apply_to(self.applied);
        self.answer(answers);
        self.maybe_compact()?;
        Ok(())
    }

    fn answer(&mut self, answers: Vec<Answer>) {
        for (outcome, reply) in answers {
            if let Ok(outcome) = &outcome {
                self.node.carry_out(outcome);
            }
            if let Some(reply) = reply {
                let _ = reply.send(outcome.map_err(ProposeError::from));
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
        self.node.state_changed();
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), String> {
        let index = snapshot.get_metadata().index;
        tracing::info!(
            index,
            bytes = snapshot.data.len(),
            "installing a snapshot from the leader"
        );
        // Decoded before anything is written: a snapshot that does not decode
        // changes nothing here.
        let state = Store::state_from_snapshot(&snapshot.data).map_err(|e| e.to_string())?;
        self.log
            .apply_snapshot(snapshot)
            .map_err(|e| e.to_string())?;
        self.transport.set_members(&state.members);
        self.node.replace_state(state);
        self.applied = index;
        self.snapshot_index = index;
        Ok(())
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        answers: &mut Vec<Answer>,
    ) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let me = self.raw.raft.id;
        let mut removed_self = false;
        {
            let mut state = self.node.state_mut();
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
                        let (commands, mut replies) = match self.pending.remove(&entry.index) {
                            Some(batch) if ours => (
                                batch.commands,
                                batch.replies.into_iter().map(Some).collect::<Vec<_>>(),
                            ),
                            _ => {
                                let batch: EntryBatch = serde_json::from_slice(&entry.data)
                                    .map_err(|e| {
                                        format!("raft entry {} does not decode: {e}", entry.index)
                                    })?;
                                (batch.commands, Vec::new())
                            }
                        };
                        replies.resize_with(commands.len(), || None);
                        for (command, reply) in commands.into_iter().zip(replies) {
                            answers.push((state.apply(command), reply));
                        }
                    }
                    EntryType::EntryConfChange => {
                        let change = ConfChange::parse_from_bytes(&entry.data).map_err(|e| {
                            format!("raft entry {} does not decode: {e}", entry.index)
                        })?;
                        let conf_state = self
                            .raw
                            .apply_conf_change(&change)
                            .map_err(|e| e.to_string())?;
                        self.log
                            .set_conf_state(&conf_state)
                            .map_err(|e| e.to_string())?;
                        match change.get_change_type() {
                            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                                match serde_json::from_slice::<Member>(&change.context) {
                                    Ok(member) if member.id == change.node_id => {
                                        tracing::info!(member = member.id, address = %member.client_address, "member added");
                                        state.set_member(member);
                                    }
                                    _ => tracing::warn!(
                                        member = change.node_id,
                                        "a member was added without its addresses"
                                    ),
                                }
                            }
                            ConfChangeType::RemoveNode => {
                                tracing::info!(member = change.node_id, "member removed");
                                state.remove_member(change.node_id);
                                removed_self |= change.node_id == me;
                            }
                        }
                        self.transport.set_members(&state.members);
                    }
                    EntryType::EntryConfChangeV2 => {
                        return Err(format!(
                            "raft entry {} is a joint configuration change, which Ferry does not make",
                            entry.index
                        ));
                    }
                }
                self.applied = entry.index;
            }
        }
        // Pending batches at or below the applied index that were not matched above
        // were replaced by another leader's entries: they will never commit.
        let applied = self.applied;
        let later = self.pending.split_off(&(applied + 1));
        for (_, batch) in std::mem::replace(&mut self.pending, later) {
            for reply in batch.replies {
                let _ = reply.send(Err(ProposeError::NotCommitted));
            }
        }
        if removed_self {
            self.node.removed_from_cluster();
        }
        Ok(())
    }

    /// Starts a snapshot of the state at the applied index when `snapshot_every`
    /// entries were applied since the last one, or a peer needs a fresher one.
    /// Taking the image is cheap (runs are shared); encoding it and writing it
    /// happen on a blocking thread while this loop goes on, and the log is
    /// truncated only once the snapshot is durable (`compaction_finished`).
    fn maybe_compact(&mut self) -> Result<(), String> {
        if self.compacting.is_some() {
            return Ok(());
        }
        let due = self.applied >= self.snapshot_index + self.settings.snapshot_every;
        if !due && !self.wanted.take_snapshot_request() {
            return Ok(());
        }
        let index = self.applied;
        let term = self
            .raw
            .raft
            .raft_log
            .term(index)
            .map_err(|e| e.to_string())?;
        let conf_state: ConfState = self.raw.raft.prs().conf().to_conf_state();
        let image = self.node.read(StateImage::of);
        let (log, done) = (self.log.clone(), self.compacted.clone());
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
            let result = log.compact(snapshot).map_err(|e| e.to_string());
            if result.is_ok() {
                tracing::info!(
                    index,
                    bytes,
                    encode_ms,
                    total_ms = began.elapsed().as_millis() as u64,
                    "log compacted into a snapshot"
                );
            }
            let _ = done.send(result.map(|()| index));
        });
        Ok(())
    }

    fn compaction_finished(&mut self, result: Result<u64, String>) {
        self.compacting = None;
        match result {
            Ok(index) => self.snapshot_index = self.snapshot_index.max(index),
            // The log keeps its entries; the next compaction tries again. (Refused
            // also when a snapshot from the leader was installed meanwhile.)
            Err(error) => tracing::warn!(%error, "cannot make a snapshot"),
        }
    }
}

type Answer = (
    Result<Outcome, StateError>,
    Option<oneshot::Sender<Result<Outcome, ProposeError>>>,
);
