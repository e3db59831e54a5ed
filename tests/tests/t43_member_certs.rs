//! Coordinator certificates speak for one member each (`member-<id>`): a
//! three-member cluster works with one certificate per member; the peer service
//! refuses Raft messages that claim another member than the certificate's, and
//! every other peer call from a coordinator certificate of a non-member; a
//! coordinator refuses to start with another member's certificate.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, peer_client::PeerClient};
use ferry_tests::{Cluster, bin, free_port, wait_for};
use tonic::transport::Channel;

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// A peer client presenting the certificate issued to `name`, to `address`.
async fn peer_as(cluster: &Cluster, address: &str, name: &str) -> PeerClient<Channel> {
    let tls = TlsFiles::in_dir(&cluster.pki.dir, name)
        .load()
        .expect("TLS files");
    let channel = ferry_common::channel::endpoint(address, &tls)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    PeerClient::new(channel)
}

fn assert_refused(status: &tonic::Status, certificate: &str, why: &str) {
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let message = status.message();
    assert!(
        message.contains(&format!("certificate \"{certificate}\"")) && message.contains(why),
        "the refusal should name {certificate} and say {why:?}: {message}"
    );
}

#[test]
fn the_peer_service_holds_a_coordinator_certificate_to_its_member_id() {
    let rt = runtime();
    let cluster = Cluster::start_replicated(3, "");
    let leader = cluster.leader(Duration::from_secs(20));
    // Each member presents its own certificate, and the cluster works.
    for id in 1..=3u64 {
        assert!(cluster.pki.cert(&format!("member-{id}")).exists());
    }
    assert!(cluster.ferry(&["runs"]).success());
    // Every member answers the others' questions (`describe_self` on the peer
    // service, with its own certificate).
    wait_for(Duration::from_secs(20), "every member reachable", || {
        let status = cluster.cluster_status()?;
        let members = status["members"].as_array()?.clone();
        (members.len() == 3 && members.iter().all(|m| m["reachable"] == true)).then_some(())
    });

    let leader_address = cluster.coordinators[(leader - 1) as usize].address();
    // Member 2's certificate may not carry Raft messages as member 3.
    let target = cluster
        .coordinators
        .iter()
        .find(|c| c.id != 2)
        .expect("a member other than 2")
        .address();
    let mut as_member_2 = rt.block_on(peer_as(&cluster, &target, "member-2"));
    let batch = proto::RaftBatch {
        from: 3,
        messages: Vec::new(),
    };
    let refused = rt
        .block_on(as_member_2.raft(futures::stream::iter(vec![batch])))
        .expect_err("member 2's certificate spoke as member 3");
    assert_refused(&refused, "member-2", "not as member 3");

    // A coordinator certificate of the cluster CA for a member that is not in
    // the cluster may not forward, copy blobs or ask questions.
    cluster
        .pki
        .issue_member(5, &[])
        .expect("member-5 certificate");
    let mut outsider = rt.block_on(peer_as(&cluster, &leader_address, "member-5"));
    let forward = proto::ForwardRequest {
        caller: format!("spiffe://ferry/client/{}", ferry_tests::CLIENT),
        command: b"{}".to_vec(),
        resent: false,
        request_id: String::new(),
    };
    let refused = rt
        .block_on(outsider.forward(forward))
        .expect_err("a non-member forwarded a command");
    assert_refused(
        &refused,
        "member-5",
        "member 5 is not a member of the cluster",
    );
    let blob = proto::BlobRef {
        digest: "0".repeat(64),
        size: 1,
    };
    let refused = rt
        .block_on(outsider.has_blob(blob.clone()))
        .expect_err("a non-member asked for a blob");
    assert_refused(&refused, "member-5", "not a member");
    let refused = rt
        .block_on(outsider.get_blob(blob))
        .expect_err("a non-member fetched a blob");
    assert_refused(&refused, "member-5", "not a member");
    let refused = rt
        .block_on(outsider.describe_self(proto::ClusterStatusRequest {}))
        .expect_err("a non-member asked who the member is");
    assert_refused(&refused, "member-5", "not a member");
    // Nor may it speak Raft as a member.
    let batch = proto::RaftBatch {
        from: leader,
        messages: Vec::new(),
    };
    let refused = rt
        .block_on(outsider.raft(futures::stream::iter(vec![batch])))
        .expect_err("a non-member spoke Raft as a member");
    assert_refused(&refused, "member-5", &format!("not as member {leader}"));

    // A member's own certificate is still accepted, and the cluster still works.
    let mut as_member_2 = rt.block_on(peer_as(&cluster, &leader_address, "member-2"));
    let answer = rt
        .block_on(as_member_2.describe_self(proto::ClusterStatusRequest {}))
        .expect("member 2 asks the leader who it is");
    assert_eq!(answer.into_inner().id, leader);
    assert!(cluster.ferry(&["runs"]).success());

    // Not even a member forwards the leader's own commands: a trim that would
    // empty the audit log is refused, and the log keeps its records.
    let made = cluster.ferry(&["projects", "create", "kept"]);
    assert!(made.success(), "{made:?}");
    let trim = proto::ForwardRequest {
        caller: "spiffe://ferry/coordinator/member-2".to_string(),
        command: br#"{"TrimAudit":{"keep_ms":0,"keep_max":0,"now_ms":0}}"#.to_vec(),
        resent: false,
        request_id: String::new(),
    };
    let refused = rt
        .block_on(as_member_2.forward(trim))
        .expect_err("a member forwarded the leader's own trim");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("leader's own commands"),
        "{}",
        refused.message()
    );
    let audit = cluster.ferry(&["audit", "--output", "json"]);
    assert!(
        audit.success() && audit.stdout.contains("\"project\": \"kept\""),
        "{audit:?}"
    );
}

#[test]
fn a_coordinator_refuses_to_start_with_another_members_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = ferry_tests::Pki::new(&dir.path().join("certs")).expect("CA");
    pki.issue_member(2, &[]).expect("member-2 certificate");
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "id = 3\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/member-2.pem\"\nkey = \"certs/member-2-key.pem\"\n",
            free_port()
        ),
    )
    .expect("config");
    let mut child = Command::new(bin("ferry-coordinator"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coordinator");
    let exited = wait_for(Duration::from_secs(20), "the coordinator to exit", || {
        child.try_wait().expect("try_wait")
    });
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!exited.success(), "it started: {stderr}");
    assert!(
        stderr.contains("member 3")
            && stderr.contains("certificate of member 2")
            && stderr.contains("--member 3"),
        "the refusal should say whose certificate it is and how to get the right one: {stderr}"
    );
    assert!(!dir.path().join("data").exists(), "{stderr}");
}
