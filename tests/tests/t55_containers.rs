//! Steps in containers (issue 17, items 2, 4, 5 and 7) on the machine's real
//! Docker Engine: a step with an image runs in a container of a tiny image the
//! test builds itself (a static busybox, `docker import`ed; nothing is pulled),
//! sees its staged input, its env and Ferry's variables but nothing of the
//! worker's environment, runs as a non-root user, streams its log, writes its
//! metrics and an output that downloads verified; `image_pull: never` with a
//! missing image, or a failed pull, fails with a clear reason; cancel, a
//! timeout, a memory limit and the worker's stop leave no container; a worker
//! killed mid-step removes the container its crashed run left when it starts
//! again (and never another worker's); an attempt reports its container's CPU
//! time and peak memory. Skipped, saying why, on a machine without a Docker socket.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ferry_tests::{Cluster, step_of, wait_for, write_pipeline};

const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const IMAGE: &str = "ferry-t55-busybox:latest";
const BUSYBOX: &str = "/bin/busybox";

/// Whether the tests can run here; prints why not.
pub(crate) fn docker_available() -> bool {
    if !Path::new(DOCKER_SOCKET).exists() {
        eprintln!("container tests skipped: no Docker socket at {DOCKER_SOCKET}");
        return false;
    }
    true
}

/// Builds the test image once (see [`import_busybox`]).
pub(crate) fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| import_busybox(IMAGE, &[]));
    IMAGE
}

/// Imports an image named `tag` into the engine (`docker import`, so that no
/// registry is needed): a static busybox and its applets' links, and `files`
/// (path in the image, content).
pub(crate) fn import_busybox(tag: &str, files: &[(&str, &str)]) {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install Debian's busybox-static (tests/run-all.sh does)"
    );
    let root = tempfile::tempdir().expect("temp dir");
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "id", "env", "dd", "sleep", "pwd", "ls", "true", "printf",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    std::fs::create_dir_all(root.path().join("tmp")).expect("tmp");
    for (path, content) in files {
        std::fs::write(root.path().join(path), content).expect("image file");
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let imported = Command::new("docker")
        .args(["import", "-", tag])
        .stdin(tar.stdout.take().expect("tar output"))
        .output()
        .expect("docker import");
    let archived = tar.wait().expect("wait for tar");
    assert!(archived.success(), "tar: {archived:?}");
    assert!(imported.status.success(), "docker import: {imported:?}");
}

/// IDs of the containers of run `run` on worker `worker`, running or not
/// (run ids repeat across the clusters of tests running side by side).
fn containers_of(worker: &str, run: u64) -> Vec<String> {
    let listed = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=ferry.worker={worker}"))
        .arg("--filter")
        .arg(format!("label=ferry.run={run}"))
        .output()
        .expect("docker ps");
    assert!(listed.status.success(), "docker ps: {listed:?}");
    String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A cluster with one worker that must have Docker; `env` goes into the
/// worker's own environment.
pub(crate) fn docker_cluster(worker: &str, env: &[(&str, &str)]) -> Cluster {
    let mut cluster = Cluster::start();
    cluster.add_worker_with_env(
        worker,
        "cpus = 4\nmemory = \"4Gi\"\ncontainer_runtime = \"docker\"\n",
        env,
    );
    cluster
}

fn line_value(logs: &str, prefix: &str) -> String {
    logs.lines()
        .find_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {prefix} line in the logs:\n{logs}"))
}

#[test]
fn a_container_step_runs_end_to_end_as_nobody_with_only_its_own_environment() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let worker = "t55-e2e";
    let cluster = docker_cluster(worker, &[("T55_WORKER_SECRET", "worker-only")]);
    let log = cluster.worker_log(worker);
    assert!(
        log.contains("container steps run here") && log.contains("docker "),
        "the worker found Docker: {log}"
    );
    let pipeline = write_pipeline(
        &cluster.path("e2e"),
        &format!(
            r#"name: boxed
steps:
  - name: make
    shell: "echo made-on-host > data.txt"
    outputs: [data.txt]
  - name: boxed
    image: {image}
    image_pull: never
    network: none
    inputs: {{d: make/data.txt}}
    env: {{GREETING: hello-from-spec}}
    shell: |
      echo "greeting=$GREETING"
      echo "secret=[$T55_WORKER_SECRET]"
      echo "uid=$(id -u) gid=$(id -g)"
      echo "input=$(cat "$FERRY_INPUT_D")"
      echo "here=$(pwd) work=$FERRY_WORK_DIR"
      echo "bundle=$(cat notes.txt)"
      echo "to-stderr" >&2
      cat "$FERRY_INPUT_D" > result.txt
      echo "boxed as $(id -u)" >> result.txt
      echo '{{"name": "accuracy", "value": 0.75}}' >> "$FERRY_METRICS"
    outputs: [result.txt]
"#
        ),
        &[("notes.txt", "from the bundle\n")],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let boxed = step_of(&status, "boxed");
    // The attempt records the image it ran by content, as the engine knows it.
    let inspected = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .expect("docker image inspect");
    let id = String::from_utf8_lossy(&inspected.stdout)
        .trim()
        .to_string();
    assert!(id.starts_with("sha256:"), "{inspected:?}");
    assert_eq!(boxed["attempts"][0]["image_id"], id, "{boxed:#}");
    assert_eq!(
        step_of(&status, "make")["attempts"][0]["image_id"],
        serde_json::Value::Null,
        "a process step ran no image"
    );
    let table = cluster.ferry(&["status", &run.to_string(), "--attempts"]);
    let short = &id["sha256:".len().."sha256:".len() + 12];
    assert!(
        table.success() && table.stdout.contains(short),
        "`ferry status --attempts` shows the image: {table:?}"
    );
    assert_eq!(
        boxed["attempts"][0]["metrics"],
        serde_json::json!([{"name": "accuracy", "value": 0.75, "step": null, "count": 1}]),
        "{boxed:#}"
    );

    let logs = cluster.ferry(&["logs", &run.to_string(), "boxed"]);
    assert!(logs.success(), "{logs:?}");
    let text = &logs.stdout;
    assert_eq!(line_value(text, "greeting="), "hello-from-spec");
    assert_eq!(
        line_value(text, "secret="),
        "[]",
        "the worker's environment does not reach the container"
    );
    assert_eq!(line_value(text, "uid="), "65534 gid=65534");
    assert_eq!(line_value(text, "input="), "made-on-host");
    assert_eq!(line_value(text, "bundle="), "from the bundle");
    let here = line_value(text, "here=");
    let (pwd, work) = here.split_once(" work=").expect("pwd and work");
    assert_eq!(
        pwd, work,
        "the work directory is the container's, at its own path"
    );
    assert!(text.contains("to-stderr"), "{text}");

    let target = cluster.path("result.txt");
    let got = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        "boxed",
        "result.txt",
        "-o",
        target.to_str().expect("utf-8 path"),
    ]);
    assert!(got.success() && got.stdout.contains("verified"), "{got:?}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("downloaded"),
        "made-on-host\nboxed as 65534\n"
    );
    assert!(
        containers_of(worker, run).is_empty(),
        "the finished step's container is removed"
    );
    let log = cluster.worker_log(worker);
    assert!(
        log.contains("the step's image is resolved") && log.contains("sha256:"),
        "the image's ID is recorded: {log}"
    );
}

#[test]
fn a_missing_image_with_image_pull_never_or_a_failed_pull_fails_with_a_clear_reason() {
    if !docker_available() {
        return;
    }
    let cluster = docker_cluster("t55-never", &[]);
    // No registry answers on this machine, so the second step's pull fails.
    let pipeline = write_pipeline(
        &cluster.path("never"),
        "name: never\nsteps:\n  - name: boxed\n    image: ferry-t55-absent:nope\n    image_pull: never\n    retries: 0\n    command: [\"true\"]\n  - name: pulled\n    image: ferry-t55-absent:nope\n    retries: 0\n    command: [\"true\"]\n",
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    let boxed = step_of(&status, "boxed");
    assert_eq!(boxed["state"], "failed", "{boxed:#}");
    let reason = boxed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("image \"ferry-t55-absent:nope\" is not on this worker")
            && reason.contains("image_pull is \"never\""),
        "{reason}"
    );
    let pulled = step_of(&status, "pulled");
    assert_eq!(pulled["state"], "failed", "{pulled:#}");
    let reason = pulled["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("pulling image \"ferry-t55-absent:nope\" failed: "),
        "{reason}"
    );
}

#[test]
fn cancel_stops_and_removes_the_container_and_a_restarted_worker_removes_leftovers() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let worker = "t55-cancel";
    let mut cluster = Cluster::start();
    cluster.add_worker(
        worker,
        "cpus = 4\nmemory = \"4Gi\"\ncontainer_runtime = \"docker\"\n",
    );
    let pipeline = write_pipeline(
        &cluster.path("cancel"),
        &format!(
            "name: cancel\nsteps:\n  - name: long\n    image: {image}\n    image_pull: never\n    shell: \"echo started; sleep 300\"\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    wait_for(Duration::from_secs(60), "the step's container", || {
        (!containers_of(worker, run).is_empty()).then_some(())
    });
    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancelled.success(), "{cancelled:?}");
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(step_of(&status, "long")["state"], "cancelled", "{status:#}");
    wait_for(
        Duration::from_secs(20),
        "the container to be removed",
        || containers_of(worker, run).is_empty().then_some(()),
    );

    // A container left behind by this worker (as a crash would leave one) goes
    // when the worker starts again; one of another worker id stays.
    let worker_id = worker_id_label(&cluster, worker);
    let leftover = create_container(image, &[("ferry.worker-id", &worker_id)]);
    let foreign = create_container(image, &[("ferry.worker-id", "someone-else-0000")]);
    cluster.terminate_worker(worker);
    cluster.add_worker(
        worker,
        "cpus = 4\nmemory = \"4Gi\"\ncontainer_runtime = \"docker\"\n",
    );
    assert!(
        !container_exists(&leftover),
        "the leftover is removed at start"
    );
    assert!(container_exists(&foreign), "another worker's stays");
    remove_container(&foreign);
}

#[test]
fn a_worker_killed_mid_step_removes_its_container_when_it_starts_again() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let worker = "t55-crash";
    let config = "cpus = 4\nmemory = \"4Gi\"\ncontainer_runtime = \"docker\"\n";
    let mut cluster = Cluster::start();
    cluster.add_worker(worker, config);
    let pipeline = write_pipeline(
        &cluster.path("crash"),
        &format!(
            "name: crash\nsteps:\n  - name: long\n    image: {image}\n    image_pull: never\n    shell: \"sleep 300\"\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let first = wait_for(Duration::from_secs(60), "the step's container", || {
        containers_of(worker, run).into_iter().next()
    });
    cluster.signal_worker(worker, nix::sys::signal::Signal::SIGKILL);
    // A worker killed outright cannot clean up: the container outlives it
    // until the worker starts again on the same data directory.
    assert!(
        container_exists(&first),
        "the container outlived the worker"
    );
    cluster.add_worker(worker, config);
    let removed = !container_exists(&first);
    // The lost attempt may have been started again: cancel it, then check
    // that nothing of the run is left.
    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    wait_for(
        Duration::from_secs(20),
        "the run's containers to go",
        || containers_of(worker, run).is_empty().then_some(()),
    );
    assert!(
        removed,
        "the restarted worker removed the crashed run's container"
    );
    assert!(cancelled.success(), "{cancelled:?}");
    assert_ne!(status["state"], "running", "{status:#}");
}

#[test]
fn a_stopping_worker_stops_and_removes_its_containers() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let worker = "t55-stop";
    let mut cluster = docker_cluster(worker, &[]);
    let pipeline = write_pipeline(
        &cluster.path("stop"),
        &format!(
            "name: stop\nsteps:\n  - name: long\n    image: {image}\n    image_pull: never\n    shell: \"sleep 300\"\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    wait_for(Duration::from_secs(60), "the step's container", || {
        (!containers_of(worker, run).is_empty()).then_some(())
    });
    cluster.terminate_worker(worker);
    assert!(
        containers_of(worker, run).is_empty(),
        "the worker removed its container before it exited"
    );
    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancelled.success(), "{cancelled:?}");
}

#[test]
fn a_container_over_its_memory_limit_is_killed_for_memory() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let worker = "t55-oom";
    let cluster = docker_cluster(worker, &[]);
    // The limit is 2 × 16 MiB; dd asks for a 256 MiB buffer and fills it.
    let pipeline = write_pipeline(
        &cluster.path("oom"),
        &format!(
            "name: oom\nsteps:\n  - name: hog\n    image: {image}\n    image_pull: never\n    retries: 0\n    resources: {{memory: 16Mi}}\n    shell: \"dd if=/dev/zero of=/dev/null bs=256M count=1\"\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    let hog = step_of(&status, "hog");
    assert_eq!(hog["state"], "failed", "{hog:#}");
    let reason = hog["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("killed: out of memory (limit 32.0 MiB"),
        "{reason}"
    );
    assert!(containers_of(worker, run).is_empty());
}

#[test]
fn a_timed_out_container_is_stopped_and_removed() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let worker = "t55-timeout";
    let cluster = docker_cluster(worker, &[]);
    // The step ignores SIGTERM, so the engine's SIGKILL after the grace ends it.
    let pipeline = write_pipeline(
        &cluster.path("timeout"),
        &format!(
            "name: slow\nsteps:\n  - name: slow\n    image: {image}\n    image_pull: never\n    retries: 0\n    timeout: 2s\n    shell: \"trap '' TERM; echo waiting; sleep 300\"\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    let slow = step_of(&status, "slow");
    assert_eq!(slow["state"], "timed_out", "{slow:#}");
    assert!(
        containers_of(worker, run).is_empty(),
        "the timed-out container is removed"
    );
}

/// The `ferry.worker-id` label of the containers of worker `name`: its name
/// and a hash of its data directory, as the worker computes it.
fn worker_id_label(cluster: &Cluster, name: &str) -> String {
    let data_dir = cluster.path(&format!("{name}-data"));
    let absolute = std::path::absolute(&data_dir).expect("absolute data dir");
    let hash = blake3::hash(absolute.as_os_str().as_encoded_bytes()).to_hex();
    format!("{name}-{}", &hash[..12])
}

fn create_container(image: &str, labels: &[(&str, &str)]) -> String {
    let mut command = Command::new("docker");
    command.arg("create");
    for (key, value) in labels {
        command.args(["--label", &format!("{key}={value}")]);
    }
    let created = command
        .args([image, "sleep", "300"])
        .output()
        .expect("docker create");
    assert!(created.status.success(), "docker create: {created:?}");
    String::from_utf8_lossy(&created.stdout).trim().to_string()
}

fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--type", "container", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker inspect")
        .success()
}

fn remove_container(id: &str) {
    let _ = Command::new("docker")
        .args(["rm", "-f", id])
        .stdout(Stdio::null())
        .status();
}

/// `resources.cpu` is a CPU quota the kernel enforces: two busy loops in a
/// step that asked for half a CPU get about half a CPU, measured by the
/// container's own cgroup (the CPU time it was charged) against the time that
/// passed, not by how long the step took. The attempt reports that CPU time,
/// and a step that fills a buffer reports a peak memory of at least its size.
#[test]
fn a_cpu_bound_container_is_held_to_its_cpu_quota_and_its_usage_is_reported() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let mut cluster = Cluster::start();
    cluster.add_worker(
        "t55-cpu",
        "cpus = 4\nmemory = \"4Gi\"\ncontainer_runtime = \"docker\"\n",
    );
    // cgroup v1 (cpuacct.usage, ns) or v2 (cpu.stat usage_usec).
    let script = r#"usage() { if [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then cat /sys/fs/cgroup/cpuacct/cpuacct.usage; else awk '/^usage_usec/ {print $2 * 1000}' /sys/fs/cgroup/cpu.stat; fi; }
u0=$(usage); t0=$(cut -d' ' -f1 /proc/uptime)
(while :; do :; done) & a=$!
(while :; do :; done) & b=$!
sleep 3
u1=$(usage); t1=$(cut -d' ' -f1 /proc/uptime)
kill $a $b
echo "charged_ns=$((u1 - u0))"
echo "uptime=$t0 $t1"
"#;
    // dd reads into one 48 MiB buffer, 40 times, then exits at once.
    let yaml = format!(
        "name: cpu\nsteps:\n  - name: spin\n    image: {image}\n    image_pull: never\n    resources: {{cpu: 0.5, memory: 64Mi}}\n    shell: |\n{}  - name: hold\n    needs: [spin]\n    image: {image}\n    image_pull: never\n    resources: {{memory: 64Mi}}\n    shell: \"dd if=/dev/zero of=/dev/null bs=48M count=40\"\n",
        script
            .lines()
            .map(|line| format!("      {line}\n"))
            .collect::<String>()
    );
    let pipeline = write_pipeline(&cluster.path("cpu"), &yaml, &[]);
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let logs = cluster.ferry(&["logs", &run.to_string(), "spin"]);
    assert!(logs.success(), "{logs:?}");
    let charged: f64 = line_value(&logs.stdout, "charged_ns=")
        .parse()
        .expect("nanoseconds");
    let uptime = line_value(&logs.stdout, "uptime=");
    let (t0, t1) = uptime.split_once(' ').expect("two readings");
    let wall = t1.parse::<f64>().expect("seconds") - t0.parse::<f64>().expect("seconds");
    let cpus = charged / 1e9 / wall;
    // Unthrottled, two busy loops would take up to two CPUs.
    assert!(
        (0.2..0.7).contains(&cpus),
        "two busy loops were charged {cpus:.2} CPUs over {wall:.2} s for a quota of 0.5"
    );

    // The attempt's CPU time is the container's: at least what the loops were
    // charged (less what the last reading before the exit may miss), and no
    // more than the quota allows over the attempt's time.
    let spin = &step_of(&status, "spin")["attempts"][0];
    let cpu_ms = spin["cpu_time_ms"].as_u64().unwrap_or(0) as f64;
    let attempt_ms = (spin["finished_ms"].as_i64().unwrap_or(0)
        - spin["started_ms"].as_i64().unwrap_or(0)) as f64;
    assert!(
        cpu_ms >= 0.8 * charged / 1e6 && cpu_ms <= 0.7 * attempt_ms,
        "the attempt reports {cpu_ms} ms of CPU; the loops were charged {:.0} ms over an attempt of {attempt_ms} ms: {spin:#}",
        charged / 1e6
    );
    let hold = &step_of(&status, "hold")["attempts"][0];
    assert_eq!(hold["outcome"], "succeeded", "{hold:#}");
    let peak = hold["peak_memory_bytes"].as_u64().unwrap_or(0);
    assert!(
        ((48 << 20)..(128 << 20)).contains(&peak),
        "a 48 MiB buffer, a 128 MiB limit: {hold:#}"
    );
    let table = cluster.ferry(&["status", &run.to_string(), "--attempts"]);
    assert!(
        table.success() && table.stdout.contains("MiB"),
        "`ferry status --attempts` shows the peak memory: {table:?}"
    );
}

/// A worker that cannot read its containers' cgroups (one in a container of its
/// own, given only the engine's socket) reports their usage from the engine's
/// stats stream, one reading a second. The debug build's fault point
/// `worker.container-cgroup` stands in for such a worker.
#[test]
fn without_the_cgroup_files_a_container_reports_the_engines_stats() {
    if !docker_available() {
        return;
    }
    let image = test_image();
    let worker = "t55-stats";
    let cluster = docker_cluster(
        worker,
        &[("FERRY_FAULTS", "worker.container-cgroup=return")],
    );
    cluster.signal_worker(worker, nix::sys::signal::Signal::SIGUSR1);
    wait_for(Duration::from_secs(10), "the fault to be armed", || {
        cluster
            .worker_log(worker)
            .contains("faults armed")
            .then_some(())
    });
    let pipeline = write_pipeline(
        &cluster.path("stats"),
        &format!(
            "name: stats\nsteps:\n  - name: spin\n    image: {image}\n    image_pull: never\n    resources: {{cpu: 0.5, memory: 64Mi}}\n    shell: \"(while :; do :; done) & a=$!; sleep 4; kill $a\"\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    // At most half a CPU for 4 s (less on a busy machine), read about once a
    // second until the end.
    let spin = &step_of(&status, "spin")["attempts"][0];
    let cpu_ms = spin["cpu_time_ms"].as_u64().unwrap_or(0);
    let attempt_ms = (spin["finished_ms"].as_i64().unwrap_or(0)
        - spin["started_ms"].as_i64().unwrap_or(0)) as u64;
    assert!(
        cpu_ms >= 250 && cpu_ms * 10 <= attempt_ms * 7,
        "a busy loop held to half a CPU for 4 s: {spin:#}"
    );
    assert!(
        spin["peak_memory_bytes"].as_u64().unwrap_or(0) > 0,
        "{spin:#}"
    );
}
