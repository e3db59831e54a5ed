//! Large artifacts on the embedded store, on a three-member cluster: a 1 GiB
//! output (random bytes with a run of written zeros) goes up and comes back
//! byte for byte (the step's own SHA-256 of it checked against the download,
//! the BLAKE3 digest by the CLI), a 2 GiB sparse output is stored and sent
//! as holes (the coordinators' disks and the download stay sparse), a
//! download resumes from what an interrupted one left, a partial file that
//! does not match is caught by the digest and replaced, and the daemons'
//! memory stays flat throughout.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use ferry_tests::procfs::{allocated_bytes, peak_mib};
use ferry_tests::{Cluster, write_pipeline};

const MIB: u64 = 1 << 20;

/// Files under `dir` with more than 16 MiB allocated, for a failure's message.
fn large_files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) if meta.blocks() * 512 > 16 * MIB => {
                    found.push((entry.path(), meta.blocks() * 512))
                }
                _ => {}
            }
        }
    }
    found
}

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_gigabyte_and_a_sparse_file_round_trip_resumably_with_flat_memory() {
    let mut cluster = Cluster::start_replicated(3, "");
    cluster.add_worker("worker", "memory = \"4Gi\"\n");
    cluster.wait_worker_connected("worker");
    let pipeline = write_pipeline(
        &cluster.path("pipeline"),
        r#"
name: large
steps:
  - name: make
    shell: |
      set -e
      { head -c 400M /dev/urandom; head -c 200M /dev/zero; head -c 424M /dev/urandom; } > big.bin
      sha256sum big.bin | cut -d' ' -f1 > big.sha256
      truncate -s 2G holes.bin
      printf middle | dd of=holes.bin bs=1 seek=1073741824 conv=notrunc status=none
    outputs: [big.bin, big.sha256, holes.bin]
    cache: false
    resources: {memory: 512Mi}
"#,
        &[],
    );
    let before: Vec<u64> = (1..=3)
        .map(|id| allocated_bytes(&cluster.path(&format!("coordinator-{id}-data"))))
        .collect();
    let run = cluster.submit(&pipeline, &[]);
    let status = cluster.wait_run(run, Duration::from_secs(600));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let run = run.to_string();

    // Byte for byte: the CLI checks the BLAKE3 digest, the step's SHA-256 the
    // bytes it wrote.
    let get = |name: &str, target: &Path| {
        cluster.ferry(&[
            "artifacts",
            "get",
            &run,
            "make",
            name,
            "-o",
            target.to_str().unwrap(),
        ])
    };
    let big = cluster.path("big.bin");
    let got = get("big.bin", &big);
    assert!(got.success() && got.stdout.contains("verified"), "{got:?}");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 1024 * MIB);
    let sums = cluster.path("big.sha256");
    assert!(get("big.sha256", &sums).success());
    assert_eq!(
        sha256_of(&big),
        std::fs::read_to_string(&sums).unwrap().trim(),
        "the downloaded bytes are not the bytes the step wrote"
    );

    // The sparse file: stored as holes on every member (the 1 GiB output
    // and the small ones take ~1 GiB each; holes nothing), sent as zero runs,
    // and written as holes.
    let holes = cluster.path("holes.bin");
    let got = get("holes.bin", &holes);
    assert!(got.success() && got.stdout.contains("verified"), "{got:?}");
    let meta = std::fs::metadata(&holes).unwrap();
    assert_eq!(meta.len(), 2048 * MIB);
    assert!(
        meta.blocks() * 512 < 16 * MIB,
        "the download of a sparse file is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    let content = std::fs::read(&holes).unwrap();
    assert_eq!(&content[1 << 30..(1 << 30) + 6], b"middle");
    assert!(content[..1 << 30].iter().all(|b| *b == 0));
    drop(content);
    // (A stored 2 GiB sparse file would take twice the bound's margin.)
    for (id, before) in (1..=3).zip(before) {
        let dir = cluster.path(&format!("coordinator-{id}-data"));
        let grew = allocated_bytes(&dir) - before;
        assert!(
            grew < 1024 * MIB + 512 * MIB,
            "coordinator {id} grew by {grew} bytes for 1 GiB of data and a 2 GiB sparse file: {:?}",
            large_files(&dir)
        );
    }

    // An interrupted download (its bytes so far and the digest they belong
    // to) is taken up where it stopped.
    let resumed = cluster.path("resumed.bin");
    let partial = cluster.path("resumed.bin.ferry-partial");
    let digest_file = cluster.path("resumed.bin.ferry-partial.digest");
    let digest = blake3_of(&big);
    {
        use std::io::Read;
        let mut prefix = vec![0u8; (300 * MIB) as usize];
        std::fs::File::open(&big)
            .unwrap()
            .read_exact(&mut prefix)
            .unwrap();
        std::fs::write(&partial, &prefix).unwrap();
        std::fs::write(&digest_file, &digest).unwrap();
    }
    let got = get("big.bin", &resumed);
    assert!(got.success(), "{got:?}");
    assert!(got.stderr.contains("resuming at 300"), "{got:?}");
    assert_eq!(blake3_of(&resumed), digest);
    assert!(!partial.exists() && !digest_file.exists());

    // A partial file whose bytes are not the blob's: the digest catches it,
    // nothing is written, and the next try starts over.
    std::fs::write(&partial, vec![7u8; MIB as usize]).unwrap();
    std::fs::write(&digest_file, &digest).unwrap();
    std::fs::remove_file(&resumed).unwrap();
    let got = get("big.bin", &resumed);
    assert!(!got.success(), "{got:?}");
    assert!(got.stderr.contains("nothing written"), "{got:?}");
    assert!(!resumed.exists() && !partial.exists());
    let got = get("big.bin", &resumed);
    assert!(got.success(), "{got:?}");
    assert_eq!(blake3_of(&resumed), digest);

    // A partial file of another blob (another digest beside it) is dropped,
    // and so is one longer than the blob.
    std::fs::remove_file(&resumed).unwrap();
    std::fs::write(&partial, b"other").unwrap();
    std::fs::write(&digest_file, blake3_of(&sums)).unwrap();
    let got = get("big.bin", &resumed);
    assert!(got.success(), "{got:?}");
    assert!(got.stderr.contains("starting over"), "{got:?}");
    assert_eq!(blake3_of(&resumed), digest);
    let small = cluster.path("small.sha256");
    let small_partial = cluster.path("small.sha256.ferry-partial");
    std::fs::write(&small_partial, vec![1u8; 4096]).unwrap();
    std::fs::write(
        cluster.path("small.sha256.ferry-partial.digest"),
        blake3_of(&sums),
    )
    .unwrap();
    let got = get("big.sha256", &small);
    assert!(got.success(), "{got:?}");
    assert!(got.stderr.contains("starting over"), "{got:?}");
    assert_eq!(blake3_of(&small), blake3_of(&sums));
    assert!(!small_partial.exists());

    // Memory stayed flat: frames of a MiB, a few in flight, whatever the size
    // (loose bounds for a debug build; `ferry-bench artifacts` measures).
    for coordinator in &cluster.coordinators {
        let daemon = coordinator.daemon.as_ref().expect("running");
        let peak = peak_mib(daemon.pid()).expect("running");
        assert!(peak < 400, "a coordinator peaked at {peak} MiB");
    }
    let peak = peak_mib(cluster.workers["worker"].pid()).expect("running");
    assert!(peak < 400, "the worker peaked at {peak} MiB");
}

fn blake3_of(path: &Path) -> String {
    ferry_common::digest::digest_file(path).unwrap().0
}

/// An upload whose sender names the digest at the end (as a worker sends a
/// large output): every member checks its own hash against that claim. A
/// wrong claim, or a chunk after it, is refused and leaves nothing on any
/// member; the right one is stored on every member under the digest.
#[test]
fn a_digest_named_last_is_checked_by_every_member() {
    use ferry_common::proto;
    let cluster = Cluster::start_replicated(3, "");
    cluster
        .pki
        .issue("worker", "uploader")
        .expect("worker cert");
    let tls = ferry_common::pki::TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert("uploader"),
        key: cluster.pki.key("uploader"),
    }
    .load()
    .expect("TLS files");
    let leader = cluster.leader(Duration::from_secs(30));
    let address = cluster.coordinators[(leader - 1) as usize].address();
    let data: Vec<u8> = (0..3 * MIB as usize + 12_345)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let digest = blake3::hash(&data).to_hex().to_string();
    let chunks = |claim: &str, extra: bool| {
        let mut chunks = vec![proto::Chunk {
            size: data.len() as u64,
            digest_last: true,
            ..Default::default()
        }];
        chunks.extend(data.chunks(MIB as usize).map(|piece| proto::Chunk {
            data: piece.to_vec().into(),
            ..Default::default()
        }));
        chunks.push(proto::Chunk {
            digest: claim.to_string(),
            ..Default::default()
        });
        if extra {
            chunks.push(proto::Chunk {
                zeros: 1,
                ..Default::default()
            });
        }
        chunks
    };
    let blob_dirs: Vec<_> = (1..=3)
        .map(|id| {
            cluster
                .path(&format!("coordinator-{id}-data"))
                .join("blobs")
        })
        .collect();
    let files = || -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for dir in &blob_dirs {
            let mut stack = vec![dir.clone()];
            while let Some(next) = stack.pop() {
                for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
                    if entry.path().is_dir() {
                        stack.push(entry.path());
                    } else {
                        found.push(entry.path());
                    }
                }
            }
        }
        found.sort();
        found
    };
    let before = files();
    let runtime = ferry_tests::uploads::runtime();
    runtime.block_on(async {
        let channel = ferry_common::channel::endpoint(&address, &tls)
            .expect("endpoint")
            .connect()
            .await
            .expect("connected");
        let mut agent = proto::agent_client::AgentClient::new(channel);
        let wrong = blake3::hash(b"something else").to_hex().to_string();
        for (claim, extra) in [(wrong.as_str(), false), (digest.as_str(), true)] {
            let refused = agent
                .upload_artifact(futures::stream::iter(chunks(claim, extra)))
                .await
                .expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        }
        // Nothing stored anywhere, and every member's staging file removed.
        ferry_tests::wait_for(Duration::from_secs(30), "staging files removed", || {
            (files() == before).then_some(())
        });
        let stored = agent
            .upload_artifact(futures::stream::iter(chunks(&digest, false)))
            .await
            .expect("stored")
            .into_inner();
        assert_eq!(stored.digest, digest);
        assert_eq!(stored.size, data.len() as u64);
    });
    // Every member ends up holding it under its digest, byte for byte.
    for dir in &blob_dirs {
        let path = dir.join(&digest[..2]).join(&digest);
        ferry_tests::wait_for(Duration::from_secs(30), "the copy on every member", || {
            path.exists().then_some(())
        });
        assert_eq!(std::fs::read(&path).expect("stored blob"), data);
    }
}
