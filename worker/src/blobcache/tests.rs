//! The cache on a real directory, with blobs served from memory by a fetch
//! that writes and checks them as the worker's download does (the real one
//! needs a coordinator; the integration test t59 uses it).

use std::collections::HashMap;

use super::*;

/// Blobs by digest, and how many times each was fetched.
#[derive(Default)]
struct Origin {
    blobs: HashMap<String, Vec<u8>>,
    fetched: Mutex<HashMap<String, usize>>,
}

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("no such blob")]
    Missing,
}

impl Origin {
    fn with(contents: &[&[u8]]) -> (Origin, Vec<String>) {
        let mut origin = Origin::default();
        let digests = contents
            .iter()
            .map(|content| {
                let digest = blake3::hash(content).to_hex().to_string();
                origin.blobs.insert(digest.clone(), content.to_vec());
                digest
            })
            .collect();
        (origin, digests)
    }

    async fn fetch(&self, digest: &str, path: PathBuf) -> Result<(), TestError> {
        *lock(&self.fetched, "test")
            .entry(digest.to_string())
            .or_default() += 1;
        let content = self.blobs.get(digest).ok_or(TestError::Missing)?;
        assert_eq!(blake3::hash(content).to_hex().as_str(), digest);
        tokio::fs::write(&path, content).await.unwrap();
        Ok(())
    }

    fn fetches(&self, digest: &str) -> usize {
        lock(&self.fetched, "test")
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    async fn get(&self, cache: &Arc<BlobCache>, digest: &str) -> Lease {
        cache
            .get(digest, |path| self.fetch(digest, path))
            .await
            .unwrap()
    }
}

fn files_under(dir: &Path) -> (usize, u64) {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .fold((0, 0), |(n, total), size| (n + 1, total + size))
}

#[tokio::test]
async fn a_blob_is_downloaded_once_then_served_from_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(root.path(), 1 << 20).unwrap();
    let (origin, digests) = Origin::with(&[b"model weights"]);
    let digest = &digests[0];

    let first = origin.get(&cache, digest).await;
    assert_eq!(first.source(), Source::Downloaded);
    assert_eq!(first.path(), cache.entry_path(digest));
    assert_eq!(first.size(), 13);
    drop(first);
    let second = origin.get(&cache, digest).await;
    assert_eq!(second.source(), Source::Cache);
    assert_eq!(std::fs::read(second.path()).unwrap(), b"model weights");
    assert_eq!(origin.fetches(digest), 1);
    let meta = std::fs::metadata(second.path()).unwrap();
    assert_eq!(meta.mode() & 0o7777, ENTRY_MODE);
    assert_eq!(
        std::fs::metadata(root.path()).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        cache.stats(),
        CacheStats {
            hits: 1,
            downloads: 1,
            ..CacheStats::default()
        }
    );
    // Nothing is left in `incoming/`.
    assert_eq!(files_under(&root.path().join("incoming")).0, 0);
}

#[tokio::test]
async fn attempts_asking_for_the_same_blob_at_once_download_it_once() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(root.path(), 1 << 20).unwrap();
    let (origin, digests) = Origin::with(&[b"shared input"]);
    let (origin, digest) = (&origin, digests[0].as_str());
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Mutex::new(Some(released));
    let slow_fetch = |path: PathBuf| {
        let wait = lock(&released, "test").take().expect("fetched once");
        async move {
            wait.await.unwrap();
            origin.fetch(digest, path).await
        }
    };
    // The first holds the digest's turn until released; the second waits for
    // it and then finds the entry.
    let (first, second, ()) = tokio::join!(
        cache.get(digest, slow_fetch),
        cache.get(digest, |path| origin.fetch(digest, path)),
        async {
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        }
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.source(), Source::Downloaded);
    assert_eq!(second.source(), Source::Cache);
    assert_eq!(origin.fetches(digest), 1);
    drop((first, second));
    assert!(
        lock(&cache.turns, "test").is_empty(),
        "turns are cleaned up"
    );
}

#[tokio::test]
async fn the_least_recently_used_blob_is_evicted_at_the_bound() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(root.path(), 100).unwrap();
    let (origin, d) = Origin::with(&[&[1; 40], &[2; 40], &[3; 40]]);
    drop(origin.get(&cache, &d[0]).await);
    drop(origin.get(&cache, &d[1]).await);
    // `d[0]` used again: `d[1]` is now the oldest.
    drop(origin.get(&cache, &d[0]).await);
    drop(origin.get(&cache, &d[2]).await);
    assert!(!cache.entry_path(&d[1]).exists(), "the oldest is gone");
    assert!(cache.entry_path(&d[0]).exists() && cache.entry_path(&d[2]).exists());
    let (files, bytes) = files_under(&root.path().join("blobs"));
    assert_eq!((files, bytes), (2, 80));
    assert_eq!(cache.total_bytes(), 80);
    // Evicted, so downloaded again.
    let again = origin.get(&cache, &d[1]).await;
    assert_eq!(again.source(), Source::Downloaded);
    assert_eq!(origin.fetches(&d[1]), 2);
    assert_eq!(cache.stats().evictions, 2);
    assert!(files_under(&root.path().join("blobs")).1 <= 100);
}

#[tokio::test]
async fn a_held_blob_is_not_evicted_and_what_does_not_fit_is_used_once() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(root.path(), 100).unwrap();
    let (origin, d) = Origin::with(&[&[1; 60], &[2; 60], &[3; 200]]);
    let held = origin.get(&cache, &d[0]).await;
    // No room while the first is held: the second is a private download.
    let private = origin.get(&cache, &d[1]).await;
    assert_eq!(private.source(), Source::Downloaded);
    assert_ne!(private.path(), cache.entry_path(&d[1]));
    assert!(cache.entry_path(&d[0]).exists());
    assert_eq!(std::fs::read(private.path()).unwrap(), [2; 60]);
    let private_path = private.path().to_path_buf();
    drop(private);
    assert!(
        !private_path.exists(),
        "a private download goes with its lease"
    );
    // Larger than the bound: never kept, and nothing is evicted for it.
    drop(held);
    let huge = origin.get(&cache, &d[2]).await;
    assert_ne!(huge.path(), cache.entry_path(&d[2]));
    drop(huge);
    assert!(cache.entry_path(&d[0]).exists());
    assert_eq!(files_under(&root.path().join("incoming")).0, 0);
}

#[tokio::test]
async fn a_failed_fetch_leaves_nothing_and_a_bad_digest_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(root.path(), 100).unwrap();
    let origin = Origin::default();
    let absent = blake3::hash(b"absent").to_hex().to_string();
    let failed = cache
        .get(&absent, |path| async {
            std::fs::write(&path, b"half").unwrap();
            origin.fetch(&absent, path).await
        })
        .await;
    assert!(matches!(failed, Err(TestError::Missing)));
    assert_eq!(files_under(&root.path().join("incoming")).0, 0);
    assert_eq!(files_under(&root.path().join("blobs")).0, 0);
    for bad in ["../../etc/passwd", "ABCDEF", &"A".repeat(64), ""] {
        let refused = cache
            .get(bad, |path| origin.fetch(bad, path))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, TestError::Cache(CacheError::BadDigest { .. })),
            "{bad}"
        );
    }
    assert!(origin.fetched.lock().unwrap().values().all(|n| *n <= 1));
}

#[tokio::test]
async fn a_damaged_entry_is_removed_and_fetched_again() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(root.path(), 1 << 20).unwrap();
    let (origin, d) = Origin::with(&[b"0123456789", b"abcdefghij"]);
    drop(origin.get(&cache, &d[0]).await);
    drop(origin.get(&cache, &d[1]).await);
    let make_writable = |path: &Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap()
    };
    // Truncated: the size tells.
    let truncated = cache.entry_path(&d[0]);
    make_writable(&truncated);
    std::fs::write(&truncated, b"01234").unwrap();
    // Same size, other bytes: the changed mode and time make it hashed again.
    let rewritten = cache.entry_path(&d[1]);
    make_writable(&rewritten);
    std::fs::write(&rewritten, b"ABCDEFGHIJ").unwrap();
    for (digest, content) in [(&d[0], &b"0123456789"[..]), (&d[1], b"abcdefghij")] {
        let lease = origin.get(&cache, digest).await;
        assert_eq!(lease.source(), Source::Downloaded, "fetched again");
        assert_eq!(std::fs::read(lease.path()).unwrap(), content);
        assert_eq!(origin.fetches(digest), 2);
    }
    assert_eq!(cache.stats().damaged, 2);
}

#[tokio::test]
async fn a_restart_keeps_the_entries_in_their_order_of_use_and_hashes_each_at_first_use() {
    let root = tempfile::tempdir().unwrap();
    let (origin, d) = Origin::with(&[&[1; 40], &[2; 40], &[3; 40]]);
    {
        let cache = BlobCache::open(root.path(), 1 << 20).unwrap();
        for digest in &d {
            drop(origin.get(&cache, digest).await);
        }
        // `d[0]` is used last; its use is recorded as its modification time.
        let before = SystemTime::now();
        drop(origin.get(&cache, &d[0]).await);
        let used = std::fs::metadata(cache.entry_path(&d[0]))
            .unwrap()
            .modified()
            .unwrap();
        assert!(used >= before);
        // `d[1]` is made clearly the oldest, `d[2]` is damaged (same size and
        // mode, its time kept), as a crash or the disk might leave it.
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let set_time = |path: &Path, time| {
            std::fs::File::open(path)
                .unwrap()
                .set_modified(time)
                .unwrap()
        };
        set_time(&cache.entry_path(&d[1]), old);
        let damaged = cache.entry_path(&d[2]);
        let time = std::fs::metadata(&damaged).unwrap().modified().unwrap();
        std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&damaged, [9; 40]).unwrap();
        std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(ENTRY_MODE)).unwrap();
        set_time(&damaged, time);
    }
    // Leftovers of a crashed run: a partial download, a stray file.
    std::fs::write(root.path().join("incoming").join("x.partial"), b"x").unwrap();
    std::fs::write(root.path().join("blobs").join("not-a-digest"), b"x").unwrap();
    // Reopened with room for two: the oldest by use goes.
    let cache = BlobCache::open(root.path(), 80).unwrap();
    assert!(!cache.entry_path(&d[1]).exists());
    assert_eq!(files_under(&root.path().join("incoming")).0, 0);
    assert!(!root.path().join("blobs/not-a-digest").exists());
    assert_eq!(cache.total_bytes(), 80);
    let kept = origin.get(&cache, &d[0]).await;
    assert_eq!(kept.source(), Source::Cache);
    let refetched = origin.get(&cache, &d[2]).await;
    assert_eq!(
        refetched.source(),
        Source::Downloaded,
        "damaged: fetched again"
    );
    assert_eq!(std::fs::read(refetched.path()).unwrap(), [3; 40]);
    assert_eq!(cache.stats().damaged, 1);
    drop((kept, refetched));
    // Off: everything goes at start, and nothing is kept.
    let off = BlobCache::open(root.path(), 0).unwrap();
    assert_eq!(files_under(&root.path().join("blobs")).0, 0);
    let once = origin.get(&off, &d[0]).await;
    assert_eq!(once.source(), Source::Downloaded);
    drop(once);
    assert_eq!(files_under(&root.path().join("blobs")).0, 0);
}

#[tokio::test]
async fn a_copy_placed_in_a_work_directory_cannot_change_the_entry() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(&root.path().join("cache"), 1 << 20).unwrap();
    let (origin, d) = Origin::with(&[b"training data\n"]);
    let work = root.path().join("work/inputs/data");
    let dest = work.join("data.csv");
    let placed = origin.get(&cache, &d[0]).await.place(&dest, false).unwrap();
    assert_eq!(placed, Placement::Copied);
    let (entry, copy) = (
        std::fs::metadata(cache.entry_path(&d[0])).unwrap(),
        std::fs::metadata(&dest).unwrap(),
    );
    assert_ne!(entry.ino(), copy.ino());
    // The step owns its copy and may do anything to it.
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&dest, b"changed by the step").unwrap();
    let again = origin.get(&cache, &d[0]).await;
    assert_eq!(again.source(), Source::Cache);
    assert_eq!(std::fs::read(again.path()).unwrap(), b"training data\n");
    // Placing again replaces the step's file whole.
    assert_eq!(again.place(&dest, false).unwrap(), Placement::Copied);
    assert_eq!(std::fs::read(&dest).unwrap(), b"training data\n");
}

#[tokio::test]
async fn a_hard_link_shares_the_read_only_entry_and_survives_its_eviction() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(&root.path().join("cache"), 20).unwrap();
    let (origin, d) = Origin::with(&[&[7; 20], &[8; 20]]);
    let dest = root.path().join("work/inputs/w/weights.bin");
    let placed = origin.get(&cache, &d[0]).await.place(&dest, true).unwrap();
    assert_eq!(placed, Placement::HardLinked);
    let (entry, link) = (
        std::fs::metadata(cache.entry_path(&d[0])).unwrap(),
        std::fs::metadata(&dest).unwrap(),
    );
    assert_eq!(entry.ino(), link.ino());
    assert_eq!(link.mode() & 0o7777, ENTRY_MODE);
    assert_eq!(link.uid(), nix::unistd::geteuid().as_raw());
    // Evicted while linked: the work directory keeps its file.
    drop(origin.get(&cache, &d[1]).await);
    assert!(!cache.entry_path(&d[0]).exists());
    assert_eq!(std::fs::read(&dest).unwrap(), [7; 20]);
    // A blob the cache did not keep is moved into place.
    let cache = BlobCache::open(&root.path().join("cache"), 0).unwrap();
    let moved = origin.get(&cache, &d[0]).await.place(&dest, true).unwrap();
    assert_eq!(moved, Placement::Moved);
    assert_eq!(std::fs::read(&dest).unwrap(), [7; 20]);
    assert_eq!(files_under(&root.path().join("cache/incoming")).0, 0);
}

#[tokio::test]
async fn a_discarded_entry_is_removed_while_other_holders_keep_theirs() {
    let root = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(root.path(), 1 << 20).unwrap();
    let (origin, d) = Origin::with(&[b"a bundle"]);
    let first = origin.get(&cache, &d[0]).await;
    let second = origin.get(&cache, &d[0]).await;
    first.discard();
    assert!(!cache.entry_path(&d[0]).exists());
    assert_eq!(cache.total_bytes(), 0);
    drop(second);
    let again = origin.get(&cache, &d[0]).await;
    assert_eq!(again.source(), Source::Downloaded);
    assert_eq!(origin.fetches(&d[0]), 2);
}
