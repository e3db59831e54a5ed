//! Workers move blob bytes straight to and from the bucket (`[blobs] backend =
//! "s3"`, against s3s-fs), with presigned URLs the leader issues per blob; the
//! coordinators carry only digests.
//!
//! One cluster, one worker started without any S3 credential (no credential
//! variable in its environment, neither key in it or its configuration): a pipeline
//! whose first step writes a 24 MiB output (five 5 MiB parts) and whose
//! second reads it and writes a copy succeeds, the copy's digest equals the
//! original's, and the coordinator's own reads and writes over the whole run
//! stay far below one artifact's size (through the coordinator the outputs
//! and the input would have passed it several times). Then, as that worker
//! would: a URL works until it expires and s3s-fs refuses it after
//! ("Request has expired"); URLs for a blob no attempt of the worker needs,
//! or an upload for an attempt it does not hold, are refused; a direct upload
//! whose object has another size than announced is refused and the object
//! deleted. A worker whose URLs expire before it uses them (a debug-build
//! fault point makes it wait each transfer's first URL out) asks for new ones
//! and its run succeeds. Last, an object damaged in the bucket is detected by
//! the worker that reads it: the attempt fails naming the digest.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, agent_client::AgentClient};
use ferry_tests::s3::S3Server;
use ferry_tests::{Cluster, step_of, wait_for, write_pipeline};
use tonic::transport::Channel;

const SIZE: u64 = 24 << 20;

const PIPELINE: &str = r#"name: direct
steps:
  - name: make
    shell: "head -c 25165824 /dev/urandom > weights.bin && echo hello > note.txt"
    outputs: [weights.bin, note.txt]
  - name: use
    inputs: {w: make/weights.bin}
    shell: "cat \"$FERRY_INPUT_W\" > copy.bin"
    outputs: [copy.bin]
"#;

/// Where AWS SDKs and `object_store` look for credentials.
const CREDENTIAL_VARIABLES: [&str; 8] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
];

/// Outputs of both kinds (one request, parts), read back by the next step.
const STALE: &str = r#"name: stale
steps:
  - name: give
    shell: "head -c 6291457 /dev/urandom > parts.bin && echo small > small.txt"
    outputs: [parts.bin, small.txt]
  - name: take
    inputs: {p: give/parts.bin}
    shell: "cat \"$FERRY_INPUT_P\" > back.bin"
    outputs: [back.bin]
"#;

const HOLD: &str = "name: hold\nsteps:\n  - name: hold\n    command: [sleep, \"600\"]\n";

/// Bytes a process has read and written through system calls (sockets and
/// files alike): `rchar + wchar` of /proc/PID/io.
fn io_bytes(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| *key == "rchar" || *key == "wchar")
        .map(|(_, value)| value.trim().parse::<u64>().expect("a number"))
        .sum()
}

/// The names of a process's environment variables.
fn environment_names(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("/proc/PID/environ");
    raw.split(|byte| *byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.split_once('=').map(|(name, _)| name.to_string()))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// The agent service as worker `name`.
fn agent_as(cluster: &Cluster, name: &str) -> AgentClient<Channel> {
    let tls = TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert(name),
        key: cluster.pki.key(name),
    }
    .load()
    .expect("TLS files");
    AgentClient::new(
        ferry_common::channel::endpoint(&cluster.address(), &tls)
            .expect("endpoint")
            .connect_lazy(),
    )
}

fn artifacts(cluster: &Cluster, run: u64) -> BTreeMap<String, String> {
    let listed = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
    assert!(listed.success(), "{listed:?}");
    listed
        .json()
        .as_array()
        .expect("artifact list")
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["step"].as_str().unwrap(),
                    a["name"].as_str().unwrap()
                ),
                a["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn key_of(prefix: &str, digest: &str) -> String {
    format!("{prefix}/blobs/{}/{digest}", &digest[..2])
}

#[test]
fn workers_move_blobs_straight_to_and_from_the_bucket() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let prefix = "direct";
    let creds = tempfile::tempdir().unwrap();
    let path = creds.path().join("s3.toml");
    server.write_credentials_file(&path);
    let blobs = format!(
        "{}part_bytes = 5242880\npresign_expiry_ms = 2000\n",
        server.blobs_toml(prefix, Some(&path))
    );
    let mut cluster = Cluster::start_replicated(1, &blobs);
    // No worker cache: every read of a blob goes to the bucket (the damaged
    // object below would otherwise be served from the worker's copy).
    cluster.add_worker_with_env(
        "w1",
        "[cache]\nmax_bytes = 0\n",
        &[
            ("RUST_LOG", "info,ferry_worker=debug"),
            ("FERRY_FAULTS", "worker.stale-presigned-url=return"),
        ],
    );
    // No credential reaches the worker: no variable an S3 client reads them
    // from, and neither key anywhere in its environment or configuration.
    let worker_pid = cluster.workers["w1"].pid();
    let names = environment_names(worker_pid);
    assert!(
        names
            .iter()
            .all(|name| !CREDENTIAL_VARIABLES.contains(&name.as_str())),
        "the worker holds no S3 credential: {names:?}"
    );
    let environ = std::fs::read(format!("/proc/{worker_pid}/environ")).unwrap();
    let worker_config = std::fs::read_to_string(cluster.path("w1.toml")).unwrap();
    for key in [ferry_tests::s3::ACCESS_KEY, ferry_tests::s3::SECRET_KEY] {
        assert!(!String::from_utf8_lossy(&environ).contains(key));
        assert!(!worker_config.contains(key), "{worker_config}");
    }

    // The run: coordinator IO measured around it.
    let coordinator_pid = cluster.coordinators[0]
        .daemon
        .as_ref()
        .expect("the coordinator")
        .pid();
    let before = io_bytes(coordinator_pid);
    let pipeline = write_pipeline(&cluster.path("direct"), PIPELINE, &[]);
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(180));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let carried = io_bytes(coordinator_pid) - before;
    eprintln!("the coordinator read and wrote {carried} bytes during the run");
    assert!(
        carried < SIZE / 4,
        "the coordinator read and wrote {carried} bytes during a run whose {SIZE}-byte \
         output went up and back down: the bytes went through it"
    );
    let log = cluster.worker_log("w1");
    assert!(
        log.contains("blob uploaded directly to the bucket in parts")
            && log.contains("blob downloaded directly from the bucket"),
        "the worker says it moved the bytes itself:\n{log}"
    );

    // What the bucket holds is what the steps wrote and read.
    let digests = artifacts(&cluster, run);
    let weights = digests["make/weights.bin"].clone();
    assert_eq!(
        digests["use/copy.bin"], weights,
        "the second step read exactly the first one's output"
    );
    for digest in digests.values() {
        let bytes = std::fs::read(server.object_file(&key_of(prefix, digest))).expect("object");
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), *digest);
    }
    assert_eq!(
        std::fs::metadata(server.object_file(&key_of(prefix, &weights)))
            .unwrap()
            .len(),
        SIZE
    );

    let runtime = runtime();
    let _inside = runtime.enter();
    let mut agent = agent_as(&cluster, "w1");
    let http = reqwest::Client::new();

    // Presign expiry: w1 holds an attempt of `hold`, whose bundle it may read.
    let hold = cluster.submit(&write_pipeline(&cluster.path("hold"), HOLD, &[]), &[]);
    cluster.wait_step(hold, "hold", "running", Duration::from_secs(60));
    let hold_status = cluster.status(hold);
    let bundle = hold_status["bundle"].as_str().expect("bundle").to_string();
    let attempt = proto::AttemptRef {
        run_id: hold,
        step: "hold".into(),
        attempt: step_of(&hold_status, "hold")["attempt"]
            .as_u64()
            .expect("the attempt's number") as u32,
    };
    let urls = runtime
        .block_on(agent.blob_urls(proto::BlobUrlsRequest {
            digests: vec![bundle.clone()],
        }))
        .expect("URLs for the attempt's bundle")
        .into_inner();
    assert!(urls.direct);
    assert_eq!(urls.expires_in_ms, 2000);
    let url = urls.urls[0].url.clone();
    assert!(
        !url.contains(ferry_tests::s3::SECRET_KEY),
        "the URL carries a signature, never the secret"
    );
    let refused_after_expiry = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let response = http.get(&url).send().await.expect("s3s-fs answers");
            if response.status().is_success() {
                let body = response.bytes().await.expect("body");
                assert_eq!(blake3::hash(&body).to_hex().to_string(), bundle);
            } else {
                return (response.status(), response.text().await.unwrap_or_default());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the URL never expired"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert_eq!(refused_after_expiry.0, reqwest::StatusCode::FORBIDDEN);
    assert!(
        refused_after_expiry.1.contains("expired"),
        "{}",
        refused_after_expiry.1
    );

    // Not a blob any attempt of w1 needs: refused.
    let foreign = runtime
        .block_on(agent.blob_urls(proto::BlobUrlsRequest {
            digests: vec![weights.clone()],
        }))
        .expect_err("a blob w1's attempts do not need");
    assert_eq!(foreign.code(), tonic::Code::PermissionDenied, "{foreign:?}");

    // Uploads only for an attempt w1 holds; an object of another size than
    // announced is refused and removed.
    let content = b"twelve bytes".to_vec();
    let digest = blake3::hash(&content).to_hex().to_string();
    let not_held = proto::AttemptRef {
        run_id: run,
        ..attempt.clone()
    };
    let refused = runtime
        .block_on(agent.prepare_upload(proto::PrepareUploadRequest {
            attempt: Some(not_held),
            digest: digest.clone(),
            size: content.len() as u64,
            ..Default::default()
        }))
        .expect_err("an attempt w1 does not hold");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let prepared = runtime
        .block_on(agent.prepare_upload(proto::PrepareUploadRequest {
            attempt: Some(attempt.clone()),
            digest: digest.clone(),
            size: content.len() as u64,
            ..Default::default()
        }))
        .expect("upload URLs")
        .into_inner();
    assert!(prepared.direct && !prepared.stored && !prepared.url.is_empty());
    let put = runtime
        .block_on(http.put(&prepared.url).body(b"eleven byte".to_vec()).send())
        .expect("s3s-fs answers");
    assert!(put.status().is_success(), "{put:?}");
    let wrong = runtime
        .block_on(agent.complete_upload(proto::CompleteUploadRequest {
            attempt: Some(attempt.clone()),
            digest: digest.clone(),
            size: content.len() as u64,
            ..Default::default()
        }))
        .expect_err("an object of the wrong size");
    assert!(wrong.message().contains("announced 12 bytes"), "{wrong:?}");
    assert!(!server.object_file(&key_of(prefix, &digest)).exists());
    let cancel = cluster.ferry(&["cancel", &hold.to_string()]);
    assert!(cancel.success(), "{cancel:?}");

    // A worker whose URLs expire before it uses them (the fault point makes
    // it wait out the first URL of each transfer): the bucket refuses them,
    // it asks for new ones, and the run succeeds with the same bytes.
    cluster.signal_worker("w1", nix::sys::signal::Signal::SIGUSR1);
    let stale = cluster.submit(&write_pipeline(&cluster.path("stale"), STALE, &[]), &[]);
    let status = cluster.wait_run(stale, Duration::from_secs(180));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let stale_digests = artifacts(&cluster, stale);
    assert_eq!(
        stale_digests["take/back.bin"],
        stale_digests["give/parts.bin"]
    );
    assert_eq!(stale_digests["give/parts.bin"].len(), 64);
    let renewed = cluster
        .worker_log("w1")
        .matches("asking the leader for a new URL")
        .count();
    // The bundle (once: the worker keeps it), parts.bin (in parts) and
    // small.txt (in one request) up, parts.bin down.
    assert!(
        renewed >= 4,
        "expired URLs were asked for again ({renewed} times):\n{}",
        cluster.worker_log("w1")
    );
    assert!(
        !cluster.worker_log("w1").contains("X-Amz-Signature"),
        "no presigned URL (a bearer token) is logged"
    );
    for digest in stale_digests.values() {
        let bytes = std::fs::read(server.object_file(&key_of(prefix, digest))).expect("object");
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), *digest);
    }

    // A damaged object: the worker that reads it refuses it, naming the digest.
    let file = server.object_file(&key_of(prefix, &weights));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[7_000_000] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let rerun = cluster.ferry(&["rerun", &run.to_string(), "--from", "use"]);
    assert!(rerun.success(), "{rerun:?}");
    let rerun = ferry_tests::parse_run_id(&rerun.stdout).expect("a run id");
    let status = cluster.wait_run(rerun, Duration::from_secs(120));
    assert_eq!(status["state"], "failed", "{status:#}");
    let reason = step_of(&status, "use")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&weights) && reason.contains("corrupted"),
        "the failure names the damaged blob: {reason}\n{status:#}"
    );
    wait_for(Duration::from_secs(10), "the hold run to end", || {
        (cluster.status(hold)["state"] != "running").then_some(())
    });
}
