//! The peer service: what coordinators call on each other. Every call requires a
//! coordinator certificate from the cluster CA; Raft messages are decoded only
//! after that check (raft-rs's protobuf decoder must not see untrusted input) and
//! within the message size bound.

use std::sync::Arc;

use ferry_common::pki::{Role, identity_from_uri, require_role};
use ferry_common::proto::{self, peer_server::Peer};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, propose_status, receive_blob, send_blob};
use crate::consensus::transport::{MAX_PEER_MESSAGE_BYTES, REMOVED_METADATA, assemble_snapshot};
use crate::node::Node;
use crate::state::Command;

pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> PeerService {
        PeerService { node }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<proto::RaftBatch>>,
    ) -> Result<Response<proto::Ack>, Status> {
        require_role(&request, Role::Coordinator)?;
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            // Only the leader, which knows the committed configuration, tells a
            // member that it was removed (it may have missed the entry that did).
            if self.node.role().is_leader()
                && !self
                    .node
                    .read(|state| state.members.contains_key(&batch.from))
            {
                let mut status = Status::permission_denied(format!(
                    "member {} was removed from the cluster",
                    batch.from
                ));
                status.metadata_mut().insert(
                    REMOVED_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                return Err(status);
            }
            self.node.transport.heard_from(batch.from);
            for bytes in batch.messages {
                let message = Message::parse_from_bytes(&bytes).map_err(|e| {
                    Status::invalid_argument(format!("a raft message does not decode: {e}"))
                })?;
                self.node.step(message).await?;
            }
        }
        Ok(Response::new(proto::Ack {
            accepted: true,
            detail: String::new(),
            retry: false,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<proto::SnapshotChunk>>,
    ) -> Result<Response<proto::Ack>, Status> {
        require_role(&request, Role::Coordinator)?;
        let mut chunks = request.into_inner();
        let mut pieces = Vec::new();
        let mut total_size = 0;
        let mut received = 0u64;
        while let Some(chunk) = chunks.message().await? {
            total_size = chunk.total_size;
            received += chunk.data.len() as u64;
            if received > total_size || total_size > (MAX_PEER_MESSAGE_BYTES as u64) * 64 {
                return Err(Status::invalid_argument(
                    "the snapshot is larger than it announced or than allowed",
                ));
            }
            pieces.push(chunk.data);
        }
        let message = assemble_snapshot(pieces, total_size).map_err(Status::invalid_argument)?;
        tracing::info!(
            from = message.from,
            index = message.get_snapshot().get_metadata().index,
            bytes = total_size,
            "snapshot received"
        );
        self.node.step(message).await?;
        Ok(Response::new(proto::Ack {
            accepted: true,
            detail: String::new(),
            retry: false,
        }))
    }

    async fn forward(
        &self,
        request: Request<proto::ForwardRequest>,
    ) -> Result<Response<proto::ForwardResponse>, Status> {
        require_role(&request, Role::Coordinator)?;
        let forwarded = request.into_inner();
        let caller = identity_from_uri(&forwarded.caller)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let command: Command = serde_json::from_slice(&forwarded.command).map_err(|e| {
            Status::invalid_argument(format!("the forwarded command does not decode: {e}"))
        })?;
        // The leader's own commands (and the wrapping that names a caller to
        // the audit log) are made on the leader, never received.
        if command.leader_only() {
            return Err(Status::permission_denied(
                "a member may not forward the leader's own commands (assignments, schedule \
                 firings, lost workers, timeouts, audit requests and trims)",
            ));
        }
        let request_id = (!forwarded.request_id.is_empty()).then_some(forwarded.request_id);
        if !self.node.role().is_leader() {
            return Err(Status::unavailable(
                "this coordinator is no longer the leader",
            ));
        }
        let outcome = self
            .node
            .propose_forwarded(&caller, command, forwarded.resent, request_id)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(proto::ForwardResponse {
            outcome: serde_json::to_vec(&outcome).expect("outcomes serialize"),
        }))
    }

    async fn put_blob(
        &self,
        request: Request<Streaming<proto::Chunk>>,
    ) -> Result<Response<proto::BlobRef>, Status> {
        require_role(&request, Role::Coordinator)?;
        Ok(Response::new(
            receive_blob(&self.node.blobs, request.into_inner()).await?,
        ))
    }

    type GetBlobStream = ResponseStream<proto::Chunk>;

    async fn get_blob(
        &self,
        request: Request<proto::BlobRef>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        require_role(&request, Role::Coordinator)?;
        Ok(Response::new(
            send_blob(&self.node.blobs, &request.get_ref().digest).await?,
        ))
    }

    async fn has_blob(
        &self,
        request: Request<proto::BlobRef>,
    ) -> Result<Response<proto::HasBlobResponse>, Status> {
        require_role(&request, Role::Coordinator)?;
        let blob = request.into_inner();
        let present = self
            .node
            .blobs
            .holds(&blob.digest, blob.size)
            .await
            .map_err(super::blob_status)?;
        Ok(Response::new(proto::HasBlobResponse { present }))
    }

    async fn describe_self(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::MemberStatus>, Status> {
        require_role(&request, Role::Coordinator)?;
        Ok(Response::new(self.node.member_status().await?))
    }

    async fn live_workers(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::LiveWorkersResponse>, Status> {
        require_role(&request, Role::Coordinator)?;
        let workers = self
            .node
            .local_live_workers()
            .into_iter()
            .map(|(name, (connected, last_heartbeat_ms))| proto::LiveWorker {
                name,
                connected,
                last_heartbeat_ms,
            })
            .collect();
        Ok(Response::new(proto::LiveWorkersResponse { workers }))
    }
}
