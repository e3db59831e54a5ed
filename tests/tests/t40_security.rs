//! Security: mutual TLS with the cluster CA, and role-bound certificates. A
//! certificate from another CA, no certificate at all, or a certificate of the
//! wrong role gets nothing done; a daemon without its TLS files refuses to start.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_common::proto::{self, agent_client::AgentClient, control_client::ControlClient};
use ferry_tests::{Cluster, Pki, bin, free_port, wait_for, write_pipeline};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const HELLO: &str = "name: hello\nsteps:\n  - name: hello\n    shell: \"echo hi\"\n";

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// A channel to the cluster's coordinator that trusts `ca` and presents the
/// certificate and key in `identity`, or no certificate at all. Connects on first use.
fn channel(cluster: &Cluster, ca: &Path, identity: Option<(&Path, &Path)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("CA file")))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("cert file"),
            std::fs::read(key).expect("key file"),
        ));
    }
    Endpoint::from_shared(format!("https://{}", cluster.address()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .expect("TLS config")
        .connect_lazy()
}

/// The ids of the runs the real client sees.
fn run_ids(cluster: &Cluster) -> Vec<u64> {
    let result = cluster.ferry(&["runs", "--output", "json"]);
    assert!(result.success(), "ferry runs failed: {result:?}");
    result
        .json()
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|run| run["run"].as_u64().expect("run id"))
        .collect()
}

/// The names of the workers the real client sees.
fn worker_names(cluster: &Cluster) -> Vec<String> {
    let result = cluster.ferry(&["workers", "--output", "json"]);
    assert!(result.success(), "ferry workers failed: {result:?}");
    result
        .json()
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|w| w["name"].as_str().expect("worker name").to_string())
        .collect()
}

/// Submits a run through the real client and returns its id and the digest of its
/// (now stored) code bundle, so that a forged SubmitRun can name a real bundle and
/// would succeed if the caller were let through.
fn stored_run(cluster: &Cluster) -> (u64, String) {
    let pipeline = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let run = cluster.submit(&pipeline, &[]);
    let bundle = cluster.status(run)["bundle"]
        .as_str()
        .expect("bundle digest")
        .to_string();
    assert_eq!(bundle.len(), 64, "not a BLAKE3 digest: {bundle}");
    (run, bundle)
}

fn submit_request(bundle: &str) -> proto::SubmitRunRequest {
    proto::SubmitRunRequest {
        spec_yaml: HELLO.to_string(),
        spec_file: "pipeline.yaml".to_string(),
        params: Default::default(),
        bundle_digest: bundle.to_string(),
        request_id: String::new(),
        no_cache: false,
    }
}

fn register_request(name: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        name: name.to_string(),
        capacity: Some(proto::Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: 0,
        }),
        labels: Default::default(),
        gpus: Vec::new(),
        running: Vec::new(),
        container_runtime: String::new(),
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::start();
    let (run, bundle) = stored_run(&cluster);
    // Same name as the real client, but issued by a CA the cluster does not trust.
    let foreign = Pki::new(&cluster.path("foreign-ca")).expect("foreign CA");
    foreign
        .issue("client", "alice")
        .expect("foreign client cert");
    let (ca, cert, key) = (
        cluster.pki.ca(),
        foreign.cert("alice"),
        foreign.key("alice"),
    );

    let pipeline = write_pipeline(&cluster.path("other"), HELLO, &[]);
    for args in [
        vec!["runs"],
        vec!["workers"],
        vec!["run", pipeline.to_str().expect("utf-8 path")],
    ] {
        let result = cluster.ferry_with(&ca, &cert, &key, &args);
        assert!(
            !result.success(),
            "ferry {args:?} with a foreign certificate succeeded: {result:?}"
        );
        assert!(
            !result.stderr.trim().is_empty(),
            "no error message: {result:?}"
        );
    }
    // A whole foreign setup (its own CA too) cannot even verify the coordinator.
    let result = cluster.ferry_with(&foreign.ca(), &cert, &key, &["runs"]);
    assert!(!result.success(), "{result:?}");

    // A forged submission naming a bundle that really is stored fails too.
    runtime().block_on(async {
        let mut client = ControlClient::new(channel(&cluster, &ca, Some((&cert, &key))));
        let error = client
            .submit_run(submit_request(&bundle))
            .await
            .expect_err("a foreign certificate submitted a run");
        assert_ne!(error.code(), tonic::Code::Ok);
        client
            .list_runs(proto::ListRunsRequest {
                stale: false,
                ..Default::default()
            })
            .await
            .expect_err("a foreign certificate listed runs");
    });

    assert_eq!(run_ids(&cluster), vec![run], "the runs changed");
}

#[test]
fn a_connection_without_a_client_certificate_is_refused() {
    let cluster = Cluster::start();
    let (run, bundle) = stored_run(&cluster);
    let ca = cluster.pki.ca();
    runtime().block_on(async {
        let mut anonymous = ControlClient::new(channel(&cluster, &ca, None));
        anonymous
            .submit_run(submit_request(&bundle))
            .await
            .expect_err("a caller without a certificate submitted a run");
        anonymous
            .list_runs(proto::ListRunsRequest {
                stale: false,
                ..Default::default()
            })
            .await
            .expect_err("a caller without a certificate listed runs");
        let mut agent = AgentClient::new(channel(&cluster, &ca, None));
        agent
            .register(register_request("w1"))
            .await
            .expect_err("a caller without a certificate registered a worker");
    });
    assert_eq!(run_ids(&cluster), vec![run], "the runs changed");
    assert!(worker_names(&cluster).is_empty(), "a worker appeared");

    // The very same request with the client's certificate is accepted, so the
    // refusals above came from the missing certificate.
    let second = runtime().block_on(async {
        let identity = (cluster.pki.cert("alice"), cluster.pki.key("alice"));
        let mut client =
            ControlClient::new(channel(&cluster, &ca, Some((&identity.0, &identity.1))));
        client
            .submit_run(submit_request(&bundle))
            .await
            .expect("the client's own submission")
            .into_inner()
            .run_id
    });
    let mut ids = run_ids(&cluster);
    ids.sort_unstable();
    assert_eq!(ids, vec![run, second]);
}

#[test]
fn worker_and_coordinator_certificates_cannot_use_the_control_service() {
    let cluster = Cluster::start();
    cluster.pki.issue("worker", "w1").expect("worker cert");
    let before = run_ids(&cluster);
    assert!(before.is_empty());

    for (name, role) in [("w1", "worker"), ("member-1", "coordinator")] {
        let result = cluster.ferry_as(name, &["runs"]);
        assert!(!result.success(), "{name} listed runs: {result:?}");
        assert!(
            result.stderr.contains("PermissionDenied")
                && result
                    .stderr
                    .contains("this service accepts client certificates only")
                && result
                    .stderr
                    .contains(&format!("presented a {role} certificate for \"{name}\"")),
            "unexpected message for {name}: {result:?}"
        );
    }

    let pipeline = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let result = cluster.ferry_as("w1", &["run", pipeline.to_str().expect("utf-8 path")]);
    assert!(!result.success(), "a worker submitted a run: {result:?}");
    assert!(
        result.stderr.contains("PermissionDenied")
            && result.stderr.contains("accepts client certificates only"),
        "{result:?}"
    );
    let result = cluster.ferry_as("w1", &["cancel", "1"]);
    assert!(
        !result.success() && result.stderr.contains("PermissionDenied"),
        "{result:?}"
    );

    assert!(run_ids(&cluster).is_empty(), "a run was stored");
    // And the code bundle was never uploaded: the blob store is empty.
    assert_eq!(
        count_files(&cluster.path("coordinator-data/blobs")),
        0,
        "a blob was stored"
    );
}

#[test]
fn only_a_worker_certificate_registers_and_only_under_its_own_name() {
    let cluster = Cluster::start();
    cluster.pki.issue("worker", "w1").expect("worker cert");
    let ca = cluster.pki.ca();
    let (alice_cert, alice_key) = (cluster.pki.cert("alice"), cluster.pki.key("alice"));
    let (w1_cert, w1_key) = (cluster.pki.cert("w1"), cluster.pki.key("w1"));

    runtime().block_on(async {
        // A client certificate, under its own name and under a worker's.
        let mut as_client =
            AgentClient::new(channel(&cluster, &ca, Some((&alice_cert, &alice_key))));
        for name in ["alice", "w1"] {
            let status = as_client
                .register(register_request(name))
                .await
                .expect_err("a client certificate registered as a worker");
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("this service accepts worker certificates only")
                    && status
                        .message()
                        .contains("client certificate for \"alice\""),
                "{status:?}"
            );
        }

        // A worker certificate under another worker's name.
        let mut as_w1 = AgentClient::new(channel(&cluster, &ca, Some((&w1_cert, &w1_key))));
        let status = as_w1
            .register(register_request("w2"))
            .await
            .expect_err("w1 registered as w2");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status
                .message()
                .contains("worker certificate \"w1\" cannot act as worker \"w2\""),
            "{status:?}"
        );
        let status = as_w1
            .heartbeat(proto::HeartbeatRequest {
                name: "w2".to_string(),
                session: String::new(),
                running: Vec::new(),
            })
            .await
            .expect_err("w1 heartbeated as w2");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    });
    assert!(worker_names(&cluster).is_empty(), "a worker was registered");

    // The same registration under its own name is accepted: the refusals above
    // came from the identity checks, not from a malformed request.
    runtime().block_on(async {
        let mut as_w1 = AgentClient::new(channel(&cluster, &ca, Some((&w1_cert, &w1_key))));
        as_w1
            .register(register_request("w1"))
            .await
            .expect("w1 registering as itself");
    });
    assert_eq!(worker_names(&cluster), vec!["w1".to_string()]);
}

/// Runs a daemon binary with `--config` and waits (bounded) for it to exit;
/// returns whether it succeeded and its stderr.
fn run_until_exit(binary: &str, config: &Path, log: &Path) -> (bool, String) {
    let mut child = Command::new(bin(binary))
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start daemon");
    let exited = {
        let child = &mut child;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                Duration::from_secs(15),
                &format!("{binary} to exit"),
                || child.try_wait().expect("try_wait"),
            )
        }))
    };
    let status = match exited {
        Ok(status) => status,
        Err(panic) => {
            let _ = child.kill();
            let _ = child.wait();
            std::panic::resume_unwind(panic);
        }
    };
    (
        status.success(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}

#[test]
fn the_coordinator_refuses_to_start_without_its_private_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(&dir.path().join("certs")).expect("CA");
    pki.issue_member(1, &[]).expect("cert");
    let key = pki.key("member-1");
    std::fs::remove_file(&key).expect("remove the key");
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/member-1.pem\"\nkey = \"certs/member-1-key.pem\"\n",
            free_port()
        ),
    )
    .expect("config");

    let (ok, stderr) = run_until_exit("ferry-coordinator", &config, &dir.path().join("log"));
    assert!(!ok, "the coordinator started without its key: {stderr}");
    assert!(
        stderr.contains(&key.display().to_string()),
        "the message does not name {}: {stderr}",
        key.display()
    );
    assert!(
        stderr.contains("private key") && stderr.contains("missing"),
        "{stderr}"
    );
    // It refused before touching its data directory.
    assert!(!dir.path().join("data").exists(), "data directory created");
}

#[test]
fn the_worker_refuses_to_start_without_its_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(&dir.path().join("certs")).expect("CA");
    pki.issue("worker", "w1").expect("cert");
    let cert = pki.cert("w1");
    std::fs::remove_file(&cert).expect("remove the certificate");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"w1\"\ncoordinator = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/w1.pem\"\nkey = \"certs/w1-key.pem\"\n",
            free_port()
        ),
    )
    .expect("config");

    let (ok, stderr) = run_until_exit("ferry-worker", &config, &dir.path().join("log"));
    assert!(!ok, "the worker started without its certificate: {stderr}");
    assert!(
        stderr.contains(&cert.display().to_string()),
        "the message does not name {}: {stderr}",
        cert.display()
    );
    assert!(
        stderr.contains("certificate") && stderr.contains("(cert)") && stderr.contains("missing"),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "data directory created");
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
