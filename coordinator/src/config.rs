//! `coordinator.toml`: where to listen, where to keep data, and the TLS files.

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
    /// Address the gRPC server listens on, e.g. `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// Directory for the state database and the blob store.
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
}

fn default_max_blob_bytes() -> u64 {
    DEFAULT_MAX_BLOB_BYTES
}

impl CoordinatorConfig {
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
