//! An attempt's process: the command spawned in its own process group and in
//! the attempt's containment (its cgroup, joined before exec, or the worker's
//! subreaper), as the step's user, with a clean environment; its output handed
//! to the log readers, then waited for until it exits, times out, is cancelled
//! or goes over its memory limit; then every process of the attempt is killed
//! (SIGTERM with a grace period, then SIGKILL to everything in the cgroup), the
//! usage read from the cgroup (or sampled, without one), and the leader's final
//! CPU time read from its zombie before it is reaped.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_common::proto;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::watch;

use super::context::ExecutorContext;
use super::logs::LogPipeline;
use super::staging::{Staged, step_environment};
use crate::containment::Contained;
use crate::spawn::StepProcess;
use crate::usage::{read_stat, ticks_to_ms};

/// How long an attempt's processes get between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How often an attempt's cgroup is checked for an OOM kill.
const OOM_POLL: Duration = Duration::from_millis(200);

/// What an attempt's processes used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
}

/// How an attempt's process ended.
pub(super) enum Ended {
    Exited(std::process::ExitStatus),
    /// The worker could not wait for the process; it is killed like a timed-out one.
    Lost(String),
    TimedOut,
    Cancelled,
    /// The attempt's processes went over its memory limit and were killed
    /// (`by_kernel`: the kernel enforced the limit of its cgroup).
    OverMemory {
        used: u64,
        limit: u64,
        by_kernel: bool,
    },
    /// The kernel killed the attempt's container for going over its memory
    /// limit (the engine's `OOMKilled`).
    ContainerOutOfMemory {
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

/// Runs the step's command to its end and returns how it ended and what its
/// processes used; an error when it could not be started or waited for.
pub(super) async fn execute(
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
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let request = assignment.resources.as_ref().map_or(0, |r| r.memory_bytes);
    let limit = (ctx.memory_limit_factor > 0.0 && request > 0)
        .then_some((request as f64 * ctx.memory_limit_factor) as u64);
    let contained = Arc::new(
        ctx.containment
            .prepare(
                attempt.run_id,
                &attempt.step,
                attempt.attempt,
                limit,
                ctx.pids_max,
            )
            .map_err(|e| format!("cannot contain the step: {e}"))?,
    );
    // Reaped by `wait_for_exit` (not by tokio), so that its final CPU time can
    // be read before it is reaped. It starts from an empty environment: nothing
    // of the daemon's reaches it but the allow-list (a later name wins).
    let (marker_name, marker) = contained.marker();
    let mut env: std::collections::BTreeMap<String, String> =
        ctx.base_environment.iter().cloned().collect();
    env.extend(step_environment(&ctx.gpus, assignment, work_dir, staged));
    env.extend(staged.secrets.env.iter().cloned());
    if let Some(dir) = &staged.secrets.dir {
        env.insert("FERRY_SECRETS_DIR".into(), dir.display().to_string());
    }
    env.insert("FERRY_METRICS".into(), metrics_path.display().to_string());
    env.insert(marker_name.into(), marker.into());
    let step = StepProcess {
        program: program.clone(),
        args: assignment.command[1..].to_vec(),
        env: env.into_iter().collect(),
        cwd: work_dir.to_path_buf(),
        // Joined before the step's program runs, so that it and everything it
        // starts are in the cgroup from their first instruction.
        cgroup_procs: contained.procs_files(),
        user: ctx
            .identity
            .switch_to
            .as_ref()
            .map(|user| (user.uid.as_raw(), user.gid.as_raw())),
        // The worker's own 077 is not the step's business.
        umask: 0o022,
    };
    let spawned = contained
        .spawn(&step)
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let pid = spawned.pid;
    tracing::debug!(
        pid,
        contained = ctx.containment.uses_cgroups(),
        "step process started"
    );
    // The kernel accounts and limits an attempt in a cgroup; otherwise its
    // process group is sampled from /proc.
    let mut watched = (!ctx.containment.uses_cgroups()).then(|| ctx.monitor.watch(pid, limit));
    let mut waiter = tokio::task::spawn_blocking(move || wait_for_exit(pid));

    let stdout =
        tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(spawned.stdout))
            .map_err(|e| format!("cannot read the step's stdout: {e}"))?;
    let stderr =
        tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(spawned.stderr))
            .map_err(|e| format!("cannot read the step's stderr: {e}"))?;
    let logs = LogPipeline::start(
        ctx,
        &attempt,
        stdout,
        stderr,
        log_path,
        staged.secrets.mask.clone(),
    );

    let timeout = (assignment.timeout_ms > 0).then(|| Duration::from_millis(assignment.timeout_ms));
    let mut exit: Option<Result<(std::process::ExitStatus, Option<u64>), String>> = None;
    let mut sampled_current = 0u64;
    let mut ended = tokio::select! {
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
        used = memory_exceeded(watched.as_mut().map(|w| &mut w.over), &contained, &mut sampled_current) => {
            Ended::OverMemory { used, limit: limit.unwrap_or(0), by_kernel: watched.is_none() }
        }
    };
    if exit.is_none() && !matches!(ended, Ended::OverMemory { .. }) {
        // Memory is killed at once; otherwise every process of the attempt gets a
        // grace period.
        let signalled = contained.clone();
        let _ = tokio::task::spawn_blocking(move || signalled.signal_all(Signal::SIGTERM)).await;
        match tokio::time::timeout(KILL_GRACE, &mut waiter).await {
            Ok(waited) => {
                exit = Some(waited.unwrap_or_else(|e| Err(e.to_string())));
            }
            Err(_) => {
                tracing::info!(pid, "the step ignored SIGTERM; sending SIGKILL")
            }
        }
    }
    // Whatever the step left behind goes too (its cgroup, or every descendant and
    // orphan in subreaper mode), so that no process of a finished attempt
    // outlives it; the leader is reaped by its waiter.
    let killer = contained.clone();
    let _ = tokio::task::spawn_blocking(move || killer.kill_all()).await;
    if exit.is_none() {
        exit = Some(
            waiter
                .await
                .unwrap_or_else(|e| Err(format!("waiting for the process failed: {e}"))),
        );
    }
    contained.leader_reaped();
    let finisher = contained.clone();
    let accounted = tokio::task::spawn_blocking(move || {
        // Read before the cgroup goes, after every process in it has gone.
        finisher.kill_all();
        let accounted = finisher.usage().map(|usage| (usage, finisher.oom_kills()));
        finisher.finish();
        accounted
    })
    .await
    .ok()
    .flatten();
    let leader_cpu_ms = exit
        .as_ref()
        .and_then(|e| e.as_ref().ok())
        .and_then(|(_, cpu)| *cpu)
        .unwrap_or(0);
    let usage = match (&accounted, &watched) {
        (Some((usage, _)), _) => Usage {
            cpu_time_ms: usage.cpu_time_ms.max(leader_cpu_ms),
            peak_memory_bytes: usage
                .peak_memory_bytes
                .unwrap_or(usage.current_memory_bytes.max(sampled_current)),
        },
        (None, Some(watched)) => {
            let (sampled_peak, sampled_cpu_ms) = watched.peaks();
            Usage {
                cpu_time_ms: leader_cpu_ms.max(sampled_cpu_ms),
                peak_memory_bytes: sampled_peak,
            }
        }
        (None, None) => Usage {
            cpu_time_ms: leader_cpu_ms,
            peak_memory_bytes: 0,
        },
    };
    drop(watched);
    // The kernel's OOM killer may have killed a child (the step went on or ended
    // on its own) or the leader itself: the attempt ended over its memory limit.
    if let (Some((_, oom_kills)), Ended::Exited(_)) = (&accounted, &ended)
        && *oom_kills > 0
    {
        ended = Ended::OverMemory {
            used: usage.peak_memory_bytes,
            limit: limit.unwrap_or(0),
            by_kernel: true,
        };
    }
    if let Ended::OverMemory { used, .. } = &mut ended {
        *used = (*used).max(usage.peak_memory_bytes);
    }
    // Every process that held the pipes is gone; a reader still ends within
    // the grace period.
    logs.finish(KILL_GRACE).await;
    match ended {
        Ended::Lost(reason) => Err(reason),
        ended => Ok((ended, usage)),
    }
}

/// Resolves with the memory the attempt held once it went over its limit: the
/// sampler's word (subreaper mode), or the kernel's OOM count of the attempt's
/// cgroup, polled (keeping the highest current usage seen in `sampled_current`
/// for kernels without `memory.peak`).
async fn memory_exceeded(
    sampled: Option<&mut watch::Receiver<Option<u64>>>,
    contained: &Contained,
    sampled_current: &mut u64,
) -> u64 {
    if let Some(over) = sampled {
        return over_limit(over).await;
    }
    loop {
        tokio::time::sleep(OOM_POLL).await;
        let Some(usage) = contained.usage() else {
            return std::future::pending().await;
        };
        *sampled_current = (*sampled_current).max(usage.current_memory_bytes);
        if contained.oom_kills() > 0 {
            return usage.peak_memory_bytes.unwrap_or(*sampled_current);
        }
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
