//! The peer service: what coordinators call on each other. Every call requires a
//! coordinator certificate from the cluster CA that names a member id
//! (`member-<id>`), and the caller is held to that id: Raft messages are accepted
//! only as coming from it, and every other call (forwarded commands, blob copies,
//! status questions) only from a member of the cluster. Raft messages are decoded
//! only after those checks (raft-rs's protobuf decoder must not see untrusted
//! input) and within the message size bound.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_common::pki::{Identity, Role, identity_from_uri, member_id, require_role};
use ferry_common::proto::{self, peer_server::Peer};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, propose_status, receive_blob, send_blob};
use crate::consensus::transport::{MAX_PEER_MESSAGE_BYTES, REMOVED_METADATA, assemble_snapshot};
use crate::node::Node;
use crate::state::{Command, Member};

pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> PeerService {
        PeerService { node }
    }

    /// The member id the caller's coordinator certificate speaks for
    /// (`PermissionDenied` for a certificate that names none).
    fn calling_member<T>(&self, request: &Request<T>) -> Result<(Identity, u64), Status> {
        let identity = require_role(request, Role::Coordinator)?;
        let id = member_id(&identity).map_err(|reason| refusal(&identity, &reason))?;
        Ok((identity, id))
    }

    /// Like [`PeerService::calling_member`], and the member must be one of the
    /// cluster as this member has applied it (see [`may_call`]).
    fn member_of_cluster<T>(&self, request: &Request<T>) -> Result<u64, Status> {
        let (identity, id) = self.calling_member(request)?;
        self.node
            .read(|state| may_call(id, &state.members, self.node.id))
            .map_err(|reason| refusal(&identity, &reason))?;
        Ok(id)
    }
}

/// Whether member `caller` may make a peer call (other than Raft's) on member
/// `own_id`, given the members `own_id` has applied: only a member of the
/// cluster may. A member that is not in its own list (it has joined but not yet
/// applied its own addition, or it was removed) knows no configuration to hold
/// the caller to, and answers any member certificate: the leader sends a
/// joining learner blobs and asks it who it is before the learner has caught up.
pub fn may_call(caller: u64, members: &BTreeMap<u64, Member>, own_id: u64) -> Result<(), String> {
    if members.contains_key(&caller) || !members.contains_key(&own_id) {
        return Ok(());
    }
    Err(format!(
        "member {caller} is not a member of the cluster (as member {own_id} has applied it: \
         members {})",
        members
            .keys()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Whether Raft messages that say they come from `claimed` may travel on the
/// certificate of member `caller`: only its own.
pub fn may_send_raft_as(caller: u64, claimed: u64) -> Result<(), String> {
    if caller == claimed {
        return Ok(());
    }
    Err(format!(
        "it speaks for member {caller} and may send Raft messages only as member {caller}, \
         not as member {claimed}"
    ))
}

/// `PermissionDenied` naming the certificate and why the peer service refused it.
fn refusal(identity: &Identity, reason: &str) -> Status {
    tracing::warn!(caller = %identity, reason, "refused a peer call");
    Status::permission_denied(format!(
        "the peer service refused the coordinator certificate \"{}\": {reason}",
        identity.name
    ))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<proto::RaftBatch>>,
    ) -> Result<Response<proto::Ack>, Status> {
        let (identity, caller) = self.calling_member(&request)?;
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            may_send_raft_as(caller, batch.from).map_err(|reason| refusal(&identity, &reason))?;
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
                may_send_raft_as(caller, message.from)
                    .map_err(|reason| refusal(&identity, &reason))?;
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
        let (identity, caller) = self.calling_member(&request)?;
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
        may_send_raft_as(caller, message.from).map_err(|reason| refusal(&identity, &reason))?;
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
        self.member_of_cluster(&request)?;
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
        self.member_of_cluster(&request)?;
        Ok(Response::new(
            receive_blob(&self.node.blobs, request.into_inner()).await?,
        ))
    }

    type GetBlobStream = ResponseStream<proto::Chunk>;

    async fn get_blob(
        &self,
        request: Request<proto::BlobRef>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        self.member_of_cluster(&request)?;
        Ok(Response::new(
            send_blob(&self.node.blobs, &request.get_ref().digest).await?,
        ))
    }

    async fn has_blob(
        &self,
        request: Request<proto::BlobRef>,
    ) -> Result<Response<proto::HasBlobResponse>, Status> {
        self.member_of_cluster(&request)?;
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
        self.member_of_cluster(&request)?;
        Ok(Response::new(self.node.member_status().await?))
    }

    async fn live_workers(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::LiveWorkersResponse>, Status> {
        self.member_of_cluster(&request)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[u64]) -> BTreeMap<u64, Member> {
        ids.iter()
            .map(|&id| {
                (
                    id,
                    Member {
                        id,
                        client_address: format!("127.0.0.1:{id}"),
                        peer_address: format!("127.0.0.1:{id}"),
                        learner: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn only_members_may_call_a_member() {
        let three = members(&[1, 2, 3]);
        for caller in [1, 2, 3] {
            may_call(caller, &three, 1).unwrap();
        }
        let refused = may_call(4, &three, 1).unwrap_err();
        assert_eq!(
            refused,
            "member 4 is not a member of the cluster (as member 1 has applied it: members 1, 2, 3)"
        );
        // A member that has not applied its own addition yet (a joining learner,
        // whose state may even be empty) answers any member certificate.
        may_call(1, &members(&[]), 4).unwrap();
        may_call(9, &three, 4).unwrap();
    }

    #[test]
    fn raft_messages_travel_only_as_the_certificate_member() {
        may_send_raft_as(2, 2).unwrap();
        let refused = may_send_raft_as(2, 3).unwrap_err();
        assert!(
            refused.contains("member 2") && refused.contains("not as member 3"),
            "{refused}"
        );
    }

    #[test]
    fn a_refusal_names_the_certificate_and_why() {
        let identity = Identity {
            role: Role::Coordinator,
            name: "member-2".to_string(),
        };
        let status = refusal(&identity, "because");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "the peer service refused the coordinator certificate \"member-2\": because"
        );
    }
}
