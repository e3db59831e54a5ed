//! Failover when the leader is cut off but its connections stay open (SIGSTOP:
//! the kernel keeps its sockets, nothing answers), and members whose clocks are
//! wrong. What must hold: a write through a healthy follower succeeds once a new
//! leader exists (the forward to the frozen leader is abandoned and resent, not
//! left to HTTP/2 keep-alive), workers move to the new leader within their lease
//! so no running step is declared lost or run again, and a run's timeout follows
//! the leader's clock whichever member took the submission.

use std::time::Duration;

use ferry_tests::{Cluster, parse_run_id, step_of, wait_for, write_pipeline};
use serde_json::Value;

const HELLO: &str = "name: hello\nsteps:\n  - name: hello\n    command: [\"true\"]\n";

/// A step that runs until the file named by its `gate` parameter exists (or a
/// minute passes): it certainly runs across whatever the test does meanwhile.
const GATED: &str = r#"
name: gated
params:
  gate: ""
steps:
  - name: slow
    params: [gate]
    shell: |
      n=0
      while [ ! -e "$FERRY_PARAM_GATE" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
"#;

/// Thaws a frozen member when the test ends, however it ends, so that the
/// cluster's drop can stop it.
struct Thaw<'a>(&'a Cluster, u64);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.pause_member(self.1, false);
    }
}

/// `ferry workers --output json` asked of member `id`.
fn workers_at(cluster: &Cluster, id: u64) -> Option<Vec<Value>> {
    let listed = cluster.ferry_at(id, &["workers", "--output", "json"]);
    listed
        .success()
        .then(|| listed.json().as_array().cloned())
        .flatten()
}

/// `ferry status RUN --output json` asked of member `id`.
fn status_at(cluster: &Cluster, id: u64, run: u64) -> Option<Value> {
    let shown = cluster.ferry_at(id, &["status", &run.to_string(), "--output", "json"]);
    shown.success().then(|| shown.json())
}

fn attempts(status: &Value, step: &str) -> usize {
    step_of(status, step)["attempts"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn a_frozen_leader_loses_no_worker_and_writes_through_a_follower_succeed() {
    let mut cluster = Cluster::start_replicated(3, "");
    cluster.add_worker("worker-a", "");
    cluster.add_worker("worker-b", "");
    let gated = write_pipeline(&cluster.path("gated"), GATED, &[]);
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let gate = cluster.path("gate");
    let gate_param = format!("gate={}", gate.display());
    let run = cluster.submit(&gated, &["--param", &gate_param]);
    cluster.wait_step(run, "slow", "running", Duration::from_secs(30));
    // A third worker, frozen with the leader: the new leader must declare it
    // lost, which tells the test that the new leader's lease window has passed.
    cluster.add_worker("worker-c", "");

    let leader = cluster.leader(Duration::from_secs(10));
    let follower = cluster
        .coordinators
        .iter()
        .map(|c| c.id)
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.pause_member(leader, true);
    let _thaw = Thaw(&cluster, leader);
    cluster.signal_worker("worker-c", nix::sys::signal::Signal::SIGSTOP);

    // One `ferry run` through the follower, which forwards to the frozen leader
    // first: it is answered once the follower sees the new leader.
    let path = hello.to_str().unwrap();
    let submitted = cluster.ferry_at(follower, &["run", path]);
    assert!(
        submitted.success(),
        "a write through a healthy follower failed while the leader was frozen: {submitted:?}"
    );
    let written = parse_run_id(&submitted.stdout).expect("a run id");
    let new_leader = wait_for(Duration::from_secs(30), "a new leader", || {
        let status = cluster.ferry_at(follower, &["cluster", "status", "--output", "json"]);
        let id = status
            .success()
            .then(|| status.json()["leader_id"].as_u64())
            .flatten()?;
        (id != 0 && id != leader).then_some(id)
    });

    // The frozen worker is declared lost by the new leader once its lease has
    // run; by then the live workers must have moved to it.
    let listed = wait_for(
        Duration::from_secs(90),
        "the frozen worker to be declared lost",
        || {
            let workers = workers_at(&cluster, new_leader)?;
            workers
                .iter()
                .any(|w| w["name"] == "worker-c" && w["lost"] == true)
                .then_some(workers)
        },
    );
    for name in ["worker-a", "worker-b"] {
        let worker = listed
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("{name} is listed: {listed:?}"));
        assert_eq!(
            worker["lost"], false,
            "{name} was declared lost across the failover: {listed:?}"
        );
        assert_eq!(worker["connected"], true, "{name}: {listed:?}");
    }
    let status = status_at(&cluster, new_leader, run).expect("the run's status");
    assert_eq!(step_of(&status, "slow")["state"], "running", "{status:#}");
    assert_eq!(attempts(&status, "slow"), 1, "{status:#}");

    // The step carries on and ends on its first attempt.
    std::fs::write(&gate, "go").expect("open the gate");
    let status = wait_for(Duration::from_secs(60), "the gated run to end", || {
        let status = status_at(&cluster, new_leader, run)?;
        matches!(
            status["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
        .then_some(status)
    });
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(attempts(&status, "slow"), 1, "ran again: {status:#}");
    assert!(
        status_at(&cluster, new_leader, written).is_some(),
        "the write made through the follower is known to the new leader"
    );

    // Thawed, the old leader rejoins as a follower and catches up.
    cluster.pause_member(leader, false);
    cluster.signal_worker("worker-c", nix::sys::signal::Signal::SIGCONT);
    wait_for(
        Duration::from_secs(30),
        "the thawed member to hold the write made without it",
        || {
            let ids = cluster.run_ids(Some(leader), true)?;
            ids.contains(&written).then_some(())
        },
    );
}

/// Restarts member `id` with its clock shifted by `offset_ms` (a debug build's
/// `FERRY_CLOCK_OFFSET_MS`) and waits until it answers.
fn skew_clock(cluster: &mut Cluster, id: u64, offset_ms: i64) {
    cluster.kill_member(id);
    cluster.coordinator_env.insert(
        id,
        vec![(
            ferry_common::time::CLOCK_OFFSET_ENV.to_string(),
            offset_ms.to_string(),
        )],
    );
    cluster.spawn_coordinator(id, false);
    wait_for(
        Duration::from_secs(30),
        "the restarted member to answer",
        || cluster.ferry_at(id, &["runs"]).success().then_some(()),
    );
}

/// A follower whose clock is wrong takes the submissions: the leader stamps them
/// with its own clock, so a follower half an hour slow does not time a run out at
/// once, and one two hours fast does not keep a run from timing out.
#[test]
fn a_member_with_a_wrong_clock_neither_fires_timeouts_early_nor_disables_them() {
    let mut cluster = Cluster::start_replicated(3, "");
    cluster.add_worker("worker-a", "");
    let leader = cluster.leader(Duration::from_secs(10));
    let skewed = cluster
        .coordinators
        .iter()
        .map(|c| c.id)
        .find(|id| *id != leader)
        .expect("a follower");
    let gate = cluster.path("gate");
    let gate_param = format!("gate={}", gate.display());
    let submit_at = |cluster: &Cluster, yaml: &str, dir: &str| -> u64 {
        let pipeline = write_pipeline(&cluster.path(dir), yaml, &[]);
        let path = pipeline.to_str().unwrap();
        let submitted = cluster.ferry_at(skewed, &["run", path, "--param", &gate_param]);
        assert!(submitted.success(), "{submitted:?}");
        parse_run_id(&submitted.stdout).expect("a run id")
    };

    // Half an hour slow: a ten-minute timeout must not fire.
    skew_clock(&mut cluster, skewed, -30 * 60 * 1000);
    let patient = submit_at(
        &cluster,
        &GATED.replace("name: gated", "name: gated\ntimeout: 10m"),
        "slow-clock",
    );
    cluster.wait_step(patient, "slow", "running", Duration::from_secs(30));
    // A run submitted after it, with a timeout short enough to pass while the
    // first still runs: once it has timed out, the leader's timeout pass has
    // certainly looked at the first run too.
    let short = write_pipeline(
        &cluster.path("short"),
        &GATED.replace("name: gated", "name: short\ntimeout: 2s"),
        &[],
    );
    let witness = cluster.submit(&short, &["--param", &gate_param]);
    let ended = cluster.wait_run(witness, Duration::from_secs(60));
    assert_eq!(ended["state"], "failed", "{ended:#}");
    let status = cluster.status(patient);
    assert_eq!(
        status["state"], "running",
        "a follower 30 minutes slow made a 10-minute timeout fire: {status:#}"
    );
    std::fs::write(&gate, "go").expect("open the gate");
    let status = cluster.wait_run(patient, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    std::fs::remove_file(&gate).expect("close the gate");

    // Two hours fast: a two-second timeout must still fire (the step would run
    // for a minute).
    skew_clock(&mut cluster, skewed, 2 * 60 * 60 * 1000);
    let bounded = submit_at(
        &cluster,
        &GATED.replace("name: gated", "name: bounded\ntimeout: 2s"),
        "fast-clock",
    );
    let status = cluster.wait_run(bounded, Duration::from_secs(45));
    assert_eq!(
        status["state"], "failed",
        "a follower two hours fast kept a run from timing out: {status:#}"
    );
    assert_eq!(step_of(&status, "slow")["state"], "timed_out", "{status:#}");
}
