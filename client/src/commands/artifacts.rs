//! `ferry artifacts RUN` and `ferry artifacts get`: a run's artifacts, and one
//! downloaded and verified (pins have their own module).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ferry_common::blobio::{Frame, FrameReader, FrameSink, FrameWriter};
use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, OrStatus, Output, Read, Rpc};
use crate::render;

/// `ferry artifacts RUN`.
pub(crate) async fn list(
    client: &mut Client,
    run: u64,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListArtifactsRequest {
        run_id: run,
        stale: read.stale,
    };
    let artifacts = client
        .rpc(request, |mut client, request| async move {
            client.list_artifacts(request).await
        })
        .await?
        .artifacts;
    if output == Output::Json {
        let list: Vec<_> = artifacts
            .iter()
            .map(|a| json!({"step": a.step, "name": a.name, "size": a.size, "digest": a.digest, "attempt": a.attempt}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            vec![
                a.step.clone(),
                a.name.clone(),
                render::bytes(a.size),
                a.digest.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(&["STEP", "NAME", "SIZE", "BLAKE3"], &rows)
    );
    Ok(())
}

/// `ferry artifacts get RUN STEP NAME [-o PATH]`: the artifact written to `path`
/// (or its file name) only once its digest is verified.
pub(crate) async fn download(
    client: &mut Client,
    run: u64,
    step: &str,
    name: &str,
    path: Option<&Path>,
) -> anyhow::Result<()> {
    let target = match path {
        Some(path) => path.to_path_buf(),
        None => Path::new(name.rsplit('/').next().unwrap_or(name)).to_path_buf(),
    };
    // The bytes so far live in `<target>.ferry-partial`, and the digest they
    // belong to beside them: an interrupted download (a broken connection, a
    // coordinator failing over, ^C) goes on from there, now or when the same
    // command runs again.
    let partial = partial_path(&target, "ferry-partial");
    let partial_digest = partial_path(&target, "ferry-partial.digest");
    let mut resume = Resume::load(&partial, &partial_digest);
    let mut tries_left = STREAM_TRIES;
    let (actual, size) = loop {
        let request = proto::DownloadArtifactRequest {
            run_id: run,
            step: step.to_string(),
            name: name.to_string(),
            offset: resume.as_ref().map_or(0, |r| r.writer.written()),
        };
        let mut stream = client
            .rpc(request, |mut client, request| async move {
                client.download_artifact(request).await
            })
            .await?;
        let header = match stream.message().await.or_status()? {
            Some(header) => header,
            None => bail!("{name}: the coordinator sent nothing"),
        };
        let state = match resume.take() {
            Some(state)
                if state.digest == header.digest && state.writer.written() <= header.size =>
            {
                if state.writer.written() > 0 {
                    eprintln!(
                        "{name}: resuming at {} of {}",
                        render::bytes(state.writer.written()),
                        render::bytes(header.size)
                    );
                }
                state
            }
            Some(_) => {
                // The bytes held belong to another blob: start over.
                eprintln!(
                    "{name}: {} holds another blob's bytes; starting over",
                    partial.display()
                );
                tries_left -= 1;
                if tries_left == 0 {
                    bail!("{name}: the artifact kept changing while it was downloaded");
                }
                continue;
            }
            None => Resume::start(&partial, &partial_digest, &header.digest)?,
        };
        let mut failed = None;
        let size = header.size;
        let started_at = state.writer.written();
        let mut written = started_at;
        // Hashed on one thread and written on another while the next chunks
        // arrive.
        let Resume {
            digest,
            writer,
            hasher,
        } = state;
        let mut sink = FrameSink::start(hasher, Some(writer.with_early_writeback()));
        let mut pending = Some(header);
        loop {
            let chunk = match pending.take() {
                Some(chunk) => chunk,
                None => match stream.message().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(status) => {
                        failed = Some(status);
                        break;
                    }
                },
            };
            for frame in Frame::from_chunk(chunk) {
                if written.saturating_add(frame.len()) > size {
                    bail!("{name}: the coordinator sent more than the {size} bytes it announced");
                }
                written += frame.len();
                sink.push(frame)
                    .await
                    .with_context(|| format!("cannot write {}", partial.display()))?;
            }
        }
        let (hasher, writer) = sink
            .finish()
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let state = Resume {
            digest,
            writer: writer.context("the download's writer")?,
            hasher,
        };
        // A stream that ended early is taken up like one that broke off.
        if failed.is_none() && state.writer.written() < size {
            failed = Some(tonic::Status::unavailable("the stream ended early"));
        }
        if let Some(status) = failed {
            let written = state.writer.written();
            if status.code() == tonic::Code::DataLoss {
                // The stored copy itself is damaged: these bytes are no use.
                drop(state);
                let _ = std::fs::remove_file(&partial);
                let _ = std::fs::remove_file(&partial_digest);
                return Err(super::shared::status_error(status).context(format!(
                    "{name}: the coordinator's copy is damaged; nothing written"
                )));
            }
            // A try that moved forward does not count against the others.
            if written == started_at {
                tries_left -= 1;
            }
            if ferry_common::channel::is_refusal(status.code()) || tries_left == 0 {
                let _ = state.writer.finish().map(|file| file.sync_all());
                return Err(super::shared::status_error(status).context(format!(
                    "{name}: the download stopped at {}; run the same command again to resume it",
                    render::bytes(written)
                )));
            }
            eprintln!(
                "{name}: the download broke off at {} ({}); resuming",
                render::bytes(written),
                status.message()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            resume = Some(state);
            continue;
        }
        let size = state.writer.written();
        let file = state.writer.finish()?;
        file.sync_all()?;
        let actual = state.hasher.finalize().to_hex().to_string();
        if actual != state.digest {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&partial_digest);
            bail!(
                "{name}: downloaded content hashes to {actual}, expected {}; nothing written",
                state.digest
            );
        }
        break (actual, size);
    };
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    let _ = std::fs::remove_file(&partial_digest);
    println!(
        "{}: {}, blake3 {}…{} verified",
        target.display(),
        render::bytes(size),
        &actual[..4],
        &actual[actual.len() - 2..]
    );
    Ok(())
}

/// How many times a download that broke off is taken up again in one command.
const STREAM_TRIES: u32 = 5;

/// `<dir>/<file name>.<suffix>` beside the target.
fn partial_path(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!("{name}.{suffix}"))
}

/// A download under way: the digest its bytes belong to, the file they go
/// to, and the hash of every byte written so far.
struct Resume {
    digest: String,
    writer: FrameWriter,
    hasher: blake3::Hasher,
}

impl Resume {
    /// What an earlier, interrupted download left, if anything usable: its
    /// bytes are hashed again (a file changed since is then caught by the
    /// digest at the end).
    fn load(partial: &Path, digest_file: &Path) -> Option<Resume> {
        let digest = std::fs::read_to_string(digest_file)
            .ok()?
            .trim()
            .to_string();
        if !ferry_common::digest::is_valid_digest(&digest) {
            return None;
        }
        let mut hasher = blake3::Hasher::new();
        let reader = FrameReader::new(std::fs::File::open(partial).ok()?).ok()?;
        let size = reader.size();
        for frame in reader {
            frame.ok()?.hash_into(&mut hasher);
        }
        let file = std::fs::File::options().write(true).open(partial).ok()?;
        let writer = FrameWriter::resuming(file, size).ok()?;
        Some(Resume {
            digest,
            writer,
            hasher,
        })
    }

    /// A fresh download of `digest`.
    fn start(partial: &Path, digest_file: &Path, digest: &str) -> anyhow::Result<Resume> {
        let file = std::fs::File::create(partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        std::fs::write(digest_file, digest)
            .with_context(|| format!("cannot write {}", digest_file.display()))?;
        Ok(Resume {
            digest: digest.to_string(),
            writer: FrameWriter::new(file),
            hasher: blake3::Hasher::new(),
        })
    }
}
