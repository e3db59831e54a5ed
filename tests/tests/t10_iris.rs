//! The happy path end to end: the iris example through one coordinator and one
//! worker (its sweep, the best trial it keeps, artifacts verified byte for byte,
//! its data preparation cached on a second run), logs complete and in order,
//! `logs -f` and `--watch` ending with the run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_tests::{Cluster, bin, step_of, wait_for, workspace_root, write_pipeline};
use serde_json::Value;

const WORKER_CONFIG: &str = "cpus = 4\nmemory = \"4Gi\"";

fn cluster_with_worker() -> Cluster {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", WORKER_CONFIG);
    cluster
}

/// The stdout texts of `[step#attempt stream] text` lines of one step, attempt and stream.
fn texts(logs: &str, step: &str, attempt: u32, stream: &str) -> Vec<String> {
    let prefix = format!("[{step}#{attempt} {stream}] ");
    logs.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

/// Starts `ferry ARGS` in the background as the cluster's client, stdout into `out`.
fn spawn_ferry(cluster: &Cluster, args: &[&str], out: &Path) -> Child {
    Command::new(bin("ferry"))
        .args(args)
        .env("HOME", cluster.root.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("FERRY_CONFIG")
        .env("FERRY_COORDINATOR", cluster.address())
        .env("FERRY_CA", cluster.pki.ca())
        .env("FERRY_CERT", cluster.pki.cert(ferry_tests::CLIENT))
        .env("FERRY_KEY", cluster.pki.key(ferry_tests::CLIENT))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry")
}

/// The iris example as the coordinator sees it: split, standardize, the sweep
/// `train` expanded into one step per combination of k and vote weighting, and
/// select, which gathers every trial.
fn iris_spec() -> (PathBuf, ferry_common::spec::Pipeline) {
    let path = workspace_root().join("examples/iris/pipeline.yaml");
    let yaml = std::fs::read_to_string(&path).expect("iris pipeline");
    let spec = ferry_common::spec::parse_pipeline("pipeline.yaml", &yaml, &BTreeMap::new())
        .expect("the iris pipeline is valid");
    (path, spec)
}

/// The trials of the sweep `train`, in expansion order.
fn trials(spec: &ferry_common::spec::Pipeline) -> Vec<&ferry_common::spec::Step> {
    spec.steps
        .iter()
        .filter(|s| s.trial.as_ref().is_some_and(|t| t.of == "train"))
        .collect()
}

/// The last value of `metric` each step reported, from `ferry metrics RUN --output json`.
fn last_metric(cluster: &Cluster, run: u64, metric: &str) -> BTreeMap<String, f64> {
    let listed = cluster.ferry(&["metrics", &run.to_string(), "--output", "json"]);
    assert!(listed.success(), "{listed:?}");
    let listed = listed.json();
    listed
        .as_array()
        .expect("a list of steps")
        .iter()
        .filter_map(|entry| {
            let value = entry["metrics"]
                .as_array()?
                .iter()
                .rev()
                .find(|m| m["name"] == metric)?["value"]
                .as_f64()?;
            Some((entry["step"].as_str()?.to_string(), value))
        })
        .collect()
}

#[test]
fn iris_sweep_runs_every_trial_and_select_keeps_the_most_accurate() {
    let cluster = cluster_with_worker();
    let (pipeline_path, spec) = iris_spec();

    // 6 values of k times 2 weightings: 12 trials between the data preparation
    // and select.
    let trial_steps = trials(&spec);
    assert_eq!(trial_steps.len(), 12, "{:?}", spec.steps);
    let mut names: Vec<String> = vec!["split".into(), "standardize".into()];
    names.extend((0..12).map(|i| format!("train.{i}")));
    names.push("select".into());
    let spec_names: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(spec_names, names);
    let combinations: BTreeSet<(String, String)> = trial_steps
        .iter()
        .map(|s| {
            let values = &s.trial.as_ref().expect("a trial").values;
            (values["k"].clone(), values["weights"].clone())
        })
        .collect();
    assert_eq!(combinations.len(), 12, "every combination once");
    let select_spec = spec.steps.last().expect("select");
    assert_eq!(select_spec.needs.len(), 12, "select needs every trial");

    let run = cluster.submit(&pipeline_path, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["pipeline"], "iris");
    let steps = status["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), spec.steps.len(), "{status:#}");
    for step in &spec.steps {
        let view = step_of(&status, &step.name);
        assert_eq!(view["state"], "succeeded", "{view:#}");
        assert_eq!(view["attempt"], 1, "{view:#}");
        assert_eq!(view["worker"], "w1", "{view:#}");
        assert_eq!(view["exit_code"], 0, "{view:#}");
        let attempts = view["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{view:#}");
        assert_eq!(attempts[0]["attempt"], 1);
        assert_eq!(attempts[0]["outcome"], "succeeded", "{view:#}");
        assert_eq!(attempts[0]["worker"], "w1");
    }

    // Every declared output of every step is listed exactly once, and nothing else.
    let listed = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
    assert!(listed.success(), "{listed:?}");
    let listed = listed.json();
    let listed = listed.as_array().expect("artifact list");
    let declared: usize = spec.steps.iter().map(|s| s.outputs.len()).sum();
    assert_eq!(declared, 2 + 3 + 12 * 2 + 2);
    assert_eq!(listed.len(), declared, "{listed:#?}");
    let downloads = cluster.path("downloads");
    std::fs::create_dir_all(&downloads).expect("downloads dir");
    let mut digests: BTreeMap<(String, String), String> = BTreeMap::new();
    for step in &spec.steps {
        for output in &step.outputs {
            let matching: Vec<&Value> = listed
                .iter()
                .filter(|a| a["step"] == step.name.as_str() && a["name"] == output.as_str())
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "{}/{output} listed once: {listed:#?}",
                step.name
            );
            let artifact = matching[0];
            assert_eq!(artifact["attempt"], 1, "{artifact}");
            let digest = artifact["digest"].as_str().expect("digest").to_string();
            let size = artifact["size"].as_u64().expect("size");
            let target = downloads.join(format!("{}--{output}", step.name));
            let got = cluster.ferry(&[
                "artifacts",
                "get",
                &run.to_string(),
                &step.name,
                output,
                "-o",
                target.to_str().expect("utf-8 path"),
            ]);
            assert!(got.success(), "{got:?}");
            assert!(got.stdout.contains("verified"), "{got:?}");
            let bytes = std::fs::read(&target).expect("downloaded artifact");
            assert_eq!(bytes.len() as u64, size, "{}/{output}", step.name);
            assert!(size > 0, "{}/{output} is empty", step.name);
            assert_eq!(
                blake3::hash(&bytes).to_hex().to_string(),
                digest,
                "{}/{output}",
                step.name
            );
            digests.insert((step.name.clone(), output.clone()), digest);
        }
    }

    // Every trial reported its accuracy. The best is the highest; among equals,
    // the first trial in expansion order (the example's documented tie rule).
    let accuracy = last_metric(&cluster, run, "accuracy");
    let mut best: Option<(&str, f64)> = None;
    for trial in &trial_steps {
        let value = *accuracy
            .get(&trial.name)
            .unwrap_or_else(|| panic!("no accuracy for {}: {accuracy:?}", trial.name));
        assert!((0.0..=1.0).contains(&value), "{}: {value}", trial.name);
        if best.is_none_or(|(_, top)| value > top) {
            best = Some((&trial.name, value));
        }
    }
    let (best_step, best_accuracy) = best.expect("a best trial");
    assert!(best_accuracy > 0.8, "{accuracy:?}");

    let chosen: Value = serde_json::from_slice(
        &std::fs::read(downloads.join("select--best.json")).expect("best.json"),
    )
    .expect("best.json is JSON");
    assert_eq!(chosen["step"], best_step, "{chosen} vs {accuracy:?}");
    let chosen_accuracy = chosen["accuracy"].as_f64().expect("accuracy");
    assert!((chosen_accuracy - best_accuracy).abs() < 1e-9, "{chosen}");
    let values = &trial_steps
        .iter()
        .find(|s| s.name == best_step)
        .and_then(|s| s.trial.as_ref())
        .expect("the best trial")
        .values;
    assert_eq!(chosen["k"].to_string(), values["k"], "{chosen}");
    assert_eq!(chosen["weights"], values["weights"].as_str(), "{chosen}");
    // The chosen model is a byte-for-byte copy of the winning trial's model.
    assert_eq!(
        digests[&("select".to_string(), "best_model.json".to_string())],
        digests[&(best_step.to_string(), "model.json".to_string())]
    );
    // select reports the chosen model's scores as its own metrics.
    assert!(
        (accuracy["select"] - best_accuracy).abs() < 1e-9,
        "{accuracy:?}"
    );
    assert_eq!(
        last_metric(&cluster, run, "k")["select"].to_string(),
        values["k"]
    );

    let logs = cluster.ferry(&["logs", &run.to_string(), "select"]);
    assert!(logs.success(), "{logs:?}");
    let stdout = texts(&logs.stdout, "select", 1, "stdout");
    assert!(
        stdout.contains(&format!(
            "Ferry picked {best_step} (FERRY_GATHER_TRAIN_BEST)"
        )),
        "{}",
        logs.stdout
    );
    let best_line = stdout
        .iter()
        .find(|line| line.starts_with("best model: "))
        .unwrap_or_else(|| panic!("no best-model line in {}", logs.stdout));
    assert_eq!(
        best_line,
        &format!(
            "best model: {best_step} k={} weights={} accuracy={chosen_accuracy:.4}",
            values["k"], values["weights"]
        )
    );
    assert!(
        logs.stdout
            .lines()
            .all(|line| line.starts_with("[select#1 ")),
        "only the select step's lines: {}",
        logs.stdout
    );
}

/// The README's promise: running the example again takes the data preparation
/// from the cache, while the sweep (`cache: false`) trains again.
#[test]
fn iris_second_run_takes_data_preparation_from_the_cache() {
    let cluster = cluster_with_worker();
    let (pipeline_path, spec) = iris_spec();
    let first = cluster.submit(&pipeline_path, &[]);
    let first_status = cluster.wait_run(first, Duration::from_secs(120));
    assert_eq!(first_status["state"], "succeeded", "{first_status:#}");
    let second = cluster.submit(&pipeline_path, &[]);
    let status = cluster.wait_run(second, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");

    for name in ["split", "standardize"] {
        let view = step_of(&status, name);
        assert_eq!(view["state"], "succeeded", "{view:#}");
        assert_eq!(view["reused"], "cached", "{view:#}");
        assert_eq!(view["reused_run"], first, "{view:#}");
        assert_eq!(view["reused_step"], name, "{view:#}");
        assert_eq!(
            view["attempts"],
            serde_json::json!([]),
            "it did not run: {view:#}"
        );
    }
    for trial in trials(&spec) {
        let view = step_of(&status, &trial.name);
        assert_eq!(view["state"], "succeeded", "{view:#}");
        assert_eq!(
            view["reused"],
            Value::Null,
            "trials are not cached: {view:#}"
        );
        assert_eq!(view["attempt"], 1, "it ran again: {view:#}");
        assert_eq!(
            view["attempts"].as_array().map(Vec::len),
            Some(1),
            "{view:#}"
        );
    }
    // The trials are deterministic, so they gave select the same inputs: it is
    // cached too (pipeline.yaml explains why).
    let select = step_of(&status, "select");
    assert_eq!(select["reused"], "cached", "{select:#}");
    assert_eq!(select["reused_run"], first, "{select:#}");

    // What a user sees in `ferry status`.
    let table = cluster.ferry(&["status", &second.to_string()]);
    assert!(table.success(), "{table:?}");
    for name in ["split", "standardize"] {
        let row = table
            .stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {}", table.stdout));
        assert!(
            row.contains("cached") && row.contains(&format!("from run {first} step {name}")),
            "{}",
            table.stdout
        );
    }

    // The cached steps' outputs are the first run's artifacts.
    let artifacts = |run: u64| -> BTreeMap<(String, String), String> {
        let listed = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
        assert!(listed.success(), "{listed:?}");
        listed
            .json()
            .as_array()
            .expect("artifact list")
            .iter()
            .map(|a| {
                (
                    (
                        a["step"].as_str().unwrap_or_default().to_string(),
                        a["name"].as_str().unwrap_or_default().to_string(),
                    ),
                    a["digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let (before, after) = (artifacts(first), artifacts(second));
    for step in ["split", "standardize", "select"] {
        let outputs = &spec
            .steps
            .iter()
            .find(|s| s.name == step)
            .expect("step")
            .outputs;
        for output in outputs {
            let key = (step.to_string(), output.clone());
            assert!(before.contains_key(&key), "{key:?} in {before:#?}");
            assert_eq!(before.get(&key), after.get(&key), "{key:?}");
        }
    }
}

#[test]
fn step_logs_are_complete_and_in_order() {
    let cluster = cluster_with_worker();
    let dir = cluster.path("chatty");
    let pipeline = write_pipeline(
        &dir,
        r#"name: chatty
steps:
  - name: chatter
    command: ["./chatter.sh"]
  - name: other
    shell: "echo from-the-other-step"
"#,
        &[(
            "chatter.sh",
            "#!/bin/sh\ni=0\nwhile [ $i -lt 500 ]; do\n  echo \"line $i\"\n  if [ $((i % 50)) -eq 0 ]; then echo \"err $i\" >&2; fi\n  i=$((i + 1))\ndone\n",
        )],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");

    let logs = cluster.ferry(&["logs", &run.to_string(), "chatter"]);
    assert!(logs.success(), "{logs:?}");
    let expected: Vec<String> = (0..500).map(|i| format!("line {i}")).collect();
    assert_eq!(texts(&logs.stdout, "chatter", 1, "stdout"), expected);
    let expected_err: Vec<String> = (0..500).step_by(50).map(|i| format!("err {i}")).collect();
    assert_eq!(texts(&logs.stdout, "chatter", 1, "stderr"), expected_err);
    assert_eq!(
        logs.stdout.lines().count(),
        510,
        "nothing but the step's lines"
    );
    assert!(!logs.stdout.contains("from-the-other-step"));

    // Without a step: every step's lines.
    let all = cluster.ferry(&["logs", &run.to_string()]);
    assert!(all.success(), "{all:?}");
    assert_eq!(texts(&all.stdout, "chatter", 1, "stdout"), expected);
    assert_eq!(
        texts(&all.stdout, "other", 1, "stdout"),
        vec!["from-the-other-step".to_string()]
    );
}

#[test]
fn logs_follow_streams_live_and_ends_with_the_run() {
    let cluster = cluster_with_worker();
    let dir = cluster.path("slow");
    // The step prints half its lines, then waits for the test to open the gate,
    // so it certainly still runs while the test looks at the follower.
    let pipeline = write_pipeline(
        &dir,
        r#"name: slow
params:
  gate: ""
steps:
  - name: slow
    params: [gate]
    shell: |
      for i in 0 1 2 3; do echo slow-$i; sleep 0.4; done
      n=0
      while [ ! -e "$FERRY_PARAM_GATE" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
      for i in 4 5 6 7; do echo slow-$i; sleep 0.4; done
"#,
        &[],
    );
    let gate = cluster.path("gate");
    let gate_param = format!("gate={}", gate.display());
    let run = cluster.submit(&pipeline, &["--param", &gate_param]);
    cluster.wait_step(run, "slow", "running", Duration::from_secs(30));
    let out = cluster.path("follow.out");
    let mut follower = spawn_ferry(&cluster, &["logs", &run.to_string(), "-f"], &out);

    // Lines arrive while the step still runs, and the follower keeps waiting.
    wait_for(
        Duration::from_secs(30),
        "the first line to be followed",
        || {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("slow-0")
                .then_some(())
        },
    );
    assert_eq!(
        step_of(&cluster.status(run), "slow")["state"],
        "running",
        "the gate holds the step"
    );
    assert!(
        follower.try_wait().expect("try_wait").is_none(),
        "logs -f exited while the step was still running"
    );

    std::fs::write(&gate, "go").expect("open the gate");
    let status = cluster.wait_run(run, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let exit = wait_for(Duration::from_secs(10), "logs -f to exit by itself", || {
        follower.try_wait().expect("try_wait")
    });
    assert!(exit.success(), "logs -f exited with {exit}");
    let text = std::fs::read_to_string(&out).expect("follow output");
    let expected: Vec<String> = (0..8).map(|i| format!("slow-{i}")).collect();
    assert_eq!(texts(&text, "slow", 1, "stdout"), expected, "{text}");
}

#[test]
fn watch_exit_code_follows_the_run_outcome() {
    let cluster = cluster_with_worker();
    let good = write_pipeline(
        &cluster.path("good"),
        "name: good\nsteps:\n  - name: fine\n    shell: \"echo fine\"\n  - name: after\n    needs: [fine]\n    shell: \"true\"\n",
        &[],
    );
    let bad = write_pipeline(
        &cluster.path("bad"),
        "name: bad\nsteps:\n  - name: broken\n    shell: \"echo nope >&2; exit 3\"\n",
        &[],
    );

    let result = cluster.ferry(&["run", good.to_str().expect("path"), "--watch"]);
    assert_eq!(result.code, Some(0), "{result:?}");
    let run = ferry_tests::parse_run_id(&result.stdout).expect("run id");
    assert!(
        result.stdout.contains(&format!("run {run} succeeded")),
        "{result:?}"
    );
    assert_eq!(cluster.status(run)["state"], "succeeded");

    let result = cluster.ferry(&["run", bad.to_str().expect("path"), "--watch"]);
    assert!(
        result.code.is_some_and(|code| code != 0),
        "a failed run must exit non-zero: {result:?}"
    );
    let run = ferry_tests::parse_run_id(&result.stdout).expect("run id");
    assert!(
        result.stdout.contains(&format!("run {run} failed")),
        "{result:?}"
    );
    let status = cluster.status(run);
    assert_eq!(status["state"], "failed");
    assert_eq!(step_of(&status, "broken")["exit_code"], 3);

    // `ferry watch` on runs that already ended answers the same way.
    let watched = cluster.ferry(&["watch", &run.to_string()]);
    assert!(watched.code.is_some_and(|code| code != 0), "{watched:?}");
    let watched = cluster.ferry(&["watch", &(run - 1).to_string()]);
    assert_eq!(watched.code, Some(0), "{watched:?}");
}

#[test]
fn first_steps_started_together_on_a_fresh_worker_all_get_the_bundle() {
    let cluster = cluster_with_worker();
    let names: Vec<String> = (1..=6).map(|i| format!("first-{i}")).collect();
    let mut yaml = String::from("name: fanout\nsteps:\n");
    for name in &names {
        yaml.push_str(&format!(
            "  - name: {name}\n    shell: \"cat data.txt\"\n    resources: {{cpu: 0.5, memory: 64Mi}}\n"
        ));
    }
    let pipeline = write_pipeline(
        &cluster.path("fanout"),
        &yaml,
        &[("data.txt", "shipped in the bundle\n")],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let logs = cluster.ferry(&["logs", &run.to_string()]);
    assert!(logs.success(), "{logs:?}");
    for name in &names {
        let step = step_of(&status, name);
        assert_eq!(step["attempt"], 1, "{step:#}");
        assert_eq!(
            texts(&logs.stdout, name, 1, "stdout"),
            vec!["shipped in the bundle".to_string()]
        );
    }
}

/// The code bundle honours `.ferryignore`, reaches the step's work directory, and
/// an identical bundle is stored once and not uploaded again.
#[test]
fn the_code_bundle_is_filtered_staged_and_uploaded_once() {
    let cluster = cluster_with_worker();
    let dir = cluster.path("bundled");
    let pipeline = write_pipeline(
        &dir,
        r#"name: bundled
steps:
  - name: look
    shell: "test -f code/helper.txt && test ! -e secrets.env && test ! -e data/big.bin && cat code/helper.txt > seen.txt"
    outputs: [seen.txt]
"#,
        &[
            ("code/helper.txt", "shipped with the bundle\n"),
            ("secrets.env", "TOKEN=do-not-ship\n"),
            ("data/big.bin", "pretend this is large\n"),
            (".ferryignore", "secrets.env\ndata/\n"),
        ],
    );
    let path = pipeline.to_str().unwrap();
    let first = cluster.ferry(&["run", path, "--watch"]);
    assert!(first.success(), "{first:?}");
    assert!(first.stdout.contains("uploaded"), "{}", first.stdout);
    let second = cluster.ferry(&["run", path, "--watch"]);
    assert!(second.success(), "{second:?}");
    assert!(
        second.stdout.contains("already stored"),
        "an identical bundle must not be uploaded again: {}",
        second.stdout
    );
    let runs = cluster.ferry(&["runs", "--output", "json"]).json();
    let ids: Vec<u64> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_u64().unwrap())
        .collect();
    let bundles: Vec<Value> = ids
        .iter()
        .map(|id| cluster.status(*id)["bundle"].clone())
        .collect();
    assert_eq!(bundles.len(), 2);
    assert_eq!(bundles[0], bundles[1], "same folder, same digest");
    let out = cluster.path("seen.txt");
    let get = cluster.ferry(&[
        "artifacts",
        "get",
        &ids[0].to_string(),
        "look",
        "seen.txt",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(get.success(), "{get:?}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "shipped with the bundle\n"
    );
}
