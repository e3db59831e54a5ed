//! Power loss: acknowledged means on stable storage. Three real coordinators keep
//! their data directories on the lazy filesystem (`ferry_tests::lazyfs`: what
//! was not fsynced is lost when the power goes), clients submit and cancel runs
//! concurrently, and at a random moment the power of all three is cut at once:
//! every member is frozen (SIGSTOP), the filesystem returns to its durable form,
//! the members are killed and started again on what is left. Then every
//! acknowledged run must be there, with its acknowledged state, on every member
//! (each member's own view once it has applied a write made after the restart),
//! and every acknowledged code bundle on a majority of the members' disks.
//!
//! The schedule comes from a seeded generator; the seed is printed, and
//! `FERRY_POWER_SEED=N` replays it (the processes' timing still varies).
//! A second check reads the filesystem's records: each submission is answered
//! only once its pipeline's unique name is durable on a majority of the members
//! (`check_durable_before_answer`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::lazyfs::{LazyFs, SyncEvent};
use ferry_tests::{Cluster, parse_run_id, wait_for, write_pipeline};

const MEMBERS: u64 = 3;
const TRIALS: usize = 20;
const CLIENTS: usize = 3;
/// Compactions (snapshot files: write, fsync, rename, directory fsync) happen
/// during the test, not only log appends.
const COORDINATOR_EXTRA: &str = "[raft]\nsnapshot_every = 40\n";

/// splitmix64: a small seeded generator (the schedule must replay from a seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [low, high).
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

fn seed() -> u64 {
    match std::env::var("FERRY_POWER_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FERRY_POWER_SEED={text:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// What a client was told, run by run.
#[derive(Clone, Debug)]
struct Acked {
    /// Its pipeline's name, unique to it (run ids start again from 1 in a cluster
    /// that lost its log, so an id alone proves nothing).
    pipeline: String,
    /// The code bundle's digest (a blob that must be on a majority).
    bundle: String,
    /// A `ferry cancel` of it was acknowledged.
    cancelled: bool,
}

/// One acknowledged call: when it began and when its answer arrived.
#[derive(Clone, Debug)]
struct Call {
    what: String,
    /// A submission's pipeline name, a marker the filesystem watches for.
    marker: Option<String>,
    began: Instant,
    answered: Instant,
}

/// Every submitted pipeline is named this and 16 hex digits: a byte string that
/// occurs in its command's Raft entry and nowhere else.
const MARKER: &str = "pwrcut";
const MARKER_LEN: usize = MARKER.len() + 16;

#[derive(Default)]
struct Ledger {
    runs: BTreeMap<u64, Acked>,
    calls: Vec<Call>,
    /// Acknowledgements in the current trial.
    this_trial: usize,
}

/// Runs `ferry` to its end unless `stop` is raised first (then it is killed and
/// its answer, if any, ignored): Some(stdout) on success.
fn ferry_until_stopped(cluster: &Cluster, args: &[&str], stop: &AtomicBool) -> Option<String> {
    let mut child: Child = cluster.ferry_spawn(args);
    // Bounded: the CLI's own retries end long before this.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if stop.load(Ordering::SeqCst) || Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return None,
        }
    }
    let output = child.wait_with_output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One client: submits runs of its own pipelines (each a new code bundle) and
/// cancels some of the runs it was told about, until stopped.
fn client(cluster: &Cluster, number: usize, seed: u64, ledger: &Mutex<Ledger>, stop: &AtomicBool) {
    let mut rng = Rng(seed);
    let mut mine: Vec<u64> = Vec::new();
    // Bounded in count as well as by the stop flag.
    for _ in 0..400 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let began = Instant::now();
        if !mine.is_empty() && rng.range(0, 4) == 0 {
            let run = mine.swap_remove(rng.range(0, mine.len() as u64) as usize);
            if ferry_until_stopped(cluster, &["cancel", &run.to_string()], stop).is_some() {
                let mut ledger = ledger.lock().expect("ledger");
                if let Some(acked) = ledger.runs.get_mut(&run) {
                    acked.cancelled = true;
                }
                ledger.this_trial += 1;
                ledger.calls.push(Call {
                    what: format!("cancel of run {run}"),
                    marker: None,
                    began,
                    answered: Instant::now(),
                });
            }
            continue;
        }
        let token = rng.next();
        let dir = cluster.path(&format!("pipelines/client-{number}/{token:016x}"));
        let name = format!("{MARKER}{token:016x}");
        let pipeline = write_pipeline(
            &dir,
            &format!("name: {name}\nsteps:\n  - name: work\n    command: [\"true\"]\n"),
            &[("token.txt", &format!("{token}\n"))],
        );
        let bundle = ferry_common::bundle::pack_dir(&dir)
            .expect("pack the pipeline's folder")
            .digest;
        let path = pipeline.to_str().expect("utf-8 path");
        if let Some(stdout) = ferry_until_stopped(cluster, &["run", path], stop) {
            let run = parse_run_id(&stdout).unwrap_or_else(|| panic!("no run id in {stdout}"));
            let mut ledger = ledger.lock().expect("ledger");
            ledger.runs.insert(
                run,
                Acked {
                    pipeline: name.clone(),
                    bundle,
                    cancelled: false,
                },
            );
            ledger.this_trial += 1;
            ledger.calls.push(Call {
                what: format!("submission of run {run}"),
                marker: Some(name),
                began,
                answered: Instant::now(),
            });
            mine.push(run);
        }
    }
}

/// Which member a path on the filesystem belongs to (`coordinator-ID-data/...`).
fn member_of(path: &str) -> Option<u64> {
    path.strip_prefix("coordinator-")?
        .split_once("-data")?
        .0
        .parse()
        .ok()
}

/// Members whose data directory holds the blob, intact.
fn blob_holders(root: &Path, digest: &str) -> BTreeSet<u64> {
    (1..=MEMBERS)
        .filter(|id| {
            let file: PathBuf = root
                .join(format!("coordinator-{id}-data/blobs"))
                .join(&digest[..2])
                .join(digest);
            std::fs::read(&file).is_ok_and(|bytes| blake3::hash(&bytes).to_hex().as_str() == digest)
        })
        .collect()
}

/// Each member's own view (a stale read at that member) once it has applied
/// `barrier`: run id → (pipeline, state).
fn member_view(cluster: &Cluster, id: u64, barrier: u64) -> BTreeMap<u64, (String, String)> {
    wait_for(
        Duration::from_secs(60),
        &format!("member {id} to apply run {barrier}"),
        || {
            let listing = cluster.runs_listing(Some(id), true)?;
            let view: BTreeMap<u64, (String, String)> = listing
                .as_array()?
                .iter()
                .filter_map(|run| {
                    let pipeline = run["pipeline"].as_str()?.to_string();
                    Some((
                        run["run"].as_u64()?,
                        (pipeline, run["state"].as_str()?.to_string()),
                    ))
                })
                .collect();
            view.contains_key(&barrier).then_some(view)
        },
    )
}

/// Fails the test with everything needed to understand and replay it.
fn fail(seed: u64, trial: usize, what: &str, cut: &str) -> ! {
    panic!(
        "power-loss trial {trial} (FERRY_POWER_SEED={seed}): {what}\n\
         what the cut took away: {cut}"
    )
}

#[test]
fn acknowledged_runs_survive_power_loss_on_every_member() {
    let seed = seed();
    println!("power-loss seed {seed}: FERRY_POWER_SEED={seed} replays this schedule");
    let mut rng = Rng(seed);
    let mount_dir = tempfile::tempdir().expect("temp dir");
    // Declared before the cluster, so dropped after it: the members are killed
    // before the filesystem is unmounted.
    let fs = LazyFs::mount(mount_dir.path()).expect("mount the lazy filesystem");
    fs.watch_markers(MARKER.as_bytes(), MARKER_LEN);
    let mut cluster = Cluster::start_replicated_on(MEMBERS, COORDINATOR_EXTRA, fs.path());
    for id in 1..=MEMBERS {
        // A member that refuses to start says why on its last line, not under a
        // backtrace.
        cluster
            .coordinator_env
            .insert(id, vec![("RUST_BACKTRACE".to_string(), "0".to_string())]);
    }
    let ledger = Mutex::new(Ledger::default());
    for trial in 0..TRIALS {
        // Load, then a cut after a random number of acknowledgements and a
        // random delay (most cuts land with calls in flight).
        let acks_before_cut = rng.range(1, 8) as usize;
        let jitter = Duration::from_millis(rng.range(0, 250));
        let stop = AtomicBool::new(false);
        ledger.lock().expect("ledger").this_trial = 0;
        let client_seeds: Vec<u64> = (0..CLIENTS).map(|_| rng.next()).collect();
        std::thread::scope(|scope| {
            for (number, client_seed) in client_seeds.iter().enumerate() {
                let (cluster, ledger, stop) = (&cluster, &ledger, &stop);
                scope.spawn(move || client(cluster, number, *client_seed, ledger, stop));
            }
            wait_for(
                Duration::from_secs(120),
                &format!("{acks_before_cut} acknowledgements in trial {trial}"),
                || (ledger.lock().expect("ledger").this_trial >= acks_before_cut).then_some(()),
            );
            // The random moment of the cut within the load (a schedule, not a wait
            // for a condition).
            std::thread::sleep(jitter);
            for id in 1..=MEMBERS {
                cluster.pause_member(id, true);
            }
            // Every answer a client has now was sent before the cut.
            stop.store(true, Ordering::SeqCst);
        });
        let cut = fs.power_off();
        for id in 1..=MEMBERS {
            cluster.kill_member(id);
        }
        fs.power_on();
        let cut_text = cut.to_string();
        let acked: BTreeMap<u64, Acked> = ledger.lock().expect("ledger").runs.clone();
        println!(
            "trial {trial}: cut after {acks_before_cut} acknowledgements + {jitter:?}; \
             {} runs acknowledged so far; {}",
            acked.len(),
            cut_text.lines().next().unwrap_or("")
        );

        // Bundles: each acknowledged one on a majority of the disks as they are now.
        let mut problems = Vec::new();
        let scattered: Vec<String> = acked
            .iter()
            .filter_map(|(run, entry)| {
                let holders = blob_holders(fs.path(), &entry.bundle);
                (holders.len() < MEMBERS as usize / 2 + 1)
                    .then(|| format!("run {run}: {} on {holders:?}", &entry.bundle[..12]))
            })
            .collect();
        if !scattered.is_empty() {
            problems.push(format!(
                "{} of {} acknowledged code bundles are not intact on a majority of the \
                 members' disks: {}",
                scattered.len(),
                acked.len(),
                scattered[..scattered.len().min(5)].join("; ")
            ));
        }

        for id in 1..=MEMBERS {
            cluster.spawn_coordinator(id, false);
        }
        wait_for(
            Duration::from_secs(60),
            "a leader after the restart",
            || {
                for id in 1..=MEMBERS {
                    if cluster.member_exited(id) {
                        let log = cluster.member_log(id);
                        let last = log.lines().last().unwrap_or("").to_string();
                        let mut all = problems.clone();
                        all.push(format!(
                            "member {id} does not start again after the cut: {last}"
                        ));
                        fail(seed, trial, &all.join("\n"), &cut_text);
                    }
                }
                let status = cluster.cluster_status()?;
                (status["leader_id"].as_u64()? != 0).then_some(())
            },
        );
        // A write made after the restart: a member that has applied it has
        // applied everything committed before it.
        let barrier_dir = cluster.path(&format!("pipelines/barrier-{trial}"));
        let barrier_pipeline = write_pipeline(
            &barrier_dir,
            &format!("name: barrier-{trial}\nsteps:\n  - name: work\n    command: [\"true\"]\n"),
            &[("trial.txt", &format!("{trial}\n"))],
        );
        let barrier = wait_for(
            Duration::from_secs(60),
            "a submission after the restart",
            || {
                let result = cluster.ferry(&["run", barrier_pipeline.to_str().expect("utf-8")]);
                result
                    .success()
                    .then(|| parse_run_id(&result.stdout))
                    .flatten()
            },
        );
        // Acknowledged too: checked after the next cuts.
        ledger.lock().expect("ledger").runs.insert(
            barrier,
            Acked {
                pipeline: format!("barrier-{trial}"),
                bundle: ferry_common::bundle::pack_dir(&barrier_dir)
                    .expect("pack the barrier's folder")
                    .digest,
                cancelled: false,
            },
        );
        for id in 1..=MEMBERS {
            let view = member_view(&cluster, id, barrier);
            let missing: Vec<u64> = acked
                .iter()
                .filter(|(run, entry)| view.get(run).is_none_or(|(p, _)| *p != entry.pipeline))
                .map(|(run, _)| *run)
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "member {id} lost {} of {} acknowledged runs: {:?} (it lists {} runs)",
                    missing.len(),
                    acked.len(),
                    &missing[..missing.len().min(20)],
                    view.len()
                ));
            }
            let uncancelled: Vec<(u64, &String)> = acked
                .iter()
                .filter(|(run, entry)| {
                    entry.cancelled
                        && view
                            .get(run)
                            .is_some_and(|(p, s)| *p == entry.pipeline && s != "cancelled")
                })
                .map(|(run, _)| (*run, &view[run].1))
                .collect();
            if !uncancelled.is_empty() {
                problems.push(format!(
                    "member {id} shows runs whose cancellation was acknowledged in another \
                     state: {uncancelled:?}"
                ));
            }
        }
        if !problems.is_empty() {
            fail(seed, trial, &problems.join("\n"), &cut_text);
        }
    }

    let ledger = ledger.into_inner().expect("ledger");
    let (syncs, dropped) = fs.syncs();
    println!(
        "{TRIALS} power cuts: {} runs and {} cancellations acknowledged; filesystem \
         requests {:?}; {} syncs recorded",
        ledger.runs.len(),
        ledger.runs.values().filter(|r| r.cancelled).count(),
        fs.op_counts(),
        syncs.len()
    );
    assert!(
        fs.refused().is_empty(),
        "the coordinators used operations the lazy filesystem does not model: {:?}",
        fs.refused()
    );
    assert_eq!(dropped, 0, "the sync record overflowed");
    check_durable_before_answer(&ledger.calls, &syncs, &fs.first_durable());
}

/// The order of syncs and answers, from the filesystem's records: a submission
/// is answered only once its pipeline's unique name is in durable bytes (of a
/// file whose name is durable, not a blob) on a majority of the members; a
/// cancellation (whose command holds nothing unique) only after a sync of a file
/// other than a blob or a snapshot on a majority while the call was open.
fn check_durable_before_answer(
    calls: &[Call],
    syncs: &[SyncEvent],
    first_durable: &[(Vec<u8>, String, Instant)],
) {
    let majority = MEMBERS as usize / 2 + 1;
    let mut durable_at: BTreeMap<&[u8], BTreeMap<u64, Instant>> = BTreeMap::new();
    for (marker, path, at) in first_durable {
        if path.contains("/blobs/") {
            continue;
        }
        if let Some(member) = member_of(path) {
            let first = durable_at
                .entry(marker.as_slice())
                .or_default()
                .entry(member)
                .or_insert(*at);
            *first = (*first).min(*at);
        }
    }
    let log_syncs: Vec<(Instant, u64)> = syncs
        .iter()
        .filter(|s| !s.dir && !s.path.contains("/blobs/") && !s.path.contains("/snapshots/"))
        .filter_map(|s| Some((s.at, member_of(&s.path)?)))
        .collect();
    let early: Vec<String> = calls
        .iter()
        .filter_map(|call| {
            let members: BTreeSet<u64> = match &call.marker {
                Some(marker) => durable_at
                    .get(marker.as_bytes())
                    .map(|by_member| {
                        by_member
                            .iter()
                            .filter(|(_, at)| **at <= call.answered)
                            .map(|(member, _)| *member)
                            .collect()
                    })
                    .unwrap_or_default(),
                None => log_syncs
                    .iter()
                    .filter(|(at, _)| *at >= call.began && *at <= call.answered)
                    .map(|(_, member)| *member)
                    .collect(),
            };
            (members.len() < majority).then(|| {
                format!(
                    "{} (durable before the answer on members {members:?})",
                    call.what
                )
            })
        })
        .collect();
    assert!(
        early.is_empty(),
        "{} of {} acknowledgements came before their command was durable on a majority, \
         e.g. {:?}",
        early.len(),
        calls.len(),
        &early[..early.len().min(5)]
    );
}
