//! The replicated coordinator: three and five real coordinator processes on
//! 127.0.0.1 forming one Raft group; leaders SIGKILLed, followers restarted,
//! minorities frozen with SIGSTOP, members added and removed — and nothing that
//! was acknowledged is ever lost.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::linearizability::{Model, Operation, Verdict, check};
use ferry_tests::{CLIENT, Cluster, parse_run_id, step_of, wait_for, write_pipeline};
use serde_json::Value;

pub(crate) const HELLO: &str = "name: hello\nsteps:\n  - name: hello\n    command: [\"true\"]\n";

/// Submits runs of a trivial pipeline from a thread until stopped, recording every
/// acknowledged run id with when its call began and when it was acknowledged.
pub(crate) struct Submitter {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Instant, Instant, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Submitter {
    pub(crate) fn start(cluster: &Arc<Cluster>, pipeline: std::path::PathBuf) -> Submitter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (cluster, stop, acked) = (cluster.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let path = pipeline.to_str().expect("utf-8").to_string();
                // Bounded in count as well as by the stop flag.
                for _ in 0..200 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let invoked = Instant::now();
                    let result = cluster.ferry(&["run", &path]);
                    if result.success()
                        && let Some(id) = parse_run_id(&result.stdout)
                    {
                        acked.lock().unwrap().push((invoked, Instant::now(), id));
                    }
                }
            })
        };
        Submitter {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    pub(crate) fn acked(&self) -> Vec<(Instant, Instant, u64)> {
        self.acked.lock().unwrap().clone()
    }

    pub(crate) fn finish(mut self) -> Vec<(Instant, Instant, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("submitter thread");
        }
        self.acked()
    }
}

#[test]
fn three_members_elect_one_leader_and_every_member_agrees() {
    let cluster = Cluster::start_replicated(3, "");
    let leader = cluster.leader(Duration::from_secs(30));
    for member in 1..=3 {
        let status = wait_for(Duration::from_secs(10), "a full status", || {
            let result = cluster.ferry_at(member, &["cluster", "status", "--output", "json"]);
            let status = result.success().then(|| result.json())?;
            let members = status["members"].as_array()?;
            (members.len() == 3 && members.iter().all(|m| m["reachable"] == true)).then_some(status)
        });
        assert_eq!(status["leader_id"], leader, "member {member}: {status:#}");
        assert_eq!(status["answered_by"], member, "{status:#}");
        let members = status["members"].as_array().unwrap();
        let leaders: Vec<&Value> = members.iter().filter(|m| m["role"] == "leader").collect();
        assert_eq!(leaders.len(), 1, "{status:#}");
        assert_eq!(leaders[0]["id"], leader, "{status:#}");
        let terms: BTreeSet<u64> = members.iter().filter_map(|m| m["term"].as_u64()).collect();
        assert_eq!(terms.len(), 1, "one term on every member: {status:#}");
        for m in members {
            assert!(
                m["client_address"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
            );
        }
    }
    // The plain table names the leader too.
    let table = cluster.ferry(&["cluster", "status"]);
    assert!(table.success(), "{table:?}");
    assert!(table.stdout.contains("leader"), "{table:?}");
}

#[test]
fn killing_the_leader_mid_run_loses_no_acknowledged_write_and_runs_no_step_twice() {
    let mut cluster = Cluster::start_replicated(3, "");
    cluster.add_worker("worker-a", "");
    cluster.add_worker("worker-b", "");
    // `slow` runs until the test opens its gate, once a new leader is elected:
    // it certainly runs across the failover, however slow this machine is.
    let pipeline = write_pipeline(
        &cluster.path("pipeline"),
        r#"
name: survive
params:
  gate: ""
steps:
  - name: slow
    params: [gate]
    shell: |
      n=0
      while [ ! -e "$FERRY_PARAM_GATE" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
      echo trained > model.txt
    outputs: [model.txt]
  - name: after
    command: ["sh", "-c", "cat inputs/model/model.txt > copy.txt"]
    inputs:
      model: slow/model.txt
    outputs: [copy.txt]
"#,
        &[],
    );
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let gate = cluster.path("gate");
    let gate_param = format!("gate={}", gate.display());
    let run = cluster.submit(&pipeline, &["--param", &gate_param]);
    cluster.wait_step(run, "slow", "running", Duration::from_secs(30));
    let cluster = Arc::new(cluster);
    let submitter = Submitter::start(&cluster, hello);
    wait_for(
        Duration::from_secs(30),
        "a few acknowledged submissions",
        || (submitter.acked().len() >= 3).then_some(()),
    );

    let leader = cluster.leader(Duration::from_secs(10));
    let killed_at = Instant::now();
    cluster.signal_member(leader, nix::sys::signal::Signal::SIGKILL);
    let first_write = wait_for(
        Duration::from_secs(30),
        "a write acknowledged after the leader died",
        || {
            submitter
                .acked()
                .into_iter()
                .find(|(invoked, _, _)| *invoked > killed_at)
                .map(|(_, acked, _)| acked - killed_at)
        },
    );
    println!("leader {leader} SIGKILLed: the next write was acknowledged after {first_write:?}");
    wait_for(Duration::from_secs(10), "a new leader", || {
        let status = cluster.cluster_status()?;
        let new_leader = status["leader_id"].as_u64()?;
        (new_leader != 0 && new_leader != leader).then_some(())
    });
    assert_eq!(
        step_of(&cluster.status(run), "slow")["state"],
        "running",
        "the gate holds the step across the failover"
    );
    std::fs::write(&gate, "go").expect("open the gate");

    let status = cluster.wait_run(run, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    for step in ["slow", "after"] {
        let attempts = step_of(&status, step)["attempts"].as_array().unwrap().len();
        assert_eq!(attempts, 1, "step {step} ran once: {status:#}");
    }
    // The artifact made before the failover is served by the new leader.
    let out = cluster.path("copy.txt");
    let got = cluster.ferry(&[
        "artifacts",
        "get",
        &run.to_string(),
        "after",
        "copy.txt",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(got.success(), "{got:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "trained\n");
    // And so is the step's log, kept on a majority with its report.
    let logs = cluster.ferry(&["logs", &run.to_string(), "slow"]);
    assert!(logs.success(), "{logs:?}");

    let acked = submitter.finish();
    assert!(acked.len() >= 4, "{acked:?}");
    let stored = cluster.run_ids(None, false).expect("runs listed");
    for (_, _, id) in &acked {
        assert!(
            stored.contains(id),
            "acknowledged run {id} is missing: {stored:?}"
        );
    }
}

#[test]
fn a_restarted_follower_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start_replicated(3, "[raft]\nsnapshot_every = 8\n");
    let leader = cluster.leader(Duration::from_secs(30));
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill_member(follower);
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let mut submitted = BTreeSet::new();
    for _ in 0..20 {
        submitted.insert(cluster.submit(&hello, &[]));
    }
    // The leader compacts in the background after applying: wait for it, so
    // that the follower, far behind, can only catch up through a snapshot.
    wait_for(
        Duration::from_secs(30),
        "the leader to compact its log",
        || {
            cluster
                .member_log(leader)
                .contains("log compacted into a snapshot")
                .then_some(())
        },
    );
    cluster.spawn_coordinator(follower, false);
    let caught_up = wait_for(Duration::from_secs(30), "the follower to catch up", || {
        let ids = cluster.run_ids(Some(follower), true)?;
        submitted.is_subset(&ids).then_some(ids)
    });
    assert_eq!(caught_up, submitted);
    assert!(
        cluster
            .member_log(follower)
            .contains("installing a snapshot from the leader"),
        "{}",
        cluster.member_log(follower)
    );
    // It keeps following after the snapshot: a later write reaches it too.
    let later = cluster.submit(&hello, &[]);
    wait_for(
        Duration::from_secs(30),
        "the later write on the follower",
        || {
            cluster
                .run_ids(Some(follower), true)?
                .contains(&later)
                .then_some(())
        },
    );
}

#[test]
fn an_isolated_minority_accepts_no_write_and_answers_no_linearizable_read() {
    let cluster = Cluster::start_replicated(3, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let before = cluster.submit(&hello, &[]);
    let leader = cluster.leader(Duration::from_secs(30));
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.pause_member(*id, true);
    }
    // The old leader is now a minority of one.
    let path = hello.to_str().unwrap();
    let write = cluster.ferry_at(leader, &["run", path]);
    assert!(!write.success(), "a minority accepted a write: {write:?}");
    let read = cluster.ferry_at(leader, &["runs"]);
    assert!(
        !read.success(),
        "a minority answered a linearizable read: {read:?}"
    );
    // Its own (stale) copy still answers when asked for explicitly.
    let stale = cluster.run_ids(Some(leader), true).expect("stale read");
    assert!(stale.contains(&before));

    for id in &followers {
        cluster.pause_member(*id, false);
    }
    let after = wait_for(Duration::from_secs(30), "a write after healing", || {
        let result = cluster.ferry(&["run", path]);
        result
            .success()
            .then(|| parse_run_id(&result.stdout))
            .flatten()
    });
    let ids = wait_for(
        Duration::from_secs(30),
        "every member to hold both runs",
        || {
            let all: Vec<BTreeSet<u64>> = (1..=3)
                .map(|id| cluster.run_ids(Some(id), true))
                .collect::<Option<_>>()?;
            all.iter()
                .all(|ids| ids.contains(&before) && ids.contains(&after))
                .then(|| all[0].clone())
        },
    );
    assert!(after > before, "no state went backwards: {ids:?}");
}

#[test]
fn five_members_survive_two_failures() {
    let mut cluster = Cluster::start_replicated(5, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let first = cluster.submit(&hello, &[]);
    let leader = cluster.leader(Duration::from_secs(30));
    let other = (1..=5).find(|id| *id != leader).unwrap();
    cluster.kill_member(leader);
    cluster.kill_member(other);
    let second = wait_for(
        Duration::from_secs(30),
        "a write with two members down",
        || {
            let result = cluster.ferry(&["run", hello.to_str().unwrap()]);
            result
                .success()
                .then(|| parse_run_id(&result.stdout))
                .flatten()
        },
    );
    let ids = cluster.run_ids(None, false).expect("linearizable read");
    assert!(ids.contains(&first) && ids.contains(&second), "{ids:?}");
    let status = cluster.cluster_status().expect("status");
    let unreachable = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reachable"] == false)
        .count();
    assert_eq!(unreachable, 2, "{status:#}");
}

#[test]
fn all_members_stopped_and_started_again_hold_identical_state() {
    let mut cluster = Cluster::start_replicated(3, "");
    cluster.add_worker("worker-a", "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let runs: Vec<u64> = (0..3).map(|_| cluster.submit(&hello, &[])).collect();
    for run in &runs {
        cluster.wait_run(*run, Duration::from_secs(30));
    }
    let before = cluster.runs_listing(None, false).expect("runs listed");
    let statuses: Vec<Value> = runs.iter().map(|run| cluster.status(*run)).collect();
    for id in 1..=3 {
        cluster.terminate_member(id);
    }
    for id in 1..=3 {
        cluster.spawn_coordinator(id, false);
    }
    cluster.wait_answering();
    for id in 1..=3 {
        let same = wait_for(Duration::from_secs(30), "member to catch up", || {
            let here = cluster.runs_listing(Some(id), true)?;
            (here == before).then_some(here)
        });
        assert_eq!(same, before);
    }
    for (run, status) in runs.iter().zip(&statuses) {
        let again = cluster.status(*run);
        assert_eq!(again["steps"], status["steps"], "run {run}");
        assert_eq!(again["state"], status["state"], "run {run}");
    }
}

#[test]
fn members_are_added_and_removed_while_runs_are_submitted() {
    let mut cluster = Cluster::start_replicated(3, &format!("admins = [\"{CLIENT}\"]\n"));
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let address = cluster.add_coordinator_slot(4);
    cluster.spawn_coordinator(4, true);
    let cluster = Arc::new(cluster);
    let submitter = Submitter::start(&cluster, hello);
    wait_for(Duration::from_secs(30), "a first submission", || {
        (!submitter.acked().is_empty()).then_some(())
    });
    let added = cluster.ferry(&[
        "cluster",
        "add-member",
        "--id",
        "4",
        "--client-address",
        &address,
    ]);
    assert!(added.success(), "{added:?}");
    wait_for(Duration::from_secs(30), "member 4 to follow", || {
        let status = cluster.cluster_status()?;
        status["members"]
            .as_array()?
            .iter()
            .any(|m| m["id"] == 4 && m["role"] == "follower")
            .then_some(())
    });
    let removed = cluster.ferry(&["cluster", "remove-member", "--id", "1"]);
    assert!(removed.success(), "{removed:?}");
    let acked = submitter.finish();
    let mut cluster = Arc::try_unwrap(cluster)
        .ok()
        .expect("the submitter has stopped");
    wait_for(
        Duration::from_secs(30),
        "the removed member to stop",
        || cluster.member_exited(1).then_some(()),
    );
    let status = cluster.cluster_status().expect("status");
    let ids: BTreeSet<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, BTreeSet::from([2, 3, 4]), "{status:#}");
    // The new member holds every acknowledged run.
    let on_new = wait_for(
        Duration::from_secs(30),
        "member 4 to hold every run",
        || {
            let ids = cluster.run_ids(Some(4), true)?;
            acked
                .iter()
                .all(|(_, _, id)| ids.contains(id))
                .then_some(ids)
        },
    );
    assert!(!on_new.is_empty());
    // A removed member refuses to serve again.
    cluster.kill_member(1);
    cluster.spawn_coordinator(1, false);
    wait_for(
        Duration::from_secs(15),
        "the removed member to refuse to start",
        || cluster.member_exited(1).then_some(()),
    );
    assert!(cluster.member_log(1).contains("removed from the cluster"));
}

/// The sequential specification the cluster must look like: a counter of runs,
/// where a submission returns the new run's id (ids are handed out in order).
#[derive(Clone, Hash, PartialEq, Eq, Debug)]
struct RunCounter(u64);

#[derive(Clone, Debug)]
enum RunOp {
    Submit,
    Count,
}

impl Model for RunCounter {
    type Input = RunOp;
    type Output = u64;

    fn step(&self, input: &RunOp) -> (RunCounter, u64) {
        match input {
            RunOp::Submit => (RunCounter(self.0 + 1), self.0 + 1),
            RunOp::Count => (self.clone(), self.0),
        }
    }
}

#[test]
fn concurrent_clients_see_a_linearizable_history_across_leader_kills() {
    let cluster = Arc::new(Cluster::start_replicated(5, ""));
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..3)
        .map(|client| {
            let (cluster, stop, history) = (cluster.clone(), stop.clone(), history.clone());
            let path = hello.to_str().unwrap().to_string();
            std::thread::spawn(move || {
                // Bounded in count and by the stop flag.
                for n in 0..60 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let op = if (n + client) % 2 == 0 {
                        RunOp::Submit
                    } else {
                        RunOp::Count
                    };
                    let invoked = start.elapsed().as_nanos();
                    let output = match op {
                        RunOp::Submit => {
                            let result = cluster.ferry(&["run", &path]);
                            result
                                .success()
                                .then(|| parse_run_id(&result.stdout))
                                .flatten()
                        }
                        RunOp::Count => cluster.run_ids(None, false).map(|ids| ids.len() as u64),
                    };
                    let returned = output.map(|value| (start.elapsed().as_nanos(), value));
                    if returned.is_none() && matches!(op, RunOp::Count) {
                        // A failed read had no effect: leave it out of the history.
                        continue;
                    }
                    history.lock().unwrap().push(Operation {
                        client,
                        input: op,
                        invoked,
                        returned,
                    });
                }
            })
        })
        .collect();
    // Before each kill and after the last one, the clients get two more
    // submissions acknowledged: waiting for that rather than for a fixed time,
    // which a slow machine may fill with nothing, is what makes the history
    // long enough to mean something.
    let acknowledged = || {
        history
            .lock()
            .unwrap()
            .iter()
            .filter(|op: &&Operation<RunOp, u64>| {
                matches!(op.input, RunOp::Submit) && op.returned.is_some()
            })
            .count()
    };
    let two_more_writes = || {
        let target = acknowledged() + 2;
        wait_for(
            Duration::from_secs(60),
            "two more acknowledged submissions",
            || (acknowledged() >= target).then_some(()),
        );
    };
    let mut killed = Vec::new();
    for _ in 0..2 {
        two_more_writes();
        let leader = wait_for(Duration::from_secs(15), "a live leader", || {
            let leader = cluster.cluster_status()?["leader_id"].as_u64()?;
            (leader != 0 && !killed.contains(&leader)).then_some(leader)
        });
        cluster.signal_member(leader, nix::sys::signal::Signal::SIGKILL);
        killed.push(leader);
    }
    two_more_writes();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    let history = history.lock().unwrap().clone();
    let completed = history.iter().filter(|op| op.returned.is_some()).count();
    let submits = history
        .iter()
        .filter(|op| matches!(op.input, RunOp::Submit) && op.returned.is_some())
        .count();
    println!(
        "{} operations ({completed} completed, {submits} acknowledged submissions) across the kills of leaders {killed:?}",
        history.len()
    );
    assert!(submits >= 5, "too few writes to mean anything: {history:?}");
    match check(RunCounter(0), &history, 2_000_000) {
        Verdict::Linearizable { .. } => {}
        other => panic!("the history is not linearizable: {other:?}"),
    }
}
