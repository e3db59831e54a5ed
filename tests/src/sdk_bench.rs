//! `ferry-bench sdk-submissions [--runs N] [--rounds N] [--python PATH]`: the
//! Python SDK's submission rate beside ferry-bench's own, on the same
//! one-member cluster in the same run, alternating (issue 19's benchmark).
//!
//! Both submit one-step runs of the same pipeline folder, 16 at a time over
//! one connection: ferry-bench calls `SubmitRun` from 16 tokio tasks on one
//! tonic channel (the bundle uploaded once before); the SDK
//! (`sdk/python/bench/submit_rate.py`) calls `client.submit(folder)` from 16
//! threads on one `ferry.Client` — which also packs the folder and asks
//! `HasBlob` on every call, as a user's loop would. No worker is started, so
//! the runs stay queued and nothing else competes for the CPU. Each side
//! times itself from its first submission to its last answer. Beside them,
//! `ferry run` processes (200 a round, 16 at a time): a user's shell loop.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, control_client::ControlClient};

use crate::{CLIENT, Cluster};

const PIPELINE: &str = "name: queued\nsteps:\n  - name: s\n    command: [\"true\"]\n    cache: false\n    resources: {cpu: 0.1, memory: 16Mi}\n";
const CONCURRENCY: usize = 16;
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

async fn run(runs: usize, rounds: usize, python: &str) -> anyhow::Result<()> {
    let cluster = Cluster::start_replicated(1, "");
    let folder = cluster.path("queued");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("pipeline.yaml"), PIPELINE)?;
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
    println!(
        "sdk-submissions: {runs} runs a round, {CONCURRENCY} at a time, one member, load {}",
        crate::artifact_bench::load_average()
    );
    let (mut rust, mut sdk, mut cli) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let began = Instant::now();
        submit_many(&channel, &bundle, runs).await?;
        let rate = runs as f64 / began.elapsed().as_secs_f64();
        rust.push(rate);
        println!("round {round}: ferry-bench {rate:.0} runs/s");
        let rate = python_rate(python, &config, &folder, runs)?;
        sdk.push(rate);
        println!("round {round}: Python SDK  {rate:.0} runs/s");
        let cli_runs = runs.min(CLI_RUNS);
        let rate = cli_rate(&config, &folder, cli_runs)?;
        cli.push(rate);
        println!(
            "round {round}: ferry run   {rate:.0} runs/s ({cli_runs} processes, {CONCURRENCY} at a time)"
        );
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (rust, sdk, cli) = (median(&mut rust), median(&mut sdk), median(&mut cli));
    println!(
        "sdk-submissions: median ferry-bench {rust:.0} runs/s, Python SDK {sdk:.0} runs/s ({:.0} % of it), \
         ferry run {cli:.0} runs/s (the SDK {:.1}x it); load {}",
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

/// The SDK's rate from `submit_rate.py` (its own clock).
fn python_rate(python: &str, config: &Path, folder: &Path, runs: usize) -> anyhow::Result<f64> {
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
    answer["per_second"]
        .as_f64()
        .context("no per_second in the script's answer")
}
