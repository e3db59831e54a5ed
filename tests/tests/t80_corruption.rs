//! A damaged replica refuses to serve: three real coordinator processes, one
//! follower stopped with SIGTERM, its Raft log damaged from the test (a bit flipped
//! in a record of the write-ahead log, a snapshot file changed or holding no
//! state), and started again. It must exit by itself naming the damage,
//! never serve, while the other two keep answering linearizable reads, keep
//! accepting writes and agree on every run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
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

/// The segments of a stopped member's write-ahead log, oldest first.
fn wal_segments(cluster: &Cluster, id: u64) -> Vec<PathBuf> {
    let dir = cluster.path(&format!("coordinator-{id}-data/raft-log"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no segment in {}", dir.display());
    found
}

/// One record of a segment, in the format ARCHITECTURE.md documents:
/// `[body length u32 LE][CRC-32 of the body u32 LE][kind byte, payload]`.
struct Record {
    /// Where the record (its header) starts in the segment.
    offset: usize,
    kind: u8,
    payload: Vec<u8>,
}

const ENTRIES: u8 = 1;
const COMPACTED: u8 = 4;
const INSTALLED: u8 = 5;

fn read_records(segment: &Path) -> Vec<Record> {
    let bytes = std::fs::read(segment).expect("read a segment");
    let (mut records, mut at) = (Vec::new(), 0);
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let body = &bytes[at + 8..at + 8 + len];
        assert_eq!(crc32fast::hash(body), crc, "record at {at} of {segment:?}");
        records.push(Record {
            offset: at,
            kind: body[0],
            payload: body[1..].to_vec(),
        });
        at += 8 + len;
    }
    records
}

fn write_records(segment: &Path, records: &[Record]) {
    let mut bytes = Vec::new();
    for record in records {
        let body = [&[record.kind][..], &record.payload].concat();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
    }
    std::fs::write(segment, bytes).expect("write a segment");
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

    // One bit flipped in the body of a record of entries in the middle of the log:
    // every sector after it was written, so this is damage, not a cut-off write.
    let segment = wal_segments(&stopped.cluster, follower).remove(0);
    let records = read_records(&segment);
    let entries: Vec<&Record> = records.iter().filter(|r| r.kind == ENTRIES).collect();
    assert!(
        entries.len() > RUNS,
        "the leader's first (empty) entry and one entry per run: {} records of entries",
        entries.len()
    );
    let victim = entries[entries.len() / 2].offset;
    let original = std::fs::read(&segment).expect("read the segment");
    let mut damaged = original.clone();
    damaged[victim + 12] ^= 0x10;
    std::fs::write(&segment, &damaged).expect("damage the segment");
    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    let named = format!(
        "the raft log storage is corrupt at raft log segment {} at byte {victim}: a record \
         failing its CRC",
        segment.display()
    );
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");

    let later = survivors_serve_one_state(&stopped);

    // Repaired, except that the last record is cut short, as a power cut during
    // its write leaves it: the member drops that record, says so, starts, and
    // catches up with the run written while it was down.
    let last = records.last().expect("records").offset;
    std::fs::write(&segment, &original[..last + 11]).expect("repair, cut the last record short");
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
    let log = cluster.member_log(follower);
    assert!(
        log.contains("cutting off the end of the raft log: a write that never completed"),
        "{log}"
    );
}

/// A stopped member's latest snapshot record: the segment, the records, and
/// which of them it is.
fn snapshot_record(cluster: &Cluster, id: u64) -> (PathBuf, Vec<Record>, usize) {
    let segments = wal_segments(cluster, id);
    let segment = segments.last().expect("a segment").clone();
    let records = read_records(&segment);
    let at = records
        .iter()
        .rposition(|r| r.kind == COMPACTED || r.kind == INSTALLED)
        .expect("a snapshot record (every member starts from a snapshot)");
    (segment, records, at)
}

/// Splits a snapshot record's payload into its metadata and its data file record.
fn split_snapshot_record(payload: &[u8]) -> (&[u8], Value) {
    let metadata_len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
    let (head, file) = payload.split_at(4 + metadata_len);
    (
        head,
        serde_json::from_slice(file).expect("the data file record"),
    )
}

/// The file holding a stopped member's latest snapshot data, as its log names it.
fn snapshot_file(cluster: &Cluster, id: u64) -> PathBuf {
    let (_, records, at) = snapshot_record(cluster, id);
    let (_, file) = split_snapshot_record(&records[at].payload);
    let name = file["name"].as_str().expect("a file name");
    cluster.path(&format!("coordinator-{id}-data/snapshots/{name}"))
}

/// The state machine's durable form is the Raft log's snapshot plus the entries
/// after it. A snapshot file whose bytes changed is refused by its digest; one
/// that is intact but holds no state (recorded with its own digest, as a bug
/// might have written it) is refused when decoded. Either way, named.
#[test]
fn a_replica_whose_snapshot_is_damaged_refuses_to_start() {
    let mut stopped = cluster_with_a_stopped_follower();
    let follower = stopped.follower;
    let path = snapshot_file(&stopped.cluster, follower);
    let mut data = std::fs::read(&path).expect("read the snapshot file");
    let state: Value = serde_json::from_slice(&data).expect("JSON state");
    assert_eq!(
        state["members"].as_array().map(Vec::len),
        Some(3),
        "{state}"
    );
    data[0] ^= 0xff;
    std::fs::write(&path, &data).expect("damage the snapshot file");
    let log = restart_expecting_refusal(&mut stopped.cluster, follower);
    let named = format!(
        "the raft log storage is corrupt at snapshot file {}",
        path.display()
    );
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");

    // A file that is intact but holds no state, recorded with its own size and
    // digest in the log's latest snapshot record.
    let data = b"{\"runs\": not JSON";
    std::fs::write(&path, data).expect("replace the snapshot file");
    let (segment, mut records, at) = snapshot_record(&stopped.cluster, follower);
    let (head, mut file) = split_snapshot_record(&records[at].payload);
    file["size"] = data.len().into();
    file["blake3"] = blake3::hash(data).to_hex().to_string().into();
    records[at].payload = [head, &serde_json::to_vec(&file).expect("a record")].concat();
    write_records(&segment, &records);
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
            let path = snapshot_file(cluster, 1);
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
        std::fs::remove_dir_all(cluster.path("coordinator-1-data/raft-log"))
            .expect("remove the write-ahead log");
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
    // The index of the follower's last compaction, from its own log.
    let log = cluster.member_log(follower);
    let stored = log
        .lines()
        .rfind(|line| line.contains("snapshot stored and the log compacted to it"))
        .unwrap_or_else(|| panic!("the follower compacted its log:\n{log}"));
    let snapshot_index: u64 = stored
        .split_whitespace()
        .find_map(|field| field.strip_prefix("index=")?.parse().ok())
        .unwrap_or_else(|| panic!("an index in {stored:?}"));
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
        "started from the snapshot of its last compaction, at {snapshot_index}: {loaded}"
    );
}
