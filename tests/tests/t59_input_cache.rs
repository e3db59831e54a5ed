//! The worker's cache of inputs and bundles (issue 18, item 1): a pipeline
//! run again with `--no-cache` gets its input from the worker's cache, not a
//! second download, as a hard link to the cache's read-only entry that the
//! step (running as `nobody`) can neither write nor make writable; the cache
//! outlives a restart of the worker, and an entry damaged on disk meanwhile is
//! downloaded again before a step sees it; a small
//! `[cache] max_bytes` evicts the least recently used entries, the evicted
//! input is downloaded again, the cache's files stay within the bound, and a
//! step that overwrites its copy of an input changes nothing for the next run.
//!
//! The evidence is the worker's own: the `staged` line each attempt logs (how
//! many inputs came from the cache, how many were downloaded), and the cache's
//! files on disk (their names, sizes, inodes and contents).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::{Cluster, step_of, write_pipeline};

/// `text` without terminal colour codes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The fields of the `staged` line that worker `worker` logged for step
/// `step` of run `run` (its first attempt).
fn staged(cluster: &Cluster, worker: &str, run: u64, step: &str) -> Staged {
    let log = plain(&cluster.worker_log(worker));
    let span = format!("attempt{{run={run} step={step} attempt=1}}");
    let line = log
        .lines()
        .find(|line| line.contains(&span) && line.contains(" staged "))
        .unwrap_or_else(|| panic!("no staged line for run {run} step {step} in:\n{log}"));
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|token| token.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .trim_matches('"')
            .to_string()
    };
    let number = |name: &str| field(name).parse::<u64>().expect("a number");
    Staged {
        from_cache: number("inputs_from_cache"),
        downloaded: number("inputs_downloaded"),
        hard_linked: number("hard_linked"),
        bundle: field("bundle"),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Staged {
    from_cache: u64,
    downloaded: u64,
    hard_linked: u64,
    bundle: String,
}

/// The cache's entries: file name and size each.
fn entries(blobs: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(blobs)
        .expect("the cache's directory")
        .map(|entry| {
            let entry = entry.expect("entry");
            let size = entry.metadata().expect("metadata").len();
            (entry.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    found.sort();
    found
}

/// Checks that every entry's content hashes to its name.
fn assert_entries_intact(blobs: &Path) {
    for (name, _) in entries(blobs) {
        let content = std::fs::read(blobs.join(&name)).expect("entry");
        assert_eq!(
            blake3::hash(&content).to_hex().as_str(),
            name,
            "entry {name} was changed"
        );
    }
}

fn artifact(cluster: &Cluster, run: u64, step: &str, file: &str) -> String {
    let target = cluster.path(&format!("{step}-{run}-{file}"));
    let got = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        step,
        file,
        "-o",
        target.to_str().expect("utf-8 path"),
    ]);
    assert!(got.success(), "{got:?}");
    std::fs::read_to_string(&target).expect("downloaded artifact")
}

fn run_to_success(cluster: &Cluster, pipeline: &Path, extra: &[&str]) -> u64 {
    let run = cluster.submit(pipeline, extra);
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    run
}

#[test]
fn a_second_run_links_its_input_from_the_cache_and_its_step_cannot_change_it() {
    let worker = "t59-link";
    let mut cluster = Cluster::start();
    // Every folder above the data directory must let `nobody` pass.
    std::fs::set_permissions(cluster.root.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod");
    let config = "cpus = 2\nmemory = \"2Gi\"\nrun_as = \"nobody\"\n";
    cluster.add_worker(worker, config);
    let data: String = (1..=20_000).map(|i| format!("{i}\n")).collect();
    let digest = blake3::hash(data.as_bytes()).to_hex().to_string();
    let pipeline = write_pipeline(
        &cluster.path("link"),
        r#"name: link
steps:
  - name: make
    shell: "seq 1 20000 > data.txt"
    outputs: [data.txt]
  - name: use
    inputs: {d: make/data.txt}
    shell: |
      stat -c '%i %u %a' "$FERRY_INPUT_D" > seen.txt
      if (echo tampered >> "$FERRY_INPUT_D") 2>/dev/null; then echo appended >> seen.txt; fi
      if chmod u+w "$FERRY_INPUT_D" 2>/dev/null; then echo made-writable >> seen.txt; fi
      if truncate -s 0 "$FERRY_INPUT_D" 2>/dev/null; then echo truncated >> seen.txt; fi
      if touch -d 2001-01-01 "$FERRY_INPUT_D" 2>/dev/null; then echo touched >> seen.txt; fi
      if seq 1 20000 | cmp -s - "$FERRY_INPUT_D"; then echo same >> seen.txt; fi
      wc -c < "$FERRY_INPUT_D" >> seen.txt
    outputs: [seen.txt]
"#,
        &[],
    );
    let blobs = cluster.path(&format!("{worker}-data/cache/blobs"));

    let first = run_to_success(&cluster, &pipeline, &[]);
    let staged_first = staged(&cluster, worker, first, "use");
    assert_eq!(
        (staged_first.from_cache, staged_first.downloaded),
        (0, 1),
        "{staged_first:?}"
    );
    let entry = blobs.join(&digest);
    let inode = std::fs::metadata(&entry).expect("the input's entry").ino();

    // Every step runs again; the input is the same blob.
    let second = run_to_success(&cluster, &pipeline, &["--no-cache"]);
    let status = cluster.status(second);
    assert_eq!(step_of(&status, "use")["reused"], serde_json::Value::Null);
    let staged_second = staged(&cluster, worker, second, "use");
    assert_eq!(
        staged_second,
        Staged {
            from_cache: 1,
            downloaded: 0,
            hard_linked: 1,
            bundle: "cache".to_string(),
        }
    );
    // Not downloaded again: the same file, never replaced.
    let meta = std::fs::metadata(&entry).expect("the input's entry");
    assert_eq!(meta.ino(), inode);
    assert_eq!(meta.mode() & 0o7777, 0o444);
    assert_eq!(meta.uid(), 0, "the worker's (root's) file");

    // What the step saw, twice: the entry itself (same inode), the worker's
    // and read-only; every attempt to change it failed.
    for run in [first, second] {
        let seen = artifact(&cluster, run, "use", "seen.txt");
        assert_eq!(
            seen,
            format!("{inode} 0 444\nsame\n{}\n", data.len()),
            "run {run}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&entry).expect("entry"),
        data,
        "the entry is intact"
    );
    assert_entries_intact(&blobs);

    // The disk damages the entry while the worker is down: same size, same
    // mode, its modification time kept. After the restart the cache is still
    // used (the bundle), and the damaged input is found, removed and
    // downloaded again before any step sees it.
    cluster.terminate_worker(worker);
    let time = meta.modified().expect("modification time");
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&entry, data.replacen("1\n", "9\n", 1)).expect("damage the entry");
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    std::fs::File::open(&entry)
        .and_then(|file| file.set_modified(time))
        .expect("set the time back");
    cluster.add_worker(worker, config);
    let third = run_to_success(&cluster, &pipeline, &["--no-cache"]);
    assert_eq!(staged(&cluster, worker, third, "make").bundle, "cache");
    let staged_third = staged(&cluster, worker, third, "use");
    assert_eq!(
        (staged_third.from_cache, staged_third.downloaded),
        (0, 1),
        "{staged_third:?}"
    );
    assert!(
        plain(&cluster.worker_log(worker)).contains("a damaged blob cache entry was removed"),
        "the damage is logged"
    );
    let renewed = std::fs::metadata(&entry).expect("the input's entry").ino();
    assert_eq!(
        artifact(&cluster, third, "use", "seen.txt"),
        format!("{renewed} 0 444\nsame\n{}\n", data.len())
    );
    assert_entries_intact(&blobs);
}

/// A pipeline whose `make` step writes 60,000 bytes of `letter` and whose
/// `use` step records its input's size and first byte, then overwrites it.
fn letter_pipeline(cluster: &Cluster, letter: char) -> PathBuf {
    write_pipeline(
        &cluster.path(&format!("evict-{letter}")),
        &format!(
            r#"name: evict-{letter}
steps:
  - name: make
    shell: "head -c 60000 /dev/zero | tr '\\0' {letter} > blob.txt"
    outputs: [blob.txt]
  - name: use
    inputs: {{b: make/blob.txt}}
    shell: |
      echo "$(wc -c < "$FERRY_INPUT_B") $(head -c 1 "$FERRY_INPUT_B")" > seen.txt
      chmod u+w "$FERRY_INPUT_B" && echo overwritten > "$FERRY_INPUT_B"
    outputs: [seen.txt]
"#
        ),
        &[],
    )
}

#[test]
fn entries_are_evicted_at_the_bound_and_an_evicted_input_is_downloaded_again() {
    const BOUND: u64 = 150_000;
    let worker = "t59-evict";
    let mut cluster = Cluster::start();
    // Steps run as root here (the harness's default): copies, never links.
    cluster.add_worker(
        worker,
        &format!("cpus = 2\nmemory = \"2Gi\"\n[cache]\nmax_bytes = {BOUND}\n"),
    );
    let blobs = cluster.path(&format!("{worker}-data/cache/blobs"));
    let digest_of = |letter: char| {
        blake3::hash(&vec![letter as u8; 60_000])
            .to_hex()
            .to_string()
    };
    let (x, y, z) = (digest_of('x'), digest_of('y'), digest_of('z'));
    let present = |digest: &str| entries(&blobs).iter().any(|(name, _)| name == digest);
    let total = || entries(&blobs).iter().map(|(_, size)| size).sum::<u64>();
    let use_run = |letter: char, extra: &[&str]| {
        let run = run_to_success(&cluster, &letter_pipeline(&cluster, letter), extra);
        assert_eq!(
            artifact(&cluster, run, "use", "seen.txt"),
            format!("60000 {letter}\n"),
            "run {run} saw its input whole"
        );
        assert!(total() <= BOUND, "{:?} over {BOUND}", entries(&blobs));
        (run, staged(&cluster, worker, run, "use"))
    };

    // Two inputs and their bundles fit.
    for letter in ['x', 'y'] {
        let (_, staged) = use_run(letter, &[]);
        assert_eq!((staged.from_cache, staged.downloaded), (0, 1), "{staged:?}");
        assert_eq!(staged.hard_linked, 0, "a root step gets copies");
    }
    assert!(present(&x) && present(&y));
    // A third does not: the least recently used input, `x`, goes.
    use_run('z', &[]);
    assert!(!present(&x), "{:?}", entries(&blobs));
    assert!(present(&y) && present(&z));
    // `x` again: downloaded again, and `y` (now the oldest) goes for it.
    let (_, staged) = use_run('x', &["--no-cache"]);
    assert_eq!((staged.from_cache, staged.downloaded), (0, 1), "{staged:?}");
    assert!(present(&x) && present(&z) && !present(&y));
    // `z` again: from the cache, whole, though the step of its earlier run
    // overwrote its copy.
    let (_, staged) = use_run('z', &["--no-cache"]);
    assert_eq!((staged.from_cache, staged.downloaded), (1, 0), "{staged:?}");
    assert_entries_intact(&blobs);
    let log = plain(&cluster.worker_log(worker));
    assert!(
        log.contains("blob evicted from the cache"),
        "evictions are logged"
    );
}
