//! The Raft log as a segmented write-ahead log whose syncs are real.
//!
//! Every change (a run of entries, the hard state, the conf state, a snapshot
//! switch) is one record appended to the active segment with `pwrite`; `sync` and
//! `flush` make everything written so far durable with `fdatasync` of that segment.
//! A new segment is created only after the previous one is synced, and the
//! directory is fsynced after the creation, so a durable record is never in a file
//! whose name could vanish. Nothing here rests on sled or `sync_file_range`.
//!
//! Layout: `<dir>/<number>.wal` (20 digits), each a sequence of records
//! `[body length: u32 LE][CRC-32 of the body: u32 LE][body]`, the body being a kind
//! byte and its payload:
//! - `ENTRIES`: entries `i..=j` (each `[u32 LE length][protobuf Entry]`); they
//!   replace whatever the log held from `i` on;
//! - `HARD_STATE`, `CONF_STATE`: the protobuf message;
//! - `COMPACTED`: the log now starts after the snapshot whose metadata and data
//!   file the payload names (`[u32 LE length][protobuf SnapshotMetadata][JSON
//!   DataFile or nothing]`); the entries it covers are dropped, the rest kept;
//! - `INSTALLED`: the same payload, for a snapshot received from the leader: every
//!   entry is dropped.
//!
//! A new segment begins with a checkpoint (the current snapshot, conf state and hard
//! state), so replay may start at any segment that holds the first live entry;
//! segments before it are deleted once a compaction's switch is durable. Replay
//! reads the segments in order and applies the records with the same meaning. At
//! the end of the last segment, a record that runs past the end of the file, or
//! whose bytes include a sector never written (zeros), is a write that never
//! completed (never synced, so never acknowledged) and is cut off with a warning;
//! any other broken record (a bad CRC with every sector written, anywhere in an
//! earlier segment) is damage, and the member refuses to start.
//!
//! Only positions are kept in memory (segment, offset, length and term of every
//! live entry): `entries` reads them back with `pread`, from the page cache in the
//! common case, as the sled log did.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::{
    DataFile, LogStore, LogStoreError, Span, corrupt, decode, encode, file_error, lock,
    read_limited, read_verified_data, refuse, remove_other_data_files, store_error,
    write_data_file,
};

#[cfg(test)]
mod tests;

const ENTRIES: u8 = 1;
const HARD_STATE: u8 = 2;
const CONF_STATE: u8 = 3;
const COMPACTED: u8 = 4;
const INSTALLED: u8 = 5;

const HEADER: usize = 8;
/// A segment is closed once it is this large (a record is never split).
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// No record is larger (raft-rs's messages are bounded far below this).
const MAX_RECORD: usize = 1 << 30;

/// The write-ahead log; clones share it.
#[derive(Clone)]
pub struct WalLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    snapshot_dir: PathBuf,
    segment_bytes: u64,
    /// Held for a whole snapshot store (file, switch, sync, cleanup), so that two
    /// of them (a compaction and an installation) never remove each other's file.
    snapshot_writer: Mutex<()>,
    log: Mutex<Log>,
    /// Held for the process's life: a second process opening the log is refused.
    _lock: File,
}

/// Where a live entry's bytes are.
#[derive(Debug, Clone, Copy)]
struct Position {
    segment: u64,
    offset: u64,
    len: u32,
    term: u64,
}

struct Segment {
    number: u64,
    file: Arc<File>,
    /// Bytes written (the next record's offset).
    size: u64,
}

struct Log {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    data_file: Option<DataFile>,
    /// The entries `snapshot.index + 1 ..`, in order.
    entries: VecDeque<Position>,
    /// Every segment still on disk, by number, for reads.
    segments: BTreeMap<u64, Arc<File>>,
    active: Segment,
    /// How far the active segment is durable; `sync` has nothing to do when
    /// nothing was written since.
    synced: u64,
    /// How far the active segment must be durable for Raft: up to the last
    /// record but one that only moved the commit index (see `flush`).
    needed: u64,
    /// True once any record was ever written (see `is_empty`).
    written: bool,
}

impl Log {
    fn span(&self) -> Span {
        Span::new(self.snapshot.index, self.last_index())
    }

    fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    /// The term at `index`, which lies in `snapshot.index ..= last_index`.
    fn term_at(&self, index: u64) -> Result<u64, LogStoreError> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        let position = index
            .checked_sub(self.snapshot.index + 1)
            .and_then(|offset| self.entries.get(offset as usize));
        position
            .map(|p| p.term)
            .ok_or_else(|| LogStoreError::Invalid(format!("index {index} is outside the log")))
    }

    fn position(&self, index: u64) -> Option<Position> {
        let offset = index.checked_sub(self.snapshot.index + 1)?;
        self.entries.get(offset as usize).copied()
    }

    /// Drops every entry from `index` on.
    fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.snapshot.index + 1) as usize;
        self.entries.truncate(keep);
    }

    /// Moves the log's start to after `snapshot` and drops the entries it covers.
    fn compact_to(&mut self, snapshot: SnapshotMetadata, file: Option<DataFile>) {
        let covered = snapshot.index.saturating_sub(self.snapshot.index) as usize;
        self.entries.drain(..covered.min(self.entries.len()));
        self.snapshot = snapshot;
        self.data_file = file;
    }

    fn install(&mut self, snapshot: SnapshotMetadata, file: Option<DataFile>) {
        self.entries.clear();
        self.snapshot = snapshot;
        self.data_file = file;
    }

    fn read_entry(&self, index: u64) -> Result<Entry, LogStoreError> {
        let what = || format!("raft log index {index}");
        let position = self
            .position(index)
            .ok_or_else(|| corrupt(what(), "not in the log"))?;
        let file = self
            .segments
            .get(&position.segment)
            .ok_or_else(|| corrupt(what(), format!("segment {} is gone", position.segment)))?;
        let mut bytes = vec![0; position.len as usize];
        file.read_exact_at(&mut bytes, position.offset)
            .map_err(|error| corrupt(what(), format!("cannot read: {error}")))?;
        let entry: Entry = decode(&what(), &bytes)?;
        if entry.index != index {
            let detail = format!("the stored entry says index {}", entry.index);
            return Err(corrupt(what(), detail));
        }
        Ok(entry)
    }

    /// Appends one record to the active segment (after starting a new segment
    /// when the active one is full) and returns the body's offset in it.
    fn write(&mut self, inner: &Inner, kind: u8, payload: &[u8]) -> Result<u64, LogStoreError> {
        if self.active.size >= inner.segment_bytes {
            self.rotate(inner)?;
        }
        self.write_here(inner, kind, payload)
    }

    fn write_here(
        &mut self,
        inner: &Inner,
        kind: u8,
        payload: &[u8],
    ) -> Result<u64, LogStoreError> {
        let mut record = Vec::with_capacity(HEADER + 1 + payload.len());
        let body_len = 1 + payload.len();
        if body_len > MAX_RECORD {
            return Err(LogStoreError::Invalid(format!(
                "a raft log record of {body_len} bytes is over the limit of {MAX_RECORD}"
            )));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(payload);
        record.extend_from_slice(&(body_len as u32).to_le_bytes());
        record.extend_from_slice(&crc.finalize().to_le_bytes());
        record.push(kind);
        record.extend_from_slice(payload);
        let offset = self.active.size;
        let path = segment_path(&inner.dir, self.active.number);
        self.active
            .file
            .write_all_at(&record, offset)
            .map_err(|error| file_error(&path, error))?;
        self.active.size += record.len() as u64;
        self.needed = self.active.size;
        self.written = true;
        Ok(offset + HEADER as u64 + 1)
    }

    /// Closes the active segment (synced, so that nothing durable is ever behind
    /// an unsynced file) and starts the next one with a checkpoint.
    fn rotate(&mut self, inner: &Inner) -> Result<(), LogStoreError> {
        let old = segment_path(&inner.dir, self.active.number);
        self.active
            .file
            .sync_data()
            .map_err(|error| file_error(&old, error))?;
        let number = self.active.number + 1;
        let file = Arc::new(create_segment(&inner.dir, number)?);
        self.segments.insert(number, file.clone());
        self.active = Segment {
            number,
            file,
            size: 0,
        };
        self.synced = 0;
        self.needed = 0;
        let snapshot = snapshot_payload(&self.snapshot, self.data_file.as_ref())?;
        self.write_here(inner, COMPACTED, &snapshot)?;
        let conf_state = encode(&self.conf_state)?;
        self.write_here(inner, CONF_STATE, &conf_state)?;
        let hard_state = encode(&self.hard_state)?;
        self.write_here(inner, HARD_STATE, &hard_state)?;
        Ok(())
    }

    /// Segments that hold no live entry and precede the active one.
    fn obsolete_segments(&self) -> Vec<u64> {
        let first_live = self
            .entries
            .front()
            .map_or(self.active.number, |p| p.segment);
        self.segments
            .keys()
            .copied()
            .filter(|&number| number < first_live && number < self.active.number)
            .collect()
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<(), LogStoreError> {
    ferry_common::durable::sync_dir(dir).map_err(|error| file_error(dir, error))
}

/// Creates segment `number` (it must not exist) and makes its name durable.
fn create_segment(dir: &Path, number: u64) -> Result<File, LogStoreError> {
    let path = segment_path(dir, number);
    let file = ferry_common::durable::private_file()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|error| file_error(&path, error))?;
    sync_dir(dir)?;
    Ok(file)
}

fn snapshot_payload(
    metadata: &SnapshotMetadata,
    file: Option<&DataFile>,
) -> Result<Vec<u8>, LogStoreError> {
    let metadata = encode(metadata)?;
    let mut payload = Vec::with_capacity(4 + metadata.len() + 128);
    payload.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    payload.extend_from_slice(&metadata);
    if let Some(file) = file {
        payload.extend(serde_json::to_vec(file).expect("file records encode"));
    }
    Ok(payload)
}

fn parse_snapshot(
    what: &str,
    payload: &[u8],
) -> Result<(SnapshotMetadata, Option<DataFile>), LogStoreError> {
    let (metadata, rest) = split_prefixed(what, payload)?;
    let metadata: SnapshotMetadata = decode(what, metadata)?;
    if rest.is_empty() {
        return Ok((metadata, None));
    }
    let file: DataFile = serde_json::from_slice(rest)
        .map_err(|error| corrupt(what, format!("cannot decode the data file: {error}")))?;
    super::check_data_file_name(what, &file)?;
    Ok((metadata, Some(file)))
}

/// Splits `[u32 LE length][that many bytes]` off the front of `bytes`.
fn split_prefixed<'a>(what: &str, bytes: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), LogStoreError> {
    let short = || corrupt(what, "a length prefix runs past the record");
    let len: [u8; 4] = bytes
        .get(..4)
        .ok_or_else(short)?
        .try_into()
        .expect("4 bytes");
    let len = u32::from_le_bytes(len) as usize;
    let body = bytes.get(4..4 + len).ok_or_else(short)?;
    Ok((body, &bytes[4 + len..]))
}

/// One record read back from a segment.
struct Record<'a> {
    /// The body's offset in the segment.
    offset: u64,
    kind: u8,
    payload: &'a [u8],
}

/// Why reading records stopped before the end of a segment.
struct Broken {
    offset: u64,
    detail: String,
    /// The record runs past the end of the file: a write cut short.
    cut_short: bool,
}

impl Broken {
    /// Whether this is what an interrupted write leaves: the file ends inside the
    /// record, or some disk sector from the record on was never written (reads as
    /// zeros). A record that is whole but wrong, with every sector after it
    /// written, is damage instead: a flipped bit, not a power cut.
    fn is_torn(&self, bytes: &[u8]) -> bool {
        const SECTOR: usize = 512;
        if self.cut_short {
            return true;
        }
        let start = self.offset as usize;
        let mut sector = start - start % SECTOR;
        while sector < bytes.len() {
            let chunk = &bytes[sector.max(start)..(sector + SECTOR).min(bytes.len())];
            if chunk.iter().all(|&b| b == 0) {
                return true;
            }
            sector += SECTOR;
        }
        false
    }
}

/// Reads the records of one segment's bytes, stopping at the first that is
/// incomplete or fails its CRC (a zero length, the tail of a preallocated or
/// never-finished file, also ends it).
fn records(bytes: &[u8]) -> (Vec<Record<'_>>, Option<Broken>) {
    let mut found = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let broken = |detail: String, cut_short: bool| {
            let offset = at as u64;
            Some(Broken {
                offset,
                detail,
                cut_short,
            })
        };
        let Some(header) = bytes.get(at..at + HEADER) else {
            let detail = format!("{} bytes of a record header", bytes.len() - at);
            return (found, broken(detail, true));
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            return (found, broken(format!("a record length of {len}"), false));
        }
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            let have = bytes.len() - at - HEADER;
            let detail = format!("a record of {len} bytes cut short at {have}");
            return (found, broken(detail, true));
        };
        if crc32fast::hash(body) != crc {
            let detail = "a record failing its CRC".to_string();
            return (found, broken(detail, false));
        }
        found.push(Record {
            offset: (at + HEADER + 1) as u64,
            kind: body[0],
            payload: &body[1..],
        });
        at += HEADER + len;
    }
    (found, None)
}

impl WalLog {
    /// Opens (or creates) the log in `dir`, replaying every segment; snapshot data
    /// files live in `snapshot_dir`. Refuses a log that breaks the log's rules
    /// (`Corrupt`), and cuts off a record left half-written at the very end.
    pub fn open(dir: &Path, snapshot_dir: &Path) -> Result<WalLog, LogStoreError> {
        WalLog::open_with(dir, snapshot_dir, SEGMENT_BYTES)
    }

    pub(super) fn open_with(
        dir: &Path,
        snapshot_dir: &Path,
        segment_bytes: u64,
    ) -> Result<WalLog, LogStoreError> {
        ferry_common::durable::create_dir_all(dir).map_err(|error| file_error(dir, error))?;
        let lock_path = dir.join("LOCK");
        let lock_file = ferry_common::durable::private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| file_error(&lock_path, error))?;
        lock_file.try_lock().map_err(|error| {
            let message = format!("another process holds the raft log ({error})");
            file_error(&lock_path, std::io::Error::other(message))
        })?;
        let numbers = segment_numbers(dir)?;
        let mut replay = Replay::default();
        let mut segments = BTreeMap::new();
        let mut active = None;
        for (at, &number) in numbers.iter().enumerate() {
            let last = at + 1 == numbers.len();
            let path = segment_path(dir, number);
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|error| file_error(&path, error))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|error| file_error(&path, error))?;
            let (found, broken) = records(&bytes);
            let mut size = bytes.len() as u64;
            if let Some(broken) = broken {
                let what = format!(
                    "raft log segment {} at byte {}",
                    path.display(),
                    broken.offset
                );
                // Only the end of the last segment can hold a write that never
                // completed (a new segment starts after the last one is synced).
                if !last || !broken.is_torn(&bytes) {
                    return Err(corrupt(what, broken.detail));
                }
                tracing::warn!(
                    segment = %path.display(),
                    offset = broken.offset,
                    dropped_bytes = size - broken.offset,
                    detail = %broken.detail,
                    "cutting off the end of the raft log: a write that never completed"
                );
                file.set_len(broken.offset)
                    .and_then(|()| file.sync_all())
                    .map_err(|error| file_error(&path, error))?;
                size = broken.offset;
            }
            for record in found {
                replay.apply(&path, number, record)?;
            }
            let file = Arc::new(file);
            segments.insert(number, file.clone());
            if last {
                active = Some(Segment { number, file, size });
            }
        }
        let written = replay.written;
        let log = replay.finish(dir, snapshot_dir)?;
        let active = match active {
            Some(active) => active,
            None => {
                let file = Arc::new(create_segment(dir, 1)?);
                segments.insert(1, file.clone());
                Segment {
                    number: 1,
                    file,
                    size: 0,
                }
            }
        };
        let synced = active.size;
        let needed = synced;
        let log = Log {
            hard_state: log.hard_state,
            conf_state: log.conf_state,
            snapshot: log.snapshot,
            data_file: log.data_file,
            entries: log.entries,
            segments,
            active,
            synced,
            needed,
            written,
        };
        let inner = Inner {
            dir: dir.to_path_buf(),
            snapshot_dir: snapshot_dir.to_path_buf(),
            segment_bytes,
            snapshot_writer: Mutex::default(),
            log: Mutex::new(log),
            _lock: lock_file,
        };
        let wal = WalLog {
            inner: Arc::new(inner),
        };
        wal.remove_obsolete_segments()?;
        if written {
            // Left by a snapshot store that a crash cut short, or replaced by a
            // later one. (An empty log leaves the directory alone: a log kept in
            // sled may name a file there until it is moved in.)
            let log = lock(&wal.inner.log);
            let keep = log.data_file.as_ref().map(|f| f.name.clone());
            remove_other_data_files(snapshot_dir, keep.as_deref());
        }
        Ok(wal)
    }

    /// True when nothing was ever stored (no hard state, no conf state, no entries,
    /// no snapshot).
    pub fn is_empty(&self) -> bool {
        !lock(&self.inner.log).written
    }

    /// The segment files the log holds open, oldest first.
    #[cfg(test)]
    pub fn segment_files(&self) -> Vec<PathBuf> {
        let log = lock(&self.inner.log);
        let numbers = log.segments.keys();
        numbers.map(|&n| segment_path(&self.inner.dir, n)).collect()
    }

    /// Deletes the segments nothing live is in any more, then makes that durable.
    fn remove_obsolete_segments(&self) -> Result<(), LogStoreError> {
        let obsolete = {
            let mut log = lock(&self.inner.log);
            let obsolete = log.obsolete_segments();
            for number in &obsolete {
                log.segments.remove(number);
            }
            obsolete
        };
        if obsolete.is_empty() {
            return Ok(());
        }
        for number in &obsolete {
            let path = segment_path(&self.inner.dir, *number);
            std::fs::remove_file(&path).map_err(|error| file_error(&path, error))?;
        }
        sync_dir(&self.inner.dir)
    }

    /// Writes a snapshot's data to its file (no lock held: it may be large), then
    /// under the lock checks the request again, writes the switch record and syncs
    /// it, and only then removes older snapshot files and obsolete segments.
    fn store_snapshot(
        &self,
        mut snapshot: Snapshot,
        kind: u8,
        check: impl Fn(&Log) -> Result<(), LogStoreError>,
    ) -> Result<(), LogStoreError> {
        let _writer = lock(&self.inner.snapshot_writer);
        check(&lock(&self.inner.log))?;
        let data = std::mem::take(&mut snapshot.data);
        let metadata = snapshot.get_metadata().clone();
        let file = (!data.is_empty())
            .then(|| write_data_file(&self.inner.snapshot_dir, &metadata, &data))
            .transpose()?;
        drop(data);
        let payload = snapshot_payload(&metadata, file.as_ref())?;
        {
            let mut log = lock(&self.inner.log);
            if let Err(error) = check(&log) {
                if let Some(file) = &file {
                    let _ = std::fs::remove_file(self.inner.snapshot_dir.join(&file.name));
                }
                return Err(error);
            }
            // Each record's change is made in memory before the next is written,
            // so that a segment started in between checkpoints the latest state.
            log.write(&self.inner, kind, &payload)?;
            if kind == INSTALLED {
                let mut hard_state = log.hard_state.clone();
                hard_state.term = hard_state.term.max(metadata.term);
                hard_state.commit = metadata.index;
                let conf_state = metadata.get_conf_state().clone();
                log.install(metadata, file.clone());
                log.write(&self.inner, CONF_STATE, &encode(&conf_state)?)?;
                log.conf_state = conf_state;
                log.write(&self.inner, HARD_STATE, &encode(&hard_state)?)?;
                log.hard_state = hard_state;
            } else {
                log.compact_to(metadata, file.clone());
            }
        }
        // The old file and segments may go only once nothing durable names them.
        self.sync()?;
        remove_other_data_files(
            &self.inner.snapshot_dir,
            file.as_ref().map(|f| f.name.as_str()),
        );
        self.remove_obsolete_segments()
    }

    /// What must be synced for everything written so far (`all`), or everything
    /// Raft needs durable, to be durable: the active segment up to its size,
    /// unless that is done already.
    fn unsynced(&self, all: bool) -> Option<(Arc<File>, u64, u64)> {
        let log = lock(&self.inner.log);
        let upto = if all { log.active.size } else { log.needed };
        (upto > log.synced).then(|| (log.active.file.clone(), log.active.number, log.active.size))
    }

    fn synced(
        &self,
        number: u64,
        size: u64,
        path: &Path,
        result: std::io::Result<()>,
    ) -> Result<(), LogStoreError> {
        result.map_err(|error| file_error(path, error))?;
        let mut log = lock(&self.inner.log);
        if log.active.number == number && log.synced < size {
            log.synced = size;
        }
        Ok(())
    }
}

fn segment_numbers(dir: &Path) -> Result<Vec<u64>, LogStoreError> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|error| file_error(dir, error))? {
        let entry = entry.map_err(|error| file_error(dir, error))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".wal") else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(number) if stem.len() == 20 && number > 0 => numbers.push(number),
            _ => {
                let what = format!("raft log file {}", entry.path().display());
                return Err(corrupt(what, "not a segment name (20 digits, then .wal)"));
            }
        }
    }
    numbers.sort_unstable();
    // Segments are numbered in order and only the oldest are ever deleted.
    if let Some(pair) = numbers.windows(2).find(|pair| pair[1] != pair[0] + 1) {
        let what = format!("raft log {}", dir.display());
        let detail = format!(
            "segment {} is missing (found {} and {})",
            pair[0] + 1,
            pair[0],
            pair[1]
        );
        return Err(corrupt(what, detail));
    }
    Ok(numbers)
}

/// The log as replay rebuilds it, record by record. Entries are kept by index:
/// replay may start at a segment whose checkpoint predates a later compaction, so
/// the entries it reads first may lie beyond a gap that a later snapshot record
/// covers; only the result has to be one contiguous log.
#[derive(Default)]
struct Replay {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    data_file: Option<DataFile>,
    entries: BTreeMap<u64, Position>,
    written: bool,
}

impl Replay {
    fn apply(&mut self, path: &Path, segment: u64, record: Record) -> Result<(), LogStoreError> {
        let what = format!(
            "raft log segment {} at byte {}",
            path.display(),
            record.offset
        );
        self.written = true;
        match record.kind {
            ENTRIES => self.entries(&what, segment, record),
            HARD_STATE => {
                self.hard_state = decode(&what, record.payload)?;
                Ok(())
            }
            CONF_STATE => {
                self.conf_state = decode(&what, record.payload)?;
                Ok(())
            }
            COMPACTED | INSTALLED => {
                let (metadata, file) = parse_snapshot(&what, record.payload)?;
                if metadata.index < self.snapshot.index {
                    let detail = format!(
                        "a snapshot at index {} after one at {}",
                        metadata.index, self.snapshot.index
                    );
                    return Err(corrupt(what, detail));
                }
                if record.kind == INSTALLED {
                    self.entries.clear();
                } else {
                    self.entries = self.entries.split_off(&(metadata.index + 1));
                }
                self.snapshot = metadata;
                self.data_file = file;
                Ok(())
            }
            other => Err(corrupt(what, format!("unknown record kind {other}"))),
        }
    }

    fn entries(&mut self, what: &str, segment: u64, record: Record) -> Result<(), LogStoreError> {
        let mut rest = record.payload;
        let mut previous: Option<u64> = None;
        while !rest.is_empty() {
            let (bytes, after) = split_prefixed(what, rest)?;
            let offset = record.offset + (record.payload.len() - rest.len()) as u64 + 4;
            rest = after;
            let entry: Entry = decode(what, bytes)?;
            let index = entry.index;
            match previous {
                None if index <= self.snapshot.index => {
                    let detail = format!(
                        "entries from index {index}, at or below the snapshot's index {}",
                        self.snapshot.index
                    );
                    return Err(corrupt(what, detail));
                }
                // Appended entries replace everything from their first index on.
                None => drop(self.entries.split_off(&index)),
                Some(previous) if index != previous + 1 => {
                    return Err(corrupt(
                        what,
                        format!("index {index} follows index {previous}"),
                    ));
                }
                Some(_) => {}
            }
            previous = Some(index);
            let len = bytes.len() as u32;
            let term = entry.term;
            self.entries.insert(
                index,
                Position {
                    segment,
                    offset,
                    len,
                    term,
                },
            );
        }
        Ok(())
    }

    /// Checks what replay found as a whole: one contiguous run of entries right
    /// after the snapshot, terms that never decrease, a commit index inside the log
    /// and a snapshot file of the size written.
    fn finish(self, dir: &Path, snapshot_dir: &Path) -> Result<Replayed, LogStoreError> {
        let mut entries = VecDeque::with_capacity(self.entries.len());
        let (mut last, mut last_term) = (self.snapshot.index, self.snapshot.term);
        for (index, position) in self.entries {
            let what = || format!("raft log {} index {}", dir.display(), last + 1);
            if index != last + 1 {
                let detail = format!("missing: the log jumps from index {last} to {index}");
                return Err(corrupt(what(), detail));
            }
            if position.term < last_term {
                let detail = format!(
                    "term {} is below the term {last_term} of index {last}",
                    position.term
                );
                return Err(corrupt(what(), detail));
            }
            (last, last_term) = (index, position.term);
            entries.push_back(position);
        }
        if self.hard_state.commit > last {
            let detail = format!(
                "commit index {} is beyond the last log index {last}",
                self.hard_state.commit
            );
            return Err(corrupt(
                format!("raft log {} hard state", dir.display()),
                detail,
            ));
        }
        if let Some(file) = &self.data_file {
            let path = snapshot_dir.join(&file.name);
            let size = std::fs::metadata(&path).map(|m| m.len());
            if size.as_ref().ok() != Some(&file.size) {
                let found = match size {
                    Ok(size) => format!("{size} bytes"),
                    Err(error) => error.to_string(),
                };
                let detail = format!("{} bytes were written; found {found}", file.size);
                return Err(corrupt(format!("snapshot file {}", path.display()), detail));
            }
        }
        Ok(Replayed {
            hard_state: self.hard_state,
            conf_state: self.conf_state,
            snapshot: self.snapshot,
            data_file: self.data_file,
            entries,
        })
    }
}

/// What replay hands to `open`.
struct Replayed {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    data_file: Option<DataFile>,
    entries: VecDeque<Position>,
}

/// Where each entry's bytes start in an `ENTRIES` payload, and their length.
type Places = Vec<(u64, u32)>;

fn entries_payload(entries: &[Entry]) -> Result<(Vec<u8>, Places), LogStoreError> {
    let mut payload = Vec::new();
    let mut places = Vec::with_capacity(entries.len());
    for entry in entries {
        let bytes = encode(entry)?;
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        places.push((payload.len() as u64, bytes.len() as u32));
        payload.extend_from_slice(&bytes);
    }
    Ok((payload, places))
}

impl LogStore for WalLog {
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let mut log = lock(&self.inner.log);
        log.span()
            .check_append(entries, &|index| log.term_at(index))?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let (payload, places) = entries_payload(entries)?;
        let at = log.write(&self.inner, ENTRIES, &payload)?;
        let segment = log.active.number;
        log.truncate_from(first.index);
        for (entry, (offset, len)) in entries.iter().zip(places) {
            log.entries.push_back(Position {
                segment,
                offset: at + offset,
                len,
                term: entry.term,
            });
        }
        Ok(())
    }

    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError> {
        let mut log = lock(&self.inner.log);
        log.span().check_commit(hard_state)?;
        if log.hard_state == *hard_state && log.written {
            return Ok(());
        }
        // A hard state that only moves the commit index need not be durable
        // before anything is answered or sent (raft-rs learns the commit index
        // again from the leader; etcd syncs the same way): it is written, and
        // synced with the next record that must be, or by `sync`.
        let commit_only = log.written
            && hard_state.term == log.hard_state.term
            && hard_state.vote == log.hard_state.vote;
        let (segment, needed) = (log.active.number, log.needed);
        log.write(&self.inner, HARD_STATE, &encode(hard_state)?)?;
        if commit_only && log.active.number == segment {
            log.needed = needed;
        }
        log.hard_state = hard_state.clone();
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        lock(&self.inner.log).hard_state.clone()
    }

    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError> {
        let mut log = lock(&self.inner.log);
        log.write(&self.inner, CONF_STATE, &encode(conf_state)?)?;
        log.conf_state = conf_state.clone();
        Ok(())
    }

    fn compact(&self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let requested = snapshot.get_metadata().clone();
        let began = std::time::Instant::now();
        self.store_snapshot(snapshot, COMPACTED, |log| {
            log.span()
                .check_compact(&requested, &|index| log.term_at(index))
        })?;
        tracing::info!(
            index = requested.index,
            store_ms = began.elapsed().as_millis() as u64,
            "snapshot stored and the log compacted to it"
        );
        Ok(())
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let requested = snapshot.get_metadata().clone();
        self.store_snapshot(snapshot, INSTALLED, |log| {
            log.span().check_install(&requested)
        })
    }

    fn sync(&self) -> Result<(), LogStoreError> {
        let Some((file, number, size)) = self.unsynced(true) else {
            return Ok(());
        };
        let path = segment_path(&self.inner.dir, number);
        let result = file.sync_data();
        self.synced(number, size, &path, result)
    }

    async fn flush(&self) -> Result<(), LogStoreError> {
        let Some((file, number, size)) = self.unsynced(false) else {
            return Ok(());
        };
        let path = segment_path(&self.inner.dir, number);
        let result = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error)));
        self.synced(number, size, &path, result)
    }
}

impl Storage for WalLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let log = lock(&self.inner.log);
        Ok(RaftState::new(
            log.hard_state.clone(),
            log.conf_state.clone(),
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
        let log = lock(&self.inner.log);
        log.span().check_range(low, high)?;
        read_limited(low..high, max_size, |index| log.read_entry(index))
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let log = lock(&self.inner.log);
        match index {
            _ if index == log.snapshot.index => Ok(log.snapshot.term),
            _ if index < log.snapshot.index => refuse(StorageError::Compacted),
            _ if index > log.last_index() => refuse(StorageError::Unavailable),
            _ => log.term_at(index).map_err(store_error),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(lock(&self.inner.log).snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(lock(&self.inner.log).last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The whole file is read and verified holding only the writer's lock, so
        // that appends and term look-ups go on meanwhile; no compaction or
        // installation can replace the file under the read.
        let _writer = lock(&self.inner.snapshot_writer);
        let (metadata, file) = {
            let log = lock(&self.inner.log);
            if log.snapshot.index < request_index {
                return refuse(StorageError::SnapshotTemporarilyUnavailable);
            }
            (log.snapshot.clone(), log.data_file.clone())
        };
        let mut snapshot = Snapshot::default();
        if metadata != SnapshotMetadata::default() {
            snapshot.set_metadata(metadata);
        }
        if let Some(file) = file {
            let data = read_verified_data(&self.inner.snapshot_dir, &file).map_err(store_error)?;
            snapshot.data = data.into();
        }
        Ok(snapshot)
    }
}
