//! `worker.toml`: the worker's name, its coordinators, where it keeps work
//! directories, its TLS files, labels, optional capacity overrides, and how
//! steps are contained (containment mode, pids limit, the user steps run as and
//! the variables they receive from the worker's environment) and the container
//! runtime (`container_runtime`, `docker_socket`, `container_user`), and the
//! bound on the cache of inputs and bundles (`[cache] max_bytes`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_common::config_file::{ConfigFileError, load_toml};
use ferry_common::pki::TlsFiles;
use serde::Deserialize;

pub use crate::container::{ContainerRuntimeMode, ContainerUser};
pub use crate::containment::ContainmentMode;

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "WorkerConfigFile")]
pub struct WorkerConfig {
    /// Must match the name in the worker's certificate.
    pub name: String,
    /// The coordinators' addresses, `HOST:PORT`, in the order they are tried; never
    /// empty. The worker finds the leader among them.
    pub coordinators: Vec<String>,
    /// Work directories, the cache of inputs and bundles.
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides the discovered number of CPUs (may be fractional).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Overrides the discovered memory, e.g. "8Gi".
    #[serde(default)]
    pub memory: Option<String>,
    /// An explicit GPU inventory that replaces discovery (for machines without
    /// drivers, and for tests). An empty list means "no GPUs".
    #[serde(default)]
    pub gpus: Option<Vec<GpuEntry>>,
    /// Most bytes of stdout+stderr kept per attempt; the rest is dropped with a marker.
    #[serde(default = "default_log_limit")]
    pub max_log_bytes_per_attempt: u64,
    /// A step whose processes hold more than this times its memory request is
    /// killed (0 turns the limit off).
    #[serde(default = "default_memory_limit_factor")]
    pub memory_limit_factor: f64,
    /// How attempts are contained: `auto` (a cgroup each where the worker can
    /// make one, else the subreaper), `cgroup` (required), `subreaper` (forced).
    #[serde(default)]
    pub containment: ContainmentMode,
    /// Most processes (and threads) one attempt may hold at once (cgroup mode).
    #[serde(default = "default_pids_max")]
    pub pids_max: u64,
    /// Who a root worker runs steps as (default `nobody`); a worker that is not
    /// root runs steps as itself and may only name itself.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Names of the worker's environment variables that steps also receive,
    /// besides PATH, LANG, LC_* and TZ.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Most bytes a code bundle may unpack to (its entries' declared sizes).
    #[serde(default = "default_max_unpacked_bundle_bytes")]
    pub max_unpacked_bundle_bytes: u64,
    /// Most entries (files, directories) a code bundle may hold.
    #[serde(default = "default_max_bundle_entries")]
    pub max_bundle_entries: u64,
    /// Whether steps with an image run here: `auto` (Docker if its socket
    /// answers at start), `docker` (required), `none`.
    #[serde(default)]
    pub container_runtime: ContainerRuntimeMode,
    /// The Docker Engine's unix socket.
    #[serde(default = "default_docker_socket")]
    pub docker_socket: PathBuf,
    /// Who a container step runs as (`UID` or `UID:GID`; default nobody).
    #[serde(default)]
    pub container_user: ContainerUser,
    /// The Docker client configuration whose `auths` give registry
    /// credentials for pulls; none: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`, if there is one.
    #[serde(default)]
    pub docker_config: Option<PathBuf>,
    /// `[cache]`: the cache of inputs and bundles under `<data_dir>/cache`.
    #[serde(default)]
    pub cache: CacheConfig,
    /// A PEM file of CA certificates trusted, besides the system's, for the
    /// blob bucket's HTTPS endpoint (the S3 backend: workers read and write
    /// blobs there with presigned URLs). No S3 credentials go here.
    #[serde(default)]
    pub bucket_ca: Option<PathBuf>,
    /// `[metrics] listen`: where `GET /metrics` is served (plain HTTP);
    /// absent: not served.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `[cache]` in worker.toml: the content-addressed cache of inputs, gathered
/// files and code bundles that attempts on this worker share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most bytes its entries hold (a number, or a size such as `"50Gi"`); the
    /// least recently used go first. 0 turns the cache off: every attempt
    /// downloads what it needs.
    #[serde(
        default = "default_cache_max_bytes",
        deserialize_with = "deserialize_size"
    )]
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            max_bytes: default_cache_max_bytes(),
        }
    }
}

fn default_cache_max_bytes() -> u64 {
    crate::blobcache::DEFAULT_MAX_BYTES
}

/// A size in bytes: a number, or a string with a suffix (`"512Mi"`, `"2G"`).
fn deserialize_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(bytes),
        Size::Text(text) if text.trim() == "0" => Ok(0),
        Size::Text(text) => ferry_common::spec::parse_memory_bytes(&text)
            .map_err(|why| serde::de::Error::custom(format!("max_bytes = {text:?}: {why}"))),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GpuEntry {
    pub index: u32,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// e.g. "80Gi"
    #[serde(default)]
    pub memory: Option<String>,
}

fn default_memory_limit_factor() -> f64 {
    DEFAULT_MEMORY_LIMIT_FACTOR
}

/// By default a step may hold twice the memory it asked for.
pub const DEFAULT_MEMORY_LIMIT_FACTOR: f64 = 2.0;

/// By default an attempt may hold this many processes and threads at once.
pub const DEFAULT_PIDS_MAX: u64 = 4096;

fn default_pids_max() -> u64 {
    DEFAULT_PIDS_MAX
}

fn default_max_unpacked_bundle_bytes() -> u64 {
    ferry_common::bundle::DEFAULT_MAX_UNPACKED_BYTES
}

fn default_max_bundle_entries() -> u64 {
    ferry_common::bundle::DEFAULT_MAX_ENTRIES
}

/// Where the Docker Engine listens by default.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

fn default_docker_socket() -> PathBuf {
    PathBuf::from(DEFAULT_DOCKER_SOCKET)
}

fn default_log_limit() -> u64 {
    64 * 1024 * 1024
}

/// `worker.toml` as written: the coordinators are given either as the list
/// `coordinators = ["a:1", "b:2"]` or as the older single `coordinator = "a:1"`
/// (which may also hold a comma-separated list), never both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerConfigFile {
    name: String,
    #[serde(default)]
    coordinator: Option<String>,
    #[serde(default)]
    coordinators: Option<Vec<String>>,
    data_dir: PathBuf,
    tls: TlsFiles,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    gpus: Option<Vec<GpuEntry>>,
    #[serde(default = "default_log_limit")]
    max_log_bytes_per_attempt: u64,
    #[serde(default = "default_memory_limit_factor")]
    memory_limit_factor: f64,
    #[serde(default)]
    containment: ContainmentMode,
    #[serde(default = "default_pids_max")]
    pids_max: u64,
    #[serde(default)]
    run_as: Option<String>,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default = "default_max_unpacked_bundle_bytes")]
    max_unpacked_bundle_bytes: u64,
    #[serde(default = "default_max_bundle_entries")]
    max_bundle_entries: u64,
    #[serde(default)]
    container_runtime: ContainerRuntimeMode,
    #[serde(default = "default_docker_socket")]
    docker_socket: PathBuf,
    #[serde(default)]
    container_user: Option<String>,
    #[serde(default)]
    docker_config: Option<PathBuf>,
    #[serde(default)]
    cache: CacheConfig,
    bucket_ca: Option<PathBuf>,
    #[serde(default)]
    metrics: MetricsFile,
}

/// `[metrics]` in worker.toml.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    listen: Option<std::net::SocketAddr>,
}

impl TryFrom<WorkerConfigFile> for WorkerConfig {
    type Error = String;

    fn try_from(file: WorkerConfigFile) -> Result<WorkerConfig, String> {
        let coordinators = coordinator_addresses(file.coordinator, file.coordinators)?;
        if !(file.memory_limit_factor.is_finite()
            && (file.memory_limit_factor == 0.0 || file.memory_limit_factor >= 1.0))
        {
            return Err(format!(
                "memory_limit_factor = {} is invalid: use 0 (no limit) or a number of at least 1 \
                 (a step may hold that many times its memory request)",
                file.memory_limit_factor
            ));
        }
        if file.pids_max == 0 {
            return Err(
                "pids_max = 0 is invalid: an attempt needs at least one process \
                        (the default is 4096)"
                    .into(),
            );
        }
        if let Some(bad) = file
            .pass_env
            .iter()
            .find(|name| name.is_empty() || name.contains('=') || name.contains('\0'))
        {
            return Err(format!(
                "pass_env holds {bad:?}, which is not an environment variable name"
            ));
        }
        if file.run_as.as_deref() == Some("") {
            return Err(
                "run_as is empty: name a user, or remove it (a root worker then runs \
                        steps as nobody)"
                    .into(),
            );
        }
        if file.max_unpacked_bundle_bytes == 0 || file.max_bundle_entries == 0 {
            return Err(
                "max_unpacked_bundle_bytes and max_bundle_entries must be at least 1 \
                 (no bundle could be unpacked)"
                    .to_string(),
            );
        }
        let container_user = match file.container_user.as_deref() {
            None => ContainerUser::default(),
            Some(text) => ContainerUser::parse(text)
                .map_err(|why| format!("container_user = {text:?} is invalid: {why}"))?,
        };
        Ok(WorkerConfig {
            container_runtime: file.container_runtime,
            docker_socket: file.docker_socket,
            container_user,
            docker_config: file.docker_config,
            cache: file.cache,
            bucket_ca: file.bucket_ca,
            metrics_listen: file.metrics.listen,
            containment: file.containment,
            pids_max: file.pids_max,
            run_as: file.run_as,
            pass_env: file.pass_env,
            name: file.name,
            coordinators,
            data_dir: file.data_dir,
            tls: file.tls,
            labels: file.labels,
            cpus: file.cpus,
            memory: file.memory,
            gpus: file.gpus,
            max_log_bytes_per_attempt: file.max_log_bytes_per_attempt,
            memory_limit_factor: file.memory_limit_factor,
            max_unpacked_bundle_bytes: file.max_unpacked_bundle_bytes,
            max_bundle_entries: file.max_bundle_entries,
        })
    }
}

/// The coordinator list from exactly one of `coordinator` and `coordinators`, each
/// address checked to be `HOST:PORT`, duplicates dropped, order kept.
fn coordinator_addresses(
    single: Option<String>,
    list: Option<Vec<String>>,
) -> Result<Vec<String>, String> {
    let given: Vec<String> = match (single, list) {
        (Some(_), Some(_)) => {
            return Err(
                "give either `coordinators = [\"HOST:PORT\", ...]` or the older \
                        `coordinator = \"HOST:PORT\"`, not both"
                    .into(),
            );
        }
        (None, None) => {
            return Err(
                "no coordinator is configured: add `coordinators = [\"HOST:PORT\", ...]`".into(),
            );
        }
        (Some(single), None) => single.split(',').map(str::to_string).collect(),
        (None, Some(list)) => list,
    };
    let mut addresses: Vec<String> = Vec::new();
    for address in given.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        ferry_common::channel::parse_address(address).map_err(|e| e.to_string())?;
        if !addresses.iter().any(|known| known == address) {
            addresses.push(address.to_string());
        }
    }
    if addresses.is_empty() {
        return Err("the coordinator list is empty: give at least one HOST:PORT".into());
    }
    Ok(addresses)
}

impl WorkerConfig {
    /// Reads the file; relative paths in it are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<WorkerConfig, ConfigFileError> {
        let mut config: WorkerConfig = load_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.tls = config.tls.relative_to(base);
        config.docker_socket = base.join(&config.docker_socket);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_example_parses_and_paths_are_relative_to_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/worker.toml");
        let config = WorkerConfig::load(&path).unwrap();
        assert_eq!(config.name, "gpu-01");
        assert_eq!(
            config.coordinators,
            [
                "coord1.example:7443",
                "coord2.example:7443",
                "coord3.example:7443"
            ]
        );
        assert_eq!(config.labels["zone"], "a");
        assert!(config.gpus.is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "name = \"w\"\ncoordinator = \"127.0.0.1:1\"\ndata_dir = \"data\"\ngpus = [{ index = 0, memory = \"80Gi\" }]\n[tls]\nca = \"ca.pem\"\ncert = \"w.pem\"\nkey = \"w-key.pem\"\n",
        )
        .unwrap();
        let config = WorkerConfig::load(&file).unwrap();
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(config.gpus.unwrap()[0].memory.as_deref(), Some("80Gi"));
        assert_eq!(config.coordinators, ["127.0.0.1:1"]);
    }

    fn parse(coordinators: &str) -> Result<WorkerConfig, String> {
        let text = format!(
            "name = \"w\"\n{coordinators}\ndata_dir = \"d\"\n[tls]\nca = \"c\"\ncert = \"w\"\nkey = \"k\"\n"
        );
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn coordinators_come_as_a_list_or_as_the_older_single_address() {
        let list = parse("coordinators = [\"a:1\", \"b:2\", \"c:3\"]").unwrap();
        assert_eq!(list.coordinators, ["a:1", "b:2", "c:3"]);
        let single = parse("coordinator = \"a:1\"").unwrap();
        assert_eq!(single.coordinators, ["a:1"]);
        let commas = parse("coordinator = \"a:1, b:2,\"").unwrap();
        assert_eq!(commas.coordinators, ["a:1", "b:2"]);
        let duplicates = parse("coordinators = [\"a:1\", \"b:2\", \"a:1\"]").unwrap();
        assert_eq!(duplicates.coordinators, ["a:1", "b:2"]);
    }

    #[test]
    fn coordinators_must_be_given_exactly_once_and_well_formed() {
        let both = parse("coordinator = \"a:1\"\ncoordinators = [\"b:2\"]").unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let neither = parse("").unwrap_err();
        assert!(
            neither.contains("no coordinator is configured"),
            "{neither}"
        );
        let empty = parse("coordinators = []").unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
        let bad = parse("coordinators = [\"a:1\", \"nohost\"]").unwrap_err();
        assert!(
            bad.contains("\"nohost\" is not a coordinator address"),
            "{bad}"
        );
        let unknown = parse("coordinatrs = [\"a:1\"]").unwrap_err();
        assert!(unknown.contains("coordinatrs"), "{unknown}");
    }

    #[test]
    fn containment_settings_have_defaults_and_are_checked() {
        let plain = parse("coordinator = \"a:1\"").unwrap();
        assert_eq!(plain.containment, ContainmentMode::Auto);
        assert_eq!(plain.pids_max, DEFAULT_PIDS_MAX);
        assert_eq!(plain.run_as, None);
        assert!(plain.pass_env.is_empty());
        let set = parse(
            "coordinator = \"a:1\"\ncontainment = \"subreaper\"\npids_max = 64\nrun_as = \"ferry\"\npass_env = [\"HTTP_PROXY\"]",
        )
        .unwrap();
        assert_eq!(set.containment, ContainmentMode::Subreaper);
        assert_eq!((set.pids_max, set.run_as.as_deref()), (64, Some("ferry")));
        assert_eq!(set.pass_env, ["HTTP_PROXY"]);
        let bad = parse("coordinator = \"a:1\"\ncontainment = \"jail\"").unwrap_err();
        assert!(bad.contains("jail"), "{bad}");
        let zero = parse("coordinator = \"a:1\"\npids_max = 0").unwrap_err();
        assert!(zero.contains("pids_max = 0"), "{zero}");
        let name = parse("coordinator = \"a:1\"\npass_env = [\"A=B\"]").unwrap_err();
        assert!(name.contains("\"A=B\""), "{name}");
        let empty = parse("coordinator = \"a:1\"\nrun_as = \"\"").unwrap_err();
        assert!(empty.contains("run_as is empty"), "{empty}");
    }

    #[test]
    fn the_cache_bound_has_a_default_takes_sizes_and_zero_turns_it_off() {
        let with = |cache: &str| {
            let text = format!(
                "name = \"w\"\ncoordinator = \"a:1\"\ndata_dir = \"d\"\n[tls]\nca = \"c\"\ncert = \"w\"\nkey = \"k\"\n{cache}\n"
            );
            toml::from_str::<WorkerConfig>(&text).map_err(|e| e.to_string())
        };
        let plain = with("").unwrap();
        assert_eq!(plain.cache.max_bytes, crate::blobcache::DEFAULT_MAX_BYTES);
        let empty = with("[cache]").unwrap();
        assert_eq!(empty.cache.max_bytes, crate::blobcache::DEFAULT_MAX_BYTES);
        for (given, bytes) in [
            ("1048576", 1 << 20),
            ("\"50Gi\"", 50 << 30),
            ("\"2G\"", 2_000_000_000),
            ("0", 0),
            ("\"0\"", 0),
        ] {
            let config = with(&format!("[cache]\nmax_bytes = {given}")).unwrap();
            assert_eq!(config.cache.max_bytes, bytes, "{given}");
        }
        let bad = with("[cache]\nmax_bytes = \"lots\"").unwrap_err();
        assert!(bad.contains("max_bytes = \"lots\""), "{bad}");
        let negative = with("[cache]\nmax_bytes = -1").unwrap_err();
        assert!(negative.contains("max_bytes"), "{negative}");
        let unknown = with("[cache]\nmax_entries = 3").unwrap_err();
        assert!(unknown.contains("max_entries"), "{unknown}");
    }

    #[test]
    fn container_settings_have_defaults_and_are_checked() {
        let plain = parse("coordinator = \"a:1\"").unwrap();
        assert_eq!(plain.container_runtime, ContainerRuntimeMode::Auto);
        assert_eq!(plain.docker_socket, Path::new(DEFAULT_DOCKER_SOCKET));
        assert_eq!(
            plain.container_user,
            ContainerUser {
                uid: 65534,
                gid: 65534
            }
        );
        let set = parse(
            "coordinator = \"a:1\"\ncontainer_runtime = \"none\"\ndocker_socket = \"/run/d.sock\"\ncontainer_user = \"1000:100\"",
        )
        .unwrap();
        assert_eq!(set.container_runtime, ContainerRuntimeMode::None);
        assert_eq!(set.docker_socket, Path::new("/run/d.sock"));
        assert_eq!(
            set.container_user,
            ContainerUser {
                uid: 1000,
                gid: 100
            }
        );
        let only_uid = parse("coordinator = \"a:1\"\ncontainer_user = \"1000\"").unwrap();
        assert_eq!(
            only_uid.container_user,
            ContainerUser {
                uid: 1000,
                gid: 1000
            }
        );
        let bad = parse("coordinator = \"a:1\"\ncontainer_runtime = \"podman\"").unwrap_err();
        assert!(bad.contains("podman"), "{bad}");
        for wrong in ["nobody", "1000:", ":1", "1:2:3", ""] {
            let error = parse(&format!(
                "coordinator = \"a:1\"\ncontainer_user = \"{wrong}\""
            ))
            .unwrap_err();
            assert!(error.contains("container_user"), "{wrong}: {error}");
        }
    }
}
