//! `ferry-bench`: measures the replicated coordinator on real processes, as the
//! numbers in BENCHMARKS.md were measured.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/ferry-bench [commit|failover|graceful|steps|latency|cache|all]
//!     [--seconds N] [--clients N] [--trials N] [--runs N] [--steps N] [--sweeps N]
//! target/release/ferry-bench chaos [--seconds N] [--seed N] [--members N] [--clients N]
//! target/release/ferry-bench containers [--steps N] [--trials N]   # needs Docker
//! target/release/ferry-bench artifacts [--mib N] [--members N]      # see artifact_bench.rs
//! target/release/ferry-bench artifact-stages [--mib N] [--members N] # each stage alone
//!     (FERRY_BENCH_WIRE_ONLY=1: only the wire stage, three times)
//! target/release/ferry-bench chain [--steps 1000] | backlog [--queued 1000,10000,100000]
//! target/release/ferry-bench sdk-submissions [--runs 1000] [--rounds 2] [--python PATH]
//! cargo build --release -p ferry-tests --features etcd   # needs protoc
//! target/release/ferry-bench etcd [--seconds N] [--clients N] [--members N]
//!     [--value-bytes N] [--tls] [--etcd-binary PATH]
//! ```
//!
//! - `commit`: many concurrent clients submit one-step runs to a 3-member cluster
//!   for N seconds; prints commands committed per second and commit latency.
//! - `failover`: SIGKILL the leader while a writer retries across the members;
//!   prints the time until the first acknowledged write, per trial and median.
//! - `graceful`: SIGTERM the leader while writers run; prints the longest gap
//!   between acknowledged writes around the stop (write unavailability).
//! - `steps`: three coordinators and two workers on this machine run `--runs`
//!   runs of `--steps` independent no-op steps (`true`) submitted at once;
//!   prints steps per second from the first submission to the last run's end.
//! - `latency`: on an idle cluster (three coordinators, two workers), one-step
//!   runs submitted one after another; the step is `ferry-stamp FILE` (a tiny
//!   program built beside this one), which reads the precise clock first thing
//!   and writes it to FILE, and the time
//!   from the submission to that clock reading is the submit-to-start latency
//!   (signed, never clamped). Prints min, p50, p99 and max, what the stamp's own
//!   start costs without Ferry, and the median run's phases.
//! - `cache`: on the same kind of cluster, a chain of `--steps` cheap steps is run
//!   once (which fills the cache), then submitted again `--trials` times one
//!   after another; each is completed from the cache when its submission is
//!   applied. Prints the `SubmitRun` call, the first `GetRun` after it and the
//!   whole submit-to-succeeded time (p50, p90, p99, max), and how often that first
//!   read already said `succeeded`. Then, `--sweeps` times each (runs cancelled at
//!   once): the same chain submitted with `no_cache`, for comparison, and a
//!   1,000-trial sweep (`cache: false`), whose `SubmitRun` call expands, validates
//!   and replicates the 1,000 steps.
//! - `chaos` (not part of `all`; needs root for its network namespaces): the
//!   nemesis of `ferry_tests::chaos` (kills, restarts, partitions, flaky links,
//!   heals, chosen from `--seed`, default from the clock) for `--seconds` (default
//!   10) against `--members` coordinators while `--clients` clients (default 3)
//!   submit and count runs; prints every action, the checker's verdict on the
//!   history and whether the members converged; exits non-zero when either fails.
//! - `containers` (not part of `all`; needs Docker): `--steps` no-op container
//!   steps and `--trials` stamped ones against the same containers made directly
//!   (`ferry_tests::container_bench`).
//! - `logs` (not part of `all`): a 200 MB printer as a step against a pipe, the
//!   coordinator's disk and memory, 10 readers, `logs -f` lag (`logs_bench`).
//! - `etcd` (not part of `all`; needs the `etcd` feature and an installed `etcd`):
//!   `commit`'s load, the same loop on the same connections, as puts of
//!   `--value-bytes` to new keys of an etcd cluster it starts (see `etcd.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, control_client::ControlClient};
use ferry_tests::load::{self, percentile};
use ferry_tests::{CLIENT, Cluster, wait_for, write_pipeline};
use tonic::transport::Channel;

const PIPELINE: &str = "name: bench\nsteps:\n  - name: noop\n    command: [\"true\"]\n";

struct Options {
    what: String,
    members: u64,
    seconds: u64,
    clients: usize,
    trials: usize,
    /// `[raft] snapshot_every` for the commit benchmark's cluster (default 10000).
    snapshot_every: Option<u64>,
    runs: usize,
    steps: usize,
    /// Submissions of the 1,000-trial sweep, and of the uncached chain it is
    /// compared with, in the cache benchmark.
    sweeps: usize,
    /// The chaos nemesis's seed (None: from the clock).
    seed: Option<u64>,
    /// Whether `--clients` was given (the chaos run's default differs).
    clients_given: bool,
    /// The size of each value `etcd` puts.
    value_bytes: usize,
    /// Whether the etcd members and clients talk mutual TLS.
    etcd_tls: bool,
    /// The `etcd` binary to run.
    etcd_binary: std::path::PathBuf,
    /// The artifact's size for `artifacts`.
    mib: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        what: "all".to_string(),
        members: 3,
        seconds: 10,
        clients: 256,
        trials: 10,
        snapshot_every: None,
        runs: 50,
        steps: 100,
        sweeps: 10,
        seed: None,
        clients_given: false,
        value_bytes: ETCD_VALUE_BYTES,
        etcd_tls: false,
        etcd_binary: "etcd".into(),
        mib: 1024,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> anyhow::Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--seconds" => options.seconds = number("--seconds")?,
            "--clients" => {
                options.clients = number("--clients")? as usize;
                options.clients_given = true;
            }
            "--seed" => options.seed = Some(number("--seed")?),
            "--trials" => options.trials = number("--trials")? as usize,
            "--members" => options.members = number("--members")?,
            "--snapshot-every" => options.snapshot_every = Some(number("--snapshot-every")?),
            "--runs" => options.runs = number("--runs")? as usize,
            "--steps" => options.steps = number("--steps")? as usize,
            "--sweeps" => options.sweeps = number("--sweeps")? as usize,
            "--value-bytes" => options.value_bytes = number("--value-bytes")? as usize,
            "--tls" => options.etcd_tls = true,
            "--mib" => options.mib = number("--mib")?,
            "--etcd-binary" => {
                options.etcd_binary = args.next().context("--etcd-binary needs a path")?.into()
            }
            "commit" | "failover" | "graceful" | "steps" | "latency" | "cache" | "chaos"
            | "etcd" | "containers" | "artifacts" | "artifact-stages" | "logs" | "all" => {
                options.what = arg
            }
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: ferry-bench \
                 [commit|failover|graceful|steps|latency|cache|chaos|etcd|containers|artifacts|artifact-stages|logs|all] [--seconds N] \
                 [--clients N] [--trials N] [--members N] [--snapshot-every N] [--runs N] \
                 [--steps N] [--sweeps N] [--seed N] [--value-bytes N] [--tls] \
                 [--etcd-binary PATH] [--mib N]"
            ),
        }
    }
    Ok(options)
}

/// Connections to every member, and a submission ready to send.
struct Bench {
    channels: Vec<(u64, Channel)>,
    request: proto::SubmitRunRequest,
}

impl Bench {
    async fn new(cluster: &Cluster) -> anyhow::Result<Bench> {
        // Upload the bundle once through the CLI, as a user would.
        let dir = cluster.path("bench-pipeline");
        let pipeline = write_pipeline(&dir, PIPELINE, &[]);
        cluster.submit(&pipeline, &[]);
        let bundle = ferry_common::bundle::pack_dir(&dir)?;
        let tls = TlsFiles {
            ca: cluster.pki.ca(),
            cert: cluster.pki.cert(CLIENT),
            key: cluster.pki.key(CLIENT),
        }
        .load()?;
        let mut channels = Vec::new();
        for member in &cluster.coordinators {
            let channel = ferry_common::channel::endpoint(&member.address(), &tls)?
                .connect_timeout(Duration::from_millis(200))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            channels.push((member.id, channel));
        }
        Ok(Bench {
            channels,
            request: proto::SubmitRunRequest {
                spec_yaml: PIPELINE.to_string(),
                spec_file: "pipeline.yaml".to_string(),
                params: Default::default(),
                bundle_digest: bundle.digest,
                request_id: String::new(),
                no_cache: true,
            },
        })
    }

    fn client(&self, id: u64) -> ControlClient<Channel> {
        let channel = self
            .channels
            .iter()
            .find(|(member, _)| *member == id)
            .map(|(_, channel)| channel.clone())
            .expect("member");
        ControlClient::new(channel)
    }

    /// One submission to any member but `avoid`, trying them in turn until one
    /// acknowledges it or `deadline` passes.
    async fn submit_anywhere(&self, avoid: &[u64], deadline: Instant) -> Option<Instant> {
        let mut turn = 0usize;
        while Instant::now() < deadline {
            let (id, channel) = &self.channels[turn % self.channels.len()];
            turn += 1;
            if avoid.contains(id) {
                continue;
            }
            let mut client = ControlClient::new(channel.clone());
            let call = client.submit_run(self.request.clone());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), call).await {
                return Some(Instant::now());
            }
        }
        None
    }

    async fn leader(&self) -> anyhow::Result<u64> {
        for _ in 0..100 {
            for (id, _) in &self.channels {
                let mut client = self.client(*id);
                if let Ok(Ok(status)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.cluster_status(proto::ClusterStatusRequest {}),
                )
                .await
                {
                    let leader = status.into_inner().leader_id;
                    if leader != 0 {
                        return Ok(leader);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("no leader found")
    }
}

async fn bench_commit(options: &Options) -> anyhow::Result<()> {
    let extra = options
        .snapshot_every
        .map(|n| format!("[raft]\nsnapshot_every = {n}\n"))
        .unwrap_or_default();
    let cluster = Cluster::start_replicated(options.members, &extra);
    let bench = Arc::new(Bench::new(&cluster).await?);
    let leader = bench.leader().await?;
    println!(
        "commit: {} members (leader {leader}), {} concurrent clients on {CONNECTIONS} connections to the leader, {} s",
        options.members, options.clients, options.seconds
    );
    // Clients share a few HTTP/2 connections, as many processes behind a few
    // proxies would.
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let tls = TlsFiles {
            ca: cluster.pki.ca(),
            cert: cluster.pki.cert(CLIENT),
            key: cluster.pki.key(CLIENT),
        }
        .load()?;
        let address = cluster.coordinators[(leader - 1) as usize].address();
        connections.push(
            ferry_common::channel::endpoint(&address, &tls)?
                .connect()
                .await?,
        );
    }
    let callers = (0..options.clients)
        .map(|n| SubmitCaller {
            client: ControlClient::new(connections[n % connections.len()].clone()),
            request: bench.request.clone(),
        })
        .collect();
    let log_before = raft_log_bytes(&cluster, leader);
    let report = load::run("commit", "commands", callers, options.seconds).await?;
    let log_grew = raft_log_bytes(&cluster, leader).saturating_sub(log_before);
    report.print_seconds();
    // `FERRY_BENCH_LOGS`: a folder to copy the coordinators' logs into, to line the
    // per-second latency up with their events (the cluster's folder goes at the end).
    if let Some(dir) = std::env::var_os("FERRY_BENCH_LOGS") {
        std::fs::create_dir_all(&dir)?;
        for member in &cluster.coordinators {
            let log = cluster.member_log(member.id);
            let role = if member.id == leader {
                "leader"
            } else {
                "follower"
            };
            std::fs::write(
                std::path::Path::new(&dir).join(format!("coordinator-{}-{role}.log", member.id)),
                log,
            )?;
        }
    }
    // What one acknowledged command costs in the Raft log (its JSON in an entry of
    // many, with the entry's and the records' framing): the size to give `etcd`'s
    // values (`--value-bytes`) for a like-for-like comparison.
    println!(
        "commit: the leader's Raft log grew by {log_grew} bytes = {:.0} bytes per acknowledged command (data under {})",
        log_grew as f64 / report.latencies.len().max(1) as f64,
        cluster.root.path().display(),
    );
    report.print_summary("commit", "commands");
    Ok(())
}

/// The benchmark's client connections to a leader (Ferry's or etcd's).
const CONNECTIONS: usize = 8;

/// One client of the commit load: `SubmitRun` of a one-step run, again and again.
struct SubmitCaller {
    client: ControlClient<Channel>,
    request: proto::SubmitRunRequest,
}

impl load::Caller for SubmitCaller {
    async fn call(&mut self) -> bool {
        self.client.submit_run(self.request.clone()).await.is_ok()
    }
}

/// The bytes in a member's Raft log segments (its write-ahead log folder).
fn raft_log_bytes(cluster: &Cluster, id: u64) -> u64 {
    let dir = cluster.path(&format!("coordinator-{id}-data/raft-log"));
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The default size of an etcd value: with its key (about 20 bytes), about what
/// one acknowledged `SubmitRun` of the commit benchmark adds to Ferry's Raft log
/// (`commit` prints it: 476 bytes on 2026-12-06).
const ETCD_VALUE_BYTES: usize = 450;

/// `etcd`: the commit benchmark's load (the same loop, the same number of clients
/// on the same number of connections to the leader) as puts to an etcd cluster.
#[cfg(feature = "etcd")]
async fn bench_etcd(options: &Options) -> anyhow::Result<()> {
    use ferry_tests::etcd::{EtcdCluster, PutCaller};
    let members = options.members as usize;
    let cluster = EtcdCluster::start(&options.etcd_binary, members, options.etcd_tls).await?;
    let leader = cluster.leader().await?;
    let pids: Vec<String> = (0..members).map(|m| cluster.pid(m).to_string()).collect();
    println!(
        "etcd: {members} members (leader m{leader}; pids {}), {}, {} concurrent clients on {CONNECTIONS} connections to the leader, puts of {} bytes to new keys, {} s; data under {}",
        pids.join(", "),
        if options.etcd_tls {
            "mutual TLS"
        } else {
            "plain HTTP/2, no TLS"
        },
        options.clients,
        options.value_bytes,
        options.seconds,
        cluster.root().display(),
    );
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(cluster.connect(leader).await?);
    }
    // Printable bytes, as Ferry's JSON commands are; etcd compresses nothing.
    let value: Vec<u8> = (0..options.value_bytes)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect();
    let mut callers = Vec::new();
    for n in 0..options.clients {
        let channel = connections[n % connections.len()].clone();
        callers.push(PutCaller::new(channel, n, value.clone()).await?);
    }
    let report = load::run("etcd", "puts", callers, options.seconds).await?;
    report.print_seconds();
    if let Some(dir) = std::env::var_os("FERRY_BENCH_LOGS") {
        std::fs::create_dir_all(&dir)?;
        for member in 0..members {
            let role = if member == leader {
                "leader"
            } else {
                "follower"
            };
            std::fs::copy(
                cluster.log_path(member),
                std::path::Path::new(&dir).join(format!("etcd-m{member}-{role}.log")),
            )?;
        }
    }
    report.print_summary("etcd", "puts");
    Ok(())
}

#[cfg(not(feature = "etcd"))]
async fn bench_etcd(_options: &Options) -> anyhow::Result<()> {
    anyhow::bail!(
        "this ferry-bench was built without etcd support: \
         cargo build --release -p ferry-tests --features etcd (needs protoc on the PATH)"
    )
}

/// Restarts a stopped member and waits until it follows and has caught up.
async fn rejoin(cluster: &mut Cluster, bench: &Bench, id: u64) -> anyhow::Result<()> {
    cluster.kill_member(id);
    cluster.spawn_coordinator(id, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = bench.client(id);
        if let Ok(Ok(status)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.cluster_status(proto::ClusterStatusRequest {}),
        )
        .await
        {
            let status = status.into_inner();
            let all_caught_up = status.members.len() == 3
                && status.members.iter().all(|m| m.reachable && m.lag == 0);
            if status.leader_id != 0 && all_caught_up {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "member {id} did not rejoin");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bench_failover(options: &Options) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_replicated(3, "");
    let bench = Bench::new(&cluster).await?;
    let mut times = Vec::new();
    for trial in 1..=options.trials {
        // Settle: every member up and caught up, a second of steady leadership.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = bench.leader().await?;
        bench
            .submit_anywhere(&[], Instant::now() + Duration::from_secs(10))
            .await
            .context("the cluster accepts writes before the kill")?;
        cluster.signal_member(leader, nix::sys::signal::Signal::SIGKILL);
        let killed = Instant::now();
        let acked = bench
            .submit_anywhere(&[leader], killed + Duration::from_secs(30))
            .await
            .context("no write was acknowledged after the leader died")?;
        let took = acked - killed;
        println!(
            "failover trial {trial}: leader {leader} SIGKILLed, first acknowledged write after {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        rejoin(&mut cluster, &bench, leader).await?;
    }
    times.sort();
    println!(
        "failover: {} trials, median {:.0} ms, min {:.0} ms, max {:.0} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        times.first().copied().unwrap_or_default().as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn bench_graceful(options: &Options) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_replicated(3, "");
    let bench = Arc::new(Bench::new(&cluster).await?);
    let trials = options.trials.min(5);
    let mut gaps = Vec::new();
    for trial in 1..=trials {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = bench.leader().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (bench, stop) = (bench.clone(), stop.clone());
            writers.spawn(async move {
                let mut acks = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    if let Some(at) = bench.submit_anywhere(&[leader], deadline).await {
                        acks.push(at);
                    }
                }
                acks
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.signal_member(leader, nix::sys::signal::Signal::SIGTERM);
        let stopped = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acks = Vec::new();
        while let Some(result) = writers.join_next().await {
            acks.append(&mut result?);
        }
        acks.sort();
        let window_start = stopped - Duration::from_millis(200);
        let mut previous = acks
            .iter()
            .rev()
            .find(|at| **at <= window_start)
            .copied()
            .unwrap_or(window_start);
        let mut longest = Duration::ZERO;
        for at in acks.iter().filter(|at| **at > window_start) {
            longest = longest.max(*at - previous);
            previous = *at;
        }
        println!(
            "graceful trial {trial}: leader {leader} SIGTERMed; longest gap between acknowledged writes {:.1} ms ({} writes in the window)",
            longest.as_secs_f64() * 1e3,
            acks.iter().filter(|at| **at > window_start).count()
        );
        gaps.push(longest);
        wait_for(
            Duration::from_secs(15),
            "the stopped leader to exit",
            || cluster.member_exited(leader).then_some(()),
        );
        rejoin(&mut cluster, &bench, leader).await?;
    }
    gaps.sort();
    println!(
        "graceful: {} trials, median unavailability {:.1} ms, max {:.1} ms",
        gaps.len(),
        percentile(&gaps, 0.5).as_secs_f64() * 1e3,
        gaps.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Three coordinators and two roomy workers (each takes 64 no-op steps at once).
fn step_cluster() -> Cluster {
    let mut cluster = Cluster::start_replicated(3, "");
    for name in ["w1", "w2"] {
        cluster.add_worker(name, "cpus = 32\nmemory = \"32Gi\"");
    }
    cluster
}

/// The benchmark's connections, the leader's id and a client channel to it.
async fn connect_to_leader(cluster: &Cluster) -> anyhow::Result<(Bench, u64, Channel)> {
    let bench = Bench::new(cluster).await?;
    let leader = bench.leader().await?;
    let channel = client_channel(
        cluster,
        &cluster.coordinators[(leader - 1) as usize].address(),
    )?;
    Ok((bench, leader, channel))
}

fn client_channel(cluster: &Cluster, address: &str) -> anyhow::Result<Channel> {
    let tls = TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert(CLIENT),
        key: cluster.pki.key(CLIENT),
    }
    .load()?;
    Ok(ferry_common::channel::endpoint(address, &tls)?.connect_lazy())
}

/// Uploads the pipeline folder's bundle through the CLI (one run, its `out` a file
/// beside the folder, never a device: the step renames over it); returns its digest.
fn upload_bundle(cluster: &Cluster, dir: &std::path::Path, yaml: &str) -> anyhow::Result<String> {
    let pipeline = write_pipeline(dir, yaml, &[]);
    let out = format!("out={}", dir.with_extension("first-run").display());
    let run = cluster.submit(&pipeline, &["--param", &out]);
    cluster.wait_run(run, Duration::from_secs(60));
    Ok(ferry_common::bundle::pack_dir(dir)?.digest)
}

/// How many `true` processes this machine starts and reaps per second right now,
/// without Ferry: four threads spawning the way a worker does (own process group,
/// a working directory), for two seconds.
fn raw_spawn_rate() -> anyhow::Result<f64> {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir()?;
    let until = Instant::now() + Duration::from_secs(2);
    let began = Instant::now();
    let spawned: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0u64;
                    while Instant::now() < until {
                        let status = std::process::Command::new("true")
                            .current_dir(dir.path())
                            .process_group(0)
                            .status();
                        if status.is_ok() {
                            count += 1;
                        }
                    }
                    count
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    Ok(spawned as f64 / began.elapsed().as_secs_f64())
}

async fn bench_steps(options: &Options) -> anyhow::Result<()> {
    let raw = raw_spawn_rate()?;
    println!("steps: this machine starts {raw:.0} `true` processes/s right now without Ferry");
    let cluster = step_cluster();
    let mut yaml = "name: noops\nparams:\n  out: \"\"\nsteps:\n".to_string();
    for i in 0..options.steps {
        yaml.push_str(&format!("  - name: s{i}\n    command: [\"true\"]\n"));
    }
    let bundle = upload_bundle(&cluster, &cluster.path("noops"), &yaml)?;
    let (bench, leader, channel) = connect_to_leader(&cluster).await?;
    let total = options.runs * options.steps;
    println!(
        "steps: 3 coordinators (leader {leader}), 2 workers; {} runs × {} no-op steps = {total} steps",
        options.runs, options.steps
    );
    let request = proto::SubmitRunRequest {
        spec_yaml: yaml.clone(),
        spec_file: "pipeline.yaml".to_string(),
        params: Default::default(),
        bundle_digest: bundle,
        request_id: String::new(),
        // Every run is the same no-op pipeline: measure scheduling, not the cache.
        no_cache: true,
    };
    let began = Instant::now();
    let mut submissions = tokio::task::JoinSet::new();
    for _ in 0..options.runs {
        let mut client = ControlClient::new(channel.clone());
        let request = request.clone();
        submissions.spawn(async move {
            client
                .submit_run(request)
                .await
                .map(|r| r.into_inner().run_id)
        });
    }
    let mut runs = Vec::new();
    while let Some(result) = submissions.join_next().await {
        runs.push(result??);
    }
    let submitted = began.elapsed();
    // Progress is read from a follower's own copy, so that watching costs the
    // leader nothing.
    let follower = bench
        .channels
        .iter()
        .find(|(id, _)| *id != leader)
        .map(|(_, channel)| channel.clone())
        .expect("a follower");
    let mut client = ControlClient::new(follower);
    let mut last_print = Instant::now();
    loop {
        let listing = client
            .list_runs(proto::ListRunsRequest {
                stale: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let ours: Vec<&proto::RunSummary> = listing
            .runs
            .iter()
            .filter(|r| runs.contains(&r.run_id))
            .collect();
        let done: u32 = ours.iter().map(|r| r.steps_done).sum();
        let finished = ours.iter().filter(|r| r.state != "running").count();
        if last_print.elapsed() >= Duration::from_secs(1) {
            println!(
                "  {:>5.1} s: {done} of {total} steps done",
                began.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if finished == runs.len() {
            let failed = ours.iter().filter(|r| r.state != "succeeded").count();
            anyhow::ensure!(failed == 0, "{failed} runs did not succeed");
            break;
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "the runs did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = began.elapsed();
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "steps: {total} no-op steps in {:.2} s = {rate:.0} steps/s (submissions took {:.2} s); \
         {:.0} % of the {raw:.0} processes/s this machine starts without Ferry",
        elapsed.as_secs_f64(),
        submitted.as_secs_f64(),
        rate / raw * 100.0
    );
    Ok(())
}

async fn bench_latency(options: &Options) -> anyhow::Result<()> {
    let cluster = step_cluster();
    // The step notes the moment it runs, read from the precise clock first thing
    // inside its own process (`ferry-stamp`, built beside this program: no shell,
    // no child process, standard library only): a file's modification time would
    // come from the kernel's coarse clock, several milliseconds behind, and
    // flatter the figure.
    let stamp = std::env::current_exe()?.with_file_name("ferry-stamp");
    anyhow::ensure!(
        stamp.is_file(),
        "{} is missing: build the workspace (`cargo build --release --workspace`)",
        stamp.display()
    );
    let yaml = format!(
        "name: stamp\nparams:\n  out: \"\"\nsteps:\n  - name: stamp\n    command: [{:?}, \"${{params.out}}\"]\n",
        stamp.display().to_string()
    );
    let yaml = yaml.as_str();
    let bundle = upload_bundle(&cluster, &cluster.path("touch"), yaml)?;
    let (_bench, leader, channel) = connect_to_leader(&cluster).await?;
    let mut client = ControlClient::new(channel);
    let marks = cluster.path("marks");
    std::fs::create_dir_all(&marks)?;
    println!(
        "latency: 3 coordinators (leader {leader}), 2 idle workers; {} one-step runs, one at a time",
        options.trials
    );
    // What the step's own start costs, without Ferry: from spawning it here to
    // the moment it reads the clock, the same way the step does.
    let mut own_start = Vec::new();
    for trial in 0..50 {
        let file = marks.join(format!("own-{trial}"));
        let spawned = unix_seconds(std::time::SystemTime::now());
        let status = std::process::Command::new(&stamp).arg(&file).status()?;
        anyhow::ensure!(status.success(), "ferry-stamp failed: {status}");
        let stamped = parse_epoch_realtime(&std::fs::read_to_string(&file)?)?;
        own_start.push((stamped - spawned) * 1e3);
    }
    own_start.sort_by(f64::total_cmp);
    println!(
        "latency: the step (ferry-stamp) reads the clock {:.2} ms (median of 50) after this machine spawns it, without Ferry",
        own_start[own_start.len() / 2]
    );
    let mut latencies = Vec::new();
    let mut phases = Vec::new();
    for trial in 0..options.trials {
        let file = marks.join(format!("started-{trial}"));
        let request = proto::SubmitRunRequest {
            spec_yaml: yaml.to_string(),
            spec_file: "pipeline.yaml".to_string(),
            params: [("out".to_string(), file.display().to_string())].into(),
            bundle_digest: bundle.clone(),
            request_id: String::new(),
            no_cache: true,
        };
        let submitted = std::time::SystemTime::now();
        let run = client.submit_run(request).await?.into_inner().run_id;
        let deadline = Instant::now() + Duration::from_secs(10);
        let started = loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                break parse_epoch_realtime(&text)
                    .with_context(|| format!("trial {trial}: the step wrote {text:?}"))?;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "trial {trial}: the step did not start"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        // Signed: a start before the submission would be a broken clock, shown
        // as it is rather than clamped to zero.
        let since_submit = started - unix_seconds(submitted);
        latencies.push(since_submit);
        // Let the run end before the next: an idle cluster each time.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Where the time went (the coordinator's clock, in whole milliseconds).
        let view = read_run(&mut client, run).await?;
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64
        };
        if let (Some(summary), Some(step)) = (view.summary, view.steps.first())
            && let Some(attempt) = step.attempts.first()
        {
            phases.push((
                summary.submitted_ms - ms(submitted),
                attempt.started_ms - summary.submitted_ms,
                (started * 1e3).round() as i64 - summary.submitted_ms,
            ));
        }
    }
    phases.sort_by_key(|p| p.2);
    if let Some(median) = phases.get(phases.len() / 2) {
        println!(
            "latency: median run's phases (ms after its submission was applied): \
             applied {} ms after the call, start reported at {}, process started at {}",
            median.0, median.1, median.2
        );
    }
    if let Ok(dir) = std::env::var("FERRY_BENCH_LOGS") {
        for name in ["w1", "w2"] {
            std::fs::write(format!("{dir}/{name}.log"), cluster.worker_log(name))?;
        }
        for member in 1..=3 {
            std::fs::write(format!("{dir}/c{member}.log"), cluster.member_log(member))?;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] * 1e3
    };
    println!(
        "latency: submit to start (the step's own clock) over {} runs: min {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        at(0.0),
        at(0.50),
        at(0.99),
        at(1.0),
    );
    Ok(())
}

/// Seconds since the Unix epoch of `time`, as a float.
fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// bash's `$EPOCHREALTIME` ("1765000000.123456"; the decimal point follows the
/// locale, so a comma is taken too) as seconds.
fn parse_epoch_realtime(text: &str) -> anyhow::Result<f64> {
    let text = text.trim().replace(',', ".");
    text.parse::<f64>()
        .map_err(|e| anyhow::anyhow!("not an $EPOCHREALTIME: {e}"))
}

/// How often the cache benchmark reads a run again while it is not yet done
/// (tokio's timer has millisecond resolution, so a wait takes 1–2 ms).
const POLL: Duration = Duration::from_millis(1);

/// A chain of `steps` cheap steps (`touch out`, one declared output each); every
/// step but the first takes the previous one's output as its input, so its cache
/// key holds that output's digest and a hit has to resolve the whole chain.
fn chained_pipeline(steps: usize) -> String {
    let mut yaml = "name: cached\nsteps:\n".to_string();
    for i in 0..steps {
        yaml.push_str(&format!(
            "  - name: s{i}\n    command: [\"touch\", \"out\"]\n    outputs: [out]\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    inputs: {{previous: s{}/out}}\n", i - 1));
        }
    }
    yaml
}

/// One step written with a 10 × 10 × 10 matrix (1,000 trials), never cached.
fn sweep_pipeline() -> String {
    let values = (0..10)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "name: sweep\nsteps:\n  - name: trial\n    matrix: {{a: [{values}], b: [{values}], c: [{values}]}}\n    \
         command: [\"true\", \"${{matrix.a}}\", \"${{matrix.b}}\", \"${{matrix.c}}\"]\n    cache: false\n"
    )
}

/// Reads the run (a linearizable read, as `ferry status` does) every `poll`
/// until it has ended; returns its view, when the answer saying so arrived and
/// how many reads it took.
async fn read_until_ended(
    client: &mut ControlClient<Channel>,
    run_id: u64,
    poll: Duration,
    timeout: Duration,
) -> anyhow::Result<(proto::RunView, Instant, usize)> {
    let deadline = Instant::now() + timeout;
    let mut reads = 0;
    loop {
        let view = read_run(client, run_id).await?;
        reads += 1;
        let state = view.summary.as_ref().map(|s| s.state.as_str());
        if state.is_some_and(|state| state != "running") {
            return Ok((view, Instant::now(), reads));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "run {run_id} did not end in {timeout:?}"
        );
        tokio::time::sleep(poll).await;
    }
}

/// Cancels a run and waits until no worker runs anything, so that the next
/// submission meets an idle cluster again.
async fn cancel_and_settle(client: &mut ControlClient<Channel>, run_id: u64) -> anyhow::Result<()> {
    client
        .cancel_run(proto::CancelRunRequest { run_id })
        .await?;
    read_until_ended(client, run_id, POLL, Duration::from_secs(10)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers = client
            .list_workers(proto::ListWorkersRequest { stale: false })
            .await?
            .into_inner()
            .workers;
        if workers.iter().all(|w| w.running == 0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the workers still run steps of cancelled run {run_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 …, p90 …, p99 …, max …` of unsorted durations, in milliseconds.
fn spread(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        millis(percentile(&times, 0.50)),
        millis(percentile(&times, 0.90)),
        millis(percentile(&times, 0.99)),
        millis(times.last().copied().unwrap_or_default()),
    )
}

async fn bench_cache(options: &Options) -> anyhow::Result<()> {
    let cluster = step_cluster();
    let steps = options.steps;
    let yaml = chained_pipeline(steps);
    // The first run, through the CLI, uploads the bundle and fills the cache.
    let dir = cluster.path("cached");
    let pipeline = write_pipeline(&dir, &yaml, &[]);
    let first = cluster.submit(&pipeline, &[]);
    let bundle = ferry_common::bundle::pack_dir(&dir)?.digest;
    let (_bench, leader, channel) = connect_to_leader(&cluster).await?;
    let mut client = ControlClient::new(channel);
    let (view, _, _) = read_until_ended(
        &mut client,
        first,
        Duration::from_millis(50),
        Duration::from_secs(600),
    )
    .await?;
    let summary = view.summary.context("a run view without a summary")?;
    anyhow::ensure!(
        summary.state == "succeeded",
        "the first run of the chain ended {}: {}",
        summary.state,
        summary.reason
    );
    println!(
        "cache: 3 coordinators (leader {leader}), 2 idle workers; a chain of {steps} steps \
         ran in {} ms the first time (the coordinator's clock)",
        summary.finished_ms - summary.submitted_ms
    );
    let request = proto::SubmitRunRequest {
        spec_yaml: yaml,
        spec_file: "pipeline.yaml".to_string(),
        params: Default::default(),
        bundle_digest: bundle,
        request_id: String::new(),
        no_cache: false,
    };
    measure_cached_runs(&mut client, &request, steps, options.trials).await?;
    measure_uncached_submissions(&mut client, &request, steps, options.sweeps).await?;
    measure_sweep_submissions(&mut client, &request, options.sweeps).await
}

/// Submits the chain `trials` times, one after another, and reads each run
/// until it has ended; every run must be complete with every step from the cache.
async fn measure_cached_runs(
    client: &mut ControlClient<Channel>,
    request: &proto::SubmitRunRequest,
    steps: usize,
    trials: usize,
) -> anyhow::Result<()> {
    // One submission first, not counted: it opens the connection, and it shows
    // that these submissions find the keys the CLI's run stored.
    let run = client
        .submit_run(request.clone())
        .await?
        .into_inner()
        .run_id;
    let (view, _, _) = read_until_ended(client, run, POLL, Duration::from_secs(60)).await?;
    let cached = view.summary.map(|s| s.steps_cached).unwrap_or_default();
    anyhow::ensure!(
        cached as usize == steps,
        "only {cached} of {steps} steps came from the cache"
    );
    let (mut calls, mut reads, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ended_at_first_read, mut ended_when_applied) = (0, 0);
    for trial in 0..trials {
        let began = Instant::now();
        let run = client
            .submit_run(request.clone())
            .await?
            .into_inner()
            .run_id;
        let answered = Instant::now();
        let (view, seen, reads_needed) =
            read_until_ended(client, run, POLL, Duration::from_secs(10)).await?;
        let summary = view.summary.context("a run view without a summary")?;
        anyhow::ensure!(
            summary.state == "succeeded" && summary.steps_cached as usize == steps,
            "trial {trial}: run {run} ended {} with {} of {steps} steps from the cache",
            summary.state,
            summary.steps_cached
        );
        if reads_needed == 1 {
            ended_at_first_read += 1;
        }
        // The state machine stamps a run's end with the time carried by the
        // command that ended it: equal times mean the submission itself did.
        if summary.finished_ms == summary.submitted_ms {
            ended_when_applied += 1;
        }
        calls.push(answered - began);
        reads.push(seen - answered);
        totals.push(seen - began);
    }
    println!(
        "cache: {trials} fully cached {steps}-step runs, one at a time; reads are linearizable \
         GetRun calls to the leader, repeated every {} ms until the run has ended",
        POLL.as_millis()
    );
    println!("cache:   SubmitRun call        {}", spread(calls));
    println!("cache:   first GetRun after it {}", spread(reads));
    println!("cache:   submit to succeeded   {}", spread(totals));
    println!(
        "cache:   the first GetRun after the answer already said succeeded in \
         {ended_at_first_read} of {trials} runs; the run ended at its submission's \
         time (the submission itself completed it) in {ended_when_applied}"
    );
    Ok(())
}

/// The same chain with `no_cache`, for comparison: validation, replication and
/// the first step queued; each run is cancelled at once.
async fn measure_uncached_submissions(
    client: &mut ControlClient<Channel>,
    request: &proto::SubmitRunRequest,
    steps: usize,
    submissions: usize,
) -> anyhow::Result<()> {
    let uncached = proto::SubmitRunRequest {
        no_cache: true,
        ..request.clone()
    };
    let mut calls = Vec::new();
    for _ in 0..submissions {
        let began = Instant::now();
        let run = client
            .submit_run(uncached.clone())
            .await?
            .into_inner()
            .run_id;
        calls.push(began.elapsed());
        cancel_and_settle(client, run).await?;
    }
    println!(
        "cache: the same {steps}-step chain with no_cache (cancelled at once), {submissions} \
         submissions: SubmitRun call {}",
        spread(calls)
    );
    Ok(())
}

/// A 1,000-trial sweep: the coordinator expands the matrix, validates the 1,000
/// steps and replicates the run before it answers. It keeps the parsed form of
/// specs it has seen (by their text), so the first series makes every text new
/// with a comment, and the second sends one text again and again, as a user
/// submitting the same sweep again would. The steps need no files, so the
/// chain's bundle serves.
async fn measure_sweep_submissions(
    client: &mut ControlClient<Channel>,
    request: &proto::SubmitRunRequest,
    submissions: usize,
) -> anyhow::Result<()> {
    for (fresh, what) in [
        (true, "a new spec text each time: parsed and expanded"),
        (
            false,
            "the same spec text each time: parsed by the first only",
        ),
    ] {
        let mut calls = Vec::new();
        for submission in 0..submissions {
            let comment = if fresh {
                format!("# submission {submission}\n")
            } else {
                String::new()
            };
            let sweep = proto::SubmitRunRequest {
                spec_yaml: comment + &sweep_pipeline(),
                ..request.clone()
            };
            let began = Instant::now();
            let run = client.submit_run(sweep).await?.into_inner().run_id;
            calls.push(began.elapsed());
            cancel_and_settle(client, run).await?;
            let view = read_run(client, run).await?;
            anyhow::ensure!(
                view.steps.len() == 1000,
                "the sweep has {} steps, not 1000",
                view.steps.len()
            );
        }
        println!(
            "cache: a 1,000-trial sweep (cache: false, cancelled at once), {submissions} \
             submissions, {what}: SubmitRun call {}",
            spread(calls)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if ferry_tests::sched_bench::dispatch()? {
        return Ok(()); // `chain` or `backlog` (ferry_tests::sched_bench)
    }
    if ferry_tests::sdk_bench::dispatch()? || ferry_tests::ui_bench::dispatch()? {
        return Ok(()); // `sdk-submissions` (sdk_bench), `ui` (ui_bench)
    }
    let options = options()?;
    if options.what == "logs" {
        return ferry_tests::logs_bench::run();
    }
    if options.what == "chaos" {
        let clients = options.clients_given.then_some(options.clients);
        return ferry_tests::chaos::bench(options.seconds, options.seed, options.members, clients);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        if matches!(options.what.as_str(), "commit" | "all") {
            bench_commit(&options).await?;
        }
        if options.what == "etcd" {
            bench_etcd(&options).await?;
        }
        if matches!(options.what.as_str(), "failover" | "all") {
            bench_failover(&options).await?;
        }
        if matches!(options.what.as_str(), "graceful" | "all") {
            bench_graceful(&options).await?;
        }
        if matches!(options.what.as_str(), "steps" | "all") {
            bench_steps(&options).await?;
        }
        if matches!(options.what.as_str(), "latency" | "all") {
            bench_latency(&options).await?;
        }
        if matches!(options.what.as_str(), "cache" | "all") {
            bench_cache(&options).await?;
        }
        if options.what == "containers" {
            ferry_tests::container_bench::run(options.steps, options.trials).await?;
        }
        if options.what == "artifacts" {
            let (mib, members) = (options.mib, options.members);
            tokio::task::spawn_blocking(move || ferry_tests::artifact_bench::run(mib, members))
                .await??;
        }
        if options.what == "artifact-stages" {
            ferry_tests::artifact_bench::stages(options.mib, options.members, 2).await?;
        }
        Ok(())
    })
}

/// A run's view, read linearizably (as `ferry status` reads it).
async fn read_run(
    client: &mut ControlClient<Channel>,
    run_id: u64,
) -> anyhow::Result<proto::RunView> {
    let request = proto::GetRunRequest {
        run_id,
        stale: false,
        ..Default::default()
    };
    Ok(client.get_run(request).await?.into_inner())
}
