//! Runs one attempt of a step: a fresh work directory with the code bundle, the
//! input artifacts and the trials of any gathered sweep staged into it, the
//! command as a process in its own process group, stdout and stderr shipped line
//! by line, timeout and cancellation enforced on the whole group, and the
//! declared outputs checked and uploaded.
//!
//! [`run_attempt`] here drives the attempt through the parts, which do not use
//! one another beyond what is listed: `staging` (bundle, inputs, gathered
//! sweeps, the step's environment), `process` (spawn, wait, kill, CPU time; it
//! starts the `logs` readers and shipper and takes the environment from
//! `staging`), `logs` (line readers, the local log file, shipping), `outputs`
//! (checked outputs and uploads) and `metrics` (the `FERRY_METRICS` file).
//! `context` holds what they all share. A step with an image runs through
//! `in_container` instead of `process` (the same staging, logs, outputs and
//! metrics; the container runtime is `crate::container`).

mod context;
pub mod direct;
pub mod environment;
mod in_container;
mod logs;
mod metrics;
mod outputs;
mod process;
mod secrets;
mod staging;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use ferry_common::proto;
use ferry_common::spec::{format_bytes, format_duration_ms};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::workdirs::{Fingerprint, WorkDirs};
use in_container::{Resolution, execute_in_container, resolve_image};
use outputs::{collect_outputs, upload_file};
use process::{Ended, execute};
use staging::{StageError, stage};

pub use crate::session::leader::Agent;
pub use context::ExecutorContext;
pub use metrics::{parse_metrics, read_metrics};
pub use outputs::checked_output_path;
pub use process::Usage;
pub use secrets::remove_leftovers as remove_leftover_secrets;

/// How long the report that the step started keeps trying through coordinator
/// failovers and restarts before the attempt goes on without it.
const STEP_STARTED_PATIENCE: Duration = Duration::from_secs(10);
/// A step that ends sooner is never reported as started (it is a few commands
/// fewer per short step); its final report says how long it ran.
const START_REPORT_DELAY: Duration = Duration::from_millis(100);

/// Runs one attempt and returns the report to send; none when the coordinator
/// ended the attempt before it ran (a container step whose result, keyed by the
/// image's ID, exists or is being computed). Never panics on a bad step: every
/// failure becomes an outcome with a reason.
pub async fn run_attempt(
    ctx: &ExecutorContext,
    assignment: proto::Assignment,
    cancel: watch::Receiver<bool>,
) -> Option<proto::StepFinishedRequest> {
    let mut cancel = cancel;
    let mut resolved = None;
    if let (Some(container), Some(runtime)) = (&assignment.container, &ctx.containers) {
        let attempt = assignment.attempt.clone().unwrap_or_default();
        match resolve_image(ctx, runtime, container, &attempt, &mut cancel).await {
            Resolution::Run(image) => resolved = Some(image),
            Resolution::Stop(reason) => {
                tracing::info!(%reason, "the coordinator ended the attempt before it ran");
                return None;
            }
            Resolution::End(outcome, reason) => {
                return Some(failed_report(&assignment, outcome, reason));
            }
        }
    }
    Some(run_resolved(ctx, assignment, cancel, resolved).await)
}

/// The report of an attempt that ended before it ran.
fn failed_report(
    assignment: &proto::Assignment,
    outcome: &str,
    reason: String,
) -> proto::StepFinishedRequest {
    proto::StepFinishedRequest {
        attempt: assignment.attempt.clone(),
        outcome: outcome.to_string(),
        reason,
        ..Default::default()
    }
}

/// Runs one attempt whose image (for a step with one) is resolved.
async fn run_resolved(
    ctx: &ExecutorContext,
    assignment: proto::Assignment,
    mut cancel: watch::Receiver<bool>,
    resolved: Option<crate::container::ResolvedImage>,
) -> proto::StepFinishedRequest {
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let report =
        |outcome: &str, exit: Option<i32>, reason: String, outputs| proto::StepFinishedRequest {
            attempt: Some(attempt.clone()),
            outcome: outcome.to_string(),
            has_exit_code: exit.is_some(),
            exit_code: exit.unwrap_or(0),
            reason,
            outputs,
            log: None,
            cpu_time_ms: 0,
            peak_memory_bytes: 0,
            has_ran_ms: false,
            ran_ms: 0,
            metrics: Vec::new(),
            image_id: String::new(),
            image_repo_digest: String::new(),
        };
    if let Some(reason) = secrets::refused(&assignment) {
        return report("error", None, reason, Vec::new());
    }
    if let Some(container) = &assignment.container
        && ctx.containers.is_none()
    {
        return report(
            "error",
            None,
            format!(
                "the step runs in image {:?}, but this worker has no container runtime                  (container_runtime in worker.toml)",
                container.image
            ),
            Vec::new(),
        );
    }
    // Who the step's files are handed to: the container's user for a step in
    // a container (when the worker is root and can hand them over), else the
    // process steps' user.
    let step_user = match (&assignment.container, &ctx.containers) {
        (Some(_), Some(runtime)) => environment::container_step_user(runtime.user),
        _ => ctx.identity.switch_to.clone(),
    };
    let bundle = assignment.bundle_digest.clone();
    // A pooled directory is checked again, contents included, as it is taken.
    let work_dirs = ctx.work_dirs.clone();
    let wanted = bundle.clone();
    let pooled = tokio::task::spawn_blocking(move || work_dirs.take(&wanted))
        .await
        .ok()
        .flatten();
    let (work_dir, mut fingerprint) = match pooled {
        Some((dir, fingerprint)) => (dir, Some(fingerprint)),
        None => (ctx.work_dirs.fresh(), None),
    };
    // A staged file may be a hard link to the blob cache's read-only entry only
    // if the step cannot write it: it runs as another user than the worker
    // (the entry's owner), and not as root.
    let may_link = step_user
        .as_ref()
        .is_some_and(|user| !user.uid.is_root() && user.uid != nix::unistd::geteuid());
    let staged = tokio::select! {
        staged = stage(ctx, &assignment, &work_dir, &mut fingerprint, may_link) => staged,
        _ = cancel.wait_for(|c| *c) => Err(StageError::Cancelled),
    };
    let mut staged = match staged {
        Ok(staged) => {
            tracing::debug!("staged");
            staged
        }
        Err(error) => {
            give_back(ctx, bundle, work_dir, fingerprint).await;
            if matches!(error, StageError::Cancelled) {
                return report(
                    "cancelled",
                    None,
                    "cancelled before it started".into(),
                    Vec::new(),
                );
            }
            return report(
                "error",
                None,
                format!("staging failed: {error}"),
                Vec::new(),
            );
        }
    };
    let started = proto::StepStartedRequest {
        attempt: Some(attempt.clone()),
    };
    // Reported once the process has run START_REPORT_DELAY, never before it
    // starts: a short step's start is not reported at all (its final report says
    // how long it ran), and the final report waits for this one so that they
    // arrive in order.
    let give_up = Instant::now() + START_REPORT_DELAY + STEP_STARTED_PATIENCE;
    let coordinators = ctx.coordinators.clone();
    let (finished, mut finished_early) = watch::channel(false);
    let start_report = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(START_REPORT_DELAY) => {}
            _ = finished_early.wait_for(|f| *f) => return,
        }
        if let Err(status) = coordinators
            .call(Some(give_up), |mut agent| {
                let started = started.clone();
                async move { agent.step_started(started).await }
            })
            .await
        {
            // The step runs anyway; its final report carries what matters.
            tracing::debug!(%status, "step start not reported");
        }
    });

    let log_path = ctx.data_dir.join("logs").join(format!(
        "run-{}-{}-{}.jsonl.gz",
        attempt.run_id, attempt.step, attempt.attempt
    ));
    let metrics_path = ctx.data_dir.join("metrics").join(format!(
        "run-{}-{}-{}.jsonl",
        attempt.run_id, attempt.step, attempt.attempt
    ));
    let _ = tokio::fs::remove_file(&metrics_path).await;
    if let Some(user) = step_user.clone() {
        // The step runs as another user: its work directory and metrics file
        // become that user's, and nothing else of the worker's.
        // A directory it changed is fingerprinted again (the staged one was
        // taken before), so that it can still be pooled; a pooled directory
        // already is the user's and is left as it is.
        let (dir, metrics) = (work_dir.clone(), metrics_path.clone());
        let pooled = fingerprint.is_some();
        let shared = staged.shared.clone();
        let handed = tokio::task::spawn_blocking(move || {
            let changed = environment::hand_over(&dir, &metrics, &user, &shared)
                .map_err(|e| format!("{e} (giving the work directory to \"{}\")", user.name))?;
            Ok::<_, String>(
                (changed && pooled).then(|| crate::workdirs::Fingerprint::of(&dir).ok().flatten()),
            )
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Ok(Some(again)) = &handed {
            fingerprint = again.clone();
        }
        if let Err(reason) = handed {
            let _ = finished.send(true);
            let _ = start_report.await;
            give_back(ctx, bundle, work_dir, None).await;
            return report(
                "error",
                None,
                format!("cannot prepare the step's files: {reason}"),
                Vec::new(),
            );
        }
    }
    // The step's secrets, for this attempt only: dropping them removes the
    // attempt's secrets directory, whatever way the attempt ends.
    let (given, data_dir, user) = (assignment.clone(), ctx.data_dir.clone(), step_user);
    let prepared =
        tokio::task::spawn_blocking(move || secrets::prepare(&given, &data_dir, user.as_ref()))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
    staged.secrets = match prepared {
        Ok(prepared) => prepared,
        Err(reason) => {
            let _ = finished.send(true);
            let _ = start_report.await;
            give_back(ctx, bundle, work_dir, fingerprint).await;
            return report("error", None, reason, Vec::new());
        }
    };
    let began = Instant::now();
    let executed = match (&assignment.container, &ctx.containers, &resolved) {
        (Some(container), Some(runtime), Some(image)) => {
            execute_in_container(
                ctx,
                runtime,
                container,
                image,
                &assignment,
                &work_dir,
                &log_path,
                &metrics_path,
                &staged,
                &mut cancel,
            )
            .await
        }
        _ => {
            execute(
                ctx,
                &assignment,
                &work_dir,
                &log_path,
                &metrics_path,
                &staged,
                &mut cancel,
            )
            .await
        }
    };
    drop(std::mem::take(&mut staged.secrets));
    let ran = began.elapsed();
    let _ = finished.send(true);
    let _ = start_report.await;
    let (ended, usage) = match executed {
        Ok((ended, usage)) => (Ok(ended), usage),
        Err(reason) => (Err(reason), Usage::default()),
    };
    if let Ok(written) = std::fs::metadata(&log_path) {
        ctx.metrics.logged(written.len());
    }
    if matches!(
        ended,
        Ok(Ended::OverMemory { .. } | Ended::ContainerOutOfMemory { .. })
    ) {
        ctx.metrics.memory_killed();
    }
    let mut result = match ended {
        Err(reason) => report("error", None, reason, Vec::new()),
        Ok(Ended::TimedOut) => report(
            "timed_out",
            None,
            format!(
                "timed out after {}; its processes were killed",
                format_duration_ms(assignment.timeout_ms)
            ),
            Vec::new(),
        ),
        Ok(Ended::Cancelled) => report("cancelled", None, "cancelled".into(), Vec::new()),
        Ok(Ended::Lost(reason)) => report("error", None, reason, Vec::new()),
        Ok(Ended::OverMemory {
            used,
            limit,
            by_kernel,
        }) => report(
            "error",
            None,
            format!(
                "killed: its processes held {} of memory, over its limit of {} (memory limit \
                 exceeded{}; {}× its memory request of {}; memory_limit_factor in worker.toml)",
                format_bytes(used),
                format_bytes(limit),
                if by_kernel {
                    ", enforced by the kernel"
                } else {
                    ""
                },
                ctx.memory_limit_factor,
                format_bytes(assignment.resources.as_ref().map_or(0, |r| r.memory_bytes))
            ),
            Vec::new(),
        ),
        Ok(Ended::ContainerOutOfMemory { limit }) => report(
            "error",
            None,
            if limit > 0 {
                format!(
                    "killed: out of memory (limit {}; {}× its memory request of {}, \
                     memory_limit_factor in worker.toml)",
                    format_bytes(limit),
                    ctx.memory_limit_factor,
                    format_bytes(assignment.resources.as_ref().map_or(0, |r| r.memory_bytes))
                )
            } else {
                "killed: out of memory (no limit was set; the host ran out)".to_string()
            },
            Vec::new(),
        ),
        Ok(Ended::Exited(status)) => match status.code() {
            Some(0) => match collect_outputs(ctx, &attempt, &assignment.outputs, &work_dir).await {
                Ok(outputs) => report("exited", Some(0), String::new(), outputs),
                Err(reason) => report("error", Some(0), reason, Vec::new()),
            },
            Some(code) => report(
                "exited",
                Some(code),
                format!("exited with code {code}"),
                Vec::new(),
            ),
            None => report(
                "exited",
                None,
                format!("killed by signal {}", status.signal().unwrap_or(0)),
                Vec::new(),
            ),
        },
    };
    let (metrics, problem) = read_metrics(&metrics_path).await;
    result.metrics = metrics;
    if let Some(problem) = problem {
        if result.reason.is_empty() {
            result.reason = problem;
        } else {
            result.reason = format!("{}; {problem}", result.reason);
        }
    }
    let _ = tokio::fs::remove_file(&metrics_path).await;
    if let Some(image) = resolved {
        result.image_id = image.id;
        result.image_repo_digest = image.repo_digest.unwrap_or_default();
    }
    result.cpu_time_ms = usage.cpu_time_ms;
    result.peak_memory_bytes = usage.peak_memory_bytes;
    result.has_ran_ms = true;
    result.ran_ms = ran.as_millis() as u64;
    give_back(ctx, bundle, work_dir, fingerprint).await;
    // The whole log goes up as a blob with the report: the coordinators keep it on
    // a majority, so it outlives the leader that received the live lines.
    if tokio::fs::try_exists(&log_path).await.unwrap_or(false) {
        match upload_file(&ctx.coordinators, &attempt, &log_path).await {
            Ok((digest, size)) => result.log = Some(proto::BlobRef { digest, size }),
            Err(error) => {
                tracing::warn!(%error, run = attempt.run_id, step = %attempt.step, "the attempt's log could not be uploaded")
            }
        }
        let _ = tokio::fs::remove_file(&log_path).await;
    }
    result
}

/// Returns a work directory to the pool (checking it is a few `stat`s, bounded
/// by the pool's entry limit, done in place), or removes it on a blocking thread.
async fn give_back(
    ctx: &ExecutorContext,
    bundle: String,
    dir: PathBuf,
    fingerprint: Option<Fingerprint>,
) {
    let Some(dir) = ctx.work_dirs.pool(&bundle, dir, fingerprint) else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || WorkDirs::remove(&dir)).await;
}
