//! `ferry dev`: a whole cluster in one process — a coordinator and one worker with
//! this machine's capacity — with its own certificates in the data directory (0700;
//! the CA's private key is removed once they are issued, so that no step can mint
//! a certificate) and a client config written where every `ferry` command looks by
//! default. Steps run as the user who started it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_common::pki::{self, Role, TlsFiles};
use ferry_coordinator::config::{CoordinatorConfig, DEFAULT_MAX_BLOB_BYTES};
use ferry_coordinator::{Coordinator, CoordinatorError};
use ferry_worker::WorkerConfig;
use tokio::sync::watch;

use crate::config::{ClientConfig, ConfigError, default_config_path};

/// The coordinator's certificate names its member id (`pki::member_name(1)`):
/// `ferry dev` runs member 1 of a one-member cluster.
const COORDINATOR_NAME: &str = "member-1";
const CLIENT_NAME: &str = "dev-user";

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: Option<PathBuf>,
    /// Where to write the client configuration (`--config` or
    /// `FERRY_CONFIG`); none: the default path.
    pub config: Option<PathBuf>,
    pub listen: SocketAddr,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    /// Where the coordinator serves `GET /metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
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
    #[error(transparent)]
    Secrets(#[from] ferry_common::secrets::SecretsError),
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

/// Makes sure `dir` holds a certificate and key for every member, then removes
/// the CA's private key: steps of `ferry dev` run as the user who started it and
/// could read the key, and with it mint themselves a coordinator certificate.
/// When a certificate is missing and the CA key is gone, the whole set is issued
/// again under a new CA (the client config written at start points at the new
/// files).
fn ensure_certificates(dir: &Path, worker: &str) -> Result<(), DevError> {
    let wanted = [
        (Role::Coordinator, COORDINATOR_NAME),
        (Role::Worker, worker),
        (Role::Client, CLIENT_NAME),
    ];
    let missing = |name: &str| {
        !dir.join(format!("{name}.pem")).exists() || !dir.join(format!("{name}-key.pem")).exists()
    };
    let ca_key = dir.join(pki::CA_KEY_FILE);
    let ca_cert = dir.join(pki::CA_CERT_FILE);
    let complete = ca_cert.exists() && !wanted.iter().any(|(_, name)| missing(name));
    if !complete {
        if !ca_key.exists() {
            // Start over: a new CA, every certificate issued again.
            for path in [ca_cert.clone()]
                .into_iter()
                .chain(wanted.iter().flat_map(|(_, name)| {
                    [
                        dir.join(format!("{name}.pem")),
                        dir.join(format!("{name}-key.pem")),
                    ]
                }))
            {
                remove_if_present(&path)?;
            }
            pki::init_ca(dir)?;
        }
        for (role, name) in wanted {
            if missing(name) {
                // The CA key is removed below, so these certificates cannot be
                // renewed: they keep the daemons' long lifetime, the client's too.
                pki::issue_valid_for(dir, dir, role, name, &[], &[], pki::DAEMON_VALIDITY)?;
            }
        }
    }
    remove_if_present(&ca_key)
}

fn remove_if_present(path: &Path) -> Result<(), DevError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DevError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Creates `dir` readable by its owner only.
fn private_dir(dir: &Path) -> Result<(), DevError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| DevError::Io {
            path: dir.display().to_string(),
            source,
        })
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
    private_dir(&data_dir)?;
    private_dir(&certs)?;
    let worker = worker_name();
    ensure_certificates(&certs, &worker)?;
    let files = |name: &str| TlsFiles::in_dir(&certs, name);
    // The cluster's secrets key, made once beside the certificates.
    let secrets_key = certs.join("secrets.key");
    if !secrets_key.exists() {
        ferry_common::secrets::create_key_file(&secrets_key)?;
    }

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
        audit: Default::default(),
        limits: Default::default(),
        blobs: Default::default(),
        // The local user administers its own one-member cluster.
        admins: vec![CLIENT_NAME.to_string()],
        secrets_key: Some(secrets_key),
        secrets_keys: Vec::new(),
        metrics: ferry_coordinator::config::MetricsSettings {
            listen: options.metrics_listen,
        },
    })
    .await?;
    let address = coordinator.local_addr();
    println!(
        "ferry dev: coordinator listening on {address} (data in {})",
        data_dir.display()
    );
    if let Some(metrics) = coordinator.metrics_addr() {
        println!("ferry dev: metrics at http://{metrics}/metrics");
    }

    let client = ClientConfig {
        coordinators: vec![address.to_string()],
        tls: files(CLIENT_NAME),
    };
    let client_path = match options.config.clone() {
        Some(path) => path,
        None => default_config_path()?,
    };
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
        containment: Default::default(),
        pids_max: ferry_worker::config::DEFAULT_PIDS_MAX,
        // Steps of `ferry dev` run as the user who started it (its data directory
        // is that user's own; the CA key is gone, see `ensure_certificates`).
        run_as: ferry_worker::executor::environment::current_user_name(),
        pass_env: Vec::new(),
        max_unpacked_bundle_bytes: ferry_common::bundle::DEFAULT_MAX_UNPACKED_BYTES,
        max_bundle_entries: ferry_common::bundle::DEFAULT_MAX_ENTRIES,
        // Steps with an image run when Docker answers on this machine.
        container_runtime: Default::default(),
        docker_socket: ferry_worker::config::DEFAULT_DOCKER_SOCKET.into(),
        container_user: Default::default(),
        docker_config: None,
        // The worker's cache of inputs and bundles, with its default bound.
        cache: Default::default(),
        bucket_ca: None,
        // Served with the coordinator's, on `--metrics-listen`.
        metrics_listen: None,
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

    // One process, one /metrics: the worker's families beside the coordinator's.
    let worker_metrics = ferry_worker::metrics::WorkerMetrics::default();
    let mut coordinator = coordinator;
    let exported = worker_metrics.clone();
    coordinator.export_also(Box::new(move |registry| exported.register(registry)));
    let serving = coordinator.serve(shutdown.clone());
    let working = ferry_worker::run_with(worker_config, worker_metrics, shutdown.clone());
    let (served, worked) = tokio::join!(serving, working);
    served?;
    worked?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_coordinator_certificate_speaks_for_member_1() {
        assert_eq!(COORDINATOR_NAME, pki::member_name(1));
    }
}
