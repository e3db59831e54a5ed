//! Prometheus metrics of the daemons themselves: a coordinator and a worker
//! started with `[metrics] listen` serve `/metrics` (OpenMetrics text), and
//! the worker's counters move with an attempt. (`sdk/python/tests/test_metrics.py`
//! parses `ferry dev`'s with prometheus_client and checks every family.)

use std::io::{Read, Write};
use std::time::Duration;

use ferry_tests::{Cluster, free_port, write_pipeline};

/// The body of `GET /metrics` at `address` (HTTP/1.0, so the server closes).
fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: ferry\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_string()
}

#[test]
fn the_daemons_serve_their_metrics_where_configured() {
    let coordinator_metrics = format!("127.0.0.1:{}", free_port());
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    let mut cluster = Cluster::start_replicated(
        1,
        &format!("[metrics]\nlisten = \"{coordinator_metrics}\"\n"),
    );
    cluster.add_worker(
        "w1",
        &format!("cpus = 2\nmemory = \"2Gi\"\n[metrics]\nlisten = \"{worker_metrics}\"\n"),
    );
    let coordinator = scrape(&coordinator_metrics);
    assert!(
        coordinator.contains("ferry_raft_role{role=\"leader\"} 1"),
        "{coordinator}"
    );
    assert!(
        coordinator.contains(
            "ferry_grpc_requests_total{service=\"Agent\",method=\"Register\",code=\"OK\"}"
        ),
        "{coordinator}"
    );
    let idle = scrape(&worker_metrics);
    assert!(
        idle.contains("ferry_worker_cpu_millis{state=\"capacity\"} 2000"),
        "{idle}"
    );
    assert!(
        !idle.contains("ferry_raft"),
        "a worker serves only its own: {idle}"
    );

    let pipeline = write_pipeline(
        &cluster.path("one"),
        "name: one\nsteps:\n  - name: s\n    command: [\"echo\", \"hello\"]\n",
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let worked = scrape(&worker_metrics);
    for line in [
        "ferry_worker_attempts_total{runtime=\"process\"} 1",
        "ferry_worker_cpu_millis{state=\"in_use\"} 0",
        "ferry_worker_log_bytes_total ",
    ] {
        assert!(worked.contains(line), "{line} missing:\n{worked}");
    }
    let coordinator = scrape(&coordinator_metrics);
    for line in [
        "ferry_steps_finished_total{outcome=\"succeeded\"} 1",
        "ferry_blob_uploads_total{kind=\"bundle\"} 1",
        "ferry_blob_stored ",
        "ferry_blob_stored_bytes ",
    ] {
        assert!(coordinator.contains(line), "{line} missing:\n{coordinator}");
    }

    // Stopping is not a failure of its metrics server: the worker exits 0.
    cluster.terminate_worker("w1");
    let worker = cluster.workers.get_mut("w1").expect("the worker");
    let status = worker.child.try_wait().expect("its status");
    assert!(
        status.is_some_and(|s| s.success()),
        "the worker stopped with {status:?}: {}",
        std::fs::read_to_string(&worker.log).unwrap_or_default()
    );
}

/// The address a member logged for its metrics (`listen = "127.0.0.1:0"`).
fn logged_metrics_address(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("serving Prometheus metrics at /metrics"))?;
    let start = line.find("127.0.0.1:")?;
    let address: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    Some(address)
}

#[test]
fn a_bundle_copied_to_a_majority_is_timed() {
    let cluster = Cluster::start_replicated(3, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    cluster.leader(Duration::from_secs(30));
    let addresses: Vec<String> = (1..=3)
        .map(|id| {
            ferry_tests::wait_for(
                Duration::from_secs(20),
                &format!("member {id} to log its metrics address"),
                || logged_metrics_address(&cluster.member_log(id)),
            )
        })
        .collect();
    let count = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("ferry_blob_replication_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before: f64 = addresses.iter().map(|a| count(&scrape(a))).sum();
    // No worker: the run stays queued; its bundle is uploaded and copied.
    let pipeline = write_pipeline(
        &cluster.path("copied"),
        "name: copied\nsteps:\n  - name: s\n    command: [\"true\"]\n",
        &[("data.txt", "some bytes to copy\n")],
    );
    cluster.submit(&pipeline, &[]);
    let after: f64 = addresses.iter().map(|a| count(&scrape(a))).sum();
    assert!(
        after >= before + 1.0,
        "no copy timed: {before} before, {after} after"
    );
}
