//! How a worker keeps hold of every process an attempt starts, so that cancel,
//! timeout, the memory limit and the worker's stop end all of them.
//!
//! - `cgroup` (preferred): a cgroup per attempt ([`crate::cgroup`]); the step's
//!   process joins it between fork and exec, so nothing it starts can leave it.
//!   The kernel enforces the memory and pids limits and accounts peak memory and
//!   CPU time. Leftovers of a previous run of the worker are killed at start.
//! - `subreaper` (fallback without cgroup access, or forced in `worker.toml`):
//!   the worker marks itself `PR_SET_CHILD_SUBREAPER`, so an attempt's orphans
//!   (a double fork, `setsid ... &`) are reparented to it instead of to init.
//!   At the end of an attempt every descendant of its process and every orphan
//!   that does not carry another running attempt's marker
//!   (`FERRY_CONTAINMENT_ID` in its environment) is killed and reaped. Weaker: a
//!   process can drop the marker and escape to another attempt's sweep, memory
//!   is only sampled, and nothing limits the number of processes.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::locks::lock;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Deserialize;

use crate::cgroup::{
    AttemptCgroup, CgroupUsage, Hierarchy, KeepMigrationsFast, Version, attempt_cgroup_name,
};
use crate::usage::read_stat;

/// The variable that ties a process to its attempt in subreaper mode.
pub const MARKER_VARIABLE: &str = "FERRY_CONTAINMENT_ID";
const SWEEP_ROUNDS: u32 = 200;
const SWEEP_PAUSE: Duration = Duration::from_millis(10);

/// `containment` in `worker.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainmentMode {
    /// A cgroup where the worker can make one, else the subreaper.
    #[default]
    Auto,
    /// A cgroup, or the worker does not start.
    Cgroup,
    /// The subreaper even where cgroups are available (weaker; for tests and
    /// hosts whose cgroups belong to something else).
    Subreaper,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainmentError {
    #[error("containment = \"cgroup\" in worker.toml, but {0}")]
    CgroupRequired(crate::cgroup::CgroupError),
    #[error("cannot make the worker a subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(nix::Error),
}

/// The worker's way of containing attempts, shared by all of them.
pub struct Containment {
    hierarchy: Option<Hierarchy>,
    /// Cgroup v1: keeps the moves into attempt cgroups fast while the worker runs.
    keep_fast: Mutex<Option<KeepMigrationsFast>>,
    worker_pid: i32,
    /// Subreaper mode: the process of every running attempt, with its marker.
    leaders: Mutex<HashMap<i32, String>>,
    sequence: AtomicU64,
}

impl Containment {
    /// Chooses the mode and prepares it; logs which one is used.
    pub fn start(
        mode: ContainmentMode,
        worker_id: &str,
    ) -> Result<Arc<Containment>, ContainmentError> {
        let hierarchy = match mode {
            ContainmentMode::Subreaper => None,
            ContainmentMode::Cgroup => {
                Some(Hierarchy::detect(worker_id).map_err(ContainmentError::CgroupRequired)?)
            }
            ContainmentMode::Auto => match Hierarchy::detect(worker_id) {
                Ok(hierarchy) => Some(hierarchy),
                Err(error) => {
                    tracing::warn!(%error, "no cgroup for attempts; falling back to the subreaper");
                    None
                }
            },
        };
        let keep_fast = hierarchy
            .as_ref()
            .and_then(Hierarchy::own_tasks_file)
            .and_then(|tasks| match KeepMigrationsFast::start(tasks) {
                Ok(kept) => Some(kept),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the thread that keeps cgroup moves fast");
                    None
                }
            });
        let containment = Containment {
            hierarchy,
            keep_fast: Mutex::new(keep_fast),
            worker_pid: std::process::id() as i32,
            leaders: Mutex::new(HashMap::new()),
            sequence: AtomicU64::new(1),
        };
        match &containment.hierarchy {
            Some(hierarchy) => {
                let leftovers = hierarchy.clean_leftovers();
                if leftovers > 0 {
                    tracing::warn!(
                        leftovers,
                        "killed and removed {leftovers} attempt cgroup(s) a previous run of this \
                         worker left behind"
                    );
                }
                tracing::info!(
                    version = match hierarchy.version { Version::V1 => "v1", Version::V2 => "v2" },
                    cgroups = %hierarchy.describe(),
                    leftovers,
                    "attempts are contained by a cgroup each (cgroup {}); memory and pids \
                     limits are enforced by the kernel",
                    match hierarchy.version { Version::V1 => "v1", Version::V2 => "v2" },
                );
            }
            None => {
                nix::sys::prctl::set_child_subreaper(true).map_err(ContainmentError::Subreaper)?;
                tracing::warn!(
                    "attempts are contained by the subreaper only (weaker than a cgroup: memory \
                     is sampled, no pids limit, a process that drops FERRY_CONTAINMENT_ID can \
                     outlive its attempt until another attempt ends)"
                );
            }
        }
        Ok(Arc::new(containment))
    }

    /// The worker stops (every attempt has ended): its cgroup tree goes.
    pub fn stop(&self) {
        drop(lock(&self.keep_fast, "keep_fast").take());
        if let Some(hierarchy) = &self.hierarchy {
            hierarchy.remove_tree();
        }
    }

    /// True when attempts get a cgroup each.
    pub fn uses_cgroups(&self) -> bool {
        self.hierarchy.is_some()
    }

    /// Prepares one attempt: its cgroup (with its limits) or its marker.
    pub fn prepare(
        self: &Arc<Self>,
        run_id: u64,
        step: &str,
        attempt: u32,
        memory_limit: Option<u64>,
        pids_max: u64,
    ) -> Result<Contained, String> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let cgroup = match &self.hierarchy {
            Some(hierarchy) => Some(
                hierarchy
                    .create(
                        &attempt_cgroup_name(run_id, step, attempt, sequence),
                        memory_limit,
                        pids_max,
                    )
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        Ok(Contained {
            containment: self.clone(),
            cgroup: Mutex::new(cgroup),
            marker: format!("{}-{sequence}", self.worker_pid),
            leader: Mutex::new(None),
        })
    }

    /// Subreaper mode: every process of the attempt marked `marker` whose leader is
    /// `leader`: the leader's descendants, and the worker's orphans (children that
    /// lead no running attempt) not marked for another attempt, with their
    /// descendants. Returns each with whether it is a zombie child of the worker.
    fn sweep_targets(&self, marker: &str, leader: Option<i32>) -> Vec<(i32, bool)> {
        // Held for the whole scan: `Contained::spawn` registers a new leader
        // under this lock, so no child of the worker between its fork and its
        // registration (still without its attempt's marker) is taken for an
        // orphan here.
        let leaders = lock(&self.leaders, "leaders");
        let others: HashSet<i32> = leaders
            .iter()
            .filter(|(_, m)| m.as_str() != marker)
            .map(|(pid, _)| *pid)
            .collect();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut states: HashMap<i32, char> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if let Some(stat) = read_stat(pid) {
                    children.entry(stat.ppid).or_default().push(pid);
                    states.insert(pid, stat.state);
                }
            }
        }
        let mut roots: Vec<i32> = leader.into_iter().collect();
        for pid in children.get(&self.worker_pid).into_iter().flatten() {
            if others.contains(pid) || Some(*pid) == leader {
                continue;
            }
            match marker_of(*pid) {
                Some(found) if found != marker => continue,
                _ => roots.push(*pid),
            }
        }
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        while let Some(pid) = roots.pop() {
            if !seen.insert(pid) {
                continue;
            }
            let Some(state) = states.get(&pid) else {
                continue;
            };
            targets.push((pid, *state == 'Z'));
            roots.extend(children.get(&pid).into_iter().flatten());
        }
        drop(leaders);
        targets
    }
}

/// The attempt marker in a process's environment, if it can be read.
fn marker_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let text = std::str::from_utf8(entry).ok()?;
        text.strip_prefix(MARKER_VARIABLE)?
            .strip_prefix('=')
            .map(str::to_string)
    })
}

/// One attempt's containment: its cgroup, or its marker and leader. Shared by
/// the attempt and the blocking tasks that kill and account it.
pub struct Contained {
    containment: Arc<Containment>,
    /// Taken when the cgroup is removed.
    cgroup: Mutex<Option<AttemptCgroup>>,
    marker: String,
    leader: Mutex<Option<i32>>,
}

impl Contained {
    /// The variable that marks the attempt's processes.
    pub fn marker(&self) -> (&'static str, &str) {
        (MARKER_VARIABLE, &self.marker)
    }

    fn with_cgroup<T>(&self, f: impl FnOnce(&AttemptCgroup) -> T) -> Option<T> {
        lock(&self.cgroup, "cgroup").as_ref().map(f)
    }

    fn leader(&self) -> Option<i32> {
        *lock(&self.leader, "leader")
    }

    /// The files the child writes itself into before exec (none in subreaper mode).
    pub fn procs_files(&self) -> Vec<CString> {
        self.with_cgroup(AttemptCgroup::procs_files)
            .unwrap_or_default()
    }

    /// Starts `step` and records its process as the attempt's leader (under
    /// the lock a sweep takes, so that no sweep takes a new leader for an orphan).
    pub fn spawn(
        &self,
        step: &crate::spawn::StepProcess,
    ) -> std::io::Result<crate::spawn::Spawned> {
        let mut leaders = lock(&self.containment.leaders, "leaders");
        let spawned = crate::spawn::spawn(step)?;
        leaders.insert(spawned.pid, self.marker.clone());
        *lock(&self.leader, "leader") = Some(spawned.pid);
        Ok(spawned)
    }

    /// The leader was reaped: its pid may be reused.
    pub fn leader_reaped(&self) {
        if let Some(pid) = lock(&self.leader, "leader").take() {
            lock(&self.containment.leaders, "leaders").remove(&pid);
        }
    }

    /// Sends `signal` to every process of the attempt (blocking: reads the cgroup
    /// or walks /proc).
    pub fn signal_all(&self, signal: Signal) {
        if self
            .with_cgroup(|cgroup| cgroup.signal_all(signal))
            .is_some()
        {
            return;
        }
        for (pid, zombie) in self.containment.sweep_targets(&self.marker, self.leader()) {
            if !zombie {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Kills every process of the attempt and waits (blocking, bounded) until
    /// none is left; in subreaper mode also reaps the orphans that were the
    /// worker's children (not the leader, which its waiter reaps).
    pub fn kill_all(&self) {
        if self.with_cgroup(AttemptCgroup::kill_all).is_some() {
            return;
        }
        if self.containment.uses_cgroups() {
            // The cgroup is already gone, and its processes with it.
            return;
        }
        let leader = self.leader();
        for _ in 0..SWEEP_ROUNDS {
            let targets = self.containment.sweep_targets(&self.marker, leader);
            let mut alive = false;
            for (pid, zombie) in targets {
                if Some(pid) == leader {
                    if !zombie {
                        alive = true;
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    continue;
                }
                if zombie {
                    // Only the worker's own children can be reaped here; others are
                    // reaped by their parent, itself killed in this sweep.
                    let _ = nix::sys::wait::waitpid(
                        Pid::from_raw(pid),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                    );
                } else {
                    alive = true;
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            if !alive {
                return;
            }
            std::thread::sleep(SWEEP_PAUSE);
        }
        tracing::warn!(marker = %self.marker, "processes of the attempt survived the sweep");
    }

    /// What the kernel accounted (cgroup mode only).
    pub fn usage(&self) -> Option<CgroupUsage> {
        self.with_cgroup(AttemptCgroup::usage)
    }

    /// How many processes of the attempt the kernel's OOM killer killed.
    pub fn oom_kills(&self) -> u64 {
        self.with_cgroup(AttemptCgroup::oom_kills).unwrap_or(0)
    }

    /// Kills what is left and removes the cgroup (blocking); once.
    pub fn finish(&self) {
        self.kill_all();
        if let Some(cgroup) = lock(&self.cgroup, "cgroup").take() {
            cgroup.remove();
        }
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(cgroup) = lock(&self.cgroup, "cgroup").take() {
            cgroup.remove();
        }
        self.leader_reaped();
    }
}
