//! Runs one attempt of a step: a fresh work directory with the code bundle, the
//! input artifacts and the trials of any gathered sweep staged into it, the
//! command as a process in its own process group, stdout and stderr shipped line
//! by line, timeout and cancellation enforced on the whole group, and the
//! declared outputs checked and uploaded.

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_common::digest::{CHUNK_SIZE, digest_file};
use ferry_common::proto::{self, agent_client::AgentClient};
use ferry_common::spec::{env_var_name, format_bytes, format_duration_ms};
use futures::StreamExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::session::Coordinators;
use crate::usage::{Monitor, read_stat, ticks_to_ms};
use crate::workdirs::{Fingerprint, WorkDirs};

/// Longest log line kept; a longer one is split.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long a process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Log lines are shipped in batches of at most this many, at least this often.
const LOG_BATCH_LINES: usize = 500;
const LOG_BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long each call keeps trying through coordinator failovers and restarts
/// before the attempt goes on without it (or, for a blob it needs, fails).
const STEP_STARTED_PATIENCE: Duration = Duration::from_secs(10);
/// A step that ends sooner is never reported as started (it is a few commands
/// fewer per short step); its final report says how long it ran.
const START_REPORT_DELAY: Duration = Duration::from_millis(100);
const FETCH_PATIENCE: Duration = Duration::from_secs(60);
const LOG_PATIENCE: Duration = Duration::from_secs(60);
const UPLOAD_PATIENCE: Duration = Duration::from_secs(120);

pub type Agent = AgentClient<Channel>;

/// What every attempt on this worker shares.
#[derive(Clone)]
pub struct ExecutorContext {
    /// Every call goes to the coordinator chosen now, and follows a switch.
    pub coordinators: Arc<Coordinators>,
    pub data_dir: PathBuf,
    pub gpus: Vec<proto::Gpu>,
    pub max_log_bytes: u64,
    /// Samples every attempt's process group (CPU, memory) and flags one over its
    /// memory limit.
    pub monitor: Arc<Monitor>,
    /// A step is killed once its processes hold more than this times its memory
    /// request (0: never).
    pub memory_limit_factor: f64,
    /// Work directories, reused when an attempt left them untouched.
    pub work_dirs: Arc<WorkDirs>,
    /// Sends the attempts' final reports, batched.
    pub reports: crate::session::Reports,
}

/// What an attempt's processes used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error("{0}")]
    Io(String),
    #[error("cannot fetch blob {digest}: {status}")]
    Fetch {
        digest: String,
        status: tonic::Status,
    },
    #[error("blob {digest} arrived corrupted (its content hashes to {actual})")]
    Corrupt { digest: String, actual: String },
    #[error("the code bundle cannot be unpacked: {0}")]
    Bundle(String),
    /// A path the assignment names that is not a plain relative path, refused
    /// before anything is written there.
    #[error("{what} {path:?} {problem}; refused")]
    UnsafePath {
        what: &'static str,
        path: String,
        problem: &'static str,
    },
    #[error("cancelled")]
    Cancelled,
}

fn io_error(what: impl std::fmt::Display, error: std::io::Error) -> StageError {
    StageError::Io(format!("{what}: {error}"))
}

/// Runs one attempt and returns the report to send. Never panics on a bad step:
/// every failure becomes an outcome with a reason.
pub async fn run_attempt(
    ctx: &ExecutorContext,
    assignment: proto::Assignment,
    mut cancel: watch::Receiver<bool>,
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
        };
    let bundle = assignment.bundle_digest.clone();
    let (work_dir, mut fingerprint) = match ctx.work_dirs.take(&bundle) {
        Some((dir, fingerprint)) => (dir, Some(fingerprint)),
        None => (ctx.work_dirs.fresh(), None),
    };
    let staged = tokio::select! {
        staged = stage(ctx, &assignment, &work_dir, &mut fingerprint) => staged,
        _ = cancel.wait_for(|c| *c) => Err(StageError::Cancelled),
    };
    let staged = match staged {
        Ok(staged) => staged,
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
        "run-{}-{}-{}.jsonl",
        attempt.run_id, attempt.step, attempt.attempt
    ));
    let metrics_path = ctx.data_dir.join("metrics").join(format!(
        "run-{}-{}-{}.jsonl",
        attempt.run_id, attempt.step, attempt.attempt
    ));
    let _ = tokio::fs::remove_file(&metrics_path).await;
    let began = Instant::now();
    let executed = execute(
        ctx,
        &assignment,
        &work_dir,
        &log_path,
        &metrics_path,
        &staged,
        &mut cancel,
    )
    .await;
    let ran = began.elapsed();
    let _ = finished.send(true);
    let _ = start_report.await;
    let (ended, usage) = match executed {
        Ok((ended, usage)) => (Ok(ended), usage),
        Err(reason) => (Err(reason), Usage::default()),
    };
    let mut result = match ended {
        Err(reason) => report("error", None, reason, Vec::new()),
        Ok(Ended::TimedOut) => report(
            "timed_out",
            None,
            format!(
                "timed out after {}; its process group was killed",
                format_duration_ms(assignment.timeout_ms)
            ),
            Vec::new(),
        ),
        Ok(Ended::Cancelled) => report("cancelled", None, "cancelled".into(), Vec::new()),
        Ok(Ended::Lost(reason)) => report("error", None, reason, Vec::new()),
        Ok(Ended::OverMemory { used, limit }) => report(
            "error",
            None,
            format!(
                "killed: its processes held {} of memory, over its limit of {} ({}× its \
                 memory request of {}; memory_limit_factor in worker.toml)",
                format_bytes(used),
                format_bytes(limit),
                ctx.memory_limit_factor,
                format_bytes(assignment.resources.as_ref().map_or(0, |r| r.memory_bytes))
            ),
            Vec::new(),
        ),
        Ok(Ended::Exited(status)) => match status.code() {
            Some(0) => match collect_outputs(ctx, &assignment.outputs, &work_dir).await {
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
    result.cpu_time_ms = usage.cpu_time_ms;
    result.peak_memory_bytes = usage.peak_memory_bytes;
    result.has_ran_ms = true;
    result.ran_ms = ran.as_millis() as u64;
    give_back(ctx, bundle, work_dir, fingerprint).await;
    // The whole log goes up as a blob with the report: the coordinators keep it on
    // a majority, so it outlives the leader that received the live lines.
    if tokio::fs::try_exists(&log_path).await.unwrap_or(false) {
        match upload_file(&ctx.coordinators, &log_path).await {
            Ok((digest, size)) => result.log = Some(proto::BlobRef { digest, size }),
            Err(error) => {
                tracing::warn!(%error, run = attempt.run_id, step = %attempt.step, "the attempt's log could not be uploaded")
            }
        }
        let _ = tokio::fs::remove_file(&log_path).await;
    }
    result
}

/// Most bytes of a metrics file read, and most values kept per attempt.
const MAX_METRICS_BYTES: u64 = 4 * 1024 * 1024;
const MAX_METRICS: usize = 10_000;
const MAX_METRIC_NAME: usize = 128;

/// One line of a `FERRY_METRICS` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricLine {
    name: String,
    value: f64,
    #[serde(default)]
    step: Option<i64>,
}

/// Reads what a step wrote to its `FERRY_METRICS` file (JSON lines: `name`,
/// `value`, optional `step`). Lines that are not such an object are skipped, and
/// the second value says how many and why the first was refused.
pub async fn read_metrics(path: &Path) -> (Vec<proto::Metric>, Option<String>) {
    let Ok(file) = tokio::fs::File::open(path).await else {
        return (Vec::new(), None);
    };
    let mut text = String::new();
    let mut limited = file.take(MAX_METRICS_BYTES);
    if let Err(error) = limited.read_to_string(&mut text).await {
        return (
            Vec::new(),
            Some(format!("the metrics file could not be read: {error}")),
        );
    }
    parse_metrics(&text)
}

/// The metrics in `text` (see [`read_metrics`]). Past [`MAX_METRICS`] values,
/// the first ones and the last value of each name are kept (a training loop
/// that logs every iteration keeps its final numbers).
pub fn parse_metrics(text: &str) -> (Vec<proto::Metric>, Option<String>) {
    let (metrics, skipped) = parse_metric_lines(text);
    let (metrics, dropped) = keep_first_and_last(metrics);
    let notes: Vec<String> = skipped
        .into_iter()
        .chain((dropped > 0).then(|| {
            format!(
                "{dropped} value{} dropped: more than {MAX_METRICS}, so the first ones and \
                 the last of each name are kept",
                if dropped == 1 { "" } else { "s" }
            )
        }))
        .collect();
    (metrics, (!notes.is_empty()).then(|| notes.join("; ")))
}

/// At most [`MAX_METRICS`] of `metrics`, in order: the last value of each name,
/// and as many of the first values as leave room for those; how many went.
fn keep_first_and_last(metrics: Vec<proto::Metric>) -> (Vec<proto::Metric>, usize) {
    if metrics.len() <= MAX_METRICS {
        return (metrics, 0);
    }
    let mut last_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, metric) in metrics.iter().enumerate() {
        last_of.insert(&metric.name, i);
    }
    let mut lasts: Vec<usize> = last_of.into_values().collect();
    lasts.sort_unstable();
    lasts.truncate(MAX_METRICS);
    let lasts: std::collections::HashSet<usize> = lasts.into_iter().collect();
    let mut room = MAX_METRICS - lasts.len();
    let total = metrics.len();
    let kept: Vec<proto::Metric> = metrics
        .into_iter()
        .enumerate()
        .filter(|(i, _)| {
            if lasts.contains(i) {
                true
            } else if room > 0 {
                room -= 1;
                true
            } else {
                false
            }
        })
        .map(|(_, metric)| metric)
        .collect();
    let dropped = total - kept.len();
    (kept, dropped)
}

/// Every well-formed line of `text`, and what was said of the others.
fn parse_metric_lines(text: &str) -> (Vec<proto::Metric>, Option<String>) {
    let mut metrics = Vec::new();
    let mut skipped = 0usize;
    let mut first_problem: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let problem = match serde_json::from_str::<MetricLine>(line) {
            Ok(metric) if metric.name.is_empty() || metric.name.len() > MAX_METRIC_NAME => {
                Some(format!("a name must have 1 to {MAX_METRIC_NAME} bytes"))
            }
            Ok(metric) => {
                metrics.push(proto::Metric {
                    name: metric.name,
                    value: metric.value,
                    has_step: metric.step.is_some(),
                    step: metric.step.unwrap_or(0),
                    count: 0,
                });
                None
            }
            Err(_) if line.contains("NaN") || line.contains("Infinity") => {
                Some("a value must be a finite number, not NaN or Infinity".to_string())
            }
            Err(error) => Some(format!(
                "{error}; write {{\"name\": \"accuracy\", \"value\": 0.93, \"step\": 3}}"
            )),
        };
        if let Some(problem) = problem {
            skipped += 1;
            first_problem.get_or_insert_with(|| format!("line {}: {problem}", number + 1));
        }
    }
    let note = first_problem.map(|first| {
        format!(
            "{skipped} line{} of FERRY_METRICS ignored ({first})",
            if skipped == 1 { "" } else { "s" }
        )
    });
    (metrics, note)
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

/// Where staging put an attempt's inputs and gathered sweeps; its environment
/// names them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Staged {
    /// Each input's file, by input name.
    inputs: Vec<(String, PathBuf)>,
    /// Each gathered sweep's directory, in the assignment's order.
    gathers: Vec<GatherDir>,
}

/// One gathered sweep, staged under `<work dir>/gather/<step>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GatherDir {
    /// The sweep as written in the pipeline (`train`).
    step: String,
    /// Every trial's files at `<trial>/<output path>`, and `trials.json`.
    dir: PathBuf,
    /// `<dir>/<best trial>`, when a best trial was asked for and found.
    best: Option<PathBuf>,
}

/// What staging one gathered sweep writes, every path already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GatherPlan {
    dir: GatherDir,
    /// The digest of each trial's file and where it goes inside `dir`.
    files: Vec<(String, PathBuf)>,
    /// The text of `trials.json`, as the coordinator wrote it.
    manifest: String,
}

/// The file, in each gathered sweep's directory, that describes every trial.
const GATHER_MANIFEST: &str = "trials.json";

/// Stages into `work_dir`: unpacks the bundle unless the directory came from the
/// pool with it (`fingerprint` is then set; a fresh unpack sets it), then the
/// inputs at `inputs/<name>/<file name>` and the gathered sweeps at
/// `gather/<step>/`. Everything staged lives under the work directory and is
/// written after the fingerprint is taken, so a directory that received an input
/// or a gathered file no longer matches it and is never pooled.
async fn stage(
    ctx: &ExecutorContext,
    assignment: &proto::Assignment,
    work_dir: &Path,
    fingerprint: &mut Option<Fingerprint>,
) -> Result<Staged, StageError> {
    // Every gathered path is checked before anything is fetched, so that a bad
    // one fails the attempt at once.
    let gather_plans = plan_gathers(work_dir, &assignment.gathers)?;
    if fingerprint.is_none() {
        unpack_bundle(ctx, assignment, work_dir).await?;
        let dir = work_dir.to_path_buf();
        *fingerprint = tokio::task::spawn_blocking(move || Fingerprint::of(&dir))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
    }
    let mut staged = Staged::default();
    for input in &assignment.inputs {
        check_path_component("input", &input.name)?;
        if input.file_name.contains('/') || input.file_name == ".." || input.file_name.is_empty() {
            return Err(StageError::Io(format!(
                "input file name {:?} is not a plain file name",
                input.file_name
            )));
        }
        let path = work_dir
            .join("inputs")
            .join(&input.name)
            .join(&input.file_name);
        fetch_blob(&ctx.coordinators, &input.digest, &path).await?;
        staged.inputs.push((input.name.clone(), path));
    }
    for plan in gather_plans {
        stage_gather(&plan, |digest, path| {
            fetch_blob(&ctx.coordinators, digest, path)
        })
        .await?;
        staged.gathers.push(plan.dir);
    }
    Ok(staged)
}

/// Where each gathered sweep goes: `<work dir>/gather/<step>`, each trial's file
/// at `<trial>/<output path>` inside it. Refuses a step, file name or best trial
/// that is not a plain relative path (it would land outside that directory), and
/// a file that would take the manifest's place.
fn plan_gathers(
    work_dir: &Path,
    gathers: &[proto::GatherInput],
) -> Result<Vec<GatherPlan>, StageError> {
    let mut plans = Vec::with_capacity(gathers.len());
    for gather in gathers {
        check_path_component("gathered step", &gather.step)?;
        let dir = work_dir.join("gather").join(&gather.step);
        let mut files = Vec::with_capacity(gather.files.len());
        for file in &gather.files {
            check_relative_path("gathered file", &file.name)?;
            if file.name.split('/').next() == Some(GATHER_MANIFEST) {
                return Err(StageError::UnsafePath {
                    what: "gathered file",
                    path: file.name.clone(),
                    problem: "would replace the sweep's trials.json",
                });
            }
            files.push((file.digest.clone(), dir.join(&file.name)));
        }
        let best = if gather.best_trial.is_empty() {
            None
        } else {
            check_path_component("best trial", &gather.best_trial)?;
            if gather.best_trial == GATHER_MANIFEST {
                return Err(StageError::UnsafePath {
                    what: "best trial",
                    path: gather.best_trial.clone(),
                    problem: "names the sweep's trials.json",
                });
            }
            Some(dir.join(&gather.best_trial))
        };
        plans.push(GatherPlan {
            dir: GatherDir {
                step: gather.step.clone(),
                dir,
                best,
            },
            files,
            manifest: gather.manifest_json.clone(),
        });
    }
    Ok(plans)
}

/// Writes one gathered sweep's directory: `trials.json`, the best trial's
/// directory (so that `FERRY_GATHER_<STEP>_BEST` names a directory even when that
/// trial wrote no file), and every trial's file through `fetch` (digest, path),
/// which creates the file's parent directories.
async fn stage_gather<'plan, Fetch, Fetched>(
    plan: &'plan GatherPlan,
    fetch: Fetch,
) -> Result<(), StageError>
where
    // Borrows for the plan's lifetime only (not for any lifetime, as an async
    // closure would), so that the attempt's future stays `Send`.
    Fetch: Fn(&'plan str, &'plan Path) -> Fetched,
    Fetched: std::future::Future<Output = Result<(), StageError>>,
{
    let dir = &plan.dir.dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
    let manifest = dir.join(GATHER_MANIFEST);
    tokio::fs::write(&manifest, &plan.manifest)
        .await
        .map_err(|e| io_error(format!("cannot write {}", manifest.display()), e))?;
    if let Some(best) = &plan.dir.best {
        tokio::fs::create_dir_all(best)
            .await
            .map_err(|e| io_error(format!("cannot create {}", best.display()), e))?;
    }
    for (digest, path) in &plan.files {
        fetch(digest, path).await?;
    }
    Ok(())
}

/// Checks that `path`, as the coordinator sent it, is relative and made of plain
/// components before it is joined onto a directory: `Path::join` with an absolute
/// path replaces the directory, and a `..` climbs out of it.
fn check_relative_path(what: &'static str, path: &str) -> Result<(), StageError> {
    let problem = if path.is_empty() {
        Some("is empty")
    } else if path.contains('\0') {
        Some("contains a NUL character")
    } else if path.starts_with('/') {
        Some("is absolute")
    } else if path.split('/').any(str::is_empty) {
        Some("has an empty component")
    } else if path.split('/').any(|part| part == "." || part == "..") {
        Some("has a '.' or '..' component")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(StageError::UnsafePath {
            what,
            path: path.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Like [`check_relative_path`], for a single directory or file name.
fn check_path_component(what: &'static str, name: &str) -> Result<(), StageError> {
    check_relative_path(what, name)?;
    if name.contains('/') {
        return Err(StageError::UnsafePath {
            what,
            path: name.to_string(),
            problem: "is not a single name (it contains '/')",
        });
    }
    Ok(())
}

/// Creates `work_dir` with the assignment's code bundle unpacked in it (the
/// bundle fetched once per worker and checked against its digest).
async fn unpack_bundle(
    ctx: &ExecutorContext,
    assignment: &proto::Assignment,
    work_dir: &Path,
) -> Result<(), StageError> {
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(|e| io_error(format!("cannot create {}", work_dir.display()), e))?;
    let bundles = ctx.data_dir.join("bundles");
    let bundle_path = bundles.join(format!("{}.tar.gz", assignment.bundle_digest));
    if !bundle_path.exists() {
        fetch_blob(&ctx.coordinators, &assignment.bundle_digest, &bundle_path).await?;
    }
    let bytes = tokio::fs::read(&bundle_path)
        .await
        .map_err(|e| io_error(format!("cannot read {}", bundle_path.display()), e))?;
    let actual = blake3::hash(&bytes).to_hex().to_string();
    if actual != assignment.bundle_digest {
        let _ = tokio::fs::remove_file(&bundle_path).await;
        return Err(StageError::Corrupt {
            digest: assignment.bundle_digest.clone(),
            actual,
        });
    }
    let dest = work_dir.to_path_buf();
    tokio::task::spawn_blocking(move || ferry_common::bundle::unpack_bundle(&bytes, &dest))
        .await
        .map_err(|e| StageError::Bundle(e.to_string()))?
        .map_err(|e| StageError::Bundle(e.to_string()))?;
    Ok(())
}

/// Downloads a blob to `path`, hashing it on the way; only a verified blob is
/// renamed into place. A download cut off by a failover starts again on the
/// coordinator switched to.
async fn fetch_blob(
    coordinators: &Coordinators,
    digest: &str,
    path: &Path,
) -> Result<(), StageError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| io_error(format!("cannot create {}", parent.display()), e))?;
    // A name of its own per download: attempts started together may fetch the same
    // bundle at once, and each must write its own file before the atomic rename.
    static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let number = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(
        ".{file_name}.partial-{}-{number}",
        std::process::id()
    ));
    let give_up = Instant::now() + FETCH_PATIENCE;
    loop {
        let coordinator = coordinators.current();
        let downloaded = download_blob(&coordinator.agent, digest, &partial).await;
        if downloaded.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        match downloaded {
            Ok(()) => {
                coordinators.answered(coordinator.generation);
                break;
            }
            Err(StageError::Fetch { digest, status }) => {
                match coordinators.retry_after(coordinator.generation, &status, Some(give_up)) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(StageError::Fetch { digest, status }),
                }
            }
            Err(error) => return Err(error),
        }
    }
    tokio::fs::rename(&partial, path)
        .await
        .map_err(|e| io_error(format!("cannot move {} into place", path.display()), e))
}

/// One try at downloading a blob into `partial`, verified against its digest.
async fn download_blob(agent: &Agent, digest: &str, partial: &Path) -> Result<(), StageError> {
    let fetch = |status| StageError::Fetch {
        digest: digest.to_string(),
        status,
    };
    let mut stream = agent
        .clone()
        .fetch_blob(proto::BlobRef {
            digest: digest.to_string(),
            size: 0,
        })
        .await
        .map_err(fetch)?
        .into_inner();
    let mut file = tokio::fs::File::create(partial)
        .await
        .map_err(|e| io_error(format!("cannot create {}", partial.display()), e))?;
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = stream.message().await.map_err(fetch)? {
        hasher.update(&chunk.data);
        file.write_all(&chunk.data)
            .await
            .map_err(|e| io_error(format!("cannot write {}", partial.display()), e))?;
    }
    file.flush()
        .await
        .map_err(|e| io_error(format!("cannot write {}", partial.display()), e))?;
    drop(file);
    let actual = hasher.finalize().to_hex().to_string();
    if actual != digest {
        return Err(StageError::Corrupt {
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

enum Ended {
    Exited(std::process::ExitStatus),
    /// The worker could not wait for the process; it is killed like a timed-out one.
    Lost(String),
    TimedOut,
    Cancelled,
    /// The group held more memory than its limit and was killed.
    OverMemory {
        used: u64,
        limit: u64,
    },
}

/// Waits (blocking) until process `pid` has exited; reads its final CPU time as
/// a zombie (its own and that of every descendant it waited for), then reaps it.
fn wait_for_exit(pid: i32) -> Result<(std::process::ExitStatus, Option<u64>), String> {
    use nix::errno::Errno;
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
    let target = Pid::from_raw(pid);
    loop {
        match waitid(Id::Pid(target), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(error) => return Err(format!("waiting for the process failed: {error}")),
        }
    }
    let cpu_ms = read_stat(pid).map(|stat| ticks_to_ms(stat.cpu_ticks));
    loop {
        match waitpid(target, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Ok((
                    std::process::ExitStatus::from_raw((code & 0xff) << 8),
                    cpu_ms,
                ));
            }
            Ok(WaitStatus::Signaled(_, signal, core)) => {
                let raw = signal as i32 | if core { 0x80 } else { 0 };
                return Ok((std::process::ExitStatus::from_raw(raw), cpu_ms));
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(error) => return Err(format!("waiting for the process failed: {error}")),
        }
    }
}

/// The environment a step sees beyond the worker's own: its parameters and env,
/// where its inputs and gathered sweeps are, who it is, and exactly which of the
/// worker's `gpus` it may use.
fn step_environment(
    gpus: &[proto::Gpu],
    assignment: &proto::Assignment,
    work_dir: &Path,
    staged: &Staged,
) -> HashMap<String, String> {
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let mut env: HashMap<String, String> = assignment.env.clone().into_iter().collect();
    env.insert("FERRY_RUN_ID".into(), attempt.run_id.to_string());
    env.insert("FERRY_STEP".into(), attempt.step.clone());
    env.insert("FERRY_ATTEMPT".into(), attempt.attempt.to_string());
    env.insert("FERRY_PIPELINE".into(), assignment.pipeline.clone());
    env.insert("FERRY_WORK_DIR".into(), work_dir.display().to_string());
    for (name, path) in &staged.inputs {
        env.insert(
            env_var_name("FERRY_INPUT_", name),
            path.display().to_string(),
        );
    }
    for gather in &staged.gathers {
        let name = env_var_name("FERRY_GATHER_", &gather.step);
        if let Some(best) = &gather.best {
            env.insert(format!("{name}_BEST"), best.display().to_string());
        }
        env.insert(name, gather.dir.display().to_string());
    }
    let indices: Vec<String> = assignment.gpu_indices.iter().map(u32::to_string).collect();
    let uuids: Vec<String> = assignment
        .gpu_indices
        .iter()
        .filter_map(|i| gpus.iter().find(|g| g.index == *i))
        .map(|g| g.uuid.clone())
        .collect();
    env.insert("CUDA_VISIBLE_DEVICES".into(), indices.join(","));
    env.insert(
        "NVIDIA_VISIBLE_DEVICES".into(),
        if indices.is_empty() {
            "void".into()
        } else {
            indices.join(",")
        },
    );
    env.insert("FERRY_GPUS".into(), uuids.join(","));
    env
}

async fn execute(
    ctx: &ExecutorContext,
    assignment: &proto::Assignment,
    work_dir: &Path,
    log_path: &Path,
    metrics_path: &Path,
    staged: &Staged,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(Ended, Usage), String> {
    let Some(program) = assignment.command.first() else {
        return Err("the step has an empty command".into());
    };
    let program_path = if program.contains('/') && !program.starts_with('/') {
        work_dir.join(program)
    } else {
        PathBuf::from(program)
    };
    // A std child, reaped by `wait_for_exit` (not by tokio), so that its final CPU
    // time can be read before it is reaped.
    let mut command = std::process::Command::new(&program_path);
    command
        .args(&assignment.command[1..])
        .current_dir(work_dir)
        .envs(step_environment(&ctx.gpus, assignment, work_dir, staged))
        .env("FERRY_METRICS", metrics_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let pid = child.id() as i32;
    let group = Pid::from_raw(pid);
    let attempt = assignment.attempt.clone().unwrap_or_default();
    tracing::debug!(run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt, pid, "step process started");
    let request = assignment.resources.as_ref().map_or(0, |r| r.memory_bytes);
    let limit = (ctx.memory_limit_factor > 0.0 && request > 0)
        .then_some((request as f64 * ctx.memory_limit_factor) as u64);
    let mut watched = ctx.monitor.watch(pid, limit);
    let mut waiter = tokio::task::spawn_blocking(move || wait_for_exit(pid));

    let (lines, receiver) = mpsc::channel::<(&'static str, String)>(1024);
    let pipes = child
        .stdout
        .take()
        .zip(child.stderr.take())
        .ok_or("the step's output pipes are missing")?;
    let stdout = tokio::process::ChildStdout::from_std(pipes.0)
        .map_err(|e| format!("cannot read the step's stdout: {e}"))?;
    let stderr = tokio::process::ChildStderr::from_std(pipes.1)
        .map_err(|e| format!("cannot read the step's stderr: {e}"))?;
    let readers = [
        tokio::spawn(read_lines(stdout, "stdout", lines.clone())),
        tokio::spawn(read_lines(stderr, "stderr", lines)),
    ];
    let shipper = tokio::spawn(ship_logs(
        ctx.coordinators.clone(),
        attempt.clone(),
        receiver,
        ctx.max_log_bytes,
        log_path.to_path_buf(),
    ));

    let timeout = (assignment.timeout_ms > 0).then(|| Duration::from_millis(assignment.timeout_ms));
    let mut exit: Option<Result<(std::process::ExitStatus, Option<u64>), String>> = None;
    let ended = tokio::select! {
        waited = &mut waiter => {
            let waited = waited.unwrap_or_else(|e| Err(format!("waiting for the process failed: {e}")));
            let ended = match &waited {
                Ok((status, _)) => Ended::Exited(*status),
                Err(reason) => Ended::Lost(reason.clone()),
            };
            exit = Some(waited);
            ended
        },
        _ = async { match timeout { Some(t) => tokio::time::sleep(t).await, None => std::future::pending().await } } => Ended::TimedOut,
        _ = cancel.wait_for(|c| *c) => Ended::Cancelled,
        used = over_limit(&mut watched.over) => Ended::OverMemory { used, limit: limit.unwrap_or(0) },
    };
    if exit.is_none() {
        // Memory is killed at once; otherwise the group gets a grace period.
        if !matches!(ended, Ended::OverMemory { .. }) {
            let _ = killpg(group, Signal::SIGTERM);
            match tokio::time::timeout(KILL_GRACE, &mut waiter).await {
                Ok(waited) => {
                    exit = Some(waited.unwrap_or_else(|e| Err(e.to_string())));
                }
                Err(_) => {
                    tracing::info!(?group, "process group ignored SIGTERM; sending SIGKILL")
                }
            }
        }
    }
    // Whatever the leader left behind in its group goes too, so that no process
    // of a finished attempt outlives it.
    let _ = killpg(group, Signal::SIGKILL);
    if exit.is_none() {
        exit = Some(
            waiter
                .await
                .unwrap_or_else(|e| Err(format!("waiting for the process failed: {e}"))),
        );
    }
    let (sampled_peak, sampled_cpu_ms) = watched.peaks();
    drop(watched);
    let usage = Usage {
        cpu_time_ms: exit
            .and_then(Result::ok)
            .and_then(|(_, cpu)| cpu)
            .unwrap_or(0)
            .max(sampled_cpu_ms),
        peak_memory_bytes: sampled_peak,
    };
    for reader in readers {
        // A process that left the group may still hold the pipe open: do not wait
        // for it forever.
        let abort = reader.abort_handle();
        if tokio::time::timeout(KILL_GRACE, reader).await.is_err() {
            abort.abort();
        }
    }
    let _ = shipper.await;
    match ended {
        Ended::Lost(reason) => Err(reason),
        ended => Ok((ended, usage)),
    }
}

/// Resolves with the memory the group held once the monitor sees it over its
/// limit; never, when it has none.
async fn over_limit(over: &mut watch::Receiver<Option<u64>>) -> u64 {
    loop {
        if let Some(used) = *over.borrow_and_update() {
            return used;
        }
        if over.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Reads lines (split at `MAX_LINE_BYTES`), lossily decoded, until end of file.
async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: &'static str,
    lines: mpsc::Sender<(&'static str, String)>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line = Vec::new();
    while let Ok(available) = reader.fill_buf().await {
        if available.is_empty() {
            break;
        }
        let room = MAX_LINE_BYTES - line.len();
        let (take, complete) = match available.iter().take(room).position(|b| *b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => {
                let take = available.len().min(room);
                (take, line.len() + take >= MAX_LINE_BYTES)
            }
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if complete {
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            line.clear();
            if lines.send((stream, text)).await.is_err() {
                break;
            }
        }
    }
    if !line.is_empty() {
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        let _ = lines.send((stream, text)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Batches log lines with sequence numbers and pushes them; past `max_bytes` the
/// rest is dropped after one marker line (the pipes are still drained, so the step
/// never blocks on a full pipe).
async fn ship_logs(
    coordinators: Arc<Coordinators>,
    attempt: proto::AttemptRef,
    mut receiver: mpsc::Receiver<(&'static str, String)>,
    max_bytes: u64,
    log_path: PathBuf,
) {
    // Every shipped line is also kept in a local file (JSON lines), uploaded whole
    // when the attempt ends; it is created with the first line (a silent step has
    // no log to keep).
    let mut log_file: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
    let mut log_failed = false;
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut capped = false;
    let mut batch: Vec<proto::LogLine> = Vec::new();
    let mut ticker = tokio::time::interval(LOG_BATCH_INTERVAL);
    let mut open = true;
    while open || !batch.is_empty() {
        tokio::select! {
            line = receiver.recv(), if open => match line {
                Some((stream, text)) => {
                    if capped {
                        continue;
                    }
                    bytes += text.len() as u64 + 1;
                    let text = if bytes > max_bytes {
                        capped = true;
                        format!("[ferry: this attempt's output passed the limit of {max_bytes} bytes; the rest is dropped]")
                    } else {
                        text
                    };
                    batch.push(proto::LogLine {
                        run_id: attempt.run_id,
                        step: attempt.step.clone(),
                        attempt: attempt.attempt,
                        stream: stream.to_string(),
                        seq,
                        timestamp_ms: now_ms(),
                        text,
                    });
                    seq += 1;
                    if batch.len() < LOG_BATCH_LINES {
                        continue;
                    }
                }
                None => open = false,
            },
            _ = ticker.tick() => {}
        }
        if batch.is_empty() {
            continue;
        }
        let lines = std::mem::take(&mut batch);
        if log_file.is_none() && !log_failed {
            match tokio::fs::File::create(&log_path).await {
                Ok(file) => log_file = Some(tokio::io::BufWriter::new(file)),
                Err(error) => {
                    tracing::warn!(%error, path = %log_path.display(), "cannot keep the attempt's log file");
                    log_failed = true;
                }
            }
        }
        if let Some(file) = log_file.as_mut() {
            let mut text = Vec::new();
            for line in &lines {
                serde_json::to_writer(
                    &mut text,
                    &serde_json::json!({
                        "stream": line.stream,
                        "seq": line.seq,
                        "timestamp_ms": line.timestamp_ms,
                        "text": line.text,
                    }),
                )
                .expect("log lines serialize");
                text.push(b'\n');
            }
            if let Err(error) = file.write_all(&text).await {
                tracing::warn!(%error, "cannot write the attempt's log file");
                log_file = None;
                log_failed = true;
            }
        }
        push_with_retry(&coordinators, &attempt, lines).await;
    }
    if let Some(mut file) = log_file
        && let Err(error) = file.flush().await
    {
        tracing::warn!(%error, "cannot write the attempt's log file");
    }
}

/// Pushes one batch to the current coordinator, through failovers and restarts;
/// a batch sent twice is stored once (lines carry their sequence numbers).
async fn push_with_retry(
    coordinators: &Coordinators,
    attempt: &proto::AttemptRef,
    lines: Vec<proto::LogLine>,
) {
    let request = proto::LogBatch {
        attempt: Some(attempt.clone()),
        lines,
    };
    let give_up = Instant::now() + LOG_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        let pushed = coordinators
            .call(Some(give_up), |mut agent| {
                let request = request.clone();
                async move { agent.push_logs(request).await }
            })
            .await;
        match pushed {
            Ok(_) => return,
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                tracing::warn!(%status, "log batch refused");
                return;
            }
            Err(status) if Instant::now() + delay < give_up => {
                tracing::debug!(%status, "log batch not delivered; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(status) => {
                tracing::warn!(
                    run = attempt.run_id,
                    step = %attempt.step,
                    %status,
                    "giving up on a log batch after repeated failures"
                );
                return;
            }
        }
    }
}

/// Checks every declared output (a regular file inside the work directory, not a
/// link out of it) and uploads it.
async fn collect_outputs(
    ctx: &ExecutorContext,
    outputs: &[String],
    work_dir: &Path,
) -> Result<Vec<proto::OutputFile>, String> {
    let root = work_dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve the work directory: {e}"))?;
    let mut files = Vec::new();
    for name in outputs {
        let path = checked_output_path(&root, name)?;
        let (digest, size) = upload_file(&ctx.coordinators, &path)
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

async fn upload_file(coordinators: &Coordinators, path: &Path) -> Result<(String, u64), String> {
    let owned = path.to_path_buf();
    let (digest, size) = tokio::task::spawn_blocking(move || digest_file(&owned))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    // The coordinator may be failing over or restarting when a step ends: try
    // again on the coordinator switched to, reading the file afresh each time.
    let give_up = Instant::now() + UPLOAD_PATIENCE;
    loop {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| e.to_string())?;
        let coordinator = coordinators.current();
        match coordinator
            .agent
            .clone()
            .upload_artifact(file_chunks(file, &digest, size))
            .await
        {
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
                    None => return Err(status.message().to_string()),
                }
            }
        }
    }
}

/// A file as upload chunks: the first names digest and size, the rest carry data.
fn file_chunks(
    file: tokio::fs::File,
    digest: &str,
    size: u64,
) -> impl futures::Stream<Item = proto::Chunk> + Send + 'static {
    let first = proto::Chunk {
        digest: digest.to_string(),
        size,
        data: Vec::new(),
    };
    let rest = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; CHUNK_SIZE];
        match file.read(&mut buffer).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((
                    proto::Chunk {
                        digest: String::new(),
                        size: 0,
                        data: buffer,
                    },
                    file,
                ))
            }
        }
    });
    futures::stream::iter([first]).chain(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_are_read_and_bad_ones_skipped_with_the_first_reason() {
        let text = "{\"name\": \"loss\", \"value\": 0.5, \"step\": 1}\n\
                    {\"name\": \"loss\", \"value\": 0.25, \"step\": 2}\n\
                    \n\
                    accuracy=0.9\n\
                    {\"name\": \"accuracy\", \"value\": 0.93}\n\
                    {\"name\": \"\", \"value\": 1}\n";
        let (metrics, note) = parse_metrics(text);
        assert_eq!(metrics.len(), 3);
        assert_eq!(
            (
                metrics[1].name.as_str(),
                metrics[1].value,
                metrics[1].has_step,
                metrics[1].step
            ),
            ("loss", 0.25, true, 2)
        );
        assert!(!metrics[2].has_step);
        let note = note.unwrap();
        assert!(
            note.starts_with("2 lines of FERRY_METRICS ignored (line 4: ")
                && note.contains("\"value\": 0.93"),
            "{note}"
        );
        assert_eq!(parse_metrics(""), (Vec::new(), None));
        // What Python's json.dumps writes for a diverged loss.
        let (metrics, note) = parse_metrics("{\"name\": \"loss\", \"value\": NaN}\n");
        assert!(metrics.is_empty());
        assert!(
            note.unwrap()
                .contains("line 1: a value must be a finite number, not NaN")
        );
    }

    #[test]
    fn past_the_limit_the_first_values_and_the_last_of_each_name_are_kept() {
        let mut text = String::new();
        for i in 0..MAX_METRICS + 50 {
            text.push_str(&format!(
                "{{\"name\": \"loss\", \"value\": {i}, \"step\": {i}}}\n"
            ));
        }
        text.push_str("{\"name\": \"accuracy\", \"value\": 0.97}\n");
        let (metrics, note) = parse_metrics(&text);
        assert_eq!(metrics.len(), MAX_METRICS);
        let last = |name: &str| {
            metrics
                .iter()
                .rev()
                .find(|m| m.name == name)
                .map(|m| m.value)
        };
        assert_eq!(last("loss"), Some((MAX_METRICS + 49) as f64));
        assert_eq!(last("accuracy"), Some(0.97));
        assert_eq!(metrics[0].value, 0.0);
        // The first 9,998 values of loss, its last, and accuracy; in order.
        assert_eq!(metrics[MAX_METRICS - 3].value, (MAX_METRICS - 3) as f64);
        assert!(
            metrics
                .windows(2)
                .all(|w| w[0].name != "loss" || w[1].name != "loss" || w[0].step < w[1].step)
        );
        assert_eq!(
            note.as_deref(),
            Some(
                "51 values dropped: more than 10000, so the first ones and the last of each name are kept"
            )
        );
    }

    fn gather_input(step: &str, names: &[&str], best_trial: &str) -> proto::GatherInput {
        proto::GatherInput {
            step: step.to_string(),
            files: names
                .iter()
                .map(|name| proto::InputFile {
                    name: name.to_string(),
                    file_name: name.rsplit('/').next().unwrap().to_string(),
                    digest: format!("digest of {name}"),
                    size: 1,
                })
                .collect(),
            manifest_json: "{\"trials\": []}".to_string(),
            best_trial: best_trial.to_string(),
        }
    }

    #[test]
    fn gathered_paths_must_be_plain_relative_paths() {
        for good in [
            "train.3/model.json",
            "train.3/out/deep/model.json",
            "a",
            "a.b/..c",
        ] {
            assert!(check_relative_path("gathered file", good).is_ok(), "{good}");
        }
        let refused = [
            ("", "is empty"),
            ("/etc/passwd", "is absolute"),
            ("train.3//model.json", "empty component"),
            ("train.3/", "empty component"),
            ("train.3/../../escape", "'..' component"),
            ("..", "'..' component"),
            ("./model.json", "'.' or '..' component"),
            ("train.3/mo\0del", "NUL"),
        ];
        for (bad, problem) in refused {
            let error = check_relative_path("gathered file", bad)
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("gathered file {bad:?} ")) && error.contains(problem),
                "{bad:?}: {error}"
            );
        }
        assert!(check_path_component("gathered step", "train").is_ok());
        let nested = check_path_component("gathered step", "train/x").unwrap_err();
        assert!(nested.to_string().contains("single name"), "{nested}");
        assert!(check_path_component("best trial", "..").is_err());

        // Each field of a gather is checked, and the error names the bad value.
        let work = Path::new("/data/work/1");
        let cases = [
            (
                gather_input("../train", &[], ""),
                "gathered step \"../train\"",
            ),
            (gather_input("/train", &[], ""), "gathered step \"/train\""),
            (gather_input("", &[], ""), "gathered step \"\""),
            (
                gather_input("train", &["train.0/a", "/abs/model.json"], ""),
                "gathered file \"/abs/model.json\"",
            ),
            (
                gather_input("train", &["train.0/../../../x"], ""),
                "gathered file \"train.0/../../../x\"",
            ),
            (
                gather_input("train", &["trials.json"], ""),
                "would replace the sweep's trials.json",
            ),
            (gather_input("train", &[], "../.."), "best trial \"../..\""),
            (
                gather_input("train", &[], "train.0/x"),
                "best trial \"train.0/x\"",
            ),
        ];
        for (gather, expected) in cases {
            let error = plan_gathers(work, &[gather]).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[tokio::test]
    async fn a_gathered_sweep_is_staged_under_the_work_directory_and_named_in_the_environment() {
        let root = tempfile::tempdir().unwrap();
        let work_dirs = WorkDirs::open(root.path().join("work")).unwrap();
        let work_dir = work_dirs.fresh();
        std::fs::create_dir_all(&work_dir).unwrap();
        std::fs::write(work_dir.join("evaluate.py"), "print(1)\n").unwrap();
        let fingerprint = Fingerprint::of(&work_dir).unwrap().unwrap();

        let assignment = proto::Assignment {
            gathers: vec![
                gather_input(
                    "train",
                    &[
                        "train.0/model.json",
                        "train.1/model.json",
                        "train.1/plots/loss.png",
                    ],
                    "train.1",
                ),
                gather_input("tune-lr", &["tune-lr.0/lr.txt"], ""),
            ],
            ..Default::default()
        };
        let plans = plan_gathers(&work_dir, &assignment.gathers).unwrap();
        // Blobs served from memory by digest, written the way `fetch_blob` writes
        // them (parent directories created); the real fetch needs a coordinator.
        let fetched = std::sync::Mutex::new(Vec::new());
        let mut staged = Staged::default();
        for plan in plans {
            stage_gather(&plan, |digest, path| {
                fetched.lock().unwrap().push(digest.to_string());
                async move {
                    tokio::fs::create_dir_all(path.parent().unwrap())
                        .await
                        .unwrap();
                    tokio::fs::write(path, digest).await.unwrap();
                    Ok(())
                }
            })
            .await
            .unwrap();
            staged.gathers.push(plan.dir);
        }
        assert_eq!(fetched.into_inner().unwrap().len(), 4);

        let train = work_dir.join("gather/train");
        for name in [
            "train.0/model.json",
            "train.1/model.json",
            "train.1/plots/loss.png",
        ] {
            let text = std::fs::read_to_string(train.join(name)).unwrap();
            assert_eq!(text, format!("digest of {name}"));
        }
        assert_eq!(
            std::fs::read_to_string(train.join("trials.json")).unwrap(),
            "{\"trials\": []}"
        );
        let tune = work_dir.join("gather/tune-lr");
        assert!(tune.join("tune-lr.0/lr.txt").is_file());
        assert!(tune.join("trials.json").is_file());

        let env = step_environment(&[], &assignment, &work_dir, &staged);
        assert_eq!(env["FERRY_GATHER_TRAIN"], train.display().to_string());
        assert_eq!(
            env["FERRY_GATHER_TRAIN_BEST"],
            train.join("train.1").display().to_string()
        );
        assert_eq!(env["FERRY_GATHER_TUNE_LR"], tune.display().to_string());
        assert!(!env.contains_key("FERRY_GATHER_TUNE_LR_BEST"));

        // Like staged inputs, gathered files change the directory after its
        // fingerprint was taken, so it is removed rather than pooled for reuse.
        assert_eq!(
            work_dirs.pool("bundle", work_dir.clone(), Some(fingerprint)),
            Some(work_dir)
        );
    }

    #[tokio::test]
    async fn the_best_trial_directory_exists_even_without_files() {
        let root = tempfile::tempdir().unwrap();
        let plans = plan_gathers(root.path(), &[gather_input("train", &[], "train.2")]).unwrap();
        stage_gather(&plans[0], |_, _| async { Ok(()) })
            .await
            .unwrap();
        assert!(root.path().join("gather/train/train.2").is_dir());
    }

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
