//! What an attempt's processes use, where the worker has no cgroup for them
//! (subreaper mode; with a cgroup the kernel accounts and limits them): CPU time
//! and peak memory of its process group, sampled from `/proc`, and the memory
//! limit the worker enforces.
//!
//! One [`Monitor`] per worker scans `/proc` once per period for every process
//! group it watches (one scan however many attempts run), sums each group's
//! resident memory and CPU time, keeps the peaks, and tells an attempt when its
//! group is over its limit. The attempt's leader is also read once as a zombie
//! (`waitid` with `WNOWAIT`) for its exact CPU time including every descendant it
//! waited for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferry_common::locks::lock;
use tokio::sync::watch;

/// What one `/proc/<pid>/stat` says that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// R, S, D, Z, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// utime + stime + cutime + cstime, in clock ticks: the process's own CPU
    /// time and that of the children it waited for.
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok());
    let ticks = |n: usize| field(n).map(|v| v.max(0) as u64);
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: field(4)? as i32,
        pgrp: field(5)? as i32,
        cpu_ticks: ticks(14)? + ticks(15)? + ticks(16)? + ticks(17)?,
        rss_pages: ticks(24)?,
    })
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .map_or(100, |t| t as u64)
    })
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .filter(|p| *p > 0)
            .map_or(4096, |p| p as u64)
    })
}

pub fn ticks_to_ms(ticks: u64) -> u64 {
    ticks.saturating_mul(1000) / clock_ticks_per_second()
}

/// Reads one process's stat, if it still exists.
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Sums, per process group in `groups`, the resident bytes and CPU ticks of
/// every live process in it.
fn scan(groups: &[i32]) -> HashMap<i32, (u64, u64)> {
    let mut totals: HashMap<i32, (u64, u64)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Some(stat) = read_stat(pid) else {
            continue;
        };
        if groups.contains(&stat.pgrp) {
            let total = totals.entry(stat.pgrp).or_default();
            total.0 += stat.rss_pages * page_size();
            total.1 += stat.cpu_ticks;
        }
    }
    totals
}

struct Watched {
    limit_bytes: Option<u64>,
    peak_bytes: u64,
    cpu_ticks: u64,
    over: watch::Sender<Option<u64>>,
}

/// Samples the process groups of running attempts.
#[derive(Default)]
pub struct Monitor {
    groups: Mutex<HashMap<i32, Watched>>,
}

impl Monitor {
    /// Starts sampling every `period` until `shutdown` turns true, as the
    /// supervised task "usage-sampler": it must run as long as the worker does,
    /// since attempts rely on it for their memory limits.
    pub fn start(period: Duration, shutdown: watch::Receiver<bool>) -> Arc<Monitor> {
        let monitor = Arc::new(Monitor::default());
        ferry_common::tasks::spawn(
            "usage-sampler",
            shutdown.clone(),
            monitor.clone().sample(period, shutdown),
        );
        monitor
    }

    /// Samples every `period`; returns only once `shutdown` is true.
    async fn sample(self: Arc<Self>, period: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if ferry_common::faults::should_return("worker.usage-sampler") {
                return;
            }
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let watched: Vec<i32> = lock(&self.groups, "monitor").keys().copied().collect();
            if watched.is_empty() {
                continue;
            }
            let totals = tokio::task::spawn_blocking(move || scan(&watched))
                .await
                .unwrap_or_default();
            self.record(&totals);
        }
    }

    fn record(&self, totals: &HashMap<i32, (u64, u64)>) {
        let mut groups = lock(&self.groups, "monitor");
        for (pgid, (rss, ticks)) in totals {
            let Some(watched) = groups.get_mut(pgid) else {
                continue;
            };
            watched.peak_bytes = watched.peak_bytes.max(*rss);
            watched.cpu_ticks = watched.cpu_ticks.max(*ticks);
            if watched.limit_bytes.is_some_and(|limit| *rss > limit) {
                let _ = watched.over.send(Some(*rss));
            }
        }
    }

    /// Watches process group `pgid` until the returned handle is dropped.
    pub fn watch(self: &Arc<Self>, pgid: i32, limit_bytes: Option<u64>) -> GroupWatch {
        let (over, receiver) = watch::channel(None);
        lock(&self.groups, "monitor").insert(
            pgid,
            Watched {
                limit_bytes,
                peak_bytes: 0,
                cpu_ticks: 0,
                over,
            },
        );
        GroupWatch {
            monitor: self.clone(),
            pgid,
            over: receiver,
        }
    }
}

/// One watched process group; stops being watched when dropped.
pub struct GroupWatch {
    monitor: Arc<Monitor>,
    pgid: i32,
    /// Turns `Some(bytes)` once the group is seen using more than its limit.
    pub over: watch::Receiver<Option<u64>>,
}

impl GroupWatch {
    /// The most memory the group was seen holding, and the most CPU time (ms).
    pub fn peaks(&self) -> (u64, u64) {
        lock(&self.monitor.groups, "monitor")
            .get(&self.pgid)
            .map_or((0, 0), |w| (w.peak_bytes, ticks_to_ms(w.cpu_ticks)))
    }
}

impl Drop for GroupWatch {
    fn drop(&mut self) {
        lock(&self.monitor.groups, "monitor").remove(&self.pgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as /proc shows it.
        let text = "4242 (my (odd) step) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    150 50 7 3 20 0 1 0 12345 104857600 2560 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.pgrp, 4242);
        assert_eq!((stat.state, stat.ppid), ('S', 1));
        assert_eq!(stat.cpu_ticks, 150 + 50 + 7 + 3);
        assert_eq!(stat.rss_pages, 2560);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    // The sampler is supervised: ending before the worker stops would be taken for
    // a death. The clock is paused, so its ticks take no real time.
    #[tokio::test(start_paused = true)]
    async fn the_sampler_ends_only_once_the_worker_stops() {
        let (stop, shutdown) = watch::channel(false);
        let monitor = Arc::new(Monitor::default());
        let sampler = tokio::spawn(monitor.sample(Duration::from_millis(250), shutdown));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!sampler.is_finished());
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), sampler)
            .await
            .expect("the sampler ends once the worker stops")
            .unwrap();
    }

    #[test]
    fn this_process_is_found_in_its_group() {
        let me = std::process::id() as i32;
        let stat = read_stat(me).unwrap();
        let totals = scan(&[stat.pgrp]);
        let (rss, _) = totals[&stat.pgrp];
        assert!(rss >= stat.rss_pages * page_size() && rss > 0);
    }
}
