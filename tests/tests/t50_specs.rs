//! Bad pipeline specs: `ferry run` refuses each class of mistake with a precise,
//! located message and stores nothing; the coordinator runs the same validation on
//! its own API; and a step cannot smuggle a file from outside its work directory
//! out as an artifact through a symlink.

use std::path::Path;
use std::time::Duration;

use ferry_common::proto::{self, control_client::ControlClient};
use ferry_tests::{Cluster, step_of, write_pipeline};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// YAML from one string per line, so that line numbers in expectations are easy
/// to check: line N is `lines[N - 1]`.
fn yaml(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

struct Case {
    what: &'static str,
    yaml: String,
    params: &'static [&'static str],
    /// Fragments the error output must contain (location prefix and key words).
    expect: &'static [&'static str],
}

fn assert_runs_empty(cluster: &Cluster) {
    let result = cluster.ferry(&["runs", "--output", "json"]);
    assert!(result.success(), "ferry runs failed: {result:?}");
    assert_eq!(result.json(), serde_json::json!([]), "a run was stored");
}

/// Regular files under `dir`, recursively (0 if it does not exist).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() { count_files(&path) } else { 1 }
        })
        .sum()
}

fn check_cases(cluster: &Cluster, cases: &[Case]) {
    for (n, case) in cases.iter().enumerate() {
        let dir = cluster.path(&format!("specs/{n}"));
        let pipeline = write_pipeline(&dir, &case.yaml, &[("train.py", "print('hi')\n")]);
        let mut args = vec!["run", pipeline.to_str().expect("utf-8 path")];
        for param in case.params {
            args.extend(["--param", param]);
        }
        let result = cluster.ferry(&args);
        assert!(
            !result.success(),
            "{}: ferry run accepted the spec: {result:?}",
            case.what
        );
        for fragment in case.expect {
            assert!(
                result.stderr.contains(fragment),
                "{}: the error does not contain {fragment:?}:\n{}",
                case.what,
                result.stderr
            );
        }
        assert!(
            !result.stdout.contains("submitted"),
            "{}: {result:?}",
            case.what
        );
    }
    assert_runs_empty(cluster);
    // The client validates before uploading anything.
    assert_eq!(
        count_files(&cluster.path("coordinator-data/blobs")),
        0,
        "a code bundle was uploaded for a bad spec"
    );
}

#[test]
fn structural_mistakes_are_refused_with_located_messages() {
    let cluster = Cluster::start();
    let cases = [
        Case {
            what: "unknown field",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    comand: [\"python3\", \"train.py\"]",
            ]),
            params: &[],
            expect: &["pipeline.yaml:4:", "unknown field `comand`", "`command`"],
        },
        Case {
            what: "duplicate step",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "  - name: train",
                "    shell: \"true\"",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:5:",
                "step \"train\" is defined more than once (first at line 3)",
            ],
        },
        Case {
            what: "unknown dependency",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: prepare",
                "    shell: \"true\"",
                "  - name: train",
                "    needs: [prepair]",
                "    shell: \"true\"",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:6:",
                "step \"train\" needs \"prepair\", which is not a step (did you mean \"prepare\"?)",
            ],
        },
        Case {
            what: "cycle",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: a",
                "    needs: [c]",
                "    shell: \"true\"",
                "  - name: b",
                "    needs: [a]",
                "    shell: \"true\"",
                "  - name: c",
                "    needs: [b]",
                "    shell: \"true\"",
            ]),
            params: &[],
            expect: &["pipeline.yaml:4:", "steps form a cycle: a → b → c → a"],
        },
        Case {
            what: "input of an undeclared output",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"echo {} > model.json\"",
                "    outputs: [model.json]",
                "  - name: eval",
                "    inputs:",
                "      model: train/modle.json",
                "    shell: \"true\"",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:8:",
                "input \"model\" of step \"eval\" points at \"train/modle.json\"",
                "step \"train\" declares no output \"modle.json\"",
                "did you mean \"model.json\"?",
            ],
        },
        Case {
            what: "input of a step that does not exist",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"echo {} > model.json\"",
                "    outputs: [model.json]",
                "  - name: eval",
                "    inputs:",
                "      model: trian/model.json",
                "    shell: \"true\"",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:8:",
                "there is no step \"trian\" (did you mean \"train\"?)",
            ],
        },
    ];
    check_cases(&cluster, &cases);
}

#[test]
fn output_paths_must_stay_inside_the_work_directory() {
    let cluster = Cluster::start();
    let cases = [
        Case {
            what: "output ../x",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "    outputs: [model.json, ../x]",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:5:",
                "output \"../x\" of step \"train\" leaves the step's work directory",
            ],
        },
        Case {
            what: "output /etc/passwd",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "    outputs:",
                "      - /etc/passwd",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:6:",
                "output \"/etc/passwd\" of step \"train\" is absolute",
            ],
        },
    ];
    check_cases(&cluster, &cases);
}

#[test]
fn bad_parameters_resources_and_timeouts_are_refused() {
    let cluster = Cluster::start();
    let with_param = yaml(&[
        "name: params",
        "params:",
        "  seed: 42",
        "steps:",
        "  - name: train",
        "    command: [\"python3\", \"train.py\", \"${params.seed}\"]",
    ]);
    let cases = [
        Case {
            what: "--param without '='",
            yaml: with_param.clone(),
            params: &["novalue"],
            expect: &["command line: --param \"novalue\" is not of the form NAME=VALUE"],
        },
        Case {
            what: "undeclared --param",
            yaml: with_param.clone(),
            params: &["undeclared=1"],
            expect: &[
                "pipeline.yaml: --param undeclared=1: the pipeline has no parameter \"undeclared\" (it declares: seed)",
            ],
        },
        Case {
            what: "misspelt --param",
            yaml: with_param.clone(),
            params: &["sed=1"],
            expect: &["no parameter \"sed\"", "did you mean \"seed\"?"],
        },
        Case {
            what: "parameter default that is a list",
            yaml: yaml(&[
                "name: params",
                "params:",
                "  seeds: [1, 2]",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:3:",
                "parameter \"seeds\" has a list as its default",
                "string, integer, float or bool",
            ],
        },
        Case {
            what: "placeholder of an undeclared parameter",
            yaml: yaml(&[
                "name: params",
                "params:",
                "  seed: 42",
                "steps:",
                "  - name: train",
                "    command: [\"python3\", \"train.py\", \"${params.sede}\"]",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:6:",
                "refers to parameter \"sede\", which is not declared (did you mean \"seed\"?)",
            ],
        },
        Case {
            what: "memory: lots",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "    resources:",
                "      cpu: 1",
                "      memory: lots",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:7:",
                "resources.memory of step \"train\" is invalid: \"lots\" is not a memory size",
            ],
        },
        Case {
            what: "negative cpu",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "    resources: {cpu: -2}",
            ]),
            params: &[],
            expect: &["resources.cpu of step \"train\" is invalid", "negative"],
        },
        Case {
            what: "timeout without a unit",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "    timeout: 30",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:5:",
                "timeout of step \"train\" is 30, which has no unit; write e.g. \"30s\"",
            ],
        },
        Case {
            what: "timeout with an unknown unit",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "    timeout: 2 weeks",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:5:",
                "timeout of step \"train\" is invalid: \"2 weeks\" is not a duration",
            ],
        },
        Case {
            what: "zero timeout",
            yaml: yaml(&[
                "name: bad",
                "steps:",
                "  - name: train",
                "    shell: \"true\"",
                "    timeout: 0s",
            ]),
            params: &[],
            expect: &[
                "pipeline.yaml:5:",
                "timeout of step \"train\" must be greater than zero",
            ],
        },
    ];
    check_cases(&cluster, &cases);
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let cluster = Cluster::start();
    let pipeline = write_pipeline(
        &cluster.path("many"),
        &yaml(&[
            "name: many",
            "steps:",
            "  - name: a",
            "    needs: [zz]",
            "    shell: \"true\"",
            "    outputs: [../up]",
            "  - name: b",
            "    shell: \"true\"",
            "    timeout: 1y",
        ]),
        &[],
    );
    let result = cluster.ferry(&["run", pipeline.to_str().expect("utf-8 path")]);
    assert!(!result.success(), "{result:?}");
    let at = |fragment: &str| {
        result
            .stderr
            .find(fragment)
            .unwrap_or_else(|| panic!("{fragment:?} missing from:\n{}", result.stderr))
    };
    let needs = at("pipeline.yaml:4:");
    let output = at("pipeline.yaml:6:");
    let timeout = at("pipeline.yaml:9:");
    assert!(needs < output && output < timeout, "{}", result.stderr);
    assert!(result.stderr.contains("needs \"zz\", which is not a step"));
    assert!(result.stderr.contains("unknown unit \"y\""));
    assert_runs_empty(&cluster);
}

#[test]
fn the_coordinator_validates_specs_on_its_own_api() {
    let cluster = Cluster::start();
    let bad = yaml(&[
        "name: bad",
        "steps:",
        "  - name: prepare",
        "    shell: \"true\"",
        "  - name: train",
        "    needs: [prepair]",
        "    shell: \"true\"",
    ]);
    let pipeline = write_pipeline(&cluster.path("bad"), &bad, &[]);
    let cli = cluster.ferry(&["run", pipeline.to_str().expect("utf-8 path")]);
    assert!(!cli.success(), "{cli:?}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let read = |path: &Path| std::fs::read(path).expect("TLS file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cluster.pki.ca())))
        .identity(Identity::from_pem(
            read(&cluster.pki.cert("alice")),
            read(&cluster.pki.key("alice")),
        ))
        .domain_name("127.0.0.1");
    runtime.block_on(async {
        let channel = Endpoint::from_shared(format!("https://{}", cluster.address()))
            .expect("endpoint")
            .timeout(Duration::from_secs(10))
            .tls_config(tls)
            .expect("TLS config")
            .connect()
            .await
            .expect("connect");
        let mut client = ControlClient::new(channel);
        let submit = |spec_yaml: &str, params: &[(&str, &str)]| proto::SubmitRunRequest {
            spec_yaml: spec_yaml.to_string(),
            spec_file: "pipeline.yaml".to_string(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            // No bundle at all: the spec is checked before the bundle is looked up.
            bundle_digest: String::new(),
            request_id: String::new(),
            no_cache: false,
        };

        let status = client
            .submit_run(submit(&bad, &[]))
            .await
            .expect_err("the coordinator accepted a bad spec");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("pipeline.yaml:6:")
                && status
                    .message()
                    .contains("step \"train\" needs \"prepair\", which is not a step"),
            "{status:?}"
        );
        // The very message the client printed when it checked the spec itself.
        assert!(
            cli.stderr.contains(status.message()),
            "client said {:?}, coordinator said {:?}",
            cli.stderr,
            status.message()
        );

        let status = client
            .submit_run(submit(
                &yaml(&[
                    "name: escape",
                    "steps:",
                    "  - name: a",
                    "    shell: \"true\"",
                    "    outputs: [/etc/passwd]",
                ]),
                &[],
            ))
            .await
            .expect_err("the coordinator accepted an absolute output");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("is absolute"), "{status:?}");

        let status = client
            .submit_run(submit(
                &yaml(&["name: p", "steps:", "  - name: a", "    shell: \"true\""]),
                &[("undeclared", "1")],
            ))
            .await
            .expect_err("the coordinator accepted an undeclared parameter");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("the pipeline has no parameter \"undeclared\""),
            "{status:?}"
        );

        let status = client
            .submit_run(submit(
                "name: x\nsteps:\n  - name: a\n    comand: [x]\n",
                &[],
            ))
            .await
            .expect_err("the coordinator accepted an unknown field");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("unknown field `comand`"),
            "{status:?}"
        );
    });
    assert_runs_empty(&cluster);
}

#[test]
fn an_output_symlinked_out_of_the_work_directory_fails_the_step() {
    let mut cluster = Cluster::start();
    // One CPU, and every step asks for one: the steps run one after the other
    // (see `parallel_steps_of_one_run_on_one_worker_all_succeed` for why).
    cluster.add_worker("w1", "cpus = 1");
    let pipeline = write_pipeline(
        &cluster.path("escape"),
        &yaml(&[
            "name: escape",
            "steps:",
            "  - name: link",
            "    shell: \"ln -s /etc/passwd out.txt\"",
            "    outputs: [out.txt]",
            "    resources: {cpu: 1}",
            "  - name: dirlink",
            "    shell: \"ln -s /etc d\"",
            "    outputs: [d/passwd]",
            "    resources: {cpu: 1}",
            "  - name: fine",
            "    shell: \"echo ok > real.txt && ln -s real.txt alias.txt\"",
            "    outputs: [alias.txt]",
            "    resources: {cpu: 1}",
        ]),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "failed", "{status:#}");
    for step in ["link", "dirlink"] {
        let found = step_of(&status, step);
        assert_eq!(found["state"], "failed", "{found:#}");
        let reason = found["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("outside the step's work directory"),
            "step {step}: {found:#}"
        );
        // The command itself exited 0; what failed is the output check.
        assert_eq!(found["exit_code"], 0, "{found:#}");
    }
    // A link that stays inside the work directory is a legitimate output.
    assert_eq!(step_of(&status, "fine")["state"], "succeeded", "{status:#}");

    let result = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
    assert!(result.success(), "{result:?}");
    let artifacts = result.json();
    let listed: Vec<(&str, &str)> = artifacts
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|a| {
            (
                a["step"].as_str().unwrap_or_default(),
                a["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed, vec![("fine", "alias.txt")], "{artifacts:#}");
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    let hash = blake3::hash(&passwd).to_hex().to_string();
    assert!(
        artifacts
            .as_array()
            .expect("a JSON list")
            .iter()
            .all(|a| a["digest"] != hash.as_str()),
        "/etc/passwd was stored as an artifact: {artifacts:#}"
    );
}

/// Several independent steps of one run start together on one worker, and each
/// stages the run's code bundle. They must all succeed.
///
/// Exposes a worker bug: `fetch_blob` (worker/src/executor.rs) downloads into
/// `path.with_extension("partial-<pid>")`, a name shared by every attempt of the
/// process, so concurrent fetches of the same bundle write the same partial file
/// and all but one fail with "staging failed: cannot move ... into place: No such
/// file or directory" (or a digest mismatch if the writes interleave).
#[test]
fn parallel_steps_of_one_run_on_one_worker_all_succeed() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 4\nmemory = \"4Gi\"");
    let mut lines = vec!["name: fan-out".to_string(), "steps:".to_string()];
    for n in 1..=4 {
        lines.push(format!("  - name: s{n}"));
        lines.push(format!("    shell: \"echo {n} > out.txt\""));
        lines.push("    outputs: [out.txt]".to_string());
        lines.push("    resources: {cpu: 0.5, memory: 64Mi}".to_string());
    }
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let pipeline = write_pipeline(
        &cluster.path("fan-out"),
        &yaml(&lines),
        &[("data.bin", &"x".repeat(512 * 1024))],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
}
