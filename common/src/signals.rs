//! Waiting for the signals that ask a daemon to stop (SIGTERM, SIGINT), and the
//! deadline every daemon's stop is held to.

use std::time::Duration;

/// How long a daemon may take to stop once asked: each one bounds its own
/// shutdown well within this (the worker gives up on its uploads after a few
/// seconds, the coordinator ends open calls after one); past it the process
/// exits anyway, abandoning what is in flight, with a line saying so.
pub const STOP_DEADLINE: Duration = Duration::from_secs(8);

/// The status a daemon exits with when it did not stop within
/// [`STOP_DEADLINE`].
pub const STOP_DEADLINE_STATUS: i32 = 75;

/// Starts the stop deadline: a plain thread (it does not depend on the async
/// runtime, which may be what is stuck) that ends the process with
/// [`STOP_DEADLINE_STATUS`] if it is still running `limit` from now. Call it when
/// the stop is asked for.
pub fn exit_after(limit: Duration, daemon: &'static str) {
    let spawned = std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(
                daemon,
                limit_ms = limit.as_millis() as u64,
                "did not stop within the deadline; exiting and abandoning work in flight"
            );
            eprintln!(
                "{daemon}: did not stop within {} s; exiting and abandoning work in flight",
                limit.as_secs()
            );
            std::process::exit(STOP_DEADLINE_STATUS);
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the stop deadline");
    }
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
