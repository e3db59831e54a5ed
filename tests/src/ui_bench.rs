//! `ferry-bench ui [--runs N] [--trials N] [--rounds N] [--lines N]`: the web
//! UI's render times and its log-follow latency (issue 20's benchmark).
//!
//! Pages: a one-member cluster with no worker (so nothing runs and nothing
//! else competes for the CPU) holds `--runs` one-step runs (10,000) and one
//! run of a `--trials`-trial sweep (1,000); `ferry ui` serves it. Each page is
//! fetched `--rounds` times over one keep-alive-free HTTP/1.1 connection each
//! (the browser's cost of a fresh connection is not ours); the figure is the
//! server's own time from its `Server-Timing` header (the whole handler: the
//! gRPC calls to the coordinator, shaping, rendering), with the client's
//! wall time beside it.
//!
//! Log following: a second cluster with a worker runs a step that prints a
//! line with its wall-clock time in nanoseconds every 100 ms. `ferry logs -f`
//! and an SSE reader of `ferry ui`'s log events follow it at the same time;
//! each line's latency is its arrival time at the reader minus the time in
//! the line (one machine, one clock). The verdict compares the two
//! readers' medians and 95th percentiles.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::Cluster;
use crate::sdk_bench::{queued_cluster, submit_stream_of};

const QUEUED: &str = "name: queued\nparams:\n  lr: 0.1\nsteps:\n  - name: s\n    command: [\"true\"]\n    cache: false\n    resources: {cpu: 0.1, memory: 16Mi}\n";

/// Server budgets the issue sets, in milliseconds.
const RENDER_BUDGET_MS: f64 = 200.0;
const FOLLOW_BUDGET_MS: f64 = 50.0;

struct Options {
    runs: usize,
    trials: usize,
    rounds: usize,
    lines: usize,
}

/// Parses `ferry-bench ui` and runs it; false for another mode.
pub fn dispatch() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("ui") {
        return Ok(false);
    }
    let mut options = Options {
        runs: 10_000,
        trials: 1_000,
        rounds: 20,
        lines: 60,
    };
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let value: usize = rest
            .next()
            .with_context(|| format!("{arg} needs a value"))?
            .parse()
            .with_context(|| format!("{arg} needs a number"))?;
        match arg.as_str() {
            "--runs" => options.runs = value,
            "--trials" => options.trials = value,
            "--rounds" => options.rounds = value.max(1),
            "--lines" => options.lines = value.max(5),
            other => bail!(
                "unknown argument {other:?}; usage: ferry-bench ui [--runs N] [--trials N] [--rounds N] [--lines N]"
            ),
        }
    }
    tokio::runtime::Runtime::new()?.block_on(pages(&options))?;
    follow(&options)?;
    Ok(true)
}

/// A process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferry ui` on `cluster` (as its client user); returns the process
/// and its address.
fn start_ui(cluster: &Cluster) -> anyhow::Result<(Reaped, String)> {
    let mut child = Reaped(cluster.ferry_spawn(&["ui", "--listen", "127.0.0.1:0"]));
    let stdout = child.0.stdout.take().context("ferry ui's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no address in ferry ui's banner {line:?}"))?
        .to_string();
    Ok((child, address))
}

/// One GET: the server's time (`Server-Timing`), the client's, and the size.
fn fetch(address: &str, path: &str) -> anyhow::Result<(f64, f64, usize)> {
    let began = Instant::now();
    let mut stream = TcpStream::connect(address)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let wall = began.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", text.lines().next().unwrap_or("no answer"));
    }
    let server = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("server-timing: app;dur=")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .with_context(|| format!("GET {path}: no Server-Timing header"))?;
    Ok((server, wall, raw.len()))
}

/// The body of a GET.
fn page_text(address: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    Ok(raw)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

async fn pages(options: &Options) -> anyhow::Result<()> {
    let (cluster, _folder, channel, bundle) = queued_cluster(QUEUED).await?;
    let began = Instant::now();
    submit_stream_of(&channel, QUEUED, &bundle, options.runs).await?;
    let values: Vec<String> = (0..options.trials).map(|i| i.to_string()).collect();
    let sweep = format!(
        "name: sweep\nsteps:\n  - name: prep\n    command: [\"true\"]\n  - name: train\n    needs: [prep]\n    matrix:\n      i: [{}]\n    command: [\"true\"]\n    cache: false\n    resources: {{cpu: 0.1, memory: 16Mi}}\n  - name: pick\n    gather: [train]\n    command: [\"true\"]\n",
        values.join(", ")
    );
    submit_stream_of(&channel, &sweep, &bundle, 1).await?;
    let sweep_run = options.runs as u64 + 1;
    println!(
        "ui pages: {} runs and a {}-trial sweep submitted in {:.1}s (one member, no worker), load {}",
        options.runs,
        options.trials,
        began.elapsed().as_secs_f64(),
        crate::artifact_bench::load_average()
    );
    let (ui, address) = start_ui(&cluster)?;
    let checked = (|| -> anyhow::Result<()> {
        let pages = [
            ("runs page (newest 100 of all)", "/runs".to_string()),
            (
                "runs page, filtered (--where lr=0.1, pipeline)",
                "/runs?pipeline=queued&where=lr%3D0.1".to_string(),
            ),
            ("run page of the sweep", format!("/runs/{sweep_run}")),
        ];
        // One untimed fetch each: the first connection to the coordinator.
        for (_, path) in &pages {
            fetch(&address, path)?;
        }
        // The listing holds every run (not a page of a smaller answer).
        let count = page_text(&address, "/runs")?;
        let every = format!("100 of {} runs", options.runs + 1);
        anyhow::ensure!(
            count.contains(&every),
            "the runs page does not say {every:?}"
        );
        println!(
            "{:<48} {:>9} {:>9} {:>9} {:>10} {:>9}",
            "page", "median", "p95", "max", "wall med.", "bytes"
        );
        let mut verdict = true;
        for (name, path) in &pages {
            let (mut server, mut wall, mut size) = (Vec::new(), Vec::new(), 0);
            for _ in 0..options.rounds {
                let (s, w, n) = fetch(&address, path)?;
                server.push(s);
                wall.push(w);
                size = n;
            }
            let (server, wall) = (sorted(server), sorted(wall));
            let p95 = percentile(&server, 0.95);
            verdict &= p95 < RENDER_BUDGET_MS;
            println!(
                "{name:<48} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>8.1}ms {size:>9}",
                percentile(&server, 0.5),
                p95,
                server.last().copied().unwrap_or(f64::NAN),
                percentile(&wall, 0.5),
            );
        }
        println!(
            "verdict: server time p95 {} {RENDER_BUDGET_MS} ms on every page",
            if verdict { "under" } else { "NOT under" }
        );
        anyhow::ensure!(verdict, "a page is over its budget");
        Ok(())
    })();
    drop(ui);
    checked
}

/// The arrival of each numbered line at a reader: (line number, latency ms).
type Arrivals = mpsc::Receiver<(usize, f64)>;

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// "tick N NANOS" → (N, latency now in ms).
fn latency_of(text: &str) -> Option<(usize, f64)> {
    let mut words = text.split_whitespace();
    if words.next()? != "tick" {
        return None;
    }
    let number = words.next()?.parse().ok()?;
    let stamp: i128 = words.next()?.parse().ok()?;
    Some((number, (now_ns() - stamp) as f64 / 1e6))
}

fn follow(options: &Options) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_replicated(1, "");
    cluster.add_worker("w1", "");
    cluster.wait_worker_connected("w1");
    let (ui, address) = start_ui(&cluster)?;
    let result = (|| -> anyhow::Result<()> {
        let folder = cluster.path("ticks");
        std::fs::create_dir_all(&folder)?;
        let spec = format!(
            "name: ticks\nsteps:\n  - name: tick\n    shell: \"sleep 2; for i in $(seq 1 {}); do echo \\\"tick $i $(date +%s%N)\\\"; sleep 0.1; done\"\n    cache: false\n    resources: {{cpu: 0.1, memory: 32Mi}}\n",
            options.lines
        );
        let pipeline = folder.join("pipeline.yaml");
        std::fs::write(&pipeline, spec)?;
        let run = cluster.submit(&pipeline, &[]);
        // Both readers start before the first line (the step sleeps 2 s).
        let (cli_send, cli): (_, Arrivals) = mpsc::channel();
        let mut logs = Reaped(cluster.ferry_spawn(&["logs", &run.to_string(), "tick", "-f"]));
        let stdout = logs.0.stdout.take().context("ferry logs' stdout")?;
        let cli_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(arrival) = line.split("] ").nth(1).and_then(latency_of) {
                    let _ = cli_send.send(arrival);
                }
            }
        });
        let (ui_send, sse): (_, Arrivals) = mpsc::channel();
        let mut stream = TcpStream::connect(&address)?;
        write!(
            stream,
            "GET /runs/{run}/steps/tick/log/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let sse_reader = std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let text = serde_json::from_str::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| v["text"].as_str().map(str::to_string));
                if let Some(arrival) = text.as_deref().and_then(latency_of) {
                    let _ = ui_send.send(arrival);
                }
                if line.contains("event: end") {
                    break;
                }
            }
        });
        let deadline = Duration::from_secs(60 + options.lines as u64);
        let collect = |arrivals: &Arrivals| -> Vec<f64> {
            let began = Instant::now();
            let mut got = Vec::new();
            while got.len() < options.lines && began.elapsed() < deadline {
                if let Ok((_, latency)) = arrivals.recv_timeout(Duration::from_secs(5)) {
                    got.push(latency);
                }
            }
            got
        };
        let (cli_latencies, ui_latencies) = (collect(&cli), collect(&sse));
        drop(logs);
        let _ = cli_reader.join();
        // Ends at the stream's `end` event (the run has ended), or its read
        // timeout.
        let _ = sse_reader.join();
        if cli_latencies.len() < options.lines || ui_latencies.len() < options.lines {
            bail!(
                "lines seen: ferry logs -f {}, ferry ui {} of {}",
                cli_latencies.len(),
                ui_latencies.len(),
                options.lines
            );
        }
        let (cli_latencies, ui_latencies) = (sorted(cli_latencies), sorted(ui_latencies));
        println!(
            "log following, {} lines 100 ms apart, both readers at once, load {}",
            options.lines,
            crate::artifact_bench::load_average()
        );
        println!("{:<28} {:>9} {:>9} {:>9}", "reader", "median", "p95", "max");
        for (name, values) in [
            ("ferry logs -f", &cli_latencies),
            ("ferry ui (SSE)", &ui_latencies),
        ] {
            println!(
                "{name:<28} {:>7.1}ms {:>7.1}ms {:>7.1}ms",
                percentile(values, 0.5),
                percentile(values, 0.95),
                values.last().copied().unwrap_or(f64::NAN)
            );
        }
        let median = percentile(&ui_latencies, 0.5) - percentile(&cli_latencies, 0.5);
        let p95 = percentile(&ui_latencies, 0.95) - percentile(&cli_latencies, 0.95);
        let within = median.max(p95) <= FOLLOW_BUDGET_MS;
        println!(
            "verdict: the UI adds {median:.1} ms at the median and {p95:.1} ms at p95 ({} {FOLLOW_BUDGET_MS} ms)",
            if within { "within" } else { "NOT within" }
        );
        anyhow::ensure!(within, "following a log through the UI is over its budget");
        Ok(())
    })();
    drop(ui);
    result
}
