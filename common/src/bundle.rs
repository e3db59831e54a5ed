//! Code bundles: the pipeline's folder packed into one content-addressed archive.
//!
//! `ferry run` packs the folder that holds the pipeline into a gzip-compressed tar
//! archive and names it by the BLAKE3 digest of the compressed bytes; workers unpack
//! it into each step's work directory. Packing is deterministic (entries sorted by
//! path, zeroed timestamps and owners, normalised modes, a fixed gzip header), so the
//! same folder contents always give the same digest and an unchanged pipeline is
//! never uploaded twice. Unpacking streams (the archive is never held whole in
//! memory), refuses any entry that could escape the destination directory, and
//! stops at the [`UnpackLimits`] (declared sizes in all, entries) before writing
//! past them; [`check_bundle`] makes the same walk without writing, which is how
//! the coordinator refuses an upload that is not a bundle a worker can unpack.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::GzBuilder;
use flate2::read::GzDecoder;
use ignore::WalkBuilder;
use tar::{Archive, Builder, EntryType, Header};
use thiserror::Error;

use crate::digest::digest_bytes;

/// The largest compressed bundle Ferry accepts, in bytes (512 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 512 * 1024 * 1024;

/// Name of the file, in gitignore syntax, that excludes paths from a bundle.
pub const IGNORE_FILE_NAME: &str = ".ferryignore";

/// A packed bundle: the compressed archive, its digest and how many files it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedBundle {
    /// The gzip-compressed tar archive.
    pub bytes: Vec<u8>,
    /// Hex BLAKE3 digest of `bytes`.
    pub digest: String,
    /// Number of regular files in the archive (directories not counted).
    pub files: usize,
}

impl std::fmt::Debug for PackedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedBundle")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("digest", &self.digest)
            .field("files", &self.files)
            .finish()
    }
}

/// Errors from packing or unpacking a bundle.
#[derive(Debug, Error)]
pub enum BundleError {
    /// The folder to pack is missing or is not a directory.
    #[error("cannot pack {path}: it is not a directory")]
    NotADirectory {
        /// The path that was given.
        path: PathBuf,
    },
    /// Walking the folder failed (unreadable directory, malformed `.ferryignore`, ...).
    #[error("cannot walk {path}: {source}")]
    Walk {
        /// The folder being packed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ignore::Error,
    },
    /// Reading or writing a file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The compressed bundle would exceed [`MAX_BUNDLE_BYTES`].
    #[error(
        "the bundle of {dir} is larger than the limit of {limit} bytes ({} MiB); \
         exclude large files (data, checkpoints, virtual environments) with a .ferryignore file",
        limit / (1024 * 1024)
    )]
    TooLarge {
        /// The folder being packed.
        dir: PathBuf,
        /// The limit that was exceeded, in bytes.
        limit: u64,
    },
    /// The archive could not be read: it is truncated, corrupt or not a gzip'd tar.
    #[error("the bundle archive is invalid: {0}")]
    Archive(#[source] io::Error),
    /// The archive's entries declare more bytes than the limit allows.
    #[error(
        "the bundle unpacks to more than {limit} bytes ({}), the limit on a bundle's unpacked size",
        crate::spec::format_bytes(*limit)
    )]
    UnpacksTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The archive holds more entries than the limit allows.
    #[error("the bundle holds more than {limit} entries, the limit on a bundle's entries")]
    TooManyEntries {
        /// The limit, in entries.
        limit: u64,
    },
    /// The bytes read do not have the digest the bundle is named by.
    #[error("the bundle is damaged: it is named {expected} but its bytes hash to {actual}")]
    DigestMismatch {
        /// The digest the bundle is named by.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// An archive entry was refused because it could escape the destination or is
    /// not a regular file or directory.
    #[error("the bundle entry \"{entry}\" is refused: {reason}")]
    UnsafeEntry {
        /// The entry's path as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
}

/// One path to put in the archive.
struct Item {
    rel: PathBuf,
    abs: PathBuf,
    kind: ItemKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Dir,
    File { executable: bool },
}

/// Packs `dir` into a deterministic gzip-compressed tar archive.
///
/// Paths matched by a `.ferryignore` file (gitignore syntax, in `dir` or any folder
/// below it) are left out; `.gitignore` files, global git excludes and hidden-file
/// rules are not applied, and `.git` directories are always skipped. Only regular
/// files and directories are packed: symbolic links (and sockets, FIFOs, devices)
/// are skipped silently. Every entry gets mtime 0, uid/gid 0 and mode 0o755 or
/// 0o644 (only the owner-execute bit is kept; directories are 0o755).
///
/// Fails with [`BundleError::TooLarge`] if the compressed archive would exceed
/// [`MAX_BUNDLE_BYTES`].
pub fn pack_dir(dir: &Path) -> Result<PackedBundle, BundleError> {
    pack_dir_with_limit(dir, MAX_BUNDLE_BYTES)
}

fn pack_dir_with_limit(dir: &Path, limit: u64) -> Result<PackedBundle, BundleError> {
    if !dir.is_dir() {
        return Err(BundleError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut items = collect_items(dir)?;
    items.sort_by(|a, b| a.rel.cmp(&b.rel));

    let sink = LimitedSink {
        buf: Vec::new(),
        limit,
        exceeded: false,
    };
    let encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(sink, Compression::default());
    let mut builder = Builder::new(encoder);
    let too_large = || BundleError::TooLarge {
        dir: dir.to_path_buf(),
        limit,
    };

    let mut files = 0usize;
    for item in &items {
        let mut header = Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let result = match item.kind {
            ItemKind::Dir => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, &item.rel, io::empty())
            }
            ItemKind::File { executable } => {
                let file = File::open(&item.abs).map_err(|source| BundleError::Io {
                    path: item.abs.clone(),
                    source,
                })?;
                let len = file
                    .metadata()
                    .map_err(|source| BundleError::Io {
                        path: item.abs.clone(),
                        source,
                    })?
                    .len();
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(len);
                files += 1;
                let reader = ExactReader {
                    inner: file.take(len),
                    remaining: len,
                };
                builder.append_data(&mut header, &item.rel, reader)
            }
        };
        if let Err(source) = result {
            if builder.get_ref().get_ref().exceeded {
                return Err(too_large());
            }
            return Err(BundleError::Io {
                path: item.abs.clone(),
                source,
            });
        }
    }

    let io_fail = |source: io::Error, exceeded: bool| {
        if exceeded {
            too_large()
        } else {
            BundleError::Io {
                path: dir.to_path_buf(),
                source,
            }
        }
    };
    if let Err(e) = builder.finish() {
        return Err(io_fail(e, builder.get_ref().get_ref().exceeded));
    }
    let mut encoder = builder.into_inner().map_err(|e| io_fail(e, false))?;
    if let Err(e) = encoder.try_finish() {
        return Err(io_fail(e, encoder.get_ref().exceeded));
    }
    let sink = encoder.finish().map_err(|e| io_fail(e, false))?;
    let bytes = sink.buf;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    let digest = digest_bytes(&bytes);
    Ok(PackedBundle {
        bytes,
        digest,
        files,
    })
}

/// The paths of a bundle's entries in archive order, a directory's with a
/// trailing `/` (what `ferry bundle --list` shows).
pub fn entry_names(bundle: impl Read) -> Result<Vec<String>, BundleError> {
    let bad = |source: io::Error| BundleError::Io {
        path: PathBuf::from("<bundle>"),
        source,
    };
    let mut archive = Archive::new(GzDecoder::new(bundle));
    let mut names = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let mut name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        if entry.header().entry_type() == EntryType::Directory && !name.ends_with('/') {
            name.push('/');
        }
        names.push(name);
    }
    Ok(names)
}

/// Walks `dir` and returns every file and directory to pack, unsorted.
fn collect_items(dir: &Path) -> Result<Vec<Item>, BundleError> {
    let mut walker = WalkBuilder::new(dir);
    walker
        .standard_filters(false)
        .hidden(false)
        .ignore(false)
        .git_ignore(false)
        .git_global(false)
        .git_exclude(false)
        .parents(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE_NAME)
        .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git");

    let mut items = Vec::new();
    for entry in walker.build() {
        let entry = entry.map_err(|source| BundleError::Walk {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        let abs = entry.path().to_path_buf();
        let rel = match abs.strip_prefix(dir) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => continue,
        };
        let kind = if file_type.is_dir() {
            ItemKind::Dir
        } else if file_type.is_file() {
            let meta = entry.metadata().map_err(|source| BundleError::Walk {
                path: dir.to_path_buf(),
                source,
            })?;
            ItemKind::File {
                executable: is_owner_executable(&meta),
            }
        } else {
            // Symbolic links, sockets, FIFOs and devices are not packed.
            continue;
        };
        items.push(Item { rel, abs, kind });
    }
    Ok(items)
}

#[cfg(unix)]
fn is_owner_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o100 != 0
}

#[cfg(not(unix))]
fn is_owner_executable(_meta: &fs::Metadata) -> bool {
    false
}

/// An in-memory sink that refuses to grow past `limit` bytes.
struct LimitedSink {
    buf: Vec<u8>,
    limit: u64,
    exceeded: bool,
}

impl Write for LimitedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() as u64 + data.len() as u64 > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("bundle size limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Yields exactly `remaining` bytes or fails: a file that shrinks while it is
/// being packed must not produce a corrupt archive.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The digest of the files of a bundle under `paths` (files, or folders and all
/// they hold; bundle-relative, normalized): BLAKE3 over each matching file's path
/// and content, in path order. It stands for a step's code in its cache key when
/// the step lists `cache.paths`. A path that matches nothing is an error naming
/// it.
pub fn paths_digest(bundle: impl Read, paths: &[String]) -> Result<String, PathsDigestError> {
    let mut archive = Archive::new(GzDecoder::new(bundle));
    let entries = archive
        .entries()
        .map_err(|e| PathsDigestError::Archive(e.to_string()))?;
    let mut files: Vec<(String, [u8; 32])> = Vec::new();
    let mut matched = vec![false; paths.len()];
    // Within the default unpack limits: the coordinator reads a blob here that
    // a submission names as its bundle, which may be any stored blob.
    let limits = UnpackLimits::default();
    let mut seen = Unpacked::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| PathsDigestError::Archive(e.to_string()))?;
        seen.entries += 1;
        seen.bytes = seen.bytes.saturating_add(entry.size());
        if seen.entries > limits.max_entries {
            return Err(PathsDigestError::Archive(
                BundleError::TooManyEntries {
                    limit: limits.max_entries,
                }
                .to_string(),
            ));
        }
        if seen.bytes > limits.max_unpacked_bytes {
            return Err(PathsDigestError::Archive(
                BundleError::UnpacksTooLarge {
                    limit: limits.max_unpacked_bytes,
                }
                .to_string(),
            ));
        }
        if entry.header().entry_type() != EntryType::Regular {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| PathsDigestError::Archive(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut hit = false;
        for (wanted, seen) in paths.iter().zip(matched.iter_mut()) {
            let under = path
                .strip_prefix(wanted.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if under {
                *seen = true;
                hit = true;
            }
        }
        if !hit {
            continue;
        }
        let mut hasher = blake3::Hasher::new();
        io::copy(&mut entry, &mut hasher).map_err(|e| PathsDigestError::Archive(e.to_string()))?;
        files.push((path, *hasher.finalize().as_bytes()));
    }
    if let Some((missing, _)) = paths.iter().zip(&matched).find(|(_, seen)| !**seen) {
        return Err(PathsDigestError::Missing(missing.clone()));
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for (path, content) in &files {
        hasher.update(&(path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update(content);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Why the digest of `cache.paths` could not be computed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathsDigestError {
    #[error("{0:?} is not in the code bundle (no file at or under it)")]
    Missing(String),
    #[error("the code bundle cannot be read: {0}")]
    Archive(String),
}

/// How much a bundle may unpack to: its entries' declared sizes in all, and the
/// number of its entries (every header the archive yields: files, directories,
/// extension headers). Both are checked while the archive streams, an entry's
/// declared size before any of its bytes is written, so that a small archive of
/// zeros (or a file packed from a sparse one) is refused before it fills a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most bytes the entries may declare in all.
    pub max_unpacked_bytes: u64,
    /// Most entries the archive may hold.
    pub max_entries: u64,
}

/// By default a bundle may unpack to 4 GiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// By default a bundle may hold 100,000 entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        UnpackLimits {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What a bundle held, once checked or unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files.
    pub files: usize,
    /// Every entry, directories included.
    pub entries: u64,
    /// The entries' declared sizes in all.
    pub bytes: u64,
}

/// Unpacks a bundle held in memory into `dest` (created if needed), within the
/// default [`UnpackLimits`], and returns the number of regular files written. The
/// digest is not checked here; see [`unpack_verified`] for a bundle read from a
/// file.
pub fn unpack_bundle(bytes: &[u8], dest: &Path) -> Result<usize, BundleError> {
    Ok(walk_bundle(bytes, Some(dest), UnpackLimits::default())?.files)
}

/// Checks, without writing anything, that `reader` yields a bundle Ferry can
/// unpack: a gzip stream of a tar archive whose entries are regular files and
/// directories with safe relative paths, within `limits`. The archive streams
/// through: memory stays bounded whatever its size.
pub fn check_bundle(reader: impl Read, limits: UnpackLimits) -> Result<Unpacked, BundleError> {
    walk_bundle(reader, None, limits)
}

/// Unpacks the bundle that `reader` streams into `dest` (created if needed),
/// hashing the compressed bytes on the way: once the archive is unpacked the rest
/// of the stream is hashed too and the whole must have the BLAKE3 digest
/// `expected`, else [`BundleError::DigestMismatch`]. When unpacking fails the rest
/// is hashed as well, so that a damaged bundle is reported as such rather than as
/// the damage's symptom. Whatever the error, the caller must discard `dest`: it
/// may hold part of the bundle, or all of a bundle that is not the one named.
pub fn unpack_verified(
    reader: impl Read,
    expected: &str,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<Unpacked, BundleError> {
    let mut hashing = HashingReader {
        inner: reader,
        hasher: blake3::Hasher::new(),
    };
    let walked = walk_bundle(&mut hashing, Some(dest), limits);
    let drained = io::copy(&mut hashing, &mut io::sink());
    let actual = hashing.hasher.finalize().to_hex().to_string();
    if drained.is_ok() && actual != expected {
        return Err(BundleError::DigestMismatch {
            expected: expected.to_string(),
            actual,
        });
    }
    let unpacked = walked?;
    drained.map_err(BundleError::Archive)?;
    Ok(unpacked)
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a bundle entry by entry, checking every entry against the rules and
/// `limits` before anything of it is written, and writes it under `dest` when
/// one is given. Unpacking and checking share this walk, so that a bundle the
/// coordinator accepts is exactly one a worker can unpack.
fn walk_bundle(
    reader: impl Read,
    dest: Option<&Path>,
    limits: UnpackLimits,
) -> Result<Unpacked, BundleError> {
    if let Some(dest) = dest {
        fs::create_dir_all(dest).map_err(|source| BundleError::Io {
            path: dest.to_path_buf(),
            source,
        })?;
    }
    let mut archive = Archive::new(GzDecoder::new(reader));
    let mut seen = Unpacked::default();
    {
        let entries = archive.entries().map_err(BundleError::Archive)?;
        for entry in entries {
            let mut entry = entry.map_err(BundleError::Archive)?;
            seen.entries += 1;
            if seen.entries > limits.max_entries {
                return Err(BundleError::TooManyEntries {
                    limit: limits.max_entries,
                });
            }
            // The declared size counts before a byte of it is read, whatever
            // the entry's type: that bounds what is written and decompressed.
            seen.bytes = seen.bytes.saturating_add(entry.size());
            if seen.bytes > limits.max_unpacked_bytes {
                return Err(BundleError::UnpacksTooLarge {
                    limit: limits.max_unpacked_bytes,
                });
            }
            if unpack_entry(&mut entry, dest)? {
                seen.files += 1;
            }
        }
    }
    let mut decoder = archive.into_inner();
    // What follows the tar's end (its padding) is read too, within the limit, so
    // that the gzip trailer's checksum is checked and a stream that is not gzip
    // at all (even an empty one) is refused.
    let room = limits.max_unpacked_bytes.saturating_sub(seen.bytes);
    let trailing = io::copy(
        &mut (&mut decoder).take(room.saturating_add(1)),
        &mut io::sink(),
    )
    .map_err(BundleError::Archive)?;
    if trailing > room {
        return Err(BundleError::UnpacksTooLarge {
            limit: limits.max_unpacked_bytes,
        });
    }
    if decoder.header().is_none() {
        return Err(BundleError::Archive(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is not a gzip stream",
        )));
    }
    Ok(seen)
}

/// Checks one entry and, with a `dest`, writes it there; true for a regular file.
fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: Option<&Path>,
) -> Result<bool, BundleError> {
    let entry_type = entry.header().entry_type();
    if entry_type.is_pax_global_extensions() {
        return Ok(false);
    }
    let raw_path = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let refuse = |reason: &str| BundleError::UnsafeEntry {
        entry: shown.clone(),
        reason: reason.to_string(),
    };
    if !(entry_type.is_file() || entry_type.is_dir()) {
        return Err(refuse(&format!(
            "it is a {} entry; only regular files and directories are allowed",
            entry_type_name(entry_type)
        )));
    }
    let path = entry
        .path()
        .map_err(|_| refuse("its path is not valid on this system"))?
        .into_owned();
    let rel = safe_relative_path(&path).map_err(refuse)?;
    if entry_type.is_file() && rel.as_os_str().is_empty() {
        return Err(refuse("a file entry must have a name"));
    }
    let Some(dest) = dest else {
        // Checking only: the data is read through (the tar reader skips it), so
        // that a truncated or corrupt stream is found.
        io::copy(entry, &mut io::sink()).map_err(BundleError::Archive)?;
        return Ok(entry_type.is_file());
    };
    let target = dest.join(&rel);
    let io_err = |source: io::Error| BundleError::Io {
        path: target.clone(),
        source,
    };
    if entry_type.is_dir() {
        if !rel.as_os_str().is_empty() {
            fs::create_dir_all(&target).map_err(io_err)?;
        }
        return Ok(false);
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    let executable = entry
        .header()
        .mode()
        .map(|m| m & 0o100 != 0)
        .unwrap_or(false);
    let mut out = File::create(&target).map_err(io_err)?;
    io::copy(entry, &mut out).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => BundleError::Archive(e),
        _ => io_err(e),
    })?;
    out.flush().map_err(io_err)?;
    drop(out);
    set_file_mode(&target, executable).map_err(io_err)?;
    Ok(true)
}

/// Returns `path` with `.` components removed, or the reason it is refused.
fn safe_relative_path(path: &Path) -> Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute"),
        }
    }
    Ok(rel)
}

fn entry_type_name(t: EntryType) -> &'static str {
    match t {
        EntryType::Symlink => "symbolic link",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::Continuous => "contiguous file",
        EntryType::GNULongName | EntryType::GNULongLink => "GNU long name",
        EntryType::GNUSparse => "sparse file",
        EntryType::XHeader | EntryType::XGlobalHeader => "PAX header",
        _ => "special",
    }
}

#[cfg(unix)]
fn set_file_mode(path: &Path, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_file_mode(_path: &Path, _executable: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn entry_names(bytes: &[u8]) -> BTreeSet<String> {
        let mut archive = Archive::new(GzDecoder::new(bytes));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect()
    }

    fn sample(root: &Path) {
        write(root, "pipeline.yaml", b"steps: []\n");
        write(root, "src/train.py", b"print('train')\n");
        write(root, "src/lib/util.py", b"x = 1\n");
        write(root, ".hidden", b"kept\n");
    }

    /// The bundle format pinned: the Python SDK's packer must give these
    /// bytes too (`sdk/python/tests/test_bundle.py` pins the same digest for
    /// the same tree). A change here is a change of every bundle's digest.
    #[test]
    fn the_format_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "pipeline.yaml", b"steps: []\n");
        write(root, "src/train.py", b"print('train')\n");
        write(root, "run.sh", b"#!/bin/sh\necho hi\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        }
        write(root, ".ferryignore", b"*.tmp\n");
        write(root, "scratch.tmp", b"junk\n");
        fs::create_dir(root.join("empty")).unwrap();
        let packed = pack_dir(root).unwrap();
        assert_eq!(packed.files, 4);
        assert_eq!(
            packed.digest,
            "f322a8553c1d1ddc34cbcca3eeb730fd4c89c8b912d22d7576849429640d3c1c"
        );
    }

    #[test]
    fn packing_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let a = pack_dir(dir.path()).unwrap();
        let b = pack_dir(dir.path()).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.files, 4);
        assert_eq!(a.digest, digest_bytes(&a.bytes));

        // Rewriting a file with the same content (new mtime) keeps the digest.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(dir.path(), "src/train.py", b"print('train')\n");
        let f = File::options()
            .write(true)
            .open(dir.path().join("src/train.py"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
        drop(f);
        assert_eq!(pack_dir(dir.path()).unwrap().digest, a.digest);

        // Changing content changes it.
        write(dir.path(), "src/train.py", b"print('train!')\n");
        assert_ne!(pack_dir(dir.path()).unwrap().digest, a.digest);
    }

    #[test]
    fn same_contents_in_different_folders_give_the_same_digest() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        // Create in different orders.
        sample(one.path());
        write(two.path(), ".hidden", b"kept\n");
        write(two.path(), "src/lib/util.py", b"x = 1\n");
        write(two.path(), "src/train.py", b"print('train')\n");
        write(two.path(), "pipeline.yaml", b"steps: []\n");
        assert_eq!(
            pack_dir(one.path()).unwrap().digest,
            pack_dir(two.path()).unwrap().digest
        );
    }

    #[test]
    fn ferryignore_is_honoured_and_gitignore_is_not() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        write(dir.path(), ".ferryignore", b"*.tmp\ndata/\n");
        write(dir.path(), "scratch.tmp", b"junk");
        write(dir.path(), "src/deep.tmp", b"junk");
        write(dir.path(), "data/big.bin", b"0123456789");
        write(dir.path(), ".gitignore", b"src/\n");
        let packed = pack_dir(dir.path()).unwrap();
        let names = entry_names(&packed.bytes);
        assert!(names.contains("pipeline.yaml"), "{names:?}");
        assert!(names.contains("src/train.py"), "{names:?}");
        assert!(names.contains(".hidden"), "{names:?}");
        assert!(names.contains(".ferryignore"), "{names:?}");
        assert!(names.contains(".gitignore"), "{names:?}");
        assert!(!names.contains("scratch.tmp"), "{names:?}");
        assert!(!names.contains("src/deep.tmp"), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("data")), "{names:?}");
    }

    #[test]
    fn git_directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        write(dir.path(), ".git/HEAD", b"ref: refs/heads/main\n");
        write(dir.path(), ".git/objects/ab/cdef", b"blob");
        write(dir.path(), "vendor/.git/config", b"[core]\n");
        let names = entry_names(&pack_dir(dir.path()).unwrap().bytes);
        assert!(
            !names
                .iter()
                .any(|n| n.contains(".git/") || n.ends_with(".git"))
        );
        assert!(names.contains("vendor"), "{names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let packed = pack_dir(dir.path()).unwrap();
        assert!(!entry_names(&packed.bytes).contains("link"));
        assert_eq!(packed.files, 4);
    }

    #[test]
    fn unpack_roundtrip_restores_files_dirs_and_exec_bit() {
        let src = tempfile::tempdir().unwrap();
        sample(src.path());
        fs::create_dir_all(src.path().join("empty/dir")).unwrap();
        write(src.path(), "run.sh", b"#!/bin/sh\necho hi\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(src.path().join("run.sh"), fs::Permissions::from_mode(0o750))
                .unwrap();
        }
        let packed = pack_dir(src.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let target = dest.path().join("work");
        let n = unpack_bundle(&packed.bytes, &target).unwrap();
        assert_eq!(n, packed.files);
        assert_eq!(n, 5);
        for rel in [
            "pipeline.yaml",
            "src/train.py",
            "src/lib/util.py",
            ".hidden",
            "run.sh",
        ] {
            assert_eq!(
                fs::read(src.path().join(rel)).unwrap(),
                fs::read(target.join(rel)).unwrap(),
                "{rel}"
            );
        }
        assert!(target.join("empty/dir").is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| fs::metadata(target.join(p)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("run.sh"), 0o755);
            assert_eq!(mode("pipeline.yaml"), 0o644);
        }
        // Re-packing the unpacked tree gives the same digest.
        assert_eq!(pack_dir(&target).unwrap().digest, packed.digest);
    }

    fn raw_archive(name: &[u8], entry_type: EntryType, data: &[u8]) -> Vec<u8> {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(entry_type);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        let mut builder = Builder::new(
            GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), Compression::default()),
        );
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpack_refuses_parent_components() {
        let dest = tempfile::tempdir().unwrap();
        let target = dest.path().join("work");
        let bytes = raw_archive(b"../evil", EntryType::Regular, b"pwned");
        let err = unpack_bundle(&bytes, &target).unwrap_err();
        assert!(matches!(err, BundleError::UnsafeEntry { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("../evil"), "{msg}");
        assert!(msg.contains(".."), "{msg}");
        assert!(!dest.path().join("evil").exists());
    }

    #[test]
    fn unpack_refuses_absolute_paths_and_links() {
        let dest = tempfile::tempdir().unwrap();
        let bytes = raw_archive(b"/tmp/ferry-evil", EntryType::Regular, b"pwned");
        let err = unpack_bundle(&bytes, dest.path()).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");

        let bytes = raw_archive(b"link", EntryType::Symlink, b"");
        let err = unpack_bundle(&bytes, dest.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"link\"") && msg.contains("symbolic link"),
            "{msg}"
        );
    }

    #[test]
    fn unpack_rejects_garbage() {
        let dest = tempfile::tempdir().unwrap();
        let err = unpack_bundle(b"definitely not a gzip stream", dest.path()).unwrap_err();
        assert!(matches!(err, BundleError::Archive(_)), "{err:?}");
    }

    #[test]
    fn oversized_bundles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Incompressible data larger than the test limit.
        let mut data = vec![0u8; 200_000];
        blake3::Hasher::new()
            .update(b"seed")
            .finalize_xof()
            .fill(&mut data);
        write(dir.path(), "big.bin", &data);
        let err = pack_dir_with_limit(dir.path(), 64 * 1024).unwrap_err();
        assert!(matches!(err, BundleError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains(".ferryignore"), "{err}");
        assert!(pack_dir_with_limit(dir.path(), MAX_BUNDLE_BYTES).is_ok());
    }

    #[test]
    fn packing_a_missing_folder_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let err = pack_dir(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, BundleError::NotADirectory { .. }));
    }

    /// A bundle of one file of `size` zeros, declared and written in full.
    fn zeros_archive(name: &str, size: u64) -> Vec<u8> {
        let mut header = Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_cksum();
        let mut builder = Builder::new(
            GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), Compression::default()),
        );
        builder.append(&header, io::repeat(0).take(size)).unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_bundle_that_unpacks_past_the_limit_is_refused_before_the_entry_is_written() {
        let bytes = zeros_archive("zeros.bin", 10 * 1024 * 1024);
        assert!(bytes.len() < 64 * 1024, "zeros compress well");
        let limits = UnpackLimits {
            max_unpacked_bytes: 1024 * 1024,
            max_entries: 10,
        };
        let dest = tempfile::tempdir().unwrap();
        let err = walk_bundle(bytes.as_slice(), Some(dest.path()), limits).unwrap_err();
        assert!(
            matches!(err, BundleError::UnpacksTooLarge { limit } if limit == 1024 * 1024),
            "{err:?}"
        );
        assert!(err.to_string().contains("1048576 bytes"), "{err}");
        assert!(
            !dest.path().join("zeros.bin").exists(),
            "refused before writing"
        );
        let err = check_bundle(bytes.as_slice(), limits).unwrap_err();
        assert!(
            matches!(err, BundleError::UnpacksTooLarge { .. }),
            "{err:?}"
        );
        // Within the limit it unpacks.
        let fine = check_bundle(bytes.as_slice(), UnpackLimits::default()).unwrap();
        assert_eq!(
            (fine.files, fine.entries, fine.bytes),
            (1, 1, 10 * 1024 * 1024)
        );
    }

    #[test]
    fn a_huge_declared_size_is_refused_without_reading_its_data() {
        // A header that declares 10 GiB followed by nothing: refused by its
        // declared size, not by running out of data.
        let mut header = Header::new_gnu();
        header.set_path("sparse.bin").unwrap();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(10 * 1024 * 1024 * 1024);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[0u8; 1024]);
        let mut gz = GzBuilder::new().write(Vec::new(), Compression::default());
        gz.write_all(&tar).unwrap();
        let bytes = gz.finish().unwrap();
        let err = check_bundle(bytes.as_slice(), UnpackLimits::default()).unwrap_err();
        assert!(
            matches!(err, BundleError::UnpacksTooLarge { .. }),
            "{err:?}"
        );
        // The coordinator's digest of `cache.paths` stops there too.
        let err = paths_digest(bytes.as_slice(), &["sparse.bin".to_string()]).unwrap_err();
        assert!(err.to_string().contains("unpacks to more than"), "{err}");
    }

    #[test]
    fn too_many_entries_are_refused() {
        let src = tempfile::tempdir().unwrap();
        for i in 0..20 {
            write(src.path(), &format!("f{i}"), b"x");
        }
        let packed = pack_dir(src.path()).unwrap();
        let limits = UnpackLimits {
            max_entries: 5,
            ..UnpackLimits::default()
        };
        let err = check_bundle(packed.bytes.as_slice(), limits).unwrap_err();
        assert!(
            matches!(err, BundleError::TooManyEntries { limit: 5 }),
            "{err:?}"
        );
        assert_eq!(
            check_bundle(packed.bytes.as_slice(), UnpackLimits::default())
                .unwrap()
                .files,
            20
        );
    }

    #[test]
    fn garbage_empty_and_truncated_streams_are_not_bundles() {
        let limits = UnpackLimits::default();
        for garbage in [&b"definitely not a gzip stream"[..], &b""[..]] {
            let err = check_bundle(garbage, limits).unwrap_err();
            assert!(matches!(err, BundleError::Archive(_)), "{err:?}");
        }
        let src = tempfile::tempdir().unwrap();
        sample(src.path());
        let packed = pack_dir(src.path()).unwrap();
        let cut = &packed.bytes[..packed.bytes.len() - 10];
        assert!(check_bundle(cut, limits).is_err());
        let links = raw_archive(b"link", EntryType::Symlink, b"");
        assert!(matches!(
            check_bundle(links.as_slice(), limits).unwrap_err(),
            BundleError::UnsafeEntry { .. }
        ));
        assert_eq!(
            check_bundle(packed.bytes.as_slice(), limits).unwrap().files,
            4
        );
    }

    #[test]
    fn unpack_verified_checks_the_digest_of_the_whole_stream() {
        let src = tempfile::tempdir().unwrap();
        sample(src.path());
        let packed = pack_dir(src.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let limits = UnpackLimits::default();
        let done = unpack_verified(
            packed.bytes.as_slice(),
            &packed.digest,
            &dest.path().join("a"),
            limits,
        )
        .unwrap();
        assert_eq!(done.files, 4);
        // Bytes after the archive change the digest: refused even though the
        // archive itself unpacks.
        let mut longer = packed.bytes.clone();
        longer.extend_from_slice(b"tail");
        let err = unpack_verified(
            longer.as_slice(),
            &packed.digest,
            &dest.path().join("b"),
            limits,
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::DigestMismatch { .. }), "{err:?}");
        // A damaged archive is reported as damaged, not as its symptom.
        let mut damaged = packed.bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xff;
        let err = unpack_verified(
            damaged.as_slice(),
            &packed.digest,
            &dest.path().join("c"),
            limits,
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::DigestMismatch { .. }), "{err:?}");
    }
}
