//! Where the workspace's built binaries are, and the refusal to run one that is
//! older than the sources it is built from (a test of stale binaries tests
//! yesterday's code and passes or fails for the wrong reason).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// A source's modification time and path.
type Stamped = (SystemTime, PathBuf);

/// The workspace folders whose sources the daemons and the CLI are built from.
const SOURCE_DIRS: [&str; 5] = ["common", "coordinator", "worker", "client", "proto"];

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/integration-xxxx → target/debug; target/release/ferry-bench
    // → target/release.
    let dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().expect("target directory").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The path of the built binary `name`, once it is known to exist and to be no
/// older than its sources (checked once per binary and process).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first ({})",
        path.display(),
        build_command()
    );
    if let Err(message) = checked_fresh(name, &path) {
        panic!("{message}");
    }
    path
}

/// The command that builds the binaries of this profile.
fn build_command() -> &'static str {
    if bin_dir().file_name().is_some_and(|name| name == "release") {
        "cargo build --release --workspace"
    } else {
        "cargo build --workspace"
    }
}

/// [`fresh`], remembered per binary: the tests run `ferry` hundreds of times.
fn checked_fresh(name: &str, path: &Path) -> Result<(), String> {
    static CHECKED: OnceLock<Mutex<BTreeMap<String, Result<(), String>>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| Mutex::new(BTreeMap::new()));
    // A panic elsewhere while the map was locked cannot have left it half written.
    let mut checked = checked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    checked
        .entry(name.to_string())
        .or_insert_with(|| fresh(path, &crate::workspace_root()))
        .clone()
}

/// Whether the binary at `path` is at least as new as every source it is built
/// from: `*.rs`, `Cargo.toml` and `*.proto` files under the folders of the
/// workspace at `root` it depends on, plus `Cargo.lock` and the root `Cargo.toml`.
///
/// A source newer than the binary does not always mean the binary is stale:
/// cargo does not relink a binary for a change that does not concern it (a
/// dependency another crate added to `Cargo.lock`, a comment in a manifest). So
/// the binary's dep-info file next to it (`ferry-coordinator.d`), which cargo
/// rewrites every time it builds or finds the binary up to date, counts too: a
/// source older than that file has been seen by cargo, which judged the binary
/// current. Without this, such a change would make the check refuse for good,
/// however often the workspace were built.
fn fresh(path: &Path, root: &Path) -> Result<(), String> {
    let built = modified(path).ok_or_else(|| format!("cannot read {}", path.display()))?;
    let dep_info = path.with_extension("d");
    let seen_by_cargo = modified(&dep_info).map_or(built, |time| time.max(built));
    let mut sources = vec![root.join("Cargo.lock"), root.join("Cargo.toml")];
    sources.extend(
        source_dirs_of(&dep_info, root)
            .into_iter()
            .map(|dir| root.join(dir)),
    );
    let Some((newest, file)) = sources.iter().filter_map(|p| newest_source(p)).max() else {
        return Ok(());
    };
    if newest <= seen_by_cargo {
        return Ok(());
    }
    let newer_by = newest
        .duration_since(built)
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .unwrap_or_default();
    Err(format!(
        "{} is older than its sources: {} was modified {newer_by} after it was built. \
         Run `{}` before the tests, so that they run the code you see.",
        path.display(),
        file.display(),
        build_command()
    ))
}

/// The workspace folders a binary is built from, read from its dep-info file
/// (the sources rustc read, by absolute path); every folder if that file cannot
/// be read or does not name this workspace (a binary built in another checkout).
fn source_dirs_of(dep_info: &Path, root: &Path) -> Vec<&'static str> {
    let root = format!("{}/", root.display());
    let Ok(text) = std::fs::read_to_string(dep_info) else {
        return SOURCE_DIRS.to_vec();
    };
    if !text.contains(&root) {
        return SOURCE_DIRS.to_vec();
    }
    SOURCE_DIRS
        .into_iter()
        .filter(|dir| {
            // The protos are read through `common/../proto/`.
            text.contains(&format!("{root}{dir}/")) || text.contains(&format!("/../{dir}/"))
        })
        .collect()
}

/// The newest modification time of the sources at or under `path` (a file or a
/// folder) and the file that has it: `*.rs`, `*.proto` and `Cargo.toml`, skipping
/// build output and hidden folders. Each folder is walked once per process.
fn newest_source(path: &Path) -> Option<Stamped> {
    static WALKED: OnceLock<Mutex<BTreeMap<PathBuf, Option<Stamped>>>> = OnceLock::new();
    if path.is_file() {
        return modified(path).map(|time| (time, path.to_path_buf()));
    }
    let walked = WALKED.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut walked = walked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    walked
        .entry(path.to_path_buf())
        .or_insert_with(|| {
            let mut newest = None;
            walk_sources(path, &mut newest);
            newest
        })
        .clone()
}

fn walk_sources(dir: &Path, newest: &mut Option<Stamped>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !name.starts_with('.') && name != "target" {
                walk_sources(&path, newest);
            }
        } else if (name.ends_with(".rs") || name.ends_with(".proto") || name == "Cargo.toml")
            && let Some(time) = modified(&path)
            && newest.as_ref().is_none_or(|(top, _)| time > *top)
        {
            *newest = Some((time, path));
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write_at(path: &Path, text: &str, time: SystemTime) {
        std::fs::create_dir_all(path.parent().expect("a parent folder")).expect("folder");
        std::fs::write(path, text).expect("write");
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(time))
            .expect("set the modification time");
    }

    /// A workspace whose sources were all written at `sources`, with a binary
    /// built from `common/` and `coordinator/` at `built` and its dep-info at
    /// `seen`; returns (the workspace, the binary).
    fn workspace(
        sources: SystemTime,
        built: SystemTime,
        seen: SystemTime,
    ) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let at = |relative: &str| root.path().join(relative);
        for file in [
            "Cargo.lock",
            "Cargo.toml",
            "common/Cargo.toml",
            "common/src/lib.rs",
            "coordinator/src/main.rs",
            "worker/src/main.rs",
            "proto/ferry/v1/ferry.proto",
        ] {
            write_at(&at(file), "", sources);
        }
        let binary = at("target/debug/ferry-coordinator");
        write_at(&binary, "", built);
        let dep_info = format!(
            "{0}: {1}/common/src/lib.rs {1}/common/../proto/ferry/v1/ferry.proto {1}/coordinator/src/main.rs\n",
            binary.display(),
            root.path().display()
        );
        write_at(&binary.with_extension("d"), &dep_info, seen);
        (root, binary)
    }

    fn later(time: SystemTime, seconds: u64) -> SystemTime {
        time + Duration::from_secs(seconds)
    }

    #[test]
    fn a_binary_built_after_its_sources_is_fresh() {
        let t = SystemTime::now() - Duration::from_secs(3600);
        let (root, binary) = workspace(t, later(t, 10), later(t, 10));
        assert_eq!(fresh(&binary, root.path()), Ok(()));
    }

    #[test]
    fn a_source_changed_after_the_build_is_named() {
        let t = SystemTime::now() - Duration::from_secs(3600);
        let (root, binary) = workspace(t, later(t, 10), later(t, 10));
        let changed = root.path().join("coordinator/src/main.rs");
        write_at(&changed, "fn main() {}", later(t, 20));
        let message = fresh(&binary, root.path()).expect_err("stale");
        assert!(
            message.contains(&binary.display().to_string())
                && message.contains(&changed.display().to_string())
                && message.contains("cargo build --workspace"),
            "{message}"
        );
    }

    #[test]
    fn a_change_to_a_crate_the_binary_does_not_use_does_not_count() {
        let t = SystemTime::now() - Duration::from_secs(3600);
        let (root, binary) = workspace(t, later(t, 10), later(t, 10));
        write_at(&root.path().join("worker/src/main.rs"), "", later(t, 20));
        assert_eq!(fresh(&binary, root.path()), Ok(()));
    }

    #[test]
    fn a_change_cargo_has_seen_and_judged_irrelevant_does_not_count() {
        let t = SystemTime::now() - Duration::from_secs(3600);
        // Cargo.lock changed after the link; cargo ran since and kept the binary.
        let (root, binary) = workspace(t, later(t, 10), later(t, 30));
        write_at(&root.path().join("Cargo.lock"), "", later(t, 20));
        assert_eq!(fresh(&binary, root.path()), Ok(()));
    }

    #[test]
    fn dep_info_of_another_checkout_makes_every_folder_count() {
        let t = SystemTime::now() - Duration::from_secs(3600);
        let (root, binary) = workspace(t, later(t, 10), later(t, 10));
        let elsewhere = "ferry-coordinator: /elsewhere/coordinator/src/main.rs\n";
        write_at(&binary.with_extension("d"), elsewhere, later(t, 10));
        write_at(&root.path().join("worker/src/main.rs"), "", later(t, 20));
        assert!(fresh(&binary, root.path()).is_err());
    }

    #[test]
    fn without_dep_info_every_folder_counts() {
        let t = SystemTime::now() - Duration::from_secs(3600);
        let (root, binary) = workspace(t, later(t, 10), later(t, 10));
        std::fs::remove_file(binary.with_extension("d")).expect("remove the dep-info");
        write_at(&root.path().join("worker/src/main.rs"), "", later(t, 20));
        assert!(fresh(&binary, root.path()).is_err());
    }
}
