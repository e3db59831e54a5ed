//! The gRPC services: thin adapters that check the caller's role, convert wire types
//! into Ferry's own, propose commands or read the state, and map errors to precise
//! status codes.

mod agent;
mod bundles;
mod control;
pub mod limits;
mod peer;
pub mod request_id;

use std::pin::Pin;

use ferry_common::blobio::Frame;
use ferry_common::proto;
use futures::{Stream, StreamExt};
use tonic::{Status, Streaming};

pub use agent::AgentService;
pub use control::ControlService;
pub use peer::PeerService;

use crate::blobs::{BlobError, BlobStore};
use crate::consensus::ConsensusError;
use crate::node::ProposeError;
use crate::state::StateError;

pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(crate) fn propose_status(error: ProposeError) -> Status {
    match error {
        ProposeError::Rejected(error) => state_status(error),
        ProposeError::Consensus(ConsensusError::Refused(message)) => {
            Status::failed_precondition(message)
        }
        // Maybe applied: sending it again is the caller's choice, not a retry's.
        ProposeError::Consensus(ConsensusError::Unknown) => Status::aborted(error.to_string()),
        ProposeError::Consensus(_) | ProposeError::NoLeader(_) | ProposeError::Unanswered(_) => {
            Status::unavailable(error.to_string())
        }
        ProposeError::Denied(message) => Status::permission_denied(message),
        ProposeError::Remote(status) => status,
    }
}

pub(crate) fn state_status(error: StateError) -> Status {
    match error {
        StateError::StepNotFound { .. } | StateError::WorkerNotFound(_) => {
            Status::not_found(error.to_string())
        }
        StateError::RunAlreadyFinished { .. } => Status::failed_precondition(error.to_string()),
        StateError::RunNotFound(_)
        | StateError::ScheduleNotFound(_)
        | StateError::ArtifactNotFound(_)
        | StateError::PinNotFound(_)
        | StateError::ProjectNotFound(_)
        | StateError::NotAProjectMember { .. }
        | StateError::NotAnAdmin(_)
        | StateError::NotAGroupMember { .. }
        | StateError::GroupNotFound(_)
        | StateError::SecretNotFound { .. } => Status::not_found(error.to_string()),
        StateError::NoSuchRerunStep { .. }
        | StateError::InvalidRevocation(_)
        | StateError::InvalidRequest(_) => Status::invalid_argument(error.to_string()),
        StateError::TooManyRevocations(_) => Status::resource_exhausted(error.to_string()),
        StateError::ScheduleExists(_)
        | StateError::PinTaken { .. }
        | StateError::ProjectExists(_) => Status::already_exists(error.to_string()),
        StateError::RunStillRunning { .. }
        | StateError::NothingToRerun(_)
        | StateError::RunCollected(_)
        | StateError::LastProjectOwner { .. } => Status::failed_precondition(error.to_string()),
    }
}

pub fn blob_status(error: BlobError) -> Status {
    match &error {
        BlobError::BadDigest(_) | BlobError::SizeMismatch { .. } => {
            Status::invalid_argument(error.to_string())
        }
        BlobError::DigestMismatch { .. } => Status::data_loss(error.to_string()),
        BlobError::NotFound(_) => Status::not_found(error.to_string()),
        BlobError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
        BlobError::Storage(_) | BlobError::Config(_) => Status::internal(error.to_string()),
    }
}

/// Whether `digest` is shaped like a blob digest (so that a lookup can be tried).
pub(crate) fn is_digest(digest: &str) -> bool {
    ferry_common::digest::is_valid_digest(digest)
}

/// Receives a blob sent as a stream of chunks (the first one names digest and
/// size, or only the size with `digest_last`: then the last one names the
/// digest), verifying it before it becomes visible.
pub async fn receive_blob(
    blobs: &BlobStore,
    chunks: Streaming<proto::Chunk>,
) -> Result<proto::BlobRef, Status> {
    receive_blob_copied(blobs, chunks, &mut NoCopies).await
}

/// Where a blob being received is copied as it arrives (other members), beside
/// the local store.
pub(crate) trait Copies {
    /// The blob's digest (none when the sender names it at the end) and
    /// size, before any frame.
    async fn begin(&mut self, digest: Option<&str>, size: u64);
    /// The next frame, after the local store took it.
    async fn frame(&mut self, frame: &Frame);
    /// Every frame arrived (before the local store makes the blob durable, so
    /// that the copies are made durable meanwhile); `claimed`: the digest the
    /// sender named at the end, if it did.
    async fn end(&mut self, claimed: Option<&str>);
}

/// No copies: the blob goes to the local store only.
pub(crate) struct NoCopies;

impl Copies for NoCopies {
    async fn begin(&mut self, _digest: Option<&str>, _size: u64) {}
    async fn frame(&mut self, _frame: &Frame) {}
    async fn end(&mut self, _claimed: Option<&str>) {}
}

/// [`receive_blob`], handing every frame to `copies` too.
pub(crate) async fn receive_blob_copied(
    blobs: &BlobStore,
    mut chunks: Streaming<proto::Chunk>,
    copies: &mut impl Copies,
) -> Result<proto::BlobRef, Status> {
    let mut first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the upload carried no chunk"))?;
    let named_last = first.digest.is_empty() && first.digest_last;
    let mut upload = if named_last {
        blobs.begin_unnamed(first.size).await
    } else {
        blobs.begin(&first.digest, first.size).await
    }
    .map_err(blob_status)?;
    copies
        .begin((!named_last).then_some(first.digest.as_str()), first.size)
        .await;
    // Only a later chunk names the digest at the end.
    first.digest.clear();
    let mut claimed: Option<String> = None;
    let mut next = Some(first);
    while let Some(mut chunk) = next.take() {
        if claimed.is_some() {
            upload.abort().await;
            return Err(Status::invalid_argument(
                "a chunk followed the one that named the blob's digest",
            ));
        }
        let names =
            (named_last && !chunk.digest.is_empty()).then(|| std::mem::take(&mut chunk.digest));
        for frame in Frame::from_chunk(chunk) {
            // An error abandons the upload (nothing is kept).
            upload
                .write_frame(frame.clone())
                .await
                .map_err(blob_status)?;
            copies.frame(&frame).await;
        }
        claimed = claimed.or(names);
        match chunks.message().await {
            Ok(chunk) => next = chunk,
            Err(status) => {
                upload.abort().await;
                return Err(status);
            }
        }
    }
    copies.end(claimed.as_deref()).await;
    let (digest, size) = upload
        .finish_claimed(claimed.as_deref())
        .await
        .map_err(|error| match error {
            BlobError::DigestMismatch { .. } => Status::invalid_argument(error.to_string()),
            other => blob_status(other),
        })?;
    Ok(proto::BlobRef { digest, size })
}

/// Sends a stored blob as chunks; a digest mismatch found while reading ends the
/// stream with `DataLoss`.
pub(crate) async fn send_blob(
    blobs: &BlobStore,
    digest: &str,
) -> Result<ResponseStream<proto::Chunk>, Status> {
    send_blob_from(blobs, digest, 0).await
}

/// [`send_blob`] from byte `offset` on (a resumed download): the first chunk
/// still names the whole blob's digest and size (an offset past the end sends
/// nothing more: the client then sees its bytes belong to another blob).
/// Holes and zero-filled stretches travel as zero runs.
pub(crate) async fn send_blob_from(
    blobs: &BlobStore,
    digest: &str,
    offset: u64,
) -> Result<ResponseStream<proto::Chunk>, Status> {
    let (size, stream) = blobs
        .read_frames(digest, offset)
        .await
        .map_err(blob_status)?;
    // A first chunk names digest and size even for an empty blob.
    let header = proto::Chunk {
        digest: digest.to_string(),
        size,
        ..Default::default()
    };
    if offset > size {
        // Nothing is read: the client sees its bytes belong to another blob.
        return Ok(Box::pin(futures::stream::iter([Ok(header)])));
    }
    let chunks = stream.map(|item| item.map(Frame::into_chunk).map_err(blob_status));
    Ok(Box::pin(futures::stream::iter([Ok(header)]).chain(chunks)))
}
