//! Certificate revocation and short-lived certificates: an administrator revokes
//! a client certificate (by serial, or every certificate of a name) and every
//! member refuses it from its next request on, also over a connection that was
//! open before, and refuses a new connection in its TLS handshake; an open
//! `ferry logs --follow` of the revoked user ends, naming the revocation; a
//! non-administrator cannot revoke; `--valid-for` sets notAfter.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, control_client::ControlClient};
use ferry_tests::{CLIENT, Cluster, Pki, bin, wait_for, write_pipeline};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// Runs the real `ferry certs issue` for a client `name` with `extra` flags and
/// returns its standard output.
fn issue(pki: &Pki, name: &str, extra: &[&str]) -> String {
    let output = Command::new(bin("ferry"))
        .args(["certs", "issue", "--dir"])
        .arg(&pki.dir)
        .args(["--role", "client", "--name", name])
        .args(extra)
        .output()
        .expect("run ferry certs issue");
    assert!(
        output.status.success(),
        "ferry certs issue failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The serial number `ferry certs issue` printed ("serial <hex>, valid until ...").
fn printed_serial(stdout: &str) -> String {
    let after = stdout
        .split("serial ")
        .nth(1)
        .unwrap_or_else(|| panic!("no serial printed: {stdout}"));
    after
        .split(|c: char| !c.is_ascii_hexdigit())
        .next()
        .expect("serial digits")
        .to_string()
}

/// A control client presenting `name`'s certificate to one member, connected
/// now (so that later calls travel over this same connection).
async fn connected_client(cluster: &Cluster, address: &str, name: &str) -> ControlClient<Channel> {
    let tls = TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert(name),
        key: cluster.pki.key(name),
    }
    .load()
    .expect("TLS files");
    let channel = ferry_common::channel::endpoint(address, &tls)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    ControlClient::new(channel)
}

/// A TLS connection to `address` presenting `name`'s certificate, as a gRPC
/// client would open one: `Ok` once the server has accepted it and spoken
/// (HTTP/2 servers speak first), the TLS error otherwise. (In TLS 1.3 the
/// server checks the client's certificate after the client has sent its last
/// handshake message, so the server's verdict is the first thing it sends.)
async fn tls_handshake(cluster: &Cluster, address: &str, name: &str) -> Result<(), String> {
    let tls = TlsFiles::in_dir(&cluster.pki.dir, name)
        .load()
        .expect("TLS files");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(ca.expect("CA PEM")).expect("CA certificate");
    }
    let chain = vec![CertificateDer::from_pem_slice(&tls.cert_pem).expect("certificate")];
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).expect("key");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client TLS config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = connector
        .connect(server_name, socket)
        .await
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut first)).await {
        Ok(Ok(0)) => Err("the server closed the connection without a word".to_string()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("the server said nothing within 10 s".to_string()),
    }
}

async fn list_runs(client: &mut ControlClient<Channel>) -> Result<(), tonic::Status> {
    let request = proto::ListRunsRequest {
        stale: true,
        ..Default::default()
    };
    tokio::time::timeout(Duration::from_secs(10), client.list_runs(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer in 10 s"))?
        .map(|_| ())
}

/// Waits (bounded) until `client`'s next call is refused as revoked.
fn wait_refused(rt: &tokio::runtime::Runtime, client: &mut ControlClient<Channel>, what: &str) {
    let status = wait_for(Duration::from_secs(20), what, || {
        rt.block_on(list_runs(client)).err()
    });
    assert_eq!(
        status.code(),
        tonic::Code::Unauthenticated,
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains("revoked"),
        "{what}: the refusal does not say the certificate was revoked: {status:?}"
    );
}

fn revoked_list(cluster: &Cluster) -> serde_json::Value {
    let listed = cluster.ferry(&["certs", "revoked", "--output", "json"]);
    assert!(listed.success(), "{listed:?}");
    listed.json()
}

#[test]
fn a_revoked_certificate_is_refused_by_every_member_even_on_an_open_connection() {
    let rt = runtime();
    let cluster = Cluster::start_replicated(3, &format!("admins = [\"{CLIENT}\"]\n"));
    cluster.leader(Duration::from_secs(20));
    let serial = printed_serial(&issue(&cluster.pki, "user-b", &[]));
    assert!(serial.len() >= 16, "serial {serial}");
    issue(&cluster.pki, "user-c", &[]);

    // user-b and user-c work on every member, over connections kept open.
    let addresses: Vec<String> = cluster.coordinators.iter().map(|c| c.address()).collect();
    let mut user_b: Vec<ControlClient<Channel>> = Vec::new();
    let mut user_c: Vec<ControlClient<Channel>> = Vec::new();
    for address in &addresses {
        let mut b = rt.block_on(connected_client(&cluster, address, "user-b"));
        rt.block_on(list_runs(&mut b))
            .unwrap_or_else(|e| panic!("user-b at {address} before revocation: {e:?}"));
        user_b.push(b);
        let mut c = rt.block_on(connected_client(&cluster, address, "user-c"));
        rt.block_on(list_runs(&mut c))
            .unwrap_or_else(|e| panic!("user-c at {address} before revocation: {e:?}"));
        user_c.push(c);
    }

    // A non-administrator cannot revoke, and nothing changes.
    let refused = rt
        .block_on(
            user_b[0].revoke_certificate(proto::RevokeCertificateRequest {
                serial: String::new(),
                name: CLIENT.to_string(),
            }),
        )
        .expect_err("user-b revoked a certificate");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("admin role"), "{refused:?}");
    let by_cli = cluster.ferry_as("user-b", &["certs", "revoke", CLIENT]);
    assert!(!by_cli.success(), "{by_cli:?}");
    assert_eq!(revoked_list(&cluster), serde_json::json!([]));
    assert!(cluster.ferry(&["runs"]).success());

    // The administrator revokes user-b's certificate by its serial number.
    let revoked = cluster.ferry(&["certs", "revoke", &serial]);
    assert!(revoked.success(), "{revoked:?}");
    assert!(revoked.stdout.contains(&serial), "{revoked:?}");
    let list = revoked_list(&cluster);
    assert_eq!(list[0]["kind"], "serial", "{list}");
    assert_eq!(list[0]["value"], serial.as_str(), "{list}");
    assert_eq!(list[0]["revoked_by"], CLIENT, "{list}");

    // Every member refuses it over the connection opened before, and over a new one.
    for (index, address) in addresses.iter().enumerate() {
        wait_refused(
            &rt,
            &mut user_b[index],
            &format!("user-b's open connection to {address} refused"),
        );
        let refused = rt
            .block_on(tls_handshake(&cluster, address, "user-b"))
            .expect_err("a new TLS connection with the revoked certificate");
        assert!(
            refused.contains("CertificateRevoked"),
            "the handshake should fail with the certificate_revoked alert: {refused}"
        );
        rt.block_on(tls_handshake(&cluster, address, "user-c"))
            .unwrap_or_else(|e| panic!("user-c's new connection to {address}: {e}"));
        // Another user's certificate is not affected.
        rt.block_on(list_runs(&mut user_c[index]))
            .unwrap_or_else(|e| panic!("user-c at {address} after user-b's revocation: {e:?}"));
    }
    let cli = cluster.ferry_as("user-b", &["runs"]);
    assert!(
        !cli.success() && cli.stderr.contains("revoked") && cli.stderr.contains("Unauthenticated"),
        "the CLI with a revoked certificate: {cli:?}"
    );

    // Revoking by name revokes what was issued for it until now, on every member;
    // a replacement issued afterwards works.
    let by_name = cluster.ferry(&["certs", "revoke", "user-c"]);
    assert!(by_name.success(), "{by_name:?}");
    for (index, address) in addresses.iter().enumerate() {
        wait_refused(
            &rt,
            &mut user_c[index],
            &format!("user-c's open connection to {address} refused"),
        );
    }
    // Certificate times have whole seconds, and one issued in the second of the
    // revocation counts as revoked: the replacement is issued in a later second.
    std::thread::sleep(Duration::from_millis(1100));
    issue(&cluster.pki, "user-c", &[]);
    for address in &addresses {
        let mut replacement = rt.block_on(connected_client(&cluster, address, "user-c"));
        rt.block_on(list_runs(&mut replacement))
            .unwrap_or_else(|e| panic!("user-c's new certificate at {address}: {e:?}"));
    }
    assert_eq!(revoked_list(&cluster).as_array().map(Vec::len), Some(2));
}

#[test]
fn an_open_logs_follow_of_a_revoked_user_ends_naming_the_revocation() {
    let mut cluster =
        Cluster::start_replicated(1, &format!("admins = [\"{CLIENT}\", \"watcher\"]\n"));
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    issue(&cluster.pki, "watcher", &[]);
    let pipeline = write_pipeline(
        &cluster.path("chatty"),
        r#"name: chatty
steps:
  - name: chatty
    shell: |
      n=0
      while [ $n -lt 300 ]; do echo line-$n; sleep 0.2; n=$((n+1)); done
"#,
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    cluster.wait_step(run, "chatty", "running", Duration::from_secs(30));

    let out = cluster.path("follow.out");
    let mut follower = Command::new(bin("ferry"))
        .args(["logs", &run.to_string(), "--follow"])
        .env("HOME", cluster.root.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("FERRY_CONFIG")
        .env("FERRY_COORDINATOR", cluster.addresses())
        .env("FERRY_CA", cluster.pki.ca())
        .env("FERRY_CERT", cluster.pki.cert("watcher"))
        .env("FERRY_KEY", cluster.pki.key("watcher"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry logs --follow");
    wait_for(Duration::from_secs(30), "lines to be followed", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("line-")
            .then_some(())
    });
    assert!(
        follower.try_wait().expect("try_wait").is_none(),
        "logs --follow ended while the step still ran"
    );

    let revoked = cluster.ferry(&["certs", "revoke", "watcher"]);
    assert!(revoked.success(), "{revoked:?}");
    let exit = wait_for(
        Duration::from_secs(15),
        "the revoked user's logs --follow to end",
        || follower.try_wait().expect("try_wait"),
    );
    let output = follower.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!exit.success(), "logs --follow ended well: {stderr}");
    assert!(
        stderr.contains("revoked"),
        "logs --follow should end naming the revocation: {stderr}"
    );
    // The step itself runs on: only the revoked user's stream was cut.
    assert_eq!(
        ferry_tests::step_of(&cluster.status(run), "chatty")["state"],
        "running"
    );
    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancelled.success(), "{cancelled:?}");
}

#[test]
fn a_revoked_workers_open_assignment_stream_ends() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "cpus = 1\nmemory = \"1Gi\"");
    let revoked = cluster.ferry(&["certs", "revoke", "w1"]);
    assert!(revoked.success(), "{revoked:?}");
    // The coordinator ends the stream the worker holds open, and refuses the
    // worker's next calls over the connection it keeps.
    wait_for(
        Duration::from_secs(15),
        "the coordinator to end w1's assignment stream",
        || {
            cluster
                .member_log(1)
                .contains("ended an open stream: its certificate was revoked")
                .then_some(())
        },
    );
    wait_for(
        Duration::from_secs(15),
        "the worker to say its certificate was revoked",
        || {
            cluster
                .worker_log("w1")
                .contains("the client certificate was revoked")
                .then_some(())
        },
    );
}

#[test]
fn a_certificate_issued_for_an_hour_expires_in_an_hour() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(&dir.path().join("certs")).expect("CA");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let not_after = |name: &str| {
        let pem = std::fs::read(pki.cert(name)).expect("certificate");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
        let cert = pem.parse_x509().expect("X.509");
        cert.validity().not_after.timestamp()
    };

    let printed = issue(&pki, "short", &["--valid-for", "1h"]);
    assert!(printed.contains("serial "), "{printed}");
    let left = not_after("short") - now;
    assert!((3_500..=3_700).contains(&left), "notAfter {left} s ahead");

    // A client's default is 90 days.
    issue(&pki, "default", &[]);
    let left = not_after("default") - now;
    let days = 90 * 24 * 3600;
    assert!(
        (days - 100..=days + 100).contains(&left),
        "notAfter {left} s ahead"
    );

    // Nonsense and too short are refused, and write nothing.
    for bad in ["10s", "soon", "0d"] {
        let output = Command::new(bin("ferry"))
            .args(["certs", "issue", "--dir"])
            .arg(&pki.dir)
            .args(["--role", "client", "--name", "bad", "--valid-for", bad])
            .output()
            .expect("run ferry");
        assert!(!output.status.success(), "--valid-for {bad} accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("invalid validity"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!pki.cert("bad").exists());
    }
}
