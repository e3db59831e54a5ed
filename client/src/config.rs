//! Where the client finds its coordinators and TLS files: flags, then environment
//! variables, then the config file (`--config`, `FERRY_CONFIG`, or the default
//! location `$XDG_CONFIG_HOME/ferry/config.toml`, else `~/.config/ferry/config.toml`).
//! The coordinators are a list, tried in order: `a:1,b:2` on the command line, in
//! the environment and in the file's `coordinator`, or the file's
//! `coordinators = ["a:1", "b:2"]`.

use std::path::{Path, PathBuf};

use ferry_common::channel::{ChannelError, parse_address};
use ferry_common::pki::TlsFiles;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The coordinators' addresses, `HOST:PORT`, in the order they are tried; never
    /// empty. Any member answers; the first that connects is used.
    pub coordinators: Vec<String>,
    pub tls: TlsFiles,
}

/// A client config file as written: the list as one comma-separated string, the
/// form a user also types on the command line.
#[derive(Serialize)]
struct ConfigFile<'a> {
    coordinator: String,
    tls: &'a TlsFiles,
}

/// The first line of a client config written by `ferry dev`.
pub const DEV_CONFIG_HEADER: &str =
    "# Written by 'ferry dev'. Used by every 'ferry' command without flags.";

/// Values given on the command line or in the environment; each wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    /// One address or a comma-separated list.
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
    #[error("the client config {path} gives both `coordinator` and `coordinators`; keep one")]
    CoordinatorTwice { path: String },
    #[error(transparent)]
    BadCoordinator(#[from] ChannelError),
    #[error("the coordinator list {given:?} names no address (expected HOST:PORT[,HOST:PORT...])")]
    EmptyCoordinatorList { given: String },
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
    coordinators: Option<Vec<String>>,
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
        if file.coordinator.is_some() && file.coordinators.is_some() {
            return Err(ConfigError::CoordinatorTwice {
                path: file_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            });
        }
        let coordinators = overrides
            .coordinator
            .clone()
            .or(file.coordinator)
            .or_else(|| file.coordinators.map(|list| list.join(",")))
            .ok_or_else(|| ConfigError::NoCoordinator {
                default: default_path
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/ferry/config.toml".into()),
            })?;
        let coordinators = parse_coordinator_list(&coordinators)?;
        let pick = |flag: &Option<PathBuf>,
                    from_file: Option<PathBuf>,
                    what: &'static str,
                    upper: &'static str| {
            flag.clone()
                .or_else(|| from_file.map(|p| base.join(p)))
                .ok_or(ConfigError::NoTls { what, upper })
        };
        Ok(ClientConfig {
            coordinators,
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
            ferry_common::durable::create_dir_all(parent).map_err(write)?;
        }
        let file = ConfigFile {
            coordinator: self.coordinators.join(","),
            tls: &self.tls,
        };
        let text = toml::to_string(&file).expect("client config serializes");
        // The user's own (0600): it names the files of their credentials.
        let mut out = ferry_common::durable::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(write)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            out.set_permissions(std::fs::Permissions::from_mode(
                ferry_common::durable::PRIVATE_FILE_MODE,
            ))
            .map_err(write)?;
        }
        std::io::Write::write_all(&mut out, format!("{DEV_CONFIG_HEADER}\n{text}").as_bytes())
            .map_err(write)
    }
}

/// Splits `a:1, b:2` into its addresses, each checked to be `HOST:PORT`; empty
/// entries (a trailing comma) and repeats are dropped, the order is kept.
pub fn parse_coordinator_list(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut addresses: Vec<String> = Vec::new();
    for address in text.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        parse_address(address)?;
        if !addresses.iter().any(|known| known == address) {
            addresses.push(address.to_string());
        }
    }
    if addresses.is_empty() {
        return Err(ConfigError::EmptyCoordinatorList {
            given: text.to_string(),
        });
    }
    Ok(addresses)
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
        assert_eq!(config.coordinators, ["10.0.0.1:7443"]);
        assert_eq!(config.tls.ca, dir.path().join("ca.pem"));
        let config = ClientConfig::resolve(&Overrides {
            config: Some(path),
            coordinator: Some("127.0.0.1:1".into()),
            key: Some("/k.pem".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.coordinators, ["127.0.0.1:1"]);
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

    fn file_with(dir: &Path, coordinators: &str) -> PathBuf {
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            format!(
                "{coordinators}\n[tls]\nca = \"ca.pem\"\ncert = \"me.pem\"\nkey = \"me-key.pem\"\n"
            ),
        )
        .unwrap();
        path
    }

    fn resolve(config: PathBuf, coordinator: Option<&str>) -> Result<ClientConfig, ConfigError> {
        ClientConfig::resolve(&Overrides {
            config: Some(config),
            coordinator: coordinator.map(str::to_string),
            ..Default::default()
        })
    }

    #[test]
    fn address_lists_split_on_commas() {
        assert_eq!(parse_coordinator_list("a:1").unwrap(), ["a:1"]);
        assert_eq!(
            parse_coordinator_list("a:1,b:2, c:3").unwrap(),
            ["a:1", "b:2", "c:3"]
        );
        assert_eq!(
            parse_coordinator_list(" a:1 ,, b:2 , a:1 ,").unwrap(),
            ["a:1", "b:2"]
        );
        assert_eq!(
            parse_coordinator_list("https://a.example:1,[::1]:2").unwrap(),
            ["https://a.example:1", "[::1]:2"]
        );
        assert!(matches!(
            parse_coordinator_list(" , "),
            Err(ConfigError::EmptyCoordinatorList { .. })
        ));
        let error = parse_coordinator_list("a:1,nohost")
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"nohost\""), "{error}");
        assert!(parse_coordinator_list("a:1,b:port").is_err());
    }

    #[test]
    fn the_file_gives_the_list_as_a_string_or_as_an_array_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let single = resolve(file_with(dir.path(), "coordinator = \"a:1\""), None).unwrap();
        assert_eq!(single.coordinators, ["a:1"]);
        let commas = resolve(file_with(dir.path(), "coordinator = \"a:1,b:2\""), None).unwrap();
        assert_eq!(commas.coordinators, ["a:1", "b:2"]);
        let array = resolve(
            file_with(dir.path(), "coordinators = [\"a:1\", \"b:2\", \"c:3\"]"),
            None,
        )
        .unwrap();
        assert_eq!(array.coordinators, ["a:1", "b:2", "c:3"]);
        let both = resolve(
            file_with(
                dir.path(),
                "coordinator = \"a:1\"\ncoordinators = [\"b:2\"]",
            ),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(both, ConfigError::CoordinatorTwice { .. }),
            "{both}"
        );
        let empty = resolve(file_with(dir.path(), "coordinators = []"), None).unwrap_err();
        assert!(
            matches!(empty, ConfigError::EmptyCoordinatorList { .. }),
            "{empty}"
        );
    }

    #[test]
    fn the_flag_or_environment_list_wins_over_the_file() {
        // `--coordinator` and FERRY_COORDINATOR arrive here the same way (clap reads
        // the variable into the flag).
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), "coordinators = [\"a:1\", \"b:2\"]");
        let config = resolve(path.clone(), Some("x:1, y:2")).unwrap();
        assert_eq!(config.coordinators, ["x:1", "y:2"]);
        let error = resolve(path, Some("x:1,bad")).unwrap_err();
        assert!(matches!(error, ConfigError::BadCoordinator(_)), "{error}");
    }

    #[test]
    fn a_written_config_reads_back_with_its_whole_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("written.toml");
        let config = ClientConfig {
            coordinators: vec!["a:1".into(), "b:2".into()],
            tls: TlsFiles::in_dir(dir.path(), "me"),
        };
        config.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(DEV_CONFIG_HEADER), "{text}");
        assert!(text.contains("coordinator = \"a:1,b:2\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(resolve(path, None).unwrap(), config);
    }
}
