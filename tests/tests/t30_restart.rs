//! The coordinator restarting: killed with SIGKILL mid-run it picks the run up
//! where it was (no step runs twice) while the worker rides through the outage,
//! and a finished run's records, logs and artifacts survive a restart.

use std::path::Path;
use std::time::Duration;

use ferry_tests::{Cluster, marker, process_with_marker_exists, step_of, wait_for, write_pipeline};
use serde_json::Value;

const WORKER_CONFIG: &str = "cpus = 4\nmemory = \"4Gi\"";

/// Downloads an artifact and checks it against the listed digest and size;
/// returns its content.
fn download_verified(cluster: &Cluster, run: u64, artifact: &Value, dir: &Path) -> Vec<u8> {
    let step = artifact["step"].as_str().expect("step");
    let name = artifact["name"].as_str().expect("name");
    let target = dir.join(format!("{step}--{name}"));
    let got = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        step,
        name,
        "-o",
        target.to_str().expect("utf-8 path"),
    ]);
    assert!(got.success(), "{got:?}");
    let bytes = std::fs::read(&target).expect("downloaded artifact");
    assert_eq!(
        Some(bytes.len() as u64),
        artifact["size"].as_u64(),
        "{artifact}"
    );
    assert_eq!(
        blake3::hash(&bytes).to_hex().to_string(),
        artifact["digest"].as_str().expect("digest"),
        "{artifact}"
    );
    bytes
}

fn artifacts(cluster: &Cluster, run: u64) -> Vec<Value> {
    let listed = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
    assert!(listed.success(), "{listed:?}");
    listed.json().as_array().expect("artifact list").clone()
}

fn run_entry(cluster: &Cluster, run: u64) -> Value {
    let runs = cluster.ferry(&["runs", "--output", "json"]);
    assert!(runs.success(), "{runs:?}");
    runs.json()
        .as_array()
        .expect("run list")
        .iter()
        .find(|r| r["run"] == run)
        .cloned()
        .unwrap_or_else(|| panic!("run {run} not listed: {}", runs.stdout))
}

/// Three sequential steps, each consuming the previous one's output. The
/// coordinator is SIGKILLed while step `two` runs and started again on the same
/// port and data directory: right away (`two` still runs when the worker
/// reconnects), or only once `two` has ended on the worker (its output upload and
/// its report wait out the outage). `two` runs until the test opens a gate (after
/// the worker has reconnected, or during the outage), so when it ends does not
/// depend on how fast this machine is. It prints before it waits, so nothing of
/// it is left to ship when it ends: its upload is the first thing to meet the
/// outage.
fn coordinator_killed_mid_run(restart_after_step_ended: bool) {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", WORKER_CONFIG);
    let mark = marker("restart");
    let pipeline = write_pipeline(
        &cluster.path("chain"),
        &format!(
            r#"name: chain
params:
  gate: ""
steps:
  - name: one
    shell: "sleep 1; echo one > a.txt; echo one done"
    outputs: [a.txt]
  - name: two
    inputs: {{a: one/a.txt}}
    params: [gate]
    shell: |
      echo two done
      n=0
      while [ ! -e "$FERRY_PARAM_GATE" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
      cat "$FERRY_INPUT_A" > b.txt; echo two >> b.txt # {mark}
    outputs: [b.txt]
  - name: three
    inputs: {{b: two/b.txt}}
    shell: "sleep 1; cat \"$FERRY_INPUT_B\" > c.txt; echo three >> c.txt; echo three done"
    outputs: [c.txt]
"#
        ),
        &[],
    );
    let gate = cluster.path("gate");
    let gate_param = format!("gate={}", gate.display());
    let run = cluster.submit(&pipeline, &["--param", &gate_param]);
    let two = cluster.wait_step(run, "two", "running", Duration::from_secs(30));
    assert_eq!(two["attempt"], 1, "{two:#}");
    let one = step_of(&cluster.status(run), "one").clone();
    assert_eq!(one["state"], "succeeded", "{one:#}");
    cluster.kill_coordinator();
    let down = cluster.ferry(&["runs"]);
    assert!(!down.success(), "the coordinator is down: {down:?}");
    if restart_after_step_ended {
        std::fs::write(&gate, "go").expect("open the gate");
        wait_for(
            Duration::from_secs(20),
            "step two to end on the worker during the outage",
            || (!process_with_marker_exists(&mark)).then_some(()),
        );
    } else {
        assert!(
            process_with_marker_exists(&mark),
            "step two still runs on the worker"
        );
    }

    cluster.start_coordinator();
    // The very same worker process reconnects by itself.
    cluster.wait_worker_connected("w1");
    if !restart_after_step_ended {
        assert!(
            process_with_marker_exists(&mark),
            "step two still runs on the worker after it reconnected"
        );
        std::fs::write(&gate, "go").expect("open the gate");
    }
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    for name in ["one", "two", "three"] {
        let step = step_of(&status, name);
        assert_eq!(step["state"], "succeeded", "{step:#}");
        assert_eq!(step["attempt"], 1, "{step:#}");
        let attempts = step["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{name} ran exactly once: {step:#}");
        assert_eq!(attempts[0]["outcome"], "succeeded", "{step:#}");
        assert_eq!(attempts[0]["worker"], "w1", "{step:#}");
    }
    let worker = cluster.workers.get_mut("w1").expect("worker");
    assert!(
        worker.child.try_wait().expect("try_wait").is_none(),
        "the worker kept running through the outage"
    );

    let logs = cluster.ferry(&["logs", &run.to_string()]);
    assert!(logs.success(), "{logs:?}");
    for name in ["one", "two", "three"] {
        let line = format!("[{name}#1 stdout] {name} done");
        assert_eq!(
            logs.stdout.lines().filter(|l| *l == line).count(),
            1,
            "{line:?} exactly once in {}",
            logs.stdout
        );
    }

    let listed = artifacts(&cluster, run);
    assert_eq!(listed.len(), 3, "{listed:#?}");
    let dir = cluster.path("downloads");
    std::fs::create_dir_all(&dir).expect("downloads dir");
    for (step, name) in [("one", "a.txt"), ("two", "b.txt"), ("three", "c.txt")] {
        let artifact = listed
            .iter()
            .find(|a| a["step"] == step && a["name"] == name)
            .unwrap_or_else(|| panic!("no {step}/{name} in {listed:#?}"));
        assert_eq!(artifact["attempt"], 1);
        download_verified(&cluster, run, artifact, &dir);
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("three--c.txt")).expect("c.txt"),
        "one\ntwo\nthree\n"
    );
}

#[test]
fn coordinator_killed_mid_run_resumes_without_rerunning_steps() {
    coordinator_killed_mid_run(false);
}

#[test]
fn a_step_that_ends_during_a_coordinator_outage_is_reported_once() {
    coordinator_killed_mid_run(true);
}

#[test]
fn a_restart_keeps_runs_logs_and_artifacts() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", WORKER_CONFIG);
    let pipeline = write_pipeline(
        &cluster.path("keep"),
        r#"name: keep
steps:
  - name: make
    shell: "for i in 1 2 3 4 5; do echo kept line $i; done; echo warn >&2; head -c 300000 /dev/urandom > blob.bin; echo hello > note.txt"
    outputs: [blob.bin, note.txt]
  - name: use
    inputs: {note: make/note.txt}
    shell: "cat \"$FERRY_INPUT_NOTE\""
"#,
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let before = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(before["state"], "succeeded", "{before:#}");
    let entry_before = run_entry(&cluster, run);
    let logs_before = cluster.ferry(&["logs", &run.to_string()]);
    assert!(logs_before.success(), "{logs_before:?}");
    assert!(
        logs_before.stdout.contains("[make#1 stdout] kept line 5"),
        "{logs_before:?}"
    );
    let artifacts_before = artifacts(&cluster, run);
    assert_eq!(artifacts_before.len(), 2, "{artifacts_before:#?}");

    cluster.kill_coordinator();
    cluster.start_coordinator();

    let entry_after = run_entry(&cluster, run);
    assert_eq!(entry_after, entry_before);
    assert_eq!(entry_after["state"], "succeeded");
    let after = cluster.status(run);
    assert_eq!(after, before, "the run's full record survives the restart");

    let logs_after = cluster.ferry(&["logs", &run.to_string()]);
    assert!(logs_after.success(), "{logs_after:?}");
    assert_eq!(logs_after.stdout, logs_before.stdout);
    let make_logs = cluster.ferry(&["logs", &run.to_string(), "make"]);
    assert!(make_logs.success(), "{make_logs:?}");
    let expected: Vec<String> = (1..=5)
        .map(|i| format!("[make#1 stdout] kept line {i}"))
        .chain(["[make#1 stderr] warn".to_string()])
        .collect();
    let mut got: Vec<String> = make_logs.stdout.lines().map(str::to_string).collect();
    // stdout and stderr are separate pipes: only the order within each is defined.
    got.sort_by_key(|line| line.contains(" stderr]"));
    assert_eq!(got, expected);

    let artifacts_after = artifacts(&cluster, run);
    assert_eq!(artifacts_after, artifacts_before);
    let dir = cluster.path("downloads");
    std::fs::create_dir_all(&dir).expect("downloads dir");
    for artifact in &artifacts_after {
        let bytes = download_verified(&cluster, run, artifact, &dir);
        if artifact["name"] == "note.txt" {
            assert_eq!(bytes, b"hello\n");
        } else {
            assert_eq!(bytes.len(), 300_000);
        }
    }

    // The restarted coordinator still runs new work with the same worker.
    cluster.wait_worker_connected("w1");
    let again = cluster.submit(&pipeline, &[]);
    assert!(again > run, "run ids keep increasing: {again} after {run}");
    let status = cluster.wait_run(again, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
}
