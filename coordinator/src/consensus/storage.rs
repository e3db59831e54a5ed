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
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Batch, Transactional};

#[cfg(test)]
mod tests;
pub mod wal;

pub use wal::WalLog;

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("raft snapshot file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// Stored data breaks the log's invariants; `what` names the key or index.
    #[error(
        "the raft log storage is corrupt at {what}: {detail}; restore the data directory \
         from a backup, or remove this member from the cluster (`ferry cluster \
         remove-member`), empty its data directory and add it again under a new id with \
         `join = true`, so that it copies its state from the other members"
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
    /// Stores the hard state. Its commit index must not be beyond the last index, so
    /// a Ready's entries are appended before its hard state is set.
    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError>;
    fn hard_state(&self) -> HardState;
    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError>;
    /// Stores `snapshot` (metadata + state-machine data, made locally from the
    /// applied state) as the latest snapshot and drops log entries up to and including
    /// its index. Its index must be <= last_index and >= the current snapshot index,
    /// and its term the log's term there. Hard state and conf state stay as they are.
    fn compact(&self, snapshot: Snapshot) -> Result<(), LogStoreError>;
    /// Installs a snapshot received from the leader: drops every entry (as etcd's
    /// ApplySnapshot), stores the snapshot as latest, sets the conf state from its
    /// metadata, sets the commit index to its index and raises the term to its term.
    /// A snapshot not newer than the current one is `Invalid` ("snapshot out of date").
    fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), LogStoreError>;
    /// Makes every preceding change durable.
    fn sync(&self) -> Result<(), LogStoreError>;
    /// Makes every preceding change that Raft's safety rests on durable (entries,
    /// conf state, snapshots, a hard state's term and vote) without blocking the
    /// caller's thread; a hard state that only moved the commit index may stay
    /// unsynced until the next such change or `sync`.
    fn flush(&self) -> impl Future<Output = Result<(), LogStoreError>> + Send;
}

/// Refuses a request as `Invalid` unless `condition` holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(LogStoreError::Invalid(format!($($message)+)));
        }
    };
}

type Checked = Result<(), LogStoreError>;
type TermAt<'a> = &'a dyn Fn(u64) -> Result<u64, LogStoreError>;

/// The log's extent, `snapshot_index + 1 ..= last_index`, and the rules every
/// implementation checks against it, so that all refuse the same requests alike.
#[derive(Clone, Copy)]
struct Span {
    snapshot_index: u64,
    last_index: u64,
}

impl Span {
    fn new(snapshot_index: u64, last_index: u64) -> Span {
        Span {
            snapshot_index,
            last_index,
        }
    }

    fn check_append(self, entries: &[Entry], term_at: TermAt) -> Checked {
        let Some(&Entry { index, .. }) = entries.first() else {
            return Ok(());
        };
        let (compacted, last) = (self.snapshot_index, self.last_index);
        ensure!(
            index > compacted,
            "cannot append at index {index}: the log is compacted up to {compacted}"
        );
        ensure!(
            index <= last + 1,
            "cannot append at index {index}: the log ends at {last}, so that leaves a gap"
        );
        let (mut previous_index, mut previous_term) = (index - 1, term_at(index - 1)?);
        for &Entry { index, term, .. } in entries {
            ensure!(
                index == previous_index + 1,
                "cannot append entries that are not contiguous: {index} follows {previous_index}"
            );
            ensure!(
                term >= previous_term,
                "cannot append entry {index} of term {term} after an entry of term {previous_term}"
            );
            (previous_index, previous_term) = (index, term);
        }
        Ok(())
    }

    fn check_compact(self, snapshot: &SnapshotMetadata, term_at: TermAt) -> Checked {
        let (index, term) = (snapshot.index, snapshot.term);
        let (compacted, last) = (self.snapshot_index, self.last_index);
        ensure!(
            index >= compacted,
            "cannot compact to index {index}: the log is compacted up to {compacted}"
        );
        ensure!(
            index <= last,
            "cannot compact to index {index}: the log ends at {last}"
        );
        let log_term = term_at(index)?;
        ensure!(
            term == log_term,
            "cannot compact to index {index}: the snapshot has term {term}, the log {log_term}"
        );
        Ok(())
    }

    fn check_install(self, snapshot: &SnapshotMetadata) -> Checked {
        let (index, stored) = (snapshot.index, self.snapshot_index);
        ensure!(
            index > stored,
            "snapshot out of date: index {index} is not beyond the stored snapshot's {stored}"
        );
        Ok(())
    }

    fn check_commit(self, hard_state: &HardState) -> Checked {
        let (commit, last) = (hard_state.commit, self.last_index);
        ensure!(
            commit <= last,
            "cannot commit index {commit}: the log ends at {last}; append the entries first"
        );
        Ok(())
    }

    /// Checks `entries(low, high)` as `MemStorage` does, but answers `Unavailable`
    /// instead of panicking when `high` is beyond the log. An empty or inverted range
    /// inside the log reads as no entries.
    fn check_range(self, low: u64, high: u64) -> raft::Result<()> {
        if low <= self.snapshot_index {
            return refuse(StorageError::Compacted);
        }
        if high > self.last_index + 1 {
            return refuse(StorageError::Unavailable);
        }
        Ok(())
    }
}

/// Reads the entries of `indexes` in order with the rule of
/// `raft::util::limit_size` (the first entry always counts), applied while
/// reading so that a small limit does not read the whole range.
fn read_limited(
    indexes: std::ops::Range<u64>,
    max_size: u64,
    read: impl Fn(u64) -> Result<Entry, LogStoreError>,
) -> raft::Result<Vec<Entry>> {
    let (mut entries, mut size) = (Vec::new(), 0u64);
    for index in indexes {
        let entry = read(index).map_err(store_error)?;
        size = size.saturating_add(u64::from(entry.compute_size()));
        if !entries.is_empty() && size > max_size {
            break;
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn refuse<T>(error: StorageError) -> raft::Result<T> {
    Err(raft::Error::Store(error))
}

fn store_error(error: LogStoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(error)))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    ferry_common::locks::lock(mutex, "raft log")
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

/// `MemStorage` fails only on requests the checks have already refused.
fn mem_error(error: raft::Error) -> LogStoreError {
    LogStoreError::Invalid(error.to_string())
}

impl MemLog {
    fn span(&self, snapshot: &Snapshot) -> Result<Span, LogStoreError> {
        let last_index = self.storage.last_index().map_err(mem_error)?;
        Ok(Span::new(snapshot.get_metadata().index, last_index))
    }

    fn term_at(&self, index: u64) -> Result<u64, LogStoreError> {
        self.storage.term(index).map_err(mem_error)
    }
}

impl LogStore for MemLog {
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let stored = lock(&self.snapshot);
        let span = self.span(&stored)?;
        span.check_append(entries, &|index| self.term_at(index))?;
        self.storage.wl().append(entries).map_err(mem_error)
    }

    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError> {
        let stored = lock(&self.snapshot);
        self.span(&stored)?.check_commit(hard_state)?;
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
        let span = self.span(&stored)?;
        span.check_compact(snapshot.get_metadata(), &|index| self.term_at(index))?;
        let index = snapshot.get_metadata().index;
        if index > span.snapshot_index {
            // MemStorage moves its snapshot only by dropping the whole log, so install
            // the snapshot, then put back the entries after it and both states.
            let context = GetEntriesContext::empty(false);
            let kept = self
                .storage
                .entries(index + 1, span.last_index + 1, None, context);
            let kept = kept.map_err(mem_error)?;
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
        self.span(&stored)?.check_install(snapshot.get_metadata())?;
        let installed = self.storage.wl().apply_snapshot(snapshot.clone());
        installed.map_err(mem_error)?;
        *stored = snapshot;
        Ok(())
    }

    fn sync(&self) -> Result<(), LogStoreError> {
        Ok(())
    }

    async fn flush(&self) -> Result<(), LogStoreError> {
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
        let stored = lock(&self.snapshot);
        self.span(&stored)
            .map_err(store_error)?
            .check_range(low, high)?;
        if low >= high {
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
            return refuse(StorageError::SnapshotTemporarilyUnavailable);
        }
        Ok(stored.clone())
    }
}

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const HARD_STATE_KEY: &str = "hard_state";
const CONF_STATE_KEY: &str = "conf_state";
const SNAPSHOT_TREE: &str = "raft_snapshot";
const SNAPSHOT_KEY: &str = "snapshot";
const SNAPSHOT_FILE_KEY: &str = "file";

/// On sled, in three trees of the given db: `raft_log` (key = index as 8
/// big-endian bytes, value = protobuf-encoded `Entry`), `raft_meta`
/// (`hard_state`, `conf_state`) and `raft_snapshot` (`snapshot`: the latest
/// `Snapshot` without its data; `file`: where its data is, with size and BLAKE3
/// digest). The data itself, the whole state machine, is a file in the snapshot
/// directory: written and fsynced before the records that name it, outside the
/// log's lock, so compacting a large state holds up appends only for the short
/// transaction that switches to it. (Kept in sled, a value of hundreds of
/// megabytes is rewritten whenever a neighbouring key changes.)
#[derive(Clone)]
pub struct SledLog {
    log: sled::Tree,
    meta: sled::Tree,
    snapshots: sled::Tree,
    snapshot_dir: Arc<std::path::PathBuf>,
    /// Held for a whole snapshot store (file, switch, flush, cleanup), so that
    /// two of them (a compaction and an installation) never remove each other's file.
    snapshot_writer: Arc<Mutex<()>>,
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
    /// The log's terms as runs: `(first index, term)`, ascending, covering
    /// `snapshot.index + 1 ..= last_index`. Raft asks for terms on every append and
    /// every message; this answers without reading and decoding a stored entry.
    terms: TermRuns,
}

impl Cache {
    fn span(&self) -> Span {
        Span::new(self.snapshot.index, self.last_index)
    }
}

/// Runs of equal terms in a log: each `(first index, term)` holds from its index
/// up to the next run's. Terms never decrease along a log, so a log of millions of
/// entries has as many runs as it saw leaders.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct TermRuns(std::collections::VecDeque<(u64, u64)>);

impl TermRuns {
    /// The term of `index`, which the caller knows lies inside the covered range.
    fn term(&self, index: u64) -> Option<u64> {
        let after = self.0.partition_point(|(first, _)| *first <= index);
        after.checked_sub(1).map(|run| self.0[run].1)
    }

    /// Records `index` with `term`, after everything from `index` on was dropped.
    fn push(&mut self, index: u64, term: u64) {
        if self.0.back().is_none_or(|(_, last)| *last != term) {
            self.0.push_back((index, term));
        }
    }

    /// Forgets every index at or after `index`.
    fn truncate_from(&mut self, index: u64) {
        while self.0.back().is_some_and(|(first, _)| *first >= index) {
            self.0.pop_back();
        }
    }

    /// Forgets every index at or below `index` (compacted away).
    fn compact_to(&mut self, index: u64) {
        while self.0.len() >= 2 && self.0[1].0 <= index + 1 {
            self.0.pop_front();
        }
        match self.0.front_mut() {
            Some(front) if front.0 <= index => front.0 = index + 1,
            _ => {}
        }
    }
}

fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> LogStoreError {
    let (what, detail) = (what.into(), detail.into());
    LogStoreError::Corrupt { what, detail }
}

fn encode(message: &impl protobuf::Message) -> Result<Vec<u8>, LogStoreError> {
    let encoded = message.write_to_bytes();
    encoded.map_err(|error| LogStoreError::Invalid(format!("cannot encode: {error}")))
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, LogStoreError> {
    M::parse_from_bytes(bytes).map_err(|error| corrupt(what, format!("cannot decode: {error}")))
}

fn read_meta<M: protobuf::Message>(meta: &sled::Tree, key: &str) -> Result<M, LogStoreError> {
    read_key(meta, META_TREE, key)
}

fn read_key<M: protobuf::Message>(
    tree: &sled::Tree,
    name: &str,
    key: &str,
) -> Result<M, LogStoreError> {
    match tree.get(key)? {
        Some(bytes) => decode(&format!("{name} key {key}"), &bytes),
        None => Ok(M::new()),
    }
}

/// Where a snapshot's data is: a file of the snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct DataFile {
    name: String,
    size: u64,
    blake3: String,
}

fn file_error(path: &std::path::Path, source: std::io::Error) -> LogStoreError {
    LogStoreError::File {
        path: path.display().to_string(),
        source,
    }
}

fn read_data_file(snapshots: &sled::Tree) -> Result<Option<DataFile>, LogStoreError> {
    let Some(bytes) = snapshots.get(SNAPSHOT_FILE_KEY)? else {
        return Ok(None);
    };
    let what = format!("{SNAPSHOT_TREE} key {SNAPSHOT_FILE_KEY}");
    let file: DataFile = serde_json::from_slice(&bytes)
        .map_err(|error| corrupt(&what, format!("cannot decode: {error}")))?;
    check_data_file_name(&what, &file)?;
    Ok(Some(file))
}

/// Refuses a record naming anything but a plain file of the snapshot directory.
fn check_data_file_name(what: &str, file: &DataFile) -> Result<(), LogStoreError> {
    let plain = !file.name.is_empty()
        && file
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !plain || file.name.starts_with('.') {
        return Err(corrupt(
            what,
            format!("{:?} is not a snapshot file name", file.name),
        ));
    }
    Ok(())
}

/// Reads a snapshot's data file and checks its size and digest.
fn read_verified_data(dir: &std::path::Path, file: &DataFile) -> Result<Vec<u8>, LogStoreError> {
    let path = dir.join(&file.name);
    let data = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
    let digest = blake3::hash(&data).to_hex().to_string();
    if data.len() as u64 != file.size || digest != file.blake3 {
        let detail = format!(
            "{} bytes with digest {digest}; {} bytes with digest {} were written",
            data.len(),
            file.size,
            file.blake3
        );
        return Err(corrupt(format!("snapshot file {}", path.display()), detail));
    }
    Ok(data)
}

/// Decodes entry `index` from its stored bytes, which must be there and agree.
fn decode_entry(index: u64, bytes: Option<&[u8]>) -> Result<Entry, LogStoreError> {
    let what = format!("{LOG_TREE} index {index}");
    let entry: Entry = decode(&what, bytes.ok_or_else(|| corrupt(&what, "missing"))?)?;
    if entry.index != index {
        return Err(corrupt(
            what,
            format!("the stored entry says index {}", entry.index),
        ));
    }
    Ok(entry)
}

/// Walks the whole log once and returns its last index, or the first broken rule.
fn verify_log(
    log: &sled::Tree,
    snapshot: &SnapshotMetadata,
) -> Result<(u64, TermRuns), LogStoreError> {
    let (mut last_index, mut last_term) = (snapshot.index, snapshot.term);
    let mut terms = TermRuns::default();
    let mut stale = Vec::new();
    for item in log.iter() {
        let (key, value) = item?;
        let Ok(index) = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes) else {
            let what = format!("{LOG_TREE} key {key:?}");
            return Err(corrupt(what, "a key must be an 8-byte index"));
        };
        let what = format!("{LOG_TREE} index {index}");
        if index <= snapshot.index {
            // Left by a compaction that stopped after it switched to its
            // snapshot and before it removed the entries the snapshot covers.
            stale.push(index);
            continue;
        }
        if index != last_index + 1 {
            let what = format!("{LOG_TREE} index {}", last_index + 1);
            let detail = format!("missing: the log jumps from index {last_index} to {index}");
            return Err(corrupt(what, detail));
        }
        let term = decode_entry(index, Some(&value))?.term;
        if term < last_term {
            let detail = format!("term {term} is below the term {last_term} of index {last_index}");
            return Err(corrupt(what, detail));
        }
        terms.push(index, term);
        (last_index, last_term) = (index, term);
    }
    if let (Some(first), Some(last)) = (stale.first(), stale.last()) {
        tracing::info!(
            entries = stale.len(),
            first,
            last,
            "removing log entries an interrupted compaction left behind"
        );
        for chunk in stale.chunks(REMOVAL_CHUNK) {
            let mut batch = Batch::default();
            chunk
                .iter()
                .for_each(|index| batch.remove(&index.to_be_bytes()));
            log.apply_batch(batch)?;
        }
        log.flush()?;
    }
    Ok((last_index, terms))
}

/// Entries removed per sled batch when a compaction drops what its snapshot
/// covers: small batches, so that appends never wait long for the tree.
const REMOVAL_CHUNK: usize = 512;

fn transaction_error(error: TransactionError<Infallible>) -> LogStoreError {
    match error {
        TransactionError::Storage(error) => LogStoreError::Sled(error),
        TransactionError::Abort(never) => match never {},
    }
}

/// A batch removing `indexes` from the log.
fn removal(indexes: RangeInclusive<u64>) -> Batch {
    let mut batch = Batch::default();
    indexes.for_each(|index| batch.remove(&index.to_be_bytes()));
    batch
}

impl SledLog {
    /// Opens and verifies the log; any broken invariant is `Corrupt`, naming what.
    /// An empty db is fine (a fresh member).
    pub fn open(db: &sled::Db, snapshot_dir: &std::path::Path) -> Result<SledLog, LogStoreError> {
        let (log, meta) = (db.open_tree(LOG_TREE)?, db.open_tree(META_TREE)?);
        let snapshots = db.open_tree(SNAPSHOT_TREE)?;
        let snapshot_dir = Arc::new(snapshot_dir.to_path_buf());
        if let Some(old) = meta.get(SNAPSHOT_KEY)? {
            // Written when the whole snapshot lived in `raft_meta`: its data moves
            // to a file, its metadata to the snapshot tree.
            let what = format!("{META_TREE} key {SNAPSHOT_KEY}");
            let mut snapshot: Snapshot = decode(&what, &old)?;
            let data = std::mem::take(&mut snapshot.data);
            let file = write_data_file(&snapshot_dir, snapshot.get_metadata(), &data)?;
            let moved = (&meta, &snapshots).transaction(|(meta, snapshots)| {
                snapshots.insert(SNAPSHOT_KEY, encode_tx(&snapshot)?)?;
                snapshots.insert(SNAPSHOT_FILE_KEY, file_record(&file))?;
                meta.remove(SNAPSHOT_KEY)?;
                Ok::<(), ConflictableTransactionError<Infallible>>(())
            });
            moved.map_err(transaction_error)?;
            db.flush()?;
        }
        let hard_state: HardState = read_meta(&meta, HARD_STATE_KEY)?;
        let conf_state = read_meta(&meta, CONF_STATE_KEY)?;
        let snapshot =
            read_key::<Snapshot>(&snapshots, SNAPSHOT_TREE, SNAPSHOT_KEY)?.take_metadata();
        let file = read_data_file(&snapshots)?;
        if let Some(file) = &file {
            let path = snapshot_dir.join(&file.name);
            let found = std::fs::metadata(&path).map(|m| m.len());
            if found.as_ref().ok() != Some(&file.size) {
                let detail = match found {
                    Ok(size) => format!("{size} bytes where {} were written", file.size),
                    Err(error) => error.to_string(),
                };
                return Err(corrupt(format!("snapshot file {}", path.display()), detail));
            }
        }
        remove_other_data_files(&snapshot_dir, file.as_ref().map(|f| f.name.as_str()));
        let (last_index, terms) = verify_log(&log, &snapshot)?;
        let commit = hard_state.commit;
        if commit > last_index {
            let detail = format!("commit index {commit} is beyond the last log index {last_index}");
            return Err(corrupt(format!("{META_TREE} key {HARD_STATE_KEY}"), detail));
        }
        let cache = Cache {
            hard_state,
            conf_state,
            snapshot,
            last_index,
            terms,
        };
        let cache = Arc::new(Mutex::new(cache));
        Ok(SledLog {
            log,
            meta,
            snapshots,
            snapshot_dir,
            snapshot_writer: Arc::default(),
            cache,
        })
    }

    /// Removes the entries a compaction's snapshot covers, in small batches, none
    /// under the cache's lock: nothing reads or writes at or below the snapshot
    /// index once the switch is made.
    fn remove_compacted(&self, indexes: RangeInclusive<u64>) -> Result<(), LogStoreError> {
        let indexes: Vec<u64> = indexes.collect();
        for chunk in indexes.chunks(REMOVAL_CHUNK) {
            self.log
                .apply_batch(removal(chunk[0]..=chunk[chunk.len() - 1]))?;
        }
        Ok(())
    }

    /// True when nothing was ever stored (no hard state, no conf state, no entries,
    /// no snapshot).
    pub fn is_empty(&self) -> bool {
        self.log.is_empty() && self.meta.is_empty() && self.snapshots.is_empty()
    }

    /// The term at `index`, which must lie in `snapshot.index ..= last_index`.
    fn term_at(&self, cache: &Cache, index: u64) -> Result<u64, LogStoreError> {
        if index == cache.snapshot.index {
            return Ok(cache.snapshot.term);
        }
        if let Some(term) = cache.terms.term(index) {
            return Ok(term);
        }
        let bytes = self.log.get(index.to_be_bytes())?;
        Ok(decode_entry(index, bytes.as_deref())?.term)
    }

    /// Writes a snapshot's data to its file (no lock held: it may be large), then
    /// under the lock checks the request, switches to the new snapshot and applies
    /// both batches in one sled transaction (a crash keeps all or nothing), flushes,
    /// and only then removes older snapshot files. `batches` builds the log and
    /// meta batches from the checked span.
    fn store_snapshot(
        &self,
        mut snapshot: Snapshot,
        check: impl Fn(&Self, &Cache) -> Result<(), LogStoreError>,
        batches: impl FnOnce(&Cache, &SnapshotMetadata) -> (Batch, Batch),
        update: impl FnOnce(&mut Cache, &SnapshotMetadata),
    ) -> Result<(), LogStoreError> {
        let _writer = lock(&self.snapshot_writer);
        {
            // Refused before any file is written, when it can be told already.
            let cache = lock(&self.cache);
            check(self, &cache)?;
        }
        let data = std::mem::take(&mut snapshot.data);
        let file = (!data.is_empty())
            .then(|| write_data_file(&self.snapshot_dir, snapshot.get_metadata(), &data))
            .transpose()?;
        drop(data);
        let mut cache = lock(&self.cache);
        // Again: the log may have changed while the file was written.
        if let Err(error) = check(self, &cache) {
            if let Some(file) = &file {
                let _ = std::fs::remove_file(self.snapshot_dir.join(&file.name));
            }
            return Err(error);
        }
        let metadata = snapshot.get_metadata().clone();
        let (log_batch, meta_batch) = batches(&cache, &metadata);
        let encoded = encode(&snapshot)?;
        let written =
            (&self.log, &self.meta, &self.snapshots).transaction(|(log, meta, snapshots)| {
                log.apply_batch(&log_batch)?;
                meta.apply_batch(&meta_batch)?;
                snapshots.insert(SNAPSHOT_KEY, encoded.as_slice())?;
                match &file {
                    Some(file) => snapshots.insert(SNAPSHOT_FILE_KEY, file_record(file))?,
                    None => snapshots.remove(SNAPSHOT_FILE_KEY)?,
                };
                Ok::<(), ConflictableTransactionError<Infallible>>(())
            });
        written.map_err(transaction_error)?;
        update(&mut cache, &metadata);
        drop(cache);
        // The old file may go only once nothing durable names it any more.
        self.log.flush()?;
        remove_other_data_files(&self.snapshot_dir, file.as_ref().map(|f| f.name.as_str()));
        Ok(())
    }

    /// The latest snapshot with its data, read from its file and verified.
    fn read_snapshot(&self) -> Result<Snapshot, LogStoreError> {
        let mut snapshot: Snapshot = read_key(&self.snapshots, SNAPSHOT_TREE, SNAPSHOT_KEY)?;
        if let Some(file) = read_data_file(&self.snapshots)? {
            snapshot.data = read_verified_data(&self.snapshot_dir, &file)?.into();
        }
        Ok(snapshot)
    }
}

/// Moves a Raft log kept in sled (as coordinators did before the write-ahead log)
/// into `wal`, once, and returns whether there was one. The sled trees are emptied
/// only after the write-ahead log holds all of it, synced; a move cut short is
/// finished at the next start.
pub fn move_sled_log_into(
    db: &sled::Db,
    snapshot_dir: &std::path::Path,
    wal: &WalLog,
) -> Result<bool, LogStoreError> {
    let trees = [LOG_TREE, META_TREE, SNAPSHOT_TREE];
    let names = db.tree_names();
    let mut stored = false;
    for tree in trees {
        if names.iter().any(|name| name.as_ref() == tree.as_bytes()) {
            stored |= !db.open_tree(tree)?.is_empty();
        }
    }
    if !stored {
        return Ok(false);
    }
    if wal.is_empty() {
        let sled = SledLog::open(db, snapshot_dir)?;
        let read = |error: raft::Error| corrupt("the raft log in sled", error.to_string());
        let snapshot = Storage::snapshot(&sled, 0, 0).map_err(read)?;
        let conf_state = sled.initial_state().map_err(read)?.conf_state;
        let hard_state = sled.hard_state();
        if snapshot.get_metadata().index > 0 {
            wal.apply_snapshot(snapshot)?;
        }
        wal.set_conf_state(&conf_state)?;
        let (first, last) = (
            sled.first_index().map_err(read)?,
            sled.last_index().map_err(read)?,
        );
        let mut low = first;
        while low <= last {
            let high = (low + REMOVAL_CHUNK as u64).min(last + 1);
            let entries = sled.entries(low, high, None, GetEntriesContext::empty(false));
            wal.append(&entries.map_err(read)?)?;
            low = high;
        }
        wal.set_hard_state(&hard_state)?;
        wal.sync()?;
        tracing::info!(
            first_index = first,
            last_index = last,
            commit = hard_state.commit,
            "moved the raft log from sled into the write-ahead log"
        );
    }
    for tree in trees {
        db.drop_tree(tree)?;
    }
    db.flush()?;
    Ok(true)
}

fn encode_tx(
    message: &impl protobuf::Message,
) -> Result<Vec<u8>, ConflictableTransactionError<Infallible>> {
    Ok(message.write_to_bytes().expect("raft messages encode"))
}

fn file_record(file: &DataFile) -> Vec<u8> {
    serde_json::to_vec(file).expect("file records encode")
}

/// Writes `data` to a new file named after the snapshot, durably: a temporary
/// file, fsynced, renamed into place, the directory fsynced.
fn write_data_file(
    dir: &std::path::Path,
    metadata: &SnapshotMetadata,
    data: &[u8],
) -> Result<DataFile, LogStoreError> {
    use std::io::Write as _;
    ferry_common::durable::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let digest = blake3::hash(data).to_hex().to_string();
    let name = format!(
        "snapshot-{:020}-{:020}-{}.bin",
        metadata.index,
        metadata.term,
        &digest[..16]
    );
    let path = dir.join(&name);
    let temporary = dir.join(format!(".{name}.partial"));
    let mut file = ferry_common::durable::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|e| file_error(&temporary, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(&temporary, e))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(|e| file_error(&path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_error(dir, e))?;
    Ok(DataFile {
        name,
        size: data.len() as u64,
        blake3: digest,
    })
}

/// Removes snapshot files (and partial ones) other than `keep`. Failures are only
/// logged: a leftover file wastes space but is never read.
fn remove_other_data_files(dir: &std::path::Path, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with("snapshot-") || name.starts_with(".snapshot-");
        if ours
            && Some(name.as_ref()) != keep
            && let Err(error) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(file = %entry.path().display(), %error, "cannot remove an old snapshot file");
        }
    }
}

impl LogStore for SledLog {
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let mut cache = lock(&self.cache);
        let span = cache.span();
        span.check_append(entries, &|index| self.term_at(&cache, index))?;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut batch = removal(last.index + 1..=span.last_index);
        for entry in entries {
            batch.insert(&entry.index.to_be_bytes(), encode(entry)?);
        }
        self.log.apply_batch(batch)?;
        cache.terms.truncate_from(entries[0].index);
        for entry in entries {
            cache.terms.push(entry.index, entry.term);
        }
        cache.last_index = last.index;
        Ok(())
    }

    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError> {
        let mut cache = lock(&self.cache);
        cache.span().check_commit(hard_state)?;
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
        let requested = snapshot.get_metadata().clone();
        let previous = lock(&self.cache).snapshot.index;
        let began = std::time::Instant::now();
        self.store_snapshot(
            snapshot,
            |log, cache| {
                cache
                    .span()
                    .check_compact(&requested, &|index| log.term_at(cache, index))
            },
            // The switch only moves the snapshot record: the entries it covers
            // are removed after it, outside the cache's lock, so that appends
            // and raft's reads never wait for thousands of removals (an
            // interrupted removal is finished at the next open).
            |_, _| (Batch::default(), Batch::default()),
            |cache, metadata| {
                cache.terms.compact_to(metadata.index);
                cache.snapshot = metadata.clone();
            },
        )?;
        let switched = began.elapsed();
        self.remove_compacted(previous + 1..=requested.index)?;
        tracing::info!(
            index = requested.index,
            store_ms = switched.as_millis() as u64,
            entries_removed = requested.index.saturating_sub(previous),
            remove_ms = (began.elapsed() - switched).as_millis() as u64,
            "snapshot stored and the entries it covers removed"
        );
        Ok(())
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let requested = snapshot.get_metadata().clone();
        // The hard state after installing: the snapshot commits up to its index.
        let installed = |cache: &Cache, metadata: &SnapshotMetadata| {
            let mut hard_state = cache.hard_state.clone();
            hard_state.term = cmp::max(hard_state.term, metadata.term);
            hard_state.commit = metadata.index;
            hard_state
        };
        self.store_snapshot(
            snapshot,
            |_, cache| cache.span().check_install(&requested),
            |cache, metadata| {
                let mut meta_batch = Batch::default();
                let conf_state = metadata.get_conf_state().write_to_bytes();
                let hard_state = installed(cache, metadata).write_to_bytes();
                meta_batch.insert(CONF_STATE_KEY, conf_state.expect("raft messages encode"));
                meta_batch.insert(HARD_STATE_KEY, hard_state.expect("raft messages encode"));
                let span = cache.span();
                (
                    removal(span.snapshot_index + 1..=span.last_index),
                    meta_batch,
                )
            },
            |cache, metadata| {
                cache.hard_state = installed(cache, metadata);
                cache.conf_state = metadata.get_conf_state().clone();
                cache.snapshot = metadata.clone();
                cache.last_index = metadata.index;
                cache.terms = TermRuns::default();
            },
        )
    }

    /// Flushes sled's page cache, which holds every tree of the db.
    fn sync(&self) -> Result<(), LogStoreError> {
        self.log.flush()?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), LogStoreError> {
        self.log.flush_async().await?;
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
        cache.span().check_range(low, high)?;
        read_limited(low..high, max_size, |index| {
            let bytes = self.log.get(index.to_be_bytes())?;
            decode_entry(index, bytes.as_deref())
        })
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let cache = lock(&self.cache);
        match index {
            _ if index == cache.snapshot.index => Ok(cache.snapshot.term),
            _ if index < cache.snapshot.index => refuse(StorageError::Compacted),
            _ if index > cache.last_index => refuse(StorageError::Unavailable),
            _ => self.term_at(&cache, index).map_err(store_error),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(lock(&self.cache).snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(lock(&self.cache).last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The whole file is read and verified holding only the writer's lock, so
        // that appends and term look-ups (the cache's lock) go on meanwhile; no
        // compaction or installation can replace the file under the read.
        let _writer = lock(&self.snapshot_writer);
        if lock(&self.cache).snapshot.index < request_index {
            return refuse(StorageError::SnapshotTemporarilyUnavailable);
        }
        self.read_snapshot().map_err(store_error)
    }
}
