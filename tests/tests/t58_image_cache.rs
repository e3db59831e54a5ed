//! The image's ID is in a container step's cache key (issue 17, item 3), on
//! the machine's real Docker Engine: another tag of the same image keeps the
//! cache (the attempt stops before running anything and the step takes the
//! earlier result), and an image rebuilt under the same tag runs the step
//! again. Skipped, saying why, on a machine without a Docker socket.

use std::process::Command;
use std::time::Duration;

use ferry_tests::{step_of, write_pipeline};

use crate::t55_containers::{docker_available, docker_cluster, import_busybox};

fn image_id(tag: &str) -> String {
    let inspected = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .expect("docker image inspect");
    assert!(inspected.status.success(), "{inspected:?}");
    String::from_utf8_lossy(&inspected.stdout)
        .trim()
        .to_string()
}

/// Removes the test's tags (and so the images only they named) on the way out.
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "--force"])
            .args(&self.0)
            .output();
    }
}

#[test]
fn retagging_keeps_the_cache_and_a_rebuilt_image_runs_again() {
    if !docker_available() {
        return;
    }
    // Tags of this test process alone: tests of other checkouts may share the engine.
    let base = format!("ferry-t58-{}", std::process::id());
    let (v1, alias) = (format!("{base}:v1"), format!("{base}:alias"));
    let _tags = Tags(vec![v1.clone(), alias.clone()]);
    import_busybox(&v1, &[("version", "one\n")]);
    let first_id = image_id(&v1);

    let worker = "t58-cache";
    let cluster = docker_cluster(worker, &[]);
    let pipeline_with = |name: &str, image: &str| {
        write_pipeline(
            &cluster.path(name),
            &format!(
                r#"name: imagecache
steps:
  - name: train
    image: {image}
    image_pull: never
    command: [sh, train.sh]
    outputs: [model.txt]
    # Its code is this file alone, not the pipeline file that names the image.
    cache: {{paths: [train.sh]}}
  - name: evaluate
    inputs: {{m: train/model.txt}}
    shell: "cat \"$FERRY_INPUT_M\" > score.txt"
    outputs: [score.txt]
"#
            ),
            &[("train.sh", "cat /version > model.txt\necho trained\n")],
        )
    };
    let model_of = |run: u64| {
        let target = cluster.path(&format!("model-{run}.txt"));
        let got = cluster.ferry(&[
            "artifacts",
            "get",
            &run.to_string(),
            "train",
            "model.txt",
            "-o",
            target.to_str().expect("utf-8 path"),
        ]);
        assert!(got.success(), "{got:?}");
        std::fs::read_to_string(&target).expect("downloaded model")
    };

    let v1_pipeline = pipeline_with("v1", &v1);
    let first = cluster.submit(&v1_pipeline, &[]);
    let status = cluster.wait_run(first, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let train = step_of(&status, "train");
    assert_eq!(train["reused"], serde_json::Value::Null, "{train:#}");
    assert_eq!(train["attempts"][0]["image_id"], first_id, "{train:#}");
    let first_key = train["cache_key"]
        .as_str()
        .expect("a cache key")
        .to_string();
    assert_eq!(model_of(first), "one\n");

    // Another tag of the same image, named by the pipeline: same ID, same
    // key; the attempt stops before running and the step takes run 1's model.
    let tagged = Command::new("docker")
        .args(["tag", &v1, &alias])
        .output()
        .expect("docker tag");
    assert!(tagged.status.success(), "{tagged:?}");
    let retagged = cluster.submit(&pipeline_with("alias", &alias), &[]);
    let status = cluster.wait_run(retagged, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let train = step_of(&status, "train");
    assert_eq!(train["reused"], "cached", "{train:#}");
    assert_eq!(train["reused_run"], first, "{train:#}");
    assert_eq!(train["cache_key"], first_key, "{train:#}");
    let attempt = &train["attempts"][0];
    assert_eq!(attempt["outcome"], "deferred", "{attempt:#}");
    assert_eq!(attempt["image_id"], first_id, "{attempt:#}");
    assert!(
        attempt["reason"]
            .as_str()
            .is_some_and(|r| r.contains("in the cache")),
        "{attempt:#}"
    );
    let logs = cluster.ferry(&["logs", &retagged.to_string(), "train"]);
    assert!(
        !logs.stdout.contains("trained"),
        "the cached step did not run: {logs:?}"
    );

    // Rebuilt under the same tag: another ID, another key; the step runs.
    import_busybox(&v1, &[("version", "two\n")]);
    let second_id = image_id(&v1);
    assert_ne!(first_id, second_id);
    let rebuilt = cluster.submit(&v1_pipeline, &[]);
    let status = cluster.wait_run(rebuilt, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let train = step_of(&status, "train");
    assert_eq!(train["reused"], serde_json::Value::Null, "{train:#}");
    assert_eq!(train["attempts"][0]["outcome"], "succeeded", "{train:#}");
    assert_eq!(train["attempts"][0]["image_id"], second_id, "{train:#}");
    assert_ne!(train["cache_key"], first_key, "{train:#}");
    assert_eq!(model_of(rebuilt), "two\n");
    // The old image lost its tag; remove it too.
    let _ = Command::new("docker").args(["rmi", &first_id]).output();
}
