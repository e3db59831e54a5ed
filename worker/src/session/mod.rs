//! The worker's session with the coordinators: register with capacity and the
//! attempts still in hand, heartbeat, take assignments and cancellations from one
//! stream, and start attempts. Following the leader lives in [`leader`] (the shared
//! [`Coordinators`] that the session and every attempt call; running attempts carry
//! on through a switch), delivering the attempts' reports in [`reports`]; neither
//! knows of the session loop.

pub mod leader;
pub mod reports;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::locks::lock;
use ferry_common::pki::PkiError;
use ferry_common::proto::{self, worker_message::Kind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::blobcache::{BlobCache, CacheError};
use crate::config::WorkerConfig;
use crate::container::{ContainerUser, DockerRuntime};
use crate::containment::{Containment, ContainmentError};
use crate::executor::environment::{RunAsError, base_environment, check_reachable, resolve_run_as};
use crate::executor::{ExecutorContext, run_attempt};
use crate::fingerprint::{Capacity, FingerprintError, discover};
use crate::usage::Monitor;
use crate::workdirs::WorkDirs;

pub use leader::{
    Coordinators, CurrentCoordinator, LEADER_METADATA_KEY, calls_for_another_coordinator,
    leader_hint, unanswered,
};
pub use reports::Reports;

/// How often the process groups of running attempts are sampled (CPU, memory).
const USAGE_SAMPLE_PERIOD: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Tls(#[from] PkiError),
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    #[error(transparent)]
    Channel(#[from] ferry_common::channel::ChannelError),
    #[error(
        "the worker is named \"{config}\" in its configuration but its certificate is for \"{cert}\""
    )]
    NameMismatch { config: String, cert: String },
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    RunAs(#[from] RunAsError),
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error(transparent)]
    Containment(#[from] ContainmentError),
    #[error(transparent)]
    BlobCache(#[from] CacheError),
    #[error("cannot serve metrics on {address}: {source}")]
    Metrics {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Creates `dir` (and its parents) and sets its mode.
fn private_dir(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// The worker's private key is readable by its owner only: a key that others
/// may read is made 0600, with a warning.
fn protect_key(key: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(key = %key.display(), mode = format!("{:o}", mode & 0o777), "the worker's key was readable by others; it is now 0600");
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

type Key = (u64, String, u32);

fn key_of(attempt: &proto::AttemptRef) -> Key {
    (attempt.run_id, attempt.step.clone(), attempt.attempt)
}

/// Attempts this worker holds (running, or finished and not yet reported), with
/// the switch that cancels each.
#[derive(Clone, Default)]
struct Attempts(Arc<Mutex<HashMap<Key, watch::Sender<bool>>>>);

impl Attempts {
    fn refs(&self) -> Vec<proto::AttemptRef> {
        lock(&self.0, "attempts")
            .keys()
            .map(|(run_id, step, attempt)| proto::AttemptRef {
                run_id: *run_id,
                step: step.clone(),
                attempt: *attempt,
            })
            .collect()
    }
}

/// Runs the worker until `shutdown` turns true; then cancels what still runs.
/// With `[metrics] listen`, serves its metrics there meanwhile (a metrics
/// server that stops by itself stops the worker).
pub async fn run(config: WorkerConfig, shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
    let metrics = crate::metrics::WorkerMetrics::default();
    let Some(address) = config.metrics_listen else {
        return run_with(config, metrics, shutdown).await;
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| WorkerError::Metrics { address, source })?;
    tracing::info!(address = ?listener.local_addr().ok(), "serving Prometheus metrics at /metrics");
    let mut registry = prometheus_client::registry::Registry::with_prefix("ferry");
    metrics.register(&mut registry);
    // Served until the worker has stopped (then aborted): it ends by itself
    // only on a failure.
    let mut serving = tokio::spawn(ferry_common::metrics::serve(
        listener,
        Arc::new(registry),
        ferry_common::metrics::no_refresh(),
        std::future::pending(),
    ));
    let working = run_with(config, metrics, shutdown);
    tokio::pin!(working);
    tokio::select! {
        result = &mut working => {
            serving.abort();
            result
        }
        ended = &mut serving => {
            let source = match ended {
                Ok(Err(error)) => error,
                Ok(Ok(())) => std::io::Error::other("it stopped by itself"),
                Err(error) => std::io::Error::other(error.to_string()),
            };
            tracing::error!(%source, "the metrics server stopped; stopping the worker");
            Err(WorkerError::Metrics { address, source })
        }
    }
}

/// Runs the worker, counting into `metrics` (`ferry dev` serves them with the
/// coordinator's), until `shutdown` turns true; then cancels what still runs.
pub async fn run_with(
    config: WorkerConfig,
    metrics: crate::metrics::WorkerMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let tls = config.tls.load()?;
    if tls.identity.name != config.name {
        return Err(WorkerError::NameMismatch {
            config: config.name.clone(),
            cert: tls.identity.name.clone(),
        });
    }
    let capacity = discover(&config)?;
    metrics.set_capacity(crate::metrics::Held {
        cpu_millis: capacity.cpu_millis,
        memory_bytes: capacity.memory_bytes,
        gpus: capacity.gpus.len() as u64,
    });
    // Everything the worker creates (logs, metrics, work directories, staged
    // files) is its own: 0600 files, 0700 folders. Steps get 022 back (process.rs).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let identity = resolve_run_as(config.run_as.as_deref(), nix::unistd::geteuid())?;
    match &identity.switch_to {
        Some(user) => {
            tracing::info!(user = %user.name, uid = user.uid.as_raw(), "steps run as an unprivileged user")
        }
        None if nix::unistd::geteuid().is_root() => tracing::warn!(
            "run_as = \"root\": steps run as root and can read the worker's key and data directory"
        ),
        None => {}
    }
    let data_dir_error = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| WorkerError::DataDir { path, source }
    };
    // Private to the worker; a step running as another user may only pass through
    // to its work directory and its metrics file (execute, no listing).
    let passable = if identity.switch_to.is_some() {
        0o711
    } else {
        0o700
    };
    let work = config.data_dir.join("work");
    for (dir, mode) in [
        (config.data_dir.clone(), passable),
        (config.data_dir.join("logs"), 0o700),
        (config.data_dir.join("metrics"), passable),
    ] {
        private_dir(&dir, mode).map_err(data_dir_error(&dir))?;
    }
    let work_dirs = Arc::new(WorkDirs::open(work.clone()).map_err(data_dir_error(&work))?);
    // Bundles were kept in `bundles/`, unbounded, before the blob cache.
    let _ = std::fs::remove_dir_all(config.data_dir.join("bundles"));
    let cache_root = config.data_dir.join("cache");
    // A directory listing and a `stat` per entry: entries are hashed at their
    // first use, not here.
    let blob_cache = BlobCache::open(&cache_root, config.cache.max_bytes)?;
    private_dir(&work, passable).map_err(data_dir_error(&work))?;
    if let Some(user) = &identity.switch_to {
        check_reachable(&work, user)?;
    }
    protect_key(&config.tls.key).map_err(data_dir_error(&config.tls.key))?;
    let swept = crate::executor::remove_leftover_secrets(&config.data_dir);
    if swept > 0 {
        tracing::warn!(
            swept,
            "removed {swept} secrets directory(ies) a previous run of this worker left behind"
        );
    }
    let worker_id = crate::cgroup::worker_cgroup_name(
        &config.name,
        &std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone()),
    );
    let containment = Containment::start(config.containment, &worker_id)?;
    let containers = start_container_runtime(&config, &worker_id).await?;
    let coordinators = Arc::new(Coordinators::new(
        &config.name,
        config.coordinators.clone(),
        tls,
    )?);
    tracing::info!(
        worker = %config.name,
        cpus = capacity.cpu_millis as f64 / 1000.0,
        memory_bytes = capacity.memory_bytes,
        gpus = capacity.gpus.len(),
        coordinators = %config.coordinators.join(","),
        "worker starting"
    );
    let ctx = ExecutorContext {
        coordinators: coordinators.clone(),
        data_dir: config.data_dir.clone(),
        gpus: capacity.gpus.clone(),
        max_log_bytes: config.max_log_bytes_per_attempt,
        monitor: Monitor::start(USAGE_SAMPLE_PERIOD, shutdown.clone()),
        reports: Reports::start(coordinators.clone(), shutdown.clone()),
        memory_limit_factor: config.memory_limit_factor,
        bundle_limits: ferry_common::bundle::UnpackLimits {
            max_unpacked_bytes: config.max_unpacked_bundle_bytes,
            max_entries: config.max_bundle_entries,
        },
        work_dirs,
        blob_cache,
        containment,
        pids_max: config.pids_max,
        base_environment: Arc::new(base_environment(
            std::env::vars_os()
                .filter_map(|(n, v)| Some((n.into_string().ok()?, v.into_string().ok()?))),
            &config.pass_env,
            &identity,
        )),
        identity,
        containers,
        metrics,
    };
    let attempts = Attempts::default();
    let mut tasks = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        let coordinator = coordinators.current();
        let generation = coordinator.generation;
        let ended = tokio::select! {
            result = session(&config, &capacity, &ctx, coordinator, &attempts, &mut tasks, shutdown.clone()) => result,
            _ = stop.wait_for(|s| *s) => Ok(SessionEnd::Switched),
        };
        if *shutdown.borrow() {
            break;
        }
        let delay = match ended {
            // Re-register at once with the coordinator an attempt's call moved to.
            Ok(SessionEnd::Switched) => Duration::ZERO,
            Ok(SessionEnd::StreamEnded) => {
                tracing::warn!(worker = %config.name, "assignment stream ended; reconnecting");
                coordinators.failed(
                    generation,
                    &tonic::Status::unavailable("the assignment stream ended"),
                )
            }
            // `failed` says what happened and where the session goes next.
            Err(status) => coordinators.failed(generation, &status),
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    tracing::info!("worker stopping; cancelling running attempts");
    for cancel in lock(&attempts.0, "attempts").values() {
        let _ = cancel.send(true);
    }
    // The attempts end (their processes killed) and try to send what they have
    // for a moment; then every call is given up, and what still has not ended
    // after that is abandoned, so that stopping takes seconds, not the minutes
    // an upload may otherwise keep retrying against a coordinator that is gone.
    if !join_within(&mut tasks, STOP_GRACE).await {
        tracing::warn!(
            attempts = tasks.len(),
            grace_ms = STOP_GRACE.as_millis() as u64,
            "attempts still sending after the grace; giving up on their uploads"
        );
        coordinators.stop();
        if !join_within(&mut tasks, STOP_ABANDON).await {
            tracing::warn!(
                attempts = tasks.len(),
                "attempts abandoned at shutdown; their reports are not sent"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
    coordinators.stop();
    let containment = ctx.containment.clone();
    let _ = tokio::task::spawn_blocking(move || containment.stop()).await;
    Ok(())
}

/// Detects the container runtime `worker.toml` asks for and removes the
/// containers an earlier run of this worker left (it runs no attempt yet, so
/// none of them is its own any more). A worker that is not root runs
/// containers as itself, since the work directories are its own.
async fn start_container_runtime(
    config: &WorkerConfig,
    worker_id: &str,
) -> Result<Option<Arc<DockerRuntime>>, WorkerError> {
    let me = nix::unistd::geteuid();
    let user = if me.is_root() {
        config.container_user
    } else {
        let own = ContainerUser {
            uid: me.as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        if config.container_user != ContainerUser::default() && config.container_user != own {
            tracing::warn!(
                container_user = %config.container_user.docker_form(),
                "container_user is ignored: the worker is not root, so containers run as the \
                 worker's own user (who owns the work directories)"
            );
        }
        own
    };
    let auths = crate::container::registry_auths(config.docker_config.as_deref())?;
    let Some(runtime) = DockerRuntime::detect(
        config.container_runtime,
        &config.docker_socket,
        user,
        &config.name,
        worker_id,
        auths,
    )
    .await?
    else {
        return Ok(None);
    };
    tracing::info!(runtime = %runtime.advertised(), user = %user.docker_form(), "container steps run here");
    let removed = runtime.remove_leftovers().await;
    if removed > 0 {
        tracing::warn!(
            removed,
            "removed {removed} container(s) a previous run of this worker left behind"
        );
    }
    Ok(Some(Arc::new(runtime)))
}

/// How long attempts cancelled at shutdown may go on sending their logs,
/// outputs and reports before the worker gives up on every call.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long they may take after that before they are abandoned.
const STOP_ABANDON: Duration = Duration::from_secs(2);

/// Waits up to `limit` for every task to end; whether they all did.
async fn join_within(tasks: &mut JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_ok()
}

/// Why a session ended without an error.
enum SessionEnd {
    /// The coordinator closed the assignment stream.
    StreamEnded,
    /// Another call switched to another coordinator.
    Switched,
}

/// One session with `coordinator`: register, then serve the assignment stream and
/// heartbeat until something fails or the choice of coordinator changes.
async fn session(
    config: &WorkerConfig,
    capacity: &Capacity,
    ctx: &ExecutorContext,
    coordinator: CurrentCoordinator,
    attempts: &Attempts,
    tasks: &mut JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, tonic::Status> {
    let mut switches = ctx.coordinators.switches();
    if *switches.borrow_and_update() != coordinator.generation {
        return Ok(SessionEnd::Switched);
    }
    let mut agent = coordinator.agent.clone();
    // Every call has a deadline: a leader cut off without closing its connection
    // would otherwise hold the session past the worker's lease.
    let call_limit = ctx.coordinators.timings().worker_call();
    let within = |limit: Duration| {
        let address = coordinator.address.clone();
        move |_| leader::unanswered(&address, limit)
    };
    let registered = tokio::time::timeout(
        call_limit,
        agent.register(proto::RegisterRequest {
            name: config.name.clone(),
            capacity: Some(proto::Resources {
                cpu_millis: capacity.cpu_millis,
                memory_bytes: capacity.memory_bytes,
                gpus: capacity.gpus.len() as u32,
            }),
            labels: config.labels.clone().into_iter().collect(),
            gpus: capacity.gpus.clone(),
            running: attempts.refs(),
            // Empty without a runtime: a step with an image is then never
            // placed on this worker.
            container_runtime: ctx
                .containers
                .as_ref()
                .map(|runtime| runtime.advertised())
                .unwrap_or_default(),
        }),
    )
    .await
    .map_err(within(call_limit))??
    .into_inner();
    ctx.coordinators
        .set_heartbeat_interval(u64::from(registered.heartbeat_interval_ms));
    let mut stream = tokio::time::timeout(
        call_limit,
        agent.assignments(proto::AssignmentsRequest {
            name: config.name.clone(),
            session: registered.session.clone(),
        }),
    )
    .await
    .map_err(within(call_limit))??
    .into_inner();
    ctx.coordinators.answered(coordinator.generation);
    let heartbeat_limit = ctx.coordinators.timings().heartbeat_deadline();
    tracing::info!(
        worker = %config.name,
        coordinator = %coordinator.address,
        session = %registered.session,
        running = attempts.refs().len(),
        "registered with the coordinator"
    );
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        registered.heartbeat_interval_ms.max(100) as u64,
    ));
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(message) = message? else { return Ok(SessionEnd::StreamEnded) };
                match message.kind {
                    Some(Kind::Assign(assignment)) => start(ctx, attempts, tasks, assignment, shutdown.clone()),
                    Some(Kind::Cancel(attempt)) => {
                        if let Some(cancel) = lock(&attempts.0, "attempts").get(&key_of(&attempt)) {
                            tracing::info!(run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt, "cancel requested");
                            let _ = cancel.send(true);
                        }
                    }
                    None => {}
                }
            }
            _ = heartbeat.tick() => {
                // Unanswered within the interval: the session ends and the worker
                // looks for the leader (its hint, then the other addresses).
                tokio::time::timeout(heartbeat_limit, agent.heartbeat(proto::HeartbeatRequest {
                    name: config.name.clone(),
                    session: registered.session.clone(),
                    running: attempts.refs(),
                }))
                .await
                .map_err(within(heartbeat_limit))??;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = switches.changed() => return Ok(SessionEnd::Switched),
        }
    }
}

fn start(
    ctx: &ExecutorContext,
    attempts: &Attempts,
    tasks: &mut JoinSet<()>,
    assignment: proto::Assignment,
    shutdown: watch::Receiver<bool>,
) {
    let Some(attempt) = assignment.attempt.clone() else {
        return;
    };
    let key = key_of(&attempt);
    let (cancel, cancelled) = watch::channel(false);
    {
        let mut held = lock(&attempts.0, "attempts");
        if held.contains_key(&key) {
            // Sent again after a reconnect: it is already in hand.
            return;
        }
        held.insert(key.clone(), cancel);
    }
    tracing::debug!(run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt, "assignment received");
    let ctx = ctx.clone();
    let attempts = attempts.clone();
    let held = assignment
        .resources
        .map(|r| crate::metrics::Held {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus: u64::from(r.gpus),
        })
        .unwrap_or_default();
    ctx.metrics
        .attempt_started(held, assignment.container.is_some());
    // Everything the attempt logs carries its run, step and attempt.
    let span = tracing::info_span!("attempt", run = attempt.run_id, step = %attempt.step, attempt = attempt.attempt);
    tasks.spawn(
        async move {
            // None: the coordinator ended the attempt before it ran.
            if let Some(report) = run_attempt(&ctx, assignment, cancelled).await {
                tracing::info!(
                    outcome = %report.outcome, exit_code = report.exit_code, reason = %report.reason,
                    "attempt ended"
                );
                ctx.metrics.attempt_ended(held);
                ctx.reports.deliver(report, shutdown).await;
            } else {
                ctx.metrics.attempt_ended(held);
            }
            lock(&attempts.0, "attempts").remove(&key);
        }
        .instrument(span),
    );
}
