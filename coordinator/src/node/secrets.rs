//! Secrets at the edges of the state machine: sealing a value received by
//! `ferry secrets set` before it is proposed, and opening the secrets a step
//! asks for when the leader builds its assignment. The state machine itself
//! holds only sealed values (`state::secrets`).

use ferry_common::proto;
use ferry_common::secrets::{Keyring, Sealed, SecretsError};
use ferry_common::spec::SecretTarget;

use crate::state::{AttemptKey, SealedValue, State, secret_key};

/// Seals `value` for the secret `name` of `project` (bound to that name).
pub fn seal(
    keyring: &Keyring,
    project: &str,
    name: &str,
    value: &[u8],
) -> Result<SealedValue, SecretsError> {
    let sealed = keyring.seal(&secret_key(project, name), value)?;
    Ok(SealedValue {
        key_id: sealed.key_id,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
    })
}

/// Opens a sealed value of the secret `name` of `project`.
pub fn open(
    keyring: &Keyring,
    project: &str,
    name: &str,
    sealed: &SealedValue,
) -> Result<Vec<u8>, SecretsError> {
    keyring.open(
        &secret_key(project, name),
        &Sealed {
            key_id: sealed.key_id.clone(),
            nonce: sealed.nonce.clone(),
            ciphertext: sealed.ciphertext.clone(),
        },
    )
}

/// The values of the secrets the attempt's step asks for, each with its target;
/// a secret that cannot be delivered carries the reason instead (the worker
/// fails the attempt with it).
pub fn secret_values(
    state: &State,
    keyring: Option<&Keyring>,
    key: &AttemptKey,
) -> Vec<proto::SecretValue> {
    let Some(run) = state.runs.get(&key.run) else {
        return Vec::new();
    };
    let Some(spec) = run.spec(&key.step) else {
        return Vec::new();
    };
    let project = &run.pipeline.project;
    spec.secrets
        .iter()
        .map(|used| {
            let (env, file) = match &used.target {
                SecretTarget::Env(var) => (var.clone(), String::new()),
                SecretTarget::File(file) => (String::new(), file.clone()),
            };
            let opened = match (state.secret(project, &used.name), keyring) {
                (None, _) => Err(format!(
                    "secret {:?} of project {project:?} does not exist (deleted since the run \
                     was submitted?); set it with `ferry secrets set {} --project {project}`",
                    used.name, used.name
                )),
                (Some(_), None) => Err(
                    "the leading coordinator has no secrets key (`secrets_key` in \
                     coordinator.toml)"
                        .to_string(),
                ),
                (Some(secret), Some(keyring)) => {
                    open(keyring, project, &used.name, &secret.sealed).map_err(|e| e.to_string())
                }
            };
            let (value, error) = match opened {
                Ok(value) => (value, String::new()),
                Err(reason) => {
                    tracing::warn!(%key, secret = %used.name, %reason, "cannot deliver a secret");
                    (Vec::new(), format!("secret {:?}: {reason}", used.name))
                }
            };
            proto::SecretValue {
                name: used.name.clone(),
                value,
                env,
                file,
                error,
            }
        })
        .collect()
}
