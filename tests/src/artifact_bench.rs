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
use ferry_common::proto;

use crate::procfs::{allocated_bytes, cpu_ticks, peak_mib};
use crate::{Cluster, step_of, write_pipeline};

/// Seconds since the epoch, now.
fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Writes `mib` MiB of random bytes to `path` (from `seed`), synced when
/// `sync` (else freshly written, as a step's output is when it exits).
fn random_file(path: &Path, mib: u64, seed: u64, sync: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xA24B_AED4_963E_E407);
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        random_block(&mut state, &mut block);
        // 128 KiB at a time, as `head` and `cp` write.
        for piece in block.chunks(128 * 1024) {
            file.write_all(piece)?;
        }
    }
    if sync {
        file.sync_all()?;
    }
    Ok(())
}

/// Fills `block` with pseudo-random bytes (xorshift64*: incompressible enough
/// for a disk and a hash).
fn random_block(state: &mut u64, block: &mut [u8]) {
    for word in block.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let value = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        word.copy_from_slice(&value[..word.len()]);
    }
}

/// `cp` and then fsync of the copy, in seconds: the disk's reference.
fn copy_and_sync(from: &Path, to: &Path) -> anyhow::Result<f64> {
    let began = Instant::now();
    std::fs::copy(from, to)?;
    std::fs::File::open(to)?.sync_all()?;
    let seconds = began.elapsed().as_secs_f64();
    std::fs::remove_file(to)?;
    Ok(seconds)
}

/// The disk's own figures, on the cluster's disk, in the same run.
struct References {
    /// `cp` of a synced file.
    cp: f64,
    /// `cp` + fsync of the copy, of a synced file.
    cp_sync: f64,
    /// The same of a file just written and not synced (as a step's output is
    /// when the step exits: its own writeback competes).
    cp_sync_fresh: f64,
    /// `digest_file` of the synced file (in the page cache).
    hash: f64,
}

impl References {
    fn measure(cluster: &Cluster, mib: u64) -> anyhow::Result<References> {
        let reference = cluster.path("reference.bin");
        let copy = cluster.path("reference-copy.bin");
        random_file(&reference, mib, 1, true)?;
        let began = Instant::now();
        std::fs::copy(&reference, &copy)?;
        let cp = began.elapsed().as_secs_f64();
        std::fs::remove_file(&copy)?;
        let cp_sync = copy_and_sync(&reference, &copy)?;
        let began = Instant::now();
        ferry_common::digest::digest_file(&reference)?;
        let hash = began.elapsed().as_secs_f64();
        std::fs::remove_file(&reference)?;
        random_file(&reference, mib, 2, false)?;
        let cp_sync_fresh = copy_and_sync(&reference, &copy)?;
        std::fs::remove_file(&reference)?;
        Ok(References {
            cp,
            cp_sync,
            cp_sync_fresh,
            hash,
        })
    }
}

/// The load average (1, 5, 15 minutes), as `/proc/loadavg` says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
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

    let references = References::measure(&cluster, mib)?;
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
    let References {
        cp,
        cp_sync,
        cp_sync_fresh,
        hash,
    } = references;
    // The target's figure is against the faster reference: the one that
    // flatters Ferry less.
    let reference = cp_sync.min(cp_sync_fresh);
    println!(
        "artifacts: {mib} MiB, {members} member(s), at unix time {stamp:.0}, load {}; this disk in the same run: \
         cp {cp:.2} s ({:.0} MiB/s), cp+fsync {cp_sync:.2} s ({:.0} MiB/s), cp+fsync of a freshly \
         written file {cp_sync_fresh:.2} s ({:.0} MiB/s), BLAKE3 (every core) {hash:.2} s",
        load_average(),
        rate(cp),
        rate(cp_sync),
        rate(cp_sync_fresh)
    );
    println!(
        "artifacts: step exit to stored {stored:.2} s ({:.0} MiB/s, {:.0} % of the faster cp+fsync); \
         ferry artifacts get {fetched:.2} s ({:.0} MiB/s, {:.0} %)",
        rate(stored),
        reference / stored * 100.0,
        rate(fetched),
        reference / fetched * 100.0
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

/// `ferry-bench artifact-stages`: each stage of an artifact's way timed
/// alone (`Instant`, in this process), `rounds` times alternating, on the
/// cluster's disk, with a real coordinator (or `members`) for the network
/// stages. The upload stages call `UploadArtifact` directly with a worker's
/// certificate and a digest known beforehand, so they hold no pre-hash.
pub async fn stages(mib: u64, members: u64, rounds: u64) -> anyhow::Result<()> {
    let cluster = Cluster::start_replicated(members, "");
    cluster.pki.issue("worker", "stager")?;
    let tls = ferry_common::pki::TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert("stager"),
        key: cluster.pki.key("stager"),
    }
    .load()?;
    let leader = cluster.leader(Duration::from_secs(30));
    let address = cluster.coordinators[(leader - 1) as usize].address();
    let channel = ferry_common::channel::endpoint(&address, &tls)?
        .connect()
        .await?;
    let mut agent = proto::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let data_dirs: Vec<_> = (1..=members)
        .map(|id| cluster.path(&format!("coordinator-{id}-data")))
        .collect();
    let mut figures: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut note =
        |name: &'static str, seconds: f64| match figures.iter_mut().find(|(n, _)| *n == name) {
            Some((_, list)) => list.push(seconds),
            None => figures.push((name, vec![seconds])),
        };
    println!(
        "artifact stages: {mib} MiB, {members} member(s), load {}",
        load_average()
    );
    for round in 0..rounds {
        let output = cluster.path("stage-output.bin");
        let copy = cluster.path("stage-copy.bin");
        // References: cp + fsync of a synced file and of a freshly written one.
        random_file(&output, mib, 1000 + round, true)?;
        note("cp + fsync, synced source", copy_and_sync(&output, &copy)?);
        random_file(&output, mib, 2000 + round, false)?;
        note(
            "cp + fsync, freshly written source",
            copy_and_sync(&output, &copy)?,
        );
        // The worker's stages, on a freshly written output.
        random_file(&output, mib, 3000 + round, false)?;
        let began = Instant::now();
        let (digest, size) = ferry_common::digest::digest_file(&output)?;
        note(
            "worker: hash the output (digest_file)",
            began.elapsed().as_secs_f64(),
        );
        let began = Instant::now();
        let mut read = 0u64;
        for frame in ferry_common::blobio::FrameReader::new(std::fs::File::open(&output)?)? {
            read += frame?.len();
        }
        anyhow::ensure!(read == size);
        note(
            "worker: read the output as frames",
            began.elapsed().as_secs_f64(),
        );
        // The wire and the coordinator.
        let began = Instant::now();
        let stored = agent
            .upload_artifact(file_chunks(&output, &digest, size)?)
            .await?
            .into_inner();
        anyhow::ensure!(stored.digest == digest);
        note(
            "upload, new blob: read + TLS + receive + hash + write + fsync (+ copies)",
            began.elapsed().as_secs_f64(),
        );
        // FERRY_BENCH_WIRE_ONLY=1: the wire stage three times and nothing
        // else (to profile it, or to compare two builds' wire).
        if std::env::var_os("FERRY_BENCH_WIRE_ONLY").is_some() {
            for _ in 0..3 {
                let began = Instant::now();
                agent
                    .upload_artifact(file_chunks(&output, &digest, size)?)
                    .await?;
                println!("wire: {:.2} s", began.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        let coordinator_pid = cluster.coordinators[(leader - 1) as usize]
            .daemon
            .as_ref()
            .context("the leader's process")?
            .pid();
        let cpu_before = (
            cpu_ticks(std::process::id() as i32)?,
            cpu_ticks(coordinator_pid)?,
        );
        let began = Instant::now();
        agent
            .upload_artifact(file_chunks(&output, &digest, size)?)
            .await?;
        note(
            "upload, blob already stored: read + TLS + receive + hash, nothing written",
            began.elapsed().as_secs_f64(),
        );
        note(
            "  its CPU seconds: sender (this process)",
            ticks_seconds(cpu_ticks(std::process::id() as i32)? - cpu_before.0),
        );
        note(
            "  its CPU seconds: coordinator",
            ticks_seconds(cpu_ticks(coordinator_pid)? - cpu_before.1),
        );
        // Hashing while sending: the digest named in the last chunk.
        random_file(&output, mib, 6000 + round, false)?;
        let began = Instant::now();
        let stored = agent
            .upload_artifact(file_chunks_named_last(&output)?)
            .await?
            .into_inner();
        anyhow::ensure!(stored.size == size);
        note(
            "upload, new blob, digest named last: read + hash + TLS + receive + hash + write + fsync (+ copies)",
            began.elapsed().as_secs_f64(),
        );
        // The coordinator's disk work alone, from frames in memory.
        let frames = memory_frames(mib, 4000 + round);
        let staging = cluster.path("stage-staging.bin");
        let began = Instant::now();
        let mut writer = ferry_common::blobio::FrameWriter::new(std::fs::File::create(&staging)?);
        for frame in &frames {
            writer.write(frame)?;
        }
        let file = writer.finish()?;
        note(
            "coordinator: write frames to a staging file",
            began.elapsed().as_secs_f64(),
        );
        let began = Instant::now();
        file.sync_all()?;
        note(
            "coordinator: fsync of that file",
            began.elapsed().as_secs_f64(),
        );
        std::fs::remove_file(&staging)?;
        let frames = memory_frames(mib, 5000 + round);
        let began = Instant::now();
        let mut hasher = blake3::Hasher::new();
        let mut writer = ferry_common::blobio::FrameWriter::new(std::fs::File::create(&staging)?);
        for frame in &frames {
            frame.hash_into(&mut hasher);
            writer.write(frame)?;
        }
        writer.finish()?.sync_all()?;
        note(
            "coordinator (and get): hash + write + fsync, one thread",
            began.elapsed().as_secs_f64(),
        );
        std::fs::remove_file(&staging)?;
        let frames = memory_frames(mib, 7000 + round);
        let began = Instant::now();
        let writer = ferry_common::blobio::FrameWriter::new(std::fs::File::create(&staging)?)
            .with_early_writeback();
        let mut sink = ferry_common::blobio::FrameSink::start(blake3::Hasher::new(), Some(writer));
        for frame in &frames {
            sink.push(frame.clone()).await?;
        }
        let (_, writer) = sink.finish().await?;
        writer.context("the writer")?.finish()?.sync_all()?;
        note(
            "coordinator (and get): hash || write (FrameSink, early writeback) + fsync",
            began.elapsed().as_secs_f64(),
        );
        std::fs::remove_file(&staging)?;
        let began = Instant::now();
        let mut hasher = blake3::Hasher::new();
        for frame in &frames {
            frame.hash_into(&mut hasher);
        }
        note("hash of frames in memory", began.elapsed().as_secs_f64());
        drop(frames);
        // The get's sending side: the stored blob read and hashed.
        let blob = data_dirs[(leader - 1) as usize]
            .join("blobs")
            .join(&digest[..2])
            .join(&digest);
        let began = Instant::now();
        let mut hasher = blake3::Hasher::new();
        for frame in ferry_common::blobio::FrameReader::new(std::fs::File::open(&blob)?)? {
            frame?.hash_into(&mut hasher);
        }
        anyhow::ensure!(hasher.finalize().to_hex().to_string() == digest);
        note(
            "get: read + hash the stored blob",
            began.elapsed().as_secs_f64(),
        );
        std::fs::remove_file(&output)?;
        // The transport alone, in this process: the same bytes over loopback
        // TCP, over rustls (the ring provider and the certificates Ferry uses),
        // and over rustls with the receiver hashing what it reads.
        let material = ferry_common::pki::TlsFiles {
            ca: cluster.pki.ca(),
            cert: cluster.pki.cert("member-1"),
            key: cluster.pki.key("member-1"),
        }
        .load()?;
        for (name, transport) in [
            ("loopback TCP alone, 1 MiB writes", Transport::Tcp),
            ("TLS alone (rustls, ring), 1 MiB writes", Transport::Tls),
            ("TLS alone + hash on receive", Transport::TlsHashed),
            (
                "TLS alone + hash || write (FrameSink) + fsync on receive",
                Transport::TlsStored,
            ),
        ] {
            let seconds = transport_alone(transport, &material, &tls, mib, &staging)
                .await
                .with_context(|| format!("stage {name}"))?;
            note(name, seconds);
        }
    }
    println!("| stage, {mib} MiB | seconds ({rounds} rounds) | MiB/s (best) |");
    println!("|---|---:|---:|");
    for (name, list) in &figures {
        let best = list.iter().copied().fold(f64::INFINITY, f64::min);
        let all: Vec<String> = list.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "| {name} | {} | {:.0} |",
            all.join(" / "),
            mib as f64 / best
        );
    }
    println!("load at the end: {}", load_average());
    Ok(())
}

/// `mib` frames of a MiB of pseudo-random bytes, in memory: one buffer sent
/// again and again. (A GiB of fresh buffers measured the VM's first touch of
/// memory, not the disk: writing them took 11-12 s where `cp` takes 2.)
fn memory_frames(mib: u64, seed: u64) -> Vec<ferry_common::blobio::Frame> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xA24B_AED4_963E_E407);
    let mut block = vec![0u8; ferry_common::blobio::FRAME_BYTES];
    random_block(&mut state, &mut block);
    let frame = ferry_common::blobio::Frame::Data(block.into());
    (0..mib).map(|_| frame.clone()).collect()
}

/// A file as upload chunks, as the worker sends one: a first chunk naming
/// digest and size, then frames read a few ahead on a blocking thread.
fn file_chunks(
    path: &Path,
    digest: &str,
    size: u64,
) -> anyhow::Result<impl futures::Stream<Item = proto::Chunk> + Send + 'static> {
    use futures::StreamExt;
    let reader = ferry_common::blobio::FrameReader::new(std::fs::File::open(path)?)?;
    let first = proto::Chunk {
        digest: digest.to_string(),
        size,
        ..Default::default()
    };
    let (sender, chunks) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        for frame in reader {
            let Ok(frame) = frame else { return };
            if sender.blocking_send(frame.into_chunk()).is_err() {
                return;
            }
        }
    });
    Ok(futures::stream::iter([first]).chain(tokio_stream_of(chunks)))
}

/// A file as upload chunks as the worker sends a large one: the first chunk
/// names the size only, the frames are hashed as they are read, and the last
/// chunk names the digest.
fn file_chunks_named_last(
    path: &Path,
) -> anyhow::Result<impl futures::Stream<Item = proto::Chunk> + Send + 'static> {
    use futures::StreamExt;
    let reader = ferry_common::blobio::FrameReader::new(std::fs::File::open(path)?)?;
    let first = proto::Chunk {
        size: reader.size(),
        digest_last: true,
        ..Default::default()
    };
    let (sender, chunks) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        for frame in reader {
            let Ok(frame) = frame else { return };
            frame.hash_into(&mut hasher);
            if sender.blocking_send(frame.into_chunk()).is_err() {
                return;
            }
        }
        let last = proto::Chunk {
            digest: hasher.finalize().to_hex().to_string(),
            ..Default::default()
        };
        let _ = sender.blocking_send(last);
    });
    Ok(futures::stream::iter([first]).chain(tokio_stream_of(chunks)))
}

/// A receiver as a stream (without another dependency).
fn tokio_stream_of<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |context| receiver.poll_recv(context))
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Tcp,
    Tls,
    TlsHashed,
    TlsStored,
}

/// Seconds to move `mib` MiB from one task to another over loopback: plain
/// TCP, or mutual TLS with `server` and `client`'s certificates (the receiver
/// reads into a 1 MiB buffer; with `TlsHashed` it also hashes what it reads).
async fn transport_alone(
    transport: Transport,
    server: &ferry_common::pki::TlsMaterial,
    client: &ferry_common::pki::TlsMaterial,
    mib: u64,
    staging: &Path,
) -> anyhow::Result<f64> {
    use std::sync::Arc;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server_config = Arc::new(ferry_common::tls_server::server_config(
        server,
        Arc::new(|_| None),
    )?);
    let client_config = Arc::new(client_rustls(client)?);
    let total = mib << 20;
    let staging = staging.to_path_buf();
    // The receiver answers one byte when it has everything, and the sender
    // waits for it (closing with unread bytes, such as TLS session tickets,
    // would reset the connection under the receiver).
    async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        total: u64,
        hash: bool,
    ) -> anyhow::Result<()> {
        let mut buffer = vec![0u8; 1 << 20];
        let mut hasher = blake3::Hasher::new();
        let mut got = 0u64;
        while got < total {
            let n = stream.read(&mut buffer).await?;
            anyhow::ensure!(n > 0, "the stream ended early");
            if hash {
                hasher.update(&buffer[..n]);
            }
            got += n as u64;
        }
        stream.write_all(&[1]).await?;
        stream.flush().await?;
        Ok(())
    }
    // Whole 1 MiB frames, hashed on one thread and written on another with
    // early writeback, then synced: the coordinator's sink.
    async fn store<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        total: u64,
        staging: std::path::PathBuf,
    ) -> anyhow::Result<()> {
        let writer = ferry_common::blobio::FrameWriter::new(std::fs::File::create(&staging)?)
            .with_early_writeback();
        let mut sink = ferry_common::blobio::FrameSink::start(blake3::Hasher::new(), Some(writer));
        let mut got = 0u64;
        while got < total {
            let want = (total - got).min(1 << 20) as usize;
            let mut frame = bytes::BytesMut::zeroed(want);
            stream.read_exact(&mut frame).await?;
            got += want as u64;
            sink.push(ferry_common::blobio::Frame::Data(frame.freeze()))
                .await?;
        }
        let (_, writer) = sink.finish().await?;
        writer.context("the writer")?.finish()?.sync_all()?;
        std::fs::remove_file(&staging)?;
        stream.write_all(&[1]).await?;
        stream.flush().await?;
        Ok(())
    }
    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        total: u64,
    ) -> anyhow::Result<()> {
        let block = vec![7u8; 1 << 20];
        let mut sent = 0u64;
        while sent < total {
            stream.write_all(&block).await?;
            sent += block.len() as u64;
        }
        stream.flush().await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        Ok(())
    }
    let receiver = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        match transport {
            Transport::Tcp => receive(socket, total, false).await,
            _ => {
                let stream = tokio_rustls::TlsAcceptor::from(server_config)
                    .accept(socket)
                    .await?;
                if transport == Transport::TlsStored {
                    store(stream, total, staging).await
                } else {
                    receive(stream, total, transport == Transport::TlsHashed).await
                }
            }
        }
    });
    let socket = tokio::net::TcpStream::connect(address).await?;
    socket.set_nodelay(true)?;
    let began;
    if transport == Transport::Tcp {
        began = Instant::now();
        send(socket, total).await?;
    } else {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let stream = tokio_rustls::TlsConnector::from(client_config)
            .connect(name, socket)
            .await?;
        began = Instant::now();
        send(stream, total).await?;
    }
    receiver.await??;
    Ok(began.elapsed().as_secs_f64())
}

/// A rustls client configuration with the cluster CA and `material`'s
/// certificate, as the gRPC clients have.
fn client_rustls(
    material: &ferry_common::pki::TlsMaterial,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&material.ca_pem) {
        roots.add(certificate?)?;
    }
    let chain =
        CertificateDer::pem_slice_iter(&material.cert_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&material.key_pem)?;
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?,
    )
}

/// Clock ticks as seconds (the kernel's `USER_HZ`, 100 on Linux).
fn ticks_seconds(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}
