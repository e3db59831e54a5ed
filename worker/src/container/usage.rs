//! What a container step used: its CPU time and peak memory, sampled while
//! the container runs.
//!
//! Where the worker can read the container's cgroup (the worker on the host
//! beside the engine), its files are read: v1 `cpuacct.usage` and
//! `memory.max_usage_in_bytes`, v2 `cpu.stat`'s `usage_usec` and
//! `memory.peak` (or the current usage where the kernel has no peak). The
//! directory is found by the engine's usual layouts (`docker/<id>` with the
//! cgroupfs driver, `system.slice/docker-<id>.scope` with systemd's), else
//! through the container's init process (`/proc/<pid>/cgroup`, accepted only
//! when its path names the container). Where neither works (a worker in a
//! container of its own, with the engine's socket but not the host's
//! cgroups), the engine's stats stream is read instead: one reading a second,
//! through the Engine API alone.
//!
//! The engine removes the cgroup as soon as the container's last process has
//! gone, before it reports the exit, so nothing can be read afterwards: the
//! files are read every twentieth of the time the container has run so far
//! (10 ms at first, at most 1 s), which bounds what a reading misses at the end
//! to about 5 % of the CPU time; the peak memory is the kernel's high-water
//! mark and is exact once read after the peak. A container that ends within a
//! few milliseconds, or within the first second where only the engine's
//! stats are available, may report nothing.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures::StreamExt;

use super::DockerRuntime;
use crate::cgroup::{Mounts, keyed_value, parse_mountinfo, parse_proc_cgroup};

/// The shortest and longest time between two readings of the cgroup files.
const SHORTEST_PERIOD: Duration = Duration::from_millis(10);
const LONGEST_PERIOD: Duration = Duration::from_secs(1);
/// The time between two readings is the time run so far divided by this.
const PERIOD_DIVISOR: u32 = 20;

/// What a container used, as far as it was seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub cpu_time_ns: u64,
    pub peak_memory_bytes: u64,
}

impl Reading {
    /// Keeps the larger of each: CPU time only grows, and a peak is a maximum.
    fn merge(&mut self, other: Reading) {
        self.cpu_time_ns = self.cpu_time_ns.max(other.cpu_time_ns);
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
    }
}

/// The directories of a container's cgroup, as this machine mounts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// v1: the memory controller's directory.
    pub memory: Option<PathBuf>,
    /// v1: the cpuacct controller's directory.
    pub cpuacct: Option<PathBuf>,
    /// v2: the unified hierarchy's directory (a hybrid host has it beside the
    /// v1 ones, with `cpu.stat` only).
    pub unified: Option<PathBuf>,
}

impl ContainerCgroup {
    /// Where the engine puts container `id` by default: `docker/<id>` (the
    /// cgroupfs driver) and `system.slice/docker-<id>.scope` (systemd's), in
    /// every hierarchy that is mounted.
    pub fn layouts(mounts: &Mounts, id: &str) -> Vec<ContainerCgroup> {
        [
            format!("docker/{id}"),
            format!("system.slice/docker-{id}.scope"),
        ]
        .iter()
        .map(|relative| ContainerCgroup {
            memory: mounts.v1.get("memory").map(|m| m.join(relative)),
            cpuacct: mounts.v1.get("cpuacct").map(|m| m.join(relative)),
            unified: mounts.unified.as_ref().map(|m| m.join(relative)),
        })
        .collect()
    }

    /// The cgroup that `/proc/<pid>/cgroup` of the container's init names;
    /// a path that does not name container `id` (a process of another PID
    /// namespace that happens to have that number) is left out.
    pub fn from_proc_cgroup(text: &str, mounts: &Mounts, id: &str) -> ContainerCgroup {
        let (unified, v1) = parse_proc_cgroup(text);
        let under = |mount: Option<&PathBuf>, path: Option<&String>| {
            let path = path.filter(|p| !id.is_empty() && p.contains(id))?;
            Some(mount?.join(path.trim_start_matches('/')))
        };
        ContainerCgroup {
            memory: under(mounts.v1.get("memory"), v1.get("memory")),
            cpuacct: under(mounts.v1.get("cpuacct"), v1.get("cpuacct")),
            unified: under(mounts.unified.as_ref(), unified.as_ref()),
        }
    }

    /// The directories that exist; `None` when none does.
    pub fn existing(self) -> Option<ContainerCgroup> {
        let exists = |dir: Option<PathBuf>| dir.filter(|d| d.is_dir());
        let found = ContainerCgroup {
            memory: exists(self.memory),
            cpuacct: exists(self.cpuacct),
            unified: exists(self.unified),
        };
        (found != ContainerCgroup::default()).then_some(found)
    }

    /// What the kernel has accounted so far; `None` when no file could be read
    /// (the cgroup is gone).
    pub fn read(&self) -> Option<Reading> {
        let mut reading = Reading::default();
        let mut read_any = false;
        let mut found = |value: Option<u64>, into: &mut u64| {
            if let Some(value) = value {
                *into = (*into).max(value);
                read_any = true;
            }
        };
        if let Some(dir) = &self.memory {
            let peak = number(dir, "memory.max_usage_in_bytes")
                .or_else(|| number(dir, "memory.usage_in_bytes"));
            found(peak, &mut reading.peak_memory_bytes);
        }
        if let Some(dir) = &self.cpuacct {
            found(number(dir, "cpuacct.usage"), &mut reading.cpu_time_ns);
        }
        if let Some(dir) = &self.unified {
            let peak = number(dir, "memory.peak").or_else(|| number(dir, "memory.current"));
            found(peak, &mut reading.peak_memory_bytes);
            let cpu_us = std::fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|stat| keyed_value(&stat, "usage_usec"));
            found(
                cpu_us.map(|us| us.saturating_mul(1000)),
                &mut reading.cpu_time_ns,
            );
        }
        read_any.then_some(reading)
    }
}

/// A file holding one number.
fn number(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One reading of the engine's stats: the total CPU time, and the memory
/// high-water mark where the engine gives one (cgroup v1), else the usage.
pub fn from_stats(stats: &ContainerStatsResponse) -> Reading {
    let memory = stats.memory_stats.as_ref();
    Reading {
        cpu_time_ns: stats
            .cpu_stats
            .as_ref()
            .and_then(|cpu| cpu.cpu_usage.as_ref())
            .and_then(|usage| usage.total_usage)
            .unwrap_or(0),
        peak_memory_bytes: memory
            .and_then(|m| m.max_usage)
            .unwrap_or(0)
            .max(memory.and_then(|m| m.usage).unwrap_or(0)),
    }
}

/// This machine's cgroup mounts, read once.
fn mounts() -> &'static Mounts {
    static MOUNTS: OnceLock<Mounts> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    })
}

/// Where the readings come from.
enum Source {
    /// Not looked for yet.
    Unknown,
    Cgroup(ContainerCgroup),
    Engine,
    /// The container had ended before its cgroup was found: nothing to read.
    Ended,
}

/// The usage of one running container, sampled while the attempt waits on it.
pub struct ContainerUsage {
    source: Source,
    used: Reading,
    started: Instant,
}

impl ContainerUsage {
    /// For a container that has just started.
    pub fn started() -> ContainerUsage {
        ContainerUsage {
            source: Source::Unknown,
            used: Reading::default(),
            started: Instant::now(),
        }
    }

    /// The most seen so far.
    pub fn used(&self) -> Reading {
        self.used
    }

    /// Runs `work` (a wait on the container, its stop) while sampling
    /// container `id`, then reads the cgroup once more; what `work` returned.
    pub async fn sample_during<T>(
        &mut self,
        runtime: &DockerRuntime,
        id: &str,
        work: impl Future<Output = T>,
    ) -> T {
        let output = tokio::select! {
            output = work => output,
            never = self.sample(runtime, id) => match never {},
        };
        // Before a stop, this is the last sight of a running container.
        if let Source::Cgroup(cgroup) = &self.source
            && let Some(reading) = cgroup.read()
        {
            self.used.merge(reading);
        }
        output
    }

    /// Samples until dropped (it never returns).
    async fn sample(&mut self, runtime: &DockerRuntime, id: &str) -> Infallible {
        if matches!(self.source, Source::Unknown) {
            self.source = locate(runtime, id).await;
        }
        let ContainerUsage {
            source,
            used,
            started,
        } = self;
        match source {
            Source::Cgroup(cgroup) => {
                while let Some(reading) = cgroup.read() {
                    used.merge(reading);
                    let period =
                        (started.elapsed() / PERIOD_DIVISOR).clamp(SHORTEST_PERIOD, LONGEST_PERIOD);
                    tokio::time::sleep(period).await;
                }
            }
            Source::Engine => {
                let mut stats = runtime.docker.stats(
                    id,
                    Some(StatsOptions {
                        stream: true,
                        one_shot: false,
                    }),
                );
                while let Some(Ok(reading)) = stats.next().await {
                    used.merge(from_stats(&reading));
                }
            }
            Source::Unknown | Source::Ended => {}
        }
        std::future::pending().await
    }
}

/// Finds the container's cgroup: the usual layouts first (no request to the
/// engine), then its init's `/proc/<pid>/cgroup`; the engine's stats where
/// neither gives a readable directory and the container still runs.
async fn locate(runtime: &DockerRuntime, id: &str) -> Source {
    // A test's stand-in for a worker that cannot see the host's cgroups.
    if ferry_common::faults::should_return("worker.container-cgroup") {
        return Source::Engine;
    }
    let mounts = mounts();
    let mut found = ContainerCgroup::layouts(mounts, id)
        .into_iter()
        .find_map(ContainerCgroup::existing);
    if found.is_none() {
        let state = runtime
            .docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|inspected| inspected.state);
        // A short step may be over already; asking the engine for its
        // stats would only add to the engine's load.
        if state.as_ref().is_some_and(|s| s.running != Some(true)) {
            return Source::Ended;
        }
        let pid = state.and_then(|s| s.pid).filter(|pid| *pid > 0);
        found = pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
            .and_then(|text| ContainerCgroup::from_proc_cgroup(&text, mounts, id).existing());
    }
    match found {
        Some(cgroup) if cgroup.read().is_some() => {
            tracing::debug!(container = id, cgroup = ?cgroup, "the container's usage is read from its cgroup");
            Source::Cgroup(cgroup)
        }
        _ => {
            tracing::debug!(
                container = id,
                "the container's cgroup is not readable here; its usage comes from the engine's stats"
            );
            Source::Engine
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    use super::*;

    const ID: &str = "b2863a29f90c1043b5f81986018af46e327c53fa87c0099a9eb7125c5551a30f";

    fn hybrid_mounts(root: &Path) -> Mounts {
        Mounts {
            unified: Some(root.join("unified")),
            v1: HashMap::from([
                ("memory".to_string(), root.join("memory")),
                ("cpuacct".to_string(), root.join("cpu,cpuacct")),
                ("pids".to_string(), root.join("pids")),
            ]),
        }
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn the_layouts_cover_both_drivers_in_every_mounted_hierarchy() {
        let mounts = hybrid_mounts(Path::new("/sys/fs/cgroup"));
        let layouts = ContainerCgroup::layouts(&mounts, ID);
        assert_eq!(
            layouts[0].memory,
            Some(PathBuf::from(format!("/sys/fs/cgroup/memory/docker/{ID}")))
        );
        assert_eq!(
            layouts[0].cpuacct,
            Some(PathBuf::from(format!(
                "/sys/fs/cgroup/cpu,cpuacct/docker/{ID}"
            )))
        );
        let v2_only = Mounts {
            unified: Some(PathBuf::from("/sys/fs/cgroup")),
            v1: HashMap::new(),
        };
        let systemd = &ContainerCgroup::layouts(&v2_only, ID)[1];
        assert_eq!(
            systemd.unified,
            Some(PathBuf::from(format!(
                "/sys/fs/cgroup/system.slice/docker-{ID}.scope"
            )))
        );
        assert_eq!(
            (systemd.memory.as_ref(), systemd.cpuacct.as_ref()),
            (None, None)
        );
    }

    #[test]
    fn the_init_process_names_the_cgroup_only_when_its_path_names_the_container() {
        let mounts = hybrid_mounts(Path::new("/cg"));
        let text = format!(
            "12:pids:/custom/{ID}\n4:memory:/custom/{ID}\n2:cpu,cpuacct:/custom/{ID}\n0::/custom/{ID}\n"
        );
        let cgroup = ContainerCgroup::from_proc_cgroup(&text, &mounts, ID);
        assert_eq!(
            cgroup.memory,
            Some(PathBuf::from(format!("/cg/memory/custom/{ID}")))
        );
        assert_eq!(
            cgroup.cpuacct,
            Some(PathBuf::from(format!("/cg/cpu,cpuacct/custom/{ID}")))
        );
        assert_eq!(
            cgroup.unified,
            Some(PathBuf::from(format!("/cg/unified/custom/{ID}")))
        );
        // Another PID namespace's process with the same number.
        let foreign = "4:memory:/user.slice\n0::/init.scope\n";
        assert_eq!(
            ContainerCgroup::from_proc_cgroup(foreign, &mounts, ID),
            ContainerCgroup::default()
        );
        assert_eq!(
            ContainerCgroup::from_proc_cgroup(&text, &mounts, ""),
            ContainerCgroup::default()
        );
    }

    #[test]
    fn v1_files_give_the_high_water_mark_and_the_cpu_time() {
        let root = tempfile::tempdir().unwrap();
        let mounts = hybrid_mounts(root.path());
        let layout = ContainerCgroup::layouts(&mounts, ID).remove(0);
        write(
            layout.memory.as_ref().unwrap(),
            "memory.max_usage_in_bytes",
            "52428800\n",
        );
        write(
            layout.memory.as_ref().unwrap(),
            "memory.usage_in_bytes",
            "1048576\n",
        );
        write(
            layout.cpuacct.as_ref().unwrap(),
            "cpuacct.usage",
            "1500000000\n",
        );
        let cgroup = layout.existing().expect("the v1 directories exist");
        assert_eq!(cgroup.unified, None);
        assert_eq!(
            cgroup.read(),
            Some(Reading {
                cpu_time_ns: 1_500_000_000,
                peak_memory_bytes: 50 << 20,
            })
        );
    }

    #[test]
    fn v2_files_give_the_peak_or_else_the_current_usage() {
        let root = tempfile::tempdir().unwrap();
        let mounts = Mounts {
            unified: Some(root.path().to_path_buf()),
            v1: HashMap::new(),
        };
        let layout = ContainerCgroup::layouts(&mounts, ID).remove(1);
        let dir = layout.unified.clone().unwrap();
        write(
            &dir,
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write(&dir, "memory.current", "4096\n");
        let cgroup = layout.existing().expect("the v2 directory exists");
        assert_eq!(
            cgroup.read(),
            Some(Reading {
                cpu_time_ns: 2_500_000,
                peak_memory_bytes: 4096,
            })
        );
        write(&dir, "memory.peak", "8192\n");
        assert_eq!(cgroup.read().unwrap().peak_memory_bytes, 8192);
        // Gone with the container.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cgroup.read(), None);
    }

    #[test]
    fn no_directory_no_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let mounts = hybrid_mounts(root.path());
        assert!(
            ContainerCgroup::layouts(&mounts, ID)
                .into_iter()
                .find_map(ContainerCgroup::existing)
                .is_none()
        );
    }

    #[test]
    fn engine_stats_give_the_cpu_time_and_the_larger_memory_figure() {
        let v1 = ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(3_000_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(10 << 20),
                max_usage: Some(80 << 20),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            from_stats(&v1),
            Reading {
                cpu_time_ns: 3_000_000_000,
                peak_memory_bytes: 80 << 20,
            }
        );
        // cgroup v2: no high-water mark in the engine's stats.
        let v2 = ContainerStatsResponse {
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(12 << 20),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(from_stats(&v2).peak_memory_bytes, 12 << 20);
        assert_eq!(
            from_stats(&ContainerStatsResponse::default()),
            Reading::default()
        );
    }

    #[test]
    fn readings_keep_the_largest_of_each() {
        let mut used = Reading {
            cpu_time_ns: 5,
            peak_memory_bytes: 100,
        };
        used.merge(Reading {
            cpu_time_ns: 9,
            peak_memory_bytes: 40,
        });
        assert_eq!(
            used,
            Reading {
                cpu_time_ns: 9,
                peak_memory_bytes: 100,
            }
        );
    }
}
