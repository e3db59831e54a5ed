//! The disk model behind [`super::LazyFs`], without FUSE: every file and
//! directory has a live form (what processes see: the disk's volatile cache) and
//! possibly a durable form (what survives a power cut).
//!
//! - A file's data and size become durable when that file is fsynced or
//!   fdatasynced (or written through a descriptor opened with `O_SYNC`/`O_DSYNC`).
//! - A directory's entries (create, mkdir, rename, unlink, rmdir in it) become
//!   durable when that directory is fsynced; an entry made durable for an inode
//!   that has no durable form yet names an empty file (or an empty directory).
//! - Permissions and timestamps are those the inode had when it was last synced
//!   (or named durably).
//! - Cutting the power replaces the live form by the durable one: whatever the
//!   durable root reaches, as it was last synced; open handles become stale.
//!
//! Nothing else is durable: no implicit flush after a timeout, no ordering
//! between files, no journal that commits a create with a later fsync of another
//! file (ext4 would, often; POSIX does not promise it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::{Instant, SystemTime};

use fuser::Errno;

pub(crate) const ROOT: u64 = 1;

/// Most sync events kept for [`Model::syncs`]; later ones are only counted.
const MAX_SYNC_EVENTS: usize = 1_000_000;
/// Dirty ranges kept per file before they are merged into one covering range.
const MAX_DIRTY_RANGES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Content {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, u64>),
}

impl Content {
    fn empty_like(&self) -> Content {
        match self {
            Content::File(_) => Content::File(Vec::new()),
            Content::Dir(_) => Content::Dir(BTreeMap::new()),
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self, Content::Dir(_))
    }
}

/// What an inode's attributes are made of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
}

impl Meta {
    pub(crate) fn new(perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }
}

/// An inode as processes see it.
#[derive(Debug)]
struct Live {
    content: Content,
    meta: Meta,
    /// Names that refer to it (live).
    nlink: u32,
    /// Open handles on it.
    open: u32,
    /// One of its names, for reports: (parent, name).
    name: (u64, OsString),
    /// Byte ranges of a file written since its last sync (start, end), sorted and
    /// disjoint. Outside them, and below both lengths, live and durable bytes agree.
    dirty: Vec<(u64, u64)>,
}

/// An inode as it would be found after a power cut.
#[derive(Clone, Debug)]
struct Durable {
    content: Content,
    meta: Meta,
}

/// What a caller learns about an inode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attr {
    pub(crate) ino: u64,
    pub(crate) dir: bool,
    pub(crate) size: u64,
    pub(crate) nlink: u32,
    pub(crate) meta: Meta,
    /// The power cycle: an inode number kept across a cut names a new inode for
    /// the kernel (which may hold the old one as deleted).
    pub(crate) generation: u64,
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    /// `O_SYNC` or `O_DSYNC`: every write is durable when it returns.
    sync_writes: bool,
    /// A directory's entries when it was opened (readdir reads from this).
    listing: Option<Vec<(u64, bool, OsString)>>,
}

/// One fsync, fdatasync or synchronous write, as [`Model::syncs`] reports it.
#[derive(Clone, Debug)]
pub struct SyncEvent {
    pub at: Instant,
    /// The path below the mount point (one of the inode's names when it synced).
    pub path: String,
    pub dir: bool,
}

/// What a power cut took away, path by path (paths below the mount point).
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    /// Live paths that do not exist after the cut, top-most only (what is below a
    /// vanished directory is counted in `vanished_total`).
    pub vanished: Vec<String>,
    /// Every live path that does not exist after the cut.
    pub vanished_total: usize,
    /// Files that exist after the cut with other content: (path, live size,
    /// durable size).
    pub reverted: Vec<(String, u64, u64)>,
}

impl std::fmt::Display for CutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 20;
        write!(
            f,
            "{} paths vanished ({} top-most), {} files reverted",
            self.vanished_total,
            self.vanished.len(),
            self.reverted.len()
        )?;
        for path in self.vanished.iter().take(SHOWN) {
            write!(f, "\n  vanished: {path}")?;
        }
        for (path, live, durable) in self.reverted.iter().take(SHOWN) {
            write!(
                f,
                "\n  reverted: {path} ({live} bytes live, {durable} durable)"
            )?;
        }
        Ok(())
    }
}

pub(crate) struct Model {
    live: HashMap<u64, Live>,
    durable: HashMap<u64, Durable>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_fh: u64,
    powered: bool,
    /// Power cycles so far.
    generation: u64,
    syncs: Vec<SyncEvent>,
    syncs_dropped: u64,
    /// A marker to watch for in durable file content: (prefix, whole length).
    watch: Option<(Vec<u8>, usize)>,
    /// When each marker first became durable and reachable, by (marker, path).
    first_durable: HashMap<(Vec<u8>, String), Instant>,
    /// The inodes the durable root reaches (changed only by a directory's sync
    /// and by a cut).
    reachable: HashSet<u64>,
    /// Requests by operation name.
    pub(crate) ops: BTreeMap<&'static str, u64>,
    /// Requests refused as unsupported: "op: detail".
    pub(crate) refused: BTreeMap<String, u64>,
}

type Result<T> = std::result::Result<T, Errno>;

impl Model {
    pub(crate) fn new(uid: u32, gid: u32) -> Model {
        let meta = Meta::new(0o755, uid, gid);
        let root = Live {
            content: Content::Dir(BTreeMap::new()),
            meta,
            nlink: 1,
            open: 0,
            name: (ROOT, OsString::new()),
            dirty: Vec::new(),
        };
        Model {
            live: HashMap::from([(ROOT, root)]),
            durable: HashMap::from([(
                ROOT,
                Durable {
                    content: Content::Dir(BTreeMap::new()),
                    meta,
                },
            )]),
            handles: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            powered: true,
            generation: 0,
            syncs: Vec::new(),
            syncs_dropped: 0,
            watch: None,
            first_durable: HashMap::new(),
            reachable: HashSet::from([ROOT]),
            ops: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    /// Counts a request; fails every request while the power is off.
    pub(crate) fn enter(&mut self, op: &'static str) -> Result<()> {
        *self.ops.entry(op).or_default() += 1;
        if self.powered {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }

    pub(crate) fn refuse(&mut self, what: String, errno: Errno) -> Errno {
        *self.refused.entry(what).or_default() += 1;
        errno
    }

    fn node(&self, ino: u64) -> Result<&Live> {
        self.live.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Live> {
        self.live.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    pub(crate) fn attr(&self, ino: u64) -> Result<Attr> {
        let node = self.node(ino)?;
        Ok(Attr {
            ino,
            dir: node.content.is_dir(),
            size: match &node.content {
                Content::File(data) => data.len() as u64,
                Content::Dir(entries) => entries.len() as u64,
            },
            nlink: if node.content.is_dir() { 2 } else { node.nlink },
            meta: node.meta,
            generation: self.generation,
        })
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    /// The path of a live inode below the mount point (one of its names).
    pub(crate) fn path(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        let mut hops = 0;
        while ino != ROOT && hops < 256 {
            let Some(node) = self.live.get(&ino) else {
                parts.push("?".to_string());
                break;
            };
            parts.push(node.name.1.to_string_lossy().into_owned());
            ino = node.name.0;
            hops += 1;
        }
        parts.reverse();
        parts.join("/")
    }

    fn new_node(&mut self, parent: u64, name: &OsStr, content: Content, meta: Meta) -> Result<u64> {
        if name.is_empty() || name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.live.insert(
            ino,
            Live {
                content,
                meta,
                nlink: 1,
                open: 0,
                name: (parent, name.to_os_string()),
                dirty: Vec::new(),
            },
        );
        self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        self.touch_dir(parent);
        Ok(ino)
    }

    fn touch_dir(&mut self, dir: u64) {
        if let Some(node) = self.live.get_mut(&dir) {
            let now = SystemTime::now();
            node.meta.mtime = now;
            node.meta.ctime = now;
        }
    }

    pub(crate) fn mkdir(&mut self, parent: u64, name: &OsStr, meta: Meta) -> Result<Attr> {
        let ino = self.new_node(parent, name, Content::Dir(BTreeMap::new()), meta)?;
        self.attr(ino)
    }

    pub(crate) fn mknod(&mut self, parent: u64, name: &OsStr, meta: Meta) -> Result<Attr> {
        let ino = self.new_node(parent, name, Content::File(Vec::new()), meta)?;
        self.attr(ino)
    }

    /// Creates and opens a file (`exclusive`: fail if the name exists).
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        meta: Meta,
        flags: i32,
    ) -> Result<(Attr, u64)> {
        let ino = match self.entries(parent)?.get(name) {
            Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Some(&ino) => {
                if self.node(ino)?.content.is_dir() {
                    return Err(Errno::EISDIR);
                }
                if flags & libc::O_TRUNC != 0 {
                    self.set_size(ino, 0)?;
                }
                ino
            }
            None => self.new_node(parent, name, Content::File(Vec::new()), meta)?,
        };
        let fh = self.open(ino, flags)?;
        Ok((self.attr(ino)?, fh))
    }

    pub(crate) fn open(&mut self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.node_mut(ino)?;
        if node.content.is_dir() && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno::EISDIR);
        }
        node.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                sync_writes: flags & (libc::O_SYNC | libc::O_DSYNC) != 0,
                listing: None,
            },
        );
        Ok(fh)
    }

    pub(crate) fn opendir(&mut self, ino: u64) -> Result<u64> {
        let listing: Vec<(u64, bool, OsString)> = self
            .entries(ino)?
            .iter()
            .map(|(name, &child)| {
                let dir = self.live.get(&child).is_some_and(|n| n.content.is_dir());
                (child, dir, name.clone())
            })
            .collect();
        let fh = self.open(ino, libc::O_RDONLY)?;
        if let Some(handle) = self.handles.get_mut(&fh) {
            handle.listing = Some(listing);
        }
        Ok(fh)
    }

    /// The listing of an open directory from entry `offset` on: (ino, is a
    /// directory, name, offset of the next entry), "." and ".." first.
    pub(crate) fn readdir(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
    ) -> Result<Vec<(u64, bool, OsString, u64)>> {
        let handle = self.handle(fh, ino)?;
        let listing = handle.listing.as_ref().ok_or(Errno::ENOTDIR)?;
        let parent = self.live.get(&ino).map_or(ROOT, |n| n.name.0);
        let mut all = vec![
            (ino, true, OsString::from(".")),
            (parent, true, OsString::from("..")),
        ];
        all.extend(listing.iter().cloned());
        Ok(all
            .into_iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (ino, dir, name))| (ino, dir, name, i as u64 + 1))
            .collect())
    }

    /// A handle of this power cycle on `ino` (a handle from before a cut is stale).
    fn handle(&self, fh: u64, ino: u64) -> Result<&Handle> {
        match self.handles.get(&fh) {
            Some(handle) if handle.ino == ino => Ok(handle),
            _ => Err(Errno::EBADF),
        }
    }

    pub(crate) fn release(&mut self, fh: u64) {
        let Some(handle) = self.handles.remove(&fh) else {
            return;
        };
        if let Some(node) = self.live.get_mut(&handle.ino) {
            node.open = node.open.saturating_sub(1);
        }
        self.forget_if_unreachable(handle.ino);
    }

    /// Drops a live inode that has no name and no open handle.
    fn forget_if_unreachable(&mut self, ino: u64) {
        if ino != ROOT
            && self
                .live
                .get(&ino)
                .is_some_and(|n| n.nlink == 0 && n.open == 0)
        {
            self.live.remove(&ino);
        }
    }

    pub(crate) fn read(&self, fh: u64, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.handle(fh, ino)?;
        match &self.node(ino)?.content {
            Content::File(data) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(data[start..end].to_vec())
            }
            Content::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub(crate) fn write(
        &mut self,
        fh: u64,
        ino: u64,
        offset: u64,
        bytes: &[u8],
        flags: i32,
    ) -> Result<u32> {
        let sync = self.handle(fh, ino)?.sync_writes || flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let node = self.node_mut(ino)?;
        let Content::File(data) = &mut node.content else {
            return Err(Errno::EISDIR);
        };
        let start = offset as usize;
        let end = start.checked_add(bytes.len()).ok_or(Errno::EFBIG)?;
        let old_len = data.len();
        if end > data.len() {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        // Growing the file makes the gap (zeros) dirty too.
        mark_dirty(&mut node.dirty, old_len.min(start) as u64, end as u64);
        let now = SystemTime::now();
        node.meta.mtime = now;
        node.meta.ctime = now;
        if sync {
            self.sync_file(ino);
        }
        Ok(bytes.len() as u32)
    }

    pub(crate) fn set_size(&mut self, ino: u64, size: u64) -> Result<()> {
        let node = self.node_mut(ino)?;
        let Content::File(data) = &mut node.content else {
            return Err(Errno::EISDIR);
        };
        let old_len = data.len() as u64;
        data.resize(size as usize, 0);
        if size > old_len {
            mark_dirty(&mut node.dirty, old_len, size);
        }
        let now = SystemTime::now();
        node.meta.mtime = now;
        node.meta.ctime = now;
        Ok(())
    }

    pub(crate) fn set_meta(&mut self, ino: u64, change: impl FnOnce(&mut Meta)) -> Result<()> {
        change(&mut self.node_mut(ino)?.meta);
        Ok(())
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if self.node(ino)?.content.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.entries_mut(parent)?.remove(name);
        self.touch_dir(parent);
        self.drop_name(ino);
        Ok(())
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if !self.entries(ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.entries_mut(parent)?.remove(name);
        self.touch_dir(parent);
        self.drop_name(ino);
        Ok(())
    }

    fn drop_name(&mut self, ino: u64) {
        if let Some(node) = self.live.get_mut(&ino) {
            node.nlink = node.nlink.saturating_sub(1);
        }
        self.forget_if_unreachable(ino);
    }

    /// `rename(2)`, with `RENAME_NOREPLACE` (`noreplace`); `RENAME_EXCHANGE` is
    /// refused by the caller.
    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<()> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        self.entries(new_parent)?;
        if new_name.is_empty() || new_name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let moving_dir = self.node(ino)?.content.is_dir();
        if moving_dir && self.is_ancestor(ino, new_parent) {
            return Err(Errno::EINVAL);
        }
        if let Some(&target) = self.entries(new_parent)?.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (&self.node(target)?.content, moving_dir) {
                (Content::Dir(entries), true) if !entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                (Content::Dir(_), false) => return Err(Errno::EISDIR),
                (Content::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
            self.entries_mut(new_parent)?.remove(new_name);
            self.drop_name(target);
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?
            .insert(new_name.to_os_string(), ino);
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        if let Some(node) = self.live.get_mut(&ino) {
            node.name = (new_parent, new_name.to_os_string());
            node.meta.ctime = SystemTime::now();
        }
        Ok(())
    }

    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        for _ in 0..256 {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT {
                return false;
            }
            match self.live.get(&ino) {
                Some(node) => ino = node.name.0,
                None => return false,
            }
        }
        false
    }

    /// fsync or fdatasync of a file (both make its data and size durable), by
    /// one of its handles.
    pub(crate) fn fsync(&mut self, fh: u64, ino: u64) -> Result<()> {
        self.handle(fh, ino)?;
        if self.node(ino)?.content.is_dir() {
            self.sync_dir(ino);
        } else {
            self.sync_file(ino);
        }
        Ok(())
    }

    /// fsync of a directory: its entries become durable.
    pub(crate) fn fsyncdir(&mut self, fh: u64, ino: u64) -> Result<()> {
        self.handle(fh, ino)?;
        self.sync_dir(ino);
        Ok(())
    }

    fn sync_file(&mut self, ino: u64) {
        let Some(node) = self.live.get_mut(&ino) else {
            return;
        };
        let Content::File(data) = &node.content else {
            return;
        };
        let durable = self.durable.entry(ino).or_insert_with(|| Durable {
            content: Content::File(Vec::new()),
            meta: node.meta,
        });
        durable.meta = node.meta;
        if let Content::File(stable) = &mut durable.content {
            stable.resize(data.len(), 0);
            for &(start, end) in &node.dirty {
                let end = (end as usize).min(data.len());
                let start = (start as usize).min(end);
                stable[start..end].copy_from_slice(&data[start..end]);
            }
        }
        let synced = std::mem::take(&mut node.dirty);
        if self.reachable.contains(&ino) {
            for (start, end) in synced {
                self.scan_durable(ino, start as usize, end as usize);
            }
        }
        self.record_sync(ino, false);
    }

    /// Records the watched markers that overlap durable bytes [start, end) of a
    /// reachable file (a marker may straddle bytes that were durable already).
    fn scan_durable(&mut self, ino: u64, start: usize, end: usize) {
        let Some((prefix, len)) = &self.watch else {
            return;
        };
        let Some(Durable {
            content: Content::File(stable),
            ..
        }) = self.durable.get(&ino)
        else {
            return;
        };
        let from = start.saturating_sub(len - 1);
        let to = end.saturating_add(len - 1).min(stable.len());
        if from >= to || to - from < *len {
            return;
        }
        let window = &stable[from..to];
        let found: Vec<Vec<u8>> = window
            .windows(*len)
            .filter(|candidate| candidate.starts_with(prefix))
            .map(<[u8]>::to_vec)
            .collect();
        if found.is_empty() {
            return;
        }
        let path = self.path(ino);
        let now = Instant::now();
        for marker in found {
            self.first_durable
                .entry((marker, path.clone()))
                .or_insert(now);
        }
    }

    fn sync_dir(&mut self, ino: u64) {
        let Some(node) = self.live.get(&ino) else {
            return;
        };
        let Content::Dir(entries) = &node.content else {
            return;
        };
        let entries = entries.clone();
        // A name made durable for an inode with no durable form yet names an
        // empty one: the name survives a cut, the data written without a sync
        // does not.
        for &child in entries.values() {
            if let Some(child_node) = self.live.get(&child) {
                self.durable.entry(child).or_insert_with(|| Durable {
                    content: child_node.content.empty_like(),
                    meta: child_node.meta,
                });
            }
        }
        let meta = node.meta;
        let durable = self.durable.entry(ino).or_insert_with(|| Durable {
            content: Content::Dir(BTreeMap::new()),
            meta,
        });
        durable.content = Content::Dir(entries);
        durable.meta = meta;
        self.record_sync(ino, true);
        let reachable = self.collect_durable();
        // Files whose names just became durable bring their durable bytes along.
        let newly: Vec<u64> = reachable
            .iter()
            .filter(|ino| !self.reachable.contains(ino))
            .copied()
            .collect();
        self.reachable = reachable;
        for ino in newly {
            self.scan_durable(ino, 0, usize::MAX);
        }
    }

    fn record_sync(&mut self, ino: u64, dir: bool) {
        if self.syncs.len() >= MAX_SYNC_EVENTS {
            self.syncs_dropped += 1;
            return;
        }
        let path = self.path(ino);
        self.syncs.push(SyncEvent {
            at: Instant::now(),
            path,
            dir,
        });
    }

    /// Forgets durable forms that no durable name reaches and no live inode has
    /// (they can never be reached again).
    /// Returns the inodes the durable root reaches.
    fn collect_durable(&mut self) -> HashSet<u64> {
        let reachable = self.durably_reachable();
        let live = &self.live;
        self.durable
            .retain(|ino, _| reachable.contains_key(ino) || live.contains_key(ino));
        reachable.into_keys().collect()
    }

    /// Every inode the durable root reaches, with the number of durable names it
    /// has and its first (parent, name).
    fn durably_reachable(&self) -> HashMap<u64, (u32, (u64, OsString))> {
        let mut reached: HashMap<u64, (u32, (u64, OsString))> = HashMap::new();
        reached.insert(ROOT, (1, (ROOT, OsString::new())));
        let mut queue = vec![ROOT];
        let mut expanded = HashSet::new();
        while let Some(dir) = queue.pop() {
            if !expanded.insert(dir) {
                continue;
            }
            let Some(Durable {
                content: Content::Dir(entries),
                ..
            }) = self.durable.get(&dir)
            else {
                continue;
            };
            for (name, &child) in entries {
                if !self.durable.contains_key(&child) {
                    continue;
                }
                let entry = reached
                    .entry(child)
                    .or_insert_with(|| (0, (dir, name.clone())));
                entry.0 += 1;
                queue.push(child);
            }
        }
        reached
    }

    /// Cuts the power: the live form becomes the durable one, every handle is
    /// stale, and every request fails with EIO until [`Model::power_on`].
    pub(crate) fn power_off(&mut self) -> CutReport {
        let report = self.loss_report();
        let reachable = self.durably_reachable();
        self.durable.retain(|ino, _| reachable.contains_key(ino));
        self.reachable = reachable.keys().copied().collect();
        self.live = self
            .durable
            .iter()
            .map(|(&ino, durable)| {
                let (nlink, name) = reachable[&ino].clone();
                (
                    ino,
                    Live {
                        content: durable.content.clone(),
                        meta: durable.meta,
                        nlink,
                        open: 0,
                        name,
                        dirty: Vec::new(),
                    },
                )
            })
            .collect();
        self.handles.clear();
        self.generation += 1;
        self.powered = false;
        report
    }

    pub(crate) fn power_on(&mut self) {
        self.powered = true;
    }

    /// What a cut now would take away.
    fn loss_report(&self) -> CutReport {
        let mut report = CutReport::default();
        // Walk the live tree and the durable tree side by side, by name.
        let mut queue: Vec<(u64, Option<u64>, String)> = vec![(ROOT, Some(ROOT), String::new())];
        let mut seen = HashSet::new();
        while let Some((ino, durable_ino, path)) = queue.pop() {
            if !seen.insert(ino) {
                continue;
            }
            let Some(node) = self.live.get(&ino) else {
                continue;
            };
            let durable = durable_ino.and_then(|d| self.durable.get(&d));
            match (&node.content, durable.map(|d| &d.content)) {
                (Content::Dir(entries), durable_content) => {
                    let durable_entries = match durable_content {
                        Some(Content::Dir(entries)) => Some(entries),
                        _ => None,
                    };
                    for (name, &child) in entries {
                        let child_path = if path.is_empty() {
                            name.to_string_lossy().into_owned()
                        } else {
                            format!("{path}/{}", name.to_string_lossy())
                        };
                        let durable_child = durable_entries
                            .and_then(|e| e.get(name).copied())
                            .filter(|c| self.durable.contains_key(c));
                        if durable_child.is_none() {
                            report.vanished_total += 1;
                            if durable_ino.is_some() {
                                report.vanished.push(child_path.clone());
                            }
                        }
                        queue.push((child, durable_child, child_path));
                    }
                }
                (Content::File(data), Some(Content::File(stable))) => {
                    if data != stable {
                        report
                            .reverted
                            .push((path, data.len() as u64, stable.len() as u64));
                    }
                }
                (Content::File(_), _) => {}
            }
        }
        report.vanished.sort();
        report.reverted.sort();
        report
    }

    pub(crate) fn syncs(&self) -> (Vec<SyncEvent>, u64) {
        (self.syncs.clone(), self.syncs_dropped)
    }

    /// Watches for `len` bytes starting with `prefix` in durable file content.
    pub(crate) fn watch(&mut self, prefix: &[u8], len: usize) {
        assert!(
            len >= prefix.len() && !prefix.is_empty(),
            "a marker is its prefix and more"
        );
        self.watch = Some((prefix.to_vec(), len));
    }

    /// When each watched marker first became durable in a file the durable root
    /// reached, by path: (marker, path, when).
    pub(crate) fn first_durable(&self) -> Vec<(Vec<u8>, String, Instant)> {
        let mut all: Vec<_> = self
            .first_durable
            .iter()
            .map(|((marker, path), at)| (marker.clone(), path.clone(), *at))
            .collect();
        all.sort_by_key(|entry| entry.2);
        all
    }
}

/// Adds [start, end) to sorted disjoint ranges, merging what touches it.
fn mark_dirty(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let mut merged = (start, end);
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    let mut placed = false;
    for &(s, e) in ranges.iter() {
        if e < merged.0 {
            kept.push((s, e));
        } else if s > merged.1 {
            if !placed {
                kept.push(merged);
                placed = true;
            }
            kept.push((s, e));
        } else {
            merged = (merged.0.min(s), merged.1.max(e));
        }
    }
    if !placed {
        kept.push(merged);
    }
    if kept.len() > MAX_DIRTY_RANGES {
        let first = kept.first().map_or(start, |r| r.0);
        let last = kept.last().map_or(end, |r| r.1);
        kept = vec![(first, last)];
    }
    *ranges = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model::new(0, 0)
    }

    fn meta() -> Meta {
        Meta::new(0o644, 0, 0)
    }

    fn file_data(model: &Model, parent: u64, name: &str) -> Option<Vec<u8>> {
        let attr = model.lookup(parent, OsStr::new(name)).ok()?;
        match &model.live[&attr.ino].content {
            Content::File(data) => Some(data.clone()),
            Content::Dir(_) => None,
        }
    }

    fn cut(model: &mut Model) -> CutReport {
        let report = model.power_off();
        model.power_on();
        report
    }

    #[test]
    fn dirty_ranges_merge() {
        let mut ranges = Vec::new();
        mark_dirty(&mut ranges, 10, 20);
        mark_dirty(&mut ranges, 30, 40);
        mark_dirty(&mut ranges, 20, 30);
        assert_eq!(ranges, vec![(10, 40)]);
        mark_dirty(&mut ranges, 0, 5);
        mark_dirty(&mut ranges, 50, 60);
        assert_eq!(ranges, vec![(0, 5), (10, 40), (50, 60)]);
        mark_dirty(&mut ranges, 4, 55);
        assert_eq!(ranges, vec![(0, 60)]);
    }

    #[test]
    fn a_synced_overwrite_keeps_unsynced_later_bytes_out() {
        let mut m = model();
        let (attr, fh) = m
            .create(ROOT, OsStr::new("f"), meta(), libc::O_RDWR)
            .expect("create");
        m.fsyncdir_unchecked(ROOT);
        m.write(fh, attr.ino, 0, b"aaaa", 0).expect("write");
        m.fsync(fh, attr.ino).expect("fsync");
        m.write(fh, attr.ino, 2, b"bbbbbb", 0).expect("write");
        let report = cut(&mut m);
        assert_eq!(report.reverted.len(), 1, "{report}");
        assert_eq!(file_data(&m, ROOT, "f").as_deref(), Some(&b"aaaa"[..]));
    }

    #[test]
    fn truncation_is_durable_only_after_a_sync() {
        let mut m = model();
        let (attr, fh) = m
            .create(ROOT, OsStr::new("f"), meta(), libc::O_RDWR)
            .expect("create");
        m.fsyncdir_unchecked(ROOT);
        m.write(fh, attr.ino, 0, b"0123456789", 0).expect("write");
        m.fsync(fh, attr.ino).expect("fsync");
        m.set_size(attr.ino, 4).expect("truncate");
        m.set_size(attr.ino, 8).expect("extend");
        cut(&mut m);
        assert_eq!(
            file_data(&m, ROOT, "f").as_deref(),
            Some(&b"0123456789"[..])
        );
        let fh = m.open(attr.ino, libc::O_RDWR).expect("open");
        m.set_size(attr.ino, 4).expect("truncate");
        m.set_size(attr.ino, 6).expect("extend");
        m.fsync(fh, attr.ino).expect("fsync");
        cut(&mut m);
        assert_eq!(file_data(&m, ROOT, "f").as_deref(), Some(&b"0123\0\0"[..]));
    }

    #[test]
    fn a_file_unlinked_but_open_survives_until_closed_and_the_cut_brings_back_its_durable_name() {
        let mut m = model();
        let (attr, fh) = m
            .create(ROOT, OsStr::new("f"), meta(), libc::O_RDWR)
            .expect("create");
        m.write(fh, attr.ino, 0, b"x", 0).expect("write");
        m.fsync(fh, attr.ino).expect("fsync");
        m.fsyncdir_unchecked(ROOT);
        m.unlink(ROOT, OsStr::new("f")).expect("unlink");
        assert!(m.lookup(ROOT, OsStr::new("f")).is_err());
        assert_eq!(m.read(fh, attr.ino, 0, 10).expect("read"), b"x");
        m.release(fh);
        assert!(m.attr(attr.ino).is_err());
        let report = cut(&mut m);
        assert!(report.vanished.is_empty(), "{report}");
        assert_eq!(file_data(&m, ROOT, "f").as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn a_rename_to_another_directory_synced_only_there_leaves_two_names() {
        let mut m = model();
        let a = m.mkdir(ROOT, OsStr::new("a"), meta()).expect("mkdir").ino;
        let b = m.mkdir(ROOT, OsStr::new("b"), meta()).expect("mkdir").ino;
        let (attr, fh) = m
            .create(a, OsStr::new("f"), meta(), libc::O_RDWR)
            .expect("create");
        m.write(fh, attr.ino, 0, b"data", 0).expect("write");
        m.fsync(fh, attr.ino).expect("fsync");
        m.release(fh);
        m.fsyncdir_unchecked(ROOT);
        m.fsyncdir_unchecked(a);
        m.rename(a, OsStr::new("f"), b, OsStr::new("g"), false)
            .expect("rename");
        m.fsyncdir_unchecked(b);
        cut(&mut m);
        assert_eq!(file_data(&m, a, "f").as_deref(), Some(&b"data"[..]));
        assert_eq!(file_data(&m, b, "g").as_deref(), Some(&b"data"[..]));
        assert_eq!(m.attr(attr.ino).expect("attr").nlink, 2);
        m.unlink(a, OsStr::new("f")).expect("unlink");
        assert_eq!(file_data(&m, b, "g").as_deref(), Some(&b"data"[..]));
    }

    #[test]
    fn a_marker_counts_as_durable_once_its_bytes_and_its_name_are() {
        let mut m = model();
        m.watch(b"mk", 4);
        let (attr, fh) = m
            .create(ROOT, OsStr::new("f"), meta(), libc::O_RDWR)
            .expect("create");
        m.write(fh, attr.ino, 0, b"..mkAB..m", 0).expect("write");
        m.fsync(fh, attr.ino).expect("fsync");
        assert!(m.first_durable().is_empty(), "the name is not durable yet");
        m.fsyncdir_unchecked(ROOT);
        let found: Vec<Vec<u8>> = m.first_durable().into_iter().map(|f| f.0).collect();
        assert_eq!(found, vec![b"mkAB".to_vec()]);
        // A marker completed by a later write, across the earlier durable bytes.
        m.write(fh, attr.ino, 9, b"kCD", 0).expect("write");
        m.fsync(fh, attr.ino).expect("fsync");
        let mut found: Vec<Vec<u8>> = m.first_durable().into_iter().map(|f| f.0).collect();
        found.sort();
        assert_eq!(found, vec![b"mkAB".to_vec(), b"mkCD".to_vec()]);
    }

    #[test]
    fn while_the_power_is_off_everything_fails() {
        let mut m = model();
        m.power_off();
        assert_eq!(m.enter("lookup"), Err(Errno::EIO));
        m.power_on();
        assert_eq!(m.enter("lookup"), Ok(()));
    }

    impl Model {
        fn fsyncdir_unchecked(&mut self, ino: u64) {
            self.sync_dir(ino);
        }
    }
}
