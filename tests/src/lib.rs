//! The shared harness of Ferry's integration tests: it finds the built binaries,
//! makes a CA and certificates at run time with `ferry certs`, picks free ports on
//! 127.0.0.1, starts real coordinator and worker processes, runs the `ferry` CLI
//! against them, and kills everything it started when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/integration-xxxx → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

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

/// A coordinator process and any number of worker processes, with certificates.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub pki: Pki,
    pub port: u16,
    pub coordinator: Option<Daemon>,
    pub workers: BTreeMap<String, Daemon>,
    coordinator_starts: usize,
}

pub const CLIENT: &str = "alice";

impl Cluster {
    /// A running coordinator with no worker yet.
    pub fn start() -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(&root.path().join("certs")).expect("CA");
        pki.issue("coordinator", "coordinator")
            .expect("coordinator cert");
        pki.issue("client", CLIENT).expect("client cert");
        let mut cluster = Cluster {
            pki,
            port: free_port(),
            root,
            coordinator: None,
            workers: BTreeMap::new(),
            coordinator_starts: 0,
        };
        cluster.start_coordinator();
        cluster
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    /// Starts (or restarts) the coordinator on the cluster's port and waits until
    /// it answers.
    pub fn start_coordinator(&mut self) {
        let config = self.path("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{}\"\ndata_dir = \"coordinator-data\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/coordinator.pem\"\nkey = \"certs/coordinator-key.pem\"\n",
                self.address()
            ),
        )
        .expect("coordinator config");
        self.coordinator_starts += 1;
        let log = self.path(&format!("coordinator-{}.log", self.coordinator_starts));
        let child = Command::new(bin("ferry-coordinator"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start coordinator");
        self.coordinator = Some(Daemon { child, log });
        wait_for(Duration::from_secs(30), "the coordinator to answer", || {
            self.ferry(&["runs"]).success().then_some(())
        });
    }

    /// SIGKILLs the coordinator.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut daemon) = self.coordinator.take() {
            daemon.kill();
        }
    }

    /// Issues a worker certificate and starts a worker with extra `worker.toml`
    /// lines (capacity overrides, GPU inventory, labels); waits until it is connected.
    pub fn add_worker(&mut self, name: &str, extra_config: &str) {
        if !self.pki.cert(name).exists() {
            self.pki.issue("worker", name).expect("worker cert");
        }
        let config = self.path(&format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\ncoordinator = \"{}\"\ndata_dir = \"{name}-data\"\n{extra_config}\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{name}.pem\"\nkey = \"certs/{name}-key.pem\"\n",
                self.address()
            ),
        )
        .expect("worker config");
        let log = self.path(&format!("{name}.log"));
        let child = Command::new(bin("ferry-worker"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start worker");
        self.workers.insert(name.to_string(), Daemon { child, log });
        self.wait_worker_connected(name);
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
        let output = Command::new(bin("ferry"))
            .args(args)
            .env("HOME", self.root.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("FERRY_CONFIG")
            .env("FERRY_COORDINATOR", self.address())
            .env("FERRY_CA", ca)
            .env("FERRY_CERT", cert)
            .env("FERRY_KEY", key)
            .stdin(Stdio::null())
            .output()
            .expect("run ferry");
        CliResult::from(output)
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
