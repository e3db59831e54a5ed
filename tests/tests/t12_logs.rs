//! Logs cost what they weigh (issue 18, item 3): a capped flood of output is
//! stored once, compressed, on the coordinator (no copy of its lines kept
//! beside the blob), and `ferry logs` streams the whole log back in order.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_tests::{Cluster, step_of, write_pipeline};

/// The worker's cap on one attempt's output here.
const CAP: u64 = 4 << 20;

/// Bytes of the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += bytes_under(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

#[test]
fn a_capped_flood_is_stored_once_compressed_and_read_back_whole_in_order() {
    let mut cluster = Cluster::start();
    cluster.add_worker(
        "w1",
        &format!("cpus = 2\nmemory = \"2Gi\"\nmax_log_bytes_per_attempt = {CAP}\n"),
    );
    // About 12 MB of numbered lines, three times the cap; stderr too.
    let pipeline = write_pipeline(
        &cluster.path("flood"),
        r#"name: flood
steps:
  - name: flood
    shell: |
      echo to-stderr >&2
      awk 'BEGIN { for (i = 0; i < 200000; i++) printf "line %d of a step that prints a lot, quickly\n", i }'
"#,
        &[],
    );
    let data = cluster.path("coordinator-1-data");
    let before = bytes_under(&data);
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(step_of(&status, "flood")["state"], "succeeded");

    // Stored once and compressed: well under the printed bytes kept.
    let grown = bytes_under(&data).saturating_sub(before);
    eprintln!("coordinator data grew by {grown} bytes for a log capped at {CAP}");
    assert!(
        grown * 10 <= CAP * 12,
        "the coordinator's data grew by {grown} bytes for {CAP} bytes printed"
    );

    // `ferry logs` gives every kept line once, in order, then the marker.
    let started = Instant::now();
    let logs = cluster.ferry(&["logs", &run.to_string(), "flood"]);
    assert!(
        logs.success(),
        "{:?}\n{}",
        logs.stderr,
        cluster.member_log(1)
    );
    eprintln!(
        "ferry logs: {} bytes in {:?}",
        logs.stdout.len(),
        started.elapsed()
    );
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for line in logs.stdout.lines() {
        if let Some(text) = line.strip_prefix("[flood#1 stdout] ") {
            stdout.push(text);
        } else if let Some(text) = line.strip_prefix("[flood#1 stderr] ") {
            stderr.push(text);
        } else {
            panic!("unexpected line {line:?}");
        }
    }
    assert_eq!(stderr, ["to-stderr"]);
    let marker = stdout.pop().expect("lines");
    assert!(
        marker.contains(&format!("passed the limit of {CAP} bytes")),
        "{marker}"
    );
    assert!(stdout.len() > 50_000, "{} lines kept", stdout.len());
    for (i, text) in stdout.iter().enumerate() {
        assert_eq!(
            *text,
            format!("line {i} of a step that prints a lot, quickly"),
            "line {i}"
        );
    }
    let kept: u64 = stdout.iter().map(|t| t.len() as u64 + 1).sum::<u64>() + 10;
    assert!(kept <= CAP && kept > CAP - 200, "{kept} bytes kept");
}
