//! `ferry-bench logs`: what keeping a step's output costs (issue 18, item 3),
//! beside the physical reference measured in the same run.
//!
//! - Speed: one generator (Python writing 200 MB of numbered 100-byte lines in
//!   blocks) into a pipe (`| cat > /dev/null`), then as a step of a one-member
//!   cluster whose worker keeps 64 MiB per attempt; each side times itself
//!   (the step writes its time to a file: its output past the cap is dropped).
//! - Storage: the coordinator's data directory before and after the step.
//! - Memory: the coordinator's peak RSS (`VmHWM`) before and after the step,
//!   then its RSS while 10 `ferry logs` of the finished attempt read at once.
//! - `ferry logs -f` lag: a step prints its clock every 10 ms for 3 s; the
//!   follower's arrival time minus the stamp, per line (same machine clock).

use crate::procfs::status_kib;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::{Cluster, write_pipeline};

const CAP: u64 = 64 << 20;
const PRINTED: u64 = 200_000_000;

/// Writes `PRINTED` bytes of 100-byte numbered lines, in blocks of 1,000 lines.
const GENERATOR: &str = r#"import sys
n = 0
out = sys.stdout
while n < 2000000:
    out.write(''.join('line %09d %s\n' % (n + i, 'x' * 84) for i in range(1000)))
    n += 1000
out.flush()
"#;

fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => bytes_under(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn read_seconds(path: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let times: Vec<f64> = text
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    anyhow::ensure!(times.len() == 2, "two times in {text:?}");
    Ok(times[1] - times[0])
}

pub fn run() -> anyhow::Result<()> {
    let mut cluster = Cluster::start();
    cluster.add_worker(
        "w1",
        &format!("cpus = 2\nmemory = \"2Gi\"\nmax_log_bytes_per_attempt = {CAP}\n"),
    );
    let generator = cluster.path("gen.py");
    std::fs::write(&generator, GENERATOR)?;
    let timed = |into: &str, out: &Path| {
        format!(
            "s=$(date +%s.%N); python3 {} {into}; echo $s $(date +%s.%N) > {}",
            generator.display(),
            out.display()
        )
    };
    // The reference: the same generator into a pipe.
    let pipe_out = cluster.path("pipe.seconds");
    let status = std::process::Command::new("sh")
        .args(["-c", &timed("| cat > /dev/null", &pipe_out)])
        .status()?;
    anyhow::ensure!(status.success(), "the generator failed");
    let pipe = read_seconds(&pipe_out)?;

    let coordinator = cluster.coordinators[0]
        .daemon
        .as_ref()
        .context("coordinator")?
        .pid();
    let data = cluster.path("coordinator-1-data");
    let (disk_before, hwm_before) = (
        bytes_under(&data),
        status_kib(coordinator, "VmHWM").unwrap_or(0),
    );
    let step_out = cluster.path("step.seconds");
    let pipeline = write_pipeline(
        &cluster.path("flood"),
        &format!(
            "name: flood\nsteps:\n  - name: flood\n    shell: '{}'\n",
            timed("", &step_out)
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(300));
    anyhow::ensure!(status["state"] == "succeeded", "{status:#}");
    let step = read_seconds(&step_out)?;
    let disk = bytes_under(&data).saturating_sub(disk_before);
    let hwm = status_kib(coordinator, "VmHWM").unwrap_or(0);
    println!(
        "logs: {PRINTED} bytes printed by one generator: into a pipe {pipe:.2} s ({:.0} MB/s); \
         as a step with a {} MiB cap {step:.2} s ({:.0} % of the pipe's speed)",
        PRINTED as f64 / pipe / 1e6,
        CAP >> 20,
        100.0 * pipe / step
    );
    println!(
        "logs: coordinator data directory +{:.1} MB for {} MiB kept ({:.3}× the bytes kept); \
         peak RSS {:.0} → {:.0} MB",
        disk as f64 / 1e6,
        CAP >> 20,
        disk as f64 / CAP as f64,
        hwm_before as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    // 10 readers of the finished attempt at once.
    let rss_before = status_kib(coordinator, "VmRSS").unwrap_or(0);
    let started = Instant::now();
    let readers: Vec<_> = (0..10)
        .map(|_| cluster.ferry_spawn(&["logs", &run.to_string(), "flood"]))
        .collect();
    let mut rss_most = rss_before;
    let mut bytes = Vec::new();
    for mut reader in readers {
        let mut stdout = reader.stdout.take().expect("piped stdout");
        let mut count = 0u64;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut stdout, &mut buffer)?;
            if n == 0 {
                break;
            }
            count += n as u64;
            rss_most = rss_most.max(status_kib(coordinator, "VmRSS").unwrap_or(0));
        }
        reader.wait()?;
        bytes.push(count);
    }
    println!(
        "logs: 10 concurrent `ferry logs` of the finished attempt: {:.2} s, {} bytes each; \
         coordinator RSS {:.0} → at most {:.0} MB",
        started.elapsed().as_secs_f64(),
        bytes[0],
        rss_before as f64 / 1024.0,
        rss_most as f64 / 1024.0
    );

    // `ferry logs -f` lag.
    let pipeline = write_pipeline(
        &cluster.path("stamps"),
        "name: stamps\nsteps:\n  - name: stamps\n    command: [\"python3\", \"-c\", \"import time\\nfor i in range(300):\\n    print(repr(time.time()), flush=True)\\n    time.sleep(0.01)\"]\n",
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    cluster.wait_step(run, "stamps", "running", Duration::from_secs(30));
    let mut follower = cluster.ferry_spawn(&["logs", &run.to_string(), "-f"]);
    let stdout = follower.stdout.take().expect("piped stdout");
    let mut lags = Vec::new();
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        let now = unix_seconds();
        if let Some(stamp) = line.rsplit(' ').next().and_then(|t| t.parse::<f64>().ok()) {
            lags.push((now - stamp) * 1000.0);
        }
    }
    follower.wait()?;
    // The first lines were printed before the follower started.
    let lags: Vec<f64> = lags.into_iter().skip(50).collect();
    anyhow::ensure!(!lags.is_empty(), "no line followed");
    let mut sorted = lags.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "logs: `ferry logs -f` lag over {} lines: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        sorted.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
    Ok(())
}
