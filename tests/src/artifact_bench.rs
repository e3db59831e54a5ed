//! `ferry-bench artifacts`: how fast an artifact goes from a step's exit to
//! stored, and back out with `ferry artifacts get`, beside what the same disk
//! does in the same run (`cp`, `cp` + fsync, one-thread BLAKE3 of the file).
//!
//! - Store: a step writes `--mib` MiB of random bytes, then prints the clock
//!   (`date +%s.%N`) as its last line; the figure is the step's `finished_ms`
//!   (the coordinator's clock, the same machine's realtime clock) minus that
//!   reading: the worker hashing and uploading the file, the coordinators
//!   storing (and, with `--members 3`, replicating) it, and the report's Raft
//!   round.
//! - Get: the wall time of `ferry artifacts get` (a new process: its start and
//!   TLS handshake are in it), verified against the digest, into a file on the
//!   same disk.
//! - Sparse: a step's `truncate -s` file of 4 × `--mib` MiB with no data
//!   written: the same two figures, and the bytes the coordinators' blob
//!   directories grew by.
//! - Memory: the coordinators' and the worker's peak resident memory
//!   (`VmHWM`) at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procfs::{allocated_bytes, peak_mib};
use crate::{Cluster, step_of, write_pipeline};

/// Seconds since the epoch, now.
fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Writes `mib` MiB of random bytes to `path`.
fn random_file(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in block.chunks_mut(8) {
            // xorshift64*: incompressible enough for a disk and a hash.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        file.write_all(&block)?;
    }
    file.sync_all()?;
    Ok(())
}

/// One artifact's way in and out: seconds from the step's exit to stored, and
/// of `ferry artifacts get`.
fn round_trip(
    cluster: &Cluster,
    name: &str,
    make: &str,
    output: &str,
) -> anyhow::Result<(f64, f64)> {
    let yaml = format!(
        "name: {name}\nsteps:\n  - name: make\n    shell: \"{make} && date +%s.%N\"\n    \
         outputs: [{output}]\n    cache: false\n    resources: {{memory: 256Mi}}\n"
    );
    let pipeline = write_pipeline(&cluster.path(name), &yaml, &[]);
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(900));
    anyhow::ensure!(status["state"] == "succeeded", "run {run}: {status:#}");
    let finished_ms = step_of(&status, "make")["finished_ms"]
        .as_i64()
        .context("the step's finished_ms")?;
    let logs = cluster.ferry(&["logs", &run.to_string(), "make"]);
    anyhow::ensure!(logs.success(), "logs: {logs:?}");
    let exited: f64 = logs
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .next_back()
        .context("the step's exit stamp in its log")?;
    let stored = finished_ms as f64 / 1e3 - exited;
    let target = cluster.path(&format!("{name}-got"));
    let began = Instant::now();
    let got = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        "make",
        output,
        "-o",
        target.to_str().context("utf-8 path")?,
    ]);
    let fetched = began.elapsed().as_secs_f64();
    anyhow::ensure!(got.success() && got.stdout.contains("verified"), "{got:?}");
    let _ = std::fs::remove_file(&target);
    Ok((stored, fetched))
}

/// The benchmark: prints the figures and the disk's own.
pub fn run(mib: u64, members: u64) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_replicated(members, "");
    cluster.add_worker("bench", "cpus = 2\nmemory = \"4Gi\"\n");
    cluster.wait_worker_connected("bench");

    // The disk's own figures, on the cluster's disk, in this run.
    let reference = cluster.path("reference.bin");
    random_file(&reference, mib)?;
    let copy = cluster.path("reference-copy.bin");
    let began = Instant::now();
    std::fs::copy(&reference, &copy)?;
    let cp = began.elapsed().as_secs_f64();
    std::fs::remove_file(&copy)?;
    let began = Instant::now();
    std::fs::copy(&reference, &copy)?;
    std::fs::File::open(&copy)?.sync_all()?;
    let cp_sync = began.elapsed().as_secs_f64();
    std::fs::remove_file(&copy)?;
    let began = Instant::now();
    ferry_common::digest::digest_file(&reference)?;
    let hash = began.elapsed().as_secs_f64();
    std::fs::remove_file(&reference)?;

    let stamp = now_seconds();
    let (stored, fetched) = round_trip(
        &cluster,
        "dense",
        &format!("head -c {mib}M /dev/urandom > big.bin"),
        "big.bin",
    )?;
    let blob_dirs: Vec<_> = (1..=members)
        .map(|id| cluster.path(&format!("coordinator-{id}-data")))
        .collect();
    let before: u64 = blob_dirs.iter().map(|d| allocated_bytes(d)).sum();
    let (sparse_stored, sparse_fetched) = round_trip(
        &cluster,
        "sparse",
        &format!("truncate -s {}M holes.bin", 4 * mib),
        "holes.bin",
    )?;
    let grew: u64 = blob_dirs
        .iter()
        .map(|d| allocated_bytes(d))
        .sum::<u64>()
        .saturating_sub(before);
    let rate = |seconds: f64| mib as f64 / seconds;
    println!(
        "artifacts: {mib} MiB, {members} member(s), at unix time {stamp:.0}; this disk in the same run: \
         cp {cp:.2} s ({:.0} MiB/s), cp+fsync {cp_sync:.2} s ({:.0} MiB/s), BLAKE3 one thread {hash:.2} s",
        rate(cp),
        rate(cp_sync)
    );
    println!(
        "artifacts: step exit to stored {stored:.2} s ({:.0} MiB/s, {:.0} % of cp+fsync); \
         ferry artifacts get {fetched:.2} s ({:.0} MiB/s, {:.0} % of cp+fsync)",
        rate(stored),
        cp_sync / stored * 100.0,
        rate(fetched),
        cp_sync / fetched * 100.0
    );
    println!(
        "artifacts: sparse {} MiB (no data): stored {sparse_stored:.2} s, get {sparse_fetched:.2} s; \
         the coordinators' data directories grew by {:.0} MiB",
        4 * mib,
        grew as f64 / (1 << 20) as f64
    );
    let coordinators: Vec<String> = cluster
        .coordinators
        .iter()
        .filter_map(|c| c.daemon.as_ref())
        .map(|d| peak_mib(d.pid()).unwrap_or(0).to_string())
        .collect();
    let worker = cluster
        .workers
        .get("bench")
        .and_then(|w| peak_mib(w.pid()))
        .unwrap_or(0);
    println!(
        "artifacts: peak resident memory: coordinators {} MiB, worker {worker} MiB",
        coordinators.join(", ")
    );
    Ok(())
}
