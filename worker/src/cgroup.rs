//! One cgroup per attempt, under a worker's own cgroup: on the unified hierarchy
//! (cgroup v2) one directory, on the legacy one (v1) one directory in each of the
//! `memory`, `pids`, `cpuacct` and `freezer` controllers. The kernel then limits
//! the attempt's memory and number of processes, accounts its peak memory and CPU
//! time, records an OOM kill, and lets the worker kill every process in it
//! however it left its process group or session (`cgroup.kill`, or
//! freeze-kill-thaw on v1).
//!
//! Layout: v2 `<mount>/ferry/<worker id>/<attempt>`, v1
//! `<controller mount>/<the worker's own cgroup>/ferry/<worker id>/<attempt>`.
//! The worker id is the worker's name and a hash of its data directory, so two
//! workers with the same name on one host (tests) never share a tree, and a
//! restarted worker finds what its previous run left behind. The parsing of the
//! kernel's files is pure and unit-tested here; the rest needs root and is
//! tested by `tests/tests/t41_containment.rs`.
//!
//! Written here rather than with `cgroups-rs` (which covers v1 and v2): the child
//! must join its cgroup itself between fork and exec, with a raw write that needs
//! no allocation, and the v1 tree must nest under the worker's own cgroup of each
//! controller (a worker confined to a memory cgroup must not place its steps
//! outside it); what is left is a handful of files per version.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The v1 controllers an attempt uses.
pub const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpuacct", "freezer"];
/// The v2 controllers an attempt's parent must enable for its children.
const V2_CONTROLLERS: [&str; 2] = ["memory", "pids"];
/// How many times the kill is repeated while processes are still found (a fork
/// racing the kill); each round waits a little for the kernel to finish.
const KILL_ROUNDS: u32 = 200;
const KILL_ROUND_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the memory and pids controllers is mounted: {0}")]
    NotMounted(String),
    #[error("cannot prepare the cgroup {path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The cgroup mounts of this machine, from `/proc/self/mountinfo`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// Where the unified (v2) hierarchy is mounted, if it is.
    pub unified: Option<PathBuf>,
    /// Where each v1 controller is mounted (`cpu,cpuacct` gives both names).
    pub v1: HashMap<String, PathBuf>,
}

/// Parses `/proc/self/mountinfo`: the mount point is field 5; after the ` - `
/// separator come the file system type, the source and the super options, which
/// name a v1 hierarchy's controllers.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount_path(mount_point));
        let mut after = after.split_whitespace();
        let (Some(fs_type), Some(_source), Some(options)) =
            (after.next(), after.next(), after.next())
        else {
            continue;
        };
        match fs_type {
            "cgroup2" if mounts.unified.is_none() => mounts.unified = Some(mount_point),
            "cgroup" => {
                for option in options.split(',') {
                    if V1_CONTROLLERS.contains(&option) {
                        mounts
                            .v1
                            .entry(option.to_string())
                            .or_insert_with(|| mount_point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\ooo`.
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/cgroup`: `0::/path` for v2, `N:ctrl1,ctrl2:/path` for v1.
/// Returns the v2 path and each v1 controller's path.
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, HashMap<String, String>) {
    let mut unified = None;
    let mut v1 = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            unified = Some(path.to_string());
        } else {
            for controller in controllers.split(',') {
                v1.insert(controller.to_string(), path.to_string());
            }
        }
    }
    (unified, v1)
}

/// A value of `name value` lines (`memory.events`, `cpu.stat`, `memory.oom_control`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// The pids listed in a `cgroup.procs` file.
pub fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A cgroup name for an attempt: only `[A-Za-z0-9_.-]`, short.
pub fn attempt_cgroup_name(run_id: u64, step: &str, attempt: u32, sequence: u64) -> String {
    let step: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("run{run_id}-{step}-a{attempt}-{sequence}")
}

/// The directory name of one worker's tree: its name and a hash of its data
/// directory.
pub fn worker_cgroup_name(worker: &str, data_dir: &Path) -> String {
    let hash = blake3::hash(data_dir.as_os_str().as_bytes()).to_hex();
    let name: String = worker
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{name}-{}", &hash[..12])
}

/// Which hierarchy the worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The worker's own tree of cgroups: one directory (v2) or one per controller (v1).
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub version: Version,
    /// v2: one entry ("unified"); v1: one per controller of [`V1_CONTROLLERS`].
    bases: Vec<(&'static str, PathBuf)>,
}

impl Hierarchy {
    /// Finds the hierarchy (v2 when its root offers memory and pids, else the v1
    /// controllers) and creates the worker's tree in it.
    pub fn detect(worker_id: &str) -> Result<Hierarchy, CgroupError> {
        let mounts = parse_mountinfo(
            &std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(io_error(Path::new("/proc/self/mountinfo")))?,
        );
        let (_, own_v1) =
            parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
        if let Some(root) = &mounts.unified {
            let available =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let names: BTreeSet<&str> = available.split_whitespace().collect();
            if V2_CONTROLLERS.iter().all(|c| names.contains(c)) {
                return Hierarchy::prepare_v2(root, worker_id);
            }
        }
        let missing: Vec<&str> = V1_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !mounts.v1.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            return Err(CgroupError::NotMounted(format!(
                "the unified hierarchy {} and the v1 controllers {} are missing",
                match &mounts.unified {
                    Some(root) =>
                        format!("at {} has no memory and pids controllers", root.display()),
                    None => "is not mounted".to_string(),
                },
                missing.join(", ")
            )));
        }
        let mut bases = Vec::new();
        for controller in V1_CONTROLLERS {
            let own = own_v1.get(controller).map(String::as_str).unwrap_or("/");
            let base = mounts.v1[controller]
                .join(own.trim_start_matches('/'))
                .join("ferry")
                .join(worker_id);
            std::fs::create_dir_all(&base).map_err(io_error(&base))?;
            bases.push((controller, base));
        }
        Ok(Hierarchy {
            version: Version::V1,
            bases,
        })
    }

    /// v2: `<root>/ferry/<worker id>`, with memory and pids enabled for the
    /// children of every level (the root's `cgroup.subtree_control` may be written
    /// while it holds processes; `ferry` and the worker's directory hold none).
    fn prepare_v2(root: &Path, worker_id: &str) -> Result<Hierarchy, CgroupError> {
        let ferry = root.join("ferry");
        let base = ferry.join(worker_id);
        std::fs::create_dir_all(&base).map_err(io_error(&base))?;
        let enable = V2_CONTROLLERS
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        for level in [root, &ferry, &base] {
            let control = level.join("cgroup.subtree_control");
            std::fs::write(&control, &enable).map_err(io_error(&control))?;
        }
        Ok(Hierarchy {
            version: Version::V2,
            bases: vec![("unified", base)],
        })
    }

    /// v1 only: the `tasks` file of the worker's own cgroup in the pids
    /// controller (the parent of its tree), where a thread of the worker may be
    /// moved without changing anything.
    pub fn own_tasks_file(&self) -> Option<PathBuf> {
        if self.version != Version::V1 {
            return None;
        }
        let (_, base) = self.bases.iter().find(|(c, _)| *c == "pids")?;
        Some(base.parent()?.parent()?.join("tasks"))
    }

    /// Where the worker's tree is (v1: the memory controller's).
    pub fn describe(&self) -> String {
        self.bases
            .iter()
            .map(|(_, base)| base.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Kills and removes every attempt cgroup a previous run of this worker left
    /// (it crashed or was killed); returns how many there were.
    pub fn clean_leftovers(&self) -> usize {
        let mut names = BTreeSet::new();
        for (_, base) in &self.bases {
            if let Ok(entries) = std::fs::read_dir(base) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        names.insert(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        for name in &names {
            let leftover = AttemptCgroup {
                version: self.version,
                dirs: self
                    .bases
                    .iter()
                    .map(|(c, base)| (*c, base.join(name)))
                    .collect(),
            };
            leftover.remove();
        }
        names.len()
    }

    /// Removes the worker's tree when it stops (what is left in it is killed
    /// first); the shared `ferry` folder stays.
    pub fn remove_tree(&self) {
        self.clean_leftovers();
        for (_, base) in &self.bases {
            if let Err(error) = std::fs::remove_dir(base)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(cgroup = %base.display(), %error, "the worker's cgroup could not be removed");
            }
        }
    }

    /// Creates an attempt's cgroup with its limits. A leftover of the same name is
    /// killed and removed first.
    pub fn create(
        &self,
        name: &str,
        memory_limit: Option<u64>,
        pids_max: u64,
    ) -> Result<AttemptCgroup, CgroupError> {
        let cgroup = AttemptCgroup {
            version: self.version,
            dirs: self
                .bases
                .iter()
                .map(|(c, base)| (*c, base.join(name)))
                .collect(),
        };
        if cgroup.dirs.iter().any(|(_, dir)| dir.exists()) {
            cgroup.remove();
        }
        for (_, dir) in &cgroup.dirs {
            std::fs::create_dir(dir).map_err(io_error(dir))?;
        }
        let write = |controller: &str, file: &str, value: &str| -> Result<(), CgroupError> {
            let path = cgroup.dir(controller).join(file);
            std::fs::write(&path, value).map_err(io_error(&path))
        };
        let result = (|| {
            match self.version {
                Version::V2 => {
                    if let Some(limit) = memory_limit {
                        write("memory", "memory.max", &limit.to_string())?;
                        // Swap would let the step hold more than its limit.
                        let _ = write("memory", "memory.swap.max", "0");
                    }
                    write("pids", "pids.max", &pids_max.to_string())?;
                }
                Version::V1 => {
                    if let Some(limit) = memory_limit {
                        write("memory", "memory.limit_in_bytes", &limit.to_string())?;
                        // Present only with swap accounting; must not be below the
                        // memory limit, so it is written second.
                        let _ = write("memory", "memory.memsw.limit_in_bytes", &limit.to_string());
                    }
                    write("pids", "pids.max", &pids_max.to_string())?;
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            cgroup.remove();
            return Err(error);
        }
        Ok(cgroup)
    }
}

/// One attempt's cgroup; removed (its processes killed first) by [`AttemptCgroup::remove`].
#[derive(Debug)]
pub struct AttemptCgroup {
    version: Version,
    dirs: Vec<(&'static str, PathBuf)>,
}

/// What the kernel accounted for an attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// The peak, when the kernel keeps one (v1 always, v2 from Linux 5.19).
    pub peak_memory_bytes: Option<u64>,
    pub current_memory_bytes: u64,
    pub cpu_time_ms: u64,
}

impl AttemptCgroup {
    /// The directory of `controller` (v2: the one directory).
    fn dir(&self, controller: &str) -> &Path {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller || self.version == Version::V2)
            .map(|(_, dir)| dir.as_path())
            .unwrap_or_else(|| self.dirs[0].1.as_path())
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(controller).join(file)).ok()
    }

    /// The `cgroup.procs` files a new process writes its pid to (`0`, itself)
    /// before it executes the step's program, as C strings so that the child
    /// needs no allocation between fork and exec.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|(_, dir)| {
                CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()
            })
            .collect()
    }

    /// Every process in the cgroup (v1: in any of its controllers).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = BTreeSet::new();
        for (_, dir) in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(parse_pids(&text));
            }
        }
        pids.into_iter().collect()
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Kills every process in the cgroup and returns once none is left (or after a
    /// bounded number of rounds). v2: `cgroup.kill` where the kernel has it, else
    /// freeze and SIGKILL; v1: freeze, SIGKILL every process, thaw, so that nothing
    /// forks between the listing and the kill.
    pub fn kill_all(&self) {
        use nix::sys::signal::Signal;
        for _ in 0..KILL_ROUNDS {
            if self.pids().is_empty() {
                return;
            }
            match self.version {
                Version::V2 => {
                    let dir = self.dir("unified");
                    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
                        let _ = std::fs::write(dir.join("cgroup.freeze"), "1");
                        self.signal_all(Signal::SIGKILL);
                        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
                    }
                }
                Version::V1 => {
                    let state = self.dir("freezer").join("freezer.state");
                    let _ = std::fs::write(&state, "FROZEN");
                    // FREEZING until every task is frozen; a bounded wait.
                    for _ in 0..50 {
                        match std::fs::read_to_string(&state) {
                            Ok(text) if text.trim() == "FREEZING" => {
                                std::thread::sleep(Duration::from_millis(2))
                            }
                            _ => break,
                        }
                    }
                    self.signal_all(Signal::SIGKILL);
                    let _ = std::fs::write(&state, "THAWED");
                }
            }
            std::thread::sleep(KILL_ROUND_PAUSE);
        }
        tracing::warn!(cgroup = %self.describe(), "processes are still in the cgroup after it was killed");
    }

    /// The cgroup's directory (v1: the memory controller's).
    pub fn describe(&self) -> String {
        self.dir("memory").display().to_string()
    }

    /// How many times the kernel's OOM killer killed a process in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        match self.version {
            Version::V2 => self
                .read("memory", "memory.events")
                .and_then(|t| keyed_value(&t, "oom_kill"))
                .unwrap_or(0),
            Version::V1 => {
                let control = self
                    .read("memory", "memory.oom_control")
                    .unwrap_or_default();
                match keyed_value(&control, "oom_kill") {
                    Some(kills) => kills,
                    // Older kernels: count the times the limit was hit with the
                    // OOM killer active.
                    None => self
                        .read("memory", "memory.failcnt")
                        .and_then(|t| t.trim().parse::<u64>().ok())
                        .map_or(0, |fails| u64::from(fails > 0)),
                }
            }
        }
    }

    /// What the kernel accounted so far.
    pub fn usage(&self) -> CgroupUsage {
        let number = |controller: &str, file: &str| {
            self.read(controller, file)
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        match self.version {
            Version::V2 => CgroupUsage {
                peak_memory_bytes: number("memory", "memory.peak"),
                current_memory_bytes: number("memory", "memory.current").unwrap_or(0),
                cpu_time_ms: self
                    .read("unified", "cpu.stat")
                    .and_then(|t| keyed_value(&t, "usage_usec"))
                    .unwrap_or(0)
                    / 1000,
            },
            Version::V1 => CgroupUsage {
                peak_memory_bytes: number("memory", "memory.max_usage_in_bytes"),
                current_memory_bytes: number("memory", "memory.usage_in_bytes").unwrap_or(0),
                cpu_time_ms: number("cpuacct", "cpuacct.usage").unwrap_or(0) / 1_000_000,
            },
        }
    }

    /// Kills what is left and removes the cgroup's directories (a directory is
    /// removable once no process is in it; a killed process leaves quickly, so
    /// the removal is retried a bounded number of times).
    pub fn remove(&self) {
        self.kill_all();
        for (_, dir) in &self.dirs {
            if !dir.exists() {
                continue;
            }
            // Nested cgroups a step could not create (the tree is root's) are not
            // expected; remove them first anyway.
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
            let mut removed = false;
            for _ in 0..KILL_ROUNDS {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {
                        removed = true;
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        removed = true;
                        break;
                    }
                    Err(_) => std::thread::sleep(KILL_ROUND_PAUSE),
                }
            }
            if !removed {
                tracing::warn!(cgroup = %dir.display(), "the attempt's cgroup could not be removed");
            }
        }
    }
}

/// How often [`KeepMigrationsFast`] moves its thread.
const KEEP_FAST_PERIOD: Duration = Duration::from_millis(4);

/// Cgroup v1: moving a process into a cgroup takes the kernel's lock for
/// cgroup changes (`cgroup_threadgroup_rwsem`) for writing, and the first
/// writer after a quiet spell waits for an RCU grace period (10-15 ms on the
/// development machine, measured) before it gets it; every start of an attempt
/// is such a move. This thread moves itself into the cgroup it is already in
/// every few milliseconds, which changes nothing but keeps that lock in the
/// mode where a writer does not wait: the same trade the kernel's
/// `favordynmods` mount option makes (cgroup v2 and newer v1 mounts), which a
/// worker cannot set on its host's hierarchy. Best effort: when a move fails, the
/// thread says so once and ends, and starts are only slower.
pub struct KeepMigrationsFast {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepMigrationsFast {
    pub fn start(tasks_file: PathBuf) -> io::Result<KeepMigrationsFast> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cgroup-keep-fast".into())
            .spawn(move || {
                let tid = nix::unistd::gettid().to_string();
                while !stopping.load(Ordering::Relaxed) {
                    if let Err(error) = std::fs::write(&tasks_file, &tid) {
                        tracing::warn!(
                            file = %tasks_file.display(),
                            %error,
                            "cannot keep cgroup moves fast; attempts start slower"
                        );
                        return;
                    }
                    std::thread::sleep(KEEP_FAST_PERIOD);
                }
            })?;
        Ok(KeepMigrationsFast {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KeepMigrationsFast {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_mounts_are_found_in_mountinfo() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /mnt/with\\040space rw - cgroup cgroup rw,blkio
";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            mounts.unified,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mounts.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            mounts.v1["cpuacct"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts.v1["pids"], PathBuf::from("/sys/fs/cgroup/pids"));
        assert_eq!(
            mounts.v1["freezer"],
            PathBuf::from("/sys/fs/cgroup/freezer")
        );
        assert!(!mounts.v1.contains_key("blkio") && !mounts.v1.contains_key("name=systemd"));
        assert_eq!(
            unescape_mount_path("/mnt/with\\040space"),
            "/mnt/with space"
        );
        assert_eq!(unescape_mount_path("/a\\"), "/a\\");
        assert_eq!(parse_mountinfo("garbage\n\n1 2 3 - x"), Mounts::default());
    }

    #[test]
    fn the_workers_own_cgroups_are_read_per_controller() {
        let (unified, v1) = parse_proc_cgroup(
            "9:name=systemd:/\n4:memory:/process_api/b3\n2:cpu,cpuacct:/x\n0::/user.slice/w.service\n",
        );
        assert_eq!(unified.as_deref(), Some("/user.slice/w.service"));
        assert_eq!(v1["memory"], "/process_api/b3");
        assert_eq!(v1["cpuacct"], "/x");
        assert_eq!(v1["cpu"], "/x");
        assert_eq!(parse_proc_cgroup("nonsense").1.len(), 0);
    }

    #[test]
    fn kernel_counters_are_parsed() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(2));
        assert_eq!(keyed_value(events, "missing"), None);
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(keyed_value(stat, "usage_usec"), Some(123456));
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(3));
        assert_eq!(parse_pids("12\n 13\n\nx\n"), vec![12, 13]);
    }

    // Needs root and a cgroup hierarchy (skipped otherwise): a real cgroup takes a
    // process, accounts it, kills it and goes away with the worker's tree.
    #[test]
    fn a_real_cgroup_holds_accounts_and_kills_a_process() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let worker = format!("unit-test-{}", std::process::id());
        let Ok(hierarchy) = Hierarchy::detect(&worker) else {
            return;
        };
        let cgroup = hierarchy.create("attempt", Some(64 << 20), 16).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        for file in cgroup.procs_files() {
            std::fs::write(file.to_str().unwrap(), child.id().to_string()).unwrap();
        }
        assert_eq!(cgroup.pids(), vec![child.id() as i32]);
        // Memory stays charged where it was allocated (the process joined late);
        // CPU time and the counters are read all the same.
        let _ = cgroup.usage();
        assert_eq!(cgroup.oom_kills(), 0);
        cgroup.kill_all();
        assert!(cgroup.pids().is_empty());
        assert!(!child.wait().unwrap().success());
        cgroup.remove();
        assert!(cgroup.dirs.iter().all(|(_, dir)| !dir.exists()));
        // A leftover of a crashed run is cleaned by the next start.
        let leftover = hierarchy.create("leftover", None, 16).unwrap();
        assert_eq!(hierarchy.clean_leftovers(), 1);
        assert!(leftover.dirs.iter().all(|(_, dir)| !dir.exists()));
        hierarchy.remove_tree();
        assert!(hierarchy.bases.iter().all(|(_, base)| !base.exists()));
    }

    #[test]
    fn cgroup_names_are_plain_and_distinct_per_worker_data_directory() {
        assert_eq!(
            attempt_cgroup_name(7, "train/../x y", 2, 9),
            "run7-train____x_y-a2-9"
        );
        let a = worker_cgroup_name("w1", Path::new("/tmp/a/w1-data"));
        let b = worker_cgroup_name("w1", Path::new("/tmp/b/w1-data"));
        assert_ne!(a, b);
        assert!(a.starts_with("w1-") && a.len() == "w1-".len() + 12);
        assert_eq!(a, worker_cgroup_name("w1", Path::new("/tmp/a/w1-data")));
        assert!(worker_cgroup_name("../..", Path::new("/")).starts_with(".._.."));
    }
}
