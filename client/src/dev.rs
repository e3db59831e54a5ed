//! `ferry dev`: a whole cluster in one process — a coordinator and one worker with
//! this machine's capacity — with its own CA and certificates in the data directory
//! and a client config written where every `ferry` command looks by default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_common::pki::{self, Role, TlsFiles};
use ferry_coordinator::config::{CoordinatorConfig, DEFAULT_MAX_BLOB_BYTES};
use ferry_coordinator::{Coordinator, CoordinatorError};
use ferry_worker::WorkerConfig;
use tokio::sync::watch;

use crate::config::{ClientConfig, ConfigError, default_config_path};

const COORDINATOR_NAME: &str = "dev-coordinator";
const CLIENT_NAME: &str = "dev-user";

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("neither XDG_DATA_HOME nor HOME is set; pass --data-dir")]
    NoHome,
    #[error("cannot create {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error(transparent)]
    Worker(#[from] ferry_worker::WorkerError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// `$XDG_DATA_HOME/ferry/dev`, else `$HOME/.local/share/ferry/dev`.
pub fn default_data_dir() -> Result<PathBuf, DevError> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("ferry/dev"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or(DevError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/ferry/dev"))
}

fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| pki::validate_name(h).is_ok());
    host.unwrap_or_else(|| "local".to_string())
}

/// Issues whatever certificate is still missing in `dir`.
fn ensure_certificates(dir: &Path, worker: &str) -> Result<(), DevError> {
    if !dir.join(pki::CA_CERT_FILE).exists() {
        pki::init_ca(dir)?;
    }
    let wanted = [
        (Role::Coordinator, COORDINATOR_NAME),
        (Role::Worker, worker),
        (Role::Client, CLIENT_NAME),
    ];
    for (role, name) in wanted {
        if !dir.join(format!("{name}.pem")).exists() {
            pki::issue(dir, dir, role, name, &[], &[])?;
        }
    }
    Ok(())
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// Runs the local cluster until `shutdown` turns true.
pub async fn run_dev(options: DevOptions, shutdown: watch::Receiver<bool>) -> Result<(), DevError> {
    let data_dir = absolute(match options.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    });
    let certs = data_dir.join("certs");
    std::fs::create_dir_all(&certs).map_err(|source| DevError::Io {
        path: certs.display().to_string(),
        source,
    })?;
    let worker = worker_name();
    ensure_certificates(&certs, &worker)?;
    let files = |name: &str| TlsFiles::in_dir(&certs, name);

    let coordinator = Coordinator::bind(CoordinatorConfig {
        listen: options.listen,
        data_dir: data_dir.join("coordinator"),
        tls: files(COORDINATOR_NAME),
        max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
        id: 1,
        peer_listen: None,
        members: Vec::new(),
        join: false,
        raft: Default::default(),
        scheduling: Default::default(),
        retention: Default::default(),
        // The local user administers its own one-member cluster.
        admins: vec![CLIENT_NAME.to_string()],
    })
    .await?;
    let address = coordinator.local_addr();
    println!(
        "ferry dev: coordinator listening on {address} (data in {})",
        data_dir.display()
    );

    let client = ClientConfig {
        coordinators: vec![address.to_string()],
        tls: files(CLIENT_NAME),
    };
    let client_path = default_config_path()?;
    if let Ok(previous) = std::fs::read_to_string(&client_path)
        && !previous.starts_with(crate::config::DEV_CONFIG_HEADER)
    {
        // A config for another cluster: keep it rather than lose it silently.
        let backup = client_path.with_extension("toml.bak");
        std::fs::rename(&client_path, &backup).map_err(|source| DevError::Io {
            path: backup.display().to_string(),
            source,
        })?;
        println!(
            "ferry dev: your previous client config was moved to {}",
            backup.display()
        );
    }
    client.write(&client_path)?;

    let worker_config = WorkerConfig {
        name: worker.clone(),
        coordinators: vec![address.to_string()],
        data_dir: data_dir.join("worker"),
        tls: files(&worker),
        labels: [("mode".to_string(), "dev".to_string())].into(),
        cpus: options.cpus,
        memory: options.memory,
        gpus: None,
        max_log_bytes_per_attempt: 64 * 1024 * 1024,
        memory_limit_factor: ferry_worker::config::DEFAULT_MEMORY_LIMIT_FACTOR,
        max_unpacked_bundle_bytes: ferry_common::bundle::DEFAULT_MAX_UNPACKED_BYTES,
        max_bundle_entries: ferry_common::bundle::DEFAULT_MAX_ENTRIES,
    };
    let capacity = ferry_worker::fingerprint::discover(&worker_config)
        .map_err(ferry_worker::WorkerError::from)?;
    println!(
        "ferry dev: worker \"{worker}\" joined: {} CPUs, {:.1} GiB, {}",
        capacity.cpu_millis as f64 / 1000.0,
        capacity.memory_bytes as f64 / (1u64 << 30) as f64,
        match capacity.gpus.len() {
            0 => "no GPUs".to_string(),
            n => format!("{n} GPUs"),
        }
    );
    println!(
        "ferry dev: client config written to {}",
        client_path.display()
    );
    println!(
        "ferry dev: try 'ferry run examples/iris/pipeline.yaml --watch'; Ctrl-C stops the cluster"
    );

    let serving = coordinator.serve(shutdown.clone());
    let working = ferry_worker::run(worker_config, shutdown.clone());
    let (served, worked) = tokio::join!(serving, working);
    served?;
    worked?;
    Ok(())
}
