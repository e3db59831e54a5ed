//! Steps contained by the kernel (issue 15, items 1 and 3): every process a step
//! starts, even one that left its process group and session (`setsid`) or was
//! double-forked, is killed at cancel, at the timeout, when the worker stops and,
//! after a crash, when it starts again; a forked child over the memory limit gets
//! the step killed for memory and counts in its peak; a step sees nothing of the
//! worker's environment but the allow-list, runs as `run_as` and cannot read the
//! worker's key; the subreaper fallback kills a `setsid` child too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::{
    Cluster, kill_processes_with_marker, marker, process_with_marker_exists, processes_with_marker,
    step_of, wait_for, write_pipeline,
};
use serde_json::Value;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// A cluster whose worker `name` runs steps as `nobody` with `extra` in its
/// configuration. The test's temporary folder is made passable (0711), as every
/// folder above a worker's data directory must be for its step user.
fn contained_cluster(name: &str, extra: &str, env: &[(&str, &str)]) -> Cluster {
    let mut cluster = Cluster::start();
    set_mode(cluster.root.path(), 0o711);
    cluster.add_worker_with_env(
        name,
        &format!("cpus = 4\nmemory = \"4Gi\"\nrun_as = \"nobody\"\n{extra}"),
        env,
    );
    cluster
}

/// A step that starts a copy of `sleep` named `mark` three ways: in a new session
/// (`setsid`), double-forked (reparented away from the step), and in the
/// foreground, where it waits.
fn escaping_pipeline(cluster: &Cluster, folder: &str, mark: &str, timeout: &str) -> PathBuf {
    let script = format!(
        "#!/bin/sh\n\
         cp \"$(command -v sleep)\" ./{mark}\n\
         setsid ./{mark} 3600 </dev/null >/dev/null 2>&1 &\n\
         ( ./{mark} 3601 </dev/null >/dev/null 2>&1 & ) &\n\
         echo escaped\n\
         ./{mark} 3602\n"
    );
    write_pipeline(
        &cluster.path(folder),
        &format!(
            "name: escape\nsteps:\n  - name: escape\n    command: [\"./escape.sh\"]\n{timeout}"
        ),
        &[("escape.sh", &script)],
    )
}

/// The attempt cgroups under worker `name`'s tree (`<name>-<hash>` in the pids
/// controller on v1, in the unified hierarchy on v2).
fn attempt_cgroups(name: &str) -> usize {
    let mut count = 0;
    for ferry in ["/sys/fs/cgroup/pids/ferry", "/sys/fs/cgroup/ferry"] {
        let Ok(trees) = std::fs::read_dir(ferry) else {
            continue;
        };
        for tree in trees.flatten() {
            if !tree
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
            {
                continue;
            }
            count += std::fs::read_dir(tree.path())
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .count()
                })
                .unwrap_or(0);
        }
    }
    count
}

fn wait_all_gone(mark: &str, worker: &str) {
    wait_for(
        Duration::from_secs(20),
        "every process of the step, setsid and double-forked ones included, to be gone",
        || (!process_with_marker_exists(mark)).then_some(()),
    );
    wait_for(
        Duration::from_secs(10),
        "the attempt's cgroup to be removed",
        || (attempt_cgroups(worker) == 0).then_some(()),
    );
}

/// Cancels `run` and waits until it is cancelled and every process of it (marked
/// `mark`) and its cgroup are gone.
fn cancel_and_wait_all_gone(cluster: &Cluster, run: u64, mark: &str, worker: &str) {
    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancelled.success(), "{cancelled:?}");
    let status = cluster.wait_run(run, Duration::from_secs(30));
    assert_eq!(status["state"], "cancelled", "{status:#}");
    wait_all_gone(mark, worker);
}

fn wait_escaped(mark: &str) {
    wait_for(Duration::from_secs(30), "the escapes to start", || {
        (processes_with_marker(mark) >= 3).then_some(())
    });
}

fn attempts(step: &Value) -> &Vec<Value> {
    step["attempts"].as_array().expect("attempts")
}

#[test]
fn cancel_kills_setsid_and_double_forked_children() {
    let name = "contain-cancel";
    let cluster = contained_cluster(name, "", &[]);
    assert!(
        cluster
            .worker_log(name)
            .contains("attempts are contained by a cgroup each"),
        "{}",
        cluster.worker_log(name)
    );
    let mark = marker("t41cancel");
    let run = cluster.submit(&escaping_pipeline(&cluster, "cancel", &mark, ""), &[]);
    wait_escaped(&mark);
    assert!(attempt_cgroups(name) >= 1, "the attempt has a cgroup");
    cancel_and_wait_all_gone(&cluster, run, &mark, name);
}

#[test]
fn timeout_kills_setsid_and_double_forked_children() {
    let name = "contain-timeout";
    let cluster = contained_cluster(name, "", &[]);
    let mark = marker("t41timeout");
    let pipeline = escaping_pipeline(&cluster, "timeout", &mark, "    timeout: 3s\n");
    let run = cluster.submit(&pipeline, &[]);
    wait_escaped(&mark);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(
        step_of(&status, "escape")["state"],
        "timed_out",
        "{status:#}"
    );
    wait_all_gone(&mark, name);
}

#[test]
fn a_stopping_worker_kills_setsid_and_double_forked_children() {
    let name = "contain-stop";
    let mut cluster = contained_cluster(name, "", &[]);
    let mark = marker("t41stop");
    cluster.submit(&escaping_pipeline(&cluster, "stop", &mark, ""), &[]);
    wait_escaped(&mark);
    cluster.terminate_worker(name);
    wait_all_gone(&mark, name);
}

/// The live processes whose command line holds `mark`.
fn pids_with_marker(mark: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            (!zombie && String::from_utf8_lossy(&cmdline).contains(mark)).then_some(pid)
        })
        .collect()
}

#[test]
fn a_restarted_worker_kills_what_its_crashed_run_left() {
    let name = "contain-crash";
    let mut cluster = contained_cluster(name, "", &[]);
    let mark = marker("t41crash");
    let run = cluster.submit(&escaping_pipeline(&cluster, "crash", &mark, ""), &[]);
    wait_escaped(&mark);
    cluster.signal_worker(name, nix::sys::signal::Signal::SIGKILL);
    // A worker killed outright cannot clean up: its step lives on in its cgroup
    // until the worker starts again on the same data directory.
    let left = pids_with_marker(&mark);
    cluster.add_worker(name, "cpus = 4\nmemory = \"4Gi\"\nrun_as = \"nobody\"\n");
    let cleaned = std::panic::catch_unwind(|| {
        wait_for(
            Duration::from_secs(20),
            "the crashed run's processes to be killed",
            || {
                let live = pids_with_marker(&mark);
                (!left.iter().any(|pid| live.contains(pid))).then_some(())
            },
        )
    });
    // The lost attempt may have been started again: cancel it, then clean up.
    let _ = cluster.ferry(&["cancel", &run.to_string()]);
    let gone = std::panic::catch_unwind(|| wait_all_gone(&mark, name));
    kill_processes_with_marker(&mark);
    assert!(
        left.len() >= 3,
        "the step was still running after the crash: {left:?}"
    );
    assert!(
        cleaned.is_ok(),
        "the restarted worker left the crashed run's processes"
    );
    assert!(gone.is_ok(), "the cancelled run left processes");
    assert!(
        cluster
            .worker_log(name)
            .contains("killed and removed 1 attempt cgroup(s) a previous run"),
        "{}",
        cluster.worker_log(name)
    );
}

#[test]
fn a_forked_child_over_the_memory_limit_gets_the_step_killed_and_counted() {
    let name = "contain-memory";
    let cluster = contained_cluster(name, "", &[]);
    let mark = marker("t41memory");
    // The limit is 2 × 64 MiB; a child in its own session fills a 300 MiB buffer.
    let script = format!(
        "#!/bin/sh\n\
         cp \"$(command -v sleep)\" ./{mark}\n\
         setsid dd if=/dev/zero of=/dev/null bs=300M count=1 &\n\
         ./{mark} 120\n"
    );
    let pipeline = write_pipeline(
        &cluster.path("memory"),
        "name: hog\nsteps:\n  - name: hog\n    resources: {memory: 64Mi}\n    command: [\"./hog.sh\"]\n",
        &[("hog.sh", &script)],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    let hog = step_of(&status, "hog");
    assert_eq!(hog["state"], "failed", "{hog:#}");
    let reason = hog["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("memory limit exceeded") && reason.contains("over its limit of 128.0 MiB"),
        "{reason}"
    );
    let peak = attempts(hog)[0]["peak_memory_bytes"].as_u64().unwrap_or(0);
    assert!(
        peak >= 100 << 20,
        "the peak counts the forked child: {peak} bytes"
    );
    wait_all_gone(&mark, name);
}

#[test]
fn a_step_sees_only_the_allowed_environment_runs_as_run_as_and_cannot_read_the_key() {
    let name = "contain-env";
    let mut cluster = Cluster::start();
    set_mode(cluster.root.path(), 0o711);
    // Only file modes protect the key here: its folder is passable and the key
    // starts readable by everyone; the worker makes it 0600 at start.
    cluster.pki.issue("worker", name).expect("worker cert");
    let key = cluster.pki.key(name);
    set_mode(key.parent().expect("certs folder"), 0o711);
    set_mode(&key, 0o644);
    cluster.add_worker_with_env(
        name,
        "cpus = 4\nmemory = \"4Gi\"\nrun_as = \"nobody\"\npass_env = [\"T41_PASSED\"]\n",
        &[("T41_SECRET", "worker-secret"), ("T41_PASSED", "passed-on")],
    );
    assert_eq!(mode_of(&key), 0o600, "the worker's key is made private");
    let data = cluster.path(&format!("{name}-data"));
    assert_eq!(mode_of(&data.join("logs")), 0o700);
    let script = format!(
        "#!/bin/sh\n\
         echo \"secret=${{T41_SECRET:-unset}}\"\n\
         echo \"passed=${{T41_PASSED:-unset}}\"\n\
         echo \"uid=$(id -u)\"\n\
         echo \"home=$HOME\"\n\
         if cat {key} >/dev/null 2>&1; then echo key=readable; else echo key=unreadable; fi\n\
         if ls {logs} >/dev/null 2>&1; then echo logs=listed; else echo logs=hidden; fi\n\
         echo \"own=$(echo hi > written && cat written)\"\n",
        key = key.display(),
        logs = data.join("logs").display(),
    );
    let pipeline = write_pipeline(
        &cluster.path("env"),
        "name: env\nsteps:\n  - name: look\n    command: [\"./look.sh\"]\n    env: {FROM_SPEC: yes}\n",
        &[("look.sh", &script)],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let logs = cluster.ferry(&["logs", &run.to_string(), "look"]);
    assert!(logs.success(), "{logs:?}");
    let out = logs.stdout;
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("a nobody user");
    for expected in [
        "secret=unset".to_string(),
        "passed=passed-on".to_string(),
        format!("uid={}", nobody.uid),
        format!("home={}", nobody.dir.display()),
        "key=unreadable".to_string(),
        "logs=hidden".to_string(),
        "own=hi".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected:?} missing in {out}");
    }
}

#[test]
fn the_subreaper_fallback_kills_a_setsid_child_at_cancel() {
    let name = "contain-reaper";
    let cluster = contained_cluster(name, "containment = \"subreaper\"\n", &[]);
    assert!(
        cluster
            .worker_log(name)
            .contains("contained by the subreaper only"),
        "{}",
        cluster.worker_log(name)
    );
    let mark = marker("t41reaper");
    let run = cluster.submit(&escaping_pipeline(&cluster, "reaper", &mark, ""), &[]);
    wait_escaped(&mark);
    assert_eq!(attempt_cgroups(name), 0, "no cgroup in subreaper mode");
    cancel_and_wait_all_gone(&cluster, run, &mark, name);
}

/// A work directory handed to `nobody` is still pooled: the second run of the
/// same bundle starts in the directory the first one left.
#[test]
fn a_work_directory_given_to_the_step_user_is_reused() {
    let cluster = contained_cluster("contain-pool", "", &[]);
    let pipeline = write_pipeline(
        &cluster.path("pool"),
        "name: pool\nparams:\n  n: \"1\"\nsteps:\n  - name: where\n    shell: \"echo run ${params.n} in $(pwd)\"\n",
        &[("data.txt", "data")],
    );
    let mut places = Vec::new();
    for n in ["1", "2"] {
        let run = cluster.submit(&pipeline, &["--param", &format!("n={n}")]);
        let status = cluster.wait_run(run, Duration::from_secs(60));
        assert_eq!(status["state"], "succeeded", "{status:#}");
        let logs = cluster.ferry(&["logs", &run.to_string(), "where"]);
        assert!(logs.success(), "{logs:?}");
        let line = logs
            .stdout
            .lines()
            .find(|l| l.contains(&format!("run {n} in ")))
            .unwrap_or_else(|| panic!("no pwd in {}", logs.stdout))
            .to_string();
        places.push(line.rsplit(" in ").next().unwrap_or_default().to_string());
    }
    assert_eq!(places[0], places[1], "the second run got a fresh directory");
}

/// In subreaper mode the end of one attempt kills only its own processes, never
/// a step of another attempt that has just been started (before its leader
/// carries its attempt's marker): many short trials side by side all succeed.
#[test]
fn the_subreaper_fallback_keeps_concurrent_attempts_apart() {
    let cluster = contained_cluster("contain-reaper-many", "containment = \"subreaper\"\n", &[]);
    let values: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    let pipeline = write_pipeline(
        &cluster.path("many"),
        &format!(
            "name: many\nsteps:\n  - name: t\n    matrix: {{i: [{}]}}\n    resources: {{cpu: 0.1, memory: 1Mi}}\n    shell: \"true ${{matrix.i}}\"\n",
            values.join(", ")
        ),
        &[],
    );
    for _ in 0..3 {
        let run = cluster.submit(&pipeline, &["--no-cache"]);
        let status = cluster.wait_run(run, Duration::from_secs(120));
        assert_eq!(status["state"], "succeeded", "{status:#}");
    }
}
