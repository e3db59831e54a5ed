//! Cluster secrets as the state machine holds them: per project and name, a
//! sealed value (encrypted by the member that received `ferry secrets set`,
//! before the command entered the Raft log), its version, and who set it when.
//!
//! Architecture invariant: no plaintext secret value ever reaches this module,
//! so the Raft log and snapshots hold only ciphertext. Sealing and opening live
//! in the coordinator (`coordinator/src/secrets.rs`), which holds the keys.

use serde::{Deserialize, Serialize};

use super::{Outcome, State, StateError};

/// A secret's value as encrypted with one key of the cluster's keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    /// The id of the key that sealed it (see `coordinator/src/secrets.rs`).
    pub key_id: String,
    pub nonce: Vec<u8>,
    /// The AEAD ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// One secret of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub project: String,
    pub name: String,
    /// 1 for the first value, one more each time it is set again.
    pub version: u64,
    pub sealed: SealedValue,
    pub set_by: String,
    pub set_ms: i64,
}

/// The key of a secret in [`Catalog::secrets`](super::Catalog::secrets).
pub fn secret_key(project: &str, name: &str) -> String {
    format!("{project}/{name}")
}

impl State {
    /// The secret `name` of `project`, if set.
    pub fn secret(&self, project: &str, name: &str) -> Option<&Secret> {
        self.catalog.secrets.get(&secret_key(project, name))
    }

    pub(super) fn set_secret(
        &mut self,
        project: String,
        name: String,
        sealed: SealedValue,
        set_by: String,
        now_ms: i64,
    ) -> Outcome {
        let key = secret_key(&project, &name);
        // Versions keep counting across a delete, so a secret set again after
        // a delete never repeats a version a cache key already names.
        let version = self.catalog.secret_versions.get(&key).copied().unwrap_or(0) + 1;
        self.catalog.secret_versions.insert(key.clone(), version);
        self.catalog.secrets.insert(
            key,
            Secret {
                project,
                name,
                version,
                sealed,
                set_by,
                set_ms: now_ms,
            },
        );
        Outcome::SecretSet { version }
    }

    /// Replaces the sealed value of a secret that still has `version` (the
    /// same value sealed with another key); anything else changes nothing.
    pub(super) fn reseal_secret(
        &mut self,
        project: &str,
        name: &str,
        version: u64,
        sealed: SealedValue,
    ) -> Outcome {
        match self.catalog.secrets.get_mut(&secret_key(project, name)) {
            Some(secret) if secret.version == version => {
                secret.sealed = sealed;
                Outcome::Done
            }
            _ => Outcome::Unchanged,
        }
    }

    pub(super) fn delete_secret(
        &mut self,
        project: &str,
        name: &str,
    ) -> Result<Outcome, StateError> {
        self.catalog
            .secrets
            .remove(&secret_key(project, name))
            .map(|_| Outcome::Done)
            .ok_or_else(|| StateError::SecretNotFound {
                project: project.to_string(),
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn sealed(byte: u8) -> SealedValue {
        SealedValue {
            key_id: "k1".into(),
            nonce: vec![byte; 12],
            ciphertext: vec![byte; 20],
        }
    }

    fn set(state: &mut State, name: &str, byte: u8) -> Result<Outcome, StateError> {
        state.apply(Command::SetSecret {
            project: "default".into(),
            name: name.into(),
            sealed: sealed(byte),
            set_by: "alice".into(),
            now_ms: 5,
        })
    }

    #[test]
    fn versions_count_up_across_deletes() {
        let mut state = State::default();
        assert_eq!(
            set(&mut state, "hf", 1),
            Ok(Outcome::SecretSet { version: 1 })
        );
        assert_eq!(
            set(&mut state, "hf", 2),
            Ok(Outcome::SecretSet { version: 2 })
        );
        let secret = state.secret("default", "hf").unwrap();
        assert_eq!((secret.version, &secret.sealed), (2, &sealed(2)));
        assert_eq!(secret.set_by, "alice");
        let delete = |state: &mut State| {
            state.apply(Command::DeleteSecret {
                project: "default".into(),
                name: "hf".into(),
                now_ms: 6,
            })
        };
        assert_eq!(delete(&mut state), Ok(Outcome::Done));
        assert!(state.secret("default", "hf").is_none());
        assert!(matches!(
            delete(&mut state),
            Err(StateError::SecretNotFound { .. })
        ));
        assert_eq!(
            set(&mut state, "hf", 3),
            Ok(Outcome::SecretSet { version: 3 })
        );
        let reseal = |state: &mut State, version| {
            state.apply(Command::ResealSecret {
                project: "default".into(),
                name: "hf".into(),
                version,
                sealed: sealed(9),
                now_ms: 7,
            })
        };
        assert_eq!(reseal(&mut state, 2), Ok(Outcome::Unchanged), "stale");
        assert_eq!(state.secret("default", "hf").unwrap().sealed, sealed(3));
        assert_eq!(reseal(&mut state, 3), Ok(Outcome::Done));
        let secret = state.secret("default", "hf").unwrap();
        assert_eq!((secret.version, &secret.sealed), (3, &sealed(9)));
        assert!(state.secret("other", "hf").is_none(), "per project");
    }

    #[test]
    fn only_names_and_versions_enter_a_cache_key_when_asked() {
        let spec =
            "name: p\nsteps:\n  - name: a\n    shell: echo\n    secrets: [{name: hf, env: HF}]\n";
        let pipeline =
            ferry_spec::parse_pipeline("p.yaml", spec, &Default::default()).expect("valid");
        let mut step = pipeline.steps[0].clone();
        let key = |step: &ferry_spec::Step, version: u64| {
            let versions = [("hf".to_string(), version)].into();
            crate::state::cache_key(step, &Default::default(), "code", &[], &versions, None)
        };
        assert_eq!(key(&step, 1), key(&step, 2), "off by default");
        step.cache.secrets = true;
        assert_ne!(key(&step, 1), key(&step, 2), "a new version is a new key");
        assert_eq!(key(&step, 2), key(&step, 2));
    }
}
