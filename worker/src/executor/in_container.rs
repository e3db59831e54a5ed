//! An attempt in a container: the image resolved (and pulled per policy), the
//! container created from the step's plan (`container::settings`), its output
//! attached before it starts and fed to the same line readers and shipper as a
//! process's (same caps, same secret masking), then waited for until it exits,
//! times out or is cancelled (the engine's stop: SIGTERM, grace, SIGKILL); its
//! exit code and OOM kill read from the engine, its CPU time and peak memory
//! sampled while it ran (`container::usage`), and the container removed with
//! its anonymous volumes, whatever way the attempt ended.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use bollard::container::LogOutput;
use ferry_common::proto;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::context::ExecutorContext;
use super::logs::LogPipeline;
use super::process::{Ended, Usage};
use super::staging::{Staged, gpu_names, step_environment};
use crate::container::settings::{
    AttemptLabels, ContainerPlan, PullPolicy, container_body, network_mode,
};
use crate::container::usage::ContainerUsage;
use crate::container::{ContainerExit, DockerRuntime, ResolvedImage};

/// How long a container gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How much of a container's output is buffered between the engine and the
/// line readers.
const PIPE_BYTES: usize = 64 * 1024;

/// How long the report of a resolved image keeps trying through coordinator
/// failovers before the attempt is given up (and retried by the coordinator).
const IMAGE_REPORT_PATIENCE: Duration = Duration::from_secs(30);

/// What becomes of an attempt once its image is resolved.
pub(super) enum Resolution {
    /// It runs in this image.
    Run(ResolvedImage),
    /// The coordinator ended it (its step's result exists, or an identical
    /// step computes it): nothing runs and nothing is reported.
    Stop(String),
    /// It ends with this outcome and reason.
    End(&'static str, String),
}

/// Resolves the step's image to its ID (pulling it per policy) and, for a
/// cached step, reports it and waits for the coordinator's answer: the step's
/// cache key holds the image's ID, so only now can it tell whether the step
/// runs.
pub(super) async fn resolve_image(
    ctx: &ExecutorContext,
    runtime: &DockerRuntime,
    spec: &proto::ContainerSpec,
    attempt: &proto::AttemptRef,
    cancel: &mut watch::Receiver<bool>,
) -> Resolution {
    let resolved = tokio::select! {
        resolved = runtime.resolve_image(&spec.image, PullPolicy::from_assignment(&spec.pull)) => resolved,
        _ = cancel.wait_for(|c| *c) => return Resolution::End("cancelled", "cancelled before it started".into()),
    };
    let resolved = match resolved {
        Ok(resolved) => resolved,
        Err(reason) => return Resolution::End("error", reason),
    };
    tracing::info!(
        image = %spec.image,
        image_id = %resolved.id,
        repo_digest = resolved.repo_digest.as_deref().unwrap_or(""),
        "the step's image is resolved"
    );
    if !spec.report_image {
        return Resolution::Run(resolved);
    }
    let request = proto::ImageResolvedRequest {
        attempt: Some(attempt.clone()),
        image_id: resolved.id.clone(),
        image_repo_digest: resolved.repo_digest.clone().unwrap_or_default(),
    };
    let give_up = tokio::time::Instant::now() + IMAGE_REPORT_PATIENCE;
    let answer = tokio::select! {
        answer = ctx.coordinators.call(Some(give_up), |mut agent| {
            let request = request.clone();
            async move { agent.image_resolved(request).await }
        }) => answer,
        _ = cancel.wait_for(|c| *c) => return Resolution::End("cancelled", "cancelled before it started".into()),
    };
    tracing::debug!(
        answered = answer.is_ok(),
        "the coordinator answered the image report"
    );
    match answer {
        Ok(answer) if answer.run => Resolution::Run(resolved),
        Ok(answer) => Resolution::Stop(answer.reason),
        Err(status) if ferry_common::channel::is_refusal(status.code()) => Resolution::End(
            "error",
            format!(
                "the coordinator refused the step's resolved image: {}",
                status.message()
            ),
        ),
        // Not "error": the step did not fail, so the coordinator retries it
        // without using up its retries.
        Err(status) => Resolution::End(
            "cancelled",
            format!(
                "no coordinator answered the report of the step's resolved image within {}s: {}",
                IMAGE_REPORT_PATIENCE.as_secs(),
                status.message()
            ),
        ),
    }
}

/// Runs the step's command in a container of the `resolved` image to its end;
/// how it ended and what it used. An error when the container could not be
/// made.
#[allow(clippy::too_many_arguments)]
pub(super) async fn execute_in_container(
    ctx: &ExecutorContext,
    runtime: &DockerRuntime,
    spec: &proto::ContainerSpec,
    resolved: &ResolvedImage,
    assignment: &proto::Assignment,
    work_dir: &Path,
    log_path: &Path,
    metrics_path: &Path,
    staged: &Staged,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(Ended, Usage), String> {
    if assignment.command.is_empty() {
        return Err("the step has an empty command".into());
    }
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let request = assignment.resources.as_ref().map_or(0, |r| r.memory_bytes);
    let memory_limit = memory_limit(request, ctx.memory_limit_factor);
    let plan = ContainerPlan {
        image_id: resolved.id.clone(),
        command: assignment.command.clone(),
        env: container_environment(ctx, assignment, work_dir, metrics_path, staged),
        work_dir: work_dir.to_path_buf(),
        extra_mounts: std::iter::once((metrics_path.to_path_buf(), false))
            .chain(staged.secrets.dir.clone().map(|dir| (dir, true)))
            .collect(),
        user: runtime.user,
        cpu_millis: assignment.resources.as_ref().map_or(0, |r| r.cpu_millis),
        memory_limit,
        pids_max: ctx.pids_max,
        shm_size_bytes: spec.shm_size_bytes,
        network: network_mode(spec),
        read_only_root: spec.read_only_root,
        gpu_devices: gpu_names(&assignment.gpu_indices, &ctx.gpus).0,
        labels: AttemptLabels {
            run: attempt.run_id,
            step: attempt.step.clone(),
            attempt: attempt.attempt,
            worker: runtime.worker.clone(),
            worker_id: runtime.worker_id.clone(),
        },
    };
    // The metrics file is mounted into the container, so it must exist (the
    // hand-over to the step's user made it already, where there was one).
    if !tokio::fs::try_exists(metrics_path).await.unwrap_or(false) {
        tokio::fs::write(metrics_path, b"")
            .await
            .map_err(|e| format!("cannot create the step's metrics file: {e}"))?;
    }
    let id = runtime.create(container_body(&plan)).await?;
    tracing::debug!(container = %id, "step container created");
    let ran = run_container(
        ctx,
        runtime,
        &id,
        assignment,
        log_path,
        staged,
        cancel,
        memory_limit,
    )
    .await;
    // Whatever happened, the container goes, and its anonymous volumes.
    if let Err(error) = runtime.remove(&id).await {
        tracing::warn!(container = %id, %error, "cannot remove the step's container");
    }
    ran
}

/// The kernel's memory limit for a container: the memory request times
/// `memory_limit_factor` (the processes' rule), none without a request or
/// with the factor 0.
pub(super) fn memory_limit(request: u64, factor: f64) -> Option<u64> {
    (factor > 0.0 && request > 0).then_some((request as f64 * factor) as u64)
}

/// The container's whole environment: the spec's `env` and Ferry's variables
/// (what a process step receives beyond the worker's allow-list), the step's
/// secrets, and nothing of the worker daemon's own environment.
fn container_environment(
    ctx: &ExecutorContext,
    assignment: &proto::Assignment,
    work_dir: &Path,
    metrics_path: &Path,
    staged: &Staged,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> =
        step_environment(&ctx.gpus, assignment, work_dir, staged)
            .into_iter()
            .collect();
    env.extend(staged.secrets.env.iter().cloned());
    if let Some(dir) = &staged.secrets.dir {
        env.insert("FERRY_SECRETS_DIR".into(), dir.display().to_string());
    }
    env.insert("FERRY_METRICS".into(), metrics_path.display().to_string());
    env
}

/// Attaches, starts and waits for the container, sampling its usage while it
/// runs; how it ended and what it used.
#[allow(clippy::too_many_arguments)]
async fn run_container(
    ctx: &ExecutorContext,
    runtime: &DockerRuntime,
    id: &str,
    assignment: &proto::Assignment,
    log_path: &Path,
    staged: &Staged,
    cancel: &mut watch::Receiver<bool>,
    memory_limit: Option<u64>,
) -> Result<(Ended, Usage), String> {
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let output = runtime.attach(id).await?;
    let (stdout, mut stdout_in) = tokio::io::simplex(PIPE_BYTES);
    let (stderr, mut stderr_in) = tokio::io::simplex(PIPE_BYTES);
    let logs = LogPipeline::start(
        ctx,
        &attempt,
        stdout,
        stderr,
        log_path,
        staged.secrets.mask.clone(),
    );
    // The engine's frames, split back into the two streams; it ends when the
    // container has exited (or the connection goes).
    let demux = tokio::spawn(async move {
        let mut output = std::pin::pin!(output);
        while let Some(Ok(frame)) = output.next().await {
            let written = match frame {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout_in.write_all(&message).await
                }
                LogOutput::StdErr { message } => stderr_in.write_all(&message).await,
                LogOutput::StdIn { .. } => Ok(()),
            };
            if written.is_err() {
                break;
            }
        }
        let _ = stdout_in.shutdown().await;
        let _ = stderr_in.shutdown().await;
    });
    let started = runtime.start(id).await;
    tracing::debug!(container = %id, ok = started.is_ok(), "step container started");
    let mut usage = ContainerUsage::started();
    let ended = match started {
        Err(reason) => Err(reason),
        Ok(()) => {
            let timeout =
                (assignment.timeout_ms > 0).then(|| Duration::from_millis(assignment.timeout_ms));
            let waited = async {
                tokio::select! {
                    _ = runtime.wait(id) => None,
                    _ = async { match timeout { Some(t) => tokio::time::sleep(t).await, None => std::future::pending().await } } => Some(Ended::TimedOut),
                    _ = cancel.wait_for(|c| *c) => Some(Ended::Cancelled),
                }
            };
            let stopped = usage.sample_during(runtime, id, waited).await;
            match stopped {
                Some(ended) => {
                    let stop = async {
                        runtime.stop(id, STOP_GRACE).await;
                        runtime.wait(id).await;
                    };
                    usage.sample_during(runtime, id, stop).await;
                    Ok(ended)
                }
                None => runtime
                    .exit_settled(id, memory_limit.is_some())
                    .await
                    .map(|exit| ended_from(exit, memory_limit)),
            }
        }
    };
    // The output ends with the container; a stream the engine keeps open past
    // that is cut after the grace.
    let abort = demux.abort_handle();
    if tokio::time::timeout(STOP_GRACE, demux).await.is_err() {
        abort.abort();
    }
    logs.finish(STOP_GRACE).await;
    let used = usage.used();
    ended.map(|ended| {
        let usage = Usage {
            cpu_time_ms: used.cpu_time_ns / 1_000_000,
            peak_memory_bytes: used.peak_memory_bytes,
        };
        (ended, usage)
    })
}

/// How an exited container ended for the attempt: the kernel's OOM kill, or
/// its exit code (a signal shows as 128 + its number, as the engine reports it).
pub(super) fn ended_from(exit: ContainerExit, memory_limit: Option<u64>) -> Ended {
    if exit.oom_killed {
        return Ended::ContainerOutOfMemory {
            limit: memory_limit.unwrap_or(0),
        };
    }
    let code = (exit.exit_code.clamp(0, 255) as i32) << 8;
    Ended::Exited(std::process::ExitStatus::from_raw(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_follows_the_factor_of_the_request() {
        assert_eq!(memory_limit(1 << 30, 2.0), Some(2 << 30));
        assert_eq!(memory_limit(1 << 30, 0.0), None);
        assert_eq!(memory_limit(0, 2.0), None);
    }

    #[test]
    fn an_oom_kill_wins_over_the_exit_code() {
        let oom = ended_from(
            ContainerExit {
                exit_code: 137,
                oom_killed: true,
            },
            Some(64 << 20),
        );
        assert!(matches!(oom, Ended::ContainerOutOfMemory { limit } if limit == 64 << 20));
        let exited = ended_from(
            ContainerExit {
                exit_code: 3,
                oom_killed: false,
            },
            None,
        );
        assert!(matches!(exited, Ended::Exited(status) if status.code() == Some(3)));
    }
}
