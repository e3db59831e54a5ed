//! The conformance suite every [`LogStore`] passes, run on [`MemLog`] and
//! [`SledLog`], and the tests only a durable store can pass (reopen, corruption).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, StorageError};

use super::*;

pub(super) fn entry(index: u64, term: u64) -> Entry {
    let data = format!("command {index:03} of term {term:03}");
    Entry {
        index,
        term,
        data: data.into_bytes().into(),
        ..Entry::default()
    }
}

/// Entries `first..` with the given terms.
pub(super) fn entries_from(first: u64, terms: &[u64]) -> Vec<Entry> {
    (first..)
        .zip(terms)
        .map(|(index, &term)| entry(index, term))
        .collect()
}

pub(super) fn conf_state(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..ConfState::default()
    }
}

pub(super) fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..HardState::default()
    }
}

pub(super) fn snapshot(index: u64, term: u64, voters: &[u64], data: &[u8]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.set_data(data.to_vec().into());
    let metadata = snapshot.mut_metadata();
    metadata.index = index;
    metadata.term = term;
    metadata.set_conf_state(conf_state(voters));
    snapshot
}

pub(super) fn context() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

pub(super) fn read<S: LogStore>(store: &S, low: u64, high: u64) -> raft::Result<Vec<Entry>> {
    store.entries(low, high, None, context())
}

pub(super) fn store_error<T>(error: StorageError) -> raft::Result<T> {
    Err(raft::Error::Store(error))
}

/// Everything a caller can observe, to compare a store with itself or another.
#[derive(Debug, PartialEq)]
pub(super) struct Observed {
    pub(super) first_index: u64,
    pub(super) last_index: u64,
    pub(super) entries: Vec<Entry>,
    pub(super) terms: Vec<u64>,
    pub(super) hard_state: HardState,
    pub(super) initial_hard_state: HardState,
    pub(super) conf_state: ConfState,
    pub(super) snapshot: Snapshot,
}

pub(super) fn observe<S: LogStore>(store: &S) -> Observed {
    let first_index = store.first_index().unwrap();
    let last_index = store.last_index().unwrap();
    let state = store.initial_state().unwrap();
    Observed {
        first_index,
        last_index,
        entries: read(store, first_index, last_index + 1).unwrap(),
        terms: (first_index - 1..=last_index)
            .map(|index| store.term(index).unwrap())
            .collect(),
        hard_state: store.hard_state(),
        initial_hard_state: state.hard_state,
        conf_state: state.conf_state,
        snapshot: store.snapshot(0, 0).unwrap(),
    }
}

#[track_caller]
fn assert_invalid(result: Result<(), LogStoreError>, expected: &str) {
    match result {
        Err(LogStoreError::Invalid(message)) => assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        ),
        other => panic!("expected Invalid containing {expected:?}, got {other:?}"),
    }
}

/// Asserts that `change` is refused as `Invalid` and leaves the store as it was.
#[track_caller]
fn assert_refused<S: LogStore>(
    store: &S,
    expected: &str,
    change: impl FnOnce(&S) -> Result<(), LogStoreError>,
) {
    let before = observe(store);
    assert_invalid(change(store), expected);
    assert_eq!(observe(store), before);
}

type Case<S> = (&'static str, fn(&dyn Fn() -> S));

/// Runs every case on fresh stores from `make`.
pub(super) fn conformance<S: LogStore>(make: &dyn Fn() -> S) {
    let cases: &[Case<S>] = &[
        ("fresh_store_is_empty", fresh_store_is_empty),
        ("append_then_read", append_then_read),
        ("append_in_several_calls", append_in_several_calls),
        ("append_same_entries_again", append_same_entries_again),
        (
            "append_replaces_with_shorter_suffix",
            append_replaces_with_shorter_suffix,
        ),
        (
            "append_replaces_with_longer_suffix",
            append_replaces_with_longer_suffix,
        ),
        ("append_empty_is_a_no_op", append_empty_is_a_no_op),
        ("append_with_gap_is_refused", append_with_gap_is_refused),
        ("append_malformed_is_refused", append_malformed_is_refused),
        ("append_compacted_is_refused", append_compacted_is_refused),
        ("entries_max_size", entries_max_size),
        ("entries_out_of_range", entries_out_of_range),
        ("compact_moves_first_index", compact_moves_first_index),
        ("compact_to_last_index", compact_to_last_index),
        ("compact_snapshot_is_served", compact_snapshot_is_served),
        ("compact_refusals", compact_refusals),
        (
            "compact_same_index_replaces_data",
            compact_same_index_replaces_data,
        ),
        ("apply_snapshot_resets_log", apply_snapshot_resets_log),
        (
            "apply_snapshot_keeps_higher_term",
            apply_snapshot_keeps_higher_term,
        ),
        ("apply_snapshot_after_compact", apply_snapshot_after_compact),
        (
            "stale_apply_snapshot_is_refused",
            stale_apply_snapshot_is_refused,
        ),
        ("hard_state_round_trip", hard_state_round_trip),
        ("commit_beyond_log_is_refused", commit_beyond_log_is_refused),
        ("conf_state_round_trip", conf_state_round_trip),
        ("clones_share_the_log", clones_share_the_log),
        ("matches_reference_on_random_operations", matches_reference),
    ];
    for (name, case) in cases {
        println!("conformance case {name}");
        case(make);
    }
}

#[test]
fn mem_log_passes_conformance() {
    conformance(&MemLog::default);
}

#[test]
fn wal_log_passes_conformance() {
    let dirs = RefCell::new(Vec::new());
    conformance(&|| {
        let dir = tempfile::tempdir().unwrap();
        let log = WalLog::open(&dir.path().join("raft-log"), &dir.path().join("snapshots"));
        dirs.borrow_mut().push(dir);
        log.unwrap()
    });
}

/// The same with segments so small that nearly every write starts a new one.
#[test]
fn wal_log_with_tiny_segments_passes_conformance() {
    let dirs = RefCell::new(Vec::new());
    conformance(&|| {
        let dir = tempfile::tempdir().unwrap();
        let (log_dir, snapshots) = (dir.path().join("raft-log"), dir.path().join("snapshots"));
        dirs.borrow_mut().push(dir);
        WalLog::open_with(&log_dir, &snapshots, 200).unwrap()
    });
}

#[test]
fn sled_log_passes_conformance() {
    let dirs = RefCell::new(Vec::new());
    conformance(&|| {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let log = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
        dirs.borrow_mut().push(dir);
        log
    });
}

fn fresh_store_is_empty<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    assert_eq!(store.first_index(), Ok(1));
    assert_eq!(store.last_index(), Ok(0));
    assert_eq!(store.term(0), Ok(0));
    assert_eq!(store.term(1), store_error(StorageError::Unavailable));
    assert_eq!(read(&store, 1, 1), Ok(vec![]));
    assert_eq!(read(&store, 1, 2), store_error(StorageError::Unavailable));
    assert_eq!(read(&store, 0, 1), store_error(StorageError::Compacted));
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState::default());
    assert_eq!(state.conf_state, ConfState::default());
    assert_eq!(store.hard_state(), HardState::default());
    assert_eq!(store.snapshot(0, 2), Ok(Snapshot::default()));
    assert_eq!(
        store.snapshot(1, 2),
        store_error(StorageError::SnapshotTemporarilyUnavailable)
    );
}

fn append_then_read<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    let appended = entries_from(1, &[1, 1, 2, 3, 3]);
    store.append(&appended).unwrap();
    assert_eq!(store.first_index(), Ok(1));
    assert_eq!(store.last_index(), Ok(5));
    assert_eq!(read(&store, 1, 6), Ok(appended.clone()));
    assert_eq!(read(&store, 2, 4), Ok(appended[1..3].to_vec()));
    assert_eq!(read(&store, 5, 6), Ok(vec![entry(5, 3)]));
    assert_eq!(read(&store, 3, 3), Ok(vec![]));
    let terms: Vec<_> = (0..=5).map(|index| store.term(index).unwrap()).collect();
    assert_eq!(terms, [0, 1, 1, 2, 3, 3]);
    assert_eq!(store.term(6), store_error(StorageError::Unavailable));
}

fn append_in_several_calls<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1])).unwrap();
    store.append(&entries_from(3, &[1])).unwrap();
    store.append(&entries_from(4, &[2, 2])).unwrap();
    assert_eq!(store.last_index(), Ok(5));
    assert_eq!(read(&store, 1, 6), Ok(entries_from(1, &[1, 1, 1, 2, 2])));
}

fn append_same_entries_again<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 2, 2])).unwrap();
    let before = observe(&store);
    store.append(&entries_from(1, &[1, 2, 2])).unwrap();
    store.append(&entries_from(3, &[2])).unwrap();
    assert_eq!(observe(&store), before);
}

fn append_replaces_with_shorter_suffix<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 1, 1, 1])).unwrap();
    store.append(&[entry(3, 2)]).unwrap();
    assert_eq!(store.last_index(), Ok(3));
    assert_eq!(read(&store, 1, 4), Ok(entries_from(1, &[1, 1, 2])));
    assert_eq!(store.term(3), Ok(2));
    assert_eq!(store.term(4), store_error(StorageError::Unavailable));
    assert_eq!(read(&store, 1, 5), store_error(StorageError::Unavailable));
    // The log grows again from the replaced entry, with no trace of the old suffix.
    store.append(&[entry(4, 2)]).unwrap();
    assert_eq!(read(&store, 3, 5), Ok(entries_from(3, &[2, 2])));
}

fn append_replaces_with_longer_suffix<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 1])).unwrap();
    store.append(&entries_from(2, &[2, 2, 2, 3])).unwrap();
    assert_eq!(store.last_index(), Ok(5));
    assert_eq!(read(&store, 1, 6), Ok(entries_from(1, &[1, 2, 2, 2, 3])));
    assert_eq!(store.term(1), Ok(1));
    assert_eq!(store.term(5), Ok(3));
}

fn append_empty_is_a_no_op<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1])).unwrap();
    let before = observe(&store);
    store.append(&[]).unwrap();
    assert_eq!(observe(&store), before);
}

fn append_with_gap_is_refused<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    assert_refused(&store, "gap", |store| store.append(&[entry(2, 1)]));
    store.append(&entries_from(1, &[1, 1, 1])).unwrap();
    assert_refused(&store, "the log ends at 3", |store| {
        store.append(&entries_from(5, &[1, 1]))
    });
    assert_eq!(read(&store, 1, 4), Ok(entries_from(1, &[1, 1, 1])));
}

fn append_malformed_is_refused<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 2, 2])).unwrap();
    assert_refused(&store, "not contiguous", |store| {
        store.append(&[entry(4, 2), entry(6, 2)])
    });
    assert_refused(&store, "not contiguous", |store| {
        store.append(&[entry(3, 2), entry(3, 2)])
    });
    assert_refused(&store, "after an entry of term 2", |store| {
        store.append(&[entry(4, 1)])
    });
    assert_refused(&store, "after an entry of term 3", |store| {
        store.append(&[entry(4, 3), entry(5, 2)])
    });
    // Replacing index 2 compares with index 1 (term 1), so term 1 is fine there.
    store.append(&[entry(2, 1)]).unwrap();
    assert_eq!(read(&store, 1, 3), Ok(entries_from(1, &[1, 1])));
}

fn append_compacted_is_refused<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 2, 2, 2])).unwrap();
    store.compact(snapshot(3, 2, &[1], b"state at 3")).unwrap();
    assert_refused(&store, "compacted", |store| store.append(&[entry(3, 2)]));
    assert_refused(&store, "compacted up to 3", |store| {
        store.append(&entries_from(1, &[1, 1, 2, 2]))
    });
    // The first index after the snapshot may still be replaced.
    store.append(&entries_from(4, &[3, 3])).unwrap();
    assert_eq!(read(&store, 4, 6), Ok(entries_from(4, &[3, 3])));
    assert_eq!(store.term(3), Ok(2));
}

fn entries_max_size<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    let appended = entries_from(1, &[1, 1, 1, 2, 2, 2]);
    store.append(&appended).unwrap();
    let size = u64::from(appended[0].compute_size());
    assert!(appended.iter().all(|e| u64::from(e.compute_size()) == size));
    let limited = |max: u64| read_limited(&store, 1, 7, max);
    assert_eq!(limited(0), vec![entry(1, 1)]);
    assert_eq!(limited(size - 1), vec![entry(1, 1)]);
    assert_eq!(limited(size), vec![entry(1, 1)]);
    assert_eq!(limited(2 * size), appended[..2].to_vec());
    assert_eq!(limited(3 * size - 1), appended[..2].to_vec());
    assert_eq!(limited(3 * size), appended[..3].to_vec());
    assert_eq!(limited(100 * size), appended);
    assert_eq!(limited(raft::NO_LIMIT), appended);
    assert_eq!(
        read_limited(&store, 4, 7, 2 * size),
        appended[3..5].to_vec()
    );
    // Every limit agrees with raft-rs's own rule.
    for max in 0..=7 * size {
        let mut expected = appended.clone();
        raft::util::limit_size(&mut expected, Some(max));
        assert_eq!(limited(max), expected, "max_size {max}");
    }
}

fn read_limited<S: LogStore>(store: &S, low: u64, high: u64, max: u64) -> Vec<Entry> {
    store.entries(low, high, max, context()).unwrap()
}

fn entries_out_of_range<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 1, 1, 1, 1])).unwrap();
    store.compact(snapshot(3, 1, &[1], b"")).unwrap();
    assert_eq!(read(&store, 3, 5), store_error(StorageError::Compacted));
    assert_eq!(read(&store, 1, 2), store_error(StorageError::Compacted));
    assert_eq!(read(&store, 4, 8), store_error(StorageError::Unavailable));
    assert_eq!(read(&store, 4, 7), Ok(entries_from(4, &[1, 1, 1])));
    assert_eq!(read(&store, 7, 7), Ok(vec![]));
    assert_eq!(read(&store, 6, 5), Ok(vec![]));
}

fn compact_moves_first_index<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 2, 2, 3, 3])).unwrap();
    store.set_hard_state(&hard_state(3, 2, 5)).unwrap();
    store.set_conf_state(&conf_state(&[1, 2, 3])).unwrap();
    store
        .compact(snapshot(4, 2, &[1, 2], b"state at 4"))
        .unwrap();
    assert_eq!(store.first_index(), Ok(5));
    assert_eq!(store.last_index(), Ok(6));
    assert_eq!(store.term(4), Ok(2));
    assert_eq!(store.term(5), Ok(3));
    assert_eq!(store.term(3), store_error(StorageError::Compacted));
    assert_eq!(store.term(0), store_error(StorageError::Compacted));
    assert_eq!(read(&store, 5, 7), Ok(entries_from(5, &[3, 3])));
    assert_eq!(read(&store, 4, 7), store_error(StorageError::Compacted));
    // Compaction keeps the states: the conf state may be newer than the snapshot's.
    assert_eq!(store.hard_state(), hard_state(3, 2, 5));
    assert_eq!(
        store.initial_state().unwrap().conf_state,
        conf_state(&[1, 2, 3])
    );
    store
        .compact(snapshot(5, 3, &[1, 2], b"state at 5"))
        .unwrap();
    assert_eq!(store.first_index(), Ok(6));
    assert_eq!(store.term(5), Ok(3));
    assert_eq!(read(&store, 6, 7), Ok(vec![entry(6, 3)]));
}

fn compact_to_last_index<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 2, 3])).unwrap();
    store.compact(snapshot(3, 3, &[1], b"everything")).unwrap();
    assert_eq!(store.first_index(), Ok(4));
    assert_eq!(store.last_index(), Ok(3));
    assert_eq!(store.term(3), Ok(3));
    assert_eq!(store.term(4), store_error(StorageError::Unavailable));
    assert_eq!(read(&store, 4, 4), Ok(vec![]));
    assert_refused(&store, "gap", |store| store.append(&[entry(5, 3)]));
    assert_refused(&store, "of term 2 after an entry of term 3", |store| {
        store.append(&[entry(4, 2)])
    });
    store.append(&[entry(4, 3)]).unwrap();
    assert_eq!(read(&store, 4, 5), Ok(vec![entry(4, 3)]));
}

fn compact_snapshot_is_served<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 2, 2])).unwrap();
    let made = snapshot(3, 2, &[1, 2, 3], b"the applied state at index 3");
    store.compact(made.clone()).unwrap();
    assert_eq!(store.snapshot(0, 2), Ok(made.clone()));
    assert_eq!(store.snapshot(3, 2), Ok(made.clone()));
    assert_eq!(
        store.snapshot(3, 2).unwrap().data.as_ref(),
        b"the applied state at index 3"
    );
    assert_eq!(
        store.snapshot(4, 2),
        store_error(StorageError::SnapshotTemporarilyUnavailable)
    );
}

fn compact_refusals<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 2, 2, 2])).unwrap();
    assert_refused(&store, "the log ends at 5", |store| {
        store.compact(snapshot(6, 2, &[1], b"future"))
    });
    assert_refused(&store, "the snapshot has term 1, the log 2", |store| {
        store.compact(snapshot(4, 1, &[1], b"wrong term"))
    });
    store.compact(snapshot(3, 2, &[1], b"at 3")).unwrap();
    assert_refused(
        &store,
        "compact to index 2: the log is compacted up to 3",
        |store| store.compact(snapshot(2, 1, &[1], b"older")),
    );
    assert_eq!(store.snapshot(0, 0).unwrap().data.as_ref(), b"at 3");
}

fn compact_same_index_replaces_data<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 2])).unwrap();
    store.compact(snapshot(2, 1, &[1], b"first")).unwrap();
    store.compact(snapshot(2, 1, &[1], b"second")).unwrap();
    assert_eq!(store.snapshot(2, 0), Ok(snapshot(2, 1, &[1], b"second")));
    assert_eq!(store.first_index(), Ok(3));
    assert_eq!(read(&store, 3, 4), Ok(vec![entry(3, 2)]));
}

fn apply_snapshot_resets_log<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 2, 2, 2])).unwrap();
    store.set_hard_state(&hard_state(2, 1, 3)).unwrap();
    store.set_conf_state(&conf_state(&[1])).unwrap();
    let received = snapshot(10, 4, &[1, 2, 3], b"the leader's state at 10");
    store.apply_snapshot(received.clone()).unwrap();
    assert_eq!(store.first_index(), Ok(11));
    assert_eq!(store.last_index(), Ok(10));
    assert_eq!(store.term(10), Ok(4));
    assert_eq!(store.term(5), store_error(StorageError::Compacted));
    assert_eq!(read(&store, 11, 11), Ok(vec![]));
    assert_eq!(read(&store, 5, 6), store_error(StorageError::Compacted));
    assert_eq!(store.hard_state(), hard_state(4, 1, 10));
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, hard_state(4, 1, 10));
    assert_eq!(state.conf_state, conf_state(&[1, 2, 3]));
    assert_eq!(store.snapshot(10, 1), Ok(received));
    assert_refused(&store, "gap", |store| store.append(&[entry(12, 4)]));
    store.append(&entries_from(11, &[4, 5])).unwrap();
    assert_eq!(read(&store, 11, 13), Ok(entries_from(11, &[4, 5])));
}

fn apply_snapshot_keeps_higher_term<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store
        .append(&entries_from(1, &[1, 2, 3, 3, 3, 3, 3, 3]))
        .unwrap();
    store.set_hard_state(&hard_state(7, 3, 2)).unwrap();
    // A snapshot inside the local log still drops every entry, as etcd does.
    store
        .apply_snapshot(snapshot(4, 3, &[1, 2], b"at 4"))
        .unwrap();
    assert_eq!(store.hard_state(), hard_state(7, 3, 4));
    assert_eq!(store.first_index(), Ok(5));
    assert_eq!(store.last_index(), Ok(4));
    assert_eq!(store.term(5), store_error(StorageError::Unavailable));
}

fn apply_snapshot_after_compact<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.append(&entries_from(1, &[1, 1, 1, 1])).unwrap();
    store.compact(snapshot(2, 1, &[1], b"local")).unwrap();
    store
        .apply_snapshot(snapshot(3, 1, &[1, 2], b"remote"))
        .unwrap();
    assert_eq!(store.snapshot(0, 0), Ok(snapshot(3, 1, &[1, 2], b"remote")));
    assert_eq!(store.first_index(), Ok(4));
    assert_eq!(store.last_index(), Ok(3));
    assert_eq!(store.hard_state(), hard_state(1, 0, 3));
}

fn stale_apply_snapshot_is_refused<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store
        .apply_snapshot(snapshot(10, 3, &[1, 2], b"at 10"))
        .unwrap();
    store.append(&entries_from(11, &[3, 3])).unwrap();
    for stale in [
        snapshot(8, 2, &[1], b"older"),
        snapshot(10, 3, &[1], b"same"),
    ] {
        assert_refused(&store, "snapshot out of date", |store| {
            store.apply_snapshot(stale)
        });
    }
    assert_eq!(store.snapshot(0, 0), Ok(snapshot(10, 3, &[1, 2], b"at 10")));
    store.compact(snapshot(11, 3, &[1, 2], b"at 11")).unwrap();
    assert_refused(&store, "snapshot out of date", |store| {
        store.apply_snapshot(snapshot(11, 3, &[1], b"remote at 11"))
    });
}

fn hard_state_round_trip<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    store.set_hard_state(&hard_state(1, 2, 0)).unwrap();
    assert_eq!(store.hard_state(), hard_state(1, 2, 0));
    store.append(&entries_from(1, &[1, 1, 2])).unwrap();
    store.set_hard_state(&hard_state(5, 3, 3)).unwrap();
    assert_eq!(store.hard_state(), hard_state(5, 3, 3));
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        hard_state(5, 3, 3)
    );
    // Storing the hard state leaves the log alone.
    assert_eq!(read(&store, 1, 4), Ok(entries_from(1, &[1, 1, 2])));
}

fn commit_beyond_log_is_refused<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    assert_refused(
        &store,
        "cannot commit index 1: the log ends at 0",
        |store| store.set_hard_state(&hard_state(1, 1, 1)),
    );
    store.append(&entries_from(1, &[1, 1])).unwrap();
    assert_refused(
        &store,
        "cannot commit index 3: the log ends at 2",
        |store| store.set_hard_state(&hard_state(1, 1, 3)),
    );
    store.set_hard_state(&hard_state(1, 1, 2)).unwrap();
    assert_eq!(store.hard_state().commit, 2);
}

fn conf_state_round_trip<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    let mut joint = conf_state(&[1, 2, 4]);
    joint.voters_outgoing = vec![1, 2, 3];
    joint.learners = vec![5];
    joint.learners_next = vec![3];
    joint.auto_leave = true;
    store.set_conf_state(&joint).unwrap();
    assert_eq!(store.initial_state().unwrap().conf_state, joint);
    store.set_conf_state(&conf_state(&[1, 2, 4])).unwrap();
    let state = store.initial_state().unwrap();
    assert_eq!(state.conf_state, conf_state(&[1, 2, 4]));
    assert_eq!(state.hard_state, HardState::default());
}

fn clones_share_the_log<S: LogStore>(make: &dyn Fn() -> S) {
    let store = make();
    let clone = store.clone();
    let writer = std::thread::spawn(move || {
        clone.append(&entries_from(1, &[1, 1])).unwrap();
        clone.set_hard_state(&hard_state(1, 1, 2)).unwrap();
    });
    writer.join().unwrap();
    assert_eq!(read(&store, 1, 3), Ok(entries_from(1, &[1, 1])));
    assert_eq!(store.hard_state(), hard_state(1, 1, 2));
}

/// A small deterministic generator, so a failing sequence replays exactly.
pub(super) struct Generator(pub(super) u64);

impl Generator {
    pub(super) fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// Drives the store and a `MemLog` with the same random requests, valid and
/// invalid, and asserts identical answers and identical observable state.
fn matches_reference<S: LogStore>(make: &dyn Fn() -> S) {
    for seed in 1..=4 {
        let (store, reference) = (make(), MemLog::default());
        let mut random = Generator(seed);
        for step in 0..300 {
            let first = reference.first_index().unwrap();
            let last = reference.last_index().unwrap();
            let last_term = reference.term(last).unwrap();
            let results = match random.below(10) {
                0..=3 => {
                    let start = first.saturating_sub(1) + random.below(last + 3 - first);
                    let term = (last_term + random.below(3)).saturating_sub(1).max(1);
                    let count = 1 + random.below(4);
                    let entries: Vec<_> = (start..start + count)
                        .map(|index| entry(index, term))
                        .collect();
                    (store.append(&entries), reference.append(&entries))
                }
                4 => {
                    let state =
                        hard_state(random.below(9), random.below(4), random.below(last + 2));
                    (
                        store.set_hard_state(&state),
                        reference.set_hard_state(&state),
                    )
                }
                5 => {
                    let voters = conf_state(&[1, 1 + random.below(5)]);
                    (
                        store.set_conf_state(&voters),
                        reference.set_conf_state(&voters),
                    )
                }
                6 | 7 => {
                    let index = first.saturating_sub(2) + random.below(last + 3 - first);
                    let term = reference.term(index).unwrap_or(1) + random.below(5) / 4;
                    let data = format!("state at {index}, step {step}");
                    let made = snapshot(index, term, &[1, 2], data.as_bytes());
                    (store.compact(made.clone()), reference.compact(made))
                }
                8 => {
                    let index = first.saturating_sub(2) + random.below(last + 6 - first);
                    let term = last_term + random.below(2);
                    let received = snapshot(index, term, &[1, 2, 3], b"from the leader");
                    (
                        store.apply_snapshot(received.clone()),
                        reference.apply_snapshot(received),
                    )
                }
                _ => (store.sync(), reference.sync()),
            };
            let (result, expected) = (results.0.map_err(|e| e.to_string()), results.1);
            assert_eq!(
                result,
                expected.map_err(|e| e.to_string()),
                "seed {seed} step {step}"
            );
            assert_eq!(
                observe(&store),
                observe(&reference),
                "seed {seed} step {step}"
            );
            let (low, high) = (random.below(last + 3), random.below(last + 3));
            let max = random.below(200);
            assert_eq!(
                format!("{:?}", store.entries(low, high, max, context())),
                format!("{:?}", reference.entries(low, high, max, context())),
                "entries({low}, {high}, {max}) at seed {seed} step {step}"
            );
            let index = random.below(last + 3);
            assert_eq!(store.term(index), reference.term(index), "term({index})");
            let request = random.below(last + 2);
            assert_eq!(store.snapshot(request, 1), reference.snapshot(request, 1));
        }
    }
}

// Tests only a durable store can pass.

/// Opens the db in `dir`. A db just dropped in this process may still be locked
/// for a moment by sled's background IO threads; the lock is waited for (up to
/// 5 s), any other error fails at once.
pub(super) fn open_sled(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return db,
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => panic!("cannot open the db in {}: {error}", dir.display()),
        }
    }
}

#[test]
fn sled_log_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let db = open_sled(dir.path());
        let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
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
    let db = open_sled(dir.path());
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
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
fn sled_log_survives_reopen_after_installing_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_sled(dir.path());
        let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
        store.append(&entries_from(1, &[1, 1, 1])).unwrap();
        store.set_hard_state(&hard_state(1, 1, 3)).unwrap();
        store
            .apply_snapshot(snapshot(20, 5, &[1, 2, 3], b"at 20"))
            .unwrap();
        store.append(&entries_from(21, &[5])).unwrap();
        store.sync().unwrap();
    }
    let db = open_sled(dir.path());
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    assert_eq!(store.first_index(), Ok(21));
    assert_eq!(store.last_index(), Ok(21));
    assert_eq!(store.term(20), Ok(5));
    assert_eq!(read(&store, 21, 22), Ok(entries_from(21, &[5])));
    assert_eq!(store.hard_state(), hard_state(5, 1, 20));
    let state = store.initial_state().unwrap();
    assert_eq!(state.conf_state, conf_state(&[1, 2, 3]));
    assert_eq!(
        store.snapshot(20, 2),
        Ok(snapshot(20, 5, &[1, 2, 3], b"at 20"))
    );
}

#[test]
fn sled_log_is_empty_until_something_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_sled(dir.path());
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    assert!(store.is_empty());
    store.set_conf_state(&conf_state(&[1])).unwrap();
    assert!(!store.is_empty());
    let other = tempfile::tempdir().unwrap();
    let store = SledLog::open(&open_sled(other.path()), &other.path().join("snapshots")).unwrap();
    store.append(&[entry(1, 1)]).unwrap();
    assert!(!store.is_empty());
}

/// A db holding entries 1..=5 (terms 1, 1, 2, 2, 2), commit 4, snapshot none.
fn healthy_db(dir: &Path) -> sled::Db {
    let db = open_sled(dir);
    let store = SledLog::open(&db, &dir.join("snapshots")).unwrap();
    store.append(&entries_from(1, &[1, 1, 2, 2, 2])).unwrap();
    store.set_hard_state(&hard_state(2, 1, 4)).unwrap();
    store.sync().unwrap();
    db
}

/// Opens `db` and returns the `Corrupt` error's fields and message.
#[track_caller]
fn open_corrupt(db: &sled::Db, dir: &Path) -> (String, String, String) {
    match SledLog::open(db, &dir.join("snapshots")) {
        Err(error @ LogStoreError::Corrupt { .. }) => {
            let message = error.to_string();
            let LogStoreError::Corrupt { what, detail } = error else {
                unreachable!()
            };
            (what, detail, message)
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, but the log opened"),
    }
}

#[test]
fn sled_log_refuses_an_undecodable_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let log = db.open_tree("raft_log").unwrap();
    log.insert(3u64.to_be_bytes(), &[0xff; 8][..]).unwrap();
    let (what, detail, message) = open_corrupt(&db, dir.path());
    assert_eq!(what, "raft_log index 3");
    assert!(detail.starts_with("cannot decode"), "{detail}");
    assert!(message.contains("restore the data directory"), "{message}");
    assert!(message.contains("add it again"), "{message}");
}

#[test]
fn sled_log_refuses_an_entry_stored_under_another_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let log = db.open_tree("raft_log").unwrap();
    log.insert(3u64.to_be_bytes(), entry(9, 2).write_to_bytes().unwrap())
        .unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert_eq!(what, "raft_log index 3");
    assert_eq!(detail, "the stored entry says index 9");
}

#[test]
fn sled_log_refuses_a_missing_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    db.open_tree("raft_log")
        .unwrap()
        .remove(3u64.to_be_bytes())
        .unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert_eq!(what, "raft_log index 3");
    assert_eq!(detail, "missing: the log jumps from index 2 to 4");
}

#[test]
fn sled_log_refuses_a_decreasing_term() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let log = db.open_tree("raft_log").unwrap();
    log.insert(4u64.to_be_bytes(), entry(4, 1).write_to_bytes().unwrap())
        .unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert_eq!(what, "raft_log index 4");
    assert_eq!(detail, "term 1 is below the term 2 of index 3");
}

#[test]
fn sled_log_refuses_a_malformed_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    db.open_tree("raft_log")
        .unwrap()
        .insert(b"abc", b"x")
        .unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert!(what.starts_with("raft_log key"), "{what}");
    assert_eq!(detail, "a key must be an 8-byte index");
}

#[test]
fn sled_log_removes_entries_an_interrupted_compaction_left_below_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    store.compact(snapshot(3, 2, &[1], b"at 3")).unwrap();
    let last = store.last_index().unwrap();
    drop(store);
    // As if the compaction had stopped after its switch, before its removals.
    let log = db.open_tree("raft_log").unwrap();
    log.insert(2u64.to_be_bytes(), entry(2, 1).write_to_bytes().unwrap())
        .unwrap();
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    assert_eq!(store.first_index().unwrap(), 4);
    assert_eq!(store.last_index().unwrap(), last);
    assert!(
        log.get(2u64.to_be_bytes()).unwrap().is_none(),
        "the leftover is gone"
    );
}

#[test]
fn sled_log_compaction_removes_the_entries_its_snapshot_covers() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    store.compact(snapshot(3, 2, &[1], b"at 3")).unwrap();
    let log = db.open_tree("raft_log").unwrap();
    for index in 1..=3u64 {
        assert!(
            log.get(index.to_be_bytes()).unwrap().is_none(),
            "index {index}"
        );
    }
    assert!(log.get(4u64.to_be_bytes()).unwrap().is_some());
}

#[test]
fn sled_log_refuses_a_commit_beyond_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let meta = db.open_tree("raft_meta").unwrap();
    let beyond = hard_state(2, 1, 6).write_to_bytes().unwrap();
    meta.insert("hard_state", beyond).unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert_eq!(what, "raft_meta key hard_state");
    assert_eq!(detail, "commit index 6 is beyond the last log index 5");
}

#[test]
fn sled_log_refuses_an_undecodable_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let snapshots = db.open_tree("raft_snapshot").unwrap();
    snapshots.insert("snapshot", &[0xff; 8][..]).unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert_eq!(what, "raft_snapshot key snapshot");
    assert!(detail.starts_with("cannot decode"), "{detail}");
}

#[test]
fn sled_log_refuses_a_first_entry_older_than_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    store.compact(snapshot(3, 2, &[1], b"at 3")).unwrap();
    drop(store);
    let snapshots = db.open_tree("raft_snapshot").unwrap();
    let newer_term = snapshot(3, 7, &[1], b"at 3").write_to_bytes().unwrap();
    snapshots.insert("snapshot", newer_term).unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert_eq!(what, "raft_log index 4");
    assert_eq!(detail, "term 2 is below the term 7 of index 3");
}

#[test]
fn term_runs_follow_appends_truncations_and_compaction() {
    let mut runs = TermRuns::default();
    for (index, term) in [(5, 1), (6, 1), (7, 2), (8, 2), (9, 4)] {
        runs.push(index, term);
    }
    let terms = |runs: &TermRuns| (5..=9).map(|i| runs.term(i)).collect::<Vec<_>>();
    assert_eq!(terms(&runs), [Some(1), Some(1), Some(2), Some(2), Some(4)]);
    assert_eq!(runs.term(4), None, "below the first run");
    // A conflicting suffix from index 8 on, replaced by term 3.
    runs.truncate_from(8);
    runs.push(8, 3);
    assert_eq!(terms(&runs), [Some(1), Some(1), Some(2), Some(3), Some(3)]);
    // Truncating inside a run keeps the run's start.
    runs.truncate_from(7);
    runs.push(7, 2);
    assert_eq!(runs.0, [(5, 1), (7, 2)]);
    runs.compact_to(6);
    assert_eq!(runs.0, [(7, 2)]);
    runs.push(8, 2);
    runs.compact_to(7);
    assert_eq!(runs.0, [(8, 2)]);
    assert_eq!(runs.term(8), Some(2));
}

#[test]
fn sled_log_moves_a_snapshot_stored_beside_the_hard_state_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = healthy_db(dir.path());
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    store.compact(snapshot(3, 2, &[1], b"at 3")).unwrap();
    let expected = observe(&store);
    let full = store.snapshot(0, 0).unwrap();
    drop(store);
    // The layout before snapshot files: the whole snapshot in `raft_meta`.
    let (meta, snapshots) = (
        db.open_tree("raft_meta").unwrap(),
        db.open_tree("raft_snapshot").unwrap(),
    );
    snapshots.clear().unwrap();
    std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
    meta.insert("snapshot", full.write_to_bytes().unwrap())
        .unwrap();
    let store = SledLog::open(&db, &dir.path().join("snapshots")).unwrap();
    assert_eq!(observe(&store), expected);
    assert!(
        meta.get("snapshot").unwrap().is_none(),
        "moved out of raft_meta"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("snapshot-00000000000000000003-"),
        "{files:?}"
    );
}

#[test]
fn sled_log_keeps_one_snapshot_file_and_refuses_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot_dir = dir.path().join("snapshots");
    let db = healthy_db(dir.path());
    let store = SledLog::open(&db, &snapshot_dir).unwrap();
    store.compact(snapshot(3, 2, &[1], b"at 3")).unwrap();
    store.compact(snapshot(4, 2, &[1], b"at 4")).unwrap();
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(&snapshot_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    assert_eq!(files().len(), 1, "the older file is gone: {:?}", files());
    assert_eq!(store.snapshot(0, 0).unwrap().data.as_ref(), b"at 4");
    drop(store);
    // Same size, other bytes: the digest finds it when the data is read.
    std::fs::write(&files()[0], b"at 5").unwrap();
    let store = SledLog::open(&db, &snapshot_dir).unwrap();
    let error = store.snapshot(0, 0).unwrap_err().to_string();
    assert!(error.contains("corrupt at snapshot file"), "{error}");
    drop(store);
    // Truncated: refused at open.
    std::fs::write(&files()[0], b"at").unwrap();
    let (what, detail, _) = open_corrupt(&db, dir.path());
    assert!(what.starts_with("snapshot file "), "{what}");
    assert_eq!(detail, "2 bytes where 4 were written");
    // Missing: refused at open.
    std::fs::remove_file(&files()[0]).unwrap();
    let (what, _, _) = open_corrupt(&db, dir.path());
    assert!(what.starts_with("snapshot file "), "{what}");
}
