//! Raft messages between coordinators over gRPC with mutual TLS.
//!
//! Each peer has two lanes, each with its own outbound queue, task and TCP
//! connection: `control` for the small messages that keep the cluster's
//! leadership (heartbeats, votes, answers) and `bulk` for appends and snapshots,
//! so that a heartbeat never waits behind a large append on a slow or lossy link
//! (TCP delivers one connection's bytes in order, so separate HTTP/2 streams on
//! one connection would not do). A slow or dead peer only fills (and then drops
//! from) its own queues and never blocks the Raft loop or the other peers: Raft
//! retransmits what is lost. Messages are sent in batches on one long-lived client
//! stream per lane; snapshots go in pieces on their own call.
//!
//! A lane's connection that stops answering is redialled within an election
//! timeout: HTTP/2 keep-alive closes a connection whose pings go unanswered
//! (`Timings::peer_keepalive`), and a batch the connection does not take within
//! `Timings::peer_send` (a connection in retransmission back-off) drops the
//! stream and dials a fresh connection. Failures are reported back to the Raft
//! loop (`Feedback`) so that the leader probes an unreachable follower instead of
//! streaming to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use ferry_common::pki::TlsMaterial;
use ferry_common::proto::{self, peer_client::PeerClient};
use ferry_common::timing::Timings;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::{Feedback, Network};

/// Messages waiting for one peer's bulk lane before newer ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages waiting for one peer's control lane (small messages, sent at once).
const CONTROL_QUEUE: usize = 1024;
/// Batches handed to a lane's call before the connection has taken them: few, so
/// that a stuck connection shows within `Timings::peer_send`.
const STREAM_DEPTH: usize = 8;
/// Most messages in one batch on the wire.
const MAX_BATCH_MESSAGES: usize = 512;
/// Pieces a snapshot is cut into.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest gRPC message between peers.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// A call between peers other than the Raft lanes (a blob, a snapshot) that has
/// not answered within this fails.
const PEER_CALL_LIMIT: Duration = Duration::from_secs(30);

/// Set on the leader's answer to a member that is no longer in the cluster.
pub const REMOVED_METADATA: &str = "ferry-member-removed";

/// Which of a peer's two lanes a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Heartbeats, votes, answers, leadership transfer: small and urgent.
    Control,
    /// Appends (entries) and snapshots: large.
    Bulk,
}

impl Lane {
    pub fn of(message: &Message) -> Lane {
        match message.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgSnapshot => Lane::Bulk,
            _ => Lane::Control,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lane::Control => "control",
            Lane::Bulk => "bulk",
        }
    }
}

struct PeerLink {
    address: String,
    /// For calls: forwarding, blobs, status, snapshots.
    client: PeerClient<Channel>,
    control: mpsc::Sender<Message>,
    bulk: mpsc::Sender<Message>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Outbound connections to the other members.
pub struct Transport {
    id: u64,
    tls: TlsMaterial,
    feedback: mpsc::Sender<Feedback>,
    timings: Timings,
    links: Mutex<HashMap<u64, PeerLink>>,
    /// When each peer last sent this member a Raft batch.
    last_contact: Mutex<HashMap<u64, std::time::Instant>>,
}

impl Transport {
    pub fn new(
        id: u64,
        tls: TlsMaterial,
        feedback: mpsc::Sender<Feedback>,
        timings: Timings,
    ) -> Transport {
        Transport {
            id,
            tls,
            feedback,
            timings,
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
        let endpoint = ferry_common::channel::endpoint(address, &self.tls)?
            .connect_timeout(self.timings.peer_connect());
        let channel = endpoint.clone().timeout(PEER_CALL_LIMIT).connect_lazy();
        let client = peer_client(channel);
        // The lanes' connections are their own, with a keep-alive that notices a
        // silent peer within an election timeout, and no call timeout (the
        // stream lives as long as the connection).
        let (interval, timeout) = self.timings.peer_keepalive();
        let lane_endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
        let open_lane = |lane: Lane, depth: usize| {
            let (queue, receiver) = mpsc::channel(depth);
            let task = tokio::spawn(lane_sender(
                LaneLink {
                    from: self.id,
                    to: id,
                    lane,
                    endpoint: lane_endpoint.clone(),
                    calls: client.clone(),
                    feedback: self.feedback.clone(),
                    send_limit: self.timings.peer_send(),
                },
                receiver,
            ));
            (queue, task)
        };
        let (control, control_task) = open_lane(Lane::Control, CONTROL_QUEUE);
        let (bulk, bulk_task) = open_lane(Lane::Bulk, PEER_QUEUE);
        Ok(PeerLink {
            address: address.to_string(),
            client,
            control,
            bulk,
            tasks: [control_task, bulk_task],
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

fn peer_client(channel: Channel) -> PeerClient<Channel> {
    PeerClient::new(channel)
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
}

impl Network for Transport {
    /// Queues messages for their peers' lanes; never waits. A message for a full
    /// queue or an unknown peer is dropped and the peer reported unreachable.
    fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let links = ferry_common::locks::lock(&self.links, "links");
        for message in messages {
            let to = message.to;
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let lane = Lane::of(&message);
            let delivered = links.get(&to).is_some_and(|link| {
                let queue = match lane {
                    Lane::Control => &link.control,
                    Lane::Bulk => &link.bulk,
                };
                queue.try_send(message).is_ok()
            });
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

/// What one lane's sender needs.
struct LaneLink {
    from: u64,
    to: u64,
    lane: Lane,
    /// Dialled again for a fresh connection when the current one is stuck.
    endpoint: Endpoint,
    /// For snapshots, which go on their own call.
    calls: PeerClient<Channel>,
    feedback: mpsc::Sender<Feedback>,
    send_limit: Duration,
}

/// The open call a lane streams its batches on.
struct LaneStream {
    batches: mpsc::Sender<proto::RaftBatch>,
    call: JoinHandle<()>,
}

impl Drop for LaneStream {
    fn drop(&mut self) {
        self.call.abort();
    }
}

/// Sends one lane's queue: batches on a long-lived stream, reconnecting with a
/// short backoff, and on a fresh connection when the current one does not take a
/// batch within the send limit; snapshots on their own call.
async fn lane_sender(link: LaneLink, mut queue: mpsc::Receiver<Message>) {
    let (from, to) = (link.from, link.to);
    let mut client = peer_client(link.endpoint.connect_lazy());
    let mut backoff = Duration::from_millis(20);
    let mut stream: Option<LaneStream> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        let mut pending = Some(first);
        while let Some(message) = pending.take() {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                tokio::spawn(send_snapshot(
                    from,
                    to,
                    link.calls.clone(),
                    message,
                    link.feedback.clone(),
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
            Some(open) if !open.batches.is_closed() => open.batches.clone(),
            _ => {
                let open = open_stream(&link, &client);
                let batches = open.batches.clone();
                stream = Some(open);
                batches
            }
        };
        let batch = proto::RaftBatch {
            from,
            messages: batch,
        };
        match tokio::time::timeout(link.send_limit, outbound.send(batch)).await {
            Ok(Ok(())) => backoff = Duration::from_millis(20),
            Ok(Err(_)) => {
                // The call ended (peer down): what was in flight is lost, and Raft
                // resends. Wait a little before opening the next call.
                stream = None;
                let _ = link.feedback.try_send(Feedback::Unreachable(to));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                // Drop what queued up meanwhile except the newest; Raft will resend.
                while queue.len() > queue.max_capacity() / 2 {
                    if let Ok(dropped) = queue.try_recv()
                        && dropped.get_msg_type() == MessageType::MsgSnapshot
                    {
                        snapshot_lost(&link.feedback, to);
                    }
                }
            }
            Err(_) => {
                // The connection takes nothing (a link dropping packets, a peer
                // cut off): leave it and dial a fresh one for the next batch.
                tracing::warn!(
                    peer = to,
                    lane = link.lane.name(),
                    limit = ?link.send_limit,
                    "the connection to the peer is stuck; dialling it again"
                );
                stream = None;
                client = peer_client(link.endpoint.connect_lazy());
                let _ = link.feedback.try_send(Feedback::Unreachable(to));
            }
        }
    }
}

/// Opens the lane's long-lived call on `client`; its end (an error) is reported
/// to the Raft loop.
fn open_stream(link: &LaneLink, client: &PeerClient<Channel>) -> LaneStream {
    let (batches, receiver) = mpsc::channel(STREAM_DEPTH);
    let mut call_client = client.clone();
    let feedback = link.feedback.clone();
    let (to, lane) = (link.to, link.lane);
    let call = tokio::spawn(async move {
        let result = call_client
            .raft(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await;
        if let Err(status) = result {
            tracing::debug!(peer = to, lane = lane.name(), %status, "raft stream to peer ended");
            if status.metadata().contains_key(REMOVED_METADATA) {
                let _ = feedback.try_send(Feedback::Removed);
            }
            let _ = feedback.try_send(Feedback::Unreachable(to));
        }
    });
    LaneStream { batches, call }
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

#[cfg(test)]
mod lane_tests {
    use super::*;

    #[test]
    fn heartbeats_and_votes_do_not_travel_with_appends() {
        let of = |kind| {
            let mut message = Message::default();
            message.set_msg_type(kind);
            Lane::of(&message)
        };
        for kind in [
            MessageType::MsgHeartbeat,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgRequestVote,
            MessageType::MsgRequestVoteResponse,
            MessageType::MsgRequestPreVote,
            MessageType::MsgRequestPreVoteResponse,
            MessageType::MsgAppendResponse,
            MessageType::MsgTimeoutNow,
            MessageType::MsgReadIndex,
            MessageType::MsgReadIndexResp,
        ] {
            assert_eq!(of(kind), Lane::Control, "{kind:?}");
        }
        for kind in [MessageType::MsgAppend, MessageType::MsgSnapshot] {
            assert_eq!(of(kind), Lane::Bulk, "{kind:?}");
        }
    }
}
