//! `worker.toml`: the worker's name, its coordinator, where it keeps work
//! directories, its TLS files, labels, and optional capacity overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_common::config_file::{ConfigFileError, load_toml};
use ferry_common::pki::TlsFiles;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Must match the name in the worker's certificate.
    pub name: String,
    /// The coordinator's address, `HOST:PORT`.
    pub coordinator: String,
    /// Work directories, cached bundles.
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

fn default_log_limit() -> u64 {
    64 * 1024 * 1024
}

impl WorkerConfig {
    /// Reads the file; relative paths in it are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<WorkerConfig, ConfigFileError> {
        let mut config: WorkerConfig = load_toml(path)?;
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
    fn the_deploy_example_parses_and_paths_are_relative_to_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/worker.toml");
        let config = WorkerConfig::load(&path).unwrap();
        assert_eq!(config.name, "gpu-01");
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
    }
}
