//! Fail-stop on the worker: a worker whose report sender or usage sampler dies
//! stops as a process (a clean crash a supervisor restarts) instead of running
//! attempts whose reports are never sent or whose memory is never watched. Faults
//! are injected through the debug build's fault points (`FERRY_FAULTS`, armed by
//! SIGUSR1 once the worker is connected).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use ferry_tests::{Cluster, Daemon, bin, wait_for};
use nix::sys::signal::Signal;

const WORKER: &str = "w1";

/// Starts worker `name` with `FERRY_FAULTS=faults` (plain-text logs, so that the
/// test can read the fields) and waits until it is connected.
fn add_worker_with_faults(cluster: &mut Cluster, name: &str, faults: &str) {
    cluster.pki.issue("worker", name).expect("worker cert");
    let config = cluster.path(&format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\ncoordinator = \"{}\"\ndata_dir = \"{name}-data\"\n\
             [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{name}.pem\"\nkey = \"certs/{name}-key.pem\"\n",
            cluster.address()
        ),
    )
    .expect("worker config");
    let log = cluster.path(&format!("{name}.log"));
    let child = Command::new(bin("ferry-worker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("FERRY_FAULTS", faults)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start worker");
    cluster
        .workers
        .insert(name.to_string(), Daemon { child, log });
    cluster.wait_worker_connected(name);
}

/// How worker `name`'s process ended, once it has.
fn worker_exit_status(cluster: &mut Cluster, name: &str) -> Option<ExitStatus> {
    let daemon = cluster.workers.get_mut(name).expect("no such worker");
    daemon.child.try_wait().ok().flatten()
}

/// Arms the worker's faults and waits (bounded) for its process to end.
fn arm_and_wait_for_exit(cluster: &mut Cluster, name: &str) -> ExitStatus {
    assert_eq!(
        worker_exit_status(cluster, name),
        None,
        "the worker must still run before its faults are armed"
    );
    // The SIGUSR1 handler is installed before the worker reads its configuration,
    // so a connected worker has it.
    cluster.signal_worker(name, Signal::SIGUSR1);
    wait_for(Duration::from_secs(30), "the worker to exit", || {
        worker_exit_status(cluster, name)
    })
}

#[test]
fn a_report_sender_that_ends_by_itself_stops_the_worker_with_status_70() {
    let mut cluster = Cluster::start();
    add_worker_with_faults(&mut cluster, WORKER, "worker.reports=return");
    let status = arm_and_wait_for_exit(&mut cluster, WORKER);
    assert_eq!(
        status.signal(),
        None,
        "the worker exits by itself: {status:?}"
    );
    assert_eq!(status.code(), Some(70), "{status:?}");
    let log = cluster.worker_log(WORKER);
    assert!(
        log.contains("fatal: task \"reports\" returned while the process was still running"),
        "the log names the task and how it died: {log}"
    );
    assert!(
        log.contains("a background task died") && log.contains("task=\"reports\""),
        "{log}"
    );
}

#[test]
fn a_usage_sampler_that_panics_aborts_the_worker() {
    let mut cluster = Cluster::start();
    add_worker_with_faults(&mut cluster, WORKER, "worker.usage-sampler=panic");
    let status = arm_and_wait_for_exit(&mut cluster, WORKER);
    assert!(
        !status.success(),
        "the worker must not exit cleanly: {status:?}"
    );
    assert_eq!(
        status.signal(),
        Some(Signal::SIGABRT as i32),
        "a panic aborts the process: {status:?}"
    );
    let log = cluster.worker_log(WORKER);
    assert!(
        log.contains("panic") && log.contains("fault injected at worker.usage-sampler"),
        "the log says what happened: {log}"
    );
    assert!(
        log.contains("task=\"usage-sampler\""),
        "the log names the task: {log}"
    );
}
