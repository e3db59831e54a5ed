//! Raft messages between coordinators over gRPC with mutual TLS.
//!
//! Each peer has its own outbound queue and task, so a slow or dead peer only
//! fills (and then drops from) its own queue and never blocks the Raft loop or the
//! other peers: Raft retransmits what is lost. Messages are sent in batches on one
//! long-lived client stream per peer; snapshots go in pieces on their own call.
//! Failures are reported back to the Raft loop (`Feedback`) so that the leader
//! probes an unreachable follower instead of streaming to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use ferry_common::pki::TlsMaterial;
use ferry_common::proto::{self, peer_client::PeerClient};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{Feedback, Network};

/// Messages waiting for one peer before newer ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Most messages in one batch on the wire.
const MAX_BATCH_MESSAGES: usize = 512;
/// Pieces a snapshot is cut into.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest gRPC message between peers.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Set on the leader's answer to a member that is no longer in the cluster.
pub const REMOVED_METADATA: &str = "ferry-member-removed";

struct PeerLink {
    address: String,
    client: PeerClient<Channel>,
    queue: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Outbound connections to the other members.
pub struct Transport {
    id: u64,
    tls: TlsMaterial,
    feedback: mpsc::Sender<Feedback>,
    links: Mutex<HashMap<u64, PeerLink>>,
    /// When each peer last sent this member a Raft batch.
    last_contact: Mutex<HashMap<u64, std::time::Instant>>,
}

impl Transport {
    pub fn new(id: u64, tls: TlsMaterial, feedback: mpsc::Sender<Feedback>) -> Transport {
        Transport {
            id,
            tls,
            feedback,
            links: Mutex::new(HashMap::new()),
            last_contact: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `peer` was heard from just now.
    pub fn heard_from(&self, peer: u64) {
        ferry_common::locks::lock(&self.last_contact, "contact")
            .insert(peer, std::time::Instant::now());
    }

    /// How long ago `peer` was last heard from.
    pub fn since_contact(&self, peer: u64) -> Option<Duration> {
        ferry_common::locks::lock(&self.last_contact, "contact")
            .get(&peer)
            .map(|at| at.elapsed())
    }

    /// Opens links to new members, re-opens those whose address changed, and
    /// closes those that left.
    pub fn set_members(&self, peers: &BTreeMap<u64, String>) {
        let mut links = ferry_common::locks::lock(&self.links, "links");
        links.retain(|id, link| {
            peers
                .get(id)
                .is_some_and(|address| *address == link.address)
        });
        for (&id, address) in peers {
            if id == self.id || links.contains_key(&id) {
                continue;
            }
            match self.open(id, address) {
                Ok(link) => {
                    links.insert(id, link);
                }
                Err(error) => {
                    tracing::error!(member = id, %address, %error, "cannot open a link to a peer")
                }
            }
        }
    }

    fn open(
        &self,
        id: u64,
        address: &str,
    ) -> Result<PeerLink, ferry_common::channel::ChannelError> {
        let channel = ferry_common::channel::endpoint(address, &self.tls)?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        let client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let (queue, receiver) = mpsc::channel(PEER_QUEUE);
        let task = tokio::spawn(peer_sender(
            self.id,
            id,
            client.clone(),
            receiver,
            self.feedback.clone(),
        ));
        Ok(PeerLink {
            address: address.to_string(),
            client,
            queue,
            task,
        })
    }

    /// A client for calls to one peer (forwarding, blobs, status).
    pub fn client(&self, id: u64) -> Option<PeerClient<Channel>> {
        ferry_common::locks::lock(&self.links, "links")
            .get(&id)
            .map(|link| link.client.clone())
    }

    /// Clients for every other member.
    pub fn clients(&self) -> Vec<(u64, PeerClient<Channel>)> {
        ferry_common::locks::lock(&self.links, "links")
            .iter()
            .map(|(id, link)| (*id, link.client.clone()))
            .collect()
    }
}

impl Network for Transport {
    /// Queues messages for their peers; never waits. A message for a full queue or
    /// an unknown peer is dropped and the peer reported unreachable.
    fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let links = ferry_common::locks::lock(&self.links, "links");
        for message in messages {
            let to = message.to;
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = links
                .get(&to)
                .is_some_and(|link| link.queue.try_send(message).is_ok());
            if !delivered {
                let _ = self.feedback.try_send(Feedback::Unreachable(to));
                if snapshot {
                    snapshot_lost(&self.feedback, to);
                }
            }
        }
    }

    fn set_peers(&self, peers: &BTreeMap<u64, String>) {
        self.set_members(peers);
    }
}

/// Sends one peer's queue: batches on a long-lived stream, reconnecting with a
/// short backoff; snapshots on their own call.
async fn peer_sender(
    from: u64,
    to: u64,
    client: PeerClient<Channel>,
    mut queue: mpsc::Receiver<Message>,
    feedback: mpsc::Sender<Feedback>,
) {
    let mut backoff = Duration::from_millis(20);
    let mut stream: Option<mpsc::Sender<proto::RaftBatch>> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        let mut pending = Some(first);
        while let Some(message) = pending.take() {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                tokio::spawn(send_snapshot(
                    from,
                    to,
                    client.clone(),
                    message,
                    feedback.clone(),
                ));
            } else {
                batch.push(message.write_to_bytes().expect("raft messages encode"));
            }
            if batch.len() < MAX_BATCH_MESSAGES {
                pending = queue.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let outbound = match &stream {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, receiver) = mpsc::channel(64);
                let mut call_client = client.clone();
                let feedback = feedback.clone();
                tokio::spawn(async move {
                    let result = call_client
                        .raft(tokio_stream::wrappers::ReceiverStream::new(receiver))
                        .await;
                    if let Err(status) = result {
                        tracing::debug!(peer = to, %status, "raft stream to peer ended");
                        if status.metadata().contains_key(REMOVED_METADATA) {
                            let _ = feedback.try_send(Feedback::Removed);
                        }
                        let _ = feedback.try_send(Feedback::Unreachable(to));
                    }
                });
                stream = Some(sender.clone());
                sender
            }
        };
        let batch = proto::RaftBatch {
            from,
            messages: batch,
        };
        if outbound.send(batch).await.is_err() {
            // The call ended (peer down): what was in flight is lost, and Raft
            // resends. Wait a little before opening the next call.
            stream = None;
            let _ = feedback.try_send(Feedback::Unreachable(to));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            // Drop what queued up meanwhile except the newest; Raft will resend.
            while queue.len() > PEER_QUEUE / 2 {
                if let Ok(dropped) = queue.try_recv()
                    && dropped.get_msg_type() == MessageType::MsgSnapshot
                {
                    snapshot_lost(&feedback, to);
                }
            }
        } else {
            backoff = Duration::from_millis(20);
        }
    }
}

/// Tells the Raft loop that a snapshot for `to` was dropped before it was sent:
/// raft-rs keeps a follower waiting for a snapshot until it hears how it went, so
/// a snapshot lost without a word would leave that follower behind for good.
fn snapshot_lost(feedback: &mpsc::Sender<Feedback>, to: u64) {
    let _ = feedback.try_send(Feedback::SnapshotSent { to, ok: false });
}

async fn send_snapshot(
    from: u64,
    to: u64,
    mut client: PeerClient<Channel>,
    message: Message,
    feedback: mpsc::Sender<Feedback>,
) {
    let bytes = message.write_to_bytes().expect("raft messages encode");
    let total_size = bytes.len() as u64;
    tracing::info!(
        peer = to,
        bytes = total_size,
        index = message.get_snapshot().get_metadata().index,
        "sending a snapshot"
    );
    let chunks: Vec<proto::SnapshotChunk> = bytes
        .chunks(SNAPSHOT_CHUNK_BYTES)
        .map(|piece| proto::SnapshotChunk {
            from,
            data: piece.to_vec(),
            total_size,
        })
        .collect();
    let ok = match client.snapshot(futures::stream::iter(chunks)).await {
        Ok(_) => true,
        Err(status) => {
            tracing::warn!(peer = to, %status, "snapshot not delivered");
            false
        }
    };
    let _ = feedback.send(Feedback::SnapshotSent { to, ok }).await;
}

/// Reassembles a snapshot message from its pieces, refusing more than announced.
pub fn assemble_snapshot(pieces: Vec<Vec<u8>>, total_size: u64) -> Result<Message, String> {
    let received: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    if received != total_size {
        return Err(format!(
            "snapshot incomplete: {received} of {total_size} bytes arrived"
        ));
    }
    let bytes = pieces.concat();
    let message =
        Message::parse_from_bytes(&bytes).map_err(|e| format!("snapshot does not decode: {e}"))?;
    if message.get_msg_type() != MessageType::MsgSnapshot {
        return Err("the snapshot call carried a message that is not a snapshot".to_string());
    }
    Ok(message)
}
