//! The local blob store: one file per blob under the member's data directory
//! (`<data_dir>/blobs/<dd>/<digest>`), looked up and deleted through
//! `object_store`'s local filesystem, written and read as [`Frame`]s (holes
//! stay holes), a frame at a time on a blocking task.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_common::blobio::{Frame, FrameReader, FrameSink, FrameWriter};
use ferry_common::digest::is_valid_digest;
use futures::stream::{BoxStream, StreamExt};
use object_store::ObjectStoreExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;

use super::BlobError;

#[derive(Clone, Debug)]
pub struct LocalBlobs {
    store: Arc<LocalFileSystem>,
    dir: std::path::PathBuf,
    max_blob_bytes: u64,
    /// Sizes of blobs known to be stored (blobs are immutable), so that the hot
    /// path of a submission does not stat a file each time. Bounded.
    known: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

/// Most digests remembered as present before the memory is cleared.
const MAX_KNOWN_BLOBS: usize = 65_536;

fn location(digest: &str) -> ObjectPath {
    ObjectPath::from(format!("{}/{}", &digest[..2], digest))
}

impl LocalBlobs {
    pub fn open(dir: &Path, max_blob_bytes: u64) -> Result<LocalBlobs, BlobError> {
        ferry_common::durable::create_dir_all(dir).map_err(|e| {
            BlobError::Storage(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })
        })?;
        Ok(LocalBlobs {
            store: Arc::new(LocalFileSystem::new_with_prefix(dir)?),
            dir: dir.to_path_buf(),
            max_blob_bytes,
            known: Arc::default(),
        })
    }

    pub async fn size_of(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        if let Some(size) = ferry_common::locks::lock(&self.known, "known blobs").get(digest) {
            return Ok(Some(*size));
        }
        let location = location(digest);
        match self.store.head(&location).await {
            Ok(meta) => {
                self.remember(digest, meta.size);
                Ok(Some(meta.size))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Where a blob is stored (to read it with blocking IO).
    pub fn file_of(&self, digest: &str) -> std::path::PathBuf {
        self.dir.join(&digest[..2]).join(digest)
    }

    /// Marks a stored blob as just written (an upload of a blob already here, a
    /// client told it need not upload): `ferry gc` keeps blobs written within its
    /// grace period, so one about to be referenced is not deleted meanwhile.
    pub fn touch(&self, digest: &str) {
        if !is_valid_digest(digest) {
            return;
        }
        let file = self.file_of(digest);
        if let Ok(handle) = std::fs::File::options().append(true).open(&file) {
            let _ = handle.set_modified(std::time::SystemTime::now());
        }
    }

    /// Whether the stored blob was last written at or before `before_ms`.
    pub fn written_before(&self, digest: &str, before_ms: i64) -> bool {
        is_valid_digest(digest)
            && std::fs::metadata(self.file_of(digest))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|d| d.as_millis() as i64 <= before_ms)
    }

    /// Deletes a blob (`ferry gc`) unless it was written after `before_ms`
    /// (milliseconds since the epoch); returns the bytes freed (0 when absent or
    /// kept).
    pub async fn delete(&self, digest: &str, before_ms: i64) -> Result<u64, BlobError> {
        let Some(size) = self.size_of(digest).await? else {
            return Ok(0);
        };
        if !self.written_before(digest, before_ms) {
            return Ok(0);
        }
        ferry_common::locks::lock(&self.known, "known blobs").remove(digest);
        match self.store.delete(&location(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(size),
            Err(e) => Err(e.into()),
        }
    }

    /// How many blobs this store holds and their bytes (a walk of its
    /// folders on a blocking thread; files being received are not counted).
    pub async fn stored(&self) -> (u64, u64) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let (mut count, mut bytes) = (0u64, 0u64);
            let Ok(prefixes) = std::fs::read_dir(&dir) else {
                return (0, 0);
            };
            for prefix in prefixes.flatten() {
                let Ok(files) = std::fs::read_dir(prefix.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let name = file.file_name().to_string_lossy().into_owned();
                    if !is_valid_digest(&name) {
                        continue;
                    }
                    if let Ok(meta) = file.metadata()
                        && meta.is_file()
                    {
                        count += 1;
                        bytes += meta.len();
                    }
                }
            }
            (count, bytes)
        })
        .await
        .unwrap_or_default()
    }

    /// The stored blobs that `live` does not name and that were last written
    /// at or before `before_ms`, with their sizes: what `ferry gc` deletes
    /// although no collected run refers to it (a bundle uploaded for a
    /// submission that was refused or never made). A file being received is
    /// not listed (it is stored under a staging name until it is verified),
    /// and one written within the grace period stays.
    pub async fn unreferenced(
        &self,
        live: &std::collections::BTreeSet<String>,
        before_ms: i64,
    ) -> Vec<(String, u64)> {
        let dir = self.dir.clone();
        let live = live.clone();
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let Ok(prefixes) = std::fs::read_dir(&dir) else {
                return found;
            };
            for prefix in prefixes.flatten() {
                let Ok(files) = std::fs::read_dir(prefix.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let name = file.file_name().to_string_lossy().into_owned();
                    if !is_valid_digest(&name)
                        || prefix.file_name().to_string_lossy() != name[..2]
                        || live.contains(&name)
                        || !store.written_before(&name, before_ms)
                    {
                        continue;
                    }
                    if let Ok(meta) = file.metadata()
                        && meta.is_file()
                    {
                        found.push((name, meta.len()));
                    }
                }
            }
            found.sort();
            found
        })
        .await
        .unwrap_or_default()
    }

    /// Whether the blob is stored here with exactly this size.
    pub async fn holds(&self, digest: &str, size: u64) -> Result<bool, BlobError> {
        Ok(self.size_of(digest).await? == Some(size))
    }

    pub(super) fn remember(&self, digest: &str, size: u64) {
        let mut known = ferry_common::locks::lock(&self.known, "known blobs");
        if known.len() >= MAX_KNOWN_BLOBS {
            known.clear();
        }
        known.insert(digest.to_string(), size);
    }

    /// Starts receiving a blob that the sender says has this digest and size.
    pub async fn begin(&self, digest: &str, size: u64) -> Result<LocalUpload, BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        self.check_size(size)?;
        if self.holds(digest, size).await? {
            self.touch(digest);
            // Already stored: the bytes are still hashed, to answer honestly, but
            // not kept. (A stored file of another size is damaged and gets replaced.)
            return Ok(self.upload(Some(digest), size, None));
        }
        let staging = self
            .file_of(digest)
            .with_file_name(format!(".{digest}.{}.partial", upload_number()));
        let file = create_staging(staging.clone()).await?;
        Ok(self.upload(Some(digest), size, Some((staging, file))))
    }

    /// Starts receiving a blob of this size whose digest the sender names
    /// only at its end (it hashes while it sends): the bytes go to a staging
    /// file in the store's root, published under the digest this member
    /// computes, which must equal the sender's.
    pub async fn begin_unnamed(&self, size: u64) -> Result<LocalUpload, BlobError> {
        self.check_size(size)?;
        let staging = self
            .dir
            .join(format!(".upload.{}.partial", upload_number()));
        let file = create_staging(staging.clone()).await?;
        Ok(self.upload(None, size, Some((staging, file))))
    }

    fn check_size(&self, size: u64) -> Result<(), BlobError> {
        if size > self.max_blob_bytes {
            return Err(BlobError::TooLarge {
                limit: self.max_blob_bytes,
            });
        }
        Ok(())
    }

    /// An upload whose frames go to a hashing thread and, when there is a
    /// staging file, a writing thread.
    fn upload(
        &self,
        expected: Option<&str>,
        size: u64,
        staging: Option<(PathBuf, std::fs::File)>,
    ) -> LocalUpload {
        let (staging, writer) = match staging {
            Some((path, file)) => (
                Some(path),
                Some(FrameWriter::new(file).with_early_writeback()),
            ),
            None => (None, None),
        };
        LocalUpload {
            expected: expected.map(str::to_string),
            announced: size,
            received: 0,
            sink: Some(FrameSink::start(blake3::Hasher::new(), writer)),
            staging,
            store: self.clone(),
        }
    }

    /// Reads a blob as a stream of frames of up to [`super::READ_FRAME`] bytes
    /// (zero runs for its holes and zero-filled stretches), skipping its first
    /// `offset` bytes; the last item is an error if the bytes on disk no longer
    /// match the digest (the skipped bytes are read and hashed too). Each frame
    /// is read and hashed on a blocking task one frame ahead of the consumer:
    /// an idle reader holds no thread.
    pub async fn read_frames(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<(u64, BoxStream<'static, Result<Frame, BlobError>>), BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        let path = self.file_of(digest);
        let opened =
            tokio::task::spawn_blocking(move || FrameReader::new(std::fs::File::open(&path)?))
                .await
                .map_err(|e| io_error(std::io::Error::other(e)))?;
        let reader = match opened {
            Ok(reader) => reader,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(digest.to_string()));
            }
            Err(e) => return Err(io_error(e)),
        };
        let size = reader.size();
        let expected = digest.to_string();
        let reading = Reading {
            reader,
            hasher: blake3::Hasher::new(),
            skip: offset,
        };
        // One frame is read and hashed ahead of the consumer, on a blocking
        // task that ends when the frame is ready: the disk and the hash work
        // while the previous frame is sent, and an idle reader holds no thread.
        let start = Some(tokio::task::spawn_blocking(move || reading.next()));
        let frames = futures::stream::unfold(start, move |ahead| {
            let expected = expected.clone();
            async move {
                let next = ahead?.await.map_err(|e| io_error(std::io::Error::other(e)));
                match next {
                    Ok(Ok((Some(frame), reading))) => {
                        let ahead = tokio::task::spawn_blocking(move || reading.next());
                        Some((Ok(frame), Some(ahead)))
                    }
                    Ok(Ok((None, reading))) => {
                        let actual = reading.hasher.finalize().to_hex().to_string();
                        (actual != expected)
                            .then_some((Err(BlobError::DigestMismatch { expected, actual }), None))
                    }
                    Ok(Err(e)) => Some((Err(io_error(e)), None)),
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        Ok((size, frames.boxed()))
    }
}

/// A blob being read: the file, the hash so far, and the bytes still to skip
/// before frames are sent (a resumed download).
struct Reading {
    reader: FrameReader,
    hasher: blake3::Hasher,
    skip: u64,
}

impl Reading {
    /// The next frame to send (hashing what it skips), `None` at the end.
    fn next(mut self) -> std::io::Result<(Option<Frame>, Reading)> {
        while let Some(frame) = self.reader.next_frame()? {
            frame.hash_into(&mut self.hasher);
            if self.skip >= frame.len() {
                self.skip -= frame.len();
                continue;
            }
            let skip = std::mem::take(&mut self.skip);
            let frame = match frame {
                Frame::Data(data) => Frame::Data(data.slice(skip as usize..)),
                Frame::Zeros(count) => Frame::Zeros(count - skip),
            };
            return Ok((Some(frame), self));
        }
        Ok((None, self))
    }
}

fn io_error(error: std::io::Error) -> BlobError {
    BlobError::Storage(object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(error),
    })
}

/// A number for a staging name that no other upload of this process uses.
fn upload_number() -> String {
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let number = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{number}", std::process::id())
}

/// Creates a staging file (a name that is not a digest: never read, listed
/// or collected as a blob) and the directory it goes in.
async fn create_staging(staging: PathBuf) -> Result<std::fs::File, BlobError> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = staging.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&staging)
    })
    .await
    .map_err(|e| io_error(std::io::Error::other(e)))?
    .map_err(io_error)
}

/// Publishes a received blob: its data synced, its staging file renamed to
/// its name, and that name made durable in its fan-out directory and the
/// directory's in the store's root.
fn publish(writer: FrameWriter, staging: &Path, path: &Path) -> std::io::Result<()> {
    writer.finish()?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::rename(staging, path)?;
    if let Some(dir) = path.parent() {
        ferry_common::durable::sync_dir(dir)?;
        if let Some(root) = dir.parent() {
            ferry_common::durable::sync_dir(root)?;
        }
    }
    Ok(())
}

/// A blob being received: each frame hashed on one blocking thread and
/// written to a staging file on another (zero runs as holes), published under
/// its digest only by [`LocalUpload::finish`] when the digest matches.
/// Dropped unpublished (refused, abandoned, or its caller gone mid-way), it
/// removes its staging file.
pub struct LocalUpload {
    /// The digest the sender named first; none when it names it at the end.
    expected: Option<String>,
    announced: u64,
    received: u64,
    /// None once the upload failed.
    sink: Option<FrameSink>,
    /// None when the blob is already stored (the bytes are only hashed).
    staging: Option<PathBuf>,
    store: LocalBlobs,
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            let _ = std::fs::remove_file(staging);
        }
    }
}

impl LocalUpload {
    pub async fn write(&mut self, data: Bytes) -> Result<(), BlobError> {
        self.write_frame(Frame::Data(data)).await
    }

    /// Takes the next frame of the blob; an error (the upload is then
    /// abandoned) when it passes the announced size or the disk failed.
    pub async fn write_frame(&mut self, frame: Frame) -> Result<(), BlobError> {
        self.received = self.received.saturating_add(frame.len());
        if self.received > self.announced {
            self.abort().await;
            return Err(BlobError::SizeMismatch {
                announced: self.announced,
                sent: self.received,
            });
        }
        let Some(sink) = self.sink.as_mut() else {
            return Err(abandoned());
        };
        if let Err(error) = sink.push(frame).await {
            self.abort().await;
            return Err(io_error(error));
        }
        Ok(())
    }

    /// Publishes the blob once every byte arrived and hashed to the digest
    /// the sender named first; returns its digest and size.
    pub async fn finish(self) -> Result<(String, u64), BlobError> {
        self.finish_claimed(None).await
    }

    /// [`LocalUpload::finish`], for a sender that named the digest at the
    /// end (`claimed`): this member's own hash must equal it.
    pub async fn finish_claimed(
        mut self,
        claimed: Option<&str>,
    ) -> Result<(String, u64), BlobError> {
        let Some(sink) = self.sink.take() else {
            return Err(abandoned());
        };
        let (hasher, writer) = sink.finish().await.map_err(io_error)?;
        let expected = match (&self.expected, claimed) {
            (Some(expected), _) => expected.clone(),
            (None, Some(claimed)) => claimed.to_string(),
            (None, None) => {
                return Err(BlobError::BadDigest(
                    "(none: the sender never named the digest)".to_string(),
                ));
            }
        };
        let actual = super::verified(self.announced, self.received, &hasher, &expected)?;
        let path = self.store.file_of(&actual);
        if self.expected.is_none() && self.store.holds(&actual, self.received).await? {
            // Named at the end and already stored: the copy is not needed.
            self.store.touch(&actual);
        } else if let (Some(writer), Some(staging)) = (writer, self.staging.clone()) {
            tokio::task::spawn_blocking(move || publish(writer, &staging, &path))
                .await
                .map_err(|e| io_error(std::io::Error::other(e)))?
                .map_err(io_error)?;
            // Published: nothing left to remove.
            self.staging = None;
        }
        self.store.remember(&actual, self.received);
        Ok((actual, self.received))
    }

    pub async fn abort(&mut self) {
        self.sink = None;
        if let Some(staging) = self.staging.take() {
            let _ = tokio::fs::remove_file(staging).await;
        }
    }
}

fn abandoned() -> BlobError {
    io_error(std::io::Error::other("the upload was abandoned"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(store: &LocalBlobs, digest: &str) -> Result<Vec<u8>, BlobError> {
        let (_, mut stream) = store.read_frames(digest, 0).await?;
        let mut out = Vec::new();
        while let Some(frame) = stream.next().await {
            for piece in frame?.into_bytes() {
                out.extend_from_slice(&piece);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn unreferenced_blobs_are_listed_once_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path(), 1 << 20).unwrap();
        let mut digests = Vec::new();
        for data in [&b"kept"[..], &b"orphan"[..]] {
            let digest = blake3::hash(data).to_hex().to_string();
            let mut upload = store.begin(&digest, data.len() as u64).await.unwrap();
            upload.write(Bytes::copy_from_slice(data)).await.unwrap();
            upload.finish().await.unwrap();
            digests.push(digest);
        }
        // A staging file and a stray name are never listed.
        std::fs::write(dir.path().join(&digests[0][..2]).join("x#1"), b"partial").unwrap();
        let live: std::collections::BTreeSet<String> = [digests[0].clone()].into();
        let now = ferry_common::time::now_ms();
        // Written within the grace period: kept.
        assert!(store.unreferenced(&live, now - 60_000).await.is_empty());
        let found = store.unreferenced(&live, now + 1000).await;
        assert_eq!(found, vec![(digests[1].clone(), 6)]);
    }

    #[tokio::test]
    async fn roundtrip_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path(), 1 << 20).unwrap();
        let data = b"hello blob".repeat(100);
        let digest = blake3::hash(&data).to_hex().to_string();
        for _ in 0..2 {
            let mut upload = store.begin(&digest, data.len() as u64).await.unwrap();
            upload
                .write(Bytes::from(data[..500].to_vec()))
                .await
                .unwrap();
            upload
                .write(Bytes::from(data[500..].to_vec()))
                .await
                .unwrap();
            assert_eq!(upload.finish().await.unwrap().1, 1000);
        }
        assert_eq!(read_all(&store, &digest).await.unwrap(), data);
        assert_eq!(store.size_of(&digest).await.unwrap(), Some(1000));
    }

    /// Files in the store's directory tree, staging files included.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(next) = stack.pop() {
            for entry in std::fs::read_dir(&next).unwrap().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                } else {
                    found.push(entry.path());
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn a_digest_named_last_is_checked_and_the_blob_stored_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path(), 1 << 30).unwrap();
        let data = b"hashed while it was sent".repeat(100_000);
        let digest = blake3::hash(&data).to_hex().to_string();
        // A wrong claim: refused, nothing stored, no staging file left.
        let mut upload = store.begin_unnamed(data.len() as u64).await.unwrap();
        upload.write(Bytes::from(data.clone())).await.unwrap();
        let wrong = blake3::hash(b"other").to_hex().to_string();
        assert!(matches!(
            upload.finish_claimed(Some(&wrong)).await,
            Err(BlobError::DigestMismatch { .. })
        ));
        // No claim at all: refused too.
        let mut upload = store.begin_unnamed(data.len() as u64).await.unwrap();
        upload.write(Bytes::from(data.clone())).await.unwrap();
        assert!(upload.finish_claimed(None).await.is_err());
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
        assert_eq!(store.size_of(&digest).await.unwrap(), None);
        // The right claim: stored under its digest; again: still one file.
        for _ in 0..2 {
            let mut upload = store.begin_unnamed(data.len() as u64).await.unwrap();
            upload
                .write(Bytes::from(data[..1000].to_vec()))
                .await
                .unwrap();
            upload
                .write_frame(Frame::Data(Bytes::from(data[1000..].to_vec())))
                .await
                .unwrap();
            let (stored, size) = upload.finish_claimed(Some(&digest)).await.unwrap();
            assert_eq!(
                (stored.as_str(), size),
                (digest.as_str(), data.len() as u64)
            );
        }
        assert_eq!(files_under(dir.path()), vec![store.file_of(&digest)]);
        assert_eq!(read_all(&store, &digest).await.unwrap(), data);
        // An upload dropped unfinished leaves nothing.
        let mut upload = store.begin_unnamed(10).await.unwrap();
        upload.write(Bytes::from_static(b"half")).await.unwrap();
        drop(upload);
        assert_eq!(files_under(dir.path()), vec![store.file_of(&digest)]);
    }

    #[tokio::test]
    async fn a_wrong_digest_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path(), 1 << 20).unwrap();
        let claimed = blake3::hash(b"something else").to_hex().to_string();
        let mut upload = store.begin(&claimed, 5).await.unwrap();
        upload.write(Bytes::from_static(b"hello")).await.unwrap();
        assert!(matches!(
            upload.finish().await,
            Err(BlobError::DigestMismatch { .. })
        ));
        assert_eq!(store.size_of(&claimed).await.unwrap(), None);
    }

    #[tokio::test]
    async fn corruption_on_disk_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path(), 1 << 20).unwrap();
        let data = b"precious model weights";
        let digest = blake3::hash(data).to_hex().to_string();
        let mut upload = store.begin(&digest, data.len() as u64).await.unwrap();
        upload.write(Bytes::from_static(data)).await.unwrap();
        upload.finish().await.unwrap();
        let file = dir.path().join(&digest[..2]).join(&digest);
        std::fs::write(&file, b"tampered model weights").unwrap();
        assert!(matches!(
            read_all(&store, &digest).await,
            Err(BlobError::DigestMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn size_limits_and_bad_digests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::open(dir.path(), 10).unwrap();
        let digest = blake3::hash(b"x").to_hex().to_string();
        assert!(matches!(
            store.begin(&digest, 11).await,
            Err(BlobError::TooLarge { .. })
        ));
        assert!(matches!(
            store.begin("../../etc/passwd", 1).await,
            Err(BlobError::BadDigest(_))
        ));
        let mut upload = store.begin(&digest, 1).await.unwrap();
        assert!(matches!(
            upload.write(Bytes::from_static(b"xx")).await,
            Err(BlobError::SizeMismatch { .. })
        ));
    }
}
