//! Bundles and work directories under hostile input, and stopping with work in
//! flight: a bundle that unpacks past the worker's limit fails its attempt and
//! leaves nothing on disk; the coordinator refuses a bundle announced over the
//! CLI's limit before any byte arrives, and bytes that are not a bundle; a step
//! that rewrites its pooled work directory after its attempt ended cannot show
//! the change to a later run; staging a large bundle does not hold it in the
//! worker's memory; and a worker asked to stop while a cancelled attempt's
//! uploads cannot complete exits within seconds.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_common::bundle::MAX_BUNDLE_BYTES;
use ferry_common::proto::{self, control_client::ControlClient};
use ferry_tests::uploads::{control, runtime, upload_bundle};
use ferry_tests::{
    Cluster, kill_processes_with_marker, marker, process_with_marker_exists, step_of, wait_for,
    write_pipeline,
};
use tonic::transport::Channel;

async fn stored(client: &mut ControlClient<Channel>, digest: &str, size: u64) -> bool {
    client
        .has_blob(proto::BlobRef {
            digest: digest.to_string(),
            size,
        })
        .await
        .expect("has_blob")
        .into_inner()
        .present
}

/// Every file under the cluster's blob store whose name is `digest`.
fn blob_files(cluster: &Cluster, digest: &str) -> usize {
    let mut found = 0;
    let mut pending = vec![cluster.root.path().to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().contains(digest) {
                found += 1;
            }
        }
    }
    found
}

/// What is left in worker `name`'s work-directory root.
fn work_dir_entries(cluster: &Cluster, name: &str) -> Vec<String> {
    std::fs::read_dir(cluster.path(&format!("{name}-data/work")))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_bundle_that_unpacks_past_the_workers_limit_fails_and_leaves_nothing() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "max_unpacked_bundle_bytes = 1048576");
    // `truncate -s 16M`: a sparse file, which the CLI packs as 16 MiB of zeros
    // (a few KiB compressed).
    let dir = cluster.path("sparse");
    let pipeline = write_pipeline(
        &dir,
        "name: sparse\nsteps:\n  - name: s\n    shell: \"echo ran\"\n",
        &[],
    );
    std::fs::File::create(dir.join("sparse.bin"))
        .expect("sparse file")
        .set_len(16 * 1024 * 1024)
        .expect("truncate");
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "failed", "{status:#}");
    let step = step_of(&status, "s");
    let reason = step["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("max_unpacked_bundle_bytes") && reason.contains("1048576 bytes"),
        "the limit is named: {step:#}"
    );
    // The partial work directory is gone (removed before the report).
    assert_eq!(work_dir_entries(&cluster, "w1"), Vec::<String>::new());
}

#[test]
fn the_coordinator_refuses_an_oversize_announcement_and_bytes_that_are_no_bundle() {
    let cluster = Cluster::start();
    runtime().block_on(async {
        let mut client = control(&cluster);
        // 8 GiB announced in the first chunk, and nothing after it: the answer
        // comes without the bytes ever being sent (the stream stays open).
        let digest = blake3::hash(b"eight gibibytes").to_hex().to_string();
        let size = 8 * 1024 * 1024 * 1024;
        let first = proto::Chunk {
            digest: digest.clone(),
            size,
            data: Default::default(),
            zeros: 0,
            digest_last: false,
        };
        let chunks =
            futures::StreamExt::chain(futures::stream::iter([first]), futures::stream::pending());
        let refused = tokio::time::timeout(Duration::from_secs(20), client.upload_bundle(chunks))
            .await
            .expect("refused without waiting for the bytes")
            .expect_err("an 8 GiB bundle was accepted");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains(&MAX_BUNDLE_BYTES.to_string()),
            "the limit is named: {refused:?}"
        );
        assert!(!stored(&mut client, &digest, size).await);

        // Garbage, an empty upload and an archive holding a symbolic link are
        // no bundles: refused, nothing stored.
        let mut link = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        link.append_link(&mut header, "key.pem", "/etc/ferry/key.pem")
            .expect("link entry");
        let link = link.into_inner().expect("tar").finish().expect("gzip");
        for (what, bytes, says) in [
            ("garbage", b"this is not a gzip'd tar".to_vec(), "gzip"),
            ("empty", Vec::new(), "end of file"),
            ("a symbolic link", link, "symbolic link"),
        ] {
            let digest = blake3::hash(&bytes).to_hex().to_string();
            let size = bytes.len() as u64;
            let refused = upload_bundle(&mut client, bytes)
                .await
                .expect_err(&format!("{what} was stored as a bundle"));
            assert_eq!(
                refused.code(),
                tonic::Code::InvalidArgument,
                "{what}: {refused:?}"
            );
            assert!(
                refused.message().contains("not a code bundle") && refused.message().contains(says),
                "{what}: {refused:?}"
            );
            assert!(!stored(&mut client, &digest, size).await, "{what}");
            assert_eq!(blob_files(&cluster, &digest), 0, "{what} left a file");
        }

        // A real bundle goes through, but not past the size it announced.
        let dir = cluster.path("real");
        write_pipeline(&dir, "name: real\nsteps: []\n", &[("a.txt", "a")]);
        let packed = ferry_common::bundle::pack_dir(&dir).expect("pack");
        let short = packed.bytes.len() as u64 / 2;
        let chunks = [Vec::new(), packed.bytes.clone()].map(|data| proto::Chunk {
            digest: packed.digest.clone(),
            size: short,
            data: data.into(),
            zeros: 0,
            digest_last: false,
        });
        let refused = client
            .upload_bundle(futures::stream::iter(chunks))
            .await
            .expect_err("more bytes than announced were accepted");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(!stored(&mut client, &packed.digest, short).await);
        assert_eq!(blob_files(&cluster, &packed.digest), 0);
        let blob = upload_bundle(&mut client, packed.bytes.clone())
            .await
            .expect("a real bundle is stored");
        assert_eq!(blob.digest, packed.digest);
        assert!(stored(&mut client, &packed.digest, packed.bytes.len() as u64).await);
    });
}

const TAMPER_PIPELINE: &str = r#"name: tamper
params:
  mode: check
steps:
  - name: s
    command: ["sh", "step.sh", "${params.mode}"]
"#;

#[test]
fn a_step_that_rewrites_its_pooled_directory_later_cannot_reach_the_next_run() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "");
    let mark = marker("tamper");
    // `tamper` leaves a process behind (in a session of its own, once it had
    // half a second to get there) that rewrites data.txt in place (same size,
    // same inode) half a second after the step ended, when its directory is in
    // the pool; `check` fails unless it sees the bundle's own data.txt.
    let script = format!(
        "case \"$1\" in\n\
         tamper) setsid sh -c 'sleep 1; printf tampered > data.txt # {mark}' \
         </dev/null >/dev/null 2>&1 & sleep 0.5 ;;\n\
         check) test \"$(cat data.txt)\" = original || {{ echo \"saw $(cat data.txt)\"; exit 3; }} ;;\n\
         esac\n"
    );
    let pipeline = write_pipeline(
        &cluster.path("tamper"),
        TAMPER_PIPELINE,
        &[("step.sh", &script), ("data.txt", "original")],
    );
    let first = cluster.submit(&pipeline, &["--param", "mode=tamper"]);
    let status = cluster.wait_run(first, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    // The left-behind process has written (or was stopped by the worker).
    wait_for(
        Duration::from_secs(20),
        "the left-behind process to end",
        || (!process_with_marker_exists(&mark)).then_some(()),
    );
    let second = cluster.submit(&pipeline, &["--param", "mode=check"]);
    let status = cluster.wait_run(second, Duration::from_secs(60));
    kill_processes_with_marker(&mark);
    assert_eq!(
        status["state"], "succeeded",
        "the second run saw a tampered data.txt: {status:#}"
    );
}

/// Writes a gzip stream of stored (uncompressed) deflate blocks: the archive on
/// the wire is as large as what it holds, made without compressing anything.
struct StoredGzip<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> StoredGzip<W> {
    fn new(mut out: W) -> StoredGzip<W> {
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])
            .expect("gzip header");
        StoredGzip {
            out,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    fn finish(mut self) -> W {
        self.out
            .write_all(&[1, 0, 0, 0xff, 0xff])
            .expect("last block");
        self.out
            .write_all(&self.crc.clone().finalize().to_le_bytes())
            .expect("crc");
        self.out
            .write_all(&(self.len as u32).to_le_bytes())
            .expect("size");
        self.out
    }
}

impl<W: Write> Write for StoredGzip<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(65_535);
        let block = &data[..n];
        let len = n as u16;
        self.out.write_all(&[0])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&(!len).to_le_bytes())?;
        self.out.write_all(block)?;
        self.crc.update(block);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes a bundle of one file, `random.bin`, of `data` incompressible bytes
/// stored as they are (the bundle is as large on the wire and on the worker's
/// disk as unpacked); returns its path, digest and size.
fn large_bundle(cluster: &Cluster, data: u64) -> (std::path::PathBuf, String, u64) {
    let path = cluster.path("large.tar.gz");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("bundle file"));
        let mut tar = tar::Builder::new(StoredGzip::new(file));
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data);
        let random = blake3::Hasher::new()
            .update(b"incompressible")
            .finalize_xof()
            .take(data);
        tar.append_data(&mut header, "random.bin", random)
            .expect("tar entry");
        let gzip = tar.into_inner().expect("tar");
        gzip.finish().flush().expect("flush");
    }
    let size = std::fs::metadata(&path).expect("bundle").len();
    assert!(size > data, "stored, not compressed: {size}");
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(&path).expect("bundle"))
        .expect("hash");
    (path, hasher.finalize().to_hex().to_string(), size)
}

/// Uploads the bundle at `path` in 1 MiB chunks and submits a one-step run of
/// `shell` with it; returns the run's id.
fn submit_with_bundle(cluster: &Cluster, path: &Path, digest: &str, size: u64, shell: &str) -> u64 {
    runtime().block_on(async {
        let mut client = control(cluster);
        let mut file = std::fs::File::open(path).expect("bundle");
        let header = proto::Chunk {
            digest: digest.to_string(),
            size,
            data: Default::default(),
            zeros: 0,
            digest_last: false,
        };
        let digest_owned = digest.to_string();
        let rest = futures::stream::iter(std::iter::from_fn(move || {
            let mut data = vec![0u8; 1 << 20];
            let n = file.read(&mut data).expect("read");
            (n > 0).then(|| {
                data.truncate(n);
                proto::Chunk {
                    digest: digest_owned.clone(),
                    size,
                    data: data.into(),
                    zeros: 0,
                    digest_last: false,
                }
            })
        }));
        client
            .upload_bundle(futures::StreamExt::chain(
                futures::stream::iter([header]),
                rest,
            ))
            .await
            .expect("the bundle is stored");
        client
            .submit_run(proto::SubmitRunRequest {
                spec_yaml: format!("name: large\nsteps:\n  - name: s\n    shell: \"{shell}\"\n"),
                spec_file: "pipeline.yaml".to_string(),
                params: Default::default(),
                bundle_digest: digest.to_string(),
                request_id: String::new(),
                no_cache: false,
            })
            .await
            .expect("submitted")
            .into_inner()
            .run_id
    })
}

#[test]
fn staging_a_large_bundle_does_not_hold_it_in_the_workers_memory() {
    // A worker that read the bundle into memory would grow by its whole size.
    const DATA: u64 = 192 * 1024 * 1024;
    // Measured: about 5 MiB on a quiet machine (buffers of the download and
    // the unpack), 33 MiB once on a loaded one (1 MiB frames in flight, kept
    // in several threads' allocator caches). A third of the bundle: a worker
    // that held it would grow by all of it.
    const SLACK: u64 = DATA / 3;
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "");
    let (path, digest, size) = large_bundle(&cluster, DATA);
    let worker_pid = cluster.workers["w1"].pid();
    let before = ferry_tests::procfs::status_kib(worker_pid, "VmHWM").expect("VmHWM") * 1024;
    let run = submit_with_bundle(&cluster, &path, &digest, size, "test -s random.bin");
    let status = cluster.wait_run(run, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let after = ferry_tests::procfs::status_kib(worker_pid, "VmHWM").expect("VmHWM") * 1024;
    assert!(
        after < before + SLACK,
        "staging a {} MiB bundle raised the worker's peak memory from {} MiB to {} MiB",
        size >> 20,
        before >> 20,
        after >> 20
    );
}

#[test]
fn an_attempt_cancelled_while_its_bundle_unpacks_leaves_nothing() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "");
    let (path, digest, size) = large_bundle(&cluster, 128 * 1024 * 1024);
    let run = submit_with_bundle(&cluster, &path, &digest, size, "sleep 600");
    // Cancelled as soon as the bundle's file appears in the work directory:
    // while it unpacks, most of the time (or once the step runs; either way
    // nothing may stay).
    wait_for(
        Duration::from_secs(60),
        "the bundle to be unpacking",
        || {
            work_dir_entries(&cluster, "w1")
                .iter()
                .any(|dir| {
                    cluster
                        .path(&format!("w1-data/work/{dir}/random.bin"))
                        .exists()
                })
                .then_some(())
        },
    );
    let cancelled = cluster.ferry(&["cancel", &run.to_string()]);
    assert!(cancelled.success(), "{cancelled:?}");
    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "cancelled", "{status:#}");
    wait_for(
        Duration::from_secs(20),
        "the work directory to be removed",
        || work_dir_entries(&cluster, "w1").is_empty().then_some(()),
    );
    // No download is left beside the blob cache's entries either.
    let incoming = cluster.path("w1-data/cache/incoming");
    assert!(
        incoming.is_dir(),
        "the worker keeps downloads in {incoming:?}"
    );
    let partials: Vec<_> = std::fs::read_dir(&incoming)
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
}

#[test]
fn a_worker_stopped_with_a_cancelled_attempts_uploads_pending_exits_within_seconds() {
    let mut cluster = Cluster::start();
    cluster.add_worker("w1", "");
    let mark = marker("stop");
    let pipeline = write_pipeline(
        &cluster.path("stop"),
        &format!(
            "name: stop\nsteps:\n  - name: s\n    shell: \"echo started; sleep 600; echo {mark}\"\n"
        ),
        &[],
    );
    let run = cluster.submit(&pipeline, &[]);
    cluster.wait_step(run, "s", "running", Duration::from_secs(60));
    wait_for(Duration::from_secs(20), "the step's process", || {
        process_with_marker_exists(&mark).then_some(())
    });
    // With no coordinator, the stopped attempt's log and report can go nowhere.
    cluster.kill_coordinator();
    let worker = cluster.workers.get_mut("w1").expect("worker");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let asked = Instant::now();
    let exited = wait_for(
        Duration::from_secs(10),
        "the worker to exit within 10 s of SIGTERM",
        || worker.child.try_wait().expect("try_wait"),
    );
    assert!(
        asked.elapsed() <= Duration::from_secs(10),
        "exited {exited:?} after {:?}",
        asked.elapsed()
    );
    // It stopped its attempt on the way out.
    wait_for(
        Duration::from_secs(5),
        "the step's process to be gone",
        || (!process_with_marker_exists(&mark)).then_some(()),
    );
    kill_processes_with_marker(&mark);
}

/// A `ferry` command with `HOME` set to `home` and no Ferry or XDG variables
/// inherited (as `t60_dev` runs it).
fn isolated_ferry(home: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(ferry_tests::bin("ferry"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("FERRY_") || key.starts_with("XDG_") {
            command.env_remove(&key);
        }
    }
    command.env("HOME", home).stdin(std::process::Stdio::null());
    command
}

/// Kills `ferry dev` if the test ends before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn ferry_dev_stops_within_seconds_with_a_cancelled_attempt_in_flight() {
    let home_dir = tempfile::tempdir().expect("temp dir");
    let home = home_dir.path();
    let stdout = home.join("dev.out");
    let mut dev = KillOnDrop(
        isolated_ferry(home)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--cpus",
                "2",
                "--memory",
                "2Gi",
            ])
            .arg("--data-dir")
            .arg(home.join("dev-data"))
            .current_dir(home)
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(home.join("dev.log")).expect("log file"))
            .spawn()
            .expect("start ferry dev"),
    );
    wait_for(Duration::from_secs(30), "ferry dev to be ready", || {
        std::fs::read_to_string(&stdout)
            .ok()
            .filter(|out| out.contains("client config written"))
    });
    let mark = marker("devstop");
    let project = home.join("project");
    write_pipeline(
        &project,
        &format!(
            "name: devstop\nsteps:\n  - name: s\n    shell: \"echo started; sleep 600; echo {mark}\"\n"
        ),
        &[],
    );
    let submitted = isolated_ferry(home)
        .args(["run", "pipeline.yaml"])
        .current_dir(&project)
        .output()
        .expect("ferry run");
    assert!(submitted.status.success(), "{submitted:?}");
    wait_for(Duration::from_secs(30), "the step's process", || {
        process_with_marker_exists(&mark).then_some(())
    });
    // The step has printed: its log is to be uploaded when it is stopped, to a
    // coordinator that stops in the same process.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let child = &mut dev.0;
    wait_for(
        Duration::from_secs(10),
        "ferry dev to exit within 10 s of SIGTERM",
        || child.try_wait().expect("try_wait"),
    );
    wait_for(
        Duration::from_secs(5),
        "the step's process to be gone",
        || (!process_with_marker_exists(&mark)).then_some(()),
    );
    kill_processes_with_marker(&mark);
}
