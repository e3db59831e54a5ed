//! An attempt's process: the command spawned in its own process group with the
//! step's environment, its output handed to the log readers, then waited for
//! until it exits, times out, is cancelled or holds too much memory; the whole
//! group is killed (SIGTERM with a grace period, then SIGKILL), and the leader's
//! final CPU time is read from its zombie before it is reaped.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ferry_common::proto;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use super::context::ExecutorContext;
use super::logs::{read_lines, ship_logs};
use super::staging::{Staged, step_environment};
use crate::usage::{read_stat, ticks_to_ms};

/// How long a process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

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
