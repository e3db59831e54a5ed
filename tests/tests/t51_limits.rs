//! The submission limits (`[limits]` in coordinator.toml) are checked by `ferry`
//! against the cluster's own values before anything is uploaded, with the
//! coordinator's wording; and a bundle uploaded for a submission the
//! coordinator refused anyway (an unknown secret) is deleted by `ferry gc` once
//! the grace period has passed, while a bundle a run refers to stays.

use std::path::Path;

use ferry_tests::{Cluster, write_pipeline};

/// Regular files under `dir`, recursively, but not staging files.
fn blob_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(blob_files(&path));
        } else {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

fn steps(n: usize) -> String {
    let mut yaml = String::from("name: wide\nsteps:\n");
    for i in 0..n {
        yaml.push_str(&format!("  - name: s{i}\n    command: [\"true\"]\n"));
    }
    yaml
}

#[test]
fn the_cli_checks_the_clusters_limits_before_uploading_and_gc_takes_orphans() {
    let cluster = Cluster::start_replicated(
        1,
        "[limits]\nmax_steps = 3\nmax_trials_per_step = 2\nmax_spec_bytes = 4096\n\
         [retention]\ngrace_ms = 0\n",
    );
    let blobs = cluster.path("coordinator-1-data/blobs");
    let refused = |name: &str, yaml: &str, expect: &str| {
        let pipeline = write_pipeline(&cluster.path(name), yaml, &[("data.txt", name)]);
        let result = cluster.ferry(&["run", pipeline.to_str().unwrap()]);
        assert!(!result.success(), "{name}: accepted: {result:?}");
        assert!(
            result.stderr.contains(expect),
            "{name}: the error does not say {expect:?}:\n{}",
            result.stderr
        );
        assert_eq!(
            blob_files(&blobs),
            Vec::<String>::new(),
            "{name}: a bundle reached the coordinator"
        );
    };
    // Over the cluster's file size (well under the default 8 MiB): refused by
    // the CLI before it is parsed or anything is uploaded.
    let mut big = steps(1);
    big.push_str(&format!("# {}\n", "x".repeat(5000)));
    refused(
        "big",
        &big,
        &format!(
            "the pipeline file is {} bytes; the limit is 4096",
            big.len()
        ),
    );
    // Four steps are fine by default, not for this cluster.
    refused(
        "wide",
        &steps(4),
        "the pipeline has 4 steps; at most 3 are allowed",
    );
    refused(
        "sweep",
        "name: sweep\nsteps:\n  - name: s\n    matrix:\n      x: [1, 2, 3]\n    \
         command: [\"true\"]\n",
        "expands to 3 combinations; at most 2 are allowed",
    );
    // A bad schedule is refused before its bundle goes anywhere too.
    let pipeline = write_pipeline(&cluster.path("sched"), &steps(1), &[]);
    let result = cluster.ferry(&[
        "schedules",
        "create",
        "bad name",
        "--cron",
        "0 3 * * *",
        "--pipeline",
        pipeline.to_str().unwrap(),
    ]);
    assert!(!result.success(), "{result:?}");
    assert!(
        result
            .stderr
            .contains("schedule name \"bad name\" is invalid"),
        "{}",
        result.stderr
    );
    assert!(blob_files(&blobs).is_empty());

    // Within the limits: submitted (no worker: the run stays queued, and its
    // bundle referenced).
    let ok = write_pipeline(&cluster.path("ok"), &steps(3), &[("data.txt", "ok")]);
    let result = cluster.ferry(&["run", ok.to_str().unwrap()]);
    assert!(result.success(), "{result:?}");
    let referenced = blob_files(&blobs);
    assert_eq!(referenced.len(), 1, "{referenced:?}");

    // A pipeline naming a secret its project does not have is refused before
    // its bundle is uploaded.
    let orphan = write_pipeline(
        &cluster.path("orphan"),
        "name: orphan\nsteps:\n  - name: a\n    shell: echo hi\n    \
         secrets: [{name: nope, env: NOPE}]\n",
        &[("data.txt", "orphan")],
    );
    let result = cluster.ferry(&["run", orphan.to_str().unwrap()]);
    assert!(!result.success(), "{result:?}");
    assert!(
        result.stderr.contains("asks for secret \"nope\"")
            && result.stderr.contains("nothing was uploaded"),
        "{}",
        result.stderr
    );
    assert_eq!(blob_files(&blobs), referenced, "nothing was uploaded");

    // A bundle uploaded but never submitted (a client that stopped between
    // the two calls) is referenced by nothing.
    let packed = ferry_common::bundle::pack_dir(orphan.parent().unwrap()).unwrap();
    let runtime = ferry_tests::uploads::runtime();
    runtime
        .block_on(async {
            let mut client = ferry_tests::uploads::control(&cluster);
            ferry_tests::uploads::upload_bundle(&mut client, packed.bytes).await
        })
        .expect("the bundle is stored");
    assert_eq!(blob_files(&blobs).len(), 2, "the orphan bundle was stored");

    // `ferry gc` (grace 0) deletes the orphan, keeps the queued run's bundle.
    let gc = cluster.ferry(&["gc", "--keep-last", "1"]);
    assert!(gc.success(), "{gc:?}");
    assert!(gc.stdout.contains("deleted 1 blob"), "{}", gc.stdout);
    ferry_tests::wait_for(
        std::time::Duration::from_secs(10),
        "the unreferenced bundle to be deleted",
        || (blob_files(&blobs) == referenced).then_some(()),
    );
    let status = cluster.ferry(&["runs", "--output", "json"]);
    assert!(status.success(), "{status:?}");
}
