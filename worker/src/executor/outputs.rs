//! What an attempt leaves behind: each declared output checked (a regular file
//! inside the work directory, not a link out of it), digested and uploaded, and
//! the upload of a file such as the attempt's whole log, retried through
//! coordinator failovers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_common::blobio::FrameReader;
use ferry_common::digest::digest_file;
use ferry_common::proto;
use futures::StreamExt;
use tokio::time::Instant;

use super::context::ExecutorContext;
use crate::session::leader::Coordinators;

/// How long an upload keeps trying through coordinator failovers and restarts
/// before it fails.
const UPLOAD_PATIENCE: Duration = Duration::from_secs(120);

/// Checks every declared output (a regular file inside the work directory, not a
/// link out of it) and uploads it.
pub(super) async fn collect_outputs(
    ctx: &ExecutorContext,
    attempt: &proto::AttemptRef,
    outputs: &[String],
    work_dir: &Path,
) -> Result<Vec<proto::OutputFile>, String> {
    let root = work_dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve the work directory: {e}"))?;
    let mut files = Vec::new();
    for name in outputs {
        let path = checked_output_path(&root, name)?;
        let (digest, size) = upload_file(&ctx.coordinators, attempt, &path)
            .await
            .map_err(|e| format!("cannot upload output \"{name}\": {e}"))?;
        files.push(proto::OutputFile {
            name: name.clone(),
            digest,
            size,
        });
    }
    Ok(files)
}

/// Resolves a declared output inside the (canonical) work directory, refusing
/// anything that is missing, not a regular file, or resolves outside it.
pub fn checked_output_path(root: &Path, name: &str) -> Result<PathBuf, String> {
    if ferry_common::spec::validate_output_path(name).is_err() {
        return Err(format!(
            "output \"{name}\" leaves the step's work directory"
        ));
    }
    let path = root.join(name);
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(format!("declared output \"{name}\" was not written"));
    }
    let resolved = path
        .canonicalize()
        .map_err(|e| format!("output \"{name}\" cannot be resolved: {e}"))?;
    if !resolved.starts_with(root) {
        return Err(format!(
            "output \"{name}\" resolves to {}, outside the step's work directory; refused",
            resolved.display()
        ));
    }
    if !resolved.is_file() {
        return Err(format!("output \"{name}\" is not a regular file"));
    }
    Ok(resolved)
}

/// Outputs at least this large are hashed while they are sent (the digest
/// travels in the last chunk) rather than in a pass of their own first. On
/// the development VM a step's exit to stored was faster so in four paired
/// runs out of four, and no faster than before this work with the pass
/// (BENCHMARKS.md), although an upload timed alone was not faster. A
/// smaller one is hashed first, so that one the store already holds is not
/// written again.
const HASH_WHILE_SENDING_BYTES: u64 = 64 << 20;

/// Uploads a file of `attempt` (an output, its log): straight to the bucket
/// with presigned URLs when the store is one, else over `UploadArtifact`.
pub(super) async fn upload_file(
    coordinators: &Coordinators,
    attempt: &proto::AttemptRef,
    path: &Path,
) -> Result<(String, u64), String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size >= HASH_WHILE_SENDING_BYTES
        && super::direct::is_local_store(coordinators, attempt).await
    {
        match send_file(coordinators, path, None).await {
            Ok(blob) => return Ok(blob),
            // A coordinator that wants the digest first (an older one).
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tracing::debug!(%status, file = %path.display(), "upload refused without the digest first; hashing first");
            }
            Err(status) => return Err(status.message().to_string()),
        }
    }
    let owned = path.to_path_buf();
    let (digest, size) = tokio::task::spawn_blocking(move || digest_file(&owned))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if super::direct::upload(coordinators, attempt, path, &digest, size).await? {
        return Ok((digest, size));
    }
    send_file(coordinators, path, Some(&digest))
        .await
        .map_err(|status| status.message().to_string())
}

/// Sends a file over `UploadArtifact`, its digest named first (`digest`) or,
/// without one, computed while it is sent and named in the last chunk. The
/// coordinator may be failing over or restarting when a step ends: tries
/// again on the coordinator switched to, reading the file afresh each time.
async fn send_file(
    coordinators: &Coordinators,
    path: &Path,
    digest: Option<&str>,
) -> Result<(String, u64), tonic::Status> {
    let give_up = Instant::now() + UPLOAD_PATIENCE;
    loop {
        let file = std::fs::File::open(path).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let chunks =
            file_chunks(file, digest).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let coordinator = coordinators.current();
        let mut agent = coordinator.agent.clone();
        // An upload under way when the worker gives up (it is stopping) ends.
        let uploaded = tokio::select! {
            uploaded = agent.upload_artifact(chunks) => uploaded,
            _ = coordinators.stopped() => Err(crate::session::leader::stopping_status()),
        };
        match uploaded {
            Ok(blob) => {
                coordinators.answered(coordinator.generation);
                let blob = blob.into_inner();
                return Ok((blob.digest, blob.size));
            }
            Err(status) => {
                match coordinators.retry_after(coordinator.generation, &status, Some(give_up)) {
                    Some(delay) => {
                        tracing::debug!(%status, file = %path.display(), "upload failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(status),
                }
            }
        }
    }
}

/// A file as upload chunks: the first names the size and the digest, or,
/// without a `digest`, says that the last chunk names it (`digest_last`: the
/// frames are hashed as they are read, and the digest follows them). The
/// rest carry frames of up to a MiB read a few ahead on a blocking thread
/// (holes and zero-filled stretches as zero runs, not bytes). A read error
/// ends the stream early, and the coordinator then refuses the short upload.
fn file_chunks(
    file: std::fs::File,
    digest: Option<&str>,
) -> std::io::Result<impl futures::Stream<Item = proto::Chunk> + Send + 'static> {
    let reader = FrameReader::new(file)?;
    let first = proto::Chunk {
        digest: digest.unwrap_or_default().to_string(),
        size: reader.size(),
        digest_last: digest.is_none(),
        ..Default::default()
    };
    let mut hasher = digest.is_none().then(blake3::Hasher::new);
    let (sender, chunks) = tokio::sync::mpsc::channel(FRAMES_AHEAD);
    tokio::task::spawn_blocking(move || {
        for frame in reader {
            let Ok(frame) = frame else {
                return;
            };
            if let Some(hasher) = hasher.as_mut() {
                frame.hash_into(hasher);
            }
            if sender.blocking_send(frame.into_chunk()).is_err() {
                return;
            }
        }
        if let Some(hasher) = hasher {
            let last = proto::Chunk {
                digest: hasher.finalize().to_hex().to_string(),
                ..Default::default()
            };
            let _ = sender.blocking_send(last);
        }
    });
    Ok(futures::stream::iter([first]).chain(tokio_stream::wrappers::ReceiverStream::new(chunks)))
}

/// Frames of an upload read ahead of the network.
const FRAMES_AHEAD: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_stay_inside_the_work_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("model.json"), b"{}").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/inner.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("model.json"), root.join("alias")).unwrap();
        assert!(checked_output_path(&root, "model.json").is_ok());
        assert!(checked_output_path(&root, "sub/inner.txt").is_ok());
        assert!(checked_output_path(&root, "alias").is_ok());
        let escape = checked_output_path(&root, "escape").unwrap_err();
        assert!(escape.contains("outside"), "{escape}");
        assert!(checked_output_path(&root, "../x").is_err());
        assert!(checked_output_path(&root, "/etc/passwd").is_err());
        assert!(
            checked_output_path(&root, "missing")
                .unwrap_err()
                .contains("not written")
        );
        assert!(
            checked_output_path(&root, "sub")
                .unwrap_err()
                .contains("regular file")
        );
    }
}
