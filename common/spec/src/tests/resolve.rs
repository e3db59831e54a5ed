//! Pipelines that are accepted: what they resolve to, and how the resolved
//! pipeline round-trips through JSON (also as stored by older versions).

use super::*;

#[test]
fn valid_pipeline_resolves() {
    let p = parse(IRIS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.name, "iris");
    let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["split", "train", "evaluate"]);
    assert_eq!(
        p.params,
        BTreeMap::from([
            ("label".to_string(), "species".to_string()),
            ("seed".to_string(), "42".to_string()),
            ("test_fraction".to_string(), "0.3".to_string()),
            ("verbose".to_string(), "true".to_string()),
        ])
    );

    let split = &p.steps[0];
    assert_eq!(
        split.command,
        ["python3", "split.py", "--seed", "42", "--fraction=0.3", "3"]
    );
    assert_eq!(split.outputs, ["train.csv", "test.csv"]);
    assert!(split.needs.is_empty());
    assert_eq!(
        split.resources,
        Resources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            gpus: 1
        }
    );
    assert_eq!(split.retries, 0);
    assert_eq!(split.timeout_ms, None);

    let train = &p.steps[1];
    assert_eq!(
        train.command,
        [
            "/bin/sh",
            "-c",
            "python3 train.py --label species | tee log.txt"
        ]
    );
    assert_eq!(train.needs, ["split"]);
    assert_eq!(
        train.inputs,
        [Input {
            name: "train".into(),
            step: "split".into(),
            output: "train.csv".into()
        }]
    );
    assert_eq!(train.outputs, ["model.json", "models/m.json"]);
    assert_eq!(train.env["VERBOSE"], "true");
    assert_eq!(train.env["SEED"], "42");
    assert_eq!(train.env["N"], "3");
    assert_eq!(train.env["LITERAL"], "$$HOME costs $5");
    assert_eq!(train.retries, 2);
    assert_eq!(train.timeout_ms, Some(90 * 60 * 1000));
    assert_eq!(
        train.resources,
        Resources {
            cpu_millis: DEFAULT_CPU_MILLIS,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            gpus: 0
        }
    );

    let evaluate = &p.steps[2];
    assert_eq!(evaluate.needs, ["split", "train"]);
    let inputs: Vec<(&str, &str, &str)> = evaluate
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.step.as_str(), i.output.as_str()))
        .collect();
    assert_eq!(
        inputs,
        [
            ("model", "train", "model.json"),
            ("test", "split", "test.csv")
        ]
    );
}

#[test]
fn resolved_pipeline_round_trips_through_json() {
    let p = parse(IRIS).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    let back: Pipeline = serde_json::from_str(&json).unwrap();
    assert_eq!(p, back);
}

#[test]
fn overrides_beat_defaults() {
    let p = parse_with(IRIS, &[("seed", "7"), ("label", "petal width")]).unwrap();
    assert_eq!(p.params["seed"], "7");
    assert_eq!(p.params["test_fraction"], "0.3");
    assert_eq!(p.steps[0].command[3], "7");
    assert_eq!(p.steps[1].env["SEED"], "7");
    assert_eq!(
        p.steps[1].command[2],
        "python3 train.py --label petal width | tee log.txt"
    );
}

#[test]
fn ties_follow_file_order() {
    let yaml = "name: t\nsteps:\n- name: d\n  command: [x]\n  needs: [c]\n- name: b\n  command: [x]\n- name: c\n  command: [x]\n  needs: [a]\n- name: a\n  command: [x]\n- name: e\n  command: [x]\n";
    let p = parse(yaml).unwrap();
    let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["b", "a", "c", "d", "e"]);
}

#[test]
fn minimal_pipeline_gets_defaults() {
    let p = parse("name: one\nsteps:\n  - name: only\n    command: [true]\n").unwrap();
    assert!(p.params.is_empty());
    let s = &p.steps[0];
    assert_eq!(s.command, ["true"]);
    assert!(s.needs.is_empty() && s.inputs.is_empty() && s.outputs.is_empty());
    assert!(s.env.is_empty());
    assert_eq!(s.resources.cpu_millis, 500);
    assert_eq!(s.resources.memory_bytes, 256 * 1024 * 1024);
    assert_eq!(s.resources.gpus, 0);
    assert_eq!(s.retries, 0);
    assert_eq!(s.timeout_ms, None);
}

#[test]
fn null_collections_are_empty() {
    let p = parse(
        "name: n\nparams:\nsteps:\n  - name: a\n    command: [x]\n    needs:\n    inputs:\n    outputs:\n    env:\n    resources:\n",
    )
    .unwrap();
    assert!(p.steps[0].needs.is_empty());
}

#[test]
fn resources_in_all_forms() {
    let yaml = "name: r\nsteps:\n  - name: a\n    command: [x]\n    resources: {cpu: 0.5, memory: 1048576, gpu: 2}\n  - name: b\n    command: [x]\n    resources:\n      cpu: \"250m\"\n      memory: 2G\n";
    let p = parse(yaml).unwrap();
    assert_eq!(
        p.steps[0].resources,
        Resources {
            cpu_millis: 500,
            memory_bytes: 1 << 20,
            gpus: 2
        }
    );
    assert_eq!(
        p.steps[1].resources,
        Resources {
            cpu_millis: 250,
            memory_bytes: 2_000_000_000,
            gpus: 0
        }
    );
}

#[test]
fn scheduling_fields_resolve() {
    let p = parse(
        r#"name: sched
project: vision
priority: 10
max_parallel: 8
timeout: 2h
steps:
  - name: train
    command: ["true"]
    retries: 3
    retry_backoff: 30s
    node_selector: {zone: a, accelerator: h100}
    resources:
      gpu: {count: 2, model: H100, min_memory: 40Gi}
  - name: eval
    command: ["true"]
    resources: {gpu: 1}
"#,
    )
    .unwrap();
    assert_eq!(p.project, "vision");
    assert_eq!(p.priority, 10);
    assert_eq!(p.max_parallel, Some(8));
    assert_eq!(p.timeout_ms, Some(2 * 3600 * 1000));
    let train = &p.steps[0];
    assert_eq!(train.resources.gpus, 2);
    assert_eq!(train.gpu.model.as_deref(), Some("H100"));
    assert_eq!(train.gpu.min_memory_bytes, 40 << 30);
    assert_eq!(train.retry_backoff_ms, 30_000);
    assert_eq!(train.node_selector["zone"], "a");
    assert_eq!(train.node_selector["accelerator"], "h100");
    let eval = &p.steps[1];
    assert_eq!(eval.resources.gpus, 1);
    assert_eq!(eval.gpu, GpuConstraint::default());
    assert_eq!(eval.retry_backoff_ms, DEFAULT_RETRY_BACKOFF_MS);
    assert!(eval.node_selector.is_empty());

    let plain = parse("name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n").unwrap();
    assert_eq!(plain.project, DEFAULT_PROJECT);
    assert_eq!(plain.priority, 0);
    assert_eq!(plain.max_parallel, None);
    assert_eq!(plain.timeout_ms, None);
    // A pipeline stored before these fields existed reads with their defaults.
    let mut old = serde_json::to_value(&plain).unwrap();
    old.as_object_mut().unwrap().remove("project");
    old["steps"][0]
        .as_object_mut()
        .unwrap()
        .remove("retry_backoff_ms");
    let old: Pipeline = serde_json::from_value(old).unwrap();
    assert_eq!(old, plain);
}

#[test]
fn step_params_are_referenced_and_listed() {
    let yaml = r#"name: p
params:
  seed: 1
  lr: 0.1
  data_dir: /data
  unused: x
steps:
  - name: a
    command: [run, "--seed=${params.seed}"]
    env:
      LR: "${params.lr}"
    params: [data_dir, seed, data_dir]
  - name: b
    shell: "echo ${params.seed} ${params.seed}"
  - name: c
    command: [x]
"#;
    let p = parse(yaml).unwrap();
    assert_eq!(step(&p, "a").params, ["data_dir", "lr", "seed"]);
    assert_eq!(step(&p, "b").params, ["seed"]);
    assert!(step(&p, "c").params.is_empty());

    let p = parse(IRIS).unwrap();
    assert_eq!(step(&p, "split").params, ["seed", "test_fraction"]);
    assert_eq!(step(&p, "train").params, ["label", "seed", "verbose"]);
    assert!(step(&p, "evaluate").params.is_empty());
}

#[test]
fn plain_steps_get_the_new_defaults() {
    let p = parse(IRIS).unwrap();
    for s in &p.steps {
        assert_eq!(s.cache, CacheSpec::default());
        assert_eq!(s.trial, None);
        assert!(s.gather.is_empty());
        let json = serde_json::to_value(s).unwrap();
        for absent in ["cache", "trial", "gather"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
    }
}

#[test]
fn sweep_round_trips_through_json() {
    let mut p = parse(GATHER).unwrap();
    p.steps[0].cache = CacheSpec {
        enabled: false,
        version: "7".into(),
        paths: vec!["src".into()],
        secrets: false,
    };
    p.steps[1].trial.as_mut().unwrap().max_parallel = Some(3);
    let json = serde_json::to_string(&p).unwrap();
    let back: Pipeline = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let p = parse(SWEEP).unwrap();
    let back: Pipeline = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn old_step_json_reads_with_cache_on() {
    let p = parse("name: o\nsteps:\n  - name: a\n    command: [x]\n").unwrap();
    let mut json = serde_json::to_value(&p.steps[0]).unwrap();
    let fields = json.as_object_mut().unwrap();
    for new in ["params", "cache", "trial", "gather"] {
        fields.remove(new);
    }
    let old: Step = serde_json::from_value(json).unwrap();
    assert!(old.cache.enabled);
    assert_eq!(old, p.steps[0]);
    // A cache map that leaves `enabled` out means on.
    let mut json = serde_json::to_value(&p.steps[0]).unwrap();
    json["cache"] = serde_json::json!({"version": "2"});
    let step: Step = serde_json::from_value(json).unwrap();
    assert!(step.cache.enabled);
    assert_eq!(step.cache.version, "2");
}
