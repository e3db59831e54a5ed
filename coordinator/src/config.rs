//! `coordinator.toml`: this member's id and addresses, the initial cluster, where
//! to keep data, the TLS files, and Raft timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_common::config_file::{ConfigFileError, load_toml};
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
            tick_ms: 50,
            election_ticks: 10,
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
}

impl CoordinatorConfig {
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

    /// Reads the file; relative paths in it are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigFileError> {
        let mut config: CoordinatorConfig = load_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.tls = config.tls.relative_to(base);
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
        assert!(config.tls.key.ends_with("coord1-key.pem"));
        assert_eq!(config.max_blob_bytes, DEFAULT_MAX_BLOB_BYTES);
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
}
