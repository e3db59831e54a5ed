//! `ferry` processes run the way a user runs them, in a HOME of the test's own:
//! `ferry dev` (a one-process cluster that writes the client config under
//! that HOME), and any long-running `ferry` command (`ferry ui`) whose stdout
//! lines a test waits for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{CliResult, bin, wait_for};

/// A `ferry` command with `HOME` set to `home` and no Ferry or XDG variables
/// inherited, so that only what the test sets up can configure it.
pub fn isolated(home: &Path) -> Command {
    let mut command = Command::new(bin("ferry"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("FERRY_") || key.starts_with("XDG_") {
            command.env_remove(&key);
        }
    }
    command.env("HOME", home).stdin(Stdio::null());
    command
}

/// Runs `ferry ARGS` in `cwd` with [`isolated`] and waits for it.
pub fn run_ferry(home: &Path, cwd: &Path, args: &[&str]) -> CliResult {
    let output = isolated(home)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run ferry");
    CliResult::from(output)
}

/// A running `ferry` command; SIGKILLed when dropped if it is still running.
pub struct FerryProcess {
    child: Child,
    /// Lines of its stdout, read by a thread.
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    /// Its stderr.
    pub log: PathBuf,
}

impl FerryProcess {
    /// Starts `ferry ARGS` in `home` (its stderr in `home/LOG_NAME.log`).
    pub fn start(home: &Path, log_name: &str, args: &[&str]) -> FerryProcess {
        let log = home.join(format!("{log_name}.log"));
        let mut child = isolated(home)
            .args(args)
            .current_dir(home)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start ferry");
        let stdout = child.stdout.take().expect("stdout pipe");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        FerryProcess {
            child,
            lines,
            stdout: Vec::new(),
            log,
        }
    }

    /// Waits (bounded) for a stdout line containing `text` and returns it.
    pub fn wait_line(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout.iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(error) => panic!(
                    "no line with {text:?} from ferry ({error}); stdout: {:?}; stderr:\n{}",
                    self.stdout,
                    self.log_text()
                ),
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for it to exit by itself.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let child = &mut self.child;
        wait_for(
            Duration::from_secs(20),
            "ferry to exit after SIGTERM",
            || child.try_wait().expect("try_wait"),
        )
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `ferry dev` in `home` on a free port (2 CPUs, 2 GiB), with `extra`
/// arguments.
pub fn start_dev(home: &Path, extra: &[&str]) -> FerryProcess {
    let mut args = vec![
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--cpus",
        "2",
        "--memory",
        "2Gi",
    ];
    args.extend_from_slice(extra);
    FerryProcess::start(home, "dev", &args)
}
