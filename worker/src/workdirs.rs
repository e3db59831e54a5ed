//! Work directories, reused when an attempt left them exactly as it found them,
//! and checked again when they are taken.
//!
//! Every attempt runs in a directory of its own under `<data_dir>/work/` with
//! its code bundle unpacked. Creating and deleting those files is most of what a
//! short step costs the worker (a new inode each, and ext4 searches past recently
//! deleted ones), so a directory can go back to a pool and serve the next attempt
//! of the same bundle, possibly another user's run. What makes that safe:
//!
//! - Right after unpacking, the worker records a [`Fingerprint`]: every entry's
//!   path, inode, type and mode, owner, size, modification and change times, and
//!   the BLAKE3 digest of every regular file's content.
//! - When the attempt ends, a directory whose entries still have the same
//!   metadata (a few `stat`s; a change time cannot be set back) is pooled;
//!   anything else is removed.
//! - When a directory is taken from the pool it is checked again, in full,
//!   contents included: a process of an earlier attempt that outlived it (which
//!   the attempt's containment is there to prevent) could have written after the
//!   first check, and a write within the coarse clock's tick leaves the change
//!   time as it was, but not the content. A directory that fails is removed and
//!   the next one is tried, else the bundle is unpacked afresh.
//!
//! Only bundles of at most [`MAX_POOLED_ENTRIES`] entries and
//! [`MAX_POOLED_BYTES`] bytes are pooled: past that, checking costs about what
//! unpacking does.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_common::locks::lock;

/// Directories kept per bundle, and in all.
const POOL_PER_BUNDLE: usize = 64;
const POOL_TOTAL: usize = 256;
/// A bundle with more entries than this is never pooled.
pub const MAX_POOLED_ENTRIES: usize = 256;
/// A bundle whose files hold more bytes than this is never pooled.
pub const MAX_POOLED_BYTES: u64 = 16 * 1024 * 1024;

/// One entry of a work directory as the fingerprint records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    path: PathBuf,
    ino: u64,
    /// File type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// The BLAKE3 digest of a regular file's content (not read for the cheap
    /// check at give-back).
    content: Option<[u8; 32]>,
}

impl Entry {
    fn same_metadata(&self, other: &Entry) -> bool {
        (
            &self.path, self.ino, self.mode, self.uid, self.gid, self.size, self.mtime, self.ctime,
        ) == (
            &other.path,
            other.ino,
            other.mode,
            other.uid,
            other.gid,
            other.size,
            other.mtime,
            other.ctime,
        )
    }
}

/// Every entry under a directory, the root included, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<Entry>);

impl Fingerprint {
    /// The full fingerprint of `dir`, contents included; `None` when the
    /// directory is too large to pool.
    pub fn of(dir: &Path) -> std::io::Result<Option<Fingerprint>> {
        Fingerprint::scan(dir, true)
    }

    fn scan(dir: &Path, contents: bool) -> std::io::Result<Option<Fingerprint>> {
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        let mut pending = vec![dir.to_path_buf()];
        entries.push(entry(
            PathBuf::new(),
            &std::fs::symlink_metadata(dir)?,
            None,
        ));
        while let Some(next) = pending.pop() {
            for item in std::fs::read_dir(&next)? {
                let item = item?;
                let meta = item.metadata()?;
                let path = item.path();
                let relative = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                bytes = bytes.saturating_add(meta.len());
                if entries.len() >= MAX_POOLED_ENTRIES || bytes > MAX_POOLED_BYTES {
                    return Ok(None);
                }
                let content = if contents && meta.is_file() {
                    Some(digest_file(&path)?)
                } else {
                    None
                };
                entries.push(entry(relative, &meta, content));
                if meta.is_dir() {
                    pending.push(path);
                }
            }
        }
        entries.sort();
        Ok(Some(Fingerprint(entries)))
    }

    /// Whether `dir`'s entries still have the metadata recorded (contents not
    /// read).
    fn metadata_unchanged(&self, dir: &Path) -> bool {
        match Fingerprint::scan(dir, false) {
            Ok(Some(now)) => {
                now.0.len() == self.0.len()
                    && now.0.iter().zip(&self.0).all(|(a, b)| a.same_metadata(b))
            }
            _ => false,
        }
    }

    /// Whether `dir` is exactly as recorded, contents included.
    fn unchanged(&self, dir: &Path) -> bool {
        matches!(Fingerprint::scan(dir, true), Ok(Some(now)) if now == *self)
    }
}

fn entry(path: PathBuf, meta: &std::fs::Metadata, content: Option<[u8; 32]>) -> Entry {
    Entry {
        path,
        ino: meta.ino(),
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: if meta.is_dir() { 0 } else { meta.len() },
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
        content,
    }
}

fn digest_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(*hasher.finalize().as_bytes())
}

/// The work directories of one worker.
pub struct WorkDirs {
    root: PathBuf,
    next: AtomicU64,
    clean: Mutex<HashMap<String, Vec<(PathBuf, Fingerprint)>>>,
}

impl WorkDirs {
    /// Empties `root` (what a previous run of the worker left is not trusted) and
    /// starts with no pooled directory.
    pub fn open(root: PathBuf) -> std::io::Result<WorkDirs> {
        match std::fs::remove_dir_all(&root) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        std::fs::create_dir_all(&root)?;
        Ok(WorkDirs {
            root,
            next: AtomicU64::new(1),
            clean: Mutex::new(HashMap::new()),
        })
    }

    /// A directory holding `bundle` unpacked, with its fingerprint, if one is
    /// pooled and is still exactly as it was unpacked, contents included; one
    /// that is not is removed and the next is tried. Blocking.
    pub fn take(&self, bundle: &str) -> Option<(PathBuf, Fingerprint)> {
        loop {
            let (dir, fingerprint) = {
                let mut clean = lock(&self.clean, "work dirs");
                let pooled = clean.get_mut(bundle)?;
                let taken = pooled.pop();
                if pooled.is_empty() {
                    clean.remove(bundle);
                }
                taken?
            };
            if fingerprint.unchanged(&dir) {
                return Some((dir, fingerprint));
            }
            tracing::warn!(
                dir = %dir.display(),
                bundle,
                "a pooled work directory changed after its attempt ended; removed"
            );
            WorkDirs::remove(&dir);
        }
    }

    /// A path for a new, not yet created, directory.
    pub fn fresh(&self) -> PathBuf {
        self.root
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string())
    }

    /// Pools `dir` for the next attempt of `bundle` if it is exactly as it was
    /// when `fingerprint` was taken (and the pool has room); removes it otherwise.
    /// Blocking.
    pub fn give_back(&self, bundle: &str, dir: PathBuf, fingerprint: Option<Fingerprint>) {
        if let Some(dir) = self.pool(bundle, dir, fingerprint) {
            WorkDirs::remove(&dir);
        }
    }

    /// Pools `dir` as [`WorkDirs::give_back`] does, or hands it back to be
    /// removed. Costs at most one `stat` per pooled entry (contents are checked
    /// when it is taken).
    pub fn pool(
        &self,
        bundle: &str,
        dir: PathBuf,
        fingerprint: Option<Fingerprint>,
    ) -> Option<PathBuf> {
        if let Some(fingerprint) = fingerprint
            && fingerprint.metadata_unchanged(&dir)
        {
            let mut clean = lock(&self.clean, "work dirs");
            let total: usize = clean.values().map(Vec::len).sum();
            let pooled = clean.entry(bundle.to_string()).or_default();
            if pooled.len() < POOL_PER_BUNDLE && total < POOL_TOTAL {
                pooled.push((dir, fingerprint));
                return None;
            }
        }
        Some(dir)
    }

    /// Removes a work directory (blocking).
    pub fn remove(dir: &Path) {
        if let Err(error) = std::fs::remove_dir_all(dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(%error, dir = %dir.display(), "could not remove a work directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpacked(dirs: &WorkDirs) -> (PathBuf, Fingerprint) {
        let dir = dirs.fresh();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("pipeline.yaml"), "name: p\n").unwrap();
        std::fs::write(dir.join("src/train.py"), "print(1)\n").unwrap();
        let fingerprint = Fingerprint::of(&dir).unwrap().unwrap();
        (dir, fingerprint)
    }

    #[test]
    fn an_untouched_directory_is_reused_and_a_changed_one_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::open(root.path().join("work")).unwrap();
        let (dir, fingerprint) = unpacked(&dirs);
        dirs.give_back("b1", dir.clone(), Some(fingerprint.clone()));
        assert!(dirs.take("b2").is_none(), "pooled by bundle");
        let (again, kept) = dirs.take("b1").unwrap();
        assert_eq!((&again, &kept), (&dir, &fingerprint));
        assert!(dirs.take("b1").is_none());

        // Each kind of change makes the directory go.
        let changes: [&dyn Fn(&Path); 5] = [
            &|d| std::fs::write(d.join("out.txt"), "x").unwrap(),
            &|d| std::fs::write(d.join("pipeline.yaml"), "name: q\n").unwrap(),
            &|d| std::fs::remove_file(d.join("src/train.py")).unwrap(),
            &|d| {
                std::fs::rename(d.join("src/train.py"), d.join("src/t.py")).unwrap();
                std::fs::rename(d.join("src/t.py"), d.join("src/train.py")).unwrap();
            },
            &|d| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(d.join("src"), std::fs::Permissions::from_mode(0o777))
                    .unwrap()
            },
        ];
        for change in changes {
            let (dir, fingerprint) = unpacked(&dirs);
            change(&dir);
            dirs.give_back("b1", dir.clone(), Some(fingerprint));
            assert!(!dir.exists(), "a changed directory is removed");
            assert!(dirs.take("b1").is_none());
        }
        // No fingerprint (too many entries): removed.
        let (dir, _) = unpacked(&dirs);
        dirs.give_back("b1", dir.clone(), None);
        assert!(!dir.exists());
    }

    #[test]
    fn a_pooled_directory_written_after_it_was_pooled_is_never_handed_out() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::open(root.path().join("work")).unwrap();
        // Same size, same inode: only the content (and the change time, unless
        // within the same clock tick) tells.
        let tampers: [&dyn Fn(&Path); 3] = [
            &|d| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("src/train.py"))
                    .unwrap();
                f.write_all(b"print(2)\n").unwrap();
            },
            &|d| std::fs::write(d.join("src/extra.py"), "x").unwrap(),
            &|d| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    d.join("pipeline.yaml"),
                    std::fs::Permissions::from_mode(0o666),
                )
                .unwrap()
            },
        ];
        for tamper in tampers {
            let (dir, fingerprint) = unpacked(&dirs);
            dirs.give_back("b1", dir.clone(), Some(fingerprint));
            assert!(dir.exists(), "pooled");
            tamper(&dir);
            assert!(
                dirs.take("b1").is_none(),
                "a changed directory is not taken"
            );
            assert!(!dir.exists(), "and it is removed");
        }
        // An untouched one is still handed out, after a bad one is skipped.
        let (good, fingerprint) = unpacked(&dirs);
        dirs.give_back("b1", good.clone(), Some(fingerprint));
        let (bad, fingerprint) = unpacked(&dirs);
        dirs.give_back("b1", bad.clone(), Some(fingerprint));
        std::fs::write(bad.join("pipeline.yaml"), "name: x\n").unwrap();
        assert_eq!(dirs.take("b1").map(|(dir, _)| dir), Some(good));
        assert!(!bad.exists());
    }

    #[test]
    fn large_bundles_are_not_pooled() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("big");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(dir.join("big.bin"))
            .unwrap()
            .set_len(MAX_POOLED_BYTES + 1)
            .unwrap();
        assert!(Fingerprint::of(&dir).unwrap().is_none());
    }

    #[test]
    fn opening_empties_what_a_previous_worker_left() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(work.join("7/src")).unwrap();
        let dirs = WorkDirs::open(work.clone()).unwrap();
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        assert_eq!(dirs.fresh(), work.join("1"));
    }
}
