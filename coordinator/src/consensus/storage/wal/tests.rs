//! What only the write-ahead log must do: come back identical after a reopen
//! (through segment changes and deletions), cut off a write that never completed,
//! refuse damage anywhere else, and take over a log kept in sled.

use std::path::{Path, PathBuf};

use raft::Storage as _;

use super::super::tests::{
    Generator, conf_state, entries_from, entry, hard_state, observe, open_sled, read, snapshot,
};
use super::super::{LogStore, LogStoreError, MemLog, SledLog, move_sled_log_into};
use super::WalLog;

struct Dirs {
    _root: tempfile::TempDir,
    log: PathBuf,
    snapshots: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("raft-log");
    let snapshots = root.path().join("snapshots");
    Dirs {
        _root: root,
        log,
        snapshots,
    }
}

fn open(dirs: &Dirs, segment_bytes: u64) -> WalLog {
    WalLog::open_with(&dirs.log, &dirs.snapshots, segment_bytes).unwrap()
}

#[track_caller]
fn open_corrupt(dirs: &Dirs) -> (String, String) {
    match WalLog::open(&dirs.log, &dirs.snapshots) {
        Err(LogStoreError::Corrupt { what, detail }) => (what, detail),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, but the log opened"),
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    found
}

#[test]
fn survives_reopen() {
    let dirs = dirs();
    let before = {
        let store = open(&dirs, super::SEGMENT_BYTES);
        assert!(store.is_empty());
        store.append(&entries_from(1, &[1, 1, 2, 2, 3, 3])).unwrap();
        store.set_hard_state(&hard_state(3, 2, 5)).unwrap();
        store.set_conf_state(&conf_state(&[1, 2, 3])).unwrap();
        store
            .compact(snapshot(4, 2, &[1, 2], b"state at 4"))
            .unwrap();
        store.append(&entries_from(6, &[4, 4, 4])).unwrap();
        // A replaced, shorter suffix must not come back after the reopen.
        store.append(&entries_from(7, &[5])).unwrap();
        store.sync().unwrap();
        observe(&store)
    };
    let store = open(&dirs, super::SEGMENT_BYTES);
    assert!(!store.is_empty());
    assert_eq!(observe(&store), before);
    assert_eq!(before.first_index, 5);
    assert_eq!(before.last_index, 7);
    assert_eq!(before.entries, entries_from(5, &[3, 4, 5]));
    assert_eq!(before.hard_state, hard_state(3, 2, 5));
    assert_eq!(before.conf_state, conf_state(&[1, 2, 3]));
    assert_eq!(before.snapshot, snapshot(4, 2, &[1, 2], b"state at 4"));
}

#[test]
fn survives_reopen_after_installing_a_snapshot() {
    let dirs = dirs();
    {
        let store = open(&dirs, super::SEGMENT_BYTES);
        store.append(&entries_from(1, &[1, 1, 1])).unwrap();
        store.set_hard_state(&hard_state(1, 1, 3)).unwrap();
        store
            .apply_snapshot(snapshot(20, 5, &[1, 2, 3], b"at 20"))
            .unwrap();
        store.append(&entries_from(21, &[5])).unwrap();
        store.sync().unwrap();
    }
    let store = open(&dirs, super::SEGMENT_BYTES);
    assert_eq!(store.first_index(), Ok(21));
    assert_eq!(store.last_index(), Ok(21));
    assert_eq!(store.term(20), Ok(5));
    assert_eq!(read(&store, 21, 22), Ok(entries_from(21, &[5])));
    assert_eq!(store.hard_state(), hard_state(5, 1, 20));
    assert_eq!(
        store.initial_state().unwrap().conf_state,
        conf_state(&[1, 2, 3])
    );
    assert_eq!(
        store.snapshot(20, 2),
        Ok(snapshot(20, 5, &[1, 2, 3], b"at 20"))
    );
}

#[test]
fn is_empty_until_something_is_stored_and_a_second_opener_is_refused() {
    let dirs = dirs();
    let store = open(&dirs, super::SEGMENT_BYTES);
    assert!(store.is_empty());
    match WalLog::open(&dirs.log, &dirs.snapshots) {
        Err(error) => assert!(
            error
                .to_string()
                .contains("another process holds the raft log"),
            "{error}"
        ),
        Ok(_) => panic!("a second opener of the same log was let in"),
    }
    store.set_conf_state(&conf_state(&[1])).unwrap();
    assert!(!store.is_empty());
    store.sync().unwrap();
    drop(store);
    assert!(!open(&dirs, super::SEGMENT_BYTES).is_empty());
}

/// Random requests, valid and invalid, against the log (with segments of a few
/// hundred bytes, so that segments start and are deleted all the time) and
/// `MemLog`; every few steps the log is synced, dropped and opened again, and must
/// come back exactly as the reference is.
#[test]
fn reopening_gives_back_the_same_log_through_segment_changes() {
    for seed in 1..=6 {
        let dirs = dirs();
        let reference = MemLog::default();
        let mut store = open(&dirs, 400);
        let mut random = Generator(seed);
        for step in 0..400 {
            let first = reference.first_index().unwrap();
            let last = reference.last_index().unwrap();
            let last_term = reference.term(last).unwrap();
            let results = match random.below(9) {
                0..=3 => {
                    let start = first.saturating_sub(1) + random.below(last + 3 - first);
                    let term = (last_term + random.below(3)).saturating_sub(1).max(1);
                    let entries: Vec<_> = (start..start + 1 + random.below(6))
                        .map(|index| entry(index, term))
                        .collect();
                    (store.append(&entries), reference.append(&entries))
                }
                4 => {
                    let state = hard_state(last_term, 1, random.below(last + 1));
                    let expected = reference.set_hard_state(&state);
                    (store.set_hard_state(&state), expected)
                }
                5 => {
                    let voters = conf_state(&[1, 1 + random.below(5)]);
                    let expected = reference.set_conf_state(&voters);
                    (store.set_conf_state(&voters), expected)
                }
                6 | 7 => {
                    let index = first.saturating_sub(1) + random.below(last + 2 - first);
                    let term = reference.term(index).unwrap_or(1);
                    let data = format!("state at {index}, step {step}");
                    let made = snapshot(index, term, &[1, 2], data.as_bytes());
                    (store.compact(made.clone()), reference.compact(made))
                }
                _ => {
                    let index = last + random.below(4);
                    let received = snapshot(index, last_term + 1, &[1, 2, 3], b"from the leader");
                    let expected = reference.apply_snapshot(received.clone());
                    (store.apply_snapshot(received), expected)
                }
            };
            let (result, expected) = (results.0.map_err(|e| e.to_string()), results.1);
            assert_eq!(
                result,
                expected.map_err(|e| e.to_string()),
                "seed {seed} step {step}"
            );
            if step % 7 == 6 {
                store.sync().unwrap();
                drop(store);
                store = open(&dirs, 400);
            }
            assert_eq!(
                observe(&store),
                observe(&reference),
                "seed {seed} step {step}"
            );
        }
        // Old segments were deleted along the way: what is left is what the live
        // entries and the latest checkpoint need.
        let left = segments(&dirs.log).len();
        assert!(left < 40, "seed {seed}: {left} segments left");
    }
}

#[test]
fn a_compaction_deletes_the_segments_nothing_live_is_in() {
    let dirs = dirs();
    let store = open(&dirs, 300);
    for index in 1..=40 {
        store.append(&[entry(index, 1)]).unwrap();
    }
    store.set_hard_state(&hard_state(1, 1, 40)).unwrap();
    store.sync().unwrap();
    let before = segments(&dirs.log).len();
    assert!(before > 5, "only {before} segments for 40 entries");
    store.compact(snapshot(38, 1, &[1], b"at 38")).unwrap();
    let after = segments(&dirs.log);
    assert!(after.len() <= 2, "{} segments left: {after:?}", after.len());
    assert_eq!(store.segment_files(), after);
    let seen = observe(&store);
    drop(store);
    let store = open(&dirs, 300);
    assert_eq!(observe(&store), seen);
    assert_eq!(read(&store, 39, 41), Ok(entries_from(39, &[1, 1])));
}

/// Writes entries 1..=5 synced, then 6..=7 in a record of their own.
fn log_with_a_last_record(dirs: &Dirs) -> (u64, u64) {
    let store = open(dirs, super::SEGMENT_BYTES);
    store.append(&entries_from(1, &[1, 1, 1, 1, 1])).unwrap();
    store.set_hard_state(&hard_state(1, 1, 5)).unwrap();
    store.sync().unwrap();
    let synced = std::fs::metadata(&segments(&dirs.log)[0]).unwrap().len();
    store.append(&entries_from(6, &[1, 1])).unwrap();
    store.sync().unwrap();
    let full = std::fs::metadata(&segments(&dirs.log)[0]).unwrap().len();
    (synced, full)
}

#[test]
fn a_record_cut_short_at_the_end_is_dropped() {
    let dirs = dirs();
    let (synced, full) = log_with_a_last_record(&dirs);
    let segment = &segments(&dirs.log)[0];
    for cut in [full - 1, synced + 3, synced + 20] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let store = open(&dirs, super::SEGMENT_BYTES);
        assert_eq!(store.last_index(), Ok(5), "cut at {cut}");
        assert_eq!(std::fs::metadata(segment).unwrap().len(), synced);
        // The log goes on from there, and that survives a reopen too.
        store.append(&entries_from(6, &[2])).unwrap();
        store.sync().unwrap();
        drop(store);
        let store = open(&dirs, super::SEGMENT_BYTES);
        assert_eq!(read(&store, 5, 7), Ok(vec![entry(5, 1), entry(6, 2)]));
        drop(store);
        // Back to the shape the next cut expects.
        std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap()
            .set_len(synced)
            .unwrap();
        let store = open(&dirs, super::SEGMENT_BYTES);
        store.append(&entries_from(6, &[1, 1])).unwrap();
        store.sync().unwrap();
    }
}

#[test]
fn zeros_after_the_last_record_are_dropped_and_garbage_is_refused() {
    for (tail, torn) in [
        (vec![0u8; 4096], true),
        // A record whose bytes are zeros from a sector boundary on: the later
        // sectors of the write never reached the disk.
        (
            [&1000u32.to_le_bytes()[..], &[7; 4], &[1; 10], &[0; 990]].concat(),
            true,
        ),
        (b"\x17\x00\x00\x00garbage!".repeat(9), false),
    ] {
        let dirs = dirs();
        let (_, full) = log_with_a_last_record(&dirs);
        let segment = &segments(&dirs.log)[0];
        let mut bytes = std::fs::read(segment).unwrap();
        bytes.extend_from_slice(&tail);
        std::fs::write(segment, &bytes).unwrap();
        if torn {
            let store = open(&dirs, super::SEGMENT_BYTES);
            assert_eq!(store.last_index(), Ok(7));
            assert_eq!(std::fs::metadata(segment).unwrap().len(), full);
        } else {
            let (what, detail) = open_corrupt(&dirs);
            assert!(what.ends_with(&format!("at byte {full}")), "{what}");
            assert!(detail.contains("CRC"), "{detail}");
        }
    }
}

/// A flipped bit in a record of the last segment, with every sector after it
/// written, is damage, not an interrupted write: refused, nothing cut off.
#[test]
fn a_flipped_bit_in_the_last_segment_is_refused() {
    let dirs = dirs();
    let (synced, full) = log_with_a_last_record(&dirs);
    let segment = &segments(&dirs.log)[0];
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[(synced as usize) / 2] ^= 0x01;
    std::fs::write(segment, &bytes).unwrap();
    let (_, detail) = open_corrupt(&dirs);
    assert!(
        detail.contains("CRC") || detail.contains("length"),
        "{detail}"
    );
    assert_eq!(std::fs::metadata(segment).unwrap().len(), full);
}

#[test]
fn damage_before_the_last_segment_is_refused() {
    let dirs = dirs();
    {
        let store = open(&dirs, 300);
        for index in 1..=40 {
            store.append(&[entry(index, 1)]).unwrap();
        }
        store.sync().unwrap();
    }
    let all = segments(&dirs.log);
    assert!(all.len() >= 3);
    let victim = &all[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let (what, detail) = open_corrupt(&dirs);
    assert!(what.contains(&victim.display().to_string()), "{what}");
    assert!(
        detail.contains("CRC") || detail.contains("length"),
        "{detail}"
    );
}

#[test]
fn a_missing_segment_is_refused() {
    let dirs = dirs();
    {
        let store = open(&dirs, 300);
        for index in 1..=40 {
            store.append(&[entry(index, 1)]).unwrap();
        }
        store.sync().unwrap();
    }
    let all = segments(&dirs.log);
    std::fs::remove_file(&all[1]).unwrap();
    let (_, detail) = open_corrupt(&dirs);
    assert!(detail.contains("is missing"), "{detail}");
}

#[test]
fn a_missing_or_resized_snapshot_file_is_refused() {
    let dirs = dirs();
    {
        let store = open(&dirs, super::SEGMENT_BYTES);
        store.append(&entries_from(1, &[1, 1, 1])).unwrap();
        store.compact(snapshot(2, 1, &[1], b"state at 2")).unwrap();
    }
    let file = std::fs::read_dir(&dirs.snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("snapshot-"))
        .expect("a snapshot file");
    std::fs::write(&file, b"short").unwrap();
    let (what, detail) = open_corrupt(&dirs);
    assert!(what.contains("snapshot file"), "{what}");
    assert!(
        detail.contains("10 bytes were written; found 5 bytes"),
        "{detail}"
    );
    std::fs::remove_file(&file).unwrap();
    open_corrupt(&dirs);
}

#[test]
fn a_log_kept_in_sled_is_moved_into_the_wal_once() {
    let dirs = dirs();
    let db_dir = tempfile::tempdir().unwrap();
    let db = open_sled(db_dir.path());
    let kept = {
        let sled = SledLog::open(&db, &dirs.snapshots).unwrap();
        sled.append(&entries_from(1, &[1, 1, 2, 2, 3, 3])).unwrap();
        sled.set_conf_state(&conf_state(&[1, 2, 3])).unwrap();
        sled.compact(snapshot(2, 1, &[1, 2, 3], b"state at 2"))
            .unwrap();
        sled.set_hard_state(&hard_state(3, 2, 5)).unwrap();
        sled.sync().unwrap();
        observe(&sled)
    };
    let wal = open(&dirs, super::SEGMENT_BYTES);
    assert!(move_sled_log_into(&db, &dirs.snapshots, &wal).unwrap());
    assert_eq!(observe(&wal), kept);
    for tree in ["raft_log", "raft_meta", "raft_snapshot"] {
        assert!(db.open_tree(tree).unwrap().is_empty(), "{tree} is left");
    }
    assert!(!move_sled_log_into(&db, &dirs.snapshots, &wal).unwrap());
    drop(wal);
    assert_eq!(observe(&open(&dirs, super::SEGMENT_BYTES)), kept);
}

/// `flush` syncs what Raft's safety rests on and leaves a hard state that only
/// moved the commit index for later; `sync` makes everything durable.
#[tokio::test]
async fn flush_leaves_a_commit_only_hard_state_for_later() {
    let dirs = dirs();
    let store = open(&dirs, super::SEGMENT_BYTES);
    store.append(&entries_from(1, &[1, 1, 1])).unwrap();
    store.set_hard_state(&hard_state(1, 1, 1)).unwrap();
    assert!(
        store.unsynced(false).is_some(),
        "new entries must be synced"
    );
    store.flush().await.unwrap();
    assert!(store.unsynced(true).is_none());
    store.set_hard_state(&hard_state(1, 1, 3)).unwrap();
    assert!(
        store.unsynced(false).is_none(),
        "a commit-only change waits"
    );
    assert!(store.unsynced(true).is_some(), "but it was written");
    store.flush().await.unwrap();
    assert!(store.unsynced(true).is_some(), "flush left it");
    // A vote or term change must be durable before the member answers.
    store.set_hard_state(&hard_state(2, 3, 3)).unwrap();
    assert!(store.unsynced(false).is_some());
    store.flush().await.unwrap();
    assert!(store.unsynced(true).is_none());
    store.set_hard_state(&hard_state(2, 3, 3)).unwrap();
    store.set_conf_state(&conf_state(&[1, 2])).unwrap();
    assert!(store.unsynced(false).is_some(), "conf states are synced");
    store.sync().unwrap();
    drop(store);
    assert_eq!(
        open(&dirs, super::SEGMENT_BYTES).hard_state(),
        hard_state(2, 3, 3)
    );
}
