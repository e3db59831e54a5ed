//! An S3-compatible server for the tests of the S3 blob backend: s3s-fs (the
//! s3s project's file-backed server, `cargo install s3s-fs@0.14.1 --features
//! binary --locked`; `tests/run-all.sh` installs it), started on 127.0.0.1 at
//! a free port with one credential pair, stopped when dropped. It keeps object
//! `KEY` of bucket `B` in the file `<root>/B/KEY`, so a test can look at (and
//! damage) what the bucket holds.
//!
//! The binary is `$FERRY_S3S_FS`, else `s3s-fs` on the PATH. Without it the
//! tests fail saying how to install it; they are skipped (saying so) only when
//! `FERRY_SKIP_S3=1`.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

pub const ACCESS_KEY: &str = "ferry-test-key";
pub const SECRET_KEY: &str = "ferry-test-secret-0123456789";
pub const BUCKET: &str = "ferry-test";

pub struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    pub port: u16,
}

/// The s3s-fs binary to run.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_S3S_FS") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("s3s-fs"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the S3 tests need s3s-fs: `cargo install s3s-fs@0.14.1 --features binary \
                 --locked` (tests/run-all.sh does), or set FERRY_S3S_FS to its path; \
                 FERRY_SKIP_S3=1 skips them"
            )
        })
}

impl S3Server {
    /// Starts the server with bucket [`BUCKET`] created; `None` (after saying
    /// so) only when `FERRY_SKIP_S3=1`.
    pub fn start() -> Option<S3Server> {
        if std::env::var("FERRY_SKIP_S3").as_deref() == Ok("1") {
            eprintln!("SKIPPED: FERRY_SKIP_S3=1: the S3 blob backend is not tested");
            return None;
        }
        let binary = binary();
        let root = tempfile::tempdir().expect("temp dir");
        // s3s-fs keeps a bucket as a directory of its root.
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let port = free_port();
        let log = std::fs::File::create(root.path().join("..s3s-fs.log"))
            .or_else(|_| tempfile::tempfile())
            .expect("log file");
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut server = S3Server { child, root, port };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("s3s-fs exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps object `key` of [`BUCKET`].
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// The keys of every object under `prefix` in [`BUCKET`] (files under it,
    /// with '/' separators), sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let bucket = self.root.path().join(BUCKET);
        let mut found = Vec::new();
        let mut pending = vec![bucket.join(prefix)];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(key) = path.strip_prefix(&bucket) {
                    found.push(key.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    /// `[blobs]` for a coordinator using this server, with key prefix
    /// `prefix`; credentials from `credentials_file` when given (else the
    /// coordinator's environment, see [`S3Server::environment`]).
    pub fn blobs_toml(&self, prefix: &str, credentials_file: Option<&Path>) -> String {
        let file = credentials_file
            .map(|path| format!("credentials_file = \"{}\"\n", path.display()))
            .unwrap_or_default();
        format!(
            "[blobs]\nbackend = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n{file}",
            self.endpoint()
        )
    }

    /// Writes a credentials file for this server (mode 0600) at `path`.
    pub fn write_credentials_file(&self, path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            path,
            format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
        )
        .expect("credentials file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .expect("credentials file mode");
    }

    /// The environment that gives a coordinator this server's credentials.
    pub fn environment() -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
