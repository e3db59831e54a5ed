//! Work directories, reused when an attempt left them exactly as it found them.
//!
//! Every attempt runs in a directory of its own under `<data_dir>/work/` with
//! its code bundle unpacked. Creating and deleting those files is most of what a
//! short step costs the worker (a new inode each, and ext4 searches past recently
//! deleted ones), so a directory whose every entry still has the inode, size and
//! change time it had right after unpacking (nothing written, created, renamed,
//! removed or re-permissioned: a change time cannot be set back) goes back to a
//! pool and serves the next attempt of the same bundle. Anything else is removed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_common::locks::lock;

/// Directories kept per bundle, and in all.
const POOL_PER_BUNDLE: usize = 64;
const POOL_TOTAL: usize = 256;
/// A bundle with more entries than this is never pooled (checking it would cost
/// more than unpacking it).
const MAX_POOLED_ENTRIES: usize = 256;

/// Every entry under a directory (relative path, inode, size, change time),
/// sorted by path; `None` when there are too many to be worth checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, u64, i64, i64)>);

impl Fingerprint {
    pub fn of(dir: &Path) -> std::io::Result<Option<Fingerprint>> {
        let mut entries = Vec::new();
        let root = std::fs::symlink_metadata(dir)?;
        entries.push((
            PathBuf::new(),
            root.ino(),
            0,
            root.ctime(),
            root.ctime_nsec(),
        ));
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                let path = entry.path();
                let relative = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                entries.push((
                    relative,
                    meta.ino(),
                    meta.len(),
                    meta.ctime(),
                    meta.ctime_nsec(),
                ));
                if entries.len() > MAX_POOLED_ENTRIES {
                    return Ok(None);
                }
                if meta.is_dir() {
                    pending.push(path);
                }
            }
        }
        entries.sort();
        Ok(Some(Fingerprint(entries)))
    }
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

    /// A clean directory holding `bundle` unpacked, with its fingerprint, if one is
    /// pooled.
    pub fn take(&self, bundle: &str) -> Option<(PathBuf, Fingerprint)> {
        let mut clean = lock(&self.clean, "work dirs");
        let pooled = clean.get_mut(bundle)?;
        let taken = pooled.pop();
        if pooled.is_empty() {
            clean.remove(bundle);
        }
        taken
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
    /// removed. Costs at most one `stat` per pooled entry.
    pub fn pool(
        &self,
        bundle: &str,
        dir: PathBuf,
        fingerprint: Option<Fingerprint>,
    ) -> Option<PathBuf> {
        if let Some(fingerprint) = fingerprint
            && Fingerprint::of(&dir).ok().flatten().as_ref() == Some(&fingerprint)
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
    fn opening_empties_what_a_previous_worker_left() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(work.join("7/src")).unwrap();
        let dirs = WorkDirs::open(work.clone()).unwrap();
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        assert_eq!(dirs.fresh(), work.join("1"));
    }
}
