//! Presigned URLs for workers: with a bucket as the store, the leader hands a
//! worker short-lived URLs that each allow one request on one blob's key (a
//! GET of a blob an attempt needs; a PUT of a new output in one request, or
//! of one part of it), so that the bytes go between the worker and the bucket
//! and the coordinators carry only digests. The worker holds no credentials:
//! a URL is signed with the coordinators' (SigV4 query signing, through
//! `object_store`'s `Signer`), names one key, one method and, for a part, its
//! upload ID and number, and expires after `blobs.presign_expiry_ms`.
//!
//! What stands for the store's invariant here: the worker hashes the file it
//! uploads (the digest it claims is that file's) and every reader hashes what
//! it downloads, so a wrong object is refused on read, never used; the leader
//! signs no PUT over a blob already stored with its size, and publishes an
//! upload (completes it, records it as stored) only once the object has the
//! announced size; one with another size is deleted.

use object_store::ObjectStoreExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::signer::{Method, SignedUrlOptions, Signer};

use super::{BlobError, S3Blobs, is_valid_digest, remember};

/// S3's most parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Most part URLs in one answer (a worker asks for the next ones as it goes):
/// keeps an answer far below the gRPC message limit.
pub const MAX_PART_URLS: u64 = 256;

/// Where to read a blob from.
#[derive(Debug)]
pub struct ReadUrl {
    pub size: u64,
    pub url: String,
}

/// How a worker sends a blob.
#[derive(Debug)]
pub enum PreparedUpload {
    /// It is stored already: nothing to send.
    Stored,
    /// One PUT of the whole blob.
    Single { url: String },
    /// A multipart upload of `parts` parts of `part_bytes` (the last one
    /// smaller); `urls` are those of parts `first_part`, `first_part + 1`, ...
    Parts {
        upload_id: String,
        part_bytes: u64,
        parts: u64,
        first_part: u64,
        urls: Vec<String>,
    },
}

impl S3Blobs {
    pub fn presign_expiry(&self) -> std::time::Duration {
        self.presign_expiry
    }

    /// A GET URL for a stored blob, with its size.
    pub async fn read_url(&self, digest: &str) -> Result<ReadUrl, BlobError> {
        let size = self
            .size_of(digest)
            .await?
            .ok_or_else(|| BlobError::NotFound(digest.to_string()))?;
        let url = self
            .store
            .signed_url(Method::GET, &self.location(digest), self.presign_expiry)
            .await?;
        Ok(ReadUrl {
            size,
            url: url.to_string(),
        })
    }

    /// The part size and number of parts of a direct upload of `size`
    /// bytes: parts of `part_bytes`, larger where S3's 10,000 parts would not
    /// hold the blob otherwise.
    pub fn upload_parts(&self, size: u64) -> (u64, u64) {
        let part_bytes = (self.part_bytes as u64).max(size.div_ceil(MAX_PARTS));
        (part_bytes, size.div_ceil(part_bytes).max(1))
    }

    /// URLs for a worker to upload blob `digest` of `size` bytes: none when
    /// it is stored already; one PUT when it fits one part; otherwise a
    /// multipart upload (started here, or `resume`d to renew its URLs) with
    /// the URLs of up to [`MAX_PART_URLS`] parts from `first_part` (from 1).
    pub async fn prepare_upload(
        &self,
        digest: &str,
        size: u64,
        resume: Option<&str>,
        first_part: u64,
    ) -> Result<PreparedUpload, BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        if size > self.max_blob_bytes {
            return Err(BlobError::TooLarge {
                limit: self.max_blob_bytes,
            });
        }
        let location = self.location(digest);
        if resume.is_none() {
            if self.size_of(digest).await? == Some(size) {
                self.touch(digest);
                return Ok(PreparedUpload::Stored);
            }
            if size <= self.part_bytes as u64 {
                let url = self
                    .store
                    .signed_url(Method::PUT, &location, self.presign_expiry)
                    .await?;
                return Ok(PreparedUpload::Single {
                    url: url.to_string(),
                });
            }
        }
        let (part_bytes, parts) = self.upload_parts(size);
        let first_part = first_part.clamp(1, parts);
        let upload_id = match resume {
            Some(id) => id.to_string(),
            None => self.store.create_multipart(&location).await?,
        };
        let last = parts.min(first_part + MAX_PART_URLS - 1);
        let mut urls = Vec::with_capacity((last - first_part + 1) as usize);
        for number in first_part..=last {
            let options = SignedUrlOptions::default().with_query([
                ("partNumber", number.to_string()),
                ("uploadId", upload_id.clone()),
            ]);
            let url = self
                .store
                .signed_url_opts(Method::PUT, &location, self.presign_expiry, &options)
                .await?;
            urls.push(url.to_string());
        }
        Ok(PreparedUpload::Parts {
            upload_id,
            part_bytes,
            parts,
            first_part,
            urls,
        })
    }

    /// A worker says it sent blob `digest` of `size` bytes: completes its
    /// multipart upload (`upload_id`, with each part's ETag in order), then
    /// checks that the object has the announced size. An object of another
    /// size is deleted and the upload refused.
    pub async fn complete_upload(
        &self,
        digest: &str,
        size: u64,
        upload_id: Option<&str>,
        etags: Vec<String>,
    ) -> Result<(), BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        let location = self.location(digest);
        if let Some(id) = upload_id {
            let parts = etags
                .into_iter()
                .map(|content_id| PartId { content_id })
                .collect();
            let id = id.to_string();
            if let Err(error) = self.store.complete_multipart(&location, &id, parts).await {
                let _ = self.store.abort_multipart(&location, &id).await;
                return Err(error.into());
            }
        }
        // What the bucket holds now, not what this member remembers.
        ferry_common::locks::lock(&self.known, "s3 blobs").remove(digest);
        match self.head(digest).await? {
            Some(meta) if meta.size == size => {
                remember(&self.known, digest, size);
                self.touch(digest);
                Ok(())
            }
            Some(meta) => {
                let _ = self.store.delete(&location).await;
                Err(BlobError::SizeMismatch {
                    announced: size,
                    sent: meta.size,
                })
            }
            None => Err(BlobError::NotFound(digest.to_string())),
        }
    }

    /// Aborts a worker's multipart upload that it gave up on.
    pub async fn abort_upload(&self, digest: &str, upload_id: &str) -> Result<(), BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        self.store
            .abort_multipart(&self.location(digest), &upload_id.to_string())
            .await?;
        Ok(())
    }
}
