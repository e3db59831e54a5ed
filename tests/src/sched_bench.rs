//! `ferry-bench chain` and `ferry-bench backlog`: what scheduling costs.
//!
//! - `chain --steps N`: one coordinator and one worker run a chain of `N` no-op
//!   steps (`true`, each needing the one before). Steps/s along the chain, and the
//!   hop gap (a step's start minus its dependency's end, both as the leader
//!   applied them), beside this machine's raw process-start rate measured in the
//!   same run (`true` spawned and waited for, one at a time).
//! - `backlog --queued 1000,10000,100000`: one coordinator and one worker (2 CPUs)
//!   held by a blocker step (`sleep`, 2 CPUs, priority 10) while one-step no-op
//!   runs queue behind it. At each level: submissions/s (the last 500
//!   submissions before the level is reached, 16 at a time), the idle leader's CPU
//!   (5 s of `/proc/<pid>/stat` with nothing placeable), and drain/s (the blocker
//!   cancelled: runs finished per second over the oldest 2,000 or fewer; the
//!   worker is then cordoned, a new blocker placed and the worker uncordoned).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, control_client::ControlClient};
use tonic::transport::Channel;

use crate::procfs::cpu_ticks;
use crate::{CLIENT, Cluster, write_pipeline};

const NOOP: &str = "name: noop\nsteps:\n  - name: s\n    command: [\"true\"]\n    cache: false\n    resources: {cpu: 0.1, memory: 16Mi}\n";
const BLOCKER: &str = "name: blocker\npriority: 10\nsteps:\n  - name: hold\n    command: [\"sleep\", \"3600\"]\n    cache: false\n    resources: {cpu: 2, memory: 16Mi}\n";
/// Submissions timed at each backlog level, and submissions at once.
const SAMPLE: usize = 500;
const CONCURRENCY: usize = 16;

fn client_channel(cluster: &Cluster) -> anyhow::Result<Channel> {
    let tls = TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert(CLIENT),
        key: cluster.pki.key(CLIENT),
    }
    .load()?;
    Ok(ferry_common::channel::endpoint(&cluster.address(), &tls)?.connect_lazy())
}

/// Uploads the pipeline folder's bundle with one run through the CLI (waited
/// for); the bundle's digest.
fn upload(cluster: &Cluster, dir: &Path, yaml: &str) -> anyhow::Result<String> {
    let pipeline = write_pipeline(dir, yaml, &[]);
    let run = cluster.submit(&pipeline, &["--no-cache"]);
    cluster.wait_run(run, Duration::from_secs(300));
    Ok(ferry_common::bundle::pack_dir(dir)?.digest)
}

fn request(yaml: &str, bundle: &str) -> proto::SubmitRunRequest {
    proto::SubmitRunRequest {
        spec_yaml: yaml.to_string(),
        spec_file: "pipeline.yaml".into(),
        params: Default::default(),
        bundle_digest: bundle.to_string(),
        request_id: String::new(),
        no_cache: true,
    }
}

async fn get_run(
    client: &mut ControlClient<Channel>,
    run_id: u64,
) -> anyhow::Result<proto::RunView> {
    let request = proto::GetRunRequest {
        run_id,
        stale: true,
        ..Default::default()
    };
    Ok(client.get_run(request).await?.into_inner())
}

fn run_state(view: &proto::RunView) -> String {
    view.summary
        .as_ref()
        .map(|s| s.state.clone())
        .unwrap_or_default()
}

/// Polls the run every `every` until it ends; an error unless it succeeded.
async fn wait_succeeded(
    client: &mut ControlClient<Channel>,
    run_id: u64,
    every: Duration,
) -> anyhow::Result<proto::RunView> {
    let began = Instant::now();
    loop {
        let view = get_run(client, run_id).await?;
        match run_state(&view).as_str() {
            "succeeded" => return Ok(view),
            "running" | "queued" => tokio::time::sleep(every).await,
            other => anyhow::bail!("run {run_id} ended {other}"),
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(1800),
            "run {run_id} did not end in 30 minutes"
        );
    }
}

/// `true` spawned and waited for, one at a time, for two seconds: per second.
fn sequential_spawn_rate() -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let began = Instant::now();
    let mut count = 0u64;
    while began.elapsed() < Duration::from_secs(2) {
        std::process::Command::new("true")
            .current_dir(dir.path())
            .status()?;
        count += 1;
    }
    Ok(count as f64 / began.elapsed().as_secs_f64())
}

fn percentile(values: &mut [i64], q: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Runs `ferry-bench chain` or `backlog` when the first argument names one
/// (with their own options: `--steps N`, `--queued N,N,...`); false otherwise.
pub fn dispatch() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(what) = args.first().filter(|a| *a == "chain" || *a == "backlog") else {
        return Ok(false);
    };
    let mut steps = 1000;
    let mut levels = vec![1_000, 10_000, 100_000];
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--steps" => steps = value.parse().context("--steps needs a number")?,
            "--queued" => {
                levels = value
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--queued needs numbers separated by commas")?;
            }
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: ferry-bench chain [--steps N] | \
                 backlog [--queued N,N,...]"
            ),
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if what == "chain" {
        runtime.block_on(chain(steps))?;
    } else {
        runtime.block_on(backlog(&levels))?;
    }
    Ok(true)
}

/// `ferry-bench chain`.
pub async fn chain(steps: usize) -> anyhow::Result<()> {
    let raw = sequential_spawn_rate()?;
    println!("chain: this machine starts and waits for {raw:.0} `true` processes/s, one at a time");
    let mut cluster = Cluster::start();
    cluster.add_worker("bench", "cpus = 2\nmemory = \"4Gi\"\n");
    cluster.wait_worker_connected("bench");
    let mut yaml = "name: chain\nsteps:\n".to_string();
    for i in 0..steps {
        yaml.push_str(&format!(
            "  - name: s{i}\n    command: [\"true\"]\n    cache: false\n    resources: {{cpu: 0.1, memory: 16Mi}}\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    let bundle = upload(&cluster, &cluster.path("noop"), NOOP)?;
    let mut client = ControlClient::new(client_channel(&cluster)?);
    let began = Instant::now();
    let run = client
        .submit_run(request(&yaml, &bundle))
        .await?
        .into_inner()
        .run_id;
    let view = wait_succeeded(&mut client, run, Duration::from_millis(20)).await?;
    let wall = began.elapsed().as_secs_f64();
    let mut gaps = Vec::new();
    for pair in view.steps.windows(2) {
        gaps.push(pair[1].started_ms - pair[0].finished_ms);
    }
    let first = view.steps.first().map(|s| s.started_ms).unwrap_or_default();
    let last = view.steps.last().map(|s| s.finished_ms).unwrap_or_default();
    let along = (last - first).max(1) as f64 / 1000.0;
    println!(
        "chain: {steps} steps in {wall:.2} s from submission to the end seen = {:.0} steps/s; \
         first start to last end (leader's times) {along:.2} s = {:.0} steps/s; \
         {:.0} % of the raw process-start rate",
        steps as f64 / wall,
        steps as f64 / along,
        100.0 * steps as f64 / along / raw
    );
    println!(
        "chain: hop gap (start minus the dependency's end, as applied) p50 {} ms, p90 {} ms, max {} ms",
        percentile(&mut gaps, 0.5),
        percentile(&mut gaps, 0.9),
        percentile(&mut gaps, 1.0)
    );
    Ok(())
}

/// Submits `count` no-op runs, `CONCURRENCY` at a time; their ids in order.
async fn submit_many(channel: &Channel, bundle: &str, count: usize) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::with_capacity(count);
    let mut tasks = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..CONCURRENCY.min(count) {
        let mut client = ControlClient::new(channel.clone());
        let request = request(NOOP, bundle);
        let next = next.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                mine.push(
                    client
                        .submit_run(request.clone())
                        .await?
                        .into_inner()
                        .run_id,
                );
            }
            Ok::<_, tonic::Status>(mine)
        });
    }
    while let Some(result) = tasks.join_next().await {
        ids.extend(result??);
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Submits a blocker and waits until its step runs.
async fn place_blocker(client: &mut ControlClient<Channel>, bundle: &str) -> anyhow::Result<u64> {
    let run = client
        .submit_run(request(BLOCKER, bundle))
        .await?
        .into_inner()
        .run_id;
    wait_running(client, run).await?;
    Ok(run)
}

/// `ferry-bench backlog`.
pub async fn backlog(levels: &[usize]) -> anyhow::Result<()> {
    let mut cluster = Cluster::start();
    cluster.add_worker("bench", "cpus = 2\nmemory = \"4Gi\"\n");
    cluster.wait_worker_connected("bench");
    let pid = cluster.coordinators[0]
        .daemon
        .as_ref()
        .context("the coordinator")?
        .pid();
    let bundle = upload(&cluster, &cluster.path("noop"), NOOP)?;
    let channel = client_channel(&cluster)?;
    let mut client = ControlClient::new(channel.clone());
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut blocker = place_blocker(&mut client, &bundle).await?;
    // Queued runs, oldest first.
    let mut queued: std::collections::VecDeque<u64> = Default::default();
    println!("backlog: 1 coordinator (pid {pid}), 1 worker (2 CPUs) held by a 2-CPU blocker");
    println!("| queued runs | submissions/s | idle leader CPU | drain runs/s |");
    println!("|---:|---:|---:|---:|");
    for &level in levels {
        let fill = level.saturating_sub(queued.len()).saturating_sub(SAMPLE);
        queued.extend(submit_many(&channel, &bundle, fill).await?);
        let sample = level.saturating_sub(queued.len());
        let began = Instant::now();
        queued.extend(submit_many(&channel, &bundle, sample).await?);
        let submissions = sample as f64 / began.elapsed().as_secs_f64();

        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = cpu_ticks(pid)?;
        let began = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu =
            (cpu_ticks(pid)? - before) as f64 / ticks_per_second / began.elapsed().as_secs_f64();

        let drain = queued.len().min(2000);
        let target = queued[drain - 1];
        let began = Instant::now();
        let cancel = cluster.ferry(&["cancel", &blocker.to_string()]);
        anyhow::ensure!(cancel.success(), "cancel: {cancel:?}");
        wait_succeeded(&mut client, target, Duration::from_millis(20)).await?;
        let drained = drain as f64 / began.elapsed().as_secs_f64();
        let cordon = cluster.ferry(&["workers", "cordon", "bench"]);
        anyhow::ensure!(cordon.success(), "cordon: {cordon:?}");
        // What was placed before the cordon finishes; the oldest still queued.
        tokio::time::sleep(Duration::from_secs(2)).await;
        while let Some(id) = queued.front().copied() {
            if run_state(&get_run(&mut client, id).await?) == "succeeded" {
                queued.pop_front();
            } else {
                break;
            }
        }
        // The blocker, of a higher priority, is placed first on the empty
        // worker and leaves no room for the rest.
        blocker = client
            .submit_run(request(BLOCKER, &bundle))
            .await?
            .into_inner()
            .run_id;
        let uncordon = cluster.ferry(&["workers", "uncordon", "bench"]);
        anyhow::ensure!(uncordon.success(), "uncordon: {uncordon:?}");
        wait_running(&mut client, blocker).await?;
        while let Some(id) = queued.front().copied() {
            let view = get_run(&mut client, id).await?;
            if view.steps.first().is_some_and(|s| s.state == "queued") {
                break;
            }
            queued.pop_front();
        }
        println!(
            "| {level} | {submissions:.0} | {:.1} % | {drained:.0} |",
            cpu * 100.0
        );
    }
    Ok(())
}

/// Waits until the run's first step runs.
async fn wait_running(client: &mut ControlClient<Channel>, run: u64) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        let view = get_run(client, run).await?;
        if view.steps.first().is_some_and(|s| s.state == "running") {
            return Ok(());
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(300),
            "the blocker did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
