//! The blob store: code bundles, artifacts and step logs, content-addressed by
//! BLAKE3, kept either in each member's data directory ([`local`], the
//! default; copied to a majority by `replication`) or in an S3 bucket that
//! every member shares ([`s3`]), both through the `object_store` crate.
//!
//! Architecture invariant: a blob is visible under its digest only after every byte
//! of it has been hashed and the hash matched the digest the sender claimed; a blob
//! is hashed again while it is read, and a mismatch ends the read with an error.
//! With the S3 backend a worker uploads its outputs to the bucket itself
//! (`s3::presign`): it hashes what it sends, the leader checks the object's
//! size before the digest is recorded, and every reader (the workers too)
//! hashes again, so a wrong object is refused, never used.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_common::blobio::Frame;
use futures::stream::{BoxStream, StreamExt};

use crate::config::BlobsSettings;

pub mod local;
pub mod s3;

pub use local::{LocalBlobs, LocalUpload};
pub use s3::{PreparedUpload, ReadUrl, S3Blobs, S3Upload};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("\"{0}\" is not a BLAKE3 digest (64 lowercase hex characters)")]
    BadDigest(String),
    #[error("blob {0} is not stored here")]
    NotFound(String),
    #[error("blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blob content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob size does not match: the sender announced {announced} bytes and sent {sent}")]
    SizeMismatch { announced: u64, sent: u64 },
    #[error("blob storage error: {0}")]
    Storage(#[from] object_store::Error),
    #[error("blob storage: {0}")]
    Config(String),
}

/// The digest of a received blob once it is whole: the sender announced
/// `announced` bytes and sent `received`, hashed by `hasher`, and claimed
/// `expected`; an error (the upload must be aborted) if either differs.
fn verified(
    announced: u64,
    received: u64,
    hasher: &blake3::Hasher,
    expected: &str,
) -> Result<String, BlobError> {
    if received != announced {
        return Err(BlobError::SizeMismatch {
            announced,
            sent: received,
        });
    }
    let actual = hasher.finalize().to_hex().to_string();
    if actual != expected {
        return Err(BlobError::DigestMismatch {
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(actual)
}

/// The most bytes one frame of a blob read carries.
pub const READ_FRAME: usize = ferry_common::blobio::FRAME_BYTES;

/// Where this member keeps blobs.
#[derive(Clone, Debug)]
pub enum BlobStore {
    Local(LocalBlobs),
    S3(S3Blobs),
}

impl BlobStore {
    /// A local store in `dir`.
    pub fn open(dir: &Path, max_blob_bytes: u64) -> Result<BlobStore, BlobError> {
        Ok(BlobStore::Local(LocalBlobs::open(dir, max_blob_bytes)?))
    }

    /// The store `[blobs]` configures: local ones in `<data_dir>/blobs`; for
    /// S3, `<data_dir>/blob-spool` holds temporary copies read with blocking
    /// IO (a bundle's files).
    pub fn from_settings(
        settings: &BlobsSettings,
        data_dir: &Path,
        max_blob_bytes: u64,
    ) -> Result<BlobStore, BlobError> {
        if settings.is_s3() {
            Ok(BlobStore::S3(S3Blobs::open(
                settings,
                &data_dir.join("blob-spool"),
                max_blob_bytes,
            )?))
        } else {
            BlobStore::open(&data_dir.join("blobs"), max_blob_bytes)
        }
    }

    /// Whether every member reads and writes the same durable store (S3): then
    /// blobs are not copied between members, and only the leader deletes.
    pub fn is_shared(&self) -> bool {
        matches!(self, BlobStore::S3(_))
    }

    pub async fn size_of(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        match self {
            BlobStore::Local(store) => store.size_of(digest).await,
            BlobStore::S3(store) => store.size_of(digest).await,
        }
    }

    /// Whether the blob is stored with exactly this size.
    pub async fn holds(&self, digest: &str, size: u64) -> Result<bool, BlobError> {
        Ok(self.size_of(digest).await? == Some(size))
    }

    /// Marks a stored blob as just written (an upload of a blob already here, a
    /// client told it need not upload): `ferry gc` keeps blobs written within its
    /// grace period, so one about to be referenced is not deleted meanwhile.
    pub fn touch(&self, digest: &str) {
        match self {
            BlobStore::Local(store) => store.touch(digest),
            BlobStore::S3(store) => store.touch(digest),
        }
    }

    /// Whether the stored blob was last written (or touched) at or before
    /// `before_ms`.
    pub async fn written_before(&self, digest: &str, before_ms: i64) -> bool {
        match self {
            BlobStore::Local(store) => store.written_before(digest, before_ms),
            BlobStore::S3(store) => store.written_before(digest, before_ms).await,
        }
    }

    /// How many blobs this member's own store holds and their bytes; none
    /// for a bucket (shared by every member: listing it costs requests).
    pub async fn stored(&self) -> Option<(u64, u64)> {
        match self {
            BlobStore::Local(store) => Some(store.stored().await),
            BlobStore::S3(_) => None,
        }
    }

    /// The stored blobs that `live` does not name, last written at or before
    /// `before_ms`, with their sizes (`ferry gc` deletes them: a bundle of a
    /// submission that was refused or never made).
    pub async fn unreferenced(
        &self,
        live: &std::collections::BTreeSet<String>,
        before_ms: i64,
    ) -> Vec<(String, u64)> {
        match self {
            BlobStore::Local(store) => store.unreferenced(live, before_ms).await,
            BlobStore::S3(store) => store.unreferenced(live, before_ms).await,
        }
    }

    /// Deletes a blob (`ferry gc`) unless it was written after `before_ms`
    /// (milliseconds since the epoch); returns the bytes freed (0 when absent or
    /// kept).
    pub async fn delete(&self, digest: &str, before_ms: i64) -> Result<u64, BlobError> {
        match self {
            BlobStore::Local(store) => store.delete(digest, before_ms).await,
            BlobStore::S3(store) => store.delete(digest, before_ms).await,
        }
    }

    /// Starts receiving a blob that the sender says has this digest and size.
    pub async fn begin(&self, digest: &str, size: u64) -> Result<Upload, BlobError> {
        match self {
            BlobStore::Local(store) => Ok(Upload::Local(store.begin(digest, size).await?)),
            BlobStore::S3(store) => Ok(Upload::S3(Box::new(store.begin(digest, size).await?))),
        }
    }

    /// Starts receiving a blob of this size whose sender names its digest at
    /// the end ([`Upload::finish_claimed`]). Only the local store takes one:
    /// an S3 upload is keyed by its digest from the start.
    pub async fn begin_unnamed(&self, size: u64) -> Result<Upload, BlobError> {
        match self {
            BlobStore::Local(store) => Ok(Upload::Local(store.begin_unnamed(size).await?)),
            BlobStore::S3(_) => Err(BlobError::BadDigest(
                "(none: the S3 store needs the digest in the first chunk)".to_string(),
            )),
        }
    }

    /// Reads a blob as a stream of pieces of up to [`READ_FRAME`] bytes; the
    /// last item is an error if the stored bytes no longer match the digest.
    pub async fn read(
        &self,
        digest: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, BlobError>>), BlobError> {
        match self {
            BlobStore::Local(store) => {
                let (size, frames) = store.read_frames(digest, 0).await?;
                let pieces = frames.flat_map(|frame| {
                    futures::stream::iter(match frame {
                        Ok(frame) => frame.into_bytes().map(Ok).collect::<Vec<_>>(),
                        Err(error) => vec![Err(error)],
                    })
                });
                Ok((size, pieces.boxed()))
            }
            BlobStore::S3(store) => store.read(digest).await,
        }
    }

    /// Reads a blob as [`Frame`]s (a local store sends its holes and zero-filled
    /// stretches as zero runs) from byte `offset` on; the blob is still hashed
    /// whole, and the last item is an error if it no longer matches its digest.
    pub async fn read_frames(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<(u64, BoxStream<'static, Result<Frame, BlobError>>), BlobError> {
        match self {
            BlobStore::Local(store) => store.read_frames(digest, offset).await,
            BlobStore::S3(store) => {
                let (size, pieces) = store.read(digest).await?;
                let mut skip = offset;
                let frames = pieces.filter_map(move |piece| {
                    let frame = match piece {
                        Ok(data) if skip >= data.len() as u64 => {
                            skip -= data.len() as u64;
                            None
                        }
                        Ok(data) => Some(Ok(Frame::Data(
                            data.slice(std::mem::take(&mut skip) as usize..),
                        ))),
                        Err(error) => Some(Err(error)),
                    };
                    futures::future::ready(frame)
                });
                Ok((size, frames.boxed()))
            }
        }
    }

    /// A file holding the blob, to read with blocking IO: the stored file
    /// itself (local), or a verified temporary copy removed when the
    /// [`BlobFile`] is dropped (S3).
    pub async fn open_file(&self, digest: &str) -> Result<BlobFile, BlobError> {
        match self {
            BlobStore::Local(store) => {
                if store.size_of(digest).await?.is_none() {
                    return Err(BlobError::NotFound(digest.to_string()));
                }
                Ok(BlobFile {
                    path: store.file_of(digest),
                    temporary: false,
                })
            }
            BlobStore::S3(store) => store.spool(digest).await,
        }
    }
}

/// A file holding a blob's bytes; see [`BlobStore::open_file`].
#[derive(Debug)]
pub struct BlobFile {
    path: PathBuf,
    temporary: bool,
}

impl BlobFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A blob being received: hashed as it arrives, published only by
/// [`Upload::finish`] when the digest matches.
pub enum Upload {
    Local(LocalUpload),
    /// Boxed: it holds a hasher and a part being filled.
    S3(Box<S3Upload>),
}

impl Upload {
    pub async fn write(&mut self, data: Bytes) -> Result<(), BlobError> {
        match self {
            Upload::Local(upload) => upload.write(data).await,
            Upload::S3(upload) => upload.write(data).await,
        }
    }

    /// Takes the next frame: the local store keeps a zero run as a hole; S3
    /// is sent the zeros.
    pub async fn write_frame(&mut self, frame: Frame) -> Result<(), BlobError> {
        match self {
            Upload::Local(upload) => upload.write_frame(frame).await,
            Upload::S3(upload) => {
                for piece in frame.into_bytes() {
                    upload.write(piece).await?;
                }
                Ok(())
            }
        }
    }

    /// Publishes the blob under its digest if every byte arrived and matched;
    /// returns its digest and size.
    pub async fn finish(self) -> Result<(String, u64), BlobError> {
        self.finish_claimed(None).await
    }

    /// [`Upload::finish`] of a blob whose sender named the digest at the end:
    /// `claimed`, which this member's own hash must equal.
    pub async fn finish_claimed(self, claimed: Option<&str>) -> Result<(String, u64), BlobError> {
        match self {
            Upload::Local(upload) => upload.finish_claimed(claimed).await,
            Upload::S3(upload) => upload.finish().await,
        }
    }

    pub async fn abort(&mut self) {
        match self {
            Upload::Local(upload) => upload.abort().await,
            Upload::S3(upload) => upload.abort().await,
        }
    }
}
