//! The shared harness of Ferry's integration tests: it finds the built binaries
//! (refusing stale ones, `binaries`), makes a CA and certificates at run time with
//! `ferry certs`, hands out ports on 127.0.0.1 that nothing else can take
//! (`ports`), starts real coordinator and worker processes, runs the `ferry` CLI
//! against them, and kills everything it started when dropped.

pub mod artifact_bench;
mod binaries;
pub mod browser;
pub mod chaos;
pub mod container_bench;
pub mod dev;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod lazyfs;
pub mod linearizability;
pub mod load;
pub mod logs_bench;
pub mod netns;
mod ports;
pub mod procfs;
mod proxy;
pub mod s3;
pub mod sched_bench;
pub mod sdk_bench;
pub mod ui_bench;
pub mod uploads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub use binaries::{bin, bin_dir};
pub use ports::free_port;

/// Polls `check` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates a CA in `dir` and issues certificates with the real `ferry certs`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        run_ok(
            Command::new(bin("ferry"))
                .args(["certs", "init", "--dir"])
                .arg(dir),
        )?;
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    pub fn issue(&self, role: &str, name: &str) -> anyhow::Result<()> {
        run_ok(
            Command::new(bin("ferry"))
                .args(["certs", "issue", "--dir"])
                .arg(&self.dir)
                .args(["--role", role, "--name", name]),
        )?;
        Ok(())
    }

    /// A coordinator certificate for member `id` (named `member-<id>`), valid
    /// for `ips` besides 127.0.0.1.
    pub fn issue_member(&self, id: u64, ips: &[String]) -> anyhow::Result<()> {
        let mut command = Command::new(bin("ferry"));
        command
            .args(["certs", "issue", "--dir"])
            .arg(&self.dir)
            .args(["--role", "coordinator", "--member", &id.to_string()]);
        for ip in ips {
            command.args(["--ip", ip]);
        }
        run_ok(&mut command)?;
        Ok(())
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }
}

fn run_ok(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.output().context("cannot run command")?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}{}",
            command,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// One started daemon; killed (SIGKILL) and reaped when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of one `ferry` invocation.
#[derive(Debug)]
pub struct CliResult {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CliResult {
    fn from(output: Output) -> CliResult {
        CliResult {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl CliResult {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// One coordinator of a cluster: its Raft id, its port, and its process if running.
pub struct Coordinator {
    pub id: u64,
    /// The address it listens on: 127.0.0.1, or its own in a partitionable
    /// cluster (`netns`).
    pub host: std::net::IpAddr,
    pub port: u16,
    pub daemon: Option<Daemon>,
    starts: usize,
}

impl Coordinator {
    pub fn address(&self) -> String {
        std::net::SocketAddr::new(self.host, self.port).to_string()
    }

    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }
}

/// Coordinator processes (one, three or five, a Raft group) and any number of
/// worker processes, with certificates.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub pki: Pki,
    pub coordinators: Vec<Coordinator>,
    pub workers: BTreeMap<String, Daemon>,
    /// Extra lines for every coordinator's configuration (e.g. `[raft]` settings).
    pub coordinator_extra: String,
    /// Extra environment for coordinators started from now on, by member id (e.g.
    /// `FERRY_FAULTS` to arm fault points).
    pub coordinator_env: BTreeMap<u64, Vec<(String, String)>>,
    /// The namespaces and links of a partitionable cluster
    /// (`Cluster::start_partitionable`); dropped after every process is killed.
    pub network: Option<netns::Network>,
    /// Where members keep their data directories (`coordinator-ID-data` in it);
    /// None: beside their configurations in `root`.
    data_root: Option<PathBuf>,
}

pub const CLIENT: &str = "alice";

impl Drop for Cluster {
    /// A failing test shows the end of every coordinator's and every worker's log.
    /// The workers are killed, and the cgroups they leave (with any step still in
    /// them) removed.
    fn drop(&mut self) {
        let trees: Vec<String> = self
            .workers
            .keys()
            .map(|name| worker_cgroup_tree(name, &self.path(&format!("{name}-data"))))
            .collect();
        if std::thread::panicking() {
            self.print_logs();
        }
        for worker in self.workers.values_mut() {
            worker.kill();
        }
        remove_worker_cgroups(&trees);
    }
}

/// The name of a worker's cgroup tree (`ferry_worker::cgroup::worker_cgroup_name`
/// for the names tests use): its name and a hash of its data directory.
fn worker_cgroup_tree(name: &str, data_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hash = blake3::hash(data_dir.as_os_str().as_bytes()).to_hex();
    format!("{name}-{}", &hash[..12])
}

/// Kills what is left in the named worker trees (under any `ferry` folder of any
/// mounted cgroup hierarchy) and removes them.
fn remove_worker_cgroups(trees: &[String]) {
    if trees.is_empty() {
        return;
    }
    let mut ferry_folders = Vec::new();
    let mut pending = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == "ferry" {
                ferry_folders.push(entry.path());
            } else if depth < 3 {
                pending.push((entry.path(), depth + 1));
            }
        }
    }
    for ferry in ferry_folders {
        for tree in trees {
            let tree = ferry.join(tree);
            let Ok(entries) = std::fs::read_dir(&tree) else {
                continue;
            };
            for attempt in entries.flatten() {
                if attempt.file_type().is_ok_and(|t| t.is_dir()) {
                    let attempt = attempt.path();
                    for _ in 0..100 {
                        let procs = std::fs::read_to_string(attempt.join("cgroup.procs"))
                            .unwrap_or_default();
                        let pids: Vec<i32> = procs
                            .lines()
                            .filter_map(|l| l.trim().parse().ok())
                            .collect();
                        if pids.is_empty() {
                            break;
                        }
                        for pid in pids {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        // A v1 cgroup left frozen holds its processes until thawed.
                        let _ = std::fs::write(attempt.join("freezer.state"), "THAWED");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let _ = std::fs::remove_dir(&attempt);
                }
            }
            let _ = std::fs::remove_dir(&tree);
        }
    }
}

impl Cluster {
    fn print_logs(&self) {
        for slot in &self.coordinators {
            print_log_tail(
                &format!("coordinator {}", slot.id),
                &self.member_log(slot.id),
            );
        }
        for (name, worker) in &self.workers {
            print_log_tail(&format!("worker {name}"), &worker.log_text());
        }
    }
}

/// Prints the last lines of a daemon's log to stderr, under a title naming it.
fn print_log_tail(title: &str, log: &str) {
    const LINES: usize = 40;
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    eprintln!(
        "---- {title} (last {} lines) ----\n{}",
        tail.len(),
        tail.join("\n")
    );
}

impl Cluster {
    /// A running coordinator with no worker yet.
    pub fn start() -> Cluster {
        Cluster::start_replicated(1, "")
    }

    /// `members` coordinators forming one Raft group, all running and answering,
    /// with `extra` lines appended to each configuration.
    pub fn start_replicated(members: u64, extra: &str) -> Cluster {
        let mut cluster = Cluster::unstarted(members, extra);
        for id in 1..=members {
            cluster.spawn_coordinator(id, false);
        }
        cluster.wait_answering();
        cluster
    }

    /// Like [`Cluster::start_replicated`], with `env` in every coordinator's
    /// environment.
    pub fn start_replicated_with_env(
        members: u64,
        extra: &str,
        env: &[(String, String)],
    ) -> Cluster {
        let mut cluster = Cluster::unstarted(members, extra);
        for id in 1..=members {
            cluster.coordinator_env.insert(id, env.to_vec());
            cluster.spawn_coordinator(id, false);
        }
        cluster.wait_answering();
        cluster
    }

    /// Like [`Cluster::start_replicated`], with every member's data directory in
    /// `data_root` (e.g. on a test filesystem) instead of the cluster's temporary
    /// folder.
    pub fn start_replicated_on(members: u64, extra: &str, data_root: &Path) -> Cluster {
        let mut cluster = Cluster::unstarted(members, extra);
        cluster.data_root = Some(data_root.to_path_buf());
        for id in 1..=members {
            cluster.spawn_coordinator(id, false);
        }
        cluster.wait_answering();
        cluster
    }

    /// A cluster of `members` coordinators, with certificates, none started.
    fn unstarted(members: u64, extra: &str) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(&root.path().join("certs")).expect("CA");
        for id in 1..=members {
            pki.issue_member(id, &[]).expect("coordinator cert");
        }
        pki.issue("client", CLIENT).expect("client cert");
        Cluster {
            pki,
            root,
            coordinators: (1..=members)
                .map(|id| Coordinator {
                    id,
                    host: std::net::Ipv4Addr::LOCALHOST.into(),
                    port: free_port(),
                    daemon: None,
                    starts: 0,
                })
                .collect(),
            workers: BTreeMap::new(),
            coordinator_extra: extra.to_string(),
            coordinator_env: BTreeMap::new(),
            network: None,
            data_root: None,
        }
    }

    /// The first coordinator's address.
    pub fn address(&self) -> String {
        self.coordinators[0].address()
    }

    /// Every coordinator's address, comma-separated (what clients are given).
    pub fn addresses(&self) -> String {
        self.coordinators
            .iter()
            .map(Coordinator::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn members_toml(&self) -> String {
        if self.coordinators.len() == 1 {
            return String::new();
        }
        self.coordinators
            .iter()
            .map(|c| {
                format!(
                    "[[members]]\nid = {}\nclient_address = \"{}\"\n",
                    c.id,
                    c.address()
                )
            })
            .collect()
    }

    /// Writes coordinator `id`'s configuration and starts it (without waiting).
    /// `join`: start empty, to be added with `ferry cluster add-member`.
    pub fn spawn_coordinator(&mut self, id: u64, join: bool) {
        let index = self.index_of(id);
        let config = self.path(&format!("coordinator-{id}.toml"));
        let address = self.coordinators[index].address();
        let join_line = if join { "join = true\n" } else { "" };
        let data_dir = match &self.data_root {
            Some(root) => root.join(format!("coordinator-{id}-data")),
            None => PathBuf::from(format!("coordinator-{id}-data")),
        };
        let data_dir = data_dir.to_str().expect("utf-8 data directory");
        // The cluster's client user administers it (cordon, gc, membership),
        // unless the test names the administrators itself.
        let admins_line = if self.coordinator_extra.contains("admins") {
            String::new()
        } else {
            format!("admins = [\"{CLIENT}\"]\n")
        };
        // Each member presents its own certificate (`member-<id>`); one added
        // later gets its own when it first starts.
        let cert_name = ferry_common::pki::member_name(id);
        if !self.pki.cert(&cert_name).exists() {
            self.pki
                .issue_member(id, &[self.coordinators[index].host.to_string()])
                .expect("coordinator cert");
        }
        std::fs::write(
            &config,
            format!(
                "id = {id}\nlisten = \"{address}\"\ndata_dir = \"{data_dir}\"\n{join_line}{admins_line}{}\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{cert_name}.pem\"\nkey = \"certs/{cert_name}-key.pem\"\n{}",
                self.coordinator_extra,
                self.members_toml(),
            ),
        )
        .expect("coordinator config");
        let slot = &mut self.coordinators[index];
        slot.starts += 1;
        let log = self
            .root
            .path()
            .join(format!("coordinator-{id}-{}.log", slot.starts));
        let env = self.coordinator_env.get(&id).cloned().unwrap_or_default();
        let mut command = self.command_at(netns::Place::Member(id), bin("ferry-coordinator"));
        command
            .arg("--config")
            .arg(&config)
            // FERRY_COORDINATOR_LOG (e.g. `info,ferry_coordinator=debug`) lets a
            // benchmark see the debug events; workers take RUST_LOG as it is.
            .env(
                "RUST_LOG",
                std::env::var("FERRY_COORDINATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("start coordinator");
        let slot = &mut self.coordinators[index];
        slot.daemon = Some(Daemon { child, log });
    }

    fn index_of(&self, id: u64) -> usize {
        self.coordinators
            .iter()
            .position(|c| c.id == id)
            .unwrap_or_else(|| panic!("no coordinator {id}"))
    }

    /// Waits until the cluster answers a linearizable read (it has a leader).
    pub fn wait_answering(&self) {
        wait_for(
            Duration::from_secs(30),
            "the coordinators to answer",
            || self.ferry(&["runs"]).success().then_some(()),
        );
    }

    /// Starts (or restarts) the first coordinator and waits until it answers.
    pub fn start_coordinator(&mut self) {
        let id = self.coordinators[0].id;
        self.spawn_coordinator(id, false);
        self.wait_answering();
    }

    /// SIGKILLs the first coordinator.
    pub fn kill_coordinator(&mut self) {
        let id = self.coordinators[0].id;
        self.kill_member(id);
    }

    /// SIGKILLs coordinator `id`.
    pub fn kill_member(&mut self, id: u64) {
        let index = self.index_of(id);
        if let Some(mut daemon) = self.coordinators[index].daemon.take() {
            daemon.kill();
        }
    }

    /// SIGTERMs coordinator `id` and waits for it to exit.
    pub fn terminate_member(&mut self, id: u64) {
        let index = self.index_of(id);
        if let Some(mut daemon) = self.coordinators[index].daemon.take() {
            daemon.terminate();
        }
    }

    /// Reserves a port for a coordinator that is not started yet (to be added with
    /// `ferry cluster add-member`).
    pub fn add_coordinator_slot(&mut self, id: u64) -> String {
        self.coordinators.push(Coordinator {
            id,
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port: free_port(),
            daemon: None,
            starts: 0,
        });
        self.coordinators.last().expect("just pushed").address()
    }

    /// Sends a signal to coordinator `id` without taking it out of the cluster
    /// (usable while other threads share the cluster); `kill_member` reaps it.
    pub fn signal_member(&self, id: u64, signal: nix::sys::signal::Signal) {
        let slot = &self.coordinators[self.index_of(id)];
        if let Some(daemon) = &slot.daemon {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid()), signal);
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) coordinator `id`: a partition that
    /// needs no privileges — the process keeps its sockets but answers nothing.
    pub fn pause_member(&self, id: u64, paused: bool) {
        let signal = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        self.signal_member(id, signal);
    }

    /// Everything coordinator `id` has logged in all its starts.
    pub fn member_log(&self, id: u64) -> String {
        let slot = &self.coordinators[self.index_of(id)];
        (1..=slot.starts)
            .map(|start| {
                std::fs::read_to_string(self.path(&format!("coordinator-{id}-{start}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Whether coordinator `id`'s process has exited by itself.
    pub fn member_exited(&mut self, id: u64) -> bool {
        let index = self.index_of(id);
        match &mut self.coordinators[index].daemon {
            Some(daemon) => matches!(daemon.child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// How member `id`'s process ended, once it has (None while it runs or when
    /// it was never started).
    pub fn member_exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let index = self.index_of(id);
        let daemon = self.coordinators[index].daemon.as_mut()?;
        daemon.child.try_wait().ok().flatten()
    }

    /// `ferry runs --output json` (linearizable unless `stale`) at member `id`, or
    /// through any member when `id` is None; None when the call fails.
    pub fn runs_listing(&self, id: Option<u64>, stale: bool) -> Option<Value> {
        let mut args = vec!["runs", "--output", "json", "--limit", "0"];
        if stale {
            args.push("--stale");
        }
        let result = match id {
            Some(id) => self.ferry_at(id, &args),
            None => self.ferry(&args),
        };
        result.success().then(|| result.json())
    }

    /// The run ids of [`Cluster::runs_listing`].
    pub fn run_ids(&self, id: Option<u64>, stale: bool) -> Option<std::collections::BTreeSet<u64>> {
        Some(
            self.runs_listing(id, stale)?
                .as_array()?
                .iter()
                .filter_map(|run| run["run"].as_u64())
                .collect(),
        )
    }

    /// `ferry cluster status --output json`, asked of any live member.
    pub fn cluster_status(&self) -> Option<Value> {
        let result = self.ferry(&["cluster", "status", "--output", "json"]);
        result.success().then(|| result.json())
    }

    /// The current leader's id, once a live member reports one that is running.
    pub fn leader(&self, timeout: Duration) -> u64 {
        wait_for(timeout, "a leader", || {
            let status = self.cluster_status()?;
            let leader = status["leader_id"].as_u64()?;
            let running = self
                .coordinators
                .iter()
                .any(|c| c.id == leader && c.is_running());
            (leader != 0 && running).then_some(leader)
        })
    }

    /// Issues a worker certificate and starts a worker with extra `worker.toml`
    /// lines (capacity overrides, GPU inventory, labels); waits until it is connected.
    ///
    /// Unless `extra_config` sets `run_as`, steps run as root (`run_as = "root"`):
    /// most tests share files with their steps through the test's private
    /// temporary folder. `t41_containment` runs them as an unprivileged user.
    pub fn add_worker(&mut self, name: &str, extra_config: &str) {
        self.add_worker_with_env(name, extra_config, &[]);
    }

    /// [`Cluster::add_worker`] with extra variables in the worker's environment.
    pub fn add_worker_with_env(&mut self, name: &str, extra_config: &str, env: &[(&str, &str)]) {
        if !self.pki.cert(name).exists() {
            self.pki.issue("worker", name).expect("worker cert");
        }
        let config = self.path(&format!("{name}.toml"));
        let run_as = if extra_config.contains("run_as") {
            ""
        } else {
            "run_as = \"root\"\n"
        };
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\n{}\ndata_dir = \"{name}-data\"\n{run_as}{extra_config}\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{name}.pem\"\nkey = \"certs/{name}-key.pem\"\n",
                self.worker_coordinators_line()
            ),
        )
        .expect("worker config");
        let log = self.path(&format!("{name}.log"));
        let mut command = self.command_at(netns::Place::Workers, bin("ferry-worker"));
        command
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("start worker");
        self.workers.insert(name.to_string(), Daemon { child, log });
        self.wait_worker_connected(name);
    }

    /// Stops worker `name` with SIGTERM and waits (bounded) for it to exit.
    pub fn terminate_worker(&mut self, name: &str) {
        if let Some(worker) = self.workers.get_mut(name) {
            worker.terminate();
        }
    }

    /// Sends a signal to worker `name` (SIGKILL, or SIGSTOP/SIGCONT to cut it off
    /// and bring it back without closing its sockets).
    pub fn signal_worker(&self, name: &str, signal: nix::sys::signal::Signal) {
        let daemon = self.workers.get(name).expect("no such worker");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid()), signal);
    }

    /// Everything worker `name` has logged.
    pub fn worker_log(&self, name: &str) -> String {
        self.workers
            .get(name)
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    fn worker_coordinators_line(&self) -> String {
        if self.coordinators.len() == 1 {
            return format!("coordinator = \"{}\"", self.address());
        }
        let list: Vec<String> = self
            .coordinators
            .iter()
            .map(|c| format!("\"{}\"", c.address()))
            .collect();
        format!("coordinators = [{}]", list.join(", "))
    }

    pub fn wait_worker_connected(&self, name: &str) {
        wait_for(Duration::from_secs(30), "the worker to connect", || {
            let result = self.ferry(&["workers", "--output", "json"]);
            if !result.success() {
                return None;
            }
            result
                .json()
                .as_array()?
                .iter()
                .any(|w| w["name"] == name && w["connected"] == true)
                .then_some(())
        });
    }

    /// Runs `ferry` as the cluster's client user.
    pub fn ferry(&self, args: &[&str]) -> CliResult {
        self.ferry_as(CLIENT, args)
    }

    /// Runs `ferry` presenting the certificate issued to `name` (any role).
    pub fn ferry_as(&self, name: &str, args: &[&str]) -> CliResult {
        self.ferry_with(
            &self.pki.ca(),
            &self.pki.cert(name),
            &self.pki.key(name),
            args,
        )
    }

    pub fn ferry_with(&self, ca: &Path, cert: &Path, key: &Path, args: &[&str]) -> CliResult {
        self.ferry_to(&self.addresses(), ca, cert, key, args)
    }

    /// Runs `ferry` as the client user against coordinator `id` only.
    pub fn ferry_at(&self, id: u64, args: &[&str]) -> CliResult {
        let address = self.coordinators[self.index_of(id)].address();
        self.ferry_to(
            &address,
            &self.pki.ca(),
            &self.pki.cert(CLIENT),
            &self.pki.key(CLIENT),
            args,
        )
    }

    fn ferry_to(
        &self,
        addresses: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
        args: &[&str],
    ) -> CliResult {
        let output = self
            .ferry_command(addresses, ca, cert, key, args)
            .output()
            .expect("run ferry");
        CliResult::from(output)
    }

    fn ferry_command(
        &self,
        addresses: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
        args: &[&str],
    ) -> Command {
        let mut command = self.command_at(netns::Place::Hub, bin("ferry"));
        command
            .args(args)
            .env("HOME", self.root.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("FERRY_CONFIG")
            .env("FERRY_COORDINATOR", addresses)
            .env("FERRY_CA", ca)
            .env("FERRY_CERT", cert)
            .env("FERRY_KEY", key)
            .stdin(Stdio::null());
        command
    }

    /// Starts `ferry` as the client user against every member without waiting for
    /// it, its output piped (a call the test may have to abandon).
    pub fn ferry_spawn(&self, args: &[&str]) -> Child {
        self.ferry_command(
            &self.addresses(),
            &self.pki.ca(),
            &self.pki.cert(CLIENT),
            &self.pki.key(CLIENT),
            args,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferry")
    }

    /// Runs `ferry` as the client user with its standard output a pipe that is
    /// closed before it writes (`ferry ... | head` once head has had enough).
    pub fn ferry_into_closed_pipe(&self, args: &[&str]) -> std::process::Output {
        let mut child = self
            .ferry_command(
                &self.addresses(),
                &self.pki.ca(),
                &self.pki.cert(CLIENT),
                &self.pki.key(CLIENT),
                args,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ferry");
        drop(child.stdout.take());
        child.wait_with_output().expect("wait for ferry")
    }

    /// Submits a pipeline and returns its run id.
    pub fn submit(&self, pipeline: &Path, extra: &[&str]) -> u64 {
        let path = pipeline.to_str().expect("utf-8 path");
        let mut args = vec!["run", path];
        args.extend_from_slice(extra);
        let result = self.ferry(&args);
        assert!(result.success(), "ferry run failed: {result:?}");
        parse_run_id(&result.stdout).unwrap_or_else(|| panic!("no run id in {result:?}"))
    }

    /// `ferry status RUN --output json`.
    pub fn status(&self, run: u64) -> Value {
        let result = self.ferry(&["status", &run.to_string(), "--output", "json"]);
        assert!(result.success(), "ferry status failed: {result:?}");
        result.json()
    }

    /// Waits until the run reaches a terminal state and returns its status.
    pub fn wait_run(&self, run: u64, timeout: Duration) -> Value {
        wait_for(timeout, &format!("run {run} to end"), || {
            let status = self.status(run);
            (status["state"] != "running").then_some(status)
        })
    }

    /// Waits until a step of a run is in `state`.
    pub fn wait_step(&self, run: u64, step: &str, state: &str, timeout: Duration) -> Value {
        wait_for(
            timeout,
            &format!("step {step} of run {run} to be {state}"),
            || {
                let status = self.status(run);
                let found = step_of(&status, step).clone();
                (found["state"] == state).then_some(found)
            },
        )
    }
}

/// The step named `name` in a status document.
pub fn step_of<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {status}"))
}

/// Reads `run N (...) submitted` from `ferry run`'s output.
pub fn parse_run_id(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("run "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
}

/// Writes a pipeline folder: `pipeline.yaml` plus extra files (name, content);
/// files ending in `.sh` are made executable.
pub fn write_pipeline(dir: &Path, yaml: &str, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("pipeline dir");
    for (name, content) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        std::fs::write(&path, content).expect("file");
        if name.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).expect("pipeline.yaml");
    path
}

/// How many live processes have `marker` in their command line.
pub fn processes_with_marker(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // Zombies have exited; only count live processes.
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .count()
}

/// A token no other process on the machine has in its command line.
pub fn marker(tag: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "ferrymark-{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// SIGKILLs every process whose command line contains `marker` (what a test left
/// behind on purpose, e.g. the orphans of a worker it killed).
pub fn kill_processes_with_marker(marker: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether any process still runs whose command line contains `marker`.
pub fn process_with_marker_exists(marker: &str) -> bool {
    processes_with_marker(marker) > 0
}

/// The workspace's root folder (for `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
