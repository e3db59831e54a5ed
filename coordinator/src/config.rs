//! `coordinator.toml`: where to listen, where to keep data, and the TLS files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_common::pki::TlsFiles;
use serde::Deserialize;

/// Default bound on one artifact or code bundle.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 8 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address the gRPC server listens on, e.g. `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// Directory for the state database and the blob store.
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsConfig {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

fn default_max_blob_bytes() -> u64 {
    DEFAULT_MAX_BLOB_BYTES
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

impl CoordinatorConfig {
    /// Reads the file; relative paths in it are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config: CoordinatorConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.tls.ca = base.join(&config.tls.ca);
        config.tls.cert = base.join(&config.tls.cert);
        config.tls.key = base.join(&config.tls.key);
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
