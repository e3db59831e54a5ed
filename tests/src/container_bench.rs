//! `ferry-bench containers`: what Ferry adds to Docker's own container start,
//! measured in one run against the same engine, image and container settings.
//!
//! - The peer: containers made with the worker's own code and settings
//!   (`ferry_worker::container`: the same create request a step gets, then
//!   attach, start, wait, remove), called directly, with no coordinator.
//! - Ferry: one coordinator and one worker (4 CPUs, Docker) on this machine.
//!
//! The two sides take turns (latency trials alternate; the throughput runs go
//! peer, Ferry, Ferry, peer), so that load from elsewhere falls on both.
//! Latency: one container at a time; the container runs `ferry-stamp`, which
//! reads the clock first thing; the time from the first call (`create` for the
//! peer, `SubmitRun` for Ferry) to that reading. Throughput: `--steps` no-op
//! containers (`true`), 16 at a time on both sides (the worker's 4 CPUs at 0.25
//! CPU a step), from the first call to the last removal (the peer) or to the
//! run's end as the coordinator reports it (Ferry: read every 50 ms; reading
//! every 5 ms, 200 TLS calls a second, took CPU from the engine on this
//! 2-core machine and slowed Ferry's side by itself).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, control_client::ControlClient};
use ferry_worker::container::auth::RegistryAuths;
use ferry_worker::container::settings::{AttemptLabels, ContainerPlan, container_body};
use ferry_worker::container::{ContainerRuntimeMode, ContainerUser, DockerRuntime, PullPolicy};
use tonic::transport::Channel;

use crate::{CLIENT, Cluster, bin_dir, write_pipeline};

/// The image both sides run: Debian's minimal base with Python 3, built
/// locally by deploy/docker/build.sh.
const IMAGE: &str = "ferry/base:bookworm";
/// Containers at once in the throughput runs.
const CONCURRENCY: usize = 16;

/// Seconds since the epoch.
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn read_stamp(path: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("a stamp in {}: {text:?}", path.display()))
}

fn median_and_p90(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// The benchmark: prints the peer's and Ferry's figures and their ratios.
pub async fn run(steps: usize, trials: usize) -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::process::Command::new(repo.join("deploy/docker/build.sh"))
        .env("FERRY_BIN_DIR", bin_dir())
        .status()
        .context("deploy/docker/build.sh")?;
    anyhow::ensure!(built.success(), "deploy/docker/build.sh failed");
    let stamp = bin_dir().join("ferry-stamp");
    anyhow::ensure!(
        stamp.is_file(),
        "{} is missing: build the workspace",
        stamp.display()
    );

    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().join("peer");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(&stamp, dir.join("ferry-stamp"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    let nobody = ContainerUser {
        uid: 65534,
        gid: 65534,
    };
    let runtime = DockerRuntime::detect(
        ContainerRuntimeMode::Docker,
        Path::new("/var/run/docker.sock"),
        nobody,
        "bench",
        &format!("bench-{}", std::process::id()),
        RegistryAuths::default(),
    )
    .await?
    .context("no Docker")?;
    let runtime = Arc::new(runtime);
    let image = runtime
        .resolve_image(IMAGE, PullPolicy::Never)
        .await
        .map_err(anyhow::Error::msg)?;
    let plan = |command: Vec<String>, n: u64| ContainerPlan {
        image_id: image.id.clone(),
        command,
        env: Default::default(),
        work_dir: dir.clone(),
        extra_mounts: Vec::new(),
        user: nobody,
        cpu_millis: 250,
        memory_limit: Some(128 << 20),
        pids_max: 4096,
        shm_size_bytes: 0,
        network: "bridge".into(),
        read_only_root: false,
        gpu_devices: Vec::new(),
        labels: AttemptLabels {
            run: n,
            step: "bench".into(),
            attempt: 1,
            worker: "bench".into(),
            worker_id: runtime.worker_id.clone(),
        },
    };

    // Ferry's cluster, started first: the two sides then take turns (a peer
    // trial, a Ferry trial, ...), so that a change in the machine's load
    // falls on both alike.
    let mut cluster = Cluster::start();
    cluster.add_worker(
        "bench",
        "cpus = 4\nmemory = \"8Gi\"\ncontainer_runtime = \"docker\"\n",
    );
    cluster.wait_worker_connected("bench");
    let channel = client_channel(&cluster)?;
    let mut client = ControlClient::new(channel);
    let stamp_yaml = format!(
        "name: stamp\nparams: {{nonce: \"0\"}}\nsteps:\n  - name: stamp\n    image: {IMAGE}\n    image_pull: never\n    env: {{NONCE: \"${{params.nonce}}\"}}\n    command: [\"./ferry-stamp\", \"stamp.out\"]\n    outputs: [stamp.out]\n    resources: {{cpu: 0.25, memory: 64Mi}}\n"
    );
    let stamp_bundle = upload(
        &cluster,
        &scratch.path().join("stamp"),
        &stamp_yaml,
        &[("ferry-stamp", &stamp)],
    )?;
    let mut noops = "name: noops\nparams: {nonce: \"0\"}\nsteps:\n".to_string();
    for n in 0..steps {
        noops.push_str(&format!(
            "  - name: s{n}\n    image: {IMAGE}\n    image_pull: never\n    env: {{NONCE: \"${{params.nonce}}\"}}\n    command: [\"true\"]\n    resources: {{cpu: 0.25, memory: 64Mi}}\n"
        ));
    }
    let noops_bundle = upload(&cluster, &scratch.path().join("noops"), &noops, &[])?;

    // Latency, one container at a time: the first call to the stamp.
    let (mut peer_latency, mut ferry_latency) = (Vec::new(), Vec::new());
    for n in 0..trials {
        let out = dir.join(format!("stamp-{n}"));
        let command = vec![
            dir.join("ferry-stamp").display().to_string(),
            out.display().to_string(),
        ];
        let began = SystemTime::now();
        one_container(&runtime, &plan(command, n as u64)).await?;
        peer_latency.push((read_stamp(&out)? - unix_seconds(began)) * 1e3);

        let began = SystemTime::now();
        let run = submit(&mut client, &stamp_yaml, &stamp_bundle).await?;
        wait_run(&mut client, run).await?;
        let out = scratch.path().join(format!("ferry-stamp-{run}"));
        let got = cluster.ferry(&[
            "artifacts",
            "get",
            &run.to_string(),
            "stamp",
            "stamp.out",
            "-o",
            out.to_str().context("utf-8 path")?,
        ]);
        anyhow::ensure!(got.success(), "download the stamp: {got:?}");
        ferry_latency.push((read_stamp(&out)? - unix_seconds(began)) * 1e3);
    }

    // Throughput, `steps` no-ops 16 at a time: peer, Ferry, Ferry, peer.
    let (mut peer_rates, mut ferry_rates) = (Vec::new(), Vec::new());
    for ferry_turn in [false, true, true, false] {
        let began = Instant::now();
        if ferry_turn {
            let run = submit(&mut client, &noops, &noops_bundle).await?;
            wait_run(&mut client, run).await?;
            ferry_rates.push(steps as f64 / began.elapsed().as_secs_f64());
            continue;
        }
        let mut tasks = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        for n in 0..steps {
            let (runtime, slots) = (runtime.clone(), slots.clone());
            let plan = plan(vec!["true".into()], n as u64);
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await?;
                one_container(&runtime, &plan).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        peer_rates.push(steps as f64 / began.elapsed().as_secs_f64());
    }
    let peer_rate = peer_rates.iter().sum::<f64>() / peer_rates.len() as f64;
    let ferry_rate = ferry_rates.iter().sum::<f64>() / ferry_rates.len() as f64;

    let (peer_p50, peer_p90) = median_and_p90(peer_latency);
    let (ferry_p50, ferry_p90) = median_and_p90(ferry_latency);
    println!("containers: image {IMAGE}, the worker's own container settings on both sides");
    println!(
        "containers: start latency, first call to the container's clock, {trials} one after another: \
         Docker alone p50 {peer_p50:.0} ms p90 {peer_p90:.0} ms; Ferry p50 {ferry_p50:.0} ms p90 {ferry_p90:.0} ms \
         ({:+.0} % at p50)",
        (ferry_p50 / peer_p50 - 1.0) * 100.0
    );
    println!(
        "containers: {steps} no-op containers, {CONCURRENCY} at a time (peer, Ferry, Ferry, peer): \
         Docker alone {peer_rates:.1?}/s; Ferry {ferry_rates:.1?}/s; means {peer_rate:.1} and \
         {ferry_rate:.1}/s ({:.0} % of Docker's)",
        ferry_rate / peer_rate * 100.0
    );
    Ok(())
}

/// One container, as `docker run --rm` would: create, attach, start, wait for
/// its end, remove.
async fn one_container(runtime: &DockerRuntime, plan: &ContainerPlan) -> anyhow::Result<()> {
    use futures::StreamExt;
    let id = runtime
        .create(container_body(plan))
        .await
        .map_err(anyhow::Error::msg)?;
    let output = runtime.attach(&id).await.map_err(anyhow::Error::msg)?;
    let drain = tokio::spawn(async move {
        let mut output = std::pin::pin!(output);
        while output.next().await.is_some() {}
    });
    runtime.start(&id).await.map_err(anyhow::Error::msg)?;
    runtime.wait(&id).await;
    let _ = drain.await;
    runtime.remove(&id).await.map_err(anyhow::Error::msg)?;
    Ok(())
}

fn client_channel(cluster: &Cluster) -> anyhow::Result<Channel> {
    let tls = TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert(CLIENT),
        key: cluster.pki.key(CLIENT),
    }
    .load()?;
    Ok(ferry_common::channel::endpoint(&cluster.address(), &tls)?.connect_lazy())
}

/// Uploads a pipeline folder's bundle with one run through the CLI; its digest.
fn upload(
    cluster: &Cluster,
    dir: &Path,
    yaml: &str,
    files: &[(&str, &PathBuf)],
) -> anyhow::Result<String> {
    let pipeline = write_pipeline(dir, yaml, &[]);
    for (name, source) in files {
        std::fs::copy(source, dir.join(name))?;
    }
    let run = cluster.submit(&pipeline, &["--no-cache"]);
    cluster.wait_run(run, Duration::from_secs(300));
    Ok(ferry_common::bundle::pack_dir(dir)?.digest)
}

/// The nonce of the next run this benchmark submits.
static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

async fn submit(
    client: &mut ControlClient<Channel>,
    yaml: &str,
    bundle: &str,
) -> anyhow::Result<u64> {
    let request = proto::SubmitRunRequest {
        spec_yaml: yaml.to_string(),
        spec_file: "pipeline.yaml".into(),
        // A fresh nonce per run: every step has a key no earlier run made,
        // so it runs, on the default path (the run reads the cache, and a
        // step with an image reports its resolved ID before it runs).
        params: [(
            "nonce".to_string(),
            NONCE
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        )]
        .into(),
        bundle_digest: bundle.to_string(),
        request_id: String::new(),
        no_cache: false,
    };
    Ok(client.submit_run(request).await?.into_inner().run_id)
}

/// Waits for a run's end (read every 50 ms: at most 50 ms late on a run of
/// seconds, and few enough calls not to take the engine's CPU); an error
/// unless it succeeded.
async fn wait_run(client: &mut ControlClient<Channel>, run_id: u64) -> anyhow::Result<()> {
    loop {
        let request = proto::GetRunRequest {
            run_id,
            stale: true,
            ..Default::default()
        };
        let run = client.get_run(request).await?.into_inner();
        let state = run.summary.map(|s| s.state).unwrap_or_default();
        match state.as_str() {
            "succeeded" => return Ok(()),
            "running" | "queued" => tokio::time::sleep(Duration::from_millis(50)).await,
            other => anyhow::bail!("run {run_id} ended {other}"),
        }
    }
}
