//! A damaged replica refuses to serve: three real coordinator processes, one
//! follower stopped with SIGTERM, its sled database damaged from the test (a Raft
//! log entry overwritten or removed, an applied index beyond the log, a run record
//! that is not JSON), and started again. It must exit by itself naming the damage,
//! never serve, while the other two keep answering linearizable reads, keep
//! accepting writes and agree on every run.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use ferry_tests::{Cluster, wait_for, write_pipeline};
use serde_json::Value;

const HELLO: &str = "name: hello\nsteps:\n  - name: hello\n    command: [\"true\"]\n";
/// Runs submitted before the follower is stopped.
const RUNS: usize = 4;
/// What a coordinator logs once it has passed every start-up check and serves.
const SERVING: &str = "coordinator serving";

/// A three-member cluster with `RUNS` runs submitted and one follower that held
/// all of them, stopped with SIGTERM so that its database can be opened.
struct Stopped {
    cluster: Cluster,
    follower: u64,
    submitted: BTreeSet<u64>,
    hello: PathBuf,
}

fn cluster_with_a_stopped_follower() -> Stopped {
    let mut cluster = Cluster::start_replicated(3, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let submitted: BTreeSet<u64> = (0..RUNS).map(|_| cluster.submit(&hello, &[])).collect();
    assert_eq!(submitted.len(), RUNS, "distinct run ids: {submitted:?}");
    let leader = cluster.leader(Duration::from_secs(30));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    wait_for(
        Duration::from_secs(30),
        "the follower to hold every submitted run",
        || {
            cluster
                .run_ids(Some(follower), true)?
                .is_superset(&submitted)
                .then_some(())
        },
    );
    assert!(
        cluster.member_log(follower).contains(SERVING),
        "the follower served before it was stopped: {}",
        cluster.member_log(follower)
    );
    cluster.terminate_member(follower);
    Stopped {
        cluster,
        follower,
        submitted,
        hello,
    }
}

/// Coordinator `id`'s sled database (the harness keeps it in `coordinator-N-data/state`).
fn state_db(cluster: &Cluster, id: u64) -> PathBuf {
    cluster.path(&format!("coordinator-{id}-data/state"))
}

/// Opens a stopped member's database, lets `change` damage (or repair) it,
/// flushes and closes it again before the member is started.
fn edit_db<T>(cluster: &Cluster, id: u64, change: impl FnOnce(&sled::Db) -> T) -> T {
    let path = state_db(cluster, id);
    assert!(path.is_dir(), "no database at {}", path.display());
    let db = sled::open(&path).expect("open the stopped member's database");
    let result = change(&db);
    db.flush().expect("flush the edited database");
    drop(db);
    result
}

/// The Raft log's indexes, in order, decoded from their 8-byte big-endian keys.
fn log_indexes(log: &sled::Tree) -> Vec<u64> {
    log.iter()
        .keys()
        .map(|key| {
            let key = key.expect("read a raft_log key");
            u64::from_be_bytes(key.as_ref().try_into().expect("an 8-byte index key"))
        })
        .collect()
}

/// Starts member `id` again, waits (bounded) until it exits by itself with a
/// failure before serving, and returns what this start logged.
fn restart_expecting_refusal(cluster: &mut Cluster, id: u64) -> String {
    cluster.spawn_coordinator(id, false);
    wait_for(
        Duration::from_secs(20),
        &format!("coordinator {id} to refuse to start"),
        || cluster.member_exited(id).then_some(()),
    );
    let slot = cluster
        .coordinators
        .iter_mut()
        .find(|c| c.id == id)
        .expect("the member's slot");
    let daemon = slot.daemon.as_mut().expect("the member was started");
    let status = daemon
        .child
        .try_wait()
        .expect("the member's exit status")
        .expect("the member has exited");
    let log = daemon.log_text();
    assert!(
        !status.success(),
        "a refusal exits with failure: {status}\n{log}"
    );
    assert!(
        !log.contains(SERVING),
        "the damaged member served before it stopped:\n{log}"
    );
    log
}

/// The two members left answer a linearizable read with exactly the submitted
/// runs, accept a new run, and list the same runs (the same records) each, while
/// the damaged member shows as unreachable. Returns the new run's id.
fn survivors_serve_one_state(stopped: &Stopped) -> u64 {
    let Stopped {
        cluster,
        follower,
        submitted,
        hello,
    } = stopped;
    let read = wait_for(Duration::from_secs(30), "a linearizable read", || {
        cluster.run_ids(None, false)
    });
    assert_eq!(&read, submitted, "the survivors lost or invented runs");
    let later = cluster.submit(hello, &[]);
    let highest = *submitted.iter().max().expect("runs were submitted");
    assert!(later > highest, "run {later} follows run {highest}");
    let mut expected = submitted.clone();
    expected.insert(later);
    let mut listings = Vec::new();
    for id in (1..=3).filter(|id| id != follower) {
        let linearizable = wait_for(
            Duration::from_secs(30),
            &format!("a linearizable read at member {id}"),
            || cluster.run_ids(Some(id), false),
        );
        assert_eq!(linearizable, expected, "member {id}");
        let listing = wait_for(
            Duration::from_secs(30),
            &format!("member {id} to have applied run {later}"),
            || {
                let listing = cluster.runs_listing(Some(id), true)?;
                let ids: BTreeSet<u64> = listing
                    .as_array()?
                    .iter()
                    .filter_map(|run| run["run"].as_u64())
                    .collect();
                (ids == expected).then_some(listing)
            },
        );
        listings.push((id, listing));
    }
    assert_eq!(
        listings[0].1, listings[1].1,
        "members {} and {} report different runs",
        listings[0].0, listings[1].0
    );
    let status = cluster.cluster_status().expect("cluster status");
    let leader = status["leader_id"].as_u64().expect("a leader id");
    assert!(
        leader != *follower && (1..=3).contains(&leader),
        "a survivor leads: {status:#}"
    );
    let damaged = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == *follower)
        .unwrap_or_else(|| panic!("member {follower} is still listed: {status:#}"));
    assert_eq!(damaged["reachable"], false, "{status:#}");
    later
}

#[test]
fn a_replica_with_a_corrupt_raft_log_refuses_to_start() {
    let mut stopped = cluster_with_a_stopped_follower();
    let follower = stopped.follower;

    // One entry in the middle of the log overwritten with bytes that are no Entry.
    let (indexes, middle, original) = edit_db(&stopped.cluster, follower, |db| {
        let log = db.open_tree("raft_log").expect("raft_log tree");
        let indexes = log_indexes(&log);
        assert!(
            indexes.len() > RUNS,
            "the leader's first (empty) entry and one entry per run: {indexes:?}"
        );
        let middle = indexes[indexes.len() / 2];
        let key = middle.to_be_bytes();
        let original = log.get(key).expect("read").expect("the middle entry");
        log.insert(key, &b"\xffgarbage, not a protobuf Entry"[..])
            .expect("overwrite the entry");
        (indexes, middle, original)
    });
    assert!(
        middle > indexes[0] && middle < indexes[indexes.len() - 1],
        "{middle} lies inside {indexes:?}"
    );
    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    let named = format!("the raft log storage is corrupt at raft_log index {middle}");
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");

    // The entry put back, and the next one removed: a gap in the log.
    let removed = middle + 1;
    assert!(
        removed < indexes[indexes.len() - 1],
        "{removed} is not last"
    );
    let removed_entry = edit_db(&stopped.cluster, follower, |db| {
        let log = db.open_tree("raft_log").expect("raft_log tree");
        log.insert(middle.to_be_bytes(), original)
            .expect("restore the entry");
        let gone = log.remove(removed.to_be_bytes()).expect("remove an entry");
        gone.unwrap_or_else(|| panic!("entry {removed} was stored: {indexes:?}"))
    });
    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    let named = format!(
        "the raft log storage is corrupt at raft_log index {removed}: missing: the log jumps \
         from index {middle} to {}",
        removed + 1
    );
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");

    let later = survivors_serve_one_state(&stopped);

    // A control: with the log repaired, the same member starts, serves and catches
    // up with the run written while it was down, so it was the damage, and nothing
    // else, that it refused.
    edit_db(&stopped.cluster, follower, |db| {
        let log = db.open_tree("raft_log").expect("raft_log tree");
        log.insert(removed.to_be_bytes(), removed_entry)
            .expect("restore the entry");
        assert_eq!(log_indexes(&log), indexes, "the log is whole again");
    });
    let cluster = &mut stopped.cluster;
    cluster.spawn_coordinator(follower, false);
    let reference = wait_for(Duration::from_secs(30), "a linearizable listing", || {
        cluster.runs_listing(None, false)
    });
    let mut expected = stopped.submitted.clone();
    expected.insert(later);
    let ids: BTreeSet<u64> = reference
        .as_array()
        .expect("a list of runs")
        .iter()
        .filter_map(|run| run["run"].as_u64())
        .collect();
    assert_eq!(ids, expected, "{reference:#}");
    wait_for(
        Duration::from_secs(30),
        "the repaired member to catch up",
        || (cluster.runs_listing(Some(follower), true)? == reference).then_some(()),
    );
    assert!(!cluster.member_exited(follower), "the repaired member runs");
}

#[test]
fn a_replica_whose_state_is_ahead_of_its_log_refuses_to_serve() {
    let mut stopped = cluster_with_a_stopped_follower();
    let follower = stopped.follower;
    const AHEAD: u64 = 1_000_000;
    let (applied, last_index) = edit_db(&stopped.cluster, follower, |db| {
        let state = db.open_tree("state").expect("state tree");
        let stored = state
            .get(b"meta/applied_index")
            .expect("read")
            .expect("an applied index");
        let applied = u64::from_be_bytes(stored.as_ref().try_into().expect("8 bytes"));
        let log = db.open_tree("raft_log").expect("raft_log tree");
        let last_index = *log_indexes(&log).last().expect("log entries");
        state
            .insert(b"meta/applied_index", &AHEAD.to_be_bytes())
            .expect("write the applied index");
        (applied, last_index)
    });
    // Bootstrap (index 1), then at least one entry per run.
    assert!(applied > RUNS as u64, "applied index {applied}");
    assert!(applied <= last_index, "{applied} <= {last_index}");

    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    assert!(
        log.contains("the stored state is inconsistent with the Raft log")
            && log.contains("this replica refuses to serve"),
        "{log}"
    );
    let prefix = format!("the state has applied index {AHEAD} but the log commits only up to ");
    let commit: u64 = log
        .split_once(&prefix)
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("expected {prefix:?} and a commit index in:\n{log}"));
    assert!(
        (applied..=last_index).contains(&commit),
        "the reported commit {commit} lies between the applied index {applied} and the last \
         log index {last_index}"
    );

    survivors_serve_one_state(&stopped);
}

#[test]
fn a_replica_with_an_undecodable_state_record_refuses_to_start() {
    let mut stopped = cluster_with_a_stopped_follower();
    let follower = stopped.follower;
    let run = *stopped
        .submitted
        .iter()
        .nth(RUNS / 2)
        .expect("a run in the middle");
    let key = format!("run/{run:020}");
    edit_db(&stopped.cluster, follower, |db| {
        let state = db.open_tree("state").expect("state tree");
        let stored = state
            .get(key.as_bytes())
            .expect("read")
            .unwrap_or_else(|| panic!("record {key} is stored"));
        let record: Value = serde_json::from_slice(&stored).expect("a JSON record");
        assert_eq!(record["id"], run, "{record}");
        state
            .insert(key.as_bytes(), &b"{\"id\": not JSON"[..])
            .expect("overwrite the record");
    });

    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    let named = format!("the state database is corrupt: record {key:?} cannot be decoded");
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");

    survivors_serve_one_state(&stopped);
}

/// A data directory left by a coordinator from before replication holds state but
/// no Raft log (simulated by dropping the Raft trees): a one-member cluster carries
/// the runs over; a three-member configuration refuses it rather than diverge.
#[test]
fn state_from_before_replication_is_carried_over_by_one_member_only() {
    let mut cluster = Cluster::start();
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let runs: BTreeSet<u64> = (0..3).map(|_| cluster.submit(&hello, &[])).collect();
    cluster.terminate_member(1);
    let drop_raft_trees = |cluster: &Cluster| {
        let db = sled::open(state_db(cluster, 1)).expect("open the stopped member's database");
        for tree in ["raft_log", "raft_meta"] {
            db.open_tree(tree)
                .and_then(|t| t.clear())
                .expect("empty a Raft tree");
        }
        db.flush().expect("flush");
    };
    drop_raft_trees(&cluster);
    cluster.start_coordinator();
    assert_eq!(cluster.run_ids(None, false), Some(runs.clone()));
    // Still a working cluster: a new run gets the next id.
    let next = cluster.submit(&hello, &[]);
    assert_eq!(next, runs.iter().max().unwrap() + 1);

    // The same directory named in a three-member configuration is refused.
    cluster.terminate_member(1);
    drop_raft_trees(&cluster);
    cluster.add_coordinator_slot(2);
    cluster.add_coordinator_slot(3);
    let served_before = cluster.member_log(1).matches(SERVING).count();
    cluster.spawn_coordinator(1, false);
    wait_for(
        Duration::from_secs(20),
        "the member to refuse to start",
        || cluster.member_exited(1).then_some(()),
    );
    let log = cluster.member_log(1);
    assert!(
        log.contains("from a single coordinator but no Raft log"),
        "{log}"
    );
    assert_eq!(log.matches(SERVING).count(), served_before, "{log}");
}

/// A crash while a follower installs a snapshot can leave the snapshot in its
/// Raft log but not yet in its state (the log is written first). Simulated by
/// taking every run out of a stopped follower's state and winding its applied
/// index back: at start it finishes the installation from the log's snapshot and
/// catches up, instead of refusing or serving the old state.
#[test]
fn an_interrupted_snapshot_installation_is_finished_at_start() {
    let mut cluster = Cluster::start_replicated(3, "[raft]\nsnapshot_every = 4\n");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let runs: BTreeSet<u64> = (0..12).map(|_| cluster.submit(&hello, &[])).collect();
    let leader = cluster.leader(Duration::from_secs(30));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    wait_for(
        Duration::from_secs(30),
        "the follower to hold every run",
        || (cluster.run_ids(Some(follower), true)? == runs).then_some(()),
    );
    cluster.terminate_member(follower);
    let snapshot_index = edit_db(&cluster, follower, |db| {
        let state = db.open_tree("state").expect("state tree");
        let applied = u64::from_be_bytes(
            state
                .get(b"meta/applied_index")
                .expect("read")
                .expect("an applied index")
                .as_ref()
                .try_into()
                .expect("8 bytes"),
        );
        let snapshot_index = match log_indexes(&db.open_tree("raft_log").expect("raft_log")).first()
        {
            Some(first) => first - 1,
            None => applied,
        };
        for key in state.scan_prefix(b"run/").keys() {
            state.remove(key.expect("a run key")).expect("remove a run");
        }
        state
            .insert(b"meta/next_run_id", &1u64.to_be_bytes())
            .expect("wind the run counter back");
        state
            .insert(b"meta/applied_index", &1u64.to_be_bytes())
            .expect("wind the applied index back");
        snapshot_index
    });
    assert!(snapshot_index > 1, "the follower's log was compacted");
    cluster.spawn_coordinator(follower, false);
    wait_for(
        Duration::from_secs(30),
        "the follower to hold every run again",
        || (cluster.run_ids(Some(follower), true)? == runs).then_some(()),
    );
    assert!(
        cluster
            .member_log(follower)
            .contains("finishing an interrupted snapshot installation"),
        "{}",
        cluster.member_log(follower)
    );
}
