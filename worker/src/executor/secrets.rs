//! An attempt's secrets on the worker: the values the leader sent with the
//! assignment, handed to that step only, as environment variables or as files
//! (mode 0400, owned by the step's user) in a private directory of the attempt
//! (mode 0700) on a tmpfs (`/dev/shm`) when there is one, else under the
//! worker's data directory; the directory is removed when the attempt ends
//! (when this value is dropped). Every value is also masked in the attempt's
//! log lines ([`mask_line`]) before they are written or shipped.
//!
//! Nothing else of the worker keeps a value: not the log file, not a report.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_common::proto;

use super::environment::StepUser;

/// A line of a value shorter than this is not masked: masking a 2-character
/// value would garble every log line without hiding anything worth hiding.
pub(super) const MIN_MASKED_LEN: usize = 4;

/// What the step receives of its secrets, and what is masked in its logs.
#[derive(Default)]
pub(super) struct AttemptSecrets {
    pub(super) env: Vec<(String, String)>,
    /// `$FERRY_SECRETS_DIR`: the attempt's private directory of secret files.
    pub(super) dir: Option<PathBuf>,
    /// Each value (and each line of a value of several lines), longest first.
    pub(super) mask: Vec<String>,
}

/// Names what is there, never a value.
impl std::fmt::Debug for AttemptSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptSecrets")
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("dir", &self.dir)
            .field("masked", &self.mask.len())
            .finish()
    }
}

impl Drop for AttemptSecrets {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %dir.display(), "cannot remove an attempt's secrets directory");
        }
    }
}

/// Why the attempt cannot run: a secret the leader could not deliver.
pub(super) fn refused(assignment: &proto::Assignment) -> Option<String> {
    assignment
        .secrets
        .iter()
        .find(|s| !s.error.is_empty())
        .map(|s| s.error.clone())
}

/// Where an attempt's secrets directory goes: a tmpfs if the host has one, so
/// that the files never reach a disk, else the worker's data directory.
fn secrets_base(data_dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        data_dir.join("secrets")
    }
}

/// The start of the name of every secrets directory of the worker whose data
/// directory is `data_dir` (a tmpfs is shared by every worker of the host).
fn dir_prefix(data_dir: &Path) -> String {
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = blake3::hash(absolute.as_os_str().as_encoded_bytes()).to_hex();
    format!("ferry-secrets-{}-", &hash[..12])
}

/// At the worker's start: removes the secrets directories a previous run of
/// this worker left behind (it was killed before its attempts ended; a tmpfs
/// keeps them until the host restarts). Returns how many there were.
pub fn remove_leftovers(data_dir: &Path) -> usize {
    remove_leftovers_in(&secrets_base(data_dir), &dir_prefix(data_dir))
}

fn remove_leftovers_in(base: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Prepares the attempt's secrets (see the module's comment).
pub(super) fn prepare(
    assignment: &proto::Assignment,
    data_dir: &Path,
    user: Option<&StepUser>,
) -> Result<AttemptSecrets, String> {
    let mut prepared = AttemptSecrets::default();
    if assignment.secrets.is_empty() {
        return Ok(prepared);
    }
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let mut mask = std::collections::BTreeSet::new();
    for secret in &assignment.secrets {
        let text = String::from_utf8_lossy(&secret.value);
        for part in std::iter::once(&*text).chain(text.lines()) {
            let part = part.trim_end_matches(['\r', '\n']);
            if part.len() >= MIN_MASKED_LEN {
                mask.insert(part.to_string());
            }
        }
        if !secret.env.is_empty() {
            let value = String::from_utf8(secret.value.clone()).map_err(|_| {
                format!(
                    "secret {:?} is not UTF-8 text, so it cannot be an environment variable; \
                     ask for it as a file (`file:` instead of `env:`)",
                    secret.name
                )
            })?;
            if value.contains('\0') {
                return Err(format!(
                    "secret {:?} contains a NUL byte, so it cannot be an environment variable; \
                     ask for it as a file",
                    secret.name
                ));
            }
            prepared.env.push((secret.env.clone(), value));
        }
    }
    let mut mask: Vec<String> = mask.into_iter().collect();
    mask.sort_by_key(|m| std::cmp::Reverse(m.len()));
    prepared.mask = mask;
    let files: Vec<&proto::SecretValue> = assignment
        .secrets
        .iter()
        .filter(|s| s.env.is_empty())
        .collect();
    if files.is_empty() {
        return Ok(prepared);
    }
    let base = secrets_base(data_dir);
    let dir = base.join(format!(
        "{}{}-{}-{}-{}",
        dir_prefix(data_dir),
        std::process::id(),
        attempt.run_id,
        attempt.step,
        attempt.attempt
    ));
    let fail = |what: &str, path: &Path, error: std::io::Error| {
        format!(
            "cannot deliver the step's secrets: {what} {}: {error}",
            path.display()
        )
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::create_dir_all(&base).map_err(|e| fail("creating", &base, e))?;
        // A directory left by an earlier worker process of the same pid goes.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail("creating", &dir, e))?;
    }
    // From here on, dropping `prepared` removes the directory.
    prepared.dir = Some(dir.clone());
    let owner = |path: &Path| -> Result<(), String> {
        let Some(user) = user else { return Ok(()) };
        nix::unistd::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| fail("giving to the step's user", path, e.into()))
    };
    for secret in files {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(&secret.file);
        if secret.file.contains('/') || secret.file.is_empty() || secret.file.starts_with('.') {
            return Err(format!(
                "secret {:?} names the file {:?}, which is not a plain file name",
                secret.name, secret.file
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(|e| fail("writing", &path, e))?;
        file.write_all(&secret.value)
            .map_err(|e| fail("writing", &path, e))?;
        owner(&path)?;
    }
    owner(&dir)?;
    Ok(prepared)
}

/// `text` with every masked value replaced by `***` (exact matches within the
/// line; a value split across lines is masked line by line only when each of
/// its own lines is at least [`MIN_MASKED_LEN`] long).
pub(super) fn mask_line(text: String, mask: &[String]) -> String {
    if mask.iter().all(|value| !text.contains(value.as_str())) {
        return text;
    }
    let mut text = text;
    for value in mask {
        if text.contains(value.as_str()) {
            text = text.replace(value.as_str(), "***");
        }
    }
    text
}

#[cfg(test)]
mod leftover_tests {
    use super::*;

    #[test]
    fn only_this_workers_leftover_directories_are_removed() {
        let base = tempfile::tempdir().unwrap();
        let mine = dir_prefix(Path::new("/var/lib/ferry-a"));
        let other = dir_prefix(Path::new("/var/lib/ferry-b"));
        assert_ne!(mine, other);
        for name in [
            format!("{mine}1-2-train-1"),
            format!("{mine}9-3-eval-2"),
            format!("{other}1-2-train-1"),
        ] {
            std::fs::create_dir(base.path().join(&name)).unwrap();
            std::fs::write(base.path().join(&name).join("token"), "value").unwrap();
        }
        std::fs::create_dir(base.path().join("unrelated")).unwrap();
        assert_eq!(remove_leftovers_in(base.path(), &mine), 2);
        let left: Vec<String> = std::fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().any(|n| n.starts_with(&other)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(secrets: Vec<proto::SecretValue>) -> proto::Assignment {
        proto::Assignment {
            attempt: Some(proto::AttemptRef {
                run_id: 7,
                step: "train".into(),
                attempt: 1,
            }),
            secrets,
            ..Default::default()
        }
    }

    fn secret(name: &str, value: &[u8], env: &str, file: &str) -> proto::SecretValue {
        proto::SecretValue {
            name: name.into(),
            value: value.to_vec(),
            env: env.into(),
            file: file.into(),
            error: String::new(),
        }
    }

    #[test]
    fn values_are_masked_exactly() {
        let mask = vec!["hunter22".to_string(), "abcd".to_string()];
        assert_eq!(
            mask_line("token=hunter22 and hunter22!".into(), &mask),
            "token=*** and ***!"
        );
        assert_eq!(mask_line("xabcdx".into(), &mask), "x***x");
        assert_eq!(
            mask_line("hunter2".into(), &mask),
            "hunter2",
            "not a prefix"
        );
        assert_eq!(mask_line("plain".into(), &mask), "plain");
    }

    #[test]
    fn files_are_private_and_removed_with_the_attempt() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let value = b"line-one-secret\nline-two-secret\nab";
        let given = assignment(vec![
            secret("a", b"env-secret-value", "A_TOKEN", ""),
            secret("b", value, "", "key.pem"),
        ]);
        let prepared = prepare(&given, data.path(), None).unwrap();
        assert_eq!(
            prepared.env,
            [("A_TOKEN".to_string(), "env-secret-value".to_string())]
        );
        let dir = prepared.dir.clone().unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = dir.join("key.pem");
        assert_eq!(std::fs::read(&file).unwrap(), value);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o400
        );
        // Each line of a value of several lines is masked, a short one is not.
        assert!(prepared.mask.contains(&"line-one-secret".to_string()));
        assert!(!prepared.mask.contains(&"ab".to_string()));
        assert_eq!(
            mask_line("got line-two-secret".into(), &prepared.mask),
            "got ***"
        );
        drop(prepared);
        assert!(!dir.exists(), "removed when the attempt ends");
    }

    #[test]
    fn an_undelivered_secret_refuses_the_attempt() {
        let mut bad = secret("a", b"", "A", "");
        bad.error = "secret \"a\": deleted".into();
        assert_eq!(
            refused(&assignment(vec![bad])).as_deref(),
            Some("secret \"a\": deleted")
        );
        let binary = assignment(vec![secret("b", &[0xff, 0xfe, 0x00, 0x01], "B", "")]);
        let err = prepare(&binary, Path::new("/nonexistent"), None)
            .err()
            .unwrap();
        assert!(err.contains("not UTF-8"), "{err}");
    }
}
