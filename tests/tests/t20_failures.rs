//! Things going wrong: failing steps and their retries, timeouts and cancellation
//! killing whole process trees, and a step no worker can ever fit.

use std::time::Duration;

use ferry_tests::{
    Cluster, marker, process_with_marker_exists, processes_with_marker, step_of, wait_for,
    write_pipeline,
};
use serde_json::Value;

const WORKER_CONFIG: &str = "cpus = 4\nmemory = \"4Gi\"";

fn cluster_with_worker() -> Cluster {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", WORKER_CONFIG);
    cluster
}

/// A script that starts a tree of long sleeps whose command lines all carry
/// `marker` (a copy of `sleep` named after it), some of them grandchildren, and
/// waits for them.
fn tree_script(marker: &str) -> String {
    format!(
        "#!/bin/sh\n\
         cp \"$(command -v sleep)\" ./{marker}\n\
         ./{marker} 300 &\n\
         ./{marker} 301 &\n\
         /bin/sh -c './{marker} 302 & ./{marker} 303; wait' &\n\
         echo tree started\n\
         wait\n"
    )
}

fn attempts(step: &Value) -> &Vec<Value> {
    step["attempts"].as_array().expect("attempts")
}

#[test]
fn failing_step_is_retried_then_dependents_are_skipped() {
    let cluster = cluster_with_worker();
    let pipeline = write_pipeline(
        &cluster.path("flaky"),
        r#"name: flaky
steps:
  - name: breaks
    shell: "echo \"boom in attempt $FERRY_ATTEMPT\" >&2; exit 1"
    outputs: [x.txt]
    retries: 2
  - name: after
    needs: [breaks]
    shell: "echo never"
  - name: consumer
    inputs: {x: breaks/x.txt}
    shell: "cat \"$FERRY_INPUT_X\""
  - name: indirect
    needs: [consumer]
    shell: "echo never either"
"#,
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "failed", "{status:#}");

    let breaks = step_of(&status, "breaks");
    assert_eq!(breaks["state"], "failed", "{breaks:#}");
    assert_eq!(breaks["attempt"], 3, "{breaks:#}");
    assert_eq!(breaks["exit_code"], 1, "{breaks:#}");
    let tries = attempts(breaks);
    assert_eq!(tries.len(), 3, "{breaks:#}");
    for (i, attempt) in tries.iter().enumerate() {
        assert_eq!(attempt["attempt"], i as u64 + 1, "{attempt}");
        assert_eq!(attempt["outcome"], "failed", "{attempt}");
        assert_eq!(attempt["exit_code"], 1, "{attempt}");
        assert_eq!(attempt["worker"], "w1", "{attempt}");
    }

    for name in ["after", "consumer", "indirect"] {
        let step = step_of(&status, name);
        assert_eq!(step["state"], "skipped", "{step:#}");
        assert!(attempts(step).is_empty(), "never started: {step:#}");
        assert_eq!(step["attempt"], 0, "{step:#}");
        assert_eq!(step["worker"], "", "{step:#}");
    }

    let logs = cluster.ferry(&["logs", &run.to_string(), "breaks"]);
    assert!(logs.success(), "{logs:?}");
    for attempt in 1..=3 {
        let line = format!("[breaks#{attempt} stderr] boom in attempt {attempt}");
        assert_eq!(
            logs.stdout.lines().filter(|l| *l == line).count(),
            1,
            "{line:?} once in {}",
            logs.stdout
        );
    }
    assert_eq!(logs.stdout.lines().count(), 3, "{}", logs.stdout);

    let artifacts = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
    assert!(artifacts.success(), "{artifacts:?}");
    assert_eq!(
        artifacts.json(),
        serde_json::json!([]),
        "a failed step has no artifacts"
    );
}

#[test]
fn timeout_kills_the_whole_process_tree() {
    let cluster = cluster_with_worker();
    let mark = marker("timeout");
    let pipeline = write_pipeline(
        &cluster.path("slowpoke"),
        r#"name: slowpoke
steps:
  - name: tree
    command: ["./tree.sh"]
    timeout: 2s
  - name: after
    needs: [tree]
    shell: "echo never"
"#,
        &[("tree.sh", &tree_script(&mark))],
    );
    let run = cluster.submit(&pipeline, &[]);
    wait_for(Duration::from_secs(30), "the process tree to start", || {
        (processes_with_marker(&mark) >= 4).then_some(())
    });

    let status = cluster.wait_run(run, Duration::from_secs(30));
    assert_eq!(status["state"], "failed", "{status:#}");
    let tree = step_of(&status, "tree");
    assert_eq!(tree["state"], "timed_out", "{tree:#}");
    let tries = attempts(tree);
    assert_eq!(tries.len(), 1, "{tree:#}");
    assert_eq!(tries[0]["outcome"], "timed_out", "{tree:#}");
    assert!(
        tree["reason"].as_str().unwrap_or("").contains("timed out"),
        "{tree:#}"
    );
    // `started_ms` is when the leader applied the worker's report of the
    // start, a moment after the process began (more under load), and the
    // timeout runs from the process's start: the bounds allow for that, and
    // still tell a timeout that fired at once or never.
    let elapsed = tries[0]["finished_ms"].as_i64().unwrap_or(0)
        - tries[0]["started_ms"].as_i64().unwrap_or(0);
    assert!(
        (1_000..20_000).contains(&elapsed),
        "ended {elapsed} ms after it started, for a 2 s timeout"
    );
    assert_eq!(step_of(&status, "after")["state"], "skipped");

    wait_for(
        Duration::from_secs(10),
        "every process of the timed-out step to be gone",
        || (!process_with_marker_exists(&mark)).then_some(()),
    );
}

#[test]
fn cancel_kills_the_process_tree_and_a_second_cancel_is_refused() {
    let cluster = cluster_with_worker();
    let mark = marker("cancel");
    let pipeline = write_pipeline(
        &cluster.path("doomed"),
        r#"name: doomed
steps:
  - name: tree
    command: ["./tree.sh"]
  - name: after
    needs: [tree]
    shell: "echo never"
"#,
        &[("tree.sh", &tree_script(&mark))],
    );
    let run = cluster.submit(&pipeline, &[]);
    cluster.wait_step(run, "tree", "running", Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "the process tree to start", || {
        (processes_with_marker(&mark) >= 4).then_some(())
    });

    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancelled.success(), "{cancelled:?}");
    assert!(
        cancelled.stdout.contains(&format!("run {run} cancelled")),
        "{cancelled:?}"
    );

    let status = cluster.wait_run(run, Duration::from_secs(30));
    assert_eq!(status["state"], "cancelled", "{status:#}");
    let tree = step_of(&status, "tree");
    assert_eq!(tree["state"], "cancelled", "{tree:#}");
    let tries = attempts(tree);
    assert_eq!(tries.len(), 1, "{tree:#}");
    assert_eq!(tries[0]["outcome"], "cancelled", "{tree:#}");
    let after = step_of(&status, "after");
    assert!(attempts(after).is_empty(), "never started: {after:#}");
    assert!(
        after["state"] == "cancelled" || after["state"] == "skipped",
        "{after:#}"
    );

    wait_for(
        Duration::from_secs(10),
        "every process of the cancelled step to be gone",
        || (!process_with_marker_exists(&mark)).then_some(()),
    );

    let again = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(!again.success(), "{again:?}");
    assert!(
        again
            .stderr
            .contains(&format!("run {run} already cancelled")),
        "{again:?}"
    );
    // The run's record is unchanged by the refused cancel.
    assert_eq!(cluster.status(run)["state"], "cancelled");
}

#[test]
fn a_step_no_worker_can_fit_stays_queued_with_a_reason() {
    let cluster = cluster_with_worker();
    let pipeline = write_pipeline(
        &cluster.path("huge"),
        r#"name: huge
steps:
  - name: huge
    shell: "echo too big"
    resources: {cpu: 64}
  - name: small
    shell: "echo fits"
"#,
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    // The step that fits runs to completion meanwhile.
    cluster.wait_step(run, "small", "succeeded", Duration::from_secs(30));

    // Observed over a while, the big step never leaves the queue.
    for _ in 0..10 {
        let status = cluster.status(run);
        assert_eq!(status["state"], "running", "{status:#}");
        let huge = step_of(&status, "huge");
        assert_eq!(huge["state"], "queued", "{huge:#}");
        assert!(attempts(huge).is_empty(), "{huge:#}");
        let reason = huge["reason"].as_str().expect("reason");
        assert!(
            reason.contains("no registered worker can ever fit it"),
            "{reason}"
        );
        assert!(
            reason.contains("64 CPUs (the largest worker has 4)"),
            "{reason}"
        );
        std::thread::sleep(Duration::from_millis(150));
    }

    let table = cluster.ferry(&["status", &run.to_string()]);
    assert!(table.success(), "{table:?}");
    assert!(table.stdout.contains("64 CPUs"), "{table:?}");

    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancelled.success(), "{cancelled:?}");
    let status = cluster.wait_run(run, Duration::from_secs(10));
    assert_eq!(status["state"], "cancelled", "{status:#}");
    assert_eq!(step_of(&status, "huge")["state"], "cancelled");
    assert_eq!(step_of(&status, "small")["state"], "succeeded");
}
