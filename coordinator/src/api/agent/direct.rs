//! The agent service's presigned-URL calls: with the S3 blob backend a worker
//! reads the blobs its attempts need and uploads their outputs straight from
//! and to the bucket, with URLs the leader signs for one blob and a short
//! while (`blobs::s3` presign), so that coordinators carry only digests. With
//! the local store the answers say `direct = false` and the worker uses
//! `FetchBlob` and `UploadArtifact` as before.
//!
//! Each call is fenced before the store is looked at: URLs to read only for
//! blobs an attempt assigned to the caller needs (the table's `BlobUrls` row,
//! as `FetchBlob`), URLs to upload only for an attempt the state says the
//! caller holds and has not finished (`DirectUpload`).

use ferry_common::pki::Identity;
use ferry_common::proto;
use tonic::Status;

use super::attempt_key;
use crate::access::{Action, Relation, decide};
use crate::api::blob_status;
use crate::blobs::{BlobStore, PreparedUpload};
use crate::node::Node;
use crate::node::authorize::{cert_role, refusal};
use crate::state::{AttemptKey, State};

/// Most digests one `BlobUrls` call may name.
pub const MAX_DIGESTS_PER_CALL: usize = 64;
/// Most ETags one `CompleteUpload` may carry (S3's most parts).
const MAX_PARTS_PER_UPLOAD: usize = 10_000;
/// The longest ETag or upload ID taken.
const MAX_TOKEN_BYTES: usize = 1024;

/// Whether `identity` may have a URL to read `digest`: a worker with an
/// attempt that needs it.
fn may_read(identity: &Identity, digest: &str, state: &State) -> Result<(), String> {
    let relation = Relation {
        named_worker: identity.role == ferry_common::pki::Role::Worker
            && state.worker_needs_blob(&identity.name, digest),
        ..Relation::stranger(cert_role(identity.role))
    };
    decide(Action::BlobUrls, &relation)
        .map_err(|denied| refusal(identity, &denied, &format!("blob {digest}")))
}

/// Whether `identity` may upload for attempt `key`: the worker the state says
/// holds it, while it has not finished.
fn may_upload(identity: &Identity, key: &AttemptKey, state: &State) -> Result<(), String> {
    let holds = state
        .runs
        .get(&key.run)
        .and_then(|run| run.step(&key.step))
        .and_then(|step| step.attempts.iter().find(|a| a.number == key.attempt))
        .is_some_and(|attempt| attempt.worker == identity.name && attempt.finished_ms.is_none());
    let relation = Relation {
        named_worker: identity.role == ferry_common::pki::Role::Worker && holds,
        ..Relation::stranger(cert_role(identity.role))
    };
    decide(Action::DirectUpload, &relation).map_err(|denied| {
        refusal(
            identity,
            &denied,
            &format!("{key}, which is not a running attempt of this worker"),
        )
    })
}

fn expires_in_ms(node: &Node) -> u64 {
    match &node.blobs {
        BlobStore::S3(store) => store.presign_expiry().as_millis() as u64,
        BlobStore::Local(_) => 0,
    }
}

pub(super) async fn blob_urls(
    node: &Node,
    identity: &Identity,
    request: proto::BlobUrlsRequest,
) -> Result<proto::BlobUrlsResponse, Status> {
    node.require_leader()?;
    if request.digests.len() > MAX_DIGESTS_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "{} digests in one call; at most {MAX_DIGESTS_PER_CALL}",
            request.digests.len()
        )));
    }
    for digest in &request.digests {
        node.read(|state| may_read(identity, digest, state))
            .map_err(Status::permission_denied)?;
    }
    let BlobStore::S3(store) = &node.blobs else {
        return Ok(proto::BlobUrlsResponse::default());
    };
    let mut urls = Vec::with_capacity(request.digests.len());
    for digest in request.digests {
        let read = store.read_url(&digest).await.map_err(blob_status)?;
        urls.push(proto::BlobUrl {
            digest,
            size: read.size,
            url: read.url,
        });
    }
    tracing::debug!(worker = %identity.name, blobs = urls.len(), "presigned read URLs issued");
    Ok(proto::BlobUrlsResponse {
        direct: true,
        urls,
        expires_in_ms: expires_in_ms(node),
    })
}

pub(super) async fn prepare_upload(
    node: &Node,
    identity: &Identity,
    request: proto::PrepareUploadRequest,
) -> Result<proto::PrepareUploadResponse, Status> {
    node.require_leader()?;
    let key = attempt_key(request.attempt)?;
    node.read(|state| may_upload(identity, &key, state))
        .map_err(Status::permission_denied)?;
    if request.upload_id.len() > MAX_TOKEN_BYTES {
        return Err(Status::invalid_argument("the upload ID is too long"));
    }
    let BlobStore::S3(store) = &node.blobs else {
        return Ok(proto::PrepareUploadResponse::default());
    };
    let resume = (!request.upload_id.is_empty()).then_some(request.upload_id.as_str());
    let prepared = store
        .prepare_upload(
            &request.digest,
            request.size,
            resume,
            u64::from(request.first_part),
        )
        .await
        .map_err(blob_status)?;
    let mut answer = proto::PrepareUploadResponse {
        direct: true,
        expires_in_ms: expires_in_ms(node),
        ..Default::default()
    };
    match prepared {
        PreparedUpload::Stored => answer.stored = true,
        PreparedUpload::Single { url } => answer.url = url,
        PreparedUpload::Parts {
            upload_id,
            part_bytes,
            parts,
            first_part,
            urls,
        } => {
            answer.upload_id = upload_id;
            answer.part_bytes = part_bytes;
            answer.parts = parts as u32;
            answer.first_part = first_part as u32;
            answer.part_urls = urls;
        }
    }
    tracing::debug!(worker = %identity.name, %key, digest = %request.digest, size = request.size, stored = answer.stored, parts = answer.parts, "presigned upload URLs issued");
    Ok(answer)
}

pub(super) async fn complete_upload(
    node: &Node,
    identity: &Identity,
    request: proto::CompleteUploadRequest,
) -> Result<proto::BlobRef, Status> {
    node.require_leader()?;
    let key = attempt_key(request.attempt)?;
    node.read(|state| may_upload(identity, &key, state))
        .map_err(Status::permission_denied)?;
    if request.part_etags.len() > MAX_PARTS_PER_UPLOAD
        || request.upload_id.len() > MAX_TOKEN_BYTES
        || request.part_etags.iter().any(|t| t.len() > MAX_TOKEN_BYTES)
    {
        return Err(Status::invalid_argument(
            "the upload ID, an ETag or the number of parts is beyond its bound",
        ));
    }
    let BlobStore::S3(store) = &node.blobs else {
        return Err(Status::failed_precondition(
            "the blob store is not a bucket: upload over UploadArtifact",
        ));
    };
    let upload_id = (!request.upload_id.is_empty()).then_some(request.upload_id.as_str());
    if request.abort {
        if let Some(id) = upload_id {
            store
                .abort_upload(&request.digest, id)
                .await
                .map_err(blob_status)?;
        }
        return Ok(proto::BlobRef::default());
    }
    if upload_id.is_some() {
        let (_, parts) = store.upload_parts(request.size);
        if request.part_etags.len() as u64 != parts {
            return Err(Status::invalid_argument(format!(
                "the upload of blob {} names {} parts; a blob of {} bytes has {parts}",
                request.digest,
                request.part_etags.len(),
                request.size
            )));
        }
    }
    store
        .complete_upload(&request.digest, request.size, upload_id, request.part_etags)
        .await
        .map_err(blob_status)?;
    tracing::debug!(worker = %identity.name, %key, digest = %request.digest, size = request.size, "direct upload stored");
    Ok(proto::BlobRef {
        digest: request.digest,
        size: request.size,
    })
}
