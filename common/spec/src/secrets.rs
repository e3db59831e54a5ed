//! A step's `secrets:`: the cluster secrets it receives by name, each as an
//! environment variable or as a file in a private directory of the attempt.
//! The values are not part of the spec (they live encrypted in the
//! coordinators, see `ferry secrets`); a spec only names them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::checker::StepContext;
use super::names::is_param_name;
use super::raw::describe_value;

/// Longest secret name.
pub const MAX_SECRET_NAME_LEN: usize = 64;

/// Secrets one step may ask for.
pub const MAX_SECRETS_PER_STEP: usize = 32;

/// One secret a step asks for, and how it receives the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretUse {
    pub name: String,
    pub target: SecretTarget,
}

/// Where a step finds a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretTarget {
    /// An environment variable of the step's process.
    Env(String),
    /// A file (mode 0400) of this name in the directory `$FERRY_SECRETS_DIR`.
    File(String),
}

/// Checks a secret's name: 1 to 64 characters from `a-z`, `0-9`, `_` and `-`,
/// starting with a letter. The error says what is wrong.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_SECRET_NAME_LEN).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name {name:?} is invalid: use 1 to {MAX_SECRET_NAME_LEN} characters from \
             a-z, 0-9, '_' and '-', starting with a letter (e.g. hf_token)"
        ))
    }
}

/// `secrets: [{name: hf_token, env: HF_TOKEN}, {name: ssh_key, file: id_ed25519}]`.
pub(super) fn check_secrets(
    cx: &StepContext<'_>,
    value: &Value,
    env_names: &BTreeSet<String>,
) -> Vec<SecretUse> {
    let label = cx.label;
    let at = || cx.at("secrets", None);
    let items = match value {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        other => {
            cx.error(
                at(),
                format!(
                    "secrets of step {label} must be a list such as \
                     [{{name: hf_token, env: HF_TOKEN}}], got {}",
                    describe_value(other)
                ),
            );
            return Vec::new();
        }
    };
    if items.len() > MAX_SECRETS_PER_STEP {
        cx.error(
            at(),
            format!(
                "step {label} asks for {} secrets; at most {MAX_SECRETS_PER_STEP}",
                items.len()
            ),
        );
        return Vec::new();
    }
    let mut uses = Vec::new();
    let mut targets = BTreeSet::new();
    for item in items {
        let Some(map) = item.as_mapping() else {
            cx.error(
                at(),
                format!(
                    "each entry of secrets of step {label} must be a map such as \
                     {{name: hf_token, env: HF_TOKEN}} or {{name: hf_token, file: hf_token}}, \
                     got {}",
                    describe_value(item)
                ),
            );
            continue;
        };
        let field = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
        if let Some(unknown) = map
            .keys()
            .find(|k| !matches!(k.as_str(), Some("name" | "env" | "file")))
        {
            cx.error(
                at(),
                format!(
                    "a secret of step {label} has an unknown field {}; use `name` and one of \
                     `env` or `file`",
                    describe_value(unknown)
                ),
            );
            continue;
        }
        let Some(name) = field("name") else {
            cx.error(
                at(),
                format!("a secret of step {label} has no `name` (a text such as hf_token)"),
            );
            continue;
        };
        if let Err(why) = check_secret_name(&name) {
            cx.error(at(), format!("step {label}: {why}"));
            continue;
        }
        let target = match (field("env"), field("file")) {
            (Some(var), None) => {
                if !is_param_name(&var) || var.starts_with("FERRY_") {
                    cx.error(
                        at(),
                        format!(
                            "secret {name:?} of step {label} has env {var:?}: it must start with \
                             a letter or '_', contain only letters, digits and '_', and not use \
                             the reserved prefix FERRY_"
                        ),
                    );
                    continue;
                }
                if env_names.contains(&var) {
                    cx.error(
                        at(),
                        format!(
                            "secret {name:?} of step {label} goes to env {var:?}, which the \
                             step's `env` also sets; remove one of them"
                        ),
                    );
                    continue;
                }
                SecretTarget::Env(var)
            }
            (None, Some(file)) => {
                let plain = !file.is_empty()
                    && file.len() <= 255
                    && file != "."
                    && file != ".."
                    && !file.contains(['/', '\0']);
                if !plain {
                    cx.error(
                        at(),
                        format!(
                            "secret {name:?} of step {label} has file {file:?}: it must be a \
                             plain file name (no '/'), e.g. hf_token"
                        ),
                    );
                    continue;
                }
                SecretTarget::File(file)
            }
            _ => {
                cx.error(
                    at(),
                    format!(
                        "secret {name:?} of step {label} needs exactly one of `env` (a variable \
                         name) or `file` (a file name)"
                    ),
                );
                continue;
            }
        };
        if !targets.insert(target.clone()) {
            cx.error(
                at(),
                format!("step {label} delivers two secrets to the same {target:?}"),
            );
            continue;
        }
        uses.push(SecretUse { name, target });
    }
    uses
}
