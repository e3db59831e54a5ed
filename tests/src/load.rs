//! A closed-loop load for the benchmarks: `N` callers, each sending its next
//! request as soon as its last one is answered, for a fixed window. `ferry-bench
//! commit` (Ferry's `SubmitRun`) and `ferry-bench etcd` (etcd's `Put`) both run
//! through this one loop, so that their rates and latencies are taken the same way.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One client of the load: it owns its connection handle and its request.
pub trait Caller: Send + 'static {
    /// Sends one request and waits for its answer; true when it succeeded.
    fn call(&mut self) -> impl Future<Output = bool> + Send;
}

/// What one window measured.
pub struct Report {
    /// Every successful call's latency, sorted.
    pub latencies: Vec<Duration>,
    /// The latencies of the calls answered in each second of the window (index 1
    /// is the first second; the last slot also holds the answers that came after
    /// the window, while the calls in flight were drained), each sorted.
    pub per_second: Vec<Vec<Duration>>,
    /// The fewest answers in any one second of the window.
    pub slowest_second: u64,
    /// Failed calls.
    pub errors: u64,
    /// From the start of the window until the last call in flight was answered.
    pub elapsed: Duration,
    /// The window's start, in Unix seconds (to place seconds against logs).
    pub began_unix: f64,
}

impl Report {
    /// Successful calls per second over the whole window.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    /// One line per second of the window: answers, p50, p99 and max.
    pub fn print_seconds(&self) {
        for (second, some) in self.per_second.iter().enumerate().skip(1) {
            println!(
                "  latency second {second:>3} (unix {:.3}): {:>6} answers, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                self.began_unix + (second - 1) as f64,
                some.len(),
                millis(percentile(some, 0.50)),
                millis(percentile(some, 0.99)),
                millis(some.last().copied().unwrap_or_default()),
            );
        }
    }

    /// The summary line: `{label}: N {what} in T s = R {what}/s ...`.
    pub fn print_summary(&self, label: &str, what: &str) {
        println!(
            "{label}: {} {what} in {:.1} s = {:.0} {what}/s (slowest second {}); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} errors",
            self.latencies.len(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.slowest_second,
            millis(self.percentile(0.50)),
            millis(self.percentile(0.99)),
            millis(self.latencies.last().copied().unwrap_or_default()),
            self.errors,
        );
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs every caller back to back for `seconds`, printing the answers of each
/// second as it goes (`  second N: X {what}`), then drains the calls in flight.
pub async fn run<C: Caller>(
    label: &str,
    what: &str,
    callers: Vec<C>,
    seconds: u64,
) -> anyhow::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let began_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    println!("{label}: window starts at unix {began_unix:.3}");
    let mut tasks = tokio::task::JoinSet::new();
    for mut caller in callers {
        let stop = stop.clone();
        let answered = answered.clone();
        tasks.spawn(async move {
            // Each answer also keeps the moment it arrived, so that latency can
            // be shown per second of the window.
            let mut latencies = Vec::new();
            let mut ended_at = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if caller.call().await {
                    let now = Instant::now();
                    latencies.push(now - sent);
                    ended_at.push(now - began);
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            (latencies, ended_at, errors)
        });
    }
    // One progress line per second: a stall (a compaction, an election) shows
    // where it happened instead of vanishing into the average.
    let (mut previous, mut slowest_second) = (0u64, u64::MAX);
    for second in 1..=seconds {
        tokio::time::sleep_until((began + Duration::from_secs(second)).into()).await;
        let now = answered.load(Ordering::Relaxed);
        println!("  second {second:>3}: {:>6} {what}", now - previous);
        slowest_second = slowest_second.min(now - previous);
        previous = now;
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut per_second: Vec<Vec<Duration>> = vec![Vec::new(); seconds as usize + 2];
    let last = per_second.len() - 1;
    let mut errors = 0;
    while let Some(result) = tasks.join_next().await {
        let (mut some, ended_at, failed) = result?;
        for (latency, ended) in some.iter().zip(&ended_at) {
            // The second of the window (1-based, as the progress lines) it came in.
            let second = ended.as_secs() as usize + 1;
            per_second[second.min(last)].push(*latency);
        }
        latencies.append(&mut some);
        errors += failed;
    }
    let elapsed = began.elapsed();
    latencies.sort();
    for some in &mut per_second {
        some.sort();
    }
    Ok(Report {
        latencies,
        per_second,
        slowest_second,
        errors,
        elapsed,
        began_unix,
    })
}
