//! A step's page (attempts, reasons, resources, usage, inputs and outputs with
//! their digests, the cache key, metrics) and artifact downloads, streamed to
//! the browser and checked against their digest on the way.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use ferry_common::blobio::Frame;
use ferry_common::proto;
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
    let artifacts = ui
        .gateway
        .call(|mut client| async move {
            client
                .list_artifacts(proto::ListArtifactsRequest {
                    run_id: run,
                    stale: false,
                })
                .await
        })
        .await?;
    let outputs: Vec<FileRow> = artifacts
        .artifacts
        .iter()
        .filter(|a| a.step == name)
        .map(|a| FileRow {
            name: a.name.clone(),
            digest: a.digest.clone(),
            size: render::bytes(a.size),
            download: Some(format!(
                "/runs/{run}/download?step={}&name={}",
                super::runs::encode(&a.step),
                super::runs::encode(&a.name)
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
            download: None,
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
            log => format!("/runs/{run}/steps/{}/log", super::runs::encode(&name)),
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

/// `GET /runs/{run}/download?step=S&name=N`: the artifact's bytes as they
/// arrive from the cluster, hashed on the way. The size is announced up front;
/// if the bytes do not match the digest (or the stream breaks), the body ends
/// with an error, so the browser reports a failed download rather than keeping
/// a wrong file.
pub(crate) async fn download(
    State(ui): State<Shared>,
    Path(run): Path<u64>,
    Query(artifact): Query<Artifact>,
) -> PageResult {
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
    let (digest, size) = (first.digest.clone(), first.size);
    let expected = digest.clone();
    let body = async_stream::stream! {
        let mut hasher = blake3::Hasher::new();
        let mut sent = 0u64;
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(chunk) => chunk,
                None => match stream.message().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(status) => {
                        yield Err(std::io::Error::other(status.message().to_string()));
                        return;
                    }
                },
            };
            for frame in Frame::from_chunk(chunk) {
                match frame {
                    Frame::Data(data) => {
                        hasher.update(&data);
                        sent += data.len() as u64;
                        yield Ok(data);
                    }
                    Frame::Zeros(mut count) => {
                        while count > 0 {
                            let piece = count.min(ZERO_PIECE);
                            let zeros = Bytes::from(vec![0u8; piece as usize]);
                            hasher.update(&zeros);
                            sent += piece;
                            count -= piece;
                            yield Ok(zeros);
                        }
                    }
                }
            }
            if sent > size {
                break;
            }
        }
        let actual = hasher.finalize().to_hex().to_string();
        if sent != size || actual != expected {
            tracing::warn!(run, sent, size, %expected, %actual, "download did not verify");
            yield Err(std::io::Error::other("the artifact's bytes do not match its digest"));
        }
    };
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
                digest.clone(),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
