//! The FUSE face of the model: each request locks the model, does its one
//! operation and answers. Attributes and entries are never cached by the kernel
//! (TTL 0) and files are opened with direct IO, so that after a power cut the
//! kernel holds no page or attribute of the reverted files. File locks are left
//! to the kernel (no lock operations are offered, so it keeps them locally).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use super::model::{Attr, Meta, Model};

const TTL: Duration = Duration::ZERO;

pub(crate) struct LazyFsServer {
    pub(crate) model: Arc<Mutex<Model>>,
}

fn lock(model: &Mutex<Model>) -> std::sync::MutexGuard<'_, Model> {
    // A panic while the model was held leaves it unusable; the test fails anyway.
    model
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.meta.atime,
        mtime: attr.meta.mtime,
        ctime: attr.meta.ctime,
        crtime: attr.meta.ctime,
        kind: if attr.dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: attr.meta.perm,
        nlink: attr.nlink,
        uid: attr.meta.uid,
        gid: attr.meta.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time(value: TimeOrNow) -> SystemTime {
    match value {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn new_meta(req: &Request, mode: u32, umask: u32) -> Meta {
    Meta::new((mode & !umask & 0o7777) as u16, req.uid(), req.gid())
}

/// Runs `op` on the locked model unless the power is off (then EIO).
fn with<T>(
    model: &Mutex<Model>,
    name: &'static str,
    op: impl FnOnce(&mut Model) -> Result<T, Errno>,
) -> Result<T, Errno> {
    let mut model = lock(model);
    model.enter(name)?;
    op(&mut model)
}

impl Filesystem for LazyFsServer {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match with(&self.model, "lookup", |m| m.lookup(parent.0, name)) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(attr.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match with(&self.model, "getattr", |m| m.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = with(&self.model, "setattr", |m| {
            if let Some(size) = size {
                m.set_size(ino.0, size)?;
            }
            m.set_meta(ino.0, |meta| {
                if let Some(mode) = mode {
                    meta.perm = (mode & 0o7777) as u16;
                }
                if let Some(uid) = uid {
                    meta.uid = uid;
                }
                if let Some(gid) = gid {
                    meta.gid = gid;
                }
                if let Some(atime) = atime {
                    meta.atime = time(atime);
                }
                if let Some(mtime) = mtime {
                    meta.mtime = time(mtime);
                }
                meta.ctime = ctime.unwrap_or_else(SystemTime::now);
            })?;
            m.attr(ino.0)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let result = with(&self.model, "mknod", |m| {
            if mode & libc::S_IFMT != libc::S_IFREG {
                return Err(m.refuse(format!("mknod of mode {mode:o}"), Errno::EPERM));
            }
            m.mknod(parent.0, name, new_meta(req, mode, umask))
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(attr.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match with(&self.model, "mkdir", |m| {
            m.mkdir(parent.0, name, new_meta(req, mode, umask))
        }) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(attr.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match with(&self.model, "unlink", |m| m.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match with(&self.model, "rmdir", |m| m.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        let result: Result<(), Errno> = with(&self.model, "symlink", |m| {
            Err(m.refuse(format!("symlink {link_name:?}"), Errno::EPERM))
        });
        reply.error(result.err().unwrap_or(Errno::EPERM));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = with(&self.model, "rename", |m| {
            if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
                return Err(m.refuse(format!("rename with flags {flags}"), Errno::EINVAL));
            }
            m.rename(
                parent.0,
                name,
                newparent.0,
                newname,
                flags.contains(RenameFlags::RENAME_NOREPLACE),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result: Result<(), Errno> = with(&self.model, "link", |m| {
            Err(m.refuse(format!("link {newname:?}"), Errno::EPERM))
        });
        reply.error(result.err().unwrap_or(Errno::EPERM));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match with(&self.model, "open", |m| m.open(ino.0, flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match with(&self.model, "read", |m| m.read(fh.0, ino.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match with(&self.model, "write", |m| {
            m.write(fh.0, ino.0, offset, data, flags.0)
        }) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): not a sync.
        match with(&self.model, "flush", |_| Ok(())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Answered even while the power is off: the handle is gone either way.
        let mut model = lock(&self.model);
        *model.ops.entry("release").or_default() += 1;
        model.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let name = if datasync { "fdatasync" } else { "fsync" };
        match with(&self.model, name, |m| m.fsync(fh.0, ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match with(&self.model, "opendir", |m| m.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match with(&self.model, "readdir", |m| m.readdir(fh.0, ino.0, offset)) {
            Ok(entries) => {
                for (child, dir, name, next) in entries {
                    let kind = if dir {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    if reply.add(INodeNo(child), next, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut model = lock(&self.model);
        *model.ops.entry("releasedir").or_default() += 1;
        model.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match with(&self.model, "fsyncdir", |m| m.fsyncdir(fh.0, ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match with(&self.model, "statfs", |_| Ok(())) {
            Ok(()) => reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result: Result<(), Errno> = with(&self.model, "setxattr", |m| {
            Err(m.refuse(format!("setxattr {name:?}"), Errno::EOPNOTSUPP))
        });
        reply.error(result.err().unwrap_or(Errno::EOPNOTSUPP));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // No file has extended attributes (the kernel asks for security.* ones on
        // its own).
        match with(&self.model, "getxattr", |_| Ok(())) {
            Ok(()) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        match with(&self.model, "listxattr", |_| Ok(())) {
            Ok(()) if size == 0 => reply.size(0),
            Ok(()) => reply.data(&[]),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        match with(&self.model, "removexattr", |_| Ok(())) {
            Ok(()) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        match with(&self.model, "access", |m| m.attr(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = with(&self.model, "create", |m| {
            if mode & libc::S_IFMT != libc::S_IFREG {
                return Err(m.refuse(format!("create of mode {mode:o}"), Errno::EPERM));
            }
            m.create(parent.0, name, new_meta(req, mode, umask), flags)
        });
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(attr.generation),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = with(&self.model, "fallocate", |m| {
            if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                return Err(m.refuse(format!("fallocate mode {mode:#x}"), Errno::EOPNOTSUPP));
            }
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > m.attr(ino.0)?.size {
                m.set_size(ino.0, end)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // SEEK_DATA/SEEK_HOLE: the kernel falls back to its own lseek on ENOSYS.
        let result: Result<(), Errno> = with(&self.model, "lseek", |m| {
            Err(m.refuse(format!("lseek whence {whence}"), Errno::ENOSYS))
        });
        reply.error(result.err().unwrap_or(Errno::ENOSYS));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The kernel copies through reads and writes instead.
        let result: Result<(), Errno> = with(&self.model, "copy_file_range", |m| {
            Err(m.refuse("copy_file_range".to_string(), Errno::ENOSYS))
        });
        reply.error(result.err().unwrap_or(Errno::ENOSYS));
    }
}
