//! Where the client finds its coordinator and TLS files: flags, then environment
//! variables, then the config file (`--config`, `FERRY_CONFIG`, or the default
//! location `$XDG_CONFIG_HOME/ferry/config.toml`, else `~/.config/ferry/config.toml`).

use std::path::{Path, PathBuf};

use ferry_common::pki::TlsFiles;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub coordinator: String,
    pub tls: TlsFiles,
}

/// The first line of a client config written by `ferry dev`.
pub const DEV_CONFIG_HEADER: &str =
    "# Written by 'ferry dev'. Used by every 'ferry' command without flags.";

/// Values given on the command line or in the environment; each wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub coordinator: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the client config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the client config {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error(
        "no coordinator is configured: pass --coordinator HOST:PORT (or set FERRY_COORDINATOR), \
         or start 'ferry dev', which writes {default}"
    )]
    NoCoordinator { default: String },
    #[error(
        "no TLS {what} file is configured: pass --{what} (or set FERRY_{upper}), or put it in the client config"
    )]
    NoTls {
        what: &'static str,
        upper: &'static str,
    },
    #[error("cannot write the client config {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("neither XDG_CONFIG_HOME nor HOME is set, so there is no default config location")]
    NoHome,
}

/// `$XDG_CONFIG_HOME/ferry/config.toml`, else `$HOME/.config/ferry/config.toml`.
pub fn default_config_path() -> Result<PathBuf, ConfigError> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("ferry/config.toml"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or(ConfigError::NoHome)?;
    Ok(PathBuf::from(home).join(".config/ferry/config.toml"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialConfig {
    coordinator: Option<String>,
    tls: Option<PartialTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl ClientConfig {
    /// Combines overrides with the config file (the explicit one, which must exist,
    /// or the default one, if it exists).
    pub fn resolve(overrides: &Overrides) -> Result<ClientConfig, ConfigError> {
        let default_path = default_config_path().ok();
        let file_path = overrides
            .config
            .clone()
            .or_else(|| default_path.clone().filter(|p| p.exists()));
        let file = match &file_path {
            Some(path) => read_partial(path)?,
            None => PartialConfig::default(),
        };
        let base = file_path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let tls = file.tls.unwrap_or_default();
        let coordinator = overrides
            .coordinator
            .clone()
            .or(file.coordinator)
            .ok_or_else(|| ConfigError::NoCoordinator {
                default: default_path
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/ferry/config.toml".into()),
            })?;
        let pick = |flag: &Option<PathBuf>,
                    from_file: Option<PathBuf>,
                    what: &'static str,
                    upper: &'static str| {
            flag.clone()
                .or_else(|| from_file.map(|p| base.join(p)))
                .ok_or(ConfigError::NoTls { what, upper })
        };
        Ok(ClientConfig {
            coordinator,
            tls: TlsFiles {
                ca: pick(&overrides.ca, tls.ca, "ca", "CA")?,
                cert: pick(&overrides.cert, tls.cert, "cert", "CERT")?,
                key: pick(&overrides.key, tls.key, "key", "KEY")?,
            },
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let write = |source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write)?;
        }
        let text = toml::to_string(self).expect("client config serializes");
        std::fs::write(path, format!("{DEV_CONFIG_HEADER}\n{text}")).map_err(write)
    }
}

fn read_partial(path: &Path) -> Result<PartialConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "coordinator = \"10.0.0.1:7443\"\n[tls]\nca = \"ca.pem\"\ncert = \"me.pem\"\nkey = \"me-key.pem\"\n",
        )
        .unwrap();
        let config = ClientConfig::resolve(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.coordinator, "10.0.0.1:7443");
        assert_eq!(config.tls.ca, dir.path().join("ca.pem"));
        let config = ClientConfig::resolve(&Overrides {
            config: Some(path),
            coordinator: Some("127.0.0.1:1".into()),
            key: Some("/k.pem".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.coordinator, "127.0.0.1:1");
        assert_eq!(config.tls.key, PathBuf::from("/k.pem"));
    }

    #[test]
    fn unknown_fields_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "coordinatr = \"x\"\n").unwrap();
        let error = ClientConfig::resolve(&Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("coordinatr"), "{error}");
        let error = ClientConfig::resolve(&Overrides {
            config: Some(dir.path().join("missing.toml")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
    }
}
