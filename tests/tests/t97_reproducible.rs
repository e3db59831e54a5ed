//! Reproducible runs (issue 5) end to end: step caching, identical submissions
//! at once, a 100-trial sweep with its gathering step, `ferry rerun --from`,
//! lineage and diff, `ferry gc` with a pin, and a schedule across a leader kill.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ferry_tests::{Cluster, step_of, wait_for, write_pipeline};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Each step appends its name to `$FERRY_PARAM_LOG`, so the test can tell what
/// ran. Each step's code is only its own script (`cache.paths`): editing the
/// pipeline file or another script leaves the others cached. `train` writes the
/// time into its model (a non-deterministic step), so whatever follows it runs
/// again whenever it runs.
const CACHE_PIPELINE: &str = r#"name: cached
params:
  log: ""
  scale: 1
steps:
  - name: prepare
    params: [log]
    cache: {paths: [prepare.sh, data.txt]}
    command: ["sh", "prepare.sh"]
    outputs: [clean.txt]
  - name: train
    params: [log]
    inputs: {data: prepare/clean.txt}
    cache: {paths: [train.sh], version: "1"}
    command: ["sh", "train.sh", "${params.scale}"]
    outputs: [model.txt]
  - name: report
    params: [log]
    inputs: {model: train/model.txt}
    cache: {paths: [report.sh]}
    command: ["sh", "report.sh"]
    outputs: [report.txt]
  - name: unrelated
    params: [log]
    cache: {paths: [unrelated.sh]}
    command: ["sh", "unrelated.sh"]
    outputs: [u.txt]
"#;

const SCRIPTS: [(&str, &str); 5] = [
    (
        "prepare.sh",
        "echo prepare >> \"$FERRY_PARAM_LOG\"\ntr a-z A-Z < data.txt > clean.txt\n",
    ),
    (
        "train.sh",
        "echo train >> \"$FERRY_PARAM_LOG\"\n\
         echo \"$(wc -l < \"$FERRY_INPUT_DATA\") x $1 at $(date +%s%N)\" > model.txt\n",
    ),
    (
        "report.sh",
        "echo report >> \"$FERRY_PARAM_LOG\"\ncp \"$FERRY_INPUT_MODEL\" report.txt\n",
    ),
    (
        "unrelated.sh",
        "echo unrelated >> \"$FERRY_PARAM_LOG\"\necho hi > u.txt\n",
    ),
    ("data.txt", "one\ntwo\n"),
];

/// Steps that ran since the last call (and empties the log).
fn ran(log: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines().map(str::to_string).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// (step, how, from run) for every step that did not run in its run.
fn reuse(status: &Value) -> Vec<(String, String, u64)> {
    status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["reused"].is_null())
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["reused"].as_str().unwrap().to_string(),
                s["reused_run"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn run_and_wait(cluster: &Cluster, pipeline: &Path, extra: &[&str]) -> (u64, Value) {
    let run = cluster.submit(pipeline, extra);
    let status = cluster.wait_run(run, RUN_TIMEOUT);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    (run, status)
}

#[test]
fn the_cache_serves_identical_steps_and_reruns_exactly_what_changed() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let dir = cluster.path("cached");
    let log = cluster.path("ran.log");
    let pipeline = write_pipeline(&dir, CACHE_PIPELINE, &SCRIPTS);
    let log_param = format!("log={}", log.display());
    let args = ["--param", log_param.as_str()];

    let (first, _) = run_and_wait(&cluster, &pipeline, &args);
    assert_eq!(ran(&log), set(&["prepare", "train", "report", "unrelated"]));

    // The same again: every step from the cache, nothing runs.
    let (second, status) = run_and_wait(&cluster, &pipeline, &args);
    assert_eq!(ran(&log), set(&[]));
    let expected: Vec<(String, String, u64)> = ["prepare", "train", "report", "unrelated"]
        .iter()
        .map(|s| (s.to_string(), "cached".to_string(), first))
        .collect();
    assert_eq!(reuse(&status), expected);
    assert_eq!(status["steps_cached"], 4);
    let table = cluster.ferry(&["status", &second.to_string()]);
    assert!(
        table.stdout.contains("cached") && table.stdout.contains(&format!("from run {first}")),
        "{}",
        table.stdout
    );
    // The artifacts are the first run's, by digest.
    let digest = |status: &Value, step: &str| {
        let run = status["run"].as_u64().unwrap();
        let listed = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
        listed
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["step"] == step)
            .map(|a| a["digest"].as_str().unwrap().to_string())
            .unwrap()
    };
    let first_status = cluster.status(first);
    assert_eq!(digest(&status, "report"), digest(&first_status, "report"));

    // One input file of prepare: prepare and everything downstream of it.
    std::fs::write(dir.join("data.txt"), "one\ntwo\nthree\n").unwrap();
    run_and_wait(&cluster, &pipeline, &args);
    assert_eq!(ran(&log), set(&["prepare", "train", "report"]));

    // One parameter, seen only by train: train and report.
    let mut with_scale = args.to_vec();
    with_scale.extend(["--param", "scale=2"]);
    run_and_wait(&cluster, &pipeline, &with_scale);
    assert_eq!(ran(&log), set(&["train", "report"]));

    // The command of train (in the pipeline file, which no step's code covers).
    let edited = CACHE_PIPELINE.replace(
        r#"["sh", "train.sh", "${params.scale}"]"#,
        r#"["sh", "train.sh", "${params.scale}", "fast"]"#,
    );
    std::fs::write(&pipeline, &edited).unwrap();
    run_and_wait(&cluster, &pipeline, &args);
    assert_eq!(ran(&log), set(&["train", "report"]));

    // The cache version of train.
    std::fs::write(
        &pipeline,
        edited.replace(r#"version: "1""#, r#"version: "2""#),
    )
    .unwrap();
    run_and_wait(&cluster, &pipeline, &args);
    assert_eq!(ran(&log), set(&["train", "report"]));

    // --no-cache runs everything.
    let mut no_cache = args.to_vec();
    no_cache.push("--no-cache");
    run_and_wait(&cluster, &pipeline, &no_cache);
    assert_eq!(ran(&log), set(&["prepare", "train", "report", "unrelated"]));

    // cache.paths naming a file the folder lacks: refused before anything is
    // uploaded, so no bundle is left behind.
    let blobs = || {
        walk(&cluster.path("coordinator-1-data/blobs"))
            .into_iter()
            .filter(|p| p.is_file())
            .count()
    };
    let stored = blobs();
    assert!(stored > 0, "the runs above stored blobs");
    let missing = write_pipeline(
        &cluster.path("missing-paths"),
        "name: missing\nsteps:\n  - name: s\n    command: [\"true\"]\n    cache: {paths: [nope.py]}\n",
        &[("here.py", "print(1)\n")],
    );
    let refused = cluster.ferry(&["run", missing.to_str().unwrap()]);
    assert!(
        !refused.success()
            && refused
                .stderr
                .contains("cache.paths of step \"s\": \"nope.py\" is not in the code bundle"),
        "{refused:?}"
    );
    assert_eq!(blobs(), stored, "a refused pipeline's bundle was stored");
}

/// Every path under `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn identical_submissions_at_once_run_a_cached_step_once() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 4\nmemory = \"2Gi\"");
    let log = cluster.path("once.log");
    let pipeline = write_pipeline(
        &cluster.path("once"),
        r#"name: once
params:
  log: ""
steps:
  - name: slow
    params: [log]
    resources: {cpu: 0.5}
    shell: echo ran >> "$FERRY_PARAM_LOG"; sleep 1; echo done > out.txt
    outputs: [out.txt]
"#,
        &[],
    );
    let log_param = format!("log={}", log.display());
    let runs: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| cluster.submit(&pipeline, &["--param", &log_param])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut owners = 0;
    for run in &runs {
        let status = cluster.wait_run(*run, RUN_TIMEOUT);
        assert_eq!(status["state"], "succeeded", "{status:#}");
        if step_of(&status, "slow")["reused"].is_null() {
            owners += 1;
        }
    }
    assert_eq!(owners, 1, "exactly one of the runs ran the step");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\n");
}

#[test]
fn a_hundred_trial_sweep_keeps_to_max_parallel_and_its_gather_step_sees_every_trial() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 16\nmemory = \"8Gi\"");
    let dir = cluster.path("sweep-marks");
    std::fs::create_dir_all(dir.join("running")).unwrap();
    let pipeline = write_pipeline(
        &cluster.path("sweep"),
        r#"name: sweep
params:
  dir: ""
steps:
  - name: train
    params: [dir]
    matrix: {a: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], b: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
    max_parallel: 8
    resources: {cpu: 0.1, memory: 16Mi}
    shell: |
      touch "$FERRY_PARAM_DIR/running/$FERRY_STEP"
      ls "$FERRY_PARAM_DIR/running" | wc -l >> "$FERRY_PARAM_DIR/seen"
      sleep 0.2
      rm "$FERRY_PARAM_DIR/running/$FERRY_STEP"
      echo "{\"name\": \"score\", \"value\": ${matrix.a}${matrix.b}}" >> "$FERRY_METRICS"
      echo "${matrix.a}${matrix.b}" > out.txt
    outputs: [out.txt]
  - name: pick
    gather: [{step: train, best: score, goal: max}]
    shell: |
      python3 - <<'EOF'
      import json, os
      d = os.environ["FERRY_GATHER_TRAIN"]
      m = json.load(open(os.path.join(d, "trials.json")))
      files = [t for t in m["trials"] if os.path.exists(os.path.join(d, t["outputs"]["out.txt"]))]
      best = open(os.path.join(os.environ["FERRY_GATHER_TRAIN_BEST"], "out.txt")).read().strip()
      json.dump({"trials": len(m["trials"]), "files": len(files), "best": m["best"], "best_out": best}, open("summary.json", "w"))
      EOF
    outputs: [summary.json]
"#,
        &[],
    );
    let dir_param = format!("dir={}", dir.display());
    let (run, status) = run_and_wait(&cluster, &pipeline, &["--param", &dir_param]);
    let trials: Vec<&Value> = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["trial_of"] == "train")
        .collect();
    assert_eq!(trials.len(), 100);
    let seen: Vec<u32> = std::fs::read_to_string(dir.join("seen"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(seen.len(), 100);
    let most = *seen.iter().max().unwrap();
    assert!(most <= 8, "{most} trials ran at once");
    assert!(most >= 2, "the trials never overlapped: {seen:?}");

    let out = cluster.path("summary.json");
    let get = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        "pick",
        "summary.json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(get.success(), "{get:?}");
    let summary: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(summary["trials"], 100, "{summary}");
    assert_eq!(summary["files"], 100, "{summary}");
    // The best score is a=9, b=9: the last trial.
    assert_eq!(summary["best"], "train.99", "{summary}");
    assert_eq!(summary["best_out"], "99", "{summary}");
}

#[test]
fn rerun_from_a_step_reuses_upstream_artifacts_and_runs_only_what_follows() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let log = cluster.path("rerun.log");
    let flag = cluster.path("fail-once");
    std::fs::write(&flag, "").unwrap();
    let pipeline = write_pipeline(
        &cluster.path("rerun"),
        r#"name: rerun
params:
  log: ""
  flag: ""
steps:
  - name: a
    params: [log]
    shell: echo a >> "$FERRY_PARAM_LOG"; date +%s%N > a.txt
    outputs: [a.txt]
  - name: b
    params: [log]
    inputs: {a: a/a.txt}
    shell: echo b >> "$FERRY_PARAM_LOG"; cat "$FERRY_INPUT_A" > b.txt
    outputs: [b.txt]
  - name: c
    params: [log, flag]
    inputs: {b: b/b.txt}
    shell: echo c >> "$FERRY_PARAM_LOG"; if [ -e "$FERRY_PARAM_FLAG" ]; then rm "$FERRY_PARAM_FLAG"; exit 3; fi; cat "$FERRY_INPUT_B" > c.txt
    outputs: [c.txt]
"#,
        &[],
    );
    let log_param = format!("log={}", log.display());
    let flag_param = format!("flag={}", flag.display());
    let first = cluster.submit(&pipeline, &["--param", &log_param, "--param", &flag_param]);
    let status = cluster.wait_run(first, RUN_TIMEOUT);
    assert_eq!(status["state"], "failed", "{status:#}");
    assert_eq!(ran(&log), set(&["a", "b", "c"]));

    // Without --from: only the failed step runs again.
    let again = cluster.ferry(&["rerun", &first.to_string(), "--watch"]);
    assert!(again.success(), "{again:?}");
    assert_eq!(ran(&log), set(&["c"]));

    // From b: a is reused by digest, b and c run again.
    let from_b = cluster.ferry(&["rerun", &first.to_string(), "--from", "b"]);
    assert!(from_b.success(), "{from_b:?}");
    let rerun = ferry_tests::parse_run_id(&from_b.stdout)
        .unwrap_or_else(|| panic!("no run id in {}", from_b.stdout));
    let status = cluster.wait_run(rerun, RUN_TIMEOUT);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["rerun_of"], first);
    assert_eq!(ran(&log), set(&["b", "c"]));
    assert_eq!(
        reuse(&status),
        [("a".to_string(), "reused".to_string(), first)]
    );
    let a_digest = step_of(&cluster.status(first), "b")["inputs"][0]["digest"].clone();
    assert_eq!(step_of(&status, "b")["inputs"][0]["digest"], a_digest);

    // A step that does not exist is refused with the list, and nothing starts.
    let before = cluster.ferry(&["runs", "--output", "json"]).json();
    let bad = cluster.ferry(&["rerun", &first.to_string(), "--from", "bb"]);
    assert!(!bad.success());
    assert!(
        bad.stderr
            .contains("no step or sweep \"bb\" (it has: a, b, c)"),
        "{bad:?}"
    );
    let after = cluster.ferry(&["runs", "--output", "json"]).json();
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len()
    );
}

#[test]
fn lineage_and_diff_explain_a_known_pair_of_runs() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let pipeline = write_pipeline(
        &cluster.path("pair"),
        r#"name: pair
params:
  seed: 1
steps:
  - name: prepare
    shell: echo data > data.txt
    outputs: [data.txt]
  - name: train
    inputs: {data: prepare/data.txt}
    shell: |
      echo "model ${params.seed}" > model.txt
      echo "{\"name\": \"accuracy\", \"value\": 0.${params.seed}}" >> "$FERRY_METRICS"
    outputs: [model.txt]
"#,
        &[],
    );
    let (a, _) = run_and_wait(&cluster, &pipeline, &["--param", "seed=5"]);
    let (b, _) = run_and_wait(&cluster, &pipeline, &["--param", "seed=9"]);

    let artifacts = cluster
        .ferry(&["artifacts", &b.to_string(), "--output", "json"])
        .json();
    let model = artifacts
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["step"] == "train")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let lineage = cluster.ferry(&["lineage", &model]);
    assert!(lineage.success(), "{lineage:?}");
    let text = &lineage.stdout;
    assert!(
        text.contains("model.txt") && text.contains(&format!("run {b} step train")),
        "{text}"
    );
    assert!(text.contains("seed=9"), "{text}");
    // prepare of run b came from the cache: its lineage names the run that ran it.
    assert!(text.contains(&format!("run {a} step prepare")), "{text}");
    assert!(text.contains("data.txt"), "{text}");
    let nodes = cluster
        .ferry(&["lineage", &model, "--output", "json"])
        .json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "{nodes:#}");

    let diff = cluster.ferry(&["runs", "diff", &a.to_string(), &b.to_string()]);
    assert!(diff.success(), "{diff:?}");
    let text = &diff.stdout;
    let seed = text
        .lines()
        .find(|l| l.contains("seed"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(seed.contains('5') && seed.contains('9'), "{text}");
    let accuracy = text
        .lines()
        .find(|l| l.contains("accuracy"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        accuracy.contains("0.5") && accuracy.contains("0.9"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("same code bundle"), "{text}");

    // The runs can be queried and compared by metric.
    let found = cluster
        .ferry(&["runs", "--where", "accuracy>0.7", "--output", "json"])
        .json();
    let ids: Vec<u64> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [b]);
    let bad = cluster.ferry(&["runs", "--where", "accuracy>high"]);
    assert!(
        !bad.success() && bad.stderr.contains("not a number"),
        "{bad:?}"
    );
    let compare = cluster.ferry(&[
        "runs",
        "compare",
        &a.to_string(),
        &b.to_string(),
        "--metric",
        "accuracy",
    ]);
    assert!(compare.success(), "{compare:?}");
    assert!(
        compare.stdout.contains(&format!("best: run {b}")),
        "{}",
        compare.stdout
    );
}

#[test]
fn gc_deletes_old_runs_artifacts_but_keeps_pinned_and_referenced_ones() {
    // The first collection comes seconds after the blob it plans to delete was
    // written, well within a grace period of 30 s (checked below): it keeps the
    // blob. A later collection, made only once the blob is certainly older than
    // the grace period, deletes it. No assertion rests on a window that a slow
    // machine could miss.
    const GRACE: Duration = Duration::from_secs(30);
    let mut cluster = Cluster::start_replicated(
        1,
        &format!("[retention]\ngrace_ms = {}\n", GRACE.as_millis()),
    );
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let pipeline = write_pipeline(
        &cluster.path("gc"),
        r#"name: gc
params:
  n: 1
steps:
  - name: make
    shell: head -c 100000 /dev/zero | tr '\0' "${params.n}" > blob.bin
    outputs: [blob.bin]
"#,
        &[],
    );
    let runs: Vec<u64> = (1..=3)
        .map(|n| run_and_wait(&cluster, &pipeline, &["--param", &format!("n={n}")]).0)
        .collect();
    let digest_of = |run: u64| {
        cluster
            .ferry(&["artifacts", &run.to_string(), "--output", "json"])
            .json()[0]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // A listing shows the newest runs, and says how many it left out.
    let newest = cluster.ferry(&["runs", "--limit", "2", "--output", "json"]);
    assert!(newest.success(), "{newest:?}");
    let listed: Vec<u64> = newest
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, runs[1..]);
    assert!(
        newest
            .stderr
            .contains("the newest 2 of 3 runs; --limit N shows more, --limit 0 every run"),
        "{}",
        newest.stderr
    );
    let pinned = digest_of(runs[0]);
    let pin = cluster.ferry(&["artifacts", "pin", &pinned, "--tag", "keep-me"]);
    assert!(pin.success(), "{pin:?}");
    let unknown = cluster.ferry(&["artifacts", "pin", &"0".repeat(64)]);
    assert!(
        !unknown.success() && unknown.stderr.contains("no artifact"),
        "{unknown:?}"
    );

    let dry = cluster.ferry(&["gc", "--keep-last", "1", "--dry-run"]);
    assert!(dry.success(), "{dry:?}");
    assert!(
        dry.stdout.contains("would collect 2 runs"),
        "{}",
        dry.stdout
    );
    let blob_file = |digest: &str| {
        cluster
            .path("coordinator-1-data/blobs")
            .join(&digest[..2])
            .join(digest)
    };
    let collected = digest_of(runs[1]);
    // The coordinator judges a blob's age by its file's modification time.
    let written = std::fs::metadata(blob_file(&collected))
        .and_then(|m| m.modified())
        .unwrap();
    let gc = cluster.ferry(&["gc", "--keep-last", "1"]);
    assert!(gc.success(), "{gc:?}");
    // The blob was at most this old when the coordinator looked at it.
    let age_at_collection = written.elapsed().unwrap();
    assert!(
        age_at_collection + Duration::from_secs(1) < GRACE,
        "this machine took {age_at_collection:?} from writing the blob to collecting it, \
         too close to the grace period of {GRACE:?} for the test to mean anything"
    );
    // Runs 1 and 2 collected; run 1's artifact is pinned, run 2's (100 kB) is
    // within the grace period: kept for now.
    assert!(gc.stdout.contains("collected 2 runs"), "{}", gc.stdout);
    assert!(gc.stdout.contains("deleted 0 blobs"), "{}", gc.stdout);
    assert!(
        gc.stdout.contains(&format!(
            "kept 1 blob (97.7 KiB) written in the last {}s",
            GRACE.as_secs()
        )),
        "{}",
        gc.stdout
    );
    assert!(blob_file(&collected).exists(), "kept by the grace period");
    // The first collection after the grace period deletes it. "After" with a
    // margin: the coordinator compares whole milliseconds, and a file's
    // modification time comes from a coarser clock than the one read here.
    let old_enough = written + GRACE + Duration::from_millis(100);
    wait_for(
        GRACE + Duration::from_secs(10),
        "the blob to be older than the grace period",
        || (std::time::SystemTime::now() > old_enough).then_some(()),
    );
    let later = cluster.ferry(&["gc", "--keep-last", "1"]);
    assert!(later.success(), "{later:?}");
    assert!(
        later.stdout.contains("collected 0 runs"),
        "{}",
        later.stdout
    );
    assert!(later.stdout.contains("deleted 1 blob"), "{}", later.stdout);
    assert!(
        later.stdout.contains("97.7 KiB reclaimed"),
        "{}",
        later.stdout
    );
    wait_for(Duration::from_secs(10), "the blob to be deleted", || {
        (!blob_file(&collected).exists()).then_some(())
    });
    assert!(blob_file(&pinned).exists(), "the pinned blob stays");
    assert!(
        blob_file(&digest_of(runs[2])).exists(),
        "the kept run's blob stays"
    );
    // Nothing more to do: a second collection deletes and reports nothing.
    let again = cluster.ferry(&["gc", "--keep-last", "1"]);
    assert!(
        again.stdout.contains("collected 0 runs"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("deleted 0 blobs"), "{}", again.stdout);
    let get = |run: u64| {
        let out = cluster.path(&format!("got-{run}"));
        cluster.ferry(&[
            "artifacts",
            "get",
            &run.to_string(),
            "make",
            "blob.bin",
            "-o",
            out.to_str().unwrap(),
        ])
    };
    assert!(get(runs[0]).success(), "pinned");
    let gone = get(runs[1]);
    assert!(
        !gone.success() && gone.stderr.contains("garbage-collected"),
        "{gone:?}"
    );
    assert!(get(runs[2]).success(), "kept");
    let listed = cluster.ferry(&["runs", "--output", "json"]).json();
    let collected: Vec<bool> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["collected"].as_bool().unwrap())
        .collect();
    assert_eq!(collected, [true, true, false]);
}

/// The ticks of the runs the schedule `every-2s` started, in run order.
fn scheduled(cluster: &Cluster) -> Vec<i64> {
    cluster
        .runs_listing(None, false)
        .and_then(|runs| {
            runs.as_array().map(|runs| {
                runs.iter()
                    .filter(|r| r["schedule"] == "every-2s")
                    .map(|r| r["schedule_tick_ms"].as_i64().unwrap())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn a_schedule_fires_once_per_tick_across_a_leader_kill() {
    let mut cluster = Cluster::start_replicated(3, "");
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    cluster.wait_worker_connected("w1");
    let pipeline = write_pipeline(
        &cluster.path("tick"),
        "name: tick\nsteps:\n  - name: s\n    command: [\"true\"]\n",
        &[],
    );
    let create = cluster.ferry(&[
        "schedules",
        "create",
        "every-2s",
        "--cron",
        "*/2 * * * * *",
        // The folder holding pipeline.yaml names the pipeline too.
        "--pipeline",
        pipeline.parent().unwrap().to_str().unwrap(),
    ]);
    assert!(create.success(), "{create:?}");
    let bad = cluster.ferry(&[
        "schedules",
        "create",
        "bad",
        "--cron",
        "61 * * * *",
        "--pipeline",
        pipeline.to_str().unwrap(),
    ]);
    assert!(
        !bad.success() && bad.stderr.contains("out of range"),
        "{bad:?}"
    );
    let never = cluster.ferry(&[
        "schedules",
        "create",
        "never",
        "--cron",
        "0 0 31 2 *",
        "--pipeline",
        pipeline.to_str().unwrap(),
    ]);
    assert!(
        !never.success() && never.stderr.contains("never fires"),
        "{never:?}"
    );

    wait_for(Duration::from_secs(20), "two scheduled runs", || {
        (scheduled(&cluster).len() >= 2).then_some(())
    });
    let leader = cluster.leader(Duration::from_secs(10));
    cluster.kill_member(leader);
    let before = scheduled(&cluster).len();
    wait_for(Duration::from_secs(40), "three more scheduled runs", || {
        (scheduled(&cluster).len() >= before + 3).then_some(())
    });
    let pause = cluster.ferry(&["schedules", "pause", "every-2s"]);
    assert!(pause.success(), "{pause:?}");
    let ticks = scheduled(&cluster);
    // Every tick at most once, on the 2-second grid, in order.
    let unique: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    assert!(ticks.iter().all(|t| t % 2000 == 0), "{ticks:?}");
    let mut sorted = ticks.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ticks, "runs are numbered in tick order");
    let listed = cluster
        .ferry(&["schedules", "list", "--output", "json"])
        .json();
    let schedule = &listed[0];
    assert_eq!(
        schedule["fired"].as_u64(),
        Some(ticks.len() as u64),
        "{listed:#}"
    );
    assert_eq!(schedule["paused"], true, "{listed:#}");
    // Ticks are consecutive except those missed during the failover, which are counted.
    let span = (ticks[ticks.len() - 1] - ticks[0]) / 2000 + 1;
    let missed = schedule["missed"].as_u64().unwrap() as i64;
    assert!(
        span == ticks.len() as i64 + missed || span >= ticks.len() as i64,
        "{ticks:?} missed {missed}"
    );
}
