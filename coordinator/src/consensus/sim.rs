//! Deterministic tests of the Raft driver: several drivers in one test, each with
//! an in-memory log (`MemLog`) and a small state machine, joined by an in-memory
//! network the test controls (cut links, isolate members, drop, reorder and delay
//! messages), in the manner of raft-rs's own harness (`harness/src/network.rs`).
//! There is no clock and no socket: ticks are explicit, messages move only when
//! the test delivers them, blocking jobs are awaited in place, election timeouts
//! are fixed per member, and a seeded generator picks drops and orders, so every
//! run of a seed is the same run.
//!
//! Every scenario ends by checking the driver's promise: every acknowledged
//! command is applied exactly once, in the same order, on every member, at the
//! position its proposer was told; a command answered "not committed" or "not the
//! leader" is applied nowhere.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use raft::Storage as _;
use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::driver::{Driver, bootstrap_snapshot, raft_config};
use super::storage::{LogStore, MemLog};
use super::{
    Answer, Committed, ConsensusError, Feedback, Input, Network, Proposal, RoleInfo, SnapshotImage,
    StateMachine,
};
use crate::config::RaftSettings;

/// The test state machine: the sequence of applied values, and the members.
#[derive(Default, Clone, Serialize, Deserialize, PartialEq, Debug)]
struct Sequence {
    values: Vec<u64>,
    members: BTreeSet<u64>,
}

#[derive(Default)]
struct Machine {
    state: Mutex<Sequence>,
    /// Snapshots made, as the driver reported them.
    snapshots: std::sync::atomic::AtomicUsize,
}

struct Image(Sequence);

impl SnapshotImage for Image {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("sequences encode")
    }
}

impl StateMachine for Machine {
    type Command = u64;
    /// The command's position in the applied sequence.
    type Outcome = usize;
    type Rejection = String;
    type Image = Image;
    type Restored = Sequence;

    fn apply(&self, committed: Vec<Committed<u64>>) -> Vec<Result<usize, String>> {
        let mut state = self.state.lock().expect("test lock");
        let mut results = Vec::new();
        for item in committed {
            match item {
                Committed::Commands(values) => {
                    for value in values {
                        state.values.push(value);
                        results.push(Ok(state.values.len() - 1));
                    }
                }
                Committed::MemberAdded { id, .. } => {
                    state.members.insert(id);
                }
                Committed::MemberRemoved { id } => {
                    state.members.remove(&id);
                }
            }
        }
        results
    }

    fn peers(&self) -> BTreeMap<u64, String> {
        let state = self.state.lock().expect("test lock");
        state
            .members
            .iter()
            .map(|id| (*id, format!("mem://{id}")))
            .collect()
    }

    fn image(&self) -> Image {
        Image(self.state.lock().expect("test lock").clone())
    }

    fn decode(&self, data: &[u8]) -> Result<Sequence, String> {
        serde_json::from_slice(data).map_err(|e| e.to_string())
    }

    fn restore(&self, restored: Sequence) {
        *self.state.lock().expect("test lock") = restored;
    }

    fn deliver(&self, _outcome: &usize) {}

    fn applied(&self) {}

    fn snapshot_made(&self, bytes: usize, _took: std::time::Duration) {
        assert!(bytes > 0, "a snapshot holds the sequence");
        self.snapshots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A member's outbox: what its driver sent, picked up by the test network.
#[derive(Default)]
struct Outbox {
    messages: Mutex<Vec<Message>>,
}

impl Network for Outbox {
    fn send(&self, messages: Vec<Message>) {
        self.messages.lock().expect("test lock").extend(messages);
    }

    fn set_peers(&self, _peers: &BTreeMap<u64, String>) {}
}

type TestDriver = Driver<Machine, MemLog, Outbox>;

struct Member {
    /// None while the member is down.
    driver: Option<TestDriver>,
    log: MemLog,
    machine: Arc<Machine>,
    outbox: Arc<Outbox>,
    role: watch::Receiver<RoleInfo>,
}

/// A proposal the test made and what it was told.
struct Proposed {
    value: u64,
    reply: oneshot::Receiver<Answer<Machine>>,
    /// The answer once it came; `Err` when the member holding the proposal crashed
    /// (a caller then hears "shutting down").
    heard: Option<Result<Answer<Machine>, ()>>,
}

impl Proposed {
    /// Takes the answer if it came; true once there is one.
    fn poll(&mut self) -> bool {
        if self.heard.is_none() {
            match self.reply.try_recv() {
                Ok(answer) => self.heard = Some(Ok(answer)),
                Err(oneshot::error::TryRecvError::Closed) => self.heard = Some(Err(())),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.heard.is_some()
    }
}

/// A small deterministic generator (SplitMix64): the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Cluster {
    members: BTreeMap<u64, Member>,
    settings: RaftSettings,
    /// Messages on the wire: (round it arrives, message).
    wire: Vec<(u64, Message)>,
    round: u64,
    /// Links that carry nothing, both ways.
    cut: HashSet<(u64, u64)>,
    drop_percent: u64,
    /// Most rounds a message may be held back (0: none).
    max_delay: u64,
    reorder: bool,
    /// Every MsgSnapshot on the wire is lost (its sender learns of the failure).
    drop_snapshots: bool,
    /// Members that neither tick nor handle anything (a stopped process, a long
    /// pause); what is sent to them waits on the wire.
    frozen: HashSet<u64>,
    rng: Rng,
    proposed: Vec<Proposed>,
    next_value: u64,
}

fn settings(snapshot_every: u64) -> RaftSettings {
    RaftSettings {
        tick_ms: 1,
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_every,
    }
}

impl Cluster {
    async fn new(size: u64, settings: RaftSettings, seed: u64) -> Cluster {
        let mut cluster = Cluster {
            members: BTreeMap::new(),
            settings,
            wire: Vec::new(),
            round: 0,
            cut: HashSet::new(),
            drop_percent: 0,
            max_delay: 0,
            reorder: false,
            drop_snapshots: false,
            frozen: HashSet::new(),
            rng: Rng(seed),
            proposed: Vec::new(),
            next_value: 1,
        };
        let voters: Vec<u64> = (1..=size).collect();
        let initial = Sequence {
            values: Vec::new(),
            members: voters.iter().copied().collect(),
        };
        for id in 1..=size {
            let log = MemLog::default();
            let data = serde_json::to_vec(&initial).expect("sequences encode");
            log.apply_snapshot(bootstrap_snapshot(&voters, data))
                .expect("a fresh log takes the bootstrap snapshot");
            let (_, role) = watch::channel(RoleInfo::default());
            cluster.members.insert(
                id,
                Member {
                    driver: None,
                    log,
                    machine: Arc::default(),
                    outbox: Arc::default(),
                    role,
                },
            );
            cluster.start(id);
        }
        cluster
    }

    /// Starts (or restarts) a member from its log, as a process start does: the
    /// state machine from the log's snapshot, the committed entries after it
    /// applied again by the driver.
    fn start(&mut self, id: u64) {
        let settings = self.settings.clone();
        let member = self.members.get_mut(&id).expect("a member of the test");
        let snapshot = raft::Storage::snapshot(&member.log, 0, id).expect("the log has a snapshot");
        let machine = Arc::new(Machine::default());
        if !snapshot.data.is_empty() {
            machine.restore(machine.decode(&snapshot.data).expect("snapshots decode"));
        }
        let outbox = Arc::new(Outbox::default());
        let (role_sender, role) = watch::channel(RoleInfo::default());
        // raft-rs draws each election timeout at random (from the thread's
        // generator, not the test's): fixed and different per member instead, so
        // that a seed is one history.
        let mut config = raft_config(id, &settings, snapshot.get_metadata().index);
        config.min_election_tick = settings.election_ticks + 3 * id as usize;
        config.max_election_tick = config.min_election_tick + 1;
        let driver = Driver::with_config(
            config,
            member.log.clone(),
            machine.clone(),
            outbox.clone(),
            settings,
            role_sender,
        )
        .expect("the driver starts");
        member.driver = Some(driver);
        member.machine = machine;
        member.outbox = outbox;
        member.role = role;
    }

    /// A new member with an empty log (a coordinator started with `join = true`):
    /// it knows nothing until the leader sends it a snapshot.
    fn join(&mut self, id: u64) {
        let (_, role) = watch::channel(RoleInfo::default());
        self.members.insert(
            id,
            Member {
                driver: None,
                log: MemLog::default(),
                machine: Arc::default(),
                outbox: Arc::default(),
                role,
            },
        );
        self.start(id);
    }

    /// Hands a configuration change for member `id` to member `on`; returns what
    /// the driver answered at once (refusals come at once, a change is applied
    /// later).
    fn change(
        &mut self,
        on: u64,
        kind: raft::eraftpb::ConfChangeType,
        id: u64,
    ) -> Result<(), ConsensusError> {
        let mut change = raft::eraftpb::ConfChange::default();
        change.set_change_type(kind);
        change.node_id = id;
        let (reply, mut answer) = oneshot::channel();
        let driver = self.members.get_mut(&on).and_then(|m| m.driver.as_mut());
        driver
            .expect("the member is up")
            .handle_input(Input::ConfChange(change, reply));
        answer.try_recv().expect("answered at once")
    }

    /// Member `id`'s own view: role, configuration, and (on the leader) progress.
    fn status(&mut self, id: u64) -> super::LocalStatus {
        let (reply, mut answer) = oneshot::channel();
        let driver = self.members.get_mut(&id).and_then(|m| m.driver.as_mut());
        driver
            .expect("the member is up")
            .handle_input(Input::Status(reply));
        answer.try_recv().expect("answered at once")
    }

    /// Stops a member at once, as a crash does: what its driver held in memory is
    /// gone, its log (always durable in memory here) stays.
    fn crash(&mut self, id: u64) {
        self.members.get_mut(&id).expect("a member").driver = None;
        let (lost, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|(_, m)| m.to == id);
        self.wire = kept;
        // A snapshot call to a member that died fails, and its sender hears so
        // (the transport reports every snapshot it could not deliver).
        for (_, message) in lost {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.feedback(message.from, Feedback::SnapshotSent { to: id, ok: false });
            }
        }
    }

    fn up(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| m.driver.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Up and not frozen.
    fn running(&self) -> Vec<u64> {
        self.up()
            .into_iter()
            .filter(|id| !self.frozen.contains(id))
            .collect()
    }

    fn isolate(&mut self, id: u64) {
        for other in self.members.keys().copied().collect::<Vec<_>>() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Splits the members into two sides that cannot reach each other.
    fn partition(&mut self, side: &[u64]) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for a in &ids {
            for b in &ids {
                if side.contains(a) != side.contains(b) {
                    self.cut.insert((*a, *b));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.frozen.clear();
        self.drop_percent = 0;
        self.max_delay = 0;
        self.reorder = false;
        self.drop_snapshots = false;
    }

    fn leader(&self) -> Option<u64> {
        let up = self.up();
        let leaders: Vec<u64> = up
            .iter()
            .copied()
            .filter(|id| {
                let driver = self.members[id].driver.as_ref().expect("up");
                driver.raw().raft.state == raft::StateRole::Leader
            })
            .collect();
        // With partitions two may think they lead; the higher term is the real one.
        leaders.into_iter().max_by_key(|id| {
            self.members[id]
                .driver
                .as_ref()
                .expect("up")
                .raw()
                .raft
                .term
        })
    }

    fn tick(&mut self) {
        for id in self.running() {
            if let Some(driver) = self.members.get_mut(&id).and_then(|m| m.driver.as_mut()) {
                driver.tick();
            }
        }
    }

    /// Lets every member handle what it has, then moves the messages that are due:
    /// the network's rules decide which arrive, when and in which order.
    async fn pump(&mut self) {
        for id in self.running() {
            let member = self.members.get_mut(&id).expect("up");
            let driver = member.driver.as_mut().expect("up");
            driver
                .process_ready()
                .await
                .expect("the driver handles its ready");
            driver.settle_background().await;
            let sent: Vec<Message> =
                std::mem::take(&mut *member.outbox.messages.lock().expect("test lock"));
            for message in sent {
                self.route(message);
            }
        }
        self.round += 1;
        let round = self.round;
        let frozen = &self.frozen;
        let (mut due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|(at, m)| *at <= round && !frozen.contains(&m.to));
        self.wire = later;
        if self.reorder {
            // Fisher–Yates with the test's generator.
            for i in (1..due.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                due.swap(i, j);
            }
        }
        for (_, message) in due {
            self.deliver(message);
        }
    }

    fn route(&mut self, message: Message) {
        let (from, to) = (message.from, message.to);
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let lost = self.cut.contains(&(from, to))
            || (snapshot && self.drop_snapshots)
            || (self.drop_percent > 0 && self.rng.chance(self.drop_percent));
        if lost {
            if snapshot {
                // The transport learns that a snapshot call failed.
                self.feedback(from, Feedback::SnapshotSent { to, ok: false });
            }
            return;
        }
        let delay = if self.max_delay > 0 {
            self.rng.below(self.max_delay + 1)
        } else {
            0
        };
        self.wire.push((self.round + 1 + delay, message));
    }

    fn deliver(&mut self, message: Message) {
        let (from, to) = (message.from, message.to);
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let Some(driver) = self.members.get_mut(&to).and_then(|m| m.driver.as_mut()) else {
            if snapshot {
                self.feedback(from, Feedback::SnapshotSent { to, ok: false });
            }
            return;
        };
        driver.handle_input(Input::Message(Box::new(message)));
        if snapshot {
            self.feedback(from, Feedback::SnapshotSent { to, ok: true });
        }
    }

    fn feedback(&mut self, to: u64, event: Feedback) {
        if let Some(driver) = self.members.get_mut(&to).and_then(|m| m.driver.as_mut()) {
            driver.handle_feedback(event);
        }
    }

    /// `rounds` rounds of a tick and a pump each.
    async fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.tick();
            self.pump().await;
        }
    }

    /// Runs until some member leads (bounded).
    async fn elect(&mut self) -> u64 {
        for _ in 0..500 {
            if let Some(leader) = self.leader() {
                return leader;
            }
            self.run(1).await;
        }
        panic!("no leader after 500 rounds");
    }

    /// Runs until a member not in `excluded` leads (bounded); returns it.
    async fn elect_other_than(&mut self, excluded: &[u64]) -> u64 {
        for _ in 0..500 {
            self.run(1).await;
            if let Some(leader) = self.leader()
                && !excluded.contains(&leader)
            {
                return leader;
            }
        }
        panic!("no member outside {excluded:?} was elected in 500 rounds");
    }

    /// The values member `id` has applied, in order.
    fn applied_values(&self, id: u64) -> Vec<u64> {
        self.members[&id]
            .machine
            .state
            .lock()
            .expect("test lock")
            .values
            .clone()
    }

    /// Proposes the next value on `id` (which may or may not lead).
    fn propose(&mut self, id: u64) -> u64 {
        let value = self.next_value;
        self.next_value += 1;
        let (reply, answer) = oneshot::channel();
        if let Some(driver) = self.members.get_mut(&id).and_then(|m| m.driver.as_mut()) {
            driver.propose(vec![Proposal {
                command: value,
                reply,
                // Half encoded by the proposer, half by the loop: both must
                // make entries that decode to the same commands.
                encoded: value
                    .is_multiple_of(2)
                    .then(|| serde_json::to_vec(&value).expect("a number")),
            }]);
        }
        self.proposed.push(Proposed {
            value,
            reply: answer,
            heard: None,
        });
        value
    }

    /// Heals everything, brings every member up, and runs until all have applied
    /// the same sequence (bounded).
    async fn converge(&mut self) {
        self.heal();
        for id in self.members.keys().copied().collect::<Vec<_>>() {
            if self.members[&id].driver.is_none() {
                self.start(id);
            }
        }
        for _ in 0..2_000 {
            self.run(1).await;
            let Some(leader) = self.leader() else {
                continue;
            };
            // Everything any member knows to be committed (a new leader may not
            // have committed its predecessor's last entries yet, which a follower
            // already applied) is applied everywhere, and the leader agrees.
            fn committed(m: &Member) -> u64 {
                m.driver
                    .as_ref()
                    .map_or(0, |d| d.raw().raft.raft_log.committed)
            }
            let target = self.members.values().map(committed).max().unwrap_or(0);
            let leader_commit = committed(&self.members[&leader]);
            let all_applied = self
                .members
                .values()
                .all(|m| m.driver.as_ref().is_some_and(|d| d.applied() >= target));
            let answered = self.proposed.iter_mut().all(Proposed::poll);
            if leader_commit >= target && all_applied && answered {
                return;
            }
        }
        let views: Vec<String> = self
            .members
            .iter()
            .map(|(id, m)| {
                let driver = m.driver.as_ref().expect("all up");
                let raft = &driver.raw().raft;
                format!(
                    "{id}: {:?} term {} commit {} applied {} last {}",
                    raft.state,
                    raft.term,
                    raft.raft_log.committed,
                    driver.applied(),
                    raft.raft_log.last_index()
                )
            })
            .collect();
        let unanswered = self.proposed.iter().filter(|p| p.heard.is_none()).count();
        panic!(
            "the cluster did not converge in 2,000 rounds: {views:?}, {unanswered} proposals unanswered"
        );
    }

    /// The driver's promise, checked after `converge`.
    fn check(&mut self) -> Report {
        let sequences: BTreeMap<u64, Vec<u64>> = self
            .members
            .iter()
            .map(|(id, m)| {
                (
                    *id,
                    m.machine.state.lock().expect("test lock").values.clone(),
                )
            })
            .collect();
        let first = sequences.values().next().expect("members").clone();
        for (id, sequence) in &sequences {
            assert_eq!(
                sequence, &first,
                "member {id} applied a different sequence than member 1"
            );
        }
        let distinct: BTreeSet<u64> = first.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            first.len(),
            "a command was applied twice: {first:?}"
        );
        let mut report = Report::default();
        for proposed in &mut self.proposed {
            proposed.poll();
            let applied_at = first.iter().position(|v| *v == proposed.value);
            match &proposed.heard {
                Some(Ok(Ok(Ok(position)))) => {
                    report.acknowledged += 1;
                    assert_eq!(
                        applied_at,
                        Some(*position),
                        "value {} was acknowledged at position {position}",
                        proposed.value
                    );
                }
                Some(Ok(Ok(Err(rejection)))) => {
                    panic!("the test machine refuses nothing: {rejection}")
                }
                Some(Ok(Err(ConsensusError::NotLeader | ConsensusError::NotCommitted))) => {
                    report.refused += 1;
                    assert_eq!(
                        applied_at, None,
                        "value {} was applied although its proposer was told it was not",
                        proposed.value
                    );
                }
                Some(Ok(Err(_))) => report.unknown += 1,
                Some(Err(())) => report.lost_with_member += 1,
                None => report.unanswered += 1,
            }
        }
        report.applied = first.len();
        report
    }

    /// Whether some member's log no longer holds index 2 (it compacted).
    fn compacted(&self, id: u64) -> bool {
        self.members[&id].log.first_index().expect("first index") > 2
    }
}

#[derive(Default, Debug)]
struct Report {
    acknowledged: usize,
    refused: usize,
    unknown: usize,
    lost_with_member: usize,
    unanswered: usize,
    applied: usize,
}

#[tokio::test]
async fn commands_on_a_healthy_cluster_are_applied_once_in_order_everywhere() {
    let mut cluster = Cluster::new(3, settings(1_000), 1).await;
    let leader = cluster.elect().await;
    for _ in 0..50 {
        cluster.propose(leader);
        cluster.run(1).await;
    }
    cluster.converge().await;
    let report = cluster.check();
    assert_eq!(report.acknowledged, 50, "{report:?}");
    assert_eq!(report.applied, 50);
}

#[tokio::test]
async fn a_leader_change_mid_proposal_loses_nothing_acknowledged() {
    let mut cluster = Cluster::new(3, settings(1_000), 2).await;
    let old = cluster.elect().await;
    for _ in 0..5 {
        cluster.propose(old);
        cluster.run(1).await;
    }
    cluster.run(10).await;
    // Proposals reach the old leader's log, then it is cut off before they commit.
    cluster.isolate(old);
    let mut cut_off = Vec::new();
    for _ in 0..5 {
        cut_off.push(cluster.propose(old));
    }
    cluster.run(1).await;
    let new = cluster.elect_other_than(&[old]).await;
    for _ in 0..5 {
        cluster.propose(new);
        cluster.run(1).await;
    }
    cluster.converge().await;
    let report = cluster.check();
    // The first five committed before the cut; the five after it could not: their
    // entries were replaced by the new leader's, and their callers were told so or
    // told that the outcome is unknown.
    assert_eq!(report.acknowledged, 10, "{report:?}");
    assert_eq!(report.refused + report.unknown, 5, "{report:?}");
    let sequence = cluster.applied_values(1);
    for value in cut_off {
        assert!(
            !sequence.contains(&value),
            "{value} never left the old leader"
        );
    }
}

/// A leader that stops for a while (a long pause, SIGSTOP) with proposals in its
/// log returns to find that another leader committed its own entries at the same
/// indexes: the entries applied are the new leader's (log matching by term), and
/// the paused leader's callers hear that theirs did not commit. (raft-rs probes
/// the returning member first, so it learns of the new leader one ready before
/// it learns what was committed; the driver's term check on pending batches is
/// therefore not what this scenario exercises.)
#[tokio::test]
async fn a_paused_leader_returns_to_find_its_indexes_taken() {
    let mut cluster = Cluster::new(3, settings(1_000), 6).await;
    let old = cluster.elect().await;
    cluster.propose(old);
    cluster.run(10).await;
    let mut stranded = Vec::new();
    for _ in 0..5 {
        stranded.push(cluster.propose(old));
    }
    cluster.frozen.insert(old);
    let new = cluster.elect_other_than(&[old]).await;
    for _ in 0..5 {
        cluster.propose(new);
    }
    cluster.run(10).await;
    cluster.converge().await;
    let report = cluster.check();
    assert_eq!(report.acknowledged, 6, "{report:?}");
    let sequence = cluster.applied_values(old);
    for value in stranded {
        assert!(!sequence.contains(&value), "{value} never committed");
    }
}

#[tokio::test]
async fn proposals_to_a_minority_leader_are_never_acknowledged() {
    let mut cluster = Cluster::new(5, settings(1_000), 3).await;
    let old = cluster.elect().await;
    let other = if old == 1 { 2 } else { 1 };
    cluster.partition(&[old, other]);
    let mut minority_values = Vec::new();
    for _ in 0..10 {
        minority_values.push(cluster.propose(old));
        cluster.run(1).await;
    }
    // The majority side elects a leader and goes on.
    let majority_leader = cluster.elect_other_than(&[old, other]).await;
    for _ in 0..10 {
        cluster.propose(majority_leader);
        cluster.run(1).await;
    }
    // The old leader steps down by itself (check quorum) and tells its callers.
    cluster.run(50).await;
    assert_ne!(
        cluster.members[&old]
            .driver
            .as_ref()
            .expect("up")
            .raw()
            .raft
            .state,
        raft::StateRole::Leader,
        "a leader without a quorum steps down"
    );
    cluster.converge().await;
    let sequence = cluster.applied_values(1);
    for value in minority_values {
        assert!(
            !sequence.contains(&value),
            "a minority's proposal {value} was applied"
        );
    }
    let report = cluster.check();
    assert_eq!(report.acknowledged, 10, "{report:?}");
}

#[tokio::test]
async fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::new(3, settings(20), 4).await;
    let leader = cluster.elect().await;
    let behind = if leader == 3 { 2 } else { 3 };
    cluster.isolate(behind);
    for _ in 0..100 {
        cluster.propose(leader);
        cluster.run(1).await;
    }
    assert!(cluster.compacted(leader), "the leader compacted its log");
    let made = cluster.members[&leader]
        .machine
        .snapshots
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        made >= 1,
        "the machine heard of each snapshot made ({made})"
    );
    cluster.converge().await;
    assert!(
        cluster.compacted(behind),
        "the follower's log starts at the leader's snapshot"
    );
    let report = cluster.check();
    assert_eq!(report.acknowledged, 100, "{report:?}");
}

#[tokio::test]
async fn an_interrupted_snapshot_install_is_retried_and_converges() {
    let mut cluster = Cluster::new(3, settings(20), 5).await;
    let leader = cluster.elect().await;
    let behind = if leader == 3 { 2 } else { 3 };
    cluster.isolate(behind);
    for _ in 0..60 {
        cluster.propose(leader);
        cluster.run(1).await;
    }
    // Reconnected, but every snapshot call fails for a while.
    cluster.cut.clear();
    cluster.drop_snapshots = true;
    cluster.run(60).await;
    // Then the follower crashes with the snapshot delivered but not yet handled.
    cluster.drop_snapshots = false;
    for _ in 0..200 {
        cluster.tick();
        cluster.pump().await;
        let received = cluster.members[&behind]
            .driver
            .as_ref()
            .is_some_and(|d| d.raw().raft.raft_log.unstable.snapshot.is_some());
        if received {
            cluster.crash(behind);
            break;
        }
    }
    for _ in 0..20 {
        cluster.propose(leader);
        cluster.run(1).await;
    }
    cluster.converge().await;
    assert!(cluster.compacted(behind));
    let report = cluster.check();
    assert_eq!(report.acknowledged, 80, "{report:?}");
}

/// Random schedules: drops, delays, reordering, partitions, crashes and restarts,
/// proposals to whoever leads or not; each seed is one reproducible history.
#[tokio::test]
async fn random_faults_never_lose_or_reorder_an_acknowledged_command() {
    // 12 histories in the suite; `FERRY_SIM_SEEDS=1000` runs a long search.
    let seeds: u64 = std::env::var("FERRY_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    // A history may acknowledge nothing (the cluster down or split throughout);
    // all of them together must, or the test would check nothing.
    let mut acknowledged = 0;
    for seed in 0..seeds {
        let mut cluster =
            Cluster::new(if seed % 2 == 0 { 3 } else { 5 }, settings(15), 100 + seed).await;
        cluster.elect().await;
        let ids: Vec<u64> = cluster.members.keys().copied().collect();
        for _ in 0..300 {
            let roll = cluster.rng.below(100);
            match roll {
                0..=2 => {
                    let id = ids[cluster.rng.below(ids.len() as u64) as usize];
                    cluster.crash(id);
                }
                3..=6 => {
                    let down: Vec<u64> = ids
                        .iter()
                        .copied()
                        .filter(|id| cluster.members[id].driver.is_none())
                        .collect();
                    if let Some(id) = down.first() {
                        cluster.start(*id);
                    }
                }
                7..=8 => {
                    let id = ids[cluster.rng.below(ids.len() as u64) as usize];
                    cluster.isolate(id);
                }
                9..=11 => {
                    cluster.cut.clear();
                }
                12..=13 => {
                    cluster.drop_percent = cluster.rng.below(30);
                    cluster.max_delay = cluster.rng.below(4);
                    cluster.reorder = cluster.rng.chance(50);
                }
                _ => {}
            }
            if cluster.rng.chance(60) {
                let target = match cluster.leader() {
                    Some(leader) if cluster.rng.chance(80) => leader,
                    _ => ids[cluster.rng.below(ids.len() as u64) as usize],
                };
                cluster.propose(target);
            }
            cluster.run(1).await;
        }
        eprintln!("seed {seed}");
        cluster.converge().await;
        let report = cluster.check();
        acknowledged += report.acknowledged;
        assert_eq!(
            report.unanswered, 0,
            "seed {seed}: every live proposer hears: {report:?}"
        );
    }
    assert!(acknowledged > 0, "no history acknowledged anything");
}

/// Membership as the coordinator changes it: a new member joins as a learner
/// (it copies the log, including by snapshot, but does not vote), is promoted
/// once it caught up and then counts toward the quorum; a learner that never
/// starts changes no quorum and is removed; one change at a time.
#[tokio::test]
async fn a_learner_catches_up_is_promoted_and_a_phantom_learner_harms_nothing() {
    use raft::eraftpb::ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
    let mut cluster = Cluster::new(3, settings(20), 7).await;
    let leader = cluster.elect().await;
    for _ in 0..40 {
        cluster.propose(leader);
        cluster.run(1).await;
    }
    // A phantom: nobody runs member 9. The cluster keeps committing.
    assert_eq!(cluster.change(leader, AddLearnerNode, 9), Ok(()));
    // The change is not applied yet: a second one is refused with the reason.
    let refused = cluster.change(leader, AddLearnerNode, 4).unwrap_err();
    assert!(
        refused.to_string().contains("another membership change"),
        "{refused}"
    );
    cluster.run(5).await;
    let status = cluster.status(leader);
    assert!(status.learners.contains(&9), "{status:?}");
    assert_eq!(status.voters, BTreeSet::from([1, 2, 3]));
    for _ in 0..10 {
        cluster.propose(leader);
        cluster.run(1).await;
    }

    // A real new member joins as a learner and copies the compacted log.
    cluster.join(4);
    assert_eq!(cluster.change(leader, AddLearnerNode, 4), Ok(()));
    for _ in 0..200 {
        cluster.run(1).await;
        let status = cluster.status(leader);
        if status.replicating.contains(&4) && status.matched.get(&4) == Some(&status.last_index) {
            break;
        }
    }
    let status = cluster.status(leader);
    assert_eq!(
        status.matched.get(&4),
        Some(&status.last_index),
        "the learner caught up: {status:?}"
    );
    assert!(status.learners.contains(&4) && !status.voters.contains(&4));
    assert_eq!(
        cluster.status(4).learners,
        status.learners,
        "it knows it learns"
    );
    assert_eq!(cluster.applied_values(4), cluster.applied_values(leader));

    // Promoted, it votes.
    assert_eq!(cluster.change(leader, AddNode, 4), Ok(()));
    cluster.run(5).await;
    assert!(cluster.status(leader).voters.contains(&4));
    // The phantom goes, whatever state it never reached.
    assert_eq!(cluster.change(leader, RemoveNode, 9), Ok(()));
    cluster.run(5).await;
    let status = cluster.status(leader);
    assert!(status.learners.is_empty(), "{status:?}");
    assert_eq!(status.voters, BTreeSet::from([1, 2, 3, 4]));
    let down = *[1, 2, 3]
        .iter()
        .find(|id| **id != leader)
        .expect("two others");
    cluster.crash(down);
    // Four voters with one down: a quorum is 3, so nothing commits without
    // member 4's vote.
    let mut acknowledged_with_one_down = Vec::new();
    for _ in 0..10 {
        acknowledged_with_one_down.push(cluster.propose(leader));
        cluster.run(1).await;
    }
    cluster.run(10).await;
    let applied = cluster.applied_values(4);
    assert!(
        acknowledged_with_one_down
            .iter()
            .all(|v| applied.contains(v)),
        "member 4 holds what was committed with member {down} down"
    );

    // Removing voter 4 again: it applies its own removal.
    cluster.start(down);
    cluster.run(20).await;
    let leader = cluster.elect().await;
    assert_eq!(cluster.change(leader, RemoveNode, 4), Ok(()));
    for _ in 0..50 {
        cluster.run(1).await;
        if cluster.members[&4]
            .driver
            .as_ref()
            .is_some_and(|d| d.removed())
        {
            break;
        }
    }
    assert!(
        cluster.members[&4]
            .driver
            .as_ref()
            .is_some_and(|d| d.removed()),
        "member 4 applied its removal"
    );
    let gone = cluster.members.remove(&4).expect("member 4");
    assert_eq!(cluster.status(leader).voters, BTreeSet::from([1, 2, 3]));
    for _ in 0..10 {
        cluster.propose(leader);
        cluster.run(1).await;
    }
    cluster.converge().await;
    let report = cluster.check();
    assert_eq!(report.acknowledged, 70, "{report:?}");
    // What member 4 applied before it left is a prefix of everyone's sequence.
    let left_with = gone.machine.state.lock().expect("test lock").values.clone();
    assert!(cluster.applied_values(1).starts_with(&left_with));
}
