//! The scikit-learn example (issue 17): the image comes from Debian packages by
//! deploy/images/build-python-image.sh (no registry), and examples/sklearn
//! trains and sweeps a random forest inside it on a worker whose host has no
//! scikit-learn, every step in a container; run again, every step takes the
//! first run's result by the image's ID in its cache key.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_tests::{Cluster, step_of};

const IMAGE: &str = "ferry/python-sklearn:bookworm";

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_sklearn_example_trains_inside_the_image_built_from_debian_packages() {
    if !Path::new("/var/run/docker.sock").exists() {
        eprintln!("t56 skipped: no Docker socket at /var/run/docker.sock");
        return;
    }
    // The host has no scikit-learn: what the steps import comes from the image.
    let host = Command::new("python3")
        .args(["-c", "import sklearn"])
        .output()
        .expect("python3");
    assert!(!host.status.success(), "this host has scikit-learn");
    // Built by the script on a machine that lacks it (CI always does).
    let present = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("docker")
        .status
        .success();
    if !present {
        let built = Command::new(repo().join("deploy/images/build-python-image.sh"))
            .arg(IMAGE)
            .output()
            .expect("run build-python-image.sh");
        assert!(
            built.status.success(),
            "build-python-image.sh failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let id = String::from_utf8_lossy(&built.stdout);
        assert!(
            id.trim().starts_with("sha256:"),
            "it prints the image ID: {id}"
        );
    }

    let mut cluster = Cluster::start();
    cluster.add_worker(
        "t56",
        "cpus = 4\nmemory = \"4Gi\"\ncontainer_runtime = \"docker\"\n",
    );
    cluster.wait_worker_connected("t56");
    let run = cluster.submit(&repo().join("examples/sklearn"), &[]);
    let status = cluster.wait_run(run, Duration::from_secs(300));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    for trial in ["train.0", "train.3"] {
        assert_eq!(step_of(&status, trial)["state"], "succeeded");
    }
    let logs = cluster.ferry(&["logs", &run.to_string(), "train.0"]);
    assert!(
        logs.success()
            && logs
                .stdout
                .contains("scikit-learn 1.2.1: 20 trees, depth 2"),
        "the trial ran the image's scikit-learn: {logs:?}"
    );
    let metrics = cluster.ferry(&["metrics", &run.to_string(), "--output", "json"]);
    assert!(
        metrics.success() && metrics.stdout.contains("accuracy"),
        "{metrics:?}"
    );
    let best = cluster.path("best.json");
    let got = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        "report",
        "best.json",
        "-o",
        best.to_str().expect("utf-8 path"),
    ]);
    assert!(got.success() && got.stdout.contains("verified"), "{got:?}");
    let best: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&best).expect("best.json")).expect("json");
    assert!(best["accuracy"].as_f64().unwrap_or(0.0) > 0.8, "{best}");

    // The same pipeline again: each step's key holds the image's ID, known
    // once the worker resolved it, so every step's attempt stops before
    // running and takes the first run's result.
    let inspected = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .expect("docker image inspect");
    let id = String::from_utf8_lossy(&inspected.stdout)
        .trim()
        .to_string();
    let again = cluster.submit(&repo().join("examples/sklearn"), &[]);
    let status = cluster.wait_run(again, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    for step in ["split", "train.0", "train.3", "report"] {
        let record = step_of(&status, step);
        assert_eq!(record["reused"], "cached", "{record:#}");
        assert_eq!(record["reused_run"], run, "{record:#}");
        let attempt = &record["attempts"][0];
        assert_eq!(attempt["outcome"], "deferred", "{record:#}");
        assert_eq!(attempt["image_id"], id, "{record:#}");
    }
}
