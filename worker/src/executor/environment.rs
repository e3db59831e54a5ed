//! What a step's process starts with besides Ferry's own variables: never the
//! daemon's environment, only an allow-list of it (`PATH`, `LANG`, `LC_*`, `TZ`,
//! and the names in `pass_env`) and the `HOME` of the user the step runs as; and
//! that user itself, resolved once at worker start (`run_as`; a root worker runs
//! steps as `nobody` unless told otherwise).
//!
//! The variables Ferry sets for the step (`FERRY_*`, the GPUs) and the spec's
//! `env` come from `staging::step_environment` and are applied on top.

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// `PATH` when the daemon has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Who a root worker runs steps as when `run_as` is not set.
pub const DEFAULT_RUN_AS: &str = "nobody";

/// The user a step runs as when the worker switches to one (it runs as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

/// Who steps run as: `Some(user)` when the worker switches to it, `None` when
/// steps run as the worker's own user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepIdentity {
    pub switch_to: Option<StepUser>,
    /// `HOME` for the step: the step user's, else the daemon's.
    pub home: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunAsError {
    #[error(
        "run_as = \"{0}\" in worker.toml names no user on this machine: create the user or \
         name an existing unprivileged one"
    )]
    NoSuchUser(String),
    #[error("cannot look up the user \"{name}\": {reason}")]
    Lookup { name: String, reason: String },
    #[error(
        "run_as = \"{wanted}\" cannot be honoured: the worker runs as \"{me}\", not as root, so \
         steps run as \"{me}\"; remove run_as or start the worker as root"
    )]
    NotRoot { wanted: String, me: String },
    #[error(
        "steps run as \"{user}\", which cannot reach the work directories under {work}: \
         {blocking} (mode {mode:o}) does not let it pass; make it traversable (chmod o+x) or \
         move data_dir"
    )]
    Unreachable {
        user: String,
        work: String,
        blocking: String,
        mode: u32,
    },
}

/// Checks that `user` may pass through every folder above `work` (it owns the
/// work directories themselves), so that steps do not all fail at their start.
pub fn check_reachable(work: &Path, user: &StepUser) -> Result<(), RunAsError> {
    use std::os::unix::fs::MetadataExt;
    let absolute = std::path::absolute(work).unwrap_or_else(|_| work.to_path_buf());
    for folder in absolute.ancestors() {
        let Ok(metadata) = std::fs::metadata(folder) else {
            continue;
        };
        let mode = metadata.mode() & 0o7777;
        let passes = if metadata.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if metadata.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passes {
            return Err(RunAsError::Unreachable {
                user: user.name.clone(),
                work: work.display().to_string(),
                blocking: folder.display().to_string(),
                mode,
            });
        }
    }
    Ok(())
}

/// Resolves `run_as` for a worker running as `me`: as root, the configured user
/// (default `nobody`), which must exist; as another user, steps run as that user
/// and `run_as` may only name it.
pub fn resolve_run_as(run_as: Option<&str>, me: Uid) -> Result<StepIdentity, RunAsError> {
    let lookup = |name: &str| -> Result<User, RunAsError> {
        match User::from_name(name) {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(RunAsError::NoSuchUser(name.to_string())),
            Err(error) => Err(RunAsError::Lookup {
                name: name.to_string(),
                reason: error.to_string(),
            }),
        }
    };
    let own_home = || {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| User::from_uid(me).ok().flatten().map(|u| u.dir))
    };
    if !me.is_root() {
        if let Some(wanted) = run_as {
            let user = lookup(wanted)?;
            if user.uid != me {
                let me = User::from_uid(me)
                    .ok()
                    .flatten()
                    .map_or_else(|| me.to_string(), |u| u.name);
                return Err(RunAsError::NotRoot {
                    wanted: wanted.to_string(),
                    me,
                });
            }
        }
        return Ok(StepIdentity {
            switch_to: None,
            home: own_home(),
        });
    }
    let user = lookup(run_as.unwrap_or(DEFAULT_RUN_AS))?;
    if user.uid.is_root() {
        // Explicitly asked for: steps run as root and can read everything the worker can.
        return Ok(StepIdentity {
            switch_to: None,
            home: Some(user.dir),
        });
    }
    Ok(StepIdentity {
        home: Some(user.dir.clone()),
        switch_to: Some(StepUser {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
        }),
    })
}

/// The name of the user this process runs as, if it has one.
pub fn current_user_name() -> Option<String> {
    User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// Whether the daemon's variable `name` reaches steps: `PATH`, `LANG`, `LC_*`,
/// `TZ`, and every name in `pass_env`.
pub fn passes(name: &str, pass_env: &[String]) -> bool {
    matches!(name, "PATH" | "LANG" | "TZ")
        || name.starts_with("LC_")
        || pass_env.iter().any(|passed| passed == name)
}

/// The environment a step starts from, before Ferry's variables and the spec's
/// `env`: the allowed part of `daemon` (the daemon's own environment), a default
/// `PATH` when it has none, and `HOME`.
pub fn base_environment(
    daemon: impl IntoIterator<Item = (String, String)>,
    pass_env: &[String],
    identity: &StepIdentity,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = daemon
        .into_iter()
        .filter(|(name, _)| name != "HOME" && passes(name, pass_env))
        .collect();
    if !env.iter().any(|(name, _)| name == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if let Some(home) = &identity.home {
        env.push(("HOME".into(), home.display().to_string()));
    }
    env.sort();
    env
}

/// Who a container step's files are handed to: the container's user, when
/// the worker is root (a worker that is not root runs containers as itself,
/// and its files are already its own).
pub fn container_step_user(user: crate::container::ContainerUser) -> Option<StepUser> {
    nix::unistd::geteuid().is_root().then(|| StepUser {
        name: user.docker_form(),
        uid: Uid::from_raw(user.uid),
        gid: Gid::from_raw(user.gid),
        home: PathBuf::from("/"),
    })
}

/// Gives `work_dir` (everything in it, links not followed, except the `shared`
/// files: hard links to the worker's read-only blob cache entries, which stay
/// the worker's) to the step's user, and creates the metrics file, owned by
/// it, that the step may write; nothing else of the worker's data directory is
/// the step's. Only what is not the user's yet is changed (a change moves a
/// file's change time, which the work directory pool compares): `Ok(true)`
/// when something in `work_dir` changed.
pub fn hand_over(
    work_dir: &Path,
    metrics_file: &Path,
    user: &StepUser,
    shared: &[PathBuf],
) -> std::io::Result<bool> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let owner = |path: &Path| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(user.uid),
            Some(user.gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)
    };
    let shared: std::collections::HashSet<&Path> = shared.iter().map(PathBuf::as_path).collect();
    let mut changed = false;
    let mut pending = vec![work_dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if shared.contains(path.as_path()) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.uid() != user.uid.as_raw() || meta.gid() != user.gid.as_raw() {
            owner(&path)?;
            changed = true;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    if std::fs::symlink_metadata(work_dir)?.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(work_dir, std::fs::Permissions::from_mode(0o700))?;
        changed = true;
    }
    let _ = std::fs::remove_file(metrics_file);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(metrics_file)?;
    owner(metrics_file)?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_the_allow_list_of_the_daemons_environment_reaches_a_step() {
        let daemon = vars(&[
            ("PATH", "/opt/bin:/usr/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("TZ", "UTC"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("FERRY_WORKER_CONFIG", "/etc/ferry/worker.toml"),
            ("HTTP_PROXY", "http://proxy:3128"),
        ]);
        let identity = StepIdentity {
            switch_to: None,
            home: Some(PathBuf::from("/nonexistent")),
        };
        let env = base_environment(daemon.clone(), &["HTTP_PROXY".to_string()], &identity);
        assert_eq!(
            env,
            vars(&[
                ("HOME", "/nonexistent"),
                ("HTTP_PROXY", "http://proxy:3128"),
                ("LANG", "C.UTF-8"),
                ("LC_ALL", "C"),
                ("PATH", "/opt/bin:/usr/bin"),
                ("TZ", "UTC"),
            ])
        );
        // The daemon's own FERRY_* variables are not Ferry's variables for the step.
        let env = base_environment(vars(&[("FERRY_X", "1")]), &[], &StepIdentity::default());
        assert_eq!(env, vars(&[("PATH", DEFAULT_PATH)]));
        assert!(!passes("LCX", &[]) && passes("LC_TIME", &[]) && !passes("HOME", &[]));
    }

    #[test]
    fn a_folder_the_step_user_cannot_pass_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("data/work");
        std::fs::create_dir_all(&work).unwrap();
        let user = StepUser {
            name: "someone".into(),
            uid: Uid::from_raw(54321),
            gid: Gid::from_raw(54321),
            home: PathBuf::from("/nonexistent"),
        };
        let set = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(root.path(), 0o711);
        set(&root.path().join("data"), 0o700);
        let error = check_reachable(&work, &user).unwrap_err();
        assert!(
            matches!(&error, RunAsError::Unreachable { blocking, mode: 0o700, .. }
                if *blocking == root.path().join("data").display().to_string()),
            "{error}"
        );
        set(&root.path().join("data"), 0o711);
        assert_eq!(check_reachable(&work, &user), Ok(()));
    }

    #[test]
    fn hand_over_leaves_the_links_to_the_blob_cache_to_the_worker() {
        use std::os::unix::fs::MetadataExt;
        // Needs root to give files away (skipped otherwise).
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: giving files to another user needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        let input = work.join("inputs/data");
        std::fs::create_dir_all(&input).unwrap();
        let (linked, copied) = (input.join("linked.csv"), work.join("train.py"));
        std::fs::write(&linked, "a,b\n").unwrap();
        std::fs::write(&copied, "print(1)\n").unwrap();
        let user = StepUser {
            name: "someone".into(),
            uid: Uid::from_raw(54321),
            gid: Gid::from_raw(54321),
            home: PathBuf::from("/nonexistent"),
        };
        let metrics = root.path().join("metrics.jsonl");
        assert!(hand_over(&work, &metrics, &user, std::slice::from_ref(&linked)).unwrap());
        let owner = |path: &Path| std::fs::symlink_metadata(path).unwrap().uid();
        assert_eq!(owner(&linked), 0, "the cache's entry stays the worker's");
        for given in [&work, &input, &copied, &metrics] {
            assert_eq!(owner(given), 54321, "{}", given.display());
        }
    }

    #[test]
    fn run_as_names_an_existing_user() {
        let root = Uid::from_raw(0);
        let identity = resolve_run_as(None, root).unwrap();
        let user = identity.switch_to.expect("root switches to nobody");
        assert_eq!(user.name, "nobody");
        assert!(!user.uid.is_root());
        assert_eq!(identity.home, Some(user.home));
        let missing = resolve_run_as(Some("no-such-user-ferry"), root).unwrap_err();
        assert_eq!(missing, RunAsError::NoSuchUser("no-such-user-ferry".into()));
        assert!(
            missing
                .to_string()
                .contains("run_as = \"no-such-user-ferry\"")
        );
        // Root on request: no switch.
        assert_eq!(resolve_run_as(Some("root"), root).unwrap().switch_to, None);
        // A worker that is not root cannot switch to another user.
        let nobody = User::from_name("nobody").unwrap().unwrap().uid;
        assert_eq!(resolve_run_as(None, nobody).unwrap().switch_to, None);
        assert!(matches!(
            resolve_run_as(Some("root"), nobody),
            Err(RunAsError::NotRoot { .. })
        ));
        assert_eq!(
            resolve_run_as(Some("nobody"), nobody).unwrap().switch_to,
            None
        );
    }
}
