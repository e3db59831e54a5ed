//! Blobs in an S3 bucket (AWS or an S3-compatible server), through
//! `object_store`'s S3 client (ring for its crypto, rustls for TLS).
//!
//! Keys are `<prefix>/blobs/<dd>/<digest>`. The bucket is shared by every
//! member and is the durable store. The same invariants as the local store:
//! an upload is hashed as it arrives and becomes visible under its digest
//! only after the hash matched (a small blob is sent in one PUT after the
//! check; a larger one as a multipart upload whose parts are sent as they
//! fill, completed only after the check and aborted otherwise); a read is
//! hashed on the way and ends with an error on a mismatch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use ferry_common::digest::is_valid_digest;
use futures::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, CredentialProvider, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Deserialize;

use super::{BlobError, BlobFile, READ_FRAME};
use crate::config::BlobsSettings;

mod presign;

pub use presign::{PreparedUpload, ReadUrl};

/// Most digests remembered as present, or as touched, before the memory is
/// cleared.
const MAX_REMEMBERED: usize = 65_536;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
const REGION: &str = "us-east-1";

#[derive(Clone, Debug)]
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    /// `"<prefix>/blobs"` or `"blobs"`.
    root: String,
    part_bytes: usize,
    max_blob_bytes: u64,
    /// How long a presigned URL given to a worker lives.
    presign_expiry: std::time::Duration,
    /// Temporary verified copies for blocking readers ([`BlobFile`]).
    spool: PathBuf,
    /// Sizes of blobs known to be stored (blobs are immutable).
    known: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// When this member last told someone a stored blob need not be sent again
    /// (milliseconds): an object's `last_modified` cannot be moved without
    /// copying it, so gc's grace period also counts from here.
    touched: Arc<std::sync::Mutex<HashMap<String, i64>>>,
}

/// The credentials file named by `blobs.credentials_file` (TOML).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

/// Reads `blobs.credentials_file`: TOML with `access_key_id`,
/// `secret_access_key` and an optional `session_token`, readable by its owner
/// only.
pub fn read_credentials_file(path: &Path) -> Result<AwsCredential, BlobError> {
    let failed = |why: String| {
        BlobError::Config(format!("blobs.credentials_file {}: {why}", path.display()))
    };
    let metadata = std::fs::metadata(path).map_err(|e| failed(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(failed(format!(
                "is readable by others (mode {mode:o}); it holds a secret: chmod 600 it"
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let file: CredentialsFile = toml::from_str(&text).map_err(|e| failed(e.to_string()))?;
    if file.access_key_id.is_empty() || file.secret_access_key.is_empty() {
        return Err(failed(
            "access_key_id and secret_access_key must not be empty".into(),
        ));
    }
    Ok(AwsCredential {
        key_id: file.access_key_id,
        secret_key: file.secret_access_key,
        token: file.session_token.filter(|token| !token.is_empty()),
    })
}

/// The credentials of `blobs.credentials_file`, read again when the file's
/// modification time changes (rotation without a restart). A file that no
/// longer reads well keeps the last good credentials in use, with a warning,
/// and is tried again on the next request.
#[derive(Debug)]
pub struct FileCredentials {
    path: PathBuf,
    current: std::sync::Mutex<(Option<std::time::SystemTime>, Arc<AwsCredential>)>,
}

impl FileCredentials {
    /// Reads the file now: an unusable one is refused at start.
    pub fn open(path: &Path) -> Result<FileCredentials, BlobError> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let credential = read_credentials_file(path)?;
        Ok(FileCredentials {
            path: path.to_path_buf(),
            current: std::sync::Mutex::new((modified, Arc::new(credential))),
        })
    }

    pub fn current(&self) -> Arc<AwsCredential> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut current = ferry_common::locks::lock(&self.current, "s3 credentials");
        if modified.is_some() && modified != current.0 {
            match read_credentials_file(&self.path) {
                Ok(credential) => {
                    tracing::info!(path = %self.path.display(), "S3 credentials read again");
                    *current = (modified, Arc::new(credential));
                }
                Err(error) => {
                    tracing::warn!(%error, "S3 credentials file unusable; the last good credentials stay in use");
                }
            }
        }
        current.1.clone()
    }
}

impl CredentialProvider for FileCredentials {
    type Credential = AwsCredential;

    // The trait is declared with `async_trait`; this is its expansion.
    fn get_credential<'a, 'b>(
        &'a self,
    ) -> std::pin::Pin<Box<dyn Future<Output = object_store::Result<Arc<AwsCredential>>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { Ok(self.current()) })
    }
}

/// The credentials in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// (optional) `AWS_SESSION_TOKEN` of `lookup` (the environment).
pub fn credentials_from(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<AwsCredential, BlobError> {
    let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret_key)) => Ok(AwsCredential {
            key_id,
            secret_key,
            token: get("AWS_SESSION_TOKEN"),
        }),
        _ => Err(BlobError::Config(
            "backend = \"s3\" needs credentials: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY in the coordinator's environment, or name a file in \
             blobs.credentials_file"
                .into(),
        )),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn remember<V>(map: &std::sync::Mutex<HashMap<String, V>>, digest: &str, value: V) {
    let mut map = ferry_common::locks::lock(map, "s3 blobs");
    if map.len() >= MAX_REMEMBERED {
        map.clear();
    }
    map.insert(digest.to_string(), value);
}

impl S3Blobs {
    /// Builds the client (no request is made); `spool` is created and emptied.
    pub fn open(
        settings: &BlobsSettings,
        spool: &Path,
        max_blob_bytes: u64,
    ) -> Result<S3Blobs, BlobError> {
        settings
            .check()
            .map_err(|e| BlobError::Config(e.to_string()))?;
        let credentials: object_store::aws::AwsCredentialProvider = match &settings.credentials_file
        {
            Some(path) => Arc::new(FileCredentials::open(path)?),
            None => Arc::new(object_store::StaticCredentialProvider::new(
                credentials_from(|name| std::env::var(name).ok())?,
            )),
        };
        let bucket = settings.bucket.clone().unwrap_or_default();
        // A part (or a whole read) may take long on a slow link: no overall
        // timeout per request, but connecting must not hang.
        let options = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(std::time::Duration::from_secs(10));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region.as_deref().unwrap_or(REGION))
            .with_credentials(credentials)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint.trim_end_matches('/'))
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build()?;
        let _ = std::fs::remove_dir_all(spool);
        ferry_common::durable::create_dir_all(spool)
            .map_err(|e| BlobError::Config(format!("{}: {e}", spool.display())))?;
        let prefix = settings.key_prefix();
        Ok(S3Blobs {
            store: Arc::new(store),
            root: if prefix.is_empty() {
                "blobs".into()
            } else {
                format!("{prefix}/blobs")
            },
            part_bytes: settings.part_bytes as usize,
            max_blob_bytes,
            presign_expiry: settings.presign_expiry(),
            spool: spool.to_path_buf(),
            known: Arc::default(),
            touched: Arc::default(),
        })
    }

    fn location(&self, digest: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{}/{}", self.root, &digest[..2], digest))
    }

    async fn head(&self, digest: &str) -> Result<Option<object_store::ObjectMeta>, BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        match self.store.head(&self.location(digest)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn size_of(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        if let Some(size) = ferry_common::locks::lock(&self.known, "s3 blobs").get(digest) {
            return Ok(Some(*size));
        }
        let meta = self.head(digest).await?;
        if let Some(meta) = &meta {
            remember(&self.known, digest, meta.size);
        }
        Ok(meta.map(|meta| meta.size))
    }

    pub fn touch(&self, digest: &str) {
        if is_valid_digest(digest) {
            remember(&self.touched, digest, now_ms());
        }
    }

    pub async fn written_before(&self, digest: &str, before_ms: i64) -> bool {
        let touched = ferry_common::locks::lock(&self.touched, "s3 blobs")
            .get(digest)
            .copied();
        if touched.is_some_and(|at| at > before_ms) {
            return false;
        }
        matches!(
            self.head(digest).await,
            Ok(Some(meta)) if meta.last_modified.timestamp_millis() <= before_ms
        )
    }

    /// The blobs in the bucket that `live` does not name and that were last
    /// written at or before `before_ms` (see `LocalBlobs::unreferenced`).
    /// A multipart upload in progress is not an object yet, so it is not listed.
    pub async fn unreferenced(
        &self,
        live: &std::collections::BTreeSet<String>,
        before_ms: i64,
    ) -> Vec<(String, u64)> {
        use futures::StreamExt;
        let root = ObjectPath::from(self.root.as_str());
        let mut listing = object_store::ObjectStore::list(self.store.as_ref(), Some(&root));
        let mut found = Vec::new();
        while let Some(item) = listing.next().await {
            let meta = match item {
                Ok(meta) => meta,
                Err(error) => {
                    tracing::warn!(%error, "cannot list the bucket's blobs");
                    return Vec::new();
                }
            };
            let Some(name) = meta.location.filename().map(|n| n.to_string()) else {
                continue;
            };
            if !is_valid_digest(&name)
                || live.contains(&name)
                || meta.last_modified.timestamp_millis() > before_ms
            {
                continue;
            }
            let touched = ferry_common::locks::lock(&self.touched, "s3 blobs")
                .get(&name)
                .copied();
            if touched.is_some_and(|at| at > before_ms) {
                continue;
            }
            found.push((name, meta.size));
        }
        found.sort();
        found
    }

    pub async fn delete(&self, digest: &str, before_ms: i64) -> Result<u64, BlobError> {
        let Some(size) = self.size_of(digest).await? else {
            return Ok(0);
        };
        if !self.written_before(digest, before_ms).await {
            return Ok(0);
        }
        ferry_common::locks::lock(&self.known, "s3 blobs").remove(digest);
        match self.store.delete(&self.location(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(size),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn begin(&self, digest: &str, size: u64) -> Result<S3Upload, BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        if size > self.max_blob_bytes {
            return Err(BlobError::TooLarge {
                limit: self.max_blob_bytes,
            });
        }
        let sink = if self.size_of(digest).await? == Some(size) {
            self.touch(digest);
            // Already stored: the bytes are still hashed, to answer honestly,
            // but not kept.
            Sink::Discard
        } else if size <= self.part_bytes as u64 {
            Sink::Buffer(Vec::new())
        } else {
            let upload = self.store.put_multipart(&self.location(digest)).await?;
            Sink::Parts(WriteMultipart::new_with_chunk_size(upload, self.part_bytes))
        };
        Ok(S3Upload {
            expected: digest.to_string(),
            announced: size,
            received: 0,
            hasher: blake3::Hasher::new(),
            sink,
            store: self.clone(),
        })
    }

    pub async fn read(
        &self,
        digest: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, BlobError>>), BlobError> {
        if !is_valid_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        let got = match self.store.get(&self.location(digest)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobError::NotFound(digest.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let size = got.meta.size;
        let reading = Reading {
            inner: Some(got.into_stream()),
            hasher: blake3::Hasher::new(),
            expected: digest.to_string(),
            buffer: BytesMut::new(),
        };
        let stream = futures::stream::unfold(Some(reading), |reading| async move {
            let mut reading = reading?;
            match reading.next_frame().await {
                Ok(Some(frame)) => Some((Ok(frame), Some(reading))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        });
        Ok((size, stream.boxed()))
    }

    /// Copies a blob into the spool directory, verified on the way.
    pub async fn spool(&self, digest: &str) -> Result<BlobFile, BlobError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let (_, mut stream) = self.read(digest).await?;
        let path = self
            .spool
            .join(format!("{digest}.{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        // Removed when dropped, on every path out of here too.
        let file = BlobFile {
            path,
            temporary: true,
        };
        let io = |e: std::io::Error| BlobError::Config(format!("{}: {e}", file.path.display()));
        let mut out = tokio::fs::File::create(&file.path).await.map_err(io)?;
        while let Some(frame) = stream.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut out, &frame?)
                .await
                .map_err(io)?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(io)?;
        Ok(file)
    }
}

/// A read under way: frames of [`READ_FRAME`] bytes gathered from the
/// object's stream (which yields small pieces), hashed as they go.
struct Reading {
    inner: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    hasher: blake3::Hasher,
    expected: String,
    buffer: BytesMut,
}

impl Reading {
    /// The next frame; `None` at a verified end; an error on a mismatch.
    async fn next_frame(&mut self) -> Result<Option<Bytes>, BlobError> {
        while let Some(inner) = self.inner.as_mut() {
            match inner.next().await {
                Some(Ok(piece)) => {
                    self.buffer.extend_from_slice(&piece);
                    if self.buffer.len() >= READ_FRAME {
                        let frame = self.buffer.split_to(READ_FRAME).freeze();
                        self.hasher.update(&frame);
                        return Ok(Some(frame));
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => self.inner = None,
            }
        }
        if !self.buffer.is_empty() {
            let frame = std::mem::take(&mut self.buffer).freeze();
            self.hasher.update(&frame);
            return Ok(Some(frame));
        }
        let actual = self.hasher.finalize().to_hex().to_string();
        if actual != self.expected {
            // Once only: the stream ends after the error.
            return Err(BlobError::DigestMismatch {
                expected: std::mem::take(&mut self.expected),
                actual,
            });
        }
        Ok(None)
    }
}

enum Sink {
    /// Stored already: nothing is kept.
    Discard,
    /// A blob of at most one part, kept in memory and sent in one PUT once
    /// it is verified.
    Buffer(Vec<Bytes>),
    /// A multipart upload, completed only once the blob is verified.
    Parts(WriteMultipart),
}

/// A blob being received into the bucket.
pub struct S3Upload {
    expected: String,
    announced: u64,
    received: u64,
    hasher: blake3::Hasher,
    sink: Sink,
    store: S3Blobs,
}

impl S3Upload {
    pub async fn write(&mut self, data: Bytes) -> Result<(), BlobError> {
        self.received += data.len() as u64;
        if self.received > self.announced {
            self.abort().await;
            return Err(BlobError::SizeMismatch {
                announced: self.announced,
                sent: self.received,
            });
        }
        self.hasher.update(&data);
        match &mut self.sink {
            Sink::Discard => {}
            Sink::Buffer(pieces) => pieces.push(data),
            Sink::Parts(parts) => {
                if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    self.abort().await;
                    return Err(e.into());
                }
                parts.put(data);
            }
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<(String, u64), BlobError> {
        let actual =
            match super::verified(self.announced, self.received, &self.hasher, &self.expected) {
                Ok(actual) => actual,
                Err(error) => {
                    self.abort().await;
                    return Err(error);
                }
            };
        let location = self.store.location(&actual);
        match std::mem::replace(&mut self.sink, Sink::Discard) {
            Sink::Discard => {}
            Sink::Buffer(pieces) => {
                let payload: PutPayload = pieces.into_iter().collect();
                self.store.store.put(&location, payload).await?;
            }
            // On an error `finish` aborts the upload itself.
            Sink::Parts(parts) => {
                parts.finish().await?;
            }
        }
        remember(&self.store.known, &actual, self.received);
        Ok((actual, self.received))
    }

    pub async fn abort(&mut self) {
        if let Sink::Parts(parts) = std::mem::replace(&mut self.sink, Sink::Discard) {
            let _ = parts.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn credentials_come_from_the_three_named_variables_only() {
        let found = credentials_from(env(&[
            ("AWS_ACCESS_KEY_ID", "K"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_SESSION_TOKEN", "T"),
        ]))
        .unwrap();
        assert_eq!(
            (found.key_id.as_str(), found.secret_key.as_str()),
            ("K", "S")
        );
        assert_eq!(found.token.as_deref(), Some("T"));
        let error = credentials_from(env(&[("AWS_ACCESS_KEY_ID", "K")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("AWS_SECRET_ACCESS_KEY"), "{error}");
        assert!(
            credentials_from(env(&[
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", "S")
            ]))
            .is_err()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_credentials_file_must_be_private_and_complete() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.toml");
        std::fs::write(&path, "access_key_id = \"K\"\nsecret_access_key = \"S\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_credentials_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("readable by others") && error.contains("644"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let found = read_credentials_file(&path).unwrap();
        assert_eq!((found.key_id.as_str(), found.token), ("K", None));
        std::fs::write(
            &path,
            "access_key_id = \"K\"\nsecret_access_key = \"S\"\nsession_token = \"T\"\n",
        )
        .unwrap();
        assert_eq!(
            read_credentials_file(&path).unwrap().token.as_deref(),
            Some("T")
        );
        std::fs::write(&path, "access_key_id = \"K\"\n").unwrap();
        assert!(read_credentials_file(&path).is_err());
        std::fs::write(
            &path,
            "access_key_id = \"K\"\nsecret_access_key = \"S\"\nregion = \"x\"\n",
        )
        .unwrap();
        assert!(
            read_credentials_file(&path).is_err(),
            "unknown keys are refused"
        );
        // Rotation: a changed file is read again; a broken one keeps the last
        // good credentials.
        let write = |text: &str, age_s: u64| {
            std::fs::write(&path, text).unwrap();
            let file = std::fs::File::options().append(true).open(&path).unwrap();
            let at = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
            file.set_modified(at).unwrap();
        };
        write("access_key_id = \"A\"\nsecret_access_key = \"S\"\n", 30);
        let rotating = FileCredentials::open(&path).unwrap();
        assert_eq!(rotating.current().key_id, "A");
        write("access_key_id = \"B\"\nsecret_access_key = \"S\"\n", 20);
        assert_eq!(rotating.current().key_id, "B");
        write("access_key_id = \"C\"\n", 10);
        assert_eq!(rotating.current().key_id, "B", "a broken file is not taken");
        write("access_key_id = \"D\"\nsecret_access_key = \"S\"\n", 5);
        assert_eq!(rotating.current().key_id, "D");
        let missing = read_credentials_file(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("blobs.credentials_file"), "{missing}");
    }
}
