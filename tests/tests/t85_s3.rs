//! Blobs in an S3 bucket (`[blobs] backend = "s3"`), against a real
//! S3-compatible server (s3s-fs, see `ferry_tests::s3`): on a one-member and
//! a three-member cluster a pipeline whose second step reads the first's
//! output succeeds; `ferry artifacts get` verifies what it downloads; the
//! bundle and the outputs are objects of the bucket under the configured
//! prefix, and no coordinator keeps a local copy; an object damaged in the
//! bucket is refused on read with a message naming the mismatch; an upload
//! whose bytes do not match the digest it claims leaves no object under that
//! digest, whether it went in one request or in parts (the three-member
//! cluster uses 5 MiB parts, so its 12 MiB output goes up in three).
//!
//! The workers here move their bytes straight to and from the bucket with
//! presigned URLs (`t86_s3_direct` checks that in detail); the clients'
//! bundle uploads and `ferry artifacts get` go through the coordinators.

use std::path::Path;
use std::time::Duration;

use ferry_common::proto::{self, control_client::ControlClient};
use ferry_tests::s3::S3Server;
use ferry_tests::{Cluster, step_of, write_pipeline};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const PIPELINE: &str = r#"name: s3blobs
steps:
  - name: make
    shell: "head -c 12582913 /dev/urandom > weights.bin && echo hello > note.txt"
    outputs: [weights.bin, note.txt]
  - name: use
    inputs: {w: make/weights.bin}
    shell: "wc -c < \"$FERRY_INPUT_W\" > size.txt"
    outputs: [size.txt]
"#;

/// Files under a coordinator's local blob directory (none expected).
fn local_blob_files(cluster: &Cluster, id: u64) -> Vec<String> {
    let dir = cluster.path(&format!("coordinator-{id}-data/blobs"));
    let mut found = Vec::new();
    let mut pending = vec![dir];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// `ferry artifacts get RUN STEP NAME` into the cluster's folder.
fn get(cluster: &Cluster, run: u64, step: &str, name: &str) -> ferry_tests::CliResult {
    let target = cluster.path(&format!("got-{run}-{step}-{name}"));
    let _ = std::fs::remove_file(&target);
    cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        step,
        name,
        "-o",
        target.to_str().expect("utf-8 path"),
    ])
}

/// Runs the pipeline on `cluster` and checks where its blobs went; returns
/// the keys of its artifacts and bundle.
fn pipeline_stores_its_blobs_in_the_bucket(
    cluster: &mut Cluster,
    server: &S3Server,
    prefix: &str,
    members: u64,
) -> Vec<String> {
    cluster.add_worker("w1", "");
    cluster.wait_worker_connected("w1");
    let pipeline = write_pipeline(&cluster.path("s3blobs"), PIPELINE, &[]);
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(step_of(&status, "use")["state"], "succeeded");

    let listed = cluster.ferry(&["artifacts", &run.to_string(), "--output", "json"]);
    assert!(listed.success(), "{listed:?}");
    let listed = listed.json();
    let listed = listed.as_array().expect("artifact list");
    assert_eq!(listed.len(), 3, "{listed:#?}");
    let keys = server.keys(prefix);
    let mut run_keys = Vec::new();
    for artifact in listed {
        let (step, name) = (
            artifact["step"].as_str().unwrap(),
            artifact["name"].as_str().unwrap(),
        );
        let digest = artifact["digest"].as_str().expect("digest");
        let got = get(cluster, run, step, name);
        assert!(got.success(), "{got:?}");
        assert!(got.stdout.contains("verified"), "{got:?}");
        let bytes = std::fs::read(cluster.path(&format!("got-{run}-{step}-{name}"))).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), digest);
        let key = format!("{prefix}/blobs/{}/{digest}", &digest[..2]);
        assert!(keys.contains(&key), "{key} in the bucket: {keys:#?}");
        run_keys.push(key.clone());
        assert_eq!(
            std::fs::read(server.object_file(&key)).expect("the object's file"),
            bytes,
            "the bucket holds {step}/{name} as it is"
        );
    }
    let size = get(cluster, run, "use", "size.txt");
    assert!(size.success(), "{size:?}");
    let text = std::fs::read_to_string(cluster.path(&format!("got-{run}-use-size.txt"))).unwrap();
    assert_eq!(
        text.trim(),
        "12582913",
        "the second step read the first's output"
    );
    let bundle = status["bundle"].as_str().expect("the run's bundle digest");
    let bundle_key = format!("{prefix}/blobs/{}/{bundle}", &bundle[..2]);
    assert!(
        keys.contains(&bundle_key),
        "the bundle is in the bucket: {keys:#?}"
    );
    // The worker's log is a blob too: every object is one of the run's blobs,
    // and nothing else is in the bucket under the prefix.
    assert!(
        keys.iter()
            .all(|key| key.starts_with(&format!("{prefix}/blobs/"))),
        "{keys:#?}"
    );
    for id in 1..=members {
        assert_eq!(
            local_blob_files(cluster, id),
            Vec::<String>::new(),
            "coordinator {id} kept no local copy"
        );
    }

    // Damage an object in the bucket: a read of it fails, naming why.
    let weights = listed
        .iter()
        .find(|a| a["name"] == "weights.bin")
        .expect("weights.bin");
    let digest = weights["digest"].as_str().unwrap();
    let file = server.object_file(&format!("{prefix}/blobs/{}/{digest}", &digest[..2]));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[6_000_000] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let got = get(cluster, run, "make", "weights.bin");
    assert!(
        !got.success(),
        "a damaged object must not download: {got:?}"
    );
    let said = format!("{}{}", got.stdout, got.stderr);
    assert!(
        said.contains("does not match its digest") || said.contains("corrupt"),
        "the refusal names the mismatch: {said}"
    );

    // Bundles whose bytes are not what their digest says: refused, nothing
    // stored under the digest (small: one request; large: in parts).
    let runtime = runtime();
    for size in [1_000usize, 11 << 20] {
        let bundle = bundle_of(size);
        let claimed = blake3::hash(b"something else entirely")
            .to_hex()
            .to_string();
        let refused =
            runtime.block_on(async { upload(&mut control(cluster), &bundle, &claimed).await });
        let error = refused.expect_err("a wrong digest is refused");
        assert!(error.message().contains("does not match"), "{error:?}");
        let key = format!("{prefix}/blobs/{}/{claimed}", &claimed[..2]);
        assert!(
            !server.object_file(&key).exists(),
            "nothing stored under the claimed digest ({size} bytes)"
        );
        // The same bytes under their own digest are stored.
        let digest = blake3::hash(&bundle).to_hex().to_string();
        let stored =
            runtime.block_on(async { upload(&mut control(cluster), &bundle, &digest).await });
        assert_eq!(stored.expect("a true digest is stored").digest, digest);
        let key = format!("{prefix}/blobs/{}/{digest}", &digest[..2]);
        assert_eq!(std::fs::read(server.object_file(&key)).unwrap(), bundle);
    }
    run_keys
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// The control service as the cluster's client user.
fn control(cluster: &Cluster) -> ControlClient<Channel> {
    let read = |path: &Path| std::fs::read(path).expect("TLS file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cluster.pki.ca())))
        .identity(Identity::from_pem(
            read(&cluster.pki.cert("alice")),
            read(&cluster.pki.key("alice")),
        ))
        .domain_name("127.0.0.1");
    let channel = Endpoint::from_shared(format!("https://{}", cluster.address()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect_lazy();
    ControlClient::new(channel)
}

/// A code bundle (tar.gz) of about `size` bytes (random content does not
/// compress).
fn bundle_of(size: usize) -> Vec<u8> {
    let mut content = vec![0u8; size];
    let mut state = size as u64 | 1;
    for byte in content.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, "data.bin", content.as_slice())
        .expect("tar entry");
    archive.into_inner().expect("tar").finish().expect("gzip")
}

/// Uploads `bytes` as a bundle claiming `digest`.
async fn upload(
    client: &mut ControlClient<Channel>,
    bytes: &[u8],
    digest: &str,
) -> Result<proto::BlobRef, tonic::Status> {
    let size = bytes.len() as u64;
    let chunks: Vec<proto::Chunk> = std::iter::once(Vec::new())
        .chain(bytes.chunks(256 << 10).map(<[u8]>::to_vec))
        .map(|data| proto::Chunk {
            digest: digest.to_string(),
            size,
            data: data.into(),
            zeros: 0,
            digest_last: false,
        })
        .collect();
    client
        .upload_bundle(futures::stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

#[test]
fn a_one_member_cluster_keeps_blobs_in_the_bucket() {
    let Some(server) = S3Server::start() else {
        return;
    };
    // Credentials from a file, 0600.
    let creds = tempfile::tempdir().unwrap();
    let path = creds.path().join("s3.toml");
    server.write_credentials_file(&path);
    let mut cluster = Cluster::start_replicated(1, &server.blobs_toml("one/member", Some(&path)));
    let _ = pipeline_stores_its_blobs_in_the_bucket(&mut cluster, &server, "one/member", 1);
}

#[test]
fn a_three_member_cluster_shares_the_bucket() {
    let Some(server) = S3Server::start() else {
        return;
    };
    // Credentials from the coordinators' environment.
    let blobs = format!(
        "{}part_bytes = 5242880\n[retention]\ngrace_ms = 0\n",
        server.blobs_toml("three", None)
    );
    let mut cluster = Cluster::start_replicated_with_env(3, &blobs, &S3Server::environment());
    let run_keys = pipeline_stores_its_blobs_in_the_bucket(&mut cluster, &server, "three", 3);
    // A bundle uploaded but never submitted (a client that stopped between
    // the two calls) is in the bucket, and nothing refers to it.
    let before = server.keys("three/blobs").len();
    let orphan = ferry_tests::write_pipeline(
        &cluster.path("orphan"),
        "name: orphan\nsteps:\n  - name: a\n    shell: echo hi\n",
        &[("data.txt", "orphan")],
    );
    let packed = ferry_common::bundle::pack_dir(orphan.parent().unwrap()).unwrap();
    ferry_tests::uploads::runtime()
        .block_on(async {
            let mut client = ferry_tests::uploads::control(&cluster);
            ferry_tests::uploads::upload_bundle(&mut client, packed.bytes).await
        })
        .expect("the bundle is stored");
    assert_eq!(
        server.keys("three/blobs").len(),
        before + 1,
        "the orphan bundle is stored"
    );
    // gc deletes the collected run's blobs and the orphan from the bucket
    // (the leader does).
    let gc = cluster.ferry(&["gc", "--keep-last", "0"]);
    assert!(gc.success(), "{gc:?}");
    assert!(gc.stdout.contains("collected 1 run"), "{}", gc.stdout);
    ferry_tests::wait_for(
        Duration::from_secs(30),
        "the bucket to hold no blob",
        || server.keys("three/blobs").is_empty().then_some(()),
    );
    ferry_tests::wait_for(
        Duration::from_secs(30),
        "the collected run's blobs to leave the bucket",
        || {
            run_keys
                .iter()
                .all(|key| !server.object_file(key).exists())
                .then_some(())
        },
    );
}
