//! Metrics a step reports through the file named by `FERRY_METRICS`, stored with
//! its attempt and shown by `ferry metrics`.

use std::time::Duration;

use ferry_tests::{Cluster, step_of, write_pipeline};

#[test]
fn metrics_written_by_a_step_are_kept_and_shown() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let pipeline = write_pipeline(
        &cluster.path("metrics"),
        r#"name: metrics
steps:
  - name: train
    shell: |
      for epoch in 1 2 3; do
        echo "{\"name\": \"loss\", \"value\": 0.$((4 - epoch)), \"step\": $epoch}" >> "$FERRY_METRICS"
      done
      echo 'accuracy: 0.9' >> "$FERRY_METRICS"
      echo '{"name": "accuracy", "value": 0.93}' >> "$FERRY_METRICS"
  - name: quiet
    command: ["true"]
"#,
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let train = &step_of(&status, "train")["attempts"][0];
    let reason = train["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("1 line of FERRY_METRICS ignored (line 4: "),
        "{reason}"
    );

    // A run's view (`ferry status`) holds the last value of each metric and
    // how many there were, however long the curve.
    assert_eq!(
        train["metrics"],
        serde_json::json!([
            {"name": "loss", "value": 0.1, "step": 3, "count": 3},
            {"name": "accuracy", "value": 0.93, "step": null, "count": 1},
        ])
    );

    let json = cluster.ferry(&["metrics", &run.to_string(), "--output", "json"]);
    assert!(json.success(), "{json:?}");
    let listed = json.json();
    let train = listed
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == "train"))
        .unwrap_or_else(|| panic!("{listed:#}"));
    assert_eq!(
        train["metrics"],
        serde_json::json!([
            {"name": "loss", "value": 0.3, "step": 1},
            {"name": "loss", "value": 0.2, "step": 2},
            {"name": "loss", "value": 0.1, "step": 3},
            {"name": "accuracy", "value": 0.93, "step": null},
        ])
    );

    let table = cluster.ferry(&["metrics", &run.to_string()]);
    assert!(table.success(), "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].contains("METRIC") && lines[0].contains("LAST"),
        "{}",
        table.stdout
    );
    let loss = lines.iter().find(|l| l.contains("loss")).unwrap();
    let fields: Vec<&str> = loss.split_whitespace().collect();
    assert_eq!(
        fields,
        ["train", "1", "loss", "0.1", "3", "3"],
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains("quiet"), "{}", table.stdout);

    // `ferry metrics RUN | head` once head has had enough: a quiet end, with
    // the status of a process stopped by SIGPIPE.
    let piped = cluster.ferry_into_closed_pipe(&["metrics", &run.to_string()]);
    assert_eq!(piped.status.code(), Some(141), "{piped:?}");
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
}

/// A run's metrics (`ferry runs --where`, `ferry runs compare`) come from the
/// steps that succeeded; a name only a failed step reported still counts.
#[test]
fn a_runs_metrics_come_from_its_steps_that_succeeded() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let pipeline = write_pipeline(
        &cluster.path("failing"),
        r#"name: failing
steps:
  - name: good
    shell: |
      echo '{"name": "acc", "value": 0.5}' >> "$FERRY_METRICS"
  - name: bad
    needs: [good]
    shell: |
      echo '{"name": "acc", "value": 0.99}' >> "$FERRY_METRICS"
      echo '{"name": "loss", "value": 7}' >> "$FERRY_METRICS"
      exit 1
"#,
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "failed", "{status:#}");
    let listed = |conditions: &str| -> Vec<u64> {
        let result = cluster.ferry(&["runs", "--where", conditions, "--output", "json"]);
        assert!(result.success(), "{result:?}");
        result
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run"].as_u64().unwrap())
            .collect()
    };
    // acc is the succeeded step's 0.5, not the failed step's 0.99.
    assert_eq!(listed("acc>0.9"), Vec::<u64>::new());
    assert_eq!(listed("acc=0.5"), [run]);
    // Only the failed step reported loss: a diverged run can still be found.
    assert_eq!(listed("loss>5"), [run]);
}
