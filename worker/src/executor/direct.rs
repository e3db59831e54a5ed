//! Blob transfers straight between this worker and the bucket (the S3 blob
//! backend), with presigned URLs the leader issues for one blob and a short
//! while: the coordinators carry only digests. The worker holds no S3
//! credentials; it asks the leader (`BlobUrls`, `PrepareUpload`,
//! `CompleteUpload`) and speaks plain HTTPS to the URLs it is given.
//!
//! A download is hashed on its way into the partial file and refused when it
//! does not hash to its digest (an object damaged in the bucket). An upload
//! sends the file it hashed, two parts (of at most `part_bytes`) at a time,
//! each hashed again as it is read, so that a file changed under it is never
//! completed. After a 403 (the URL expired), no answer or a 5xx, the worker
//! asks the leader for a fresh URL and sends again, a few times (a server
//! refusing an expired URL may close the connection before it reads the
//! body, so no answer is treated alike, after a backoff). When the leader answers `direct = false` (the
//! store is local) the caller uses the gRPC path, and the answer is
//! remembered for a minute so that a local cluster pays one small call per
//! minute, not one per blob.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ferry_common::proto;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::session::leader::{Agent, Coordinators};

/// How many fresh URLs one transfer (or one part) asks for after the bucket
/// refused one or did not answer.
const MAX_RENEWALS: u32 = 4;
/// How long a `direct = false` answer is believed.
const NOT_OFFERED_FOR_MS: i64 = 60_000;
/// How long a call to the leader for URLs may take.
const URL_CALL_DEADLINE: Duration = Duration::from_secs(30);
/// How long an upload keeps trying through coordinator failovers.
const UPLOAD_PATIENCE: Duration = Duration::from_secs(120);
/// Parts of one upload sent at once (each held in memory while it goes).
const PARTS_IN_FLIGHT: usize = 2;

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
/// Until when (milliseconds since the epoch) the leader is believed to offer
/// no direct transfers.
static NOT_OFFERED_UNTIL_MS: AtomicI64 = AtomicI64::new(0);

/// Why the HTTP client for the bucket cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum BucketTlsError {
    #[error("bucket_ca {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the HTTP client for the bucket: {0}")]
    Client(String),
}

/// Makes the HTTP client for the bucket: the system's CA certificates, plus
/// those of `ca_file` (PEM) when given (`bucket_ca` in worker.toml, for an
/// S3-compatible server with a private CA). Called once at start; without
/// it, the system's certificates only.
pub fn configure(ca_file: Option<&Path>) -> Result<(), BucketTlsError> {
    let client = build_client(ca_file)?;
    let _ = CLIENT.set(client);
    Ok(())
}

fn build_client(ca_file: Option<&Path>) -> Result<reqwest::Client, BucketTlsError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // No overall deadline (a part may be large on a slow link), but a
        // connection that stops moving is given up.
        .read_timeout(Duration::from_secs(60));
    if let Some(path) = ca_file {
        let failed = |reason: String| BucketTlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| failed(e.to_string()))?;
        if certificates.is_empty() {
            return Err(failed("holds no PEM certificate".into()));
        }
        builder = builder.tls_certs_merge(certificates);
    }
    builder
        .build()
        .map_err(|e| BucketTlsError::Client(e.to_string()))
}

fn client() -> &'static reqwest::Client {
    CLIENT.get_or_init(|| build_client(None).expect("an HTTP client with the system's roots"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn offered() -> bool {
    NOT_OFFERED_UNTIL_MS.load(Ordering::Relaxed) <= now_ms()
}

fn not_offered() {
    NOT_OFFERED_UNTIL_MS.store(now_ms() + NOT_OFFERED_FOR_MS, Ordering::Relaxed);
}

/// Whether the blob store is each coordinator's own (so that an upload goes
/// over `UploadArtifact`, which takes a digest named at the end): known
/// when the leader said so lately, else asked with a `PrepareUpload` that
/// names no digest (a local store answers `direct = false` before looking
/// at it; a bucket refuses it).
pub(super) async fn is_local_store(
    coordinators: &Coordinators,
    attempt: &proto::AttemptRef,
) -> bool {
    if !offered() {
        return true;
    }
    let request = proto::PrepareUploadRequest {
        attempt: Some(attempt.clone()),
        ..Default::default()
    };
    let give_up = tokio::time::Instant::now() + PROBE_PATIENCE;
    let answer = coordinators
        .call(Some(give_up), move |mut agent| {
            let request = request.clone();
            async move { agent.prepare_upload(request).await }
        })
        .await;
    match answer {
        Ok(prepared) if !prepared.direct => {
            not_offered();
            true
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            not_offered();
            true
        }
        _ => false,
    }
}

/// How long [`is_local_store`] keeps asking through failovers.
const PROBE_PATIENCE: Duration = Duration::from_secs(10);

/// Why a direct download failed (staging turns it into its own error).
#[derive(Debug)]
pub(super) enum DownloadError {
    /// The leader gave no URL, or the bucket refused the download.
    Fetch(tonic::Status),
    /// The bytes hash to `actual`, not to the digest asked for.
    Corrupt { actual: String },
    /// The blob is larger than `limit` (a code bundle).
    TooLarge { limit: u64 },
    /// Writing the partial file failed.
    Io(String),
}

/// What one HTTP request to the bucket ended with, when not a success.
#[derive(Debug)]
enum Refusal {
    /// The bucket answered 403: the URL expired (or was not signed for this).
    Forbidden(String),
    /// Worth sending again: no answer, or a 5xx.
    Transient(String),
    /// Anything else (404, 400, ...).
    Final(String),
}

impl Refusal {
    fn message(&self) -> &str {
        match self {
            Refusal::Forbidden(m) | Refusal::Transient(m) | Refusal::Final(m) => m,
        }
    }
}

/// The `<Code>` and `<Message>` of an S3 error body, for a message.
fn s3_error_text(status: reqwest::StatusCode, body: &str) -> String {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        Some(body[start..end].trim().to_string())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("HTTP {status}: {code}: {message}"),
        (Some(code), None) => format!("HTTP {status}: {code}"),
        _ => format!("HTTP {status}"),
    }
}

/// A transport error in words, without its URL: a presigned URL is a bearer
/// token until it expires, and messages end up in logs and attempt reasons.
fn unsigned(error: reqwest::Error) -> String {
    error.without_url().to_string()
}

/// Classifies a response that is not a success.
async fn refusal_of(response: reqwest::Response) -> Refusal {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let text = s3_error_text(status, &body);
    if status == reqwest::StatusCode::FORBIDDEN {
        Refusal::Forbidden(text)
    } else if status.is_server_error() {
        Refusal::Transient(text)
    } else {
        Refusal::Final(text)
    }
}

/// The fault point `worker.stale-presigned-url` (debug builds; armed with
/// `return` by SIGUSR1, see `ferry_common::faults`): the first URL of each
/// transfer is used only once it has expired, as by a worker paused that
/// long, so that a test sees the bucket refuse it and the worker ask again.
async fn stale_when_armed(expires_in_ms: u64) {
    if ferry_common::faults::should_return("worker.stale-presigned-url") {
        tokio::time::sleep(Duration::from_millis(expires_in_ms + 1500)).await;
    }
}

fn backoff(try_number: u32) -> Duration {
    Duration::from_millis(250 << try_number.min(4))
}

/// After a request failed with `refusal`: whether to ask for a fresh URL and
/// send again (a 403: the URL expired; no answer or a 5xx: after a backoff,
/// since a server refusing an expired URL may close the connection before it
/// reads the body). `renewals` counts the fresh URLs asked for so far.
async fn try_again(refusal: &Refusal, renewals: &mut u32, digest: &str) -> bool {
    if matches!(refusal, Refusal::Final(_)) || *renewals >= MAX_RENEWALS {
        return false;
    }
    *renewals += 1;
    if matches!(refusal, Refusal::Transient(_)) {
        tokio::time::sleep(backoff(*renewals)).await;
    }
    tracing::info!(%digest, why = refusal.message(), "the bucket refused a presigned URL or did not answer; asking the leader for a new URL");
    true
}

/// One try at downloading `digest` from the bucket into `partial`, verified
/// against the digest: `Ok(false)` when the leader offers no direct transfer
/// (use `FetchBlob`).
pub(super) async fn download(
    agent: &Agent,
    digest: &str,
    partial: &Path,
    max_bytes: Option<u64>,
) -> Result<bool, DownloadError> {
    if !offered() {
        return Ok(false);
    }
    let fetch = DownloadError::Fetch;
    let mut renewals = 0;
    loop {
        let request = proto::BlobUrlsRequest {
            digests: vec![digest.to_string()],
        };
        let answer = tokio::time::timeout(URL_CALL_DEADLINE, agent.clone().blob_urls(request))
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(
                    "no answer to BlobUrls in 30 s",
                ))
            });
        let answer = match answer {
            Ok(answer) => answer.into_inner(),
            // A coordinator older than this worker.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                not_offered();
                return Ok(false);
            }
            Err(status) => return Err(fetch(status)),
        };
        if !answer.direct {
            not_offered();
            return Ok(false);
        }
        let url = answer
            .urls
            .into_iter()
            .find(|url| url.digest == digest)
            .ok_or_else(|| fetch(tonic::Status::internal("the leader sent no URL for it")))?;
        if let Some(limit) = max_bytes
            && url.size > limit
        {
            return Err(DownloadError::TooLarge { limit });
        }
        if renewals == 0 {
            stale_when_armed(answer.expires_in_ms).await;
        }
        match get_into(&url.url, digest, partial, max_bytes).await? {
            Ok(()) => {
                tracing::debug!(%digest, size = url.size, "blob downloaded directly from the bucket");
                return Ok(true);
            }
            Err(refusal) => {
                if !try_again(&refusal, &mut renewals, digest).await {
                    return Err(fetch(tonic::Status::aborted(format!(
                        "the bucket refused the download: {}",
                        refusal.message()
                    ))));
                }
            }
        }
    }
}

/// GETs `url` into `partial` (created afresh each try), hashing on the way:
/// the outer error is this worker's (a write failed, the bytes do not match,
/// too large), the inner one the bucket's answer.
async fn get_into(
    url: &str,
    digest: &str,
    partial: &Path,
    max_bytes: Option<u64>,
) -> Result<Result<(), Refusal>, DownloadError> {
    let io = |what: &str, e: std::io::Error| {
        DownloadError::Io(format!("cannot {what} {}: {e}", partial.display()))
    };
    let response = match client().get(url).send().await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => return Ok(Err(refusal_of(response).await)),
        Err(error) => return Ok(Err(Refusal::Transient(unsigned(error)))),
    };
    let file = tokio::fs::File::create(partial)
        .await
        .map_err(|e| io("create", e))?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut received = 0u64;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(error) => {
                return Ok(Err(Refusal::Transient(format!(
                    "cut off: {}",
                    unsigned(error)
                ))));
            }
        };
        received += piece.len() as u64;
        if let Some(limit) = max_bytes
            && received > limit
        {
            return Err(DownloadError::TooLarge { limit });
        }
        hasher.update(&piece);
        file.write_all(&piece).await.map_err(|e| io("write", e))?;
    }
    file.flush().await.map_err(|e| io("write", e))?;
    let actual = hasher.finalize().to_hex().to_string();
    if actual != digest {
        return Err(DownloadError::Corrupt { actual });
    }
    Ok(Ok(()))
}

/// Uploads `path` (whose BLAKE3 is `digest`, `size` bytes) for `attempt`
/// straight to the bucket: `Ok(false)` when the leader offers no direct
/// transfer (use `UploadArtifact`).
pub(super) async fn upload(
    coordinators: &Coordinators,
    attempt: &proto::AttemptRef,
    path: &Path,
    digest: &str,
    size: u64,
) -> Result<bool, String> {
    if !offered() {
        return Ok(false);
    }
    let give_up = tokio::time::Instant::now() + UPLOAD_PATIENCE;
    let prepare = |upload_id: String, first_part: u32| {
        let request = proto::PrepareUploadRequest {
            attempt: Some(attempt.clone()),
            digest: digest.to_string(),
            size,
            upload_id,
            first_part,
        };
        coordinators.call(Some(give_up), move |mut agent| {
            let request = request.clone();
            async move { agent.prepare_upload(request).await }
        })
    };
    let prepared = match prepare(String::new(), 1).await {
        Ok(prepared) => prepared,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            not_offered();
            return Ok(false);
        }
        Err(status) => return Err(status.message().to_string()),
    };
    if !prepared.direct {
        not_offered();
        return Ok(false);
    }
    if prepared.stored {
        tracing::debug!(%digest, size, "blob already in the bucket");
        return Ok(true);
    }
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let complete = |upload_id: String, part_etags: Vec<String>, abort: bool| {
        let request = proto::CompleteUploadRequest {
            attempt: Some(attempt.clone()),
            digest: digest.to_string(),
            size,
            upload_id,
            part_etags,
            abort,
        };
        coordinators.call(Some(give_up), move |mut agent| {
            let request = request.clone();
            async move { agent.complete_upload(request).await }
        })
    };
    if prepared.upload_id.is_empty() {
        // One request: the bytes are read and checked before anything is sent.
        let bytes = read_part(&mut file, size, &mut hasher).await?;
        check_digest(&hasher, digest, path)?;
        let mut url = prepared.url;
        let mut renewals = 0;
        stale_when_armed(prepared.expires_in_ms).await;
        loop {
            match put(&url, bytes.clone()).await {
                Ok(_) => break,
                Err(refusal) if try_again(&refusal, &mut renewals, digest).await => {
                    url = prepare(String::new(), 1)
                        .await
                        .map_err(|s| s.message().to_string())?
                        .url;
                    if url.is_empty() {
                        // Stored meanwhile (by another attempt).
                        return Ok(true);
                    }
                }
                Err(refusal) => {
                    return Err(format!(
                        "the bucket refused the upload of blob {digest}: {}",
                        refusal.message()
                    ));
                }
            }
        }
        complete(String::new(), Vec::new(), false)
            .await
            .map_err(|s| s.message().to_string())?;
        tracing::debug!(%digest, size, "blob uploaded directly to the bucket");
        return Ok(true);
    }
    let upload_id = prepared.upload_id.clone();
    let sent = send_parts(&mut file, &mut hasher, prepared, &prepare, digest, size).await;
    let sent = sent.and_then(|etags| check_digest(&hasher, digest, path).map(|()| etags));
    match sent {
        Ok(etags) => {
            complete(upload_id, etags, false)
                .await
                .map_err(|s| s.message().to_string())?;
            tracing::debug!(%digest, size, "blob uploaded directly to the bucket in parts");
            Ok(true)
        }
        Err(error) => {
            // Nothing of it becomes visible; the parts are dropped now.
            let _ = complete(upload_id, Vec::new(), true).await;
            Err(error)
        }
    }
}

/// Sends every part of a multipart upload, [`PARTS_IN_FLIGHT`] at a time
/// (read and hashed in order, so at most that many parts are in memory),
/// asking for more URLs as needed; returns the parts' ETags in order.
async fn send_parts<F, Fut>(
    file: &mut tokio::fs::File,
    hasher: &mut blake3::Hasher,
    prepared: proto::PrepareUploadResponse,
    prepare: &F,
    digest: &str,
    size: u64,
) -> Result<Vec<String>, String>
where
    F: Fn(String, u32) -> Fut,
    Fut: Future<Output = Result<proto::PrepareUploadResponse, tonic::Status>>,
{
    let expires_in_ms = prepared.expires_in_ms;
    let part_bytes = prepared.part_bytes.max(1);
    let parts = prepared.parts;
    let upload_id = prepared.upload_id;
    let mut first = prepared.first_part;
    let mut urls = prepared.part_urls;
    let mut etags = Vec::with_capacity(parts as usize);
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut left = size;
    for number in 1..=parts {
        if in_flight.len() >= PARTS_IN_FLIGHT {
            let etag = in_flight.next().await.expect("a part in flight")?;
            etags.push(etag);
        }
        let length = left.min(part_bytes);
        let bytes = read_part(file, length, hasher).await?;
        left -= length;
        let index = number.checked_sub(first).map(|i| i as usize);
        let url = match index.and_then(|i| urls.get(i)) {
            Some(url) => url.clone(),
            None => {
                let more = prepare(upload_id.clone(), number)
                    .await
                    .map_err(|s| s.message().to_string())?;
                (first, urls) = (more.first_part, more.part_urls);
                match urls.first() {
                    Some(url) if first == number => url.clone(),
                    _ => return Err(format!("the leader sent no URL for part {number}")),
                }
            }
        };
        let stale_for = (number == 1).then_some(expires_in_ms);
        in_flight.push_back(send_part(
            url, bytes, number, &upload_id, prepare, digest, stale_for,
        ));
    }
    while let Some(etag) = in_flight.next().await {
        etags.push(etag?);
    }
    Ok(etags)
}

/// Sends part `number` to `url`, asking for a fresh URL after a 403 or no
/// answer; returns its ETag. `stale_for`: see [`stale_when_armed`].
async fn send_part<F, Fut>(
    mut url: String,
    bytes: bytes::Bytes,
    number: u32,
    upload_id: &str,
    prepare: &F,
    digest: &str,
    stale_for: Option<u64>,
) -> Result<String, String>
where
    F: Fn(String, u32) -> Fut,
    Fut: Future<Output = Result<proto::PrepareUploadResponse, tonic::Status>>,
{
    if let Some(expires_in_ms) = stale_for {
        stale_when_armed(expires_in_ms).await;
    }
    let mut renewals = 0;
    loop {
        match put(&url, bytes.clone()).await {
            Ok(etag) => return Ok(etag),
            Err(refusal) if try_again(&refusal, &mut renewals, digest).await => {
                let fresh = prepare(upload_id.to_string(), number)
                    .await
                    .map_err(|s| s.message().to_string())?;
                url = fresh
                    .part_urls
                    .into_iter()
                    .next()
                    .filter(|_| fresh.first_part == number)
                    .ok_or_else(|| format!("the leader sent no URL for part {number}"))?;
            }
            Err(refusal) => {
                return Err(format!(
                    "the bucket refused part {number} of blob {digest}: {}",
                    refusal.message()
                ));
            }
        }
    }
}

/// Reads the next `length` bytes of `file`, hashing them.
async fn read_part(
    file: &mut tokio::fs::File,
    length: u64,
    hasher: &mut blake3::Hasher,
) -> Result<bytes::Bytes, String> {
    let mut buffer = vec![0u8; length as usize];
    file.read_exact(&mut buffer)
        .await
        .map_err(|e| format!("cannot read the file to upload: {e} (did it shrink?)"))?;
    hasher.update(&buffer);
    Ok(buffer.into())
}

fn check_digest(hasher: &blake3::Hasher, digest: &str, path: &Path) -> Result<(), String> {
    let actual = hasher.finalize().to_hex().to_string();
    if actual != digest {
        return Err(format!(
            "{} changed while it was uploaded (it hashed to {digest}, now to {actual})",
            path.display()
        ));
    }
    Ok(())
}

/// PUTs `bytes` to `url` once; returns the answer's ETag.
async fn put(url: &str, bytes: bytes::Bytes) -> Result<String, Refusal> {
    match client().put(url).body(bytes).send().await {
        Ok(response) if response.status().is_success() => Ok(response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()),
        Ok(response) => Err(refusal_of(response).await),
        Err(error) => Err(Refusal::Transient(unsigned(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_are_told_by_their_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>\
                    <Message>Request has expired</Message></Error>";
        assert_eq!(
            s3_error_text(reqwest::StatusCode::FORBIDDEN, body),
            "HTTP 403 Forbidden: AccessDenied: Request has expired"
        );
        assert_eq!(
            s3_error_text(reqwest::StatusCode::NOT_FOUND, "<Code>NoSuchKey</Code>"),
            "HTTP 404 Not Found: NoSuchKey"
        );
        assert_eq!(
            s3_error_text(reqwest::StatusCode::BAD_GATEWAY, "not xml"),
            "HTTP 502 Bad Gateway"
        );
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = build_client(Some(&empty)).unwrap_err().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        let missing = build_client(Some(&dir.path().join("none.pem")))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("bucket_ca"), "{missing}");
        assert!(build_client(None).is_ok());
    }
}
