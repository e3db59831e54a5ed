//! Raft's durable log: entries, hard state, conf state and the latest snapshot.
//!
//! [`LogStore`] is the narrow trait the consensus driver writes through; raft-rs reads
//! through its supertrait [`raft::Storage`]. [`SledLog`] keeps the log in two trees
//! of the coordinator's sled database; [`MemLog`] keeps it in memory on raft-rs's
//! `MemStorage` and is the reference the conformance suite (`storage/tests.rs`)
//! holds every implementation to.
//!
//! The log always spans `snapshot.index + 1 ..= last_index` with no holes and with
//! terms that never decrease, and the hard state never commits past its end. Every
//! write refuses a request that would break this (`LogStoreError::Invalid`) before it
//! changes anything, and `SledLog::open` refuses stored data that breaks it
//! (`LogStoreError::Corrupt`), so a damaged member stops instead of voting on a log
//! it does not have.

use std::cmp;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Batch, Transactional};

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log storage error: {0}")]
    Sled(#[from] sled::Error),
    /// Stored data breaks the log's invariants; `what` names the key or index.
    #[error(
        "the raft log storage is corrupt at {what}: {detail}; restore the data directory \
         from a backup, or remove this member from the cluster and add it again so that \
         it copies its state from the other members"
    )]
    Corrupt { what: String, detail: String },
    /// A request that would break the log's invariants; nothing was changed.
    #[error("invalid raft log storage request: {0}")]
    Invalid(String),
}

/// Durable Raft log: every storage implementation passes the conformance suite.
pub trait LogStore: raft::Storage + Clone + Send + Sync + 'static {
    /// Appends entries; entries at and after the first new index that already exist
    /// are replaced (the conflicting suffix is truncated). A gap (first new index >
    /// last_index + 1), an index at or below the snapshot index, non-contiguous
    /// entries or a decreasing term is an `Invalid` error.
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError>;
    /// Stores the hard state; its commit index must not be beyond the last index,
    /// so a Ready's entries are appended before its hard state is set.
    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError>;
    fn hard_state(&self) -> HardState;
    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError>;
    /// Stores `snapshot` (metadata + state-machine data, made locally from the
    /// applied state) as the latest snapshot and drops log entries up to and including
    /// its index. Its index must be <= last_index and >= the current snapshot index,
    /// and its term must be the log's term at that index. Conf and hard state stay.
    fn compact(&self, snapshot: Snapshot) -> Result<(), LogStoreError>;
    /// Installs a snapshot received from the leader: drops every entry (as etcd's
    /// ApplySnapshot), stores the snapshot as latest, sets the conf state from its
    /// metadata, sets the commit index to its index and raises the term to its term.
    /// A snapshot not newer than the current one is `Invalid` ("snapshot out of date").
    fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), LogStoreError>;
    /// Makes every preceding change durable.
    fn sync(&self) -> Result<(), LogStoreError>;
}

// The rules below are shared by every implementation so that they refuse exactly the
// same requests with the same messages.

fn check_append(
    entries: &[Entry],
    first_index: u64,
    last_index: u64,
    term_at: impl FnOnce(u64) -> Result<u64, LogStoreError>,
) -> Result<(), LogStoreError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    if first.index < first_index {
        return Err(LogStoreError::Invalid(format!(
            "cannot append at index {}: entries up to {} are compacted into the snapshot",
            first.index,
            first_index - 1
        )));
    }
    if first.index > last_index + 1 {
        return Err(LogStoreError::Invalid(format!(
            "cannot append at index {}: the log ends at {}, so this would leave a gap",
            first.index, last_index
        )));
    }
    let (mut previous_index, mut previous_term) = (first.index - 1, term_at(first.index - 1)?);
    for entry in entries {
        if entry.index != previous_index + 1 {
            return Err(LogStoreError::Invalid(format!(
                "cannot append entries that are not contiguous: index {} follows {}",
                entry.index, previous_index
            )));
        }
        if entry.term < previous_term {
            return Err(LogStoreError::Invalid(format!(
                "cannot append entry {} with term {}: the entry before it has term {}",
                entry.index, entry.term, previous_term
            )));
        }
        (previous_index, previous_term) = (entry.index, entry.term);
    }
    Ok(())
}

fn check_compact(
    snapshot: &SnapshotMetadata,
    snapshot_index: u64,
    last_index: u64,
    term_at: impl FnOnce(u64) -> Result<u64, LogStoreError>,
) -> Result<(), LogStoreError> {
    if snapshot.index < snapshot_index {
        return Err(LogStoreError::Invalid(format!(
            "cannot compact to index {}: the log is already compacted to {}",
            snapshot.index, snapshot_index
        )));
    }
    if snapshot.index > last_index {
        return Err(LogStoreError::Invalid(format!(
            "cannot compact to index {}: the log ends at {}",
            snapshot.index, last_index
        )));
    }
    let log_term = term_at(snapshot.index)?;
    if snapshot.term != log_term {
        return Err(LogStoreError::Invalid(format!(
            "cannot compact to index {}: the snapshot has term {} but the log has term {}",
            snapshot.index, snapshot.term, log_term
        )));
    }
    Ok(())
}

fn check_install(snapshot: &SnapshotMetadata, snapshot_index: u64) -> Result<(), LogStoreError> {
    if snapshot.index <= snapshot_index {
        return Err(LogStoreError::Invalid(format!(
            "snapshot out of date: its index {} is not beyond the stored snapshot's index {}",
            snapshot.index, snapshot_index
        )));
    }
    Ok(())
}

fn check_hard_state(hard_state: &HardState, last_index: u64) -> Result<(), LogStoreError> {
    if hard_state.commit > last_index {
        return Err(LogStoreError::Invalid(format!(
            "cannot commit index {}: the log ends at {}; append the entries first",
            hard_state.commit, last_index
        )));
    }
    Ok(())
}

/// Checks `entries(low, high)` as `MemStorage` does, but answers `Unavailable`
/// instead of panicking when `high` is beyond the log.
fn check_range(low: u64, high: u64, first_index: u64, last_index: u64) -> raft::Result<()> {
    if low < first_index {
        return Err(raft::Error::Store(StorageError::Compacted));
    }
    if high > last_index + 1 {
        return Err(raft::Error::Store(StorageError::Unavailable));
    }
    if low > high {
        let message = format!("invalid entries range: low {low} is above high {high}");
        return Err(raft::Error::Store(StorageError::Other(message.into())));
    }
    Ok(())
}

fn store_error(error: LogStoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(error)))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// In memory, wrapping raft-rs's `MemStorage`; for unit tests of the driver and as
/// the conformance suite's reference.
#[derive(Clone, Default)]
pub struct MemLog {
    storage: MemStorage,
    /// The latest snapshot with its data, which `MemStorage` does not keep. Its mutex
    /// also serializes every call, so a check and the change it guards see one log.
    snapshot: Arc<Mutex<Snapshot>>,
}

impl MemLog {
    fn bounds(&self) -> raft::Result<(u64, u64)> {
        Ok((self.storage.first_index()?, self.storage.last_index()?))
    }

    fn term_for_check(&self, index: u64) -> Result<u64, LogStoreError> {
        self.storage
            .term(index)
            .map_err(|error| LogStoreError::Invalid(error.to_string()))
    }
}

fn mem_error(error: raft::Error) -> LogStoreError {
    LogStoreError::Invalid(error.to_string())
}

impl LogStore for MemLog {
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let _serialized = lock(&self.snapshot);
        let (first, last) = self.bounds().map_err(mem_error)?;
        check_append(entries, first, last, |index| self.term_for_check(index))?;
        self.storage.wl().append(entries).map_err(mem_error)
    }

    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError> {
        let _serialized = lock(&self.snapshot);
        check_hard_state(hard_state, self.storage.last_index().map_err(mem_error)?)?;
        self.storage.wl().set_hardstate(hard_state.clone());
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.storage.rl().hard_state().clone()
    }

    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError> {
        let _serialized = lock(&self.snapshot);
        self.storage.wl().set_conf_state(conf_state.clone());
        Ok(())
    }

    fn compact(&self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let mut stored = lock(&self.snapshot);
        let (first, last) = self.bounds().map_err(mem_error)?;
        let index = snapshot.get_metadata().index;
        check_compact(snapshot.get_metadata(), first - 1, last, |index| {
            self.term_for_check(index)
        })?;
        if index > first - 1 {
            // MemStorage cannot move its snapshot metadata without dropping the whole
            // log, so install the snapshot and put back what follows it and the states.
            let kept = self
                .storage
                .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))
                .map_err(mem_error)?;
            let states = self.storage.initial_state().map_err(mem_error)?;
            let mut core = self.storage.wl();
            core.apply_snapshot(snapshot.clone()).map_err(mem_error)?;
            core.set_hardstate(states.hard_state);
            core.set_conf_state(states.conf_state);
            core.append(&kept).map_err(mem_error)?;
        }
        *stored = snapshot;
        Ok(())
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let mut stored = lock(&self.snapshot);
        check_install(snapshot.get_metadata(), stored.get_metadata().index)?;
        let mut core = self.storage.wl();
        core.apply_snapshot(snapshot.clone()).map_err(mem_error)?;
        *stored = snapshot;
        Ok(())
    }

    fn sync(&self) -> Result<(), LogStoreError> {
        Ok(())
    }
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.storage.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let _serialized = lock(&self.snapshot);
        let (first, last) = self.bounds()?;
        check_range(low, high, first, last)?;
        if low == high {
            return Ok(Vec::new());
        }
        self.storage.entries(low, high, max_size, context)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.storage.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.storage.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.storage.last_index()
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let stored = lock(&self.snapshot);
        if stored.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(stored.clone())
    }
}

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const HARD_STATE_KEY: &str = "hard_state";
const CONF_STATE_KEY: &str = "conf_state";
const SNAPSHOT_KEY: &str = "snapshot";

/// On sled, in two trees of the given db: `raft_log` (key = index as 8 big-endian
/// bytes, value = protobuf-encoded `Entry`) and `raft_meta` (`hard_state`,
/// `conf_state` and `snapshot`, the full `Snapshot` with its data).
#[derive(Clone)]
pub struct SledLog {
    log: sled::Tree,
    meta: sled::Tree,
    /// What raft asks for most, kept in step with sled (the source of truth) by
    /// holding the lock across every write; reads hold it too, so they never see a
    /// half-applied write.
    cache: Arc<Mutex<Cache>>,
}

struct Cache {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    last_index: u64,
}

impl Cache {
    fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> LogStoreError {
    LogStoreError::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

fn encode(message: &impl protobuf::Message) -> Result<Vec<u8>, LogStoreError> {
    message
        .write_to_bytes()
        .map_err(|error| LogStoreError::Invalid(format!("cannot encode a record: {error}")))
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, LogStoreError> {
    M::parse_from_bytes(bytes).map_err(|error| corrupt(what, format!("cannot decode: {error}")))
}

fn read_meta<M: protobuf::Message + Default>(
    meta: &sled::Tree,
    key: &str,
) -> Result<M, LogStoreError> {
    match meta.get(key)? {
        Some(bytes) => decode(&format!("{META_TREE} key {key}"), &bytes),
        None => Ok(M::default()),
    }
}

/// Walks the whole log once and returns its last index, or the first broken rule.
fn verify_log(log: &sled::Tree, snapshot: &SnapshotMetadata) -> Result<u64, LogStoreError> {
    let (mut last_index, mut last_term) = (snapshot.index, snapshot.term);
    for item in log.iter() {
        let (key, value) = item?;
        let Ok(key) = <[u8; 8]>::try_from(key.as_ref()) else {
            let what = format!("{LOG_TREE} key {key:?}");
            return Err(corrupt(what, "a key must be an 8-byte index"));
        };
        let index = u64::from_be_bytes(key);
        let what = format!("{LOG_TREE} index {index}");
        if index <= snapshot.index {
            let detail = format!("at or below the snapshot index {}", snapshot.index);
            return Err(corrupt(what, detail));
        }
        if index != last_index + 1 {
            let what = format!("{LOG_TREE} index {}", last_index + 1);
            let detail = format!("missing: the log jumps from index {last_index} to {index}");
            return Err(corrupt(what, detail));
        }
        let entry: Entry = decode(&what, &value)?;
        if entry.index != index {
            let detail = format!("the stored entry says index {}", entry.index);
            return Err(corrupt(what, detail));
        }
        if entry.term < last_term {
            let detail = format!(
                "term {} is below the term {last_term} of index {last_index}",
                entry.term
            );
            return Err(corrupt(what, detail));
        }
        (last_index, last_term) = (index, entry.term);
    }
    Ok(last_index)
}

impl SledLog {
    /// Opens and verifies the log; any broken invariant is `Corrupt`, naming what.
    /// An empty db is fine (a fresh member).
    pub fn open(db: &sled::Db) -> Result<SledLog, LogStoreError> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let hard_state: HardState = read_meta(&meta, HARD_STATE_KEY)?;
        let conf_state: ConfState = read_meta(&meta, CONF_STATE_KEY)?;
        let mut snapshot: Snapshot = read_meta(&meta, SNAPSHOT_KEY)?;
        let snapshot = snapshot.take_metadata();
        let last_index = verify_log(&log, &snapshot)?;
        if hard_state.commit > last_index {
            let what = format!("{META_TREE} key {HARD_STATE_KEY}");
            let detail = format!(
                "commit index {} is beyond the last log index {last_index}",
                hard_state.commit
            );
            return Err(corrupt(what, detail));
        }
        let cache = Cache {
            hard_state,
            conf_state,
            snapshot,
            last_index,
        };
        Ok(SledLog {
            log,
            meta,
            cache: Arc::new(Mutex::new(cache)),
        })
    }

    /// True when nothing was ever stored (no hard state, no conf state, no entries,
    /// no snapshot).
    pub fn is_empty(&self) -> bool {
        self.log.is_empty() && self.meta.is_empty()
    }

    fn read_entry(&self, index: u64) -> Result<Entry, LogStoreError> {
        let what = format!("{LOG_TREE} index {index}");
        let Some(bytes) = self.log.get(index_key(index))? else {
            return Err(corrupt(what, "missing inside the log"));
        };
        let entry: Entry = decode(&what, &bytes)?;
        if entry.index != index {
            let detail = format!("the stored entry says index {}", entry.index);
            return Err(corrupt(what, detail));
        }
        Ok(entry)
    }

    /// The term at `index`, which must lie in `snapshot.index ..= last_index`.
    fn entry_term(&self, cache: &Cache, index: u64) -> Result<u64, LogStoreError> {
        if index == cache.snapshot.index {
            return Ok(cache.snapshot.term);
        }
        Ok(self.read_entry(index)?.term)
    }

    /// Applies both batches in one sled transaction, so a crash keeps all or nothing.
    fn write_both(&self, log_batch: Batch, meta_batch: Batch) -> Result<(), LogStoreError> {
        (&self.log, &self.meta)
            .transaction(|(log, meta)| {
                log.apply_batch(&log_batch)?;
                meta.apply_batch(&meta_batch)?;
                Ok::<(), ConflictableTransactionError<Infallible>>(())
            })
            .map_err(|error| match error {
                TransactionError::Storage(error) => LogStoreError::Sled(error),
                TransactionError::Abort(never) => match never {},
            })
    }
}

impl LogStore for SledLog {
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let mut cache = lock(&self.cache);
        check_append(entries, cache.first_index(), cache.last_index, |index| {
            self.entry_term(&cache, index)
        })?;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut batch = Batch::default();
        for index in last.index + 1..=cache.last_index {
            batch.remove(&index_key(index));
        }
        for entry in entries {
            batch.insert(&index_key(entry.index), encode(entry)?);
        }
        self.log.apply_batch(batch)?;
        cache.last_index = last.index;
        Ok(())
    }

    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError> {
        let mut cache = lock(&self.cache);
        check_hard_state(hard_state, cache.last_index)?;
        self.meta.insert(HARD_STATE_KEY, encode(hard_state)?)?;
        cache.hard_state = hard_state.clone();
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        lock(&self.cache).hard_state.clone()
    }

    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError> {
        let mut cache = lock(&self.cache);
        self.meta.insert(CONF_STATE_KEY, encode(conf_state)?)?;
        cache.conf_state = conf_state.clone();
        Ok(())
    }

    fn compact(&self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let mut cache = lock(&self.cache);
        let metadata = snapshot.get_metadata();
        check_compact(metadata, cache.snapshot.index, cache.last_index, |index| {
            self.entry_term(&cache, index)
        })?;
        let mut log_batch = Batch::default();
        for index in cache.first_index()..=metadata.index {
            log_batch.remove(&index_key(index));
        }
        let mut meta_batch = Batch::default();
        meta_batch.insert(SNAPSHOT_KEY, encode(&snapshot)?);
        self.write_both(log_batch, meta_batch)?;
        cache.snapshot = metadata.clone();
        Ok(())
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let mut cache = lock(&self.cache);
        let metadata = snapshot.get_metadata();
        check_install(metadata, cache.snapshot.index)?;
        let mut hard_state = cache.hard_state.clone();
        hard_state.term = cmp::max(hard_state.term, metadata.term);
        hard_state.commit = metadata.index;
        let mut log_batch = Batch::default();
        for index in cache.first_index()..=cache.last_index {
            log_batch.remove(&index_key(index));
        }
        let mut meta_batch = Batch::default();
        meta_batch.insert(SNAPSHOT_KEY, encode(&snapshot)?);
        meta_batch.insert(CONF_STATE_KEY, encode(metadata.get_conf_state())?);
        meta_batch.insert(HARD_STATE_KEY, encode(&hard_state)?);
        self.write_both(log_batch, meta_batch)?;
        cache.conf_state = metadata.get_conf_state().clone();
        cache.hard_state = hard_state;
        cache.snapshot = metadata.clone();
        cache.last_index = metadata.index;
        Ok(())
    }

    /// Flushes sled's page cache, which holds every tree of the db.
    fn sync(&self) -> Result<(), LogStoreError> {
        self.log.flush()?;
        Ok(())
    }
}

impl Storage for SledLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let cache = lock(&self.cache);
        Ok(RaftState::new(
            cache.hard_state.clone(),
            cache.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(raft::NO_LIMIT);
        let cache = lock(&self.cache);
        check_range(low, high, cache.first_index(), cache.last_index)?;
        // The same rule as `raft::util::limit_size`, applied while reading so that a
        // small limit does not read the whole range: the first entry always counts.
        let mut entries = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let entry = self.read_entry(index).map_err(store_error)?;
            size = size.saturating_add(u64::from(entry.compute_size()));
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let cache = lock(&self.cache);
        if index == cache.snapshot.index {
            return Ok(cache.snapshot.term);
        }
        if index < cache.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > cache.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry_term(&cache, index).map_err(store_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(lock(&self.cache).first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(lock(&self.cache).last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let cache = lock(&self.cache);
        if cache.snapshot.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        read_meta(&self.meta, SNAPSHOT_KEY).map_err(store_error)
    }
}
