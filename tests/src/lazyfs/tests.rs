//! The model's rules through a real mount and real system calls.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::LazyFs;

fn mounted() -> (tempfile::TempDir, LazyFs) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fs = LazyFs::mount(dir.path()).expect("mount the lazy filesystem");
    (dir, fs)
}

fn sync_dir(path: &Path) {
    File::open(path)
        .and_then(|d| d.sync_all())
        .expect("fsync the directory");
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn unsynced_writes_are_gone_after_a_cut() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    std::fs::write(&path, b"hello").expect("write");
    assert_eq!(read(&path).as_deref(), Some(&b"hello"[..]));
    let report = fs.cut_power();
    assert_eq!(report.vanished, vec!["f".to_string()], "{report}");
    assert!(!path.exists(), "an unsynced new file survived the cut");
}

#[test]
fn a_synced_file_in_a_synced_directory_survives() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    let mut file = File::create(&path).expect("create");
    file.write_all(b"hello").expect("write");
    file.sync_all().expect("fsync");
    sync_dir(fs.path());
    file.write_all(b" world").expect("write more");
    let report = fs.cut_power();
    assert_eq!(report.reverted.len(), 1, "{report}");
    assert_eq!(read(&path).as_deref(), Some(&b"hello"[..]));
    // The handle opened before the cut is stale.
    assert!(file.write_all(b"!").is_err(), "a stale handle still wrote");
}

#[test]
fn fdatasync_makes_data_and_size_durable() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("log");
    let mut file = File::create(&path).expect("create");
    sync_dir(fs.path());
    file.write_all(&[7u8; 10_000]).expect("write");
    file.sync_data().expect("fdatasync");
    file.write_all(&[8u8; 100]).expect("unsynced tail");
    fs.cut_power();
    assert_eq!(read(&path), Some(vec![7u8; 10_000]));
}

#[test]
fn a_synced_file_whose_directory_was_not_synced_is_gone() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    let mut file = File::create(&path).expect("create");
    file.write_all(b"data").expect("write");
    file.sync_all().expect("fsync");
    fs.cut_power();
    assert!(!path.exists(), "the name was never made durable");
}

#[test]
fn a_name_synced_without_its_data_is_an_empty_file() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    std::fs::write(&path, b"data").expect("write");
    sync_dir(fs.path());
    fs.cut_power();
    assert_eq!(read(&path).as_deref(), Some(&b""[..]));
}

#[test]
fn a_rename_is_durable_only_after_the_directory_is_synced() {
    let (_dir, fs) = mounted();
    let old = fs.path().join(".f.partial");
    let new = fs.path().join("f");
    let mut file = File::create(&old).expect("create");
    file.write_all(b"v1").expect("write");
    file.sync_all().expect("fsync");
    drop(file);
    sync_dir(fs.path());
    std::fs::rename(&old, &new).expect("rename");
    fs.cut_power();
    assert!(old.exists() && !new.exists(), "an unsynced rename survived");
    std::fs::rename(&old, &new).expect("rename again");
    sync_dir(fs.path());
    fs.cut_power();
    assert!(!old.exists());
    assert_eq!(read(&new).as_deref(), Some(&b"v1"[..]));
}

#[test]
fn unlink_and_rmdir_are_undone_by_a_cut_before_the_directory_sync() {
    let (_dir, fs) = mounted();
    let sub = fs.path().join("d");
    std::fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("f");
    let mut file = File::create(&path).expect("create");
    file.write_all(b"keep").expect("write");
    file.sync_all().expect("fsync");
    sync_dir(&sub);
    sync_dir(fs.path());
    std::fs::remove_file(&path).expect("unlink");
    std::fs::remove_dir(&sub).expect("rmdir");
    fs.cut_power();
    assert_eq!(read(&path).as_deref(), Some(&b"keep"[..]));
    std::fs::remove_file(&path).expect("unlink");
    sync_dir(&sub);
    fs.cut_power();
    assert!(sub.exists() && !path.exists());
}

#[test]
fn a_directory_created_but_not_synced_in_its_parent_takes_its_synced_files_along() {
    let (_dir, fs) = mounted();
    let sub = fs.path().join("d");
    std::fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("f");
    let mut file = File::create(&path).expect("create");
    file.write_all(b"x").expect("write");
    file.sync_all().expect("fsync");
    sync_dir(&sub);
    let report = fs.cut_power();
    assert!(!sub.exists(), "{report}");
}

#[test]
fn truncation_and_set_len_follow_the_file_sync() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    let mut file = File::create(&path).expect("create");
    sync_dir(fs.path());
    file.write_all(b"0123456789").expect("write");
    file.sync_all().expect("fsync");
    file.set_len(4).expect("truncate");
    fs.cut_power();
    assert_eq!(read(&path).as_deref(), Some(&b"0123456789"[..]));
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(4).expect("truncate");
    file.sync_data().expect("fdatasync");
    fs.cut_power();
    assert_eq!(read(&path).as_deref(), Some(&b"0123"[..]));
}

#[test]
fn o_dsync_writes_are_durable_when_they_return() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    File::create(&path).expect("create");
    sync_dir(fs.path());
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(&path)
        .expect("open O_DSYNC");
    file.write_all(b"sync").expect("write");
    fs.cut_power();
    assert_eq!(read(&path).as_deref(), Some(&b"sync"[..]));
}

#[test]
fn reads_writes_and_listings_behave_like_a_filesystem() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("open");
    file.write_all(b"abcdef").expect("write");
    file.seek(SeekFrom::Start(2)).expect("seek");
    file.write_all(b"XY").expect("overwrite");
    file.seek(SeekFrom::Start(10)).expect("seek past the end");
    file.write_all(b"z").expect("write after a hole");
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.read_to_end(&mut text).expect("read");
    assert_eq!(text, b"abXYef\0\0\0\0z");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 11);
    std::fs::create_dir_all(fs.path().join("a/b/c")).expect("mkdir -p");
    let mut names: Vec<String> = std::fs::read_dir(fs.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "f"]);
    assert!(
        std::fs::remove_dir(fs.path().join("a")).is_err(),
        "rmdir of a non-empty dir"
    );
    // The kernel keeps file locks itself.
    let lock = File::open(&path).expect("open");
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("flock");
    assert!(fs.refused().is_empty(), "refused: {:?}", fs.refused());
}

#[test]
fn requests_fail_while_the_power_is_off() {
    let (_dir, fs) = mounted();
    let path = fs.path().join("f");
    std::fs::write(&path, b"x").expect("write");
    fs.power_off();
    assert!(std::fs::write(fs.path().join("g"), b"y").is_err());
    fs.power_on();
    std::fs::write(fs.path().join("g"), b"y").expect("write after power on");
}
