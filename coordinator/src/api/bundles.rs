//! Receiving a code bundle: refused from its announced size before any byte is
//! read when it is larger than the CLI's own limit, and checked while it streams
//! (the same walk a worker makes to unpack it: gzip, tar, regular files and
//! directories with safe relative paths, within the default unpack limits), so
//! that only a bundle a worker can unpack is ever stored. Nothing is kept of a
//! refused upload.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use ferry_common::blobio::Frame;
use ferry_common::bundle::{BundleError, MAX_BUNDLE_BYTES, UnpackLimits, Unpacked, check_bundle};
use ferry_common::proto;
use ferry_common::spec::format_bytes;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::blob_status;
use crate::blobs::{BlobError, BlobStore, Upload};

/// Chunks in flight between the upload and the check; bounds what the check
/// holds in memory to a few chunks.
const CHECK_QUEUE: usize = 4;

/// Receives a bundle sent as chunks (the first names digest and size), storing
/// it only when it is no larger than [`MAX_BUNDLE_BYTES`], has its digest, and is
/// an archive Ferry can unpack; every refusal is `InvalidArgument` naming why.
pub(super) async fn receive_bundle(
    blobs: &BlobStore,
    mut chunks: Streaming<proto::Chunk>,
) -> Result<proto::BlobRef, Status> {
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the upload carried no chunk"))?;
    if first.size > MAX_BUNDLE_BYTES {
        return Err(too_large(first.size));
    }
    let mut upload = blobs
        .begin(&first.digest, first.size)
        .await
        .map_err(blob_status)?;
    let (feed, fed) = mpsc::channel::<Bytes>(CHECK_QUEUE);
    let mut check = Check::Running {
        task: tokio::task::spawn_blocking(move || {
            check_bundle(
                ChannelReader {
                    chunks: fed,
                    current: Bytes::new(),
                },
                UnpackLimits::default(),
            )
        }),
        feed,
    };
    // The check reads bytes: a zero run is made real (a bundle is small).
    let announced = first.size;
    let pieces = |chunk: proto::Chunk| -> Result<Vec<Bytes>, Status> {
        if chunk.zeros > announced {
            return Err(Status::invalid_argument(format!(
                "the upload sent a run of {} zero bytes, more than the {announced} bytes it announced",
                chunk.zeros
            )));
        }
        Ok(Frame::from_chunk(chunk)
            .flat_map(Frame::into_bytes)
            .collect())
    };
    let mut next = pieces(first)?;
    loop {
        for data in std::mem::take(&mut next) {
            if let Err(error) = upload.write(data.clone()).await {
                upload.abort().await;
                // More bytes than announced (and so, at most, the limit) is
                // refused here.
                return Err(blob_status(error));
            }
            if let Err(refused) = check.feed(data).await {
                upload.abort().await;
                return Err(refused);
            }
        }
        match chunks.message().await {
            Ok(Some(chunk)) => match pieces(chunk) {
                Ok(more) => next = more,
                Err(refused) => {
                    upload.abort().await;
                    return Err(refused);
                }
            },
            Ok(None) => break,
            Err(status) => {
                upload.abort().await;
                return Err(status);
            }
        }
    }
    if let Err(refused) = check.finish().await {
        upload.abort().await;
        return Err(refused);
    }
    finish(upload).await
}

async fn finish(upload: Upload) -> Result<proto::BlobRef, Status> {
    let (digest, size) = upload.finish().await.map_err(|error| match error {
        BlobError::DigestMismatch { .. } => Status::invalid_argument(error.to_string()),
        other => blob_status(other),
    })?;
    Ok(proto::BlobRef { digest, size })
}

fn too_large(size: u64) -> Status {
    Status::invalid_argument(format!(
        "the code bundle ({size} bytes) is larger than the limit of {} ({MAX_BUNDLE_BYTES} \
         bytes); exclude large files with a .ferryignore file",
        format_bytes(MAX_BUNDLE_BYTES)
    ))
}

fn not_a_bundle(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!(
        "the upload is not a code bundle Ferry can unpack: {error}"
    ))
}

/// The check running beside the upload, on a blocking thread.
enum Check {
    Running {
        task: tokio::task::JoinHandle<Result<Unpacked, BundleError>>,
        feed: mpsc::Sender<Bytes>,
    },
    /// The archive ended (and was good) before the stream did; the rest is
    /// stored as it is (it is covered by the digest, and a worker reads no
    /// further than the check did).
    Passed,
}

impl Check {
    /// Hands the check the next bytes; its refusal if it ended with one.
    async fn feed(&mut self, data: Bytes) -> Result<(), Status> {
        let Check::Running { feed, .. } = self else {
            return Ok(());
        };
        if feed.send(data).await.is_ok() {
            return Ok(());
        }
        // The check stopped reading: it has its answer.
        self.finish().await
    }

    /// Ends the input and waits for the check's answer.
    async fn finish(&mut self) -> Result<(), Status> {
        let Check::Running { task, feed } = std::mem::replace(self, Check::Passed) else {
            return Ok(());
        };
        drop(feed);
        match task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(not_a_bundle(error)),
            Err(error) => Err(Status::internal(format!(
                "the bundle check failed: {error}"
            ))),
        }
    }
}

/// The upload's chunks as a blocking reader; the end of the upload is its end.
struct ChannelReader {
    chunks: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
