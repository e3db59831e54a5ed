//! `coordinator.toml`: this member's id and addresses, the initial cluster, where
//! to keep data, the TLS files, and Raft timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use ferry_common::config_file::{ConfigFileError, load_toml};
use ferry_common::spec::parse_cpu_millis;

use crate::scheduler::Quota;
use ferry_common::pki::TlsFiles;
use serde::Deserialize;

/// Default bound on one artifact or code bundle.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 8 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This member's Raft id (unique in the cluster, never reused). Default 1.
    #[serde(default = "default_id")]
    pub id: u64,
    /// Address the client and worker API listens on, e.g. `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// Address the peer (Raft) API listens on; default: served on `listen` too.
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// Directory for the state database and the blob store.
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
    /// The initial cluster, used only when this member's storage is empty. Every
    /// member of a new cluster lists the same members. Empty: a one-member cluster
    /// reached at `listen`. A member added later with `ferry cluster add-member`
    /// sets `join = true` and lists the current members: it then starts empty and
    /// copies the cluster's state from the leader.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// Start empty and wait to be added by `ferry cluster add-member`; `members`
    /// then only says where the current members are.
    #[serde(default)]
    pub join: bool,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub scheduling: SchedulingSettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    /// `[limits]`: the bounds on a submitted pipeline (file size, steps, trials
    /// a step, expanded size). Every member should set the same values: the
    /// member that receives a submission checks it, and `ferry` checks against
    /// the values of the member it asks.
    #[serde(default)]
    pub limits: ferry_common::spec::SubmitLimits,
    #[serde(default)]
    pub blobs: BlobsSettings,
    /// The names of the client certificates that may change the cluster's
    /// membership (`ferry cluster add-member`, `remove-member`). Empty: nobody
    /// may. Every member should list the same names: the leader decides.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The cluster's current secrets key (32 random bytes, mode 0600; `ferry
    /// certs secrets-key PATH` makes one): seals the values `ferry secrets set`
    /// receives. Every member holds the same keys. Absent: this member refuses
    /// `ferry secrets set` and cannot deliver secrets when it leads.
    #[serde(default)]
    pub secrets_key: Option<PathBuf>,
    /// Earlier keys, kept to open what they sealed until `ferry secrets
    /// rotate-key` has sealed everything again with `secrets_key`.
    #[serde(default)]
    pub secrets_keys: Vec<PathBuf>,
    /// `[metrics]`: Prometheus metrics over plain HTTP, off unless `listen`
    /// is set.
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// `[metrics]`: where `GET /metrics` is served (plain HTTP, no client
/// certificate: give it a loopback or otherwise private address). Absent: not
/// served.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: Option<SocketAddr>,
}

/// `[retention]`: garbage collection of old runs' logs and artifacts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// When set, the leader runs `ferry gc --keep-last N` by itself every
    /// `interval_ms`.
    pub keep_last: Option<u32>,
    pub interval_ms: u64,
    /// A blob written this recently before a collection is kept (an upload whose
    /// record is not committed yet).
    pub grace_ms: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            keep_last: None,
            interval_ms: 60 * 60 * 1000,
            grace_ms: 10 * 60 * 1000,
        }
    }
}

/// `[blobs]`: where blobs (code bundles, artifacts, step logs) are kept.
/// `backend = "local"` (the default): in each member's data directory,
/// copied to a majority of the members. `backend = "s3"`: in an S3 bucket
/// (AWS or an S3-compatible server), which every member reads and writes and
/// which is then the durable store: nothing is copied between members.
/// Every member should carry the same settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobsSettings {
    /// `"local"` or `"s3"`.
    pub backend: String,
    /// S3: the bucket (it must exist).
    pub bucket: Option<String>,
    /// S3: keys are `<prefix>/blobs/<dd>/<digest>` (no prefix: `blobs/...`).
    pub prefix: String,
    /// S3: the server's URL, e.g. `https://s3.example.net:9000`; requests use
    /// path-style addressing. Absent: AWS S3 in `region`. Plain `http://` only
    /// when the endpoint says so.
    pub endpoint: Option<String>,
    /// S3: the region requests are signed for (default `us-east-1`).
    pub region: Option<String>,
    /// S3: a TOML file, readable by its owner only (mode 0600), holding
    /// `access_key_id`, `secret_access_key` and optionally `session_token`.
    /// Absent: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
    /// `AWS_SESSION_TOKEN` from the coordinator's environment (no other
    /// `AWS_*` variable is read).
    pub credentials_file: Option<PathBuf>,
    /// S3: a blob larger than this is uploaded in parts of this size (at
    /// least 5 MiB, S3's minimum part size); smaller ones in one request.
    /// Each upload through a coordinator buffers up to two parts in memory;
    /// a worker's direct upload sends parts of this size too.
    pub part_bytes: u64,
    /// S3: how long a presigned URL the leader gives a worker stays good
    /// (milliseconds, whole seconds from 1 s to 7 days, S3's longest). A
    /// request must start before it passes; a worker whose URL expired asks
    /// for a new one.
    pub presign_expiry_ms: u64,
}

/// The longest a presigned URL may live (S3's limit for SigV4).
pub const MAX_PRESIGN_EXPIRY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// S3's smallest part of a multipart upload (but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;

impl Default for BlobsSettings {
    fn default() -> Self {
        BlobsSettings {
            backend: "local".into(),
            bucket: None,
            prefix: String::new(),
            endpoint: None,
            region: None,
            credentials_file: None,
            part_bytes: 16 * 1024 * 1024,
            presign_expiry_ms: 15 * 60 * 1000,
        }
    }
}

impl BlobsSettings {
    pub fn is_s3(&self) -> bool {
        self.backend == "s3"
    }

    /// The key prefix, without slashes at either end ("" for none).
    pub fn key_prefix(&self) -> &str {
        self.prefix.trim_matches('/')
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), ClusterConfigError> {
        let bad = |key: &'static str, reason: String| ClusterConfigError::Blobs { key, reason };
        match self.backend.as_str() {
            "local" => {
                let s3_only = [
                    ("bucket", self.bucket.is_some()),
                    ("prefix", !self.prefix.is_empty()),
                    ("endpoint", self.endpoint.is_some()),
                    ("region", self.region.is_some()),
                    ("credentials_file", self.credentials_file.is_some()),
                ];
                if let Some((key, _)) = s3_only.into_iter().find(|(_, set)| *set) {
                    return Err(bad(key, "only for backend = \"s3\"".into()));
                }
                return Ok(());
            }
            "s3" => {}
            other => {
                return Err(bad(
                    "backend",
                    format!("{other:?} is not a backend; use \"local\" or \"s3\""),
                ));
            }
        }
        let bucket = self
            .bucket
            .as_deref()
            .ok_or_else(|| bad("bucket", "required with backend = \"s3\"".into()))?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(bad(
                "bucket",
                format!(
                    "{bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' \
                     and '.')"
                ),
            ));
        }
        let prefix = self.key_prefix();
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(bad(
                "prefix",
                format!("{:?} has an empty, \".\" or \"..\" segment", self.prefix),
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            let host = endpoint
                .strip_prefix("https://")
                .or_else(|| endpoint.strip_prefix("http://"));
            if host.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
                return Err(bad(
                    "endpoint",
                    format!("{endpoint:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(region) = &self.region
            && (region.is_empty() || region.contains(char::is_whitespace))
        {
            return Err(bad("region", format!("{region:?} is not a region")));
        }
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&self.part_bytes) {
            return Err(bad(
                "part_bytes",
                format!(
                    "must be from {MIN_PART_BYTES} to {MAX_PART_BYTES} (it is {})",
                    self.part_bytes
                ),
            ));
        }
        if !(1000..=MAX_PRESIGN_EXPIRY_MS).contains(&self.presign_expiry_ms)
            || !self.presign_expiry_ms.is_multiple_of(1000)
        {
            return Err(bad(
                "presign_expiry_ms",
                format!(
                    "must be whole seconds from 1000 to {MAX_PRESIGN_EXPIRY_MS} (it is {})",
                    self.presign_expiry_ms
                ),
            ));
        }
        Ok(())
    }

    /// How long a presigned URL lives.
    pub fn presign_expiry(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.presign_expiry_ms)
    }
}

/// `[audit]`: how long the audit log keeps its records. The leader trims
/// what is older than `keep_days` or beyond the newest `max_records` (at most
/// `MAX_AUDIT_RECORDS`, which the state machine keeps whatever is set here).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    pub keep_days: u64,
    pub max_records: u64,
    /// How often the leader looks for records to trim.
    pub interval_ms: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            keep_days: 90,
            max_records: 100_000,
            interval_ms: 60_000,
        }
    }
}

impl AuditSettings {
    /// How long a record is kept, in milliseconds.
    pub fn keep_ms(&self) -> u64 {
        self.keep_days.saturating_mul(24 * 60 * 60 * 1000)
    }
}

/// Worker leases and project quotas. Only the leader schedules, so every member
/// should carry the same settings (a new leader applies its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingSettings {
    /// A worker with no heartbeat for this long is declared lost and its attempts
    /// are retried elsewhere. Workers heartbeat five times per lease.
    pub worker_lease_ms: u64,
    /// Most a project may hold at once, by project name.
    pub quotas: BTreeMap<String, QuotaConfig>,
}

impl Default for SchedulingSettings {
    fn default() -> Self {
        SchedulingSettings {
            worker_lease_ms: DEFAULT_WORKER_LEASE_MS,
            quotas: BTreeMap::new(),
        }
    }
}

/// Default worker lease.
pub const DEFAULT_WORKER_LEASE_MS: u64 = ferry_common::timing::DEFAULT_WORKER_LEASE_MS;

/// `[scheduling.quotas.NAME]`: `cpu` in cores (`8`, `"500m"`), `gpus` a count.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    #[serde(default)]
    pub cpu: Option<toml::Value>,
    #[serde(default)]
    pub gpus: Option<u32>,
}

impl SchedulingSettings {
    /// The quotas as the scheduler takes them, or which one is wrong and why.
    pub fn quotas(&self) -> Result<BTreeMap<String, Quota>, ClusterConfigError> {
        let mut quotas = BTreeMap::new();
        for (project, quota) in &self.quotas {
            let max_cpu_millis = match &quota.cpu {
                None => None,
                Some(value) => {
                    let text = match value {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        other => other.to_string(),
                    };
                    Some(
                        parse_cpu_millis(&text).map_err(|error| ClusterConfigError::Quota {
                            project: project.clone(),
                            error: format!("cpu {text:?}: {error}"),
                        })?,
                    )
                }
            };
            quotas.insert(
                project.clone(),
                Quota {
                    max_cpu_millis,
                    max_gpus: quota.gpus,
                },
            );
        }
        Ok(quotas)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// Where clients and workers reach it (`host:port`).
    pub client_address: String,
    /// Where other coordinators reach it; default: its client address.
    #[serde(default)]
    pub peer_address: Option<String>,
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// One Raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader's heartbeat before a follower campaigns (randomized
    /// between this and twice this).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Snapshot the state and truncate the log after this many applied entries.
    pub snapshot_every: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: ferry_common::timing::DEFAULT_TICK_MS,
            election_ticks: ferry_common::timing::DEFAULT_ELECTION_TICKS as usize,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
        }
    }
}

fn default_id() -> u64 {
    1
}

fn default_max_blob_bytes() -> u64 {
    DEFAULT_MAX_BLOB_BYTES
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("member id 0 is not allowed (Raft reserves it); use ids from 1")]
    ZeroId,
    #[error("member {0} is listed twice in `members`")]
    Duplicate(u64),
    #[error("this coordinator's id {0} is not among the `members` it lists")]
    NotAMember(u64),
    #[error(
        "`join = true` needs `members` listing the current members (their addresses), so that \
         this one can answer the leader before it has copied the cluster's state"
    )]
    JoinWithoutMembers,
    #[error("raft.{field} must be at least {min}")]
    Raft { field: &'static str, min: u64 },
    #[error("scheduling.quotas.{project}: {error}")]
    Quota { project: String, error: String },
    #[error("scheduling.worker_lease_ms must be at least 500 (it is {0})")]
    Lease(u64),
    #[error("retention.interval_ms must be at least 1000 (it is {0})")]
    RetentionInterval(u64),
    #[error("audit.interval_ms must be at least 1000 (it is {0})")]
    AuditInterval(u64),
    #[error("limits.{key} {message}")]
    Limits { key: &'static str, message: String },
    #[error("audit.keep_days must be at least 1 (it is 0)")]
    AuditKeepDays,
    #[error("audit.max_records must be from 1 to {max} (it is {value})")]
    AuditMaxRecords { value: u64, max: usize },
    #[error(
        "admins: entry {index} (\"{name}\") is not a certificate name: {reason}; list the names \
         of client certificates issued with `ferry certs issue --role client --name NAME`"
    )]
    Admin {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("admins: \"{0}\" is listed twice")]
    DuplicateAdmin(String),
    #[error("blobs.{key}: {reason}")]
    Blobs { key: &'static str, reason: String },
}

impl CoordinatorConfig {
    /// The deadlines of calls between members, workers and clients, derived from
    /// `[raft]` and `[scheduling]` (`ferry_common::timing`).
    pub fn timings(&self) -> ferry_common::timing::Timings {
        ferry_common::timing::Timings::new(
            self.raft.tick_ms,
            self.raft.election_ticks as u64,
            self.scheduling.worker_lease_ms,
        )
    }

    /// The initial members this configuration describes, checked.
    pub fn initial_members(&self) -> Result<Vec<MemberConfig>, ClusterConfigError> {
        if self.id == 0 {
            return Err(ClusterConfigError::ZeroId);
        }
        if self.raft.tick_ms < 1 {
            return Err(ClusterConfigError::Raft {
                field: "tick_ms",
                min: 1,
            });
        }
        if self.raft.heartbeat_ticks < 1 {
            return Err(ClusterConfigError::Raft {
                field: "heartbeat_ticks",
                min: 1,
            });
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return Err(ClusterConfigError::Raft {
                field: "election_ticks",
                min: self.raft.heartbeat_ticks as u64 + 1,
            });
        }
        if self.raft.snapshot_every < 1 {
            return Err(ClusterConfigError::Raft {
                field: "snapshot_every",
                min: 1,
            });
        }
        if self.scheduling.worker_lease_ms < 500 {
            return Err(ClusterConfigError::Lease(self.scheduling.worker_lease_ms));
        }
        self.scheduling.quotas()?;
        self.blobs.check()?;
        if self.retention.interval_ms < 1000 {
            return Err(ClusterConfigError::RetentionInterval(
                self.retention.interval_ms,
            ));
        }
        if self.audit.interval_ms < 1000 {
            return Err(ClusterConfigError::AuditInterval(self.audit.interval_ms));
        }
        if self.audit.keep_days < 1 {
            return Err(ClusterConfigError::AuditKeepDays);
        }
        if let Some((key, message)) = self.limits.problem() {
            return Err(ClusterConfigError::Limits { key, message });
        }
        let max = crate::state::MAX_AUDIT_RECORDS;
        if self.audit.max_records < 1 || self.audit.max_records > max as u64 {
            return Err(ClusterConfigError::AuditMaxRecords {
                value: self.audit.max_records,
                max,
            });
        }
        self.admin_names()?;
        if self.join {
            if self.members.iter().all(|m| m.id == self.id) {
                return Err(ClusterConfigError::JoinWithoutMembers);
            }
            return Ok(Vec::new());
        }
        if self.members.is_empty() {
            return Ok(vec![MemberConfig {
                id: self.id,
                client_address: self.listen.to_string(),
                peer_address: self.peer_listen.map(|a| a.to_string()),
            }]);
        }
        let mut seen = std::collections::BTreeSet::new();
        for member in &self.members {
            if member.id == 0 {
                return Err(ClusterConfigError::ZeroId);
            }
            if !seen.insert(member.id) {
                return Err(ClusterConfigError::Duplicate(member.id));
            }
        }
        if !seen.contains(&self.id) {
            return Err(ClusterConfigError::NotAMember(self.id));
        }
        Ok(self.members.clone())
    }

    /// The administrators (`admins`), checked: each a valid certificate name,
    /// none twice.
    pub fn admin_names(&self) -> Result<std::collections::BTreeSet<String>, ClusterConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for (index, name) in self.admins.iter().enumerate() {
            // A group (`@ops`) of `ferry groups add` stands for its users.
            let bare = name.strip_prefix(crate::state::GROUP_SIGIL).unwrap_or(name);
            ferry_common::pki::validate_name(bare).map_err(|error| ClusterConfigError::Admin {
                index,
                name: name.clone(),
                reason: match error {
                    ferry_common::pki::PkiError::InvalidName { reason, .. } => reason.to_string(),
                    other => other.to_string(),
                },
            })?;
            if !names.insert(name.clone()) {
                return Err(ClusterConfigError::DuplicateAdmin(name.clone()));
            }
        }
        Ok(names)
    }

    /// The keyring of `secrets_key` and `secrets_keys`; `None` without a
    /// `secrets_key`.
    pub fn secrets_keyring(
        &self,
    ) -> Result<Option<ferry_common::secrets::Keyring>, ferry_common::secrets::SecretsError> {
        self.secrets_key
            .as_ref()
            .map(|current| ferry_common::secrets::Keyring::load(current, &self.secrets_keys))
            .transpose()
    }

    /// Reads the file; relative paths in it are taken relative to the file's folder.
    /// The administrators' names are checked here, so that a wrong one is named
    /// with the file.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigFileError> {
        let mut config: CoordinatorConfig = load_toml(path)?;
        config
            .admin_names()
            .map_err(|error| ConfigFileError::Parse {
                path: path.display().to_string(),
                message: error.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.tls = config.tls.relative_to(base);
        config.secrets_key = config.secrets_key.map(|key| base.join(key));
        config.secrets_keys = config.secrets_keys.iter().map(|k| base.join(k)).collect();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let config = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(config.listen.port(), 7443);
        assert!(config.tls.key.ends_with("member-1-key.pem"));
        assert_eq!(config.max_blob_bytes, DEFAULT_MAX_BLOB_BYTES);
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn metrics_are_off_unless_configured_and_a_bad_address_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let base = "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n\
                    [tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        std::fs::write(&path, base).unwrap();
        assert_eq!(CoordinatorConfig::load(&path).unwrap().metrics.listen, None);
        std::fs::write(&path, format!("{base}[metrics]\nlisten = \"nowhere\"\n")).unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("c.toml") && error.contains("listen"),
            "{error}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nlisen = 1\n",
        )
        .unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("c.toml") && error.contains("lisen"),
            "{error}"
        );
    }

    /// The deploy examples of a three-coordinator cluster and of a fourth member
    /// joining it load, and describe the cluster they say they do.
    #[test]
    fn the_cluster_deploy_examples_describe_one_cluster() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster");
        let member = |id: u64| MemberConfig {
            id,
            client_address: format!("coord{id}:7443"),
            peer_address: Some(format!("coord{id}:7444")),
        };
        let three: Vec<MemberConfig> = (1..=3).map(member).collect();
        for id in 1..=3u64 {
            let path = dir.join(format!("coordinator-{id}.toml"));
            let config = CoordinatorConfig::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(config.id, id, "{}", path.display());
            assert_eq!(config.listen, "0.0.0.0:7443".parse().unwrap());
            assert_eq!(config.peer_listen, Some("0.0.0.0:7444".parse().unwrap()));
            assert_eq!(config.data_dir, Path::new("/var/lib/ferry"));
            assert_eq!(config.tls.ca, Path::new("/etc/ferry/ca.pem"));
            assert_eq!(
                config.tls.cert,
                PathBuf::from(format!("/etc/ferry/member-{id}.pem"))
            );
            assert_eq!(
                config.tls.key,
                PathBuf::from(format!("/etc/ferry/member-{id}-key.pem"))
            );
            assert!(!config.join, "{}", path.display());
            assert_eq!(config.admins, ["alice"], "{}", path.display());
            assert_eq!(
                config.initial_members().unwrap(),
                three,
                "{}",
                path.display()
            );
        }

        let path = dir.join("coordinator-4-join.toml");
        let config = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(config.id, 4);
        assert!(config.join);
        assert_eq!(config.admins, ["alice"]);
        assert_eq!(config.peer_listen, Some("0.0.0.0:7444".parse().unwrap()));
        assert_eq!(config.tls.cert, Path::new("/etc/ferry/member-4.pem"));
        assert_eq!(config.members, (1..=4).map(member).collect::<Vec<_>>());
        assert!(config.initial_members().unwrap().is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(
                "ferry cluster add-member --id 4 --client-address coord4:7443 \
                 --peer-address coord4:7444"
            ),
            "the join example says how to add the member"
        );

        // The commented-out lines of deploy/coordinator.toml, uncommented, are a
        // valid configuration of member 1 of the same cluster, with the defaults.
        let example = dir.join("../coordinator.toml");
        let uncommented: String = std::fs::read_to_string(&example)
            .unwrap()
            .lines()
            .map(|line| {
                let rest = line.strip_prefix("# ").unwrap_or(line);
                let setting = rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    });
                if setting { rest } else { line }
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("coordinator.toml");
        std::fs::write(&path, &uncommented).unwrap();
        let config =
            CoordinatorConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(config.id, 1);
        assert_eq!(config.peer_listen, Some("0.0.0.0:7444".parse().unwrap()));
        assert!(!config.join);
        assert_eq!(config.admins, ["alice"]);
        assert_eq!(config.max_blob_bytes, DEFAULT_MAX_BLOB_BYTES);
        assert_eq!(config.initial_members().unwrap(), three);
        let defaults = RaftSettings::default();
        assert_eq!(config.raft.tick_ms, defaults.tick_ms);
        assert_eq!(config.raft.election_ticks, defaults.election_ticks);
        assert_eq!(config.raft.heartbeat_ticks, defaults.heartbeat_ticks);
        assert_eq!(config.raft.snapshot_every, defaults.snapshot_every);
        assert_eq!(
            (
                defaults.tick_ms,
                defaults.election_ticks,
                defaults.heartbeat_ticks
            ),
            (50, 10, 2)
        );
        assert_eq!(defaults.snapshot_every, 10_000);
    }

    /// A cluster configuration that cannot describe a Raft group is refused with a
    /// message naming the problem.
    #[test]
    fn an_impossible_cluster_configuration_is_refused_naming_the_problem() {
        let scratch = tempfile::tempdir().unwrap();
        let refusal = |id: u64, members: &[u64], raft: &str| -> String {
            let mut text = format!(
                "id = {id}\nlisten = \"127.0.0.1:7443\"\ndata_dir = \"d\"\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
            );
            for member in members {
                text.push_str(&format!(
                    "[[members]]\nid = {member}\nclient_address = \"coord{member}:7443\"\n"
                ));
            }
            text.push_str(raft);
            let path = scratch.path().join("c.toml");
            std::fs::write(&path, &text).unwrap();
            let config = CoordinatorConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
            match config.initial_members() {
                Ok(members) => panic!("accepted {members:?}:\n{text}"),
                Err(error) => error.to_string(),
            }
        };
        let accepted = {
            let path = scratch.path().join("ok.toml");
            std::fs::write(
                &path,
                "id = 2\nlisten = \"127.0.0.1:7443\"\ndata_dir = \"d\"\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                 [[members]]\nid = 1\nclient_address = \"coord1:7443\"\n\
                 [[members]]\nid = 2\nclient_address = \"coord2:7443\"\n\
                 [raft]\nelection_ticks = 3\nheartbeat_ticks = 2\n",
            )
            .unwrap();
            CoordinatorConfig::load(&path).unwrap().initial_members()
        };
        let ids: Vec<u64> = accepted.unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2], "the same shape with nothing wrong is accepted");

        let duplicate = refusal(1, &[1, 2, 2], "");
        assert_eq!(duplicate, "member 2 is listed twice in `members`");
        let zero = refusal(0, &[], "");
        assert!(zero.contains("member id 0 is not allowed"), "{zero}");
        let zero_member = refusal(1, &[1, 0, 2], "");
        assert!(
            zero_member.contains("member id 0 is not allowed"),
            "{zero_member}"
        );
        let absent = refusal(4, &[1, 2, 3], "");
        assert_eq!(
            absent,
            "this coordinator's id 4 is not among the `members` it lists"
        );
        let equal = refusal(
            1,
            &[1, 2, 3],
            "[raft]\nelection_ticks = 2\nheartbeat_ticks = 2\n",
        );
        assert_eq!(equal, "raft.election_ticks must be at least 3");
        let below = refusal(
            1,
            &[1, 2, 3],
            "[raft]\nelection_ticks = 4\nheartbeat_ticks = 5\n",
        );
        assert_eq!(below, "raft.election_ticks must be at least 6");
    }

    fn with_scheduling(scheduling: &str) -> Result<CoordinatorConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n{scheduling}"
            ),
        )
        .unwrap();
        let config = CoordinatorConfig::load(&path).map_err(|e| e.to_string())?;
        config.initial_members().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn quotas_and_the_lease_are_read_and_checked() {
        let config = with_scheduling(
            "[scheduling]\nworker_lease_ms = 3000\n[scheduling.quotas.vision]\ncpu = 16\ngpus = 4\n[scheduling.quotas.nlp]\ncpu = \"500m\"\n",
        )
        .unwrap();
        assert_eq!(config.scheduling.worker_lease_ms, 3000);
        let quotas = config.scheduling.quotas().unwrap();
        assert_eq!(
            quotas["vision"],
            Quota {
                max_cpu_millis: Some(16_000),
                max_gpus: Some(4)
            }
        );
        assert_eq!(
            quotas["nlp"],
            Quota {
                max_cpu_millis: Some(500),
                max_gpus: None
            }
        );
        let defaults = with_scheduling("").unwrap();
        assert_eq!(defaults.scheduling.worker_lease_ms, DEFAULT_WORKER_LEASE_MS);
        assert!(defaults.scheduling.quotas().unwrap().is_empty());

        let error = with_scheduling("[scheduling.quotas.vision]\ncpu = \"lots\"\n").unwrap_err();
        assert!(
            error.contains("scheduling.quotas.vision") && error.contains("\"lots\""),
            "{error}"
        );
        let retention =
            with_scheduling("[retention]\nkeep_last = 20\ninterval_ms = 60000\ngrace_ms = 0\n")
                .unwrap();
        assert_eq!(retention.retention.keep_last, Some(20));
        assert_eq!(retention.retention.grace_ms, 0);
        assert_eq!(defaults.retention.keep_last, None);
        let error = with_scheduling("[retention]\ninterval_ms = 10\n").unwrap_err();
        assert!(error.contains("retention.interval_ms"), "{error}");
        let error = with_scheduling("[retention]\nkeep = 3\n").unwrap_err();
        assert!(error.contains("keep"), "{error}");
        let error = with_scheduling("[scheduling]\nworker_lease_ms = 10\n").unwrap_err();
        assert!(
            error.contains("worker_lease_ms must be at least 500"),
            "{error}"
        );
        let error = with_scheduling("[scheduling.quotas.vision]\ngpu = 1\n").unwrap_err();
        assert!(error.contains("gpu"), "{error}");
    }

    #[test]
    fn limits_are_read_and_checked() {
        let defaults = with_scheduling("").unwrap();
        assert_eq!(defaults.limits, ferry_common::spec::SubmitLimits::default());
        let set =
            with_scheduling("[limits]\nmax_steps = 200000\nmax_trials_per_step = 20000\n").unwrap();
        assert_eq!(set.limits.max_steps, 200_000);
        assert_eq!(set.limits.max_trials_per_step, 20_000);
        assert_eq!(set.limits.max_spec_bytes, 8 * 1024 * 1024);
        let error = with_scheduling("[limits]\nmax_steps = 0\n").unwrap_err();
        assert!(
            error.contains("limits.max_steps must be at least 1 (it is 0)"),
            "{error}"
        );
        let error = with_scheduling("[limits]\nmax_spec_bytes = 99999999\n").unwrap_err();
        assert!(
            error.contains("limits.max_spec_bytes must be at most"),
            "{error}"
        );
        let error = with_scheduling("[limits]\nmax_stepz = 3\n").unwrap_err();
        assert!(error.contains("max_stepz"), "{error}");
    }

    #[test]
    fn administrators_are_checked_when_the_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let load = |admins: &str| {
            let path = dir.path().join("c.toml");
            std::fs::write(
                &path,
                format!(
                    "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n{admins}\n[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
                ),
            )
            .unwrap();
            CoordinatorConfig::load(&path).map_err(|e| e.to_string())
        };
        let config = load("admins = [\"alice\", \"ops.bob\"]").unwrap();
        let names: Vec<String> = config.admin_names().unwrap().into_iter().collect();
        assert_eq!(names, ["alice", "ops.bob"]);
        assert!(load("").unwrap().admin_names().unwrap().is_empty());

        let error = load("admins = [\"alice\", \"bob smith\"]").unwrap_err();
        assert!(
            error.contains("c.toml")
                && error.contains("admins: entry 1 (\"bob smith\")")
                && error.contains("character that is not allowed"),
            "{error}"
        );
        let error = load("admins = [\"\"]").unwrap_err();
        assert!(
            error.contains("entry 0 (\"\")") && error.contains("empty"),
            "{error}"
        );
        let error = load("admins = [\"alice\", \"alice\"]").unwrap_err();
        assert!(error.contains("\"alice\" is listed twice"), "{error}");
        let error = load("admins = \"alice\"").unwrap_err();
        assert!(error.contains("admins"), "{error}");
    }

    #[test]
    fn blob_storage_is_local_by_default_and_s3_when_configured() {
        let config = with_scheduling("").unwrap();
        assert_eq!(config.blobs, BlobsSettings::default());
        assert!(!config.blobs.is_s3());
        let config = with_scheduling(
            "[blobs]\nbackend = \"s3\"\nbucket = \"ferry-blobs\"\nprefix = \"/prod/ml/\"\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\ncredentials_file = \"/etc/ferry/s3.toml\"\npart_bytes = 8388608\npresign_expiry_ms = 60000\n",
        )
        .unwrap();
        assert_eq!(
            config.blobs.presign_expiry(),
            std::time::Duration::from_secs(60)
        );
        assert!(config.blobs.is_s3());
        assert_eq!(config.blobs.bucket.as_deref(), Some("ferry-blobs"));
        assert_eq!(config.blobs.key_prefix(), "prod/ml");
        assert_eq!(config.blobs.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.blobs.part_bytes, 8 << 20);
    }

    #[test]
    fn bad_blob_settings_are_refused_naming_the_key() {
        let refused = |blobs: &str| with_scheduling(&format!("[blobs]\n{blobs}")).unwrap_err();
        let s3 = "backend = \"s3\"\nbucket = \"b-1\"\n";
        for (blobs, expected) in [
            (
                "backend = \"gcs\"\n",
                "blobs.backend: \"gcs\" is not a backend",
            ),
            ("backend = \"s3\"\n", "blobs.bucket: required"),
            (
                "bucket = \"b-1\"\n",
                "blobs.bucket: only for backend = \"s3\"",
            ),
            ("endpoint = \"http://x\"\n", "blobs.endpoint: only for"),
            (
                "backend = \"s3\"\nbucket = \"Has_Caps\"\n",
                "blobs.bucket: \"Has_Caps\" is not a bucket name",
            ),
            (&format!("{s3}prefix = \"a//b\"\n"), "blobs.prefix:"),
            (&format!("{s3}prefix = \"a/../b\"\n"), "blobs.prefix:"),
            (
                &format!("{s3}endpoint = \"ftp://host\"\n"),
                "blobs.endpoint: \"ftp://host\" is not an http",
            ),
            (&format!("{s3}endpoint = \"https://\"\n"), "blobs.endpoint:"),
            (&format!("{s3}region = \"\"\n"), "blobs.region:"),
            (
                &format!("{s3}part_bytes = 1024\n"),
                "blobs.part_bytes: must be from 5242880",
            ),
            (
                &format!("{s3}presign_expiry_ms = 1500\n"),
                "blobs.presign_expiry_ms: must be whole seconds",
            ),
            (&format!("{s3}presign_expiry_ms = 0\n"), "presign_expiry_ms"),
            (
                &format!("{s3}presign_expiry_ms = 604801000\n"),
                "presign_expiry_ms",
            ),
        ] {
            let error = refused(blobs);
            assert!(error.contains(expected), "{blobs:?}: {error}");
        }
        assert!(refused("bucket_name = \"x\"\n").contains("bucket_name"));
        assert!(
            with_scheduling(&format!(
                "[blobs]\n{s3}endpoint = \"https://s3.example.net:9000/\"\n"
            ))
            .is_ok()
        );
    }
}
