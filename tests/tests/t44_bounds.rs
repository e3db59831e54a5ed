//! Bounds on what a caller can make a coordinator hold: parameter values,
//! worker registrations, a wrong certificate's large message, and a run too
//! large to list; and the data directory's file modes.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_common::proto::peer_client::PeerClient;
use ferry_common::proto::{self, agent_client::AgentClient, control_client::ControlClient};
use ferry_tests::{Cluster, bin, step_of, wait_for, write_pipeline};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// A channel to the cluster's first coordinator presenting `name`'s certificate.
fn channel_as(cluster: &Cluster, name: &str) -> Channel {
    let read = |path: &Path| std::fs::read(path).expect("certificate file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cluster.pki.ca())))
        .identity(Identity::from_pem(
            read(&cluster.pki.cert(name)),
            read(&cluster.pki.key(name)),
        ))
        .domain_name("127.0.0.1");
    Endpoint::from_shared(format!("https://{}", cluster.address()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .tls_config(tls)
        .expect("TLS config")
        .connect_lazy()
}

/// The ids `ferry runs` lists, and what it said on stderr.
fn listed_runs(cluster: &Cluster) -> (Vec<u64>, String) {
    let result = cluster.ferry(&["runs", "--output", "json"]);
    assert!(result.success(), "ferry runs failed: {result:?}");
    let ids = result
        .json()
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|run| run["run"].as_u64().expect("run id"))
        .collect();
    (ids, result.stderr)
}

const WITH_PARAM: &str =
    "name: params\nparams:\n  blob: \"\"\nsteps:\n  - name: hello\n    shell: \"echo hi\"\n";

#[test]
fn a_thirteen_mib_parameter_is_refused_by_the_cli_and_by_the_coordinator() {
    let cluster = Cluster::start();
    // The CLI: a default too large, then an override too large (an argument
    // cannot hold 13 MiB: the kernel limits one to 128 KiB; the file is over the
    // loosest limit a cluster may set, so the CLI asks the cluster first).
    let huge = "x".repeat(13 * 1024 * 1024);
    let pipeline = write_pipeline(
        &cluster.path("huge-default"),
        &WITH_PARAM.replace("blob: \"\"", &format!("blob: \"{huge}\"")),
        &[],
    );
    let result = cluster.ferry(&["run", pipeline.to_str().expect("utf-8")]);
    assert!(!result.success(), "{:?}", result.stdout);
    // The file itself is over the cluster's limit: refused for that first, as
    // the coordinator would, before it is parsed.
    assert!(
        result.stderr.contains("the pipeline file is") && result.stderr.contains("8388608"),
        "{}",
        result.stderr
    );
    assert!(result.stderr.len() < 4096, "the value is echoed back");
    let pipeline = write_pipeline(
        &cluster.path("big-default"),
        &WITH_PARAM.replace("blob: \"\"", &format!("blob: \"{}\"", &huge[..100 * 1024])),
        &[],
    );
    let result = cluster.ferry(&["run", pipeline.to_str().expect("utf-8")]);
    assert!(!result.success(), "{:?}", result.stdout);
    assert!(
        result.stderr.contains("\"blob\"") && result.stderr.contains("65536"),
        "{}",
        result.stderr
    );
    assert!(result.stderr.len() < 4096, "the value is echoed back");
    let pipeline = write_pipeline(&cluster.path("override"), WITH_PARAM, &[]);
    let override_arg = format!("blob={}", "y".repeat(100 * 1024));
    let result = cluster.ferry(&[
        "run",
        pipeline.to_str().expect("utf-8"),
        "--param",
        &override_arg,
    ]);
    assert!(!result.success(), "{:?}", result.stdout);
    assert!(result.stderr.contains("65536"), "{}", result.stderr);

    // The coordinator, called directly with a real bundle: refused before
    // anything is proposed.
    let run = cluster.submit(&pipeline, &[]);
    let bundle = cluster.status(run)["bundle"]
        .as_str()
        .expect("bundle")
        .to_string();
    let runtime = runtime();
    let _entered = runtime.enter();
    let mut control = ControlClient::new(channel_as(&cluster, ferry_tests::CLIENT))
        .max_decoding_message_size(16 * 1024 * 1024);
    let request = proto::SubmitRunRequest {
        spec_yaml: WITH_PARAM.to_string(),
        spec_file: "pipeline.yaml".to_string(),
        params: HashMap::from([("blob".to_string(), huge)]),
        bundle_digest: bundle.clone(),
        request_id: "thirteen-mib".to_string(),
        no_cache: false,
    };
    let refused = runtime
        .block_on(control.submit_run(request))
        .expect_err("a 13 MiB parameter was accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("\"blob\"") && refused.message().contains("65536"),
        "{}",
        refused.message()
    );
    // Nothing stored: only the run submitted with a short value exists.
    assert_eq!(listed_runs(&cluster).0, vec![run]);
}

#[test]
fn a_huge_label_or_gpu_inventory_is_refused_at_registration() {
    let cluster = Cluster::start();
    cluster.pki.issue("worker", "w1").expect("worker cert");
    let runtime = runtime();
    let _entered = runtime.enter();
    let mut agent = AgentClient::new(channel_as(&cluster, "w1"));
    let register =
        |labels: HashMap<String, String>, gpus: Vec<proto::Gpu>| proto::RegisterRequest {
            name: "w1".to_string(),
            capacity: Some(proto::Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                gpus: gpus.len() as u32,
            }),
            labels,
            gpus,
            running: Vec::new(),
            container_runtime: String::new(),
        };
    let label = HashMap::from([("zone".to_string(), "z".repeat(6 * 1024 * 1024))]);
    let refused = runtime
        .block_on(agent.register(register(label, Vec::new())))
        .expect_err("a 6 MiB label was accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("\"zone\"") && refused.message().contains("256"),
        "{}",
        refused.message()
    );
    let gpus: Vec<proto::Gpu> = (0..50_000)
        .map(|index| proto::Gpu {
            index,
            uuid: format!("GPU-{index}"),
            model: "H100".to_string(),
            memory_bytes: 80 << 30,
        })
        .collect();
    let refused = runtime
        .block_on(agent.register(register(HashMap::new(), gpus)))
        .expect_err("50,000 GPUs were accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("64 GPUs"),
        "{}",
        refused.message()
    );
    // Nothing stored: no worker is known.
    let workers = cluster.ferry(&["workers", "--output", "json"]);
    assert!(workers.success(), "{workers:?}");
    assert_eq!(
        workers.json().as_array().map(Vec::len),
        Some(0),
        "{workers:?}"
    );
    // Within the bounds the same worker registers.
    let accepted = runtime.block_on(agent.register(register(
        HashMap::from([("zone".to_string(), "a".to_string())]),
        Vec::new(),
    )));
    assert!(accepted.is_ok(), "{accepted:?}");

    // A worker configured past the bounds refuses to start and says why.
    cluster.pki.issue("worker", "w2").expect("worker cert");
    let config = cluster.path("w2.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"w2\"\ncoordinator = \"{}\"\ndata_dir = \"w2-data\"\nlabels = {{ zone = \"{}\" }}\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/w2.pem\"\nkey = \"certs/w2-key.pem\"\n",
            cluster.address(),
            "z".repeat(300)
        ),
    )
    .expect("worker config");
    let mut worker = Command::new(bin("ferry-worker"))
        .arg("--config")
        .arg(&config)
        .current_dir(cluster.root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker");
    wait_for(
        Duration::from_secs(30),
        "the worker to refuse to start",
        || worker.try_wait().expect("wait").map(|_| ()),
    );
    let output = worker.wait_with_output().expect("worker output");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"zone\"") && stderr.contains("256"),
        "{stderr}"
    );
}

#[test]
fn a_client_certificate_is_refused_by_the_peer_service_before_its_body_is_decoded() {
    let cluster = Cluster::start();
    let pid = cluster.coordinators[0]
        .daemon
        .as_ref()
        .expect("running")
        .pid();
    let runtime = runtime();
    let _entered = runtime.enter();
    let mut peer = PeerClient::new(channel_as(&cluster, ferry_tests::CLIENT));
    let before = ferry_tests::procfs::status_kib(pid, "VmHWM").expect("VmHWM") * 1024;
    for _ in 0..3 {
        let request = proto::ForwardRequest {
            caller: "spiffe://ferry/client/alice".to_string(),
            command: vec![b'{'; 60 * 1024 * 1024],
            resent: false,
            request_id: String::new(),
        };
        let refused = runtime
            .block_on(peer.forward(request))
            .expect_err("a client certificate was let into the peer service");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("coordinator certificates only"),
            "{}",
            refused.message()
        );
    }
    // Three 60 MB messages decoded would have raised the peak by 60 MB at least.
    let grown = (ferry_tests::procfs::status_kib(pid, "VmHWM").expect("VmHWM") * 1024)
        .saturating_sub(before);
    assert!(
        grown < 24 * 1024 * 1024,
        "the coordinator's peak memory grew by {grown} bytes"
    );
    // The coordinator still serves.
    assert!(cluster.ferry(&["runs"]).success());
}

#[test]
fn an_oversize_run_does_not_hide_older_runs_and_its_status_answers() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let small = write_pipeline(
        &cluster.path("small"),
        "name: small\nsteps:\n  - name: hello\n    shell: \"echo hi\"\n",
        &[],
    );
    let older = cluster.submit(&small, &[]);
    cluster.wait_run(older, Duration::from_secs(60));
    // Five steps in a row, each reporting 10,000 distinct metrics with names of
    // 123 bytes (the most a step may report): the run's summary alone is over
    // the 6 MiB a listing holds, and its view three times that.
    let mut yaml = String::from("name: big\nsteps:\n");
    for step in 1..=5 {
        yaml.push_str(&format!(
            "  - name: s{step}\n{}    shell: |\n      seq 1 10000 | awk '{{printf \"{{\\\"name\\\": \\\"s{step}_%0120d\\\", \\\"value\\\": 1}}\\n\", $1}}' > \"$FERRY_METRICS\"\n",
            if step > 1 {
                format!("    needs: [s{}]\n", step - 1)
            } else {
                String::new()
            }
        ));
    }
    let big_pipeline = write_pipeline(&cluster.path("big"), &yaml, &[]);
    let big = cluster.submit(&big_pipeline, &[]);
    let status = cluster.wait_run(big, Duration::from_secs(240));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert!(
        status["trimmed"]
            .as_str()
            .is_some_and(|t| t.contains("metrics")),
        "the view does not say it was trimmed: {}",
        status["trimmed"]
    );
    assert_eq!(step_of(&status, "s5")["state"], "succeeded");
    let newer = cluster.submit(&small, &[]);
    cluster.wait_run(newer, Duration::from_secs(60));

    let (ids, stderr) = listed_runs(&cluster);
    assert_eq!(ids, vec![older, newer], "{stderr}");
    assert!(
        stderr.contains(&format!("too large to list: run {big}")),
        "{stderr}"
    );
    // The text form of status answers too.
    let text = cluster.ferry(&["status", &big.to_string()]);
    assert!(text.success(), "{text:?}");
    assert!(text.stderr.contains("cut down"), "{}", text.stderr);
}

#[test]
fn the_data_directory_is_the_coordinators_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let pipeline = write_pipeline(
        &cluster.path("hello"),
        "name: hello\nsteps:\n  - name: hello\n    shell: \"echo hi\"\n",
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    assert_eq!(
        cluster.wait_run(run, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let data = cluster.path("coordinator-1-data");
    let mut pending = vec![data.clone()];
    let (mut files, mut dirs) = (0, 0);
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).expect("metadata");
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_dir() {
            dirs += 1;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("entry").path());
            }
        } else if metadata.is_file() {
            files += 1;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
    }
    // The state, the Raft log, and at least the bundle and the log blob.
    assert!(dirs >= 4 && files >= 4, "{dirs} directories, {files} files");

    // A directory opened up by hand (or by an older version) is tightened at
    // the next start.
    cluster.kill_coordinator();
    for path in [&data, &data.join("blobs")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    cluster.start_coordinator();
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("blobs")), 0o700);
    let log = cluster.member_log(1);
    assert!(
        log.contains("took group and other permissions away"),
        "{log}"
    );
}

/// Connections that open TCP and never start their TLS handshake (a slowloris)
/// hold up no other caller: each handshake runs on its own, so a client is
/// answered while hundreds of them still wait, none closed yet.
#[test]
fn idle_connections_that_never_finish_a_handshake_hold_up_no_caller() {
    use std::io::Read;
    let cluster = Cluster::start();
    let address = cluster.address();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&address).expect("connect"))
        .collect();
    let answered = cluster.ferry(&["runs"]);
    assert!(answered.success(), "{answered:?}");
    // Had the call waited for the idle connections' handshakes to time out,
    // the server would have closed them by now.
    for (index, mut stream) in idle.into_iter().enumerate() {
        stream.set_nonblocking(true).expect("non-blocking");
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("idle connection {index} was not left waiting: {other:?}"),
        }
    }
}
