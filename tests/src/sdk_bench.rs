//! `ferry-bench sdk-submissions [--runs N] [--rounds N] [--python PATH]`: the
//! Python SDK's submission rate beside ferry-bench's own, on the same
//! one-member cluster in the same run, alternating (issue 19's benchmark).
//!
//! All submit one-step runs of the same pipeline folder over one connection,
//! 16 in flight, each its own run committed before it is answered, in two
//! ways each: ferry-bench calls `SubmitRun` from 16 tokio tasks on one tonic
//! channel, and sends them all on one `SubmitRuns` stream (the coordinator
//! keeps 16 in flight); the SDK (`sdk/python/bench/submit_rate.py`) calls
//! `client.submit(folder)` from 16 threads on one `ferry.Client`, and
//! `client.submit_many(folder, ...)` (one `SubmitRuns` stream). The SDK's
//! times include what a user's loop pays: reading the spec, checking the
//! folder's files for changes, packing it once. The verdict compares the
//! SDK's best way with ferry-bench's best way. No worker is started, so the
//! runs stay queued and nothing else competes for the CPU. Each times itself
//! from its first submission to its last answer. Beside them, `ferry run`
//! processes (200 a round, 16 at a time): a user's shell loop.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, control_client::ControlClient};

use crate::procfs::cpu_ns;
use crate::{CLIENT, Cluster};

const PIPELINE: &str = "name: queued\nsteps:\n  - name: s\n    command: [\"true\"]\n    cache: false\n    resources: {cpu: 0.1, memory: 16Mi}\n";
const CONCURRENCY: usize = 16;
/// The four ways timed, in the order of their rates.
const WAYS: [&str; 4] = [
    "ferry-bench, SubmitRun from 16 tasks",
    "ferry-bench, one SubmitRuns stream",
    "SDK, client.submit from 16 threads",
    "SDK, client.submit_many (one SubmitRuns stream)",
];
/// `ferry run` processes a round (each a process start and a TLS handshake).
const CLI_RUNS: usize = 200;

/// Parses `ferry-bench sdk-submissions` and runs it; false for another mode.
pub fn dispatch() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("sdk-submissions") {
        return Ok(false);
    }
    let (mut runs, mut rounds, mut python) = (1000usize, 2usize, "python3".to_string());
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--runs" => runs = value.parse().context("--runs needs a number")?,
            "--rounds" => rounds = value.parse().context("--rounds needs a number")?,
            "--python" => python = value.clone(),
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: ferry-bench sdk-submissions [--runs N] [--rounds N] [--python PATH]"
            ),
        }
    }
    tokio::runtime::Runtime::new()?.block_on(run(runs, rounds, &python))?;
    Ok(true)
}

/// A one-member cluster with no worker (runs stay queued), a folder holding
/// `spec` as its pipeline, a client's channel to it, and the folder's bundle
/// uploaded (its digest).
pub(crate) async fn queued_cluster(
    spec: &str,
) -> anyhow::Result<(
    Cluster,
    std::path::PathBuf,
    tonic::transport::Channel,
    String,
)> {
    let cluster = Cluster::start_replicated(1, "");
    let folder = cluster.path("queued");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("pipeline.yaml"), spec)?;
    let tls = TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert(CLIENT),
        key: cluster.pki.key(CLIENT),
    }
    .load()?;
    let channel = ferry_common::channel::endpoint(&cluster.address(), &tls)?
        .connect()
        .await?;
    let bundle = upload_bundle(&channel, &folder).await?;
    Ok((cluster, folder, channel, bundle))
}

async fn run(runs: usize, rounds: usize, python: &str) -> anyhow::Result<()> {
    let (cluster, folder, channel, bundle) = queued_cluster(PIPELINE).await?;
    let config = cluster.path("client.toml");
    std::fs::write(
        &config,
        format!(
            "coordinator = \"{}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cluster.address(),
            cluster.pki.ca().display(),
            cluster.pki.cert(CLIENT).display(),
            cluster.pki.key(CLIENT).display()
        ),
    )?;
    println!(
        "sdk-submissions: {runs} runs a round, {CONCURRENCY} at a time, one member, load {}",
        crate::artifact_bench::load_average()
    );
    let coordinator = cluster.coordinators[0]
        .daemon
        .as_ref()
        .context("the coordinator's process")?
        .pid();
    let mut rates: [Vec<f64>; 5] = Default::default();
    // CPU milliseconds per 1,000 runs: [client, coordinator] for each way.
    let mut cpu: [[Vec<f64>; 2]; 4] = Default::default();
    let per_thousand = |ns: f64| ns / 1e6 * 1000.0 / runs as f64;
    for round in 1..=rounds {
        // Each pair (ferry-bench's way and the SDK's like it) in turn, the
        // order swapped every round: the cluster grows by every run submitted.
        let order: [usize; 4] = if round % 2 == 1 {
            [0, 2, 1, 3]
        } else {
            [3, 1, 2, 0]
        };
        for way in order {
            let before = (cpu_ns(std::process::id() as i32)?, cpu_ns(coordinator)?);
            let (rate, client_ns) = match way {
                0 | 1 => {
                    let began = Instant::now();
                    if way == 0 {
                        submit_many(&channel, &bundle, runs).await?;
                    } else {
                        submit_stream(&channel, &bundle, runs).await?;
                    }
                    let rate = runs as f64 / began.elapsed().as_secs_f64();
                    let own = cpu_ns(std::process::id() as i32)? - before.0;
                    (rate, own as f64)
                }
                _ => {
                    let mode = if way == 2 { "threads" } else { "many" };
                    let (rate, seconds) = python_rate(python, &config, &folder, runs, mode)?;
                    (rate, seconds * 1e9)
                }
            };
            // For the SDK the coordinator's share also covers the script's
            // warm-up submission and connection.
            let coordinator_ns = (cpu_ns(coordinator)? - before.1) as f64;
            cpu[way][0].push(per_thousand(client_ns));
            cpu[way][1].push(per_thousand(coordinator_ns));
            println!(
                "round {round}: {:<48} {rate:>6.0} runs/s; CPU ms per 1,000: client {:.0}, coordinator {:.0}",
                WAYS[way],
                per_thousand(client_ns),
                per_thousand(coordinator_ns)
            );
            rates[way].push(rate);
        }
        let cli_runs = runs.min(CLI_RUNS);
        let rate = cli_rate(&config, &folder, cli_runs)?;
        println!(
            "round {round}: {:<48} {rate:>6.0} runs/s",
            format!("ferry run, {cli_runs} processes, {CONCURRENCY} at a time")
        );
        rates[4].push(rate);
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    for (way, [client, coordinator]) in cpu.into_iter().enumerate() {
        println!(
            "median CPU ms per 1,000 runs, {:<48} client {:.0}, coordinator {:.0}",
            WAYS[way],
            median(client),
            median(coordinator)
        );
    }
    let [unary, stream, threads, many, cli] = rates.map(median);
    // The SDK's best way against ferry-bench's best way: a like-for-like
    // figure, not the SDK's stream against ferry-bench's unary calls.
    let (rust, sdk) = (unary.max(stream), threads.max(many));
    println!(
        "sdk-submissions: medians: ferry-bench {unary:.0} (SubmitRun x {CONCURRENCY}) / {stream:.0} \
         (SubmitRuns) runs/s; SDK {threads:.0} (submit x {CONCURRENCY} threads) / {many:.0} \
         (submit_many) runs/s; ferry run {cli:.0} runs/s. The SDK's best is {:.0} % of \
         ferry-bench's best, {:.1}x ferry run; load {}",
        100.0 * sdk / rust,
        sdk / cli,
        crate::artifact_bench::load_average()
    );
    Ok(())
}

/// Packs and uploads the folder's bundle once; its digest.
async fn upload_bundle(
    channel: &tonic::transport::Channel,
    folder: &Path,
) -> anyhow::Result<String> {
    let bundle = ferry_common::bundle::pack_dir(folder)?;
    let chunk = proto::Chunk {
        digest: bundle.digest.clone(),
        size: bundle.bytes.len() as u64,
        data: bundle.bytes.into(),
        ..Default::default()
    };
    ControlClient::new(channel.clone())
        .upload_bundle(futures::stream::iter([chunk]))
        .await?;
    Ok(bundle.digest)
}

/// `count` submissions, CONCURRENCY tasks on one channel.
async fn submit_many(
    channel: &tonic::transport::Channel,
    bundle: &str,
    count: usize,
) -> anyhow::Result<()> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let mut client = ControlClient::new(channel.clone());
        let request = proto::SubmitRunRequest {
            spec_yaml: PIPELINE.into(),
            spec_file: "pipeline.yaml".into(),
            bundle_digest: bundle.to_string(),
            no_cache: true,
            ..Default::default()
        };
        let next = next.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                client.submit_run(request.clone()).await?;
            }
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// Submissions per message of a `SubmitRuns` stream (as the SDK sends them).
const BATCH: usize = 256;

/// `count` submissions on one `SubmitRuns` call, in batches of [`BATCH`]
/// (the coordinator keeps `SUBMIT_STREAM_IN_FLIGHT`, 16, in flight).
pub(crate) async fn submit_stream(
    channel: &tonic::transport::Channel,
    bundle: &str,
    count: usize,
) -> anyhow::Result<()> {
    submit_stream_of(channel, PIPELINE, bundle, count).await
}

/// [`submit_stream`] of the pipeline `spec`.
pub(crate) async fn submit_stream_of(
    channel: &tonic::transport::Channel,
    spec: &str,
    bundle: &str,
    count: usize,
) -> anyhow::Result<()> {
    // Unique ids (an id already applied would be answered with its run
    // instead of starting one).
    let stream = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let requests: Vec<proto::SubmitRunRequest> = (0..count)
        .map(|i| proto::SubmitRunRequest {
            spec_yaml: spec.into(),
            spec_file: "pipeline.yaml".into(),
            bundle_digest: bundle.to_string(),
            request_id: format!("bench-{}-{stream}-{i}", std::process::id()),
            no_cache: true,
            ..Default::default()
        })
        .collect();
    let batches: Vec<proto::SubmitRunsRequest> = requests
        .chunks(BATCH)
        .map(|runs| proto::SubmitRunsRequest {
            runs: runs.to_vec(),
        })
        .collect();
    let mut replies = ControlClient::new(channel.clone())
        .submit_runs(futures::stream::iter(batches))
        .await?
        .into_inner();
    let mut answered = 0;
    while let Some(reply) = replies.message().await? {
        for answer in reply.answers {
            anyhow::ensure!(
                answer.code == 0,
                "submission {} refused: {}",
                answer.index,
                answer.message
            );
            answered += 1;
        }
    }
    anyhow::ensure!(
        answered == count,
        "{answered} of {count} submissions answered"
    );
    Ok(())
}

/// `count` `ferry run` processes, CONCURRENCY at a time, as a shell loop
/// with `xargs -P 16` would start them; runs per second of wall time.
fn cli_rate(config: &Path, folder: &Path, count: usize) -> anyhow::Result<f64> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let began = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, config, folder) = (next.clone(), config.to_path_buf(), folder.to_path_buf());
            std::thread::spawn(move || -> anyhow::Result<()> {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                    let output = std::process::Command::new(crate::bin("ferry"))
                        .arg("--config")
                        .arg(&config)
                        .arg("run")
                        .arg(folder.join("pipeline.yaml"))
                        .arg("--no-cache")
                        .output()?;
                    anyhow::ensure!(
                        output.status.success(),
                        "ferry run failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a ferry run thread panicked"))??;
    }
    Ok(count as f64 / began.elapsed().as_secs_f64())
}

/// The SDK's rate from `submit_rate.py` (its own clock) and the CPU seconds
/// the script's process took meanwhile.
fn python_rate(
    python: &str,
    config: &Path,
    folder: &Path,
    runs: usize,
    mode: &str,
) -> anyhow::Result<(f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python/bench/submit_rate.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .arg("--config")
        .arg(config)
        .arg("--pipeline")
        .arg(folder)
        .args([
            "--runs",
            &runs.to_string(),
            "--threads",
            &CONCURRENCY.to_string(),
            "--mode",
            mode,
        ])
        .output()
        .with_context(|| format!("cannot run {python} {}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))?;
    let number = |key: &str| {
        answer[key]
            .as_f64()
            .with_context(|| format!("no {key} in the script's answer"))
    };
    Ok((number("per_second")?, number("cpu_seconds")?))
}
