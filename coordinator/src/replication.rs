//! Blobs on a majority. Code bundles, artifacts and step logs do not travel
//! through Raft; instead a blob is copied to a majority of coordinators before the
//! upload is acknowledged, and every command that references a blob is proposed
//! only after that acknowledgement. So whichever majority elects the next leader,
//! at least one of its members holds every blob a committed record names, and any
//! member that lacks a blob copies it from a peer when it is read (verified by
//! digest like any upload).

use std::time::Duration;

use ferry_common::blobio::Frame;
use ferry_common::proto;
use futures::StreamExt;
use tonic::Status;

use crate::api::{Copies, blob_status, receive_blob, receive_blob_copied};
use crate::blobs::BlobStore;
use crate::node::Node;

/// Longest a peer may take to confirm it has, or to receive, one blob.
const PEER_BLOB_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a peer may take to say whether it holds a blob: a member that cannot
/// answer that quickly is treated as down for this copy.
const PEER_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn copy_to_peer(
    blobs: BlobStore,
    mut client: proto::peer_client::PeerClient<tonic::transport::Channel>,
    digest: String,
    size: u64,
) -> futures::future::BoxFuture<'static, Result<(), Status>> {
    Box::pin(async move {
        let reference = proto::BlobRef {
            digest: digest.to_string(),
            size,
        };
        let probe = tokio::time::timeout(PEER_PROBE_TIMEOUT, client.has_blob(reference)).await;
        let probe = probe.map_err(|_| Status::unavailable("the peer did not answer"))?;
        if probe?.into_inner().present {
            return Ok(());
        }
        let (size, stream) = blobs.read_frames(&digest, 0).await.map_err(blob_status)?;
        // The blob is read into a small queue that the call drains; a read error
        // ends the stream early and the peer then refuses the short blob.
        let (sender, receiver) = tokio::sync::mpsc::channel::<proto::Chunk>(8);
        let produce = async move {
            let mut stream = stream;
            let header = proto::Chunk {
                digest: digest.clone(),
                size,
                ..Default::default()
            };
            if sender.send(header).await.is_err() {
                return;
            }
            while let Some(Ok(frame)) = stream.next().await {
                if sender.send(frame.into_chunk()).await.is_err() {
                    return;
                }
            }
        };
        let (_, sent) = tokio::join!(
            produce,
            client.put_blob(tokio_stream::wrappers::ReceiverStream::new(receiver))
        );
        sent?;
        Ok(())
    })
}

/// How long a member may leave a frame of a blob being received unread before
/// it is dropped from the copies made during the upload (it gets its copy
/// afterwards, if a majority still needs it).
const LANE_PATIENCE: Duration = Duration::from_secs(5);
/// Frames queued for one member during an upload.
const LANE_FRAMES: usize = 8;

/// Copies of a blob sent to the other members while it is received: one
/// `PutBlob` stream per member, fed frame by frame. A member that fails or
/// falls behind is dropped (its stream ends short, and it refuses the blob).
struct PeerCopies {
    peers: Vec<(
        u64,
        proto::peer_client::PeerClient<tonic::transport::Channel>,
    )>,
    lanes: Vec<Lane>,
}

struct Lane {
    peer: u64,
    sender: Option<tokio::sync::mpsc::Sender<proto::Chunk>>,
    call: tokio::task::JoinHandle<Result<proto::BlobRef, Status>>,
}

impl Copies for PeerCopies {
    async fn end(&mut self, claimed: Option<&str>) {
        // A blob named at the end: each member checks its own hash against
        // the digest the sender named, as this one does.
        if let Some(claimed) = claimed {
            let last = proto::Chunk {
                digest: claimed.to_string(),
                ..Default::default()
            };
            self.send_all(|| last.clone()).await;
        }
        PeerCopies::end(self);
    }

    async fn begin(&mut self, digest: Option<&str>, size: u64) {
        for (peer, mut client) in std::mem::take(&mut self.peers) {
            let (sender, receiver) = tokio::sync::mpsc::channel(LANE_FRAMES);
            let header = proto::Chunk {
                digest: digest.unwrap_or_default().to_string(),
                size,
                digest_last: digest.is_none(),
                ..Default::default()
            };
            if sender.try_send(header).is_err() {
                continue;
            }
            let call = tokio::spawn(async move {
                client
                    .put_blob(tokio_stream::wrappers::ReceiverStream::new(receiver))
                    .await
                    .map(tonic::Response::into_inner)
            });
            self.lanes.push(Lane {
                peer,
                sender: Some(sender),
                call,
            });
        }
    }

    async fn frame(&mut self, frame: &Frame) {
        self.send_all(|| frame.clone().into_chunk()).await;
    }
}

impl PeerCopies {
    /// Sends a chunk to every member still taking the copy; one that leaves
    /// it unread for [`LANE_PATIENCE`], or failed, is dropped.
    async fn send_all(&mut self, chunk: impl Fn() -> proto::Chunk) {
        for lane in &mut self.lanes {
            let Some(sender) = &lane.sender else {
                continue;
            };
            let sent = tokio::time::timeout(LANE_PATIENCE, sender.send(chunk()));
            if !matches!(sent.await, Ok(Ok(()))) {
                tracing::debug!(
                    peer = lane.peer,
                    "a member fell behind a blob upload; it is copied afterwards"
                );
                lane.sender = None;
            }
        }
    }

    /// Ends every stream (the members then check and store what they got).
    fn end(&mut self) {
        for lane in &mut self.lanes {
            lane.sender = None;
        }
    }

    /// Waits for the members' answers, all at once, until `needed` of the
    /// `voters` confirm they hold the blob; the rest finish in the background.
    /// Returns whether enough confirmed.
    async fn confirmed(self, voters: &std::collections::BTreeSet<u64>, needed: usize) -> bool {
        let mut answers: futures::stream::FuturesUnordered<_> = self
            .lanes
            .into_iter()
            .map(|lane| async move {
                let answer = tokio::time::timeout(PEER_BLOB_TIMEOUT, lane.call).await;
                let held = matches!(answer, Ok(Ok(Ok(_))));
                if !held {
                    tracing::debug!(
                        peer = lane.peer,
                        "a member did not take the copy sent during the upload"
                    );
                }
                (lane.peer, held)
            })
            .collect();
        let mut confirmed = 0;
        while confirmed < needed {
            match answers.next().await {
                Some((peer, true)) if voters.contains(&peer) => confirmed += 1,
                Some(_) => {}
                None => return false,
            }
        }
        tokio::spawn(async move { while answers.next().await.is_some() {} });
        true
    }
}

impl Node {
    /// Receives a blob (see [`receive_blob`]) and copies it to the other
    /// members as it arrives, so that replication costs no time after the
    /// upload; answered once a majority of the voters holds it. Should the
    /// copies made on the way not reach a majority, [`Node::replicate_blob`]
    /// copies it afterwards.
    pub async fn receive_replicated(
        &self,
        chunks: tonic::Streaming<proto::Chunk>,
    ) -> Result<proto::BlobRef, Status> {
        if self.blobs.is_shared() {
            return receive_blob(&self.blobs, chunks).await;
        }
        let voters: std::collections::BTreeSet<u64> = self.read(|state| {
            state
                .members
                .values()
                .filter(|member| !member.learner)
                .map(|member| member.id)
                .collect()
        });
        let majority = voters.len().max(1) / 2 + 1;
        let here = usize::from(voters.contains(&self.id) || voters.is_empty());
        let mut copies = PeerCopies {
            peers: self.transport.clients(),
            lanes: Vec::new(),
        };
        // A failed upload drops the streams short: the members refuse it.
        let blob = receive_blob_copied(&self.blobs, chunks, &mut copies).await?;
        if !copies
            .confirmed(&voters, majority.saturating_sub(here))
            .await
        {
            self.replicate_blob(&blob.digest, blob.size).await?;
        }
        Ok(blob)
    }

    /// Copies a blob stored here to the other members until a majority of the
    /// voters holds it; fails (`Unavailable`) when fewer than a majority could.
    /// Learners get copies too, but do not count: a learner that never started
    /// must not hold uploads up, and only voters elect the next leader.
    pub async fn replicate_blob(&self, digest: &str, size: u64) -> Result<(), Status> {
        let voters: std::collections::BTreeSet<u64> = self.read(|state| {
            state
                .members
                .values()
                .filter(|member| !member.learner)
                .map(|member| member.id)
                .collect()
        });
        // The bucket every member shares is the durable store.
        if self.blobs.is_shared() {
            return Ok(());
        }
        let members = voters.len().max(1);
        let majority = members / 2 + 1;
        let here = usize::from(voters.contains(&self.id) || voters.is_empty());
        if here >= majority {
            return Ok(());
        }
        // Each copy runs on its own task and reports when done; the caller is
        // answered as soon as a majority holds the blob, so one slow or unreachable
        // member delays nothing, and the copies still under way finish in the
        // background (the other members get the blob too).
        let began = std::time::Instant::now();
        let clients = self.transport.clients();
        let (done, mut reports) = tokio::sync::mpsc::channel(clients.len().max(1));
        for (id, client) in clients {
            let counts = voters.contains(&id);
            let blobs = self.blobs.clone();
            let digest = digest.to_string();
            let done = done.clone();
            tokio::spawn(async move {
                let result = tokio::time::timeout(
                    PEER_BLOB_TIMEOUT,
                    copy_to_peer(blobs, client, digest.clone(), size),
                )
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("timed out")));
                if let Err(status) = &result {
                    tracing::warn!(peer = id, digest, error = %status.message(), "blob not copied to a peer");
                }
                let _ = done.send(result.is_ok() && counts).await;
            });
        }
        drop(done);
        let mut held = here;
        while held < majority {
            match reports.recv().await {
                Some(true) => held += 1,
                Some(false) => {}
                None => break,
            }
        }
        if held >= majority {
            self.metrics.blob_replicated(began.elapsed());
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "blob {digest} is stored on only {held} of {members} voting coordinators; a \
                 majority ({majority}) must hold it before it may be used — are the other \
                 coordinators up?"
            )))
        }
    }

    /// Makes sure a blob is stored on this member, copying it from a peer that has
    /// it; returns its size.
    pub async fn ensure_blob(&self, digest: &str) -> Result<u64, Status> {
        if let Some(size) = self.blobs.size_of(digest).await.map_err(blob_status)? {
            return Ok(size);
        }
        if self.blobs.is_shared() {
            // Every member reads the same bucket: no peer has it either.
            return Err(Status::not_found(format!(
                "blob {digest} is not in the blob bucket"
            )));
        }
        let mut last_error =
            Status::not_found(format!("blob {digest} is not stored on any coordinator"));
        for (id, mut client) in self.transport.clients() {
            let request = proto::BlobRef {
                digest: digest.to_string(),
                size: 0,
            };
            let copied = async {
                let chunks = client.get_blob(request).await?.into_inner();
                let stored = receive_blob(&self.blobs, chunks).await?;
                if stored.digest != digest {
                    return Err(Status::data_loss(format!(
                        "peer sent blob {} for {digest}",
                        stored.digest
                    )));
                }
                Ok::<_, Status>(stored.size)
            };
            match tokio::time::timeout(PEER_BLOB_TIMEOUT, copied).await {
                Ok(Ok(size)) => {
                    tracing::info!(peer = id, digest, size, "blob copied from a peer");
                    return Ok(size);
                }
                Ok(Err(status)) => last_error = status,
                Err(_) => last_error = Status::deadline_exceeded("copying the blob timed out"),
            }
        }
        Err(last_error)
    }
}
