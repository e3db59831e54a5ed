//! The worker's content-addressed cache of blobs (inputs, gathered files, code
//! bundles) under `<data_dir>/cache/`, so that a blob another attempt on this
//! worker already fetched is linked or copied into a work directory instead of
//! downloaded again.
//!
//! - Entries are files named by their BLAKE3 digest in `cache/blobs/`, mode
//!   0444, owned by the worker, in a 0700 directory. A blob is admitted only
//!   after its download was verified against its digest on the stream (the
//!   fetch hands over nothing else), and is renamed into place from
//!   `cache/incoming/`.
//! - The entries hold at most `[cache] max_bytes` (0 turns the cache off).
//!   Admitting one evicts the least recently used entries that no staging
//!   attempt holds ([`Lease`]); a blob that does not fit (larger than the bound,
//!   or the entries in use leave no room) is used once and removed. The order of
//!   use is kept in memory ([`ledger`]) and on disk as each entry's
//!   modification time, from which it is rebuilt at start.
//! - Attempts that want the same digest at once take turns: the first
//!   downloads, the others then find the entry.
//! - Every use checks the entry's size, modification time and mode against what
//!   the cache last saw, and hashes it again when they differ; an entry found at
//!   start is hashed at its first use (a crash or the disk may have damaged it
//!   while the worker was down; hashing everything at start would delay the
//!   worker by seconds per GiB for entries that may never be used). A damaged
//!   entry is removed and fetched again.
//! - [`Lease::place`] puts a blob into a work directory: a hard link when the
//!   step cannot write the entry (it runs as another, unprivileged user, and
//!   the entry is read-only and the worker's), otherwise a copy (the kernel's
//!   `copy_file_range`, which clones on filesystems that can), so that no step
//!   can change what the next step gets.

pub mod ledger;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferry_common::locks::lock;
use ledger::{Admission, Found, Ledger, Stamp};

/// The bound on the cache's entries unless `[cache] max_bytes` says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// The mode of every entry: readable by all, writable by none.
const ENTRY_MODE: u32 = 0o444;

/// What went wrong with the cache itself (a fetch's own error is the caller's).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{digest:?} is not a BLAKE3 digest (64 lowercase hex digits)")]
    BadDigest { digest: String },
    #[error("the worker's blob cache cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { what, path, source }
}

/// Where a leased blob came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An entry already there: nothing was downloaded.
    Cache,
    /// Downloaded for this lease.
    Downloaded,
}

/// How [`Lease::place`] put a blob into a work directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link to the cache's read-only entry: the step's user must not
    /// be given it (its owner could make it writable).
    HardLinked,
    /// A copy of the entry, the step's to change.
    Copied,
    /// A blob the cache did not keep, moved into place.
    Moved,
}

/// What the cache has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blobs served from an entry.
    pub hits: u64,
    /// Blobs downloaded (kept or not).
    pub downloads: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Entries found damaged and removed.
    pub damaged: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    downloads: AtomicU64,
    evictions: AtomicU64,
    damaged: AtomicU64,
}

/// The worker's blob cache; shared by every attempt.
pub struct BlobCache {
    blobs: PathBuf,
    incoming: PathBuf,
    max_bytes: u64,
    ledger: Mutex<Ledger>,
    /// One turn per digest being looked up or fetched.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Names downloads apart in `incoming/`.
    next: AtomicU64,
    counters: Counters,
}

/// Whether `digest` is a BLAKE3 digest as Ferry writes them: it names a file.
pub fn is_digest(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        size: meta.len(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        mode: meta.mode() & 0o7777,
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Creates `dir` (and its parents) and makes it 0700.
fn private_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_error("set the mode of", dir))
}

fn remove_any(path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) => Err(error),
    };
    if let Err(error) = removed
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, path = %path.display(), "cannot remove a file of the blob cache");
    }
}

impl BlobCache {
    /// Opens the cache in `root` (blocking): downloads a previous run of the
    /// worker left in `incoming/` are removed, as is anything in `blobs/` that
    /// is not a file named by a digest; the entries found are ordered by their
    /// modification time, unverified until used, and the oldest evicted down to
    /// `max_bytes` (all of them when it is 0).
    pub fn open(root: &Path, max_bytes: u64) -> Result<Arc<BlobCache>, CacheError> {
        let blobs = root.join("blobs");
        let incoming = root.join("incoming");
        for dir in [root, &blobs, &incoming] {
            private_dir(dir)?;
        }
        for entry in std::fs::read_dir(&incoming).map_err(io_error("list", &incoming))? {
            let entry = entry.map_err(io_error("list", &incoming))?;
            remove_any(&entry.path());
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&blobs).map_err(io_error("list", &blobs))? {
            let entry = entry.map_err(io_error("list", &blobs))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() && is_digest(&name) => {
                    found.push((stamp_of(&meta), name));
                }
                _ => {
                    tracing::warn!(path = %path.display(), "not a blob cache entry; removed");
                    remove_any(&path);
                }
            }
        }
        found.sort_by_key(|(stamp, digest)| (stamp.modified_ns, digest.clone()));
        let mut ledger = Ledger::new(max_bytes);
        for (stamp, digest) in &found {
            ledger.insert_found(digest, *stamp);
        }
        let evicted = ledger.shrink();
        for digest in &evicted {
            remove_any(&blobs.join(digest));
        }
        tracing::info!(
            entries = ledger.len(),
            bytes = ledger.total(),
            max_bytes,
            evicted = evicted.len(),
            dir = %blobs.display(),
            "blob cache opened"
        );
        Ok(Arc::new(BlobCache {
            blobs,
            incoming,
            max_bytes,
            ledger: Mutex::new(ledger),
            turns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            counters: Counters::default(),
        }))
    }

    /// What the cache has done since it was opened.
    pub fn stats(&self) -> CacheStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&self.counters.hits),
            downloads: load(&self.counters.downloads),
            evictions: load(&self.counters.evictions),
            damaged: load(&self.counters.damaged),
        }
    }

    /// Bytes held by the entries now.
    pub fn total_bytes(&self) -> u64 {
        lock(&self.ledger, "blob cache").total()
    }

    /// The bound on the entries' bytes (0: the cache is off).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the entry of `digest` lives (whether or not there is one).
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        self.blobs.join(digest)
    }

    /// The blob `digest`, held until the lease is dropped: its entry, checked,
    /// if the cache has one; otherwise `fetch` downloads it to the path it is
    /// given (a verified download only: the cache admits whatever `fetch`
    /// leaves there once it returns `Ok`), and it is admitted if it fits.
    /// Attempts asking for the same digest at once take turns, so that it is
    /// downloaded once.
    pub async fn get<Fetch, Fetched, E>(
        self: &Arc<Self>,
        digest: &str,
        fetch: Fetch,
    ) -> Result<Lease, E>
    where
        Fetch: FnOnce(PathBuf) -> Fetched,
        Fetched: std::future::Future<Output = Result<(), E>>,
        E: From<CacheError>,
    {
        if !is_digest(digest) {
            return Err(CacheError::BadDigest {
                digest: digest.to_string(),
            }
            .into());
        }
        let _turn = self.turn(digest).await;
        if self.max_bytes > 0 {
            let found = lock(&self.ledger, "blob cache").lookup(digest);
            if let Some(found) = found {
                let lease = self.lease(digest, found.id, found.stamp.size, Source::Cache);
                match self.check(digest, found).await {
                    Ok(()) => {
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(digest, bytes = found.stamp.size, "blob from the cache");
                        return Ok(lease);
                    }
                    Err(problem) => {
                        self.counters.damaged.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            digest,
                            problem,
                            "a damaged blob cache entry was removed; fetching it again"
                        );
                        lease.discard();
                    }
                }
            }
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let partial = self.incoming.join(format!("{digest}.{number}"));
        // Removed if the fetch fails or this future is dropped.
        let private = Lease {
            cache: self.clone(),
            digest: digest.to_string(),
            path: partial.clone(),
            size: 0,
            source: Source::Downloaded,
            held: Held::Private,
        };
        fetch(partial.clone()).await?;
        let stamp = {
            let file = partial.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(ENTRY_MODE))?;
                std::fs::symlink_metadata(&file).map(|meta| stamp_of(&meta))
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(io_error("read", &partial))?
        };
        self.counters.downloads.fetch_add(1, Ordering::Relaxed);
        Ok(self.admit(private, stamp))
    }

    /// Admits a verified download, or hands it back as a private file.
    fn admit(self: &Arc<Self>, mut private: Lease, stamp: Stamp) -> Lease {
        private.size = stamp.size;
        let digest = private.digest.clone();
        let entry = self.blobs.join(&digest);
        // The ledger and the directory change together: an evicted entry's
        // file is gone, and the new one in place, before another attempt can
        // look either up.
        let mut ledger = lock(&self.ledger, "blob cache");
        let admission = ledger.admit(&digest, stamp);
        let kept = match &admission {
            Admission::Admitted { id, evict } => {
                for gone in evict {
                    remove_any(&self.blobs.join(gone));
                    tracing::info!(digest = %gone, "blob evicted from the cache");
                }
                self.counters
                    .evictions
                    .fetch_add(evict.len() as u64, Ordering::Relaxed);
                match std::fs::rename(&private.path, &entry) {
                    Ok(()) => Some(*id),
                    Err(error) => {
                        tracing::warn!(%error, path = %entry.display(), "cannot add a blob to the cache");
                        ledger.remove(&digest, *id);
                        None
                    }
                }
            }
            Admission::TooLarge | Admission::NoRoom | Admission::Present => None,
        };
        drop(ledger);
        let kept_as = match (&admission, kept) {
            (_, Some(_)) => "cache",
            (Admission::TooLarge, _) => "not kept: larger than the cache's bound",
            (Admission::NoRoom, _) => "not kept: the entries in use leave no room",
            _ => "not kept",
        };
        tracing::info!(digest, bytes = stamp.size, kept_as, "blob downloaded");
        match kept {
            Some(id) => {
                // The private file is now the entry: nothing to remove.
                private.held = Held::Entry(id);
                private.path = entry;
                private
            }
            None => private,
        }
    }

    fn lease(self: &Arc<Self>, digest: &str, id: u64, size: u64, source: Source) -> Lease {
        Lease {
            cache: self.clone(),
            digest: digest.to_string(),
            path: self.blobs.join(digest),
            size,
            source,
            held: Held::Entry(id),
        }
    }

    /// Checks a pinned entry: its file's size, and its content unless this
    /// process verified it and its stamp has not changed since; then records
    /// the use as the file's modification time.
    async fn check(&self, digest: &str, found: Found) -> Result<(), String> {
        let path = self.blobs.join(digest);
        let expected = digest.to_string();
        let checked = tokio::task::spawn_blocking(move || -> Result<Stamp, String> {
            let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
            if !meta.is_file() {
                return Err("it is not a regular file".into());
            }
            let stamp = stamp_of(&meta);
            if stamp.size != found.stamp.size {
                return Err(format!(
                    "it holds {} bytes, not the {} it was admitted with",
                    stamp.size, found.stamp.size
                ));
            }
            if !(found.verified && stamp == found.stamp) {
                let actual = hash_file(&path).map_err(|e| e.to_string())?;
                if actual != expected {
                    return Err(format!("its content hashes to {actual}"));
                }
                if stamp.mode != ENTRY_MODE {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(ENTRY_MODE))
                        .map_err(|e| e.to_string())?;
                }
            }
            // The order of use survives a restart as modification times.
            std::fs::File::open(&path)
                .and_then(|file| file.set_modified(SystemTime::now()))
                .and_then(|()| std::fs::symlink_metadata(&path))
                .map(|meta| stamp_of(&meta))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        lock(&self.ledger, "blob cache").mark_verified(digest, found.id, checked);
        Ok(())
    }

    /// Waits for this task's turn at `digest`.
    async fn turn(&self, digest: &str) -> Turn<'_> {
        let slot = lock(&self.turns, "blob cache turns")
            .entry(digest.to_string())
            .or_default()
            .clone();
        let guard = slot.clone().lock_owned().await;
        Turn {
            cache: self,
            digest: digest.to_string(),
            slot: Some(slot),
            guard: Some(guard),
        }
    }
}

/// One attempt's turn at a digest; the last one out removes the digest's slot.
struct Turn<'cache> {
    cache: &'cache BlobCache,
    digest: String,
    slot: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = lock(&self.cache.turns, "blob cache turns");
        if let Some(slot) = self.slot.take()
            // This turn's and the map's: nobody else waits.
            && Arc::strong_count(&slot) == 2
        {
            turns.remove(&self.digest);
        }
    }
}

#[derive(Debug)]
enum Held {
    /// A pin on entry `id` of the digest.
    Entry(u64),
    /// A download the cache did not keep: removed when the lease goes.
    Private,
    /// Nothing (discarded).
    Released,
}

/// A blob held for one attempt: an entry the cache will not evict until the
/// lease is dropped, or a download of its own that is removed then.
#[derive(Debug)]
pub struct Lease {
    cache: Arc<BlobCache>,
    digest: String,
    path: PathBuf,
    size: u64,
    source: Source,
    held: Held,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("blobs", &self.blobs)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The blob's file, to read and never to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it came from the cache or was downloaded.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Removes the blob from the cache (its user found it unusable: damaged,
    /// or refused); attempts that hold it keep what they linked or copied.
    pub fn discard(mut self) {
        if let Held::Entry(id) = self.held {
            let mut ledger = lock(&self.cache.ledger, "blob cache");
            if ledger.remove(&self.digest, id) {
                remove_any(&self.path);
            }
        }
        // Nothing is left to unpin; a private file is still removed.
        if !matches!(self.held, Held::Private) {
            self.held = Held::Released;
        }
    }

    /// Puts the blob at `dest` (blocking), replacing what is there: a hard link
    /// to the entry when `may_link` (the step cannot write the worker's
    /// read-only files) and the filesystem allows it, else a copy; a blob the
    /// cache did not keep is moved there. Parent directories are created.
    pub fn place(self, dest: &Path, may_link: bool) -> std::io::Result<Placement> {
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        if !matches!(self.held, Held::Entry(_)) {
            std::fs::rename(&self.path, dest)?;
            return Ok(Placement::Moved);
        }
        // Built beside `dest` and renamed over it, so that a file already there
        // (a pooled directory's) is replaced whole.
        let number = self.cache.next.fetch_add(1, Ordering::Relaxed);
        let temporary = parent.join(format!(".{}.staging-{number}", self.digest));
        let _ = std::fs::remove_file(&temporary);
        let placement = if may_link {
            match std::fs::hard_link(&self.path, &temporary) {
                Ok(()) => Placement::HardLinked,
                Err(error) => {
                    // Another filesystem (EXDEV), or the inode's link limit.
                    tracing::debug!(%error, "cannot hard-link a cached blob; copying it");
                    Placement::Copied
                }
            }
        } else {
            Placement::Copied
        };
        if placement == Placement::Copied
            && let Err(error) = std::fs::copy(&self.path, &temporary)
        {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        if let Err(error) = std::fs::rename(&temporary, dest) {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        Ok(placement)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self.held {
            Held::Entry(id) => lock(&self.cache.ledger, "blob cache").unpin(&self.digest, id),
            Held::Private => {
                let _ = std::fs::remove_file(&self.path);
            }
            Held::Released => {}
        }
    }
}

#[cfg(test)]
mod tests;
