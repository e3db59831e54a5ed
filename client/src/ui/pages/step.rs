//! A step's page (attempts, reasons, resources, usage, inputs and outputs with
//! their digests, the cache key, metrics) and artifact downloads, streamed to
//! the browser and checked against their digest on the way.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use ferry_common::blobio::Frame;
use ferry_common::proto;
use futures::{Stream, StreamExt};
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::{now_ms, whole_run};
use crate::render;
use crate::ui::Shared;
use crate::ui::error::{PageResult, UiError};

#[derive(Serialize)]
struct AttemptRow {
    attempt: u32,
    worker: String,
    outcome: String,
    started_ms: i64,
    duration: String,
    exit_code: Option<i32>,
    reason: String,
    gpus: String,
    cpu_time: String,
    peak_memory: String,
    image: String,
}

fn attempt_row(a: &proto::AttemptView) -> AttemptRow {
    let duration = match (a.started_ms, a.finished_ms) {
        (0, _) => String::new(),
        (start, 0) => render::duration_ms(now_ms() - start),
        (start, end) => render::duration_ms(end - start),
    };
    AttemptRow {
        attempt: a.attempt,
        worker: a.worker.clone(),
        outcome: a.outcome.clone(),
        started_ms: a.started_ms,
        duration,
        exit_code: a.has_exit_code.then_some(a.exit_code),
        reason: a.reason.clone(),
        gpus: a
            .gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        cpu_time: if a.cpu_time_ms > 0 {
            render::duration_ms(a.cpu_time_ms as i64)
        } else {
            String::new()
        },
        peak_memory: if a.peak_memory_bytes > 0 {
            render::bytes(a.peak_memory_bytes)
        } else {
            String::new()
        },
        image: if a.image_repo_digest.is_empty() {
            a.image_id.clone()
        } else {
            a.image_repo_digest.clone()
        },
    }
}

#[derive(Serialize)]
struct FileRow {
    name: String,
    digest: String,
    size: String,
    download: Option<String>,
}

/// `GET /runs/{run}/steps/{step}`.
pub(crate) async fn page(
    State(ui): State<Shared>,
    Path((run, name)): Path<(u64, String)>,
) -> PageResult {
    let view = whole_run(&ui, run, false).await?;
    let Some(step) = view.steps.iter().find(|s| s.name == name) else {
        return Err(UiError::NotFound(format!("run {run} has no step {name:?}")));
    };
    let artifacts = super::artifacts_of(&ui, run).await?;
    let outputs: Vec<FileRow> = artifacts
        .iter()
        .filter(|a| a.step == name)
        .map(|a| FileRow {
            name: a.name.clone(),
            digest: a.digest.clone(),
            size: render::bytes(a.size),
            download: Some(format!(
                "/runs/{run}/download?step={}&name={}",
                crate::ui::query::encode(&a.step),
                crate::ui::query::encode(&a.name)
            )),
        })
        .collect();
    let inputs: Vec<FileRow> = step
        .inputs
        .iter()
        .map(|i| FileRow {
            name: i.name.clone(),
            digest: i.digest.clone(),
            size: render::bytes(i.size),
            download: Some(format!("/artifacts/{}", i.digest)),
        })
        .collect();
    let resources = step.resources.unwrap_or_default();
    let metrics = crate::compare::last_values(crate::compare::step_metrics(step));
    let mut matrix: Vec<(&String, &String)> = step.matrix.iter().collect();
    matrix.sort();
    ui.views.page(
        "step.html",
        context! {
            title => format!("{name} · run {run}"),
            run => run,
            run_state => view.summary.as_ref().map(|s| s.state.clone()).unwrap_or_default(),
            step => context! {
                name => step.name,
                state => step.state,
                reason => step.reason,
                needs => step.needs,
                trial_of => step.trial_of,
                reused => step.reused,
                reused_run => step.reused_run,
                reused_step => step.reused_step,
                cache_key => step.cache_key,
                cpus => render::cpus(resources.cpu_millis),
                memory => render::bytes(resources.memory_bytes),
                gpus => resources.gpus,
            },
            matrix => matrix,
            attempts => step.attempts.iter().map(attempt_row).collect::<Vec<_>>(),
            inputs => inputs,
            outputs => outputs,
            metrics => metrics,
            log => format!("/runs/{run}/steps/{}/log", crate::ui::query::encode(&name)),
        },
        &ui.guard.cookie(),
    )
}

#[derive(Deserialize)]
pub(crate) struct Artifact {
    step: String,
    name: String,
}

/// Bytes a download hands the browser at a time when the blob has a run of
/// zeros.
const ZERO_PIECE: u64 = 1024 * 1024;

/// The blob's bytes from `chunks`, hashed on the way and checked against
/// `expected` (digest) and `size`. The last piece is held back until the
/// check passes: a response whose `Content-Length` is `size` would otherwise
/// be complete, and look fine to the browser, before a mismatch could be
/// told. On a mismatch (or a broken stream) the body ends with an error
/// short of its length, and the browser reports a failed download.
pub(crate) fn verified<S>(
    mut chunks: S,
    expected: String,
    size: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>>
where
    S: Stream<Item = Result<proto::Chunk, tonic::Status>> + Unpin,
{
    async_stream::stream! {
        let mut hasher = blake3::Hasher::new();
        let mut sent = 0u64;
        let mut held: Option<Bytes> = None;
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(status) => {
                    yield Err(std::io::Error::other(status.message().to_string()));
                    return;
                }
            };
            for frame in Frame::from_chunk(chunk) {
                let mut pieces = Vec::new();
                match frame {
                    Frame::Data(data) => pieces.push(data),
                    Frame::Zeros(mut count) => {
                        while count > 0 {
                            let piece = count.min(ZERO_PIECE);
                            pieces.push(Bytes::from(vec![0u8; piece as usize]));
                            count -= piece;
                        }
                    }
                }
                for piece in pieces {
                    hasher.update(&piece);
                    sent += piece.len() as u64;
                    if sent > size {
                        yield Err(std::io::Error::other("the artifact is longer than announced"));
                        return;
                    }
                    if let Some(previous) = held.replace(piece) {
                        yield Ok(previous);
                    }
                }
            }
        }
        let actual = hasher.finalize().to_hex().to_string();
        if sent != size || actual != expected {
            tracing::warn!(sent, size, %expected, %actual, "download did not verify");
            yield Err(std::io::Error::other("the artifact's bytes do not match its digest"));
            return;
        }
        if let Some(last) = held {
            yield Ok(last);
        }
    }
}

/// `GET /artifacts/{digest}`: the artifact with this digest, from the step
/// attempt that wrote it (as its lineage says): a redirect to that run's
/// download, so it is checked the same way.
pub(crate) async fn by_digest(State(ui): State<Shared>, Path(digest): Path<String>) -> PageResult {
    let lineage = super::lineage_of(&ui, &digest).await?;
    let Some(made) = lineage.nodes.iter().find(|n| n.digest == digest) else {
        return Err(UiError::NotFound(format!(
            "no step of a run you may read wrote an artifact {digest}"
        )));
    };
    // The name a run's artifact list gives: the step's own output name.
    let name = made
        .name
        .strip_prefix(&format!("{}/", made.step))
        .unwrap_or(&made.name);
    Ok(Redirect::to(&format!(
        "/runs/{}/download?step={}&name={}",
        made.run_id,
        crate::ui::query::encode(&made.step),
        crate::ui::query::encode(name)
    ))
    .into_response())
}

/// `GET /runs/{run}/download?step=S&name=N`: the artifact's bytes as they
/// arrive from the cluster, checked against the digest the run's artifact
/// list records (see [`verified`]).
pub(crate) async fn download(
    State(ui): State<Shared>,
    Path(run): Path<u64>,
    Query(artifact): Query<Artifact>,
) -> PageResult {
    let Some(recorded) = super::artifacts_of(&ui, run)
        .await?
        .into_iter()
        .find(|a| a.step == artifact.step && a.name == artifact.name)
    else {
        return Err(UiError::NotFound(format!(
            "run {run} has no artifact {:?} of step {:?}",
            artifact.name, artifact.step
        )));
    };
    let request = proto::DownloadArtifactRequest {
        run_id: run,
        step: artifact.step.clone(),
        name: artifact.name.clone(),
        offset: 0,
    };
    let mut stream = ui
        .gateway
        .call(|mut client| {
            let request = request.clone();
            async move { client.download_artifact(request).await }
        })
        .await?;
    let Some(first) = stream.message().await? else {
        return Err(UiError::NotFound(format!(
            "run {run}: the cluster sent nothing for {}/{}",
            artifact.step, artifact.name
        )));
    };
    if first.digest != recorded.digest || first.size != recorded.size {
        return Err(UiError::Internal(format!(
            "the cluster sent {} ({} bytes) for {}/{}, which the run records as {} ({} bytes)",
            first.digest, first.size, artifact.step, artifact.name, recorded.digest, recorded.size
        )));
    }
    let size = recorded.size;
    let chunks = futures::stream::iter([Ok(first)]).chain(stream);
    let body = verified(chunks, recorded.digest.clone(), size);
    let file_name = artifact
        .name
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
            (
                header::HeaderName::from_static("x-ferry-digest"),
                recorded.digest,
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8], zeros: u64) -> Result<proto::Chunk, tonic::Status> {
        Ok(proto::Chunk {
            data: Bytes::copy_from_slice(data),
            zeros,
            ..Default::default()
        })
    }

    async fn collect(
        chunks: Vec<Result<proto::Chunk, tonic::Status>>,
        digest: &str,
        size: u64,
    ) -> (Vec<u8>, bool) {
        let stream = verified(futures::stream::iter(chunks), digest.to_string(), size);
        futures::pin_mut!(stream);
        let (mut bytes, mut failed) = (Vec::new(), false);
        while let Some(item) = stream.next().await {
            match item {
                Ok(piece) => bytes.extend_from_slice(&piece),
                Err(_) => failed = true,
            }
        }
        (bytes, failed)
    }

    #[tokio::test]
    async fn a_good_blob_passes_whole() {
        let mut whole = b"hello ".to_vec();
        whole.extend(std::iter::repeat_n(0u8, 3));
        whole.extend_from_slice(b"world");
        let digest = blake3::hash(&whole).to_hex().to_string();
        let (bytes, failed) = collect(
            vec![chunk(b"hello ", 3), chunk(b"world", 0)],
            &digest,
            whole.len() as u64,
        )
        .await;
        assert!(!failed);
        assert_eq!(bytes, whole);
    }

    #[tokio::test]
    async fn a_damaged_blob_of_the_right_size_never_completes() {
        let digest = blake3::hash(b"hello world").to_hex().to_string();
        let (bytes, failed) =
            collect(vec![chunk(b"hello ", 0), chunk(b"w0rld", 0)], &digest, 11).await;
        assert!(failed);
        // Short of the announced length: the browser cannot take it as done.
        assert!(bytes.len() < 11, "{} bytes passed", bytes.len());
    }

    #[tokio::test]
    async fn a_broken_or_long_stream_fails() {
        let digest = blake3::hash(b"abc").to_hex().to_string();
        let broken = vec![chunk(b"ab", 0), Err(tonic::Status::unavailable("gone"))];
        assert!(collect(broken, &digest, 3).await.1);
        let long = vec![chunk(b"abcd", 0)];
        assert!(collect(long, &digest, 3).await.1);
    }
}
