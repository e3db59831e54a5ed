//! Placement and worker faults on real processes: exact GPU isolation from an
//! inventory override, a worker killed or frozen in the middle of a step (lease,
//! `worker lost`, retry elsewhere, fencing of the late report and the stale
//! process), drain, and priorities and quotas ordering a contended queue.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ferry_tests::{Cluster, kill_processes_with_marker, marker, step_of, wait_for, write_pipeline};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A short worker lease so that a lost worker is noticed within seconds.
const SHORT_LEASE: &str = "[scheduling]\nworker_lease_ms = 2000\n";

/// The UUID of GPU `index` of worker `prefix` in [`gpu_worker_config`]: `g1`'s
/// are hardware UUIDs (as NVML reports them), the others' a name that is not
/// one (an inventory override may give anything).
fn gpu_uuid(prefix: &str, index: u64) -> String {
    if prefix == "g1" {
        format!("GPU-5a1c0f3e-9b2d-4c7e-8f10-{index:012x}")
    } else {
        format!("GPU-{prefix}-{index}")
    }
}

fn gpu_worker_config(prefix: &str) -> String {
    let mut config = "cpus = 4\nmemory = \"4Gi\"\n".to_string();
    for index in 0..2 {
        config.push_str(&format!(
            "[[gpus]]\nindex = {index}\nuuid = \"{}\"\nmodel = \"NVIDIA H100 80GB HBM3\"\nmemory = \"80Gi\"\n",
            gpu_uuid(prefix, index)
        ));
    }
    config
}

fn attempts(step: &Value) -> &Vec<Value> {
    step["attempts"].as_array().expect("attempts")
}

fn worker_json(cluster: &Cluster, name: &str) -> Value {
    let listing = cluster.ferry(&["workers", "--output", "json"]);
    assert!(listing.success(), "{listing:?}");
    listing
        .json()
        .as_array()
        .and_then(|all| all.iter().find(|w| w["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no worker {name} in {}", listing.stdout))
}

#[test]
fn four_one_gpu_steps_run_at_once_each_on_its_own_gpu() {
    let mut cluster = Cluster::start();
    cluster.add_worker("g1", &gpu_worker_config("g1"));
    cluster.add_worker("g2", &gpu_worker_config("g2"));
    let seen = cluster.path("seen");
    std::fs::create_dir_all(&seen).unwrap();
    // Each step records what it sees, then waits until all four have started:
    // the run succeeds only if the four ran at the same time.
    let mut yaml = "name: gpus\nparams:\n  dir: \"\"\nsteps:\n".to_string();
    for i in 1..=4 {
        yaml.push_str(&format!(
            "  - name: s{i}\n    params: [dir]\n    resources: {{cpu: 0.5, memory: 64Mi, gpu: 1}}\n    shell: |\n      \
             echo \"$CUDA_DEVICE_ORDER|$CUDA_VISIBLE_DEVICES|$NVIDIA_VISIBLE_DEVICES|$FERRY_GPUS\" > \"$FERRY_PARAM_DIR/$FERRY_STEP\"\n      \
             i=0\n      \
             while [ \"$(ls \"$FERRY_PARAM_DIR\" | wc -l)\" -lt 4 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n      \
             [ \"$(ls \"$FERRY_PARAM_DIR\" | wc -l)\" -ge 4 ]\n"
        ));
    }
    let pipeline = write_pipeline(&cluster.path("gpus"), &yaml, &[]);
    let dir_param = format!("dir={}", seen.display());
    let run = cluster.submit(&pipeline, &["--param", &dir_param]);
    let status = cluster.wait_run(run, Duration::from_secs(90));
    assert_eq!(status["state"], "succeeded", "{status:#}");

    let mut uuids = BTreeSet::new();
    let mut placements = BTreeSet::new();
    for i in 1..=4 {
        let name = format!("s{i}");
        let seen_text = std::fs::read_to_string(seen.join(&name)).unwrap();
        let parts: Vec<&str> = seen_text.trim().split('|').collect();
        assert_eq!(parts.len(), 4, "{seen_text:?}");
        let (order, cuda, nvidia, ferry) = (parts[0], parts[1], parts[2], parts[3]);
        let step = step_of(&status, &name);
        let worker = step["worker"].as_str().unwrap().to_string();
        let gpus = attempts(step)[0]["gpus"].as_array().unwrap().clone();
        assert_eq!(gpus.len(), 1, "exactly one GPU: {step:#}");
        let index = gpus[0].as_u64().unwrap();
        let uuid = gpu_uuid(&worker, index);
        assert_eq!(ferry, uuid, "{seen_text:?}");
        // CUDA sees the device by its UUID where the worker knows a hardware
        // one, else by its index in PCI bus order (never CUDA's own order).
        assert_eq!(order, "PCI_BUS_ID", "{seen_text:?}");
        let device = if worker == "g1" {
            uuid.clone()
        } else {
            index.to_string()
        };
        assert_eq!(cuda, device, "{seen_text:?}");
        assert_eq!(nvidia, cuda, "{seen_text:?}");
        uuids.insert(ferry.to_string());
        placements.insert((worker, index));
    }
    assert_eq!(uuids.len(), 4, "four different GPUs: {uuids:?}");
    assert_eq!(placements.len(), 4, "{placements:?}");

    // A step asking for a model no worker has waits, and says why.
    let a100 = write_pipeline(
        &cluster.path("a100"),
        "name: a100\nsteps:\n  - name: big\n    resources: {gpu: {count: 1, model: A100, min_memory: 40Gi}}\n    command: [\"true\"]\n",
        &[],
    );
    let waiting = cluster.submit(&a100, &[]);
    let reason = wait_for(Duration::from_secs(20), "the reason", || {
        let status = cluster.status(waiting);
        let step = step_of(&status, "big");
        let reason = step["reason"].as_str().unwrap_or_default().to_string();
        (step["state"] == "queued" && reason.contains("can ever fit")).then_some(reason)
    });
    assert!(
        reason.contains("1 GPU of model A100 with ≥40.0 GiB")
            && reason.contains("the largest worker has 0"),
        "{reason}"
    );
    let cancel = cluster.ferry(&["cancel", &waiting.to_string()]);
    assert!(cancel.success(), "{cancel:?}");
}

/// A step whose first attempt sleeps (and records its pid) and whose later
/// attempts succeed at once: the first to `mkdir` the claim directory sleeps.
fn sleeper_pipeline(cluster: &Cluster, mark: &str) -> std::path::PathBuf {
    write_pipeline(
        &cluster.path("sleeper"),
        &format!(
            r#"name: sleeper
params:
  dir: ""
steps:
  - name: train
    params: [dir]
    resources: {{cpu: 0.5, memory: 64Mi}}
    shell: |
      echo $$ > "$FERRY_PARAM_DIR/pid-$FERRY_ATTEMPT"
      if mkdir "$FERRY_PARAM_DIR/claimed" 2>/dev/null; then
        cp "$(command -v sleep)" ./{mark}
        exec ./{mark} 120
      fi
      echo "trained in attempt $FERRY_ATTEMPT" > model.txt
    outputs: [model.txt]
"#
        ),
        &[],
    )
}

/// Starts the sleeper and returns (run, the worker running attempt 1, the other
/// worker, the attempt's pid).
fn start_sleeper(cluster: &Cluster, dir: &Path, mark: &str) -> (u64, String, String, i32) {
    let pipeline = sleeper_pipeline(cluster, mark);
    let dir_param = format!("dir={}", dir.display());
    let run = cluster.submit(&pipeline, &["--param", &dir_param]);
    let step = cluster.wait_step(run, "train", "running", Duration::from_secs(30));
    let first = step["worker"].as_str().unwrap().to_string();
    let other = if first == "w1" { "w2" } else { "w1" }.to_string();
    let pid = wait_for(Duration::from_secs(20), "the first attempt's pid", || {
        std::fs::read_to_string(dir.join("pid-1"))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
    });
    (run, first, other, pid)
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

fn two_worker_cluster() -> Cluster {
    let mut cluster = Cluster::start_replicated(1, SHORT_LEASE);
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    cluster.add_worker("w2", "cpus = 2\nmemory = \"2Gi\"");
    cluster
}

/// Checks the attempt history: the first lost with its worker, the second
/// succeeded on the other one and is the one whose output counts.
fn assert_retried_elsewhere(status: &Value, first: &str, other: &str) {
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let step = step_of(status, "train");
    let tries = attempts(step);
    assert_eq!(tries.len(), 2, "{step:#}");
    assert_eq!(tries[0]["worker"], first, "{step:#}");
    assert_eq!(tries[0]["outcome"], "lost", "{step:#}");
    let reason = tries[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("worker lost: no heartbeat from") && reason.contains("lease 2s"),
        "{reason}"
    );
    assert_eq!(tries[1]["worker"], other, "{step:#}");
    assert_eq!(tries[1]["outcome"], "succeeded", "{step:#}");
}

#[test]
fn a_worker_killed_mid_step_is_declared_lost_and_the_step_succeeds_on_the_other() {
    let cluster = two_worker_cluster();
    let mark = marker("killed-worker");
    let dir = cluster.path("claims");
    std::fs::create_dir_all(&dir).unwrap();
    let (run, first, other, _) = start_sleeper(&cluster, &dir, &mark);

    cluster.signal_worker(&first, Signal::SIGKILL);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    // The killed worker's step is an orphan now; nothing will ever stop it.
    kill_processes_with_marker(&mark);
    assert_retried_elsewhere(&status, &first, &other);
    let lost = worker_json(&cluster, &first);
    assert_eq!(lost["lost"], true, "{lost:#}");
    assert_eq!(lost["state"], "lost", "{lost:#}");

    let artifacts = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
    assert!(artifacts.success(), "{artifacts:?}");
    let listed = artifacts.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
}

#[test]
fn a_frozen_worker_is_declared_lost_and_on_its_return_its_process_is_killed_and_its_report_refused()
{
    let cluster = two_worker_cluster();
    let mark = marker("frozen-worker");
    let dir = cluster.path("claims");
    std::fs::create_dir_all(&dir).unwrap();
    let (run, first, other, pid) = start_sleeper(&cluster, &dir, &mark);

    cluster.signal_worker(&first, Signal::SIGSTOP);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_retried_elsewhere(&status, &first, &other);
    assert!(alive(pid), "the frozen worker's step still runs");

    cluster.signal_worker(&first, Signal::SIGCONT);
    wait_for(
        Duration::from_secs(30),
        "the returning worker to kill its stale process",
        || (!alive(pid)).then_some(()),
    );
    wait_for(
        Duration::from_secs(30),
        "the late report to be refused",
        || {
            let log = cluster.worker_log(&first);
            log.contains("report refused as stale").then_some(())
        },
    );
    // Back, registered again, and the step is still counted once.
    cluster.wait_worker_connected(&first);
    let back = worker_json(&cluster, &first);
    assert_eq!(back["lost"], false, "{back:#}");
    let status = cluster.status(run);
    assert_retried_elsewhere(&status, &first, &other);
    let model = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        "train",
        "model.txt",
        "-o",
        cluster.path("model.txt").to_str().unwrap(),
    ]);
    assert!(model.success(), "{model:?}");
    assert_eq!(
        std::fs::read_to_string(cluster.path("model.txt")).unwrap(),
        "trained in attempt 2\n"
    );
    kill_processes_with_marker(&mark);
}

#[test]
fn drain_lets_running_steps_finish_and_starts_nothing_new_until_uncordoned() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let gate = cluster.path("gate");
    let hold = write_pipeline(
        &cluster.path("hold"),
        r#"name: hold
params:
  gate: ""
steps:
  - name: hold
    params: [gate]
    shell: |
      i=0
      while [ ! -e "$FERRY_PARAM_GATE" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
      [ -e "$FERRY_PARAM_GATE" ]
"#,
        &[],
    );
    let gate_param = format!("gate={}", gate.display());
    let held = cluster.submit(&hold, &["--param", &gate_param]);
    cluster.wait_step(held, "hold", "running", Duration::from_secs(30));

    let drain = cluster.ferry(&["workers", "drain", "w1"]);
    assert!(drain.success(), "{drain:?}");
    assert!(
        drain.stdout.contains("worker w1 is draining")
            && drain.stdout.contains("1 step still running"),
        "{}",
        drain.stdout
    );
    assert_eq!(worker_json(&cluster, "w1")["state"], "connected, draining");

    let quick = write_pipeline(
        &cluster.path("quick"),
        "name: quick\nsteps:\n  - name: q\n    command: [\"true\"]\n",
        &[],
    );
    let later = cluster.submit(&quick, &[]);
    let reason = wait_for(Duration::from_secs(20), "the queued reason", || {
        let status = cluster.status(later);
        let step = step_of(&status, "q");
        let reason = step["reason"].as_str().unwrap_or_default().to_string();
        (step["state"] == "queued" && reason.contains("takes work now")).then_some(reason)
    });
    assert!(reason.contains("draining"), "{reason}");

    // The running step finishes normally.
    std::fs::write(&gate, "go").unwrap();
    let status = cluster.wait_run(held, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    wait_for(Duration::from_secs(10), "w1 to be drained", || {
        (worker_json(&cluster, "w1")["state"] == "connected, drained").then_some(())
    });
    // Nothing new started while it was drained.
    std::thread::sleep(Duration::from_secs(2));
    let status = cluster.status(later);
    assert_eq!(step_of(&status, "q")["state"], "queued", "{status:#}");

    let uncordon = cluster.ferry(&["workers", "uncordon", "w1"]);
    assert!(uncordon.success(), "{uncordon:?}");
    let status = cluster.wait_run(later, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");

    // An unknown worker is a clear error.
    let unknown = cluster.ferry(&["workers", "cordon", "nope"]);
    assert!(!unknown.success());
    assert!(
        unknown.stderr.contains("worker \"nope\" is not registered"),
        "{unknown:?}"
    );
}

#[test]
fn priorities_and_quotas_order_a_contended_queue() {
    let mut cluster = Cluster::start_replicated(1, "[scheduling.quotas.capped]\ncpu = \"500m\"\n");
    // One step at a time: each step takes the worker's only CPU.
    cluster.add_worker("w1", "cpus = 1\nmemory = \"1Gi\"");
    let cordon = cluster.ferry(&["workers", "cordon", "w1"]);
    assert!(cordon.success(), "{cordon:?}");
    let order = cluster.path("order.txt");
    let submit = |name: &str, header: &str| {
        let pipeline = write_pipeline(
            &cluster.path(name),
            &format!(
                "name: {name}\n{header}params:\n  out: \"\"\nsteps:\n  - name: s\n    params: [out]\n    resources: {{cpu: 1}}\n    shell: echo {name} >> \"$FERRY_PARAM_OUT\"\n"
            ),
            &[],
        );
        let out = format!("out={}", order.display());
        cluster.submit(&pipeline, &["--param", &out])
    };
    // Submitted lowest priority first; the capped project's step needs more
    // than its whole quota.
    let low = submit("low", "");
    let capped = submit("capped", "project: capped\npriority: 100\n");
    let mid = submit("mid", "priority: 5\n");
    let high = submit("high", "priority: 10\n");
    let uncordon = cluster.ferry(&["workers", "uncordon", "w1"]);
    assert!(uncordon.success(), "{uncordon:?}");
    for run in [low, mid, high] {
        let status = cluster.wait_run(run, Duration::from_secs(60));
        assert_eq!(status["state"], "succeeded", "{status:#}");
    }
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "high\nmid\nlow\n",
        "higher priority first"
    );
    let status = cluster.status(capped);
    let step = step_of(&status, "s");
    assert_eq!(step["state"], "queued", "{status:#}");
    assert_eq!(status["project"], "capped");
    assert_eq!(status["priority"], 100);
    let reason = step["reason"].as_str().unwrap();
    assert!(
        reason.contains("project capped is at its quota")
            && reason.contains("0 of 0.50 CPUs in use, the step needs 1"),
        "{reason}"
    );
    let cancel = cluster.ferry(&["cancel", &capped.to_string()]);
    assert!(cancel.success(), "{cancel:?}");
}

#[test]
fn the_worker_defends_itself_against_log_floods_and_memory_hogs_and_records_usage() {
    let mut cluster = Cluster::start_replicated(1, SHORT_LEASE);
    cluster.add_worker(
        "w1",
        "cpus = 2\nmemory = \"2Gi\"\nmax_log_bytes_per_attempt = 1048576\n",
    );
    let pipeline = write_pipeline(
        &cluster.path("defend"),
        r#"name: defend
steps:
  - name: flood
    shell: "head -c 500000000 /dev/zero | tr '\\0' x; echo; echo done"
  - name: hog
    resources: {memory: 64Mi}
    command: ["python3", "-c", "import time\nx = b'\\x01' * (400 << 20)\ntime.sleep(60)"]
  - name: busy
    resources: {memory: 256Mi}
    command: ["python3", "-c", "import time\nx = b'\\x01' * (100 << 20)\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(0.6)"]
"#,
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "failed", "{status:#}");

    // The flood is capped with a marker, and the worker kept its lease.
    let flood = step_of(&status, "flood");
    assert_eq!(flood["state"], "succeeded", "{flood:#}");
    let logs = cluster.ferry(&["logs", &run.to_string(), "flood"]);
    assert!(logs.success(), "{logs:?}");
    assert!(logs.stdout.len() < 2 << 20, "{} bytes", logs.stdout.len());
    let last = logs.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains("passed the limit of 1048576 bytes; the rest is dropped"),
        "{last}"
    );
    let worker = worker_json(&cluster, "w1");
    assert_eq!(worker["state"], "connected", "{worker:#}");
    assert!(
        !cluster.member_log(1).contains("declaring it lost"),
        "the flood must not cost the worker its lease"
    );

    // Over twice its request: killed with a reason that says so.
    let hog = step_of(&status, "hog");
    assert_eq!(hog["state"], "failed", "{hog:#}");
    let reason = hog["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("killed: its processes held")
            && reason.contains("over its limit of 128.0 MiB")
            && reason.contains("memory request of 64.0 MiB"),
        "{reason}"
    );
    let hog_attempt = &attempts(hog)[0];
    let duration =
        hog_attempt["finished_ms"].as_i64().unwrap() - hog_attempt["started_ms"].as_i64().unwrap();
    assert!(
        duration < 30_000,
        "killed long before its sleep ended: {duration} ms"
    );

    // Usage: the CPU it burnt and the memory it held.
    let busy = &attempts(step_of(&status, "busy"))[0];
    assert_eq!(busy["outcome"], "succeeded", "{busy:#}");
    let cpu = busy["cpu_time_ms"].as_u64().unwrap();
    assert!((500..5_000).contains(&cpu), "{busy:#}");
    let peak = busy["peak_memory_bytes"].as_u64().unwrap();
    assert!(((100 << 20)..(512 << 20)).contains(&peak), "{busy:#}");

    let table = cluster.ferry(&["status", &run.to_string(), "--attempts"]);
    assert!(table.success(), "{table:?}");
    assert!(
        table.stdout.contains("PEAK MEM") && table.stdout.contains("CPU"),
        "{}",
        table.stdout
    );
}

#[test]
fn a_run_past_its_timeout_fails_and_its_processes_are_killed() {
    let mut cluster = Cluster::start_replicated(1, SHORT_LEASE);
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let mark = marker("run-timeout");
    let pipeline = write_pipeline(
        &cluster.path("slow"),
        &format!(
            "name: slow\ntimeout: 2s\nsteps:\n  - name: long\n    shell: |\n      cp \"$(command -v sleep)\" ./{mark}\n      exec ./{mark} 60\n  - name: after\n    needs: [long]\n    command: [\"true\"]\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(30));
    assert_eq!(status["state"], "failed", "{status:#}");
    assert_eq!(status["reason"], "the run timed out after 2s", "{status:#}");
    let long = step_of(&status, "long");
    assert_eq!(long["state"], "timed_out", "{long:#}");
    assert_eq!(attempts(long)[0]["outcome"], "timed_out", "{long:#}");
    assert_eq!(step_of(&status, "after")["state"], "skipped", "{status:#}");
    wait_for(
        Duration::from_secs(15),
        "the step's process to be killed",
        || (!ferry_tests::process_with_marker_exists(&mark)).then_some(()),
    );
    let text = cluster.ferry(&["status", &run.to_string()]);
    assert!(
        text.stdout.contains("the run timed out after 2s"),
        "{}",
        text.stdout
    );
}

/// Issue 17: a step with an image goes only to a worker with a container
/// runtime; the workers here have none, so it waits and says why, while the
/// process steps of the same run go ahead.
#[test]
fn a_step_with_an_image_never_reaches_a_worker_without_a_container_runtime() {
    let mut cluster = Cluster::start();
    // This machine may have Docker: the worker is told not to use it.
    cluster.add_worker(
        "w1",
        "cpus = 2\nmemory = \"2Gi\"\ncontainer_runtime = \"none\"",
    );
    cluster.wait_worker_connected("w1");
    let pipeline = write_pipeline(
        &cluster.path("image"),
        "name: image\nsteps:\n  - name: plain\n    command: [\"true\"]\n  - name: boxed\n    image: python:3.11-slim\n    command: [python3, -c, \"print(1)\"]\n",
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let reason = wait_for(Duration::from_secs(30), "the image step's reason", || {
        let status = cluster.status(run);
        let plain = step_of(&status, "plain");
        let boxed = step_of(&status, "boxed");
        (plain["state"] == "succeeded" && boxed["state"] == "queued")
            .then(|| boxed["reason"].as_str().unwrap_or_default().to_string())
    });
    assert_eq!(
        reason,
        "needs a container runtime: no worker with Docker is registered"
    );
    let status = cluster.status(run);
    assert!(
        attempts(step_of(&status, "boxed")).is_empty(),
        "never assigned: {status:#}"
    );
    let cancel = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancel.success(), "{cancel:?}");
}

/// A 200-step chain of no-op steps: every hop is scheduled (each step's attempt
/// started only after its dependency's finished) and the run succeeds. No
/// timing is asserted here; `ferry-bench chain` measures the rate.
#[test]
fn a_chain_of_200_steps_completes_with_every_hop_recorded() {
    const STEPS: usize = 200;
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    cluster.wait_worker_connected("w1");
    let mut yaml = "name: chain\nsteps:\n".to_string();
    for i in 0..STEPS {
        yaml.push_str(&format!(
            "  - name: s{i}\n    command: [\"true\"]\n    cache: false\n    resources: {{cpu: 0.1, memory: 16Mi}}\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    let pipeline = write_pipeline(&cluster.path("chain"), &yaml, &[]);
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(180));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let mut previous_finished: Option<i64> = None;
    for i in 0..STEPS {
        let step = step_of(&status, &format!("s{i}"));
        assert_eq!(step["state"], "succeeded", "s{i}: {step:#}");
        let tries = attempts(step);
        assert_eq!(tries.len(), 1, "s{i} ran once: {step:#}");
        let started = tries[0]["started_ms"].as_i64().expect("started_ms");
        let finished = tries[0]["finished_ms"].as_i64().expect("finished_ms");
        assert!(started <= finished, "s{i}: {step:#}");
        if let Some(before) = previous_finished {
            assert!(
                started >= before,
                "s{i} started at {started}, before s{} finished at {before}",
                i - 1
            );
        }
        previous_finished = Some(finished);
    }
}
