//! Making names durable, and keeping data private. A file's fsync makes its data
//! and size durable, not the directory entry that names it: a file or directory
//! just created (or renamed) can vanish in a power cut until the directory
//! holding it is fsynced too. Directories made here are 0700 and files made with
//! [`private_file`] 0600: a daemon's data (state, snapshots, blobs, the Raft log)
//! is readable by its own user only; [`tighten_tree`] brings a directory made
//! before that rule down to the same modes.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of the directories a daemon keeps its data in.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files a daemon keeps its data in.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Options that create a file readable and writable by its owner only (0600; a
/// file that exists keeps its mode: see [`tighten_tree`]).
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE_MODE);
    }
    options
}

/// Takes group and other permissions away from `root` and everything below it
/// (a 0755 directory becomes 0700, a 0644 file 0600; symbolic links are not
/// followed) and
/// returns how many entries it changed. A daemon calls it at start on its data
/// directory, which an older version created with looser modes.
pub fn tighten_tree(root: &Path) -> io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut changed = 0;
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let metadata = std::fs::symlink_metadata(&path)?;
            let file_type = metadata.file_type();
            if !file_type.is_dir() && !file_type.is_file() {
                continue;
            }
            // The owner's bits stay (a 0644 file becomes 0600, a 0755
            // directory 0700); group and other lose theirs.
            let mode = metadata.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))?;
                changed += 1;
            }
            if file_type.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    pending.push(entry?.path());
                }
            }
        }
        Ok(changed)
    }
    #[cfg(not(unix))]
    {
        let _ = root;
        Ok(0)
    }
}

/// Fsyncs a directory, making the names in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing ancestors (0700), each made durable: after each
/// is created, the directory holding it is fsynced.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR_MODE);
    }
    builder.create(dir)?;
    for created in missing.iter().rev() {
        let parent = created.parent().unwrap_or(Path::new("."));
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_accepts_an_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        sync_dir(&deep).unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_dir_all(&file.join("below")).is_err());
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn new_directories_and_private_files_are_the_owners_only() {
        use std::io::Write as _;
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b");
        create_dir_all(&deep).unwrap();
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        let file = deep.join("f");
        private_file()
            .write(true)
            .create_new(true)
            .open(&file)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn tightening_takes_group_and_other_away_everywhere_below() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let inner = dir.join("blobs/ab");
        std::fs::create_dir_all(&inner).unwrap();
        let file = inner.join("blob");
        std::fs::write(&file, b"x").unwrap();
        let script = dir.join("run.sh");
        std::fs::write(&script, b"x").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        for path in [&dir, &dir.join("blobs"), &inner] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).unwrap();
        assert_eq!(tighten_tree(&dir).unwrap(), 5);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&inner), 0o700);
        assert_eq!(mode(&file), 0o600);
        // An owner's execute bit stays on a file: only group and other go.
        assert_eq!(mode(&script), 0o700);
        // Already tight: nothing to change.
        assert_eq!(tighten_tree(&dir).unwrap(), 0);
    }
}
