//! A damaged replica refuses to serve: three real coordinator processes, one
//! follower stopped with SIGTERM, its sled database damaged from the test (a Raft
//! log entry overwritten or removed, a snapshot whose state is not JSON), and
//! started again. It must exit by itself naming the damage,
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

/// The file holding a stopped member's latest snapshot data, as its log names it.
fn snapshot_file(cluster: &Cluster, id: u64, db: &sled::Db) -> (PathBuf, Value) {
    let snapshots = db.open_tree("raft_snapshot").expect("raft_snapshot tree");
    let record = snapshots
        .get("file")
        .expect("read")
        .expect("a snapshot file record (every member starts from a snapshot)");
    let record: Value = serde_json::from_slice(&record).expect("a JSON record");
    let name = record["name"].as_str().expect("a file name");
    let path = cluster.path(&format!("coordinator-{id}-data/snapshots/{name}"));
    (path, record)
}

/// The state machine's durable form is the Raft log's snapshot plus the entries
/// after it. A snapshot file whose bytes changed is refused by its digest; one
/// that is intact but holds no state (recorded with its own digest, as a bug
/// might have written it) is refused when decoded. Either way, named.
#[test]
fn a_replica_whose_snapshot_is_damaged_refuses_to_start() {
    let mut stopped = cluster_with_a_stopped_follower();
    let follower = stopped.follower;
    let path = edit_db(&stopped.cluster, follower, |db| {
        let (path, _) = snapshot_file(&stopped.cluster, follower, db);
        let mut data = std::fs::read(&path).expect("read the snapshot file");
        let state: Value = serde_json::from_slice(&data).expect("JSON state");
        assert_eq!(
            state["members"].as_array().map(Vec::len),
            Some(3),
            "{state}"
        );
        data[0] ^= 0xff;
        std::fs::write(&path, &data).expect("damage the snapshot file");
        path
    });
    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    let named = format!(
        "the raft log storage is corrupt at snapshot file {}",
        path.display()
    );
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");

    edit_db(&stopped.cluster, follower, |db| {
        let (path, mut record) = snapshot_file(&stopped.cluster, follower, db);
        let data = b"{\"runs\": not JSON";
        std::fs::write(&path, data).expect("replace the snapshot file");
        record["size"] = data.len().into();
        record["blake3"] = blake3::hash(data).to_hex().to_string().into();
        db.open_tree("raft_snapshot")
            .expect("raft_snapshot tree")
            .insert("file", serde_json::to_vec(&record).expect("a record"))
            .expect("record the new file");
    });
    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    let named = "the state database is corrupt: record \"raft snapshot data\" cannot be \
                 decoded";
    assert!(log.contains(named), "expected {named:?} in:\n{log}");

    survivors_serve_one_state(&stopped);
}

/// A data directory left by a coordinator from before replication holds one
/// record per run in a `state` tree and no Raft log. It is made here from a
/// one-member cluster's last snapshot (`snapshot_every = 1`, so the snapshot holds
/// every run): its runs written as such records, the Raft trees emptied. A
/// one-member cluster carries the runs over; a three-member configuration refuses
/// the directory rather than diverge.
#[test]
fn state_from_before_replication_is_carried_over_by_one_member_only() {
    let mut cluster = Cluster::start_replicated(1, "[raft]\nsnapshot_every = 1\n");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let runs: BTreeSet<u64> = (0..3).map(|_| cluster.submit(&hello, &[])).collect();
    cluster.terminate_member(1);
    let drop_raft_trees = |cluster: &Cluster, expected_runs: usize| {
        let db = sled::open(state_db(cluster, 1)).expect("open the stopped member's database");
        {
            let (path, _) = snapshot_file(cluster, 1, &db);
            let data = std::fs::read(&path).expect("read the snapshot file");
            let data: Value = serde_json::from_slice(&data).expect("JSON state");
            let state = db.open_tree("state").expect("state tree");
            let stored_runs = data["runs"].as_array().expect("runs");
            assert_eq!(
                stored_runs.len(),
                expected_runs,
                "the snapshot holds every run: {data}"
            );
            for run in stored_runs {
                let id = run["id"].as_u64().expect("a run id");
                let record = serde_json::to_vec(run).expect("a record");
                state
                    .insert(format!("run/{id:020}"), record)
                    .expect("write a run record");
            }
            let next = data["next_run_id"].as_u64().expect("the next run id");
            state
                .insert("meta/next_run_id", &next.to_be_bytes())
                .expect("write the run counter");
        }
        for tree in ["raft_log", "raft_meta", "raft_snapshot"] {
            db.open_tree(tree)
                .and_then(|t| t.clear())
                .expect("empty a Raft tree");
        }
        std::fs::remove_dir_all(cluster.path("coordinator-1-data/snapshots"))
            .expect("remove the snapshot files");
        db.flush().expect("flush");
    };
    drop_raft_trees(&cluster, runs.len());
    cluster.start_coordinator();
    assert_eq!(cluster.run_ids(None, false), Some(runs.clone()));
    // Still a working cluster: a new run gets the next id.
    let next = cluster.submit(&hello, &[]);
    assert_eq!(next, runs.iter().max().unwrap() + 1);

    // The same directory named in a three-member configuration is refused.
    cluster.terminate_member(1);
    drop_raft_trees(&cluster, runs.len() + 1);
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

/// A member rebuilds its state from its own log alone: the snapshot left by the
/// last compaction, then the committed entries after it, applied again. All three
/// members are stopped and only a former follower is started: with no peer to
/// copy from, a stale read must still show every run.
#[test]
fn a_member_alone_rebuilds_its_state_from_snapshot_and_log() {
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
    let before = cluster
        .runs_listing(Some(follower), true)
        .expect("a listing");
    for id in (1..=3).filter(|id| *id != follower) {
        cluster.terminate_member(id);
    }
    cluster.terminate_member(follower);
    let (snapshot_index, last_index) = edit_db(&cluster, follower, |db| {
        let indexes = log_indexes(&db.open_tree("raft_log").expect("raft_log"));
        let first = *indexes.first().expect("entries after the snapshot");
        (first - 1, *indexes.last().expect("entries"))
    });
    assert!(snapshot_index > 1, "the follower's log was compacted");
    cluster.spawn_coordinator(follower, false);
    wait_for(
        Duration::from_secs(30),
        "the member to serve its own state",
        || (cluster.runs_listing(Some(follower), true)? == before).then_some(()),
    );
    let log = cluster.member_log(follower);
    let loaded = log
        .lines()
        .rfind(|line| line.contains("state loaded"))
        .unwrap_or_else(|| panic!("a `state loaded` line in:\n{log}"));
    assert!(
        loaded.contains(&format!("snapshot_index={snapshot_index}")),
        "started from the snapshot at {snapshot_index} (log up to {last_index}): {loaded}"
    );
}
