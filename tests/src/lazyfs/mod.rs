//! A test filesystem that loses what was not synced (the approach of Jepsen's
//! LazyFS): an in-memory filesystem served over FUSE that models a disk with a
//! volatile cache, strictly. See [`model`] for exactly what becomes durable when:
//! a file's data and size on fsync/fdatasync of that file, a directory's entries
//! on fsync of that directory, nothing otherwise. [`LazyFs::power_off`] throws
//! the volatile part away.
//!
//! Mounted with `fuser`'s own mount code (no libfuse headers or library): as
//! root it mounts directly; `auto_unmount` goes through `fusermount3`, which
//! unmounts the filesystem even if the test process dies without unwinding.
//! Dropping a [`LazyFs`] unmounts it (lazily, so a leftover process holding a
//! file cannot keep it mounted), also when a test panics.

mod fuse;
mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

pub use model::{CutReport, SyncEvent};

/// A mounted lazy filesystem.
pub struct LazyFs {
    mountpoint: PathBuf,
    model: Arc<Mutex<model::Model>>,
    session: Option<fuser::BackgroundSession>,
}

impl LazyFs {
    /// Mounts an empty lazy filesystem on `mountpoint` (an existing, empty
    /// directory) and serves it on a background thread.
    pub fn mount(mountpoint: &Path) -> anyhow::Result<LazyFs> {
        let mountpoint = mountpoint
            .canonicalize()
            .with_context(|| format!("mount point {}", mountpoint.display()))?;
        let model = Arc::new(Mutex::new(model::Model::new(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("ferry-lazyfs".to_string()),
            fuser::MountOption::Subtype("lazyfs".to_string()),
            fuser::MountOption::AutoUnmount,
        ];
        // auto_unmount needs allow_root or allow_other; only root uses it here.
        config.acl = fuser::SessionACL::RootAndOwner;
        let server = fuse::LazyFsServer {
            model: model.clone(),
        };
        let session = fuser::spawn_mount(server, &mountpoint, &config).with_context(|| {
            format!(
                "cannot mount the lazy filesystem on {} (needs /dev/fuse, root, and \
                 fusermount3 from Debian's fuse3 for auto_unmount)",
                mountpoint.display()
            )
        })?;
        let fs = LazyFs {
            mountpoint,
            model,
            session: Some(session),
        };
        // The mount is usable once the kernel answers through it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&fs.mountpoint).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the lazy filesystem on {} does not answer",
                fs.mountpoint.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power and turns it on again at once: everything returns to its
    /// durable form, open handles are stale (their requests fail with EBADF).
    pub fn cut_power(&self) -> CutReport {
        let report = self.power_off();
        self.power_on();
        report
    }

    /// Cuts the power: everything returns to its durable form, and every request
    /// fails with EIO until [`LazyFs::power_on`], so that a process still running
    /// (a stopped one, about to be killed) cannot change the new state.
    pub fn power_off(&self) -> CutReport {
        self.model().power_off()
    }

    pub fn power_on(&self) {
        self.model().power_on();
    }

    /// How many requests of each kind the filesystem answered.
    pub fn op_counts(&self) -> BTreeMap<&'static str, u64> {
        self.model().ops.clone()
    }

    /// Requests refused because the model does not support them ("op: detail" →
    /// count). A daemon under test that needs one of them is not tested honestly.
    pub fn refused(&self) -> BTreeMap<String, u64> {
        self.model().refused.clone()
    }

    /// Every sync so far (fsync, fdatasync, a directory's fsync, an `O_SYNC`
    /// write), in order, and how many more were not kept.
    pub fn syncs(&self) -> (Vec<SyncEvent>, u64) {
        self.model().syncs()
    }

    /// Watches for markers in what becomes durable: `len` bytes starting with
    /// `prefix` (e.g. a name unique to one command) found in a file's synced
    /// bytes, once the file's name is durable too.
    pub fn watch_markers(&self, prefix: &[u8], len: usize) {
        self.model().watch(prefix, len);
    }

    /// When each watched marker first became durable, by file: (marker, path
    /// below the mount point, when), earliest first.
    pub fn first_durable(&self) -> Vec<(Vec<u8>, String, Instant)> {
        self.model().first_durable()
    }

    fn model(&self) -> std::sync::MutexGuard<'_, model::Model> {
        self.model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        // Detach first: a plain unmount fails while anything holds a file open.
        if let Err(error) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
        {
            eprintln!(
                "lazyfs: cannot detach {}: {error}",
                self.mountpoint.display()
            );
        }
        if let Some(session) = self.session.take() {
            // Once detached and unused the kernel ends the connection and the
            // session's thread returns; a process still holding a file keeps it
            // alive, and then the thread is left to end with that process.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !session.guard.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if session.guard.is_finished() {
                let _ = session.join();
            } else {
                eprintln!(
                    "lazyfs: {} is still in use; its server thread is left running",
                    self.mountpoint.display()
                );
                drop(session);
            }
        }
    }
}

#[cfg(test)]
mod tests;
