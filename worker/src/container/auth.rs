//! Registry credentials for pulling a step's image: from the worker's Docker
//! client configuration (`config.json`, its `auths`), never from a pipeline.
//! Pure: parsing and choosing the entry for an image; reading the file is the
//! caller's.
//!
//! An entry's key is a registry (`registry.example.com`, with a port or a
//! scheme and path as `docker login` writes them; Docker Hub's is
//! `https://index.docker.io/v1/`); its value holds `auth` (base64 of
//! `user:password`), or `username` and `password`, or an `identitytoken`.
//! Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::BTreeMap;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

/// Docker Hub, as image names imply it and as `auths` keys spell it.
const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The credentials of each registry the configuration names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuths {
    /// By registry host (and port), as [`registry_host`] spells it.
    by_host: BTreeMap<String, Credential>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Credential {
    /// As written in the configuration (what the engine is told).
    server: String,
    username: Option<String>,
    password: Option<String>,
    identity_token: Option<String>,
}

impl RegistryAuths {
    /// Parses a Docker `config.json`; an entry that cannot be read is an
    /// error naming it (a pull would otherwise fail later, less clearly).
    pub fn parse(json: &str) -> Result<RegistryAuths, String> {
        let file: ConfigFile =
            serde_json::from_str(json).map_err(|e| format!("it is not a Docker config: {e}"))?;
        let mut by_host = BTreeMap::new();
        for (server, entry) in file.auths {
            let (mut username, mut password) = (entry.username, entry.password);
            if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| format!("the `auth` of {server:?} is not base64 text"))?;
                let (user, pass) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("the `auth` of {server:?} is not user:password"))?;
                username = Some(user.to_string());
                password = Some(pass.to_string());
            }
            let credential = Credential {
                server: server.clone(),
                username,
                password,
                identity_token: entry.identitytoken.filter(|t| !t.is_empty()),
            };
            by_host.insert(registry_host(&server), credential);
        }
        Ok(RegistryAuths { by_host })
    }

    /// How many registries it has credentials for.
    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The credentials to pull `image` with, if the configuration has some
    /// for its registry.
    pub fn for_image(&self, image: &str) -> Option<DockerCredentials> {
        let credential = self.by_host.get(&image_registry(image))?;
        Some(DockerCredentials {
            username: credential.username.clone(),
            password: credential.password.clone(),
            serveraddress: Some(credential.server.clone()),
            identitytoken: credential.identity_token.clone(),
            ..Default::default()
        })
    }
}

/// A configuration key as a host: scheme and path dropped, Docker Hub's
/// aliases as `docker.io`.
fn registry_host(server: &str) -> String {
    let host = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

/// The registry an image reference names: its first component when that
/// looks like a host (a dot, a port, or `localhost`), else Docker Hub.
fn image_registry(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            registry_host(first)
        }
        _ => DOCKER_HUB.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "auths": {
            "https://index.docker.io/v1/": {"auth": "aHViLXVzZXI6aHViLXBhc3M="},
            "registry.example.com:5000": {"username": "team", "password": "s3cret"},
            "https://ghcr.io": {"identitytoken": "tok"}
        },
        "credsStore": "desktop"
    }"#;

    #[test]
    fn each_image_gets_its_registrys_credentials() {
        let auths = RegistryAuths::parse(CONFIG).unwrap();
        assert_eq!(auths.len(), 3);
        let hub = auths.for_image("python:3.11-slim").unwrap();
        assert_eq!(
            (hub.username.as_deref(), hub.password.as_deref()),
            (Some("hub-user"), Some("hub-pass"))
        );
        assert_eq!(
            hub.serveraddress.as_deref(),
            Some("https://index.docker.io/v1/")
        );
        assert!(auths.for_image("library/python").is_some(), "Hub too");
        let team = auths
            .for_image("registry.example.com:5000/ml/train:v2")
            .unwrap();
        assert_eq!(team.username.as_deref(), Some("team"));
        let ghcr = auths.for_image("ghcr.io/org/img@sha256:00").unwrap();
        assert_eq!(ghcr.identitytoken.as_deref(), Some("tok"));
        // A registry it has nothing for, and a path that only looks like one.
        assert!(auths.for_image("quay.io/org/img").is_none());
        assert!(auths.for_image("registry.example.com/ml/train").is_none());
    }

    #[test]
    fn a_broken_entry_is_named() {
        let bad = r#"{"auths": {"r.example.com": {"auth": "not base64!"}}}"#;
        let error = RegistryAuths::parse(bad).unwrap_err();
        assert!(error.contains("r.example.com"), "{error}");
        let no_colon = r#"{"auths": {"r.example.com": {"auth": "dXNlcg=="}}}"#;
        assert!(
            RegistryAuths::parse(no_colon)
                .unwrap_err()
                .contains("user:password")
        );
        assert!(RegistryAuths::parse("42").is_err());
        assert!(RegistryAuths::parse("{}").unwrap().is_empty());
    }

    #[test]
    fn the_configuration_file_is_optional_unless_named() {
        use crate::container::registry_auths;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("config.json");
        let error = registry_auths(Some(&missing)).unwrap_err().to_string();
        assert!(
            error.contains("config.json") && error.contains("docker_config"),
            "{error}"
        );
        std::fs::write(&missing, "{not json").unwrap();
        let error = registry_auths(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("not a Docker config"), "{error}");
        std::fs::write(&missing, CONFIG).unwrap();
        assert_eq!(registry_auths(Some(&missing)).unwrap().len(), 3);
    }
}
