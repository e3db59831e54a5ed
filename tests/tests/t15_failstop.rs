//! Fail-stop: a coordinator whose Raft loop or scheduler dies stops as a process
//! (a clean crash a supervisor restarts) instead of serving without them. Faults
//! are injected through the debug build's fault points (`FERRY_FAULTS`, armed by
//! SIGUSR1 at the moment the test chooses).

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use ferry_tests::{Cluster, wait_for, write_pipeline};
use nix::sys::signal::Signal;

const PIPELINE: &str = "name: failstop\nsteps:\n  - name: only\n    command: [\"true\"]\n";

/// Restarts member `id` with `faults` ready to be armed.
fn restart_with_faults(cluster: &mut Cluster, id: u64, faults: &str) {
    cluster.terminate_member(id);
    // The member's log holds every start: count the starts that served so far.
    let served_before = cluster
        .member_log(id)
        .matches("coordinator serving")
        .count();
    cluster
        .coordinator_env
        .insert(id, vec![("FERRY_FAULTS".to_string(), faults.to_string())]);
    cluster.spawn_coordinator(id, false);
    cluster.wait_answering();
    // The cluster may answer through the others: wait for this member itself to
    // serve, which is after it installed its SIGUSR1 handler (a SIGUSR1 before
    // that would kill it by the signal's default action, not by the fault).
    wait_for(Duration::from_secs(30), "the member to serve", || {
        (cluster
            .member_log(id)
            .matches("coordinator serving")
            .count()
            > served_before)
            .then_some(())
    });
}

/// Arms member `id`'s faults and waits (bounded) for its process to end.
fn arm_and_wait_for_exit(cluster: &mut Cluster, id: u64) -> std::process::ExitStatus {
    // The handler is installed before the member serves (see
    // `restart_with_faults`).
    cluster.signal_member(id, Signal::SIGUSR1);
    wait_for(Duration::from_secs(30), "the member to exit", || {
        cluster.member_exit_status(id)
    })
}

#[test]
fn a_member_whose_raft_loop_panics_exits_and_the_others_keep_committing() {
    let mut cluster = Cluster::start_replicated(3, "");
    let leader = cluster.leader(Duration::from_secs(20));
    let victim = if leader == 1 { 2 } else { 1 };
    restart_with_faults(&mut cluster, victim, "coordinator.raft=panic");

    let status = arm_and_wait_for_exit(&mut cluster, victim);
    assert!(
        !status.success(),
        "the member must not exit cleanly: {status:?}"
    );
    assert_eq!(
        status.signal(),
        Some(libc_sigabrt()),
        "a panic aborts the process: {status:?}"
    );
    let log = cluster.member_log(victim);
    assert!(
        log.contains("panic") && log.contains("fault injected at coordinator.raft"),
        "the log says what happened: {log}"
    );
    assert!(
        log.contains("task=\"raft\"") || log.contains("task=raft"),
        "the log names the task: {log}"
    );

    // The two others still commit.
    let dir = cluster.path("pipeline");
    let pipeline = write_pipeline(&dir, PIPELINE, &[]);
    let run = cluster.submit(&pipeline, &[]);

    // Restarted without the fault, the member rejoins and serves the new run.
    cluster.coordinator_env.remove(&victim);
    cluster.spawn_coordinator(victim, false);
    wait_for(
        Duration::from_secs(30),
        "the restarted member to serve the run committed while it was down",
        || {
            cluster
                .run_ids(Some(victim), false)
                .filter(|ids| ids.contains(&run))
        },
    );
}

#[test]
fn a_scheduler_that_ends_by_itself_stops_the_process_with_status_70() {
    let mut cluster = Cluster::start();
    restart_with_faults(&mut cluster, 1, "coordinator.scheduler=return");
    let status = arm_and_wait_for_exit(&mut cluster, 1);
    assert_eq!(status.code(), Some(70), "{status:?}");
    let log = cluster.member_log(1);
    assert!(
        log.contains("a background task died") && log.contains("scheduler"),
        "the log names the task: {log}"
    );
    assert!(
        log.contains("returned while the process was still running"),
        "{log}"
    );
}

#[test]
fn a_bad_fault_list_is_refused_at_start_with_the_reason() {
    let mut cluster = Cluster::start();
    cluster.terminate_member(1);
    cluster.coordinator_env.insert(
        1,
        vec![(
            "FERRY_FAULTS".to_string(),
            "coordinator.raft=explode".to_string(),
        )],
    );
    cluster.spawn_coordinator(1, false);
    let status = wait_for(
        Duration::from_secs(30),
        "the member to refuse to start",
        || cluster.member_exit_status(1),
    );
    assert!(!status.success());
    assert!(cluster.member_log(1).contains("unknown action \"explode\""));
}

fn libc_sigabrt() -> i32 {
    Signal::SIGABRT as i32
}
