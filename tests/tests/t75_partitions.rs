//! Real partitions: each member in a network namespace of its own, its links to
//! the other members cut, made lossy and slow, or cut one way by iptables rules
//! and the harness's proxies (`ferry_tests::netns`), while the member keeps
//! running and its clients keep reaching it. An isolated leader steps down and
//! acknowledges nothing; clients fail over; a flaky link loses nothing; a
//! healed partition converges; and a random nemesis of kills, partitions and
//! heals leaves a linearizable history (`ferry_tests::chaos`). These tests need
//! root (`ip netns add`, iptables).

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_tests::chaos::{ChaosOptions, fresh_seed};
use ferry_tests::linearizability::Verdict;
use ferry_tests::{Cluster, parse_run_id, wait_for, write_pipeline};
use serde_json::Value;

const HELLO: &str = "name: hello\nsteps:\n  - name: hello\n    command: [\"true\"]\n";
/// Submitted only to a member that is cut off: none of these may ever commit.
const CUT_OFF: &str = "name: cut-off\nsteps:\n  - name: hello\n    command: [\"true\"]\n";

/// `ferry cluster status` answered by member `id` itself.
fn status_at(cluster: &Cluster, id: u64) -> Option<Value> {
    let result = cluster.ferry_at(id, &["cluster", "status", "--output", "json"]);
    result.success().then(|| result.json())
}

/// The role member `id` reports for itself.
fn own_role(cluster: &Cluster, id: u64) -> Option<String> {
    let status = status_at(cluster, id)?;
    let members = status["members"].as_array()?;
    let me = members.iter().find(|m| m["id"] == id)?;
    me["role"].as_str().map(str::to_string)
}

/// The leader member `id` knows of (0: none).
fn leader_seen_by(cluster: &Cluster, id: u64) -> Option<u64> {
    status_at(cluster, id)?["leader_id"].as_u64()
}

/// The runs of member `id`'s own copy: id to pipeline name.
fn runs_at(cluster: &Cluster, id: u64) -> Option<Vec<(u64, String)>> {
    let listing = cluster.runs_listing(Some(id), true)?;
    Some(
        listing
            .as_array()?
            .iter()
            .filter_map(|run| Some((run["run"].as_u64()?, run["pipeline"].as_str()?.to_string())))
            .collect(),
    )
}

/// Waits until every member's own copy holds the same runs, including
/// `acknowledged`, and returns them.
fn wait_converged(cluster: &Cluster, acknowledged: &BTreeSet<u64>) -> Vec<(u64, String)> {
    let ids: Vec<u64> = cluster.coordinators.iter().map(|c| c.id).collect();
    wait_for(
        Duration::from_secs(60),
        "every member to hold the same runs, every acknowledged one among them",
        || {
            let all: Vec<Vec<(u64, String)>> = ids
                .iter()
                .map(|id| runs_at(cluster, *id))
                .collect::<Option<_>>()?;
            let held: BTreeSet<u64> = all[0].iter().map(|(run, _)| *run).collect();
            (all.iter().all(|runs| *runs == all[0]) && held.is_superset(acknowledged))
                .then(|| all[0].clone())
        },
    )
}

/// The run id a `ferry run` acknowledged, if it did.
fn submitted(result: ferry_tests::CliResult) -> Option<u64> {
    result
        .success()
        .then(|| parse_run_id(&result.stdout))
        .flatten()
}

#[test]
fn an_isolated_leader_steps_down_acknowledges_nothing_and_its_clients_fail_over() {
    let cluster = Cluster::start_partitionable(3, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let cut_off = write_pipeline(&cluster.path("cut-off"), CUT_OFF, &[]);
    let (hello, cut_off) = (hello.to_str().unwrap(), cut_off.to_str().unwrap());
    let mut acknowledged = BTreeSet::new();
    acknowledged.insert(submitted(cluster.ferry(&["run", hello])).expect("a first run"));
    let old = cluster.leader(Duration::from_secs(30));
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();

    cluster.network().isolate(old);
    // The majority elects a new leader; the old one keeps running, learns that
    // it lost its quorum (check-quorum) and steps down.
    let new = wait_for(Duration::from_secs(30), "a new leader", || {
        let leader = leader_seen_by(&cluster, others[0])?;
        (leader != 0 && leader != old).then_some(leader)
    });
    wait_for(
        Duration::from_secs(30),
        "the isolated leader to step down",
        || (own_role(&cluster, old)? != "leader").then_some(()),
    );
    // Still reachable by its own clients: its own copy answers a stale read.
    let stale = cluster
        .run_ids(Some(old), true)
        .expect("a stale read at the cut-off member");
    assert!(stale.is_superset(&acknowledged), "{stale:?}");
    // It acknowledges nothing and answers no linearizable read.
    for _ in 0..2 {
        let write = cluster.ferry_at(old, &["run", cut_off]);
        assert!(
            !write.success(),
            "a cut-off member acknowledged a write: {write:?}"
        );
    }
    let read = cluster.ferry_at(old, &["runs"]);
    assert!(
        !read.success(),
        "a cut-off member answered a linearizable read: {read:?}"
    );

    // A client whose first address is the old leader fails over to the new one.
    let mut order = vec![old];
    order.extend(&others);
    for _ in 0..2 {
        let run = submitted(cluster.ferry_via(&order, &["run", hello]))
            .expect("a client of the cut-off leader fails over to the new leader");
        acknowledged.insert(run);
    }
    let ids = cluster
        .run_ids(Some(new), false)
        .expect("a linearizable read at the new leader");
    assert!(
        ids.is_superset(&acknowledged),
        "{ids:?} lacks some of {acknowledged:?}"
    );

    cluster.network().heal();
    acknowledged.insert(wait_for(
        Duration::from_secs(30),
        "a write after the heal",
        || submitted(cluster.ferry(&["run", hello])),
    ));
    let runs = wait_converged(&cluster, &acknowledged);
    let leaked: Vec<_> = runs.iter().filter(|(_, p)| p == "cut-off").collect();
    assert!(
        leaked.is_empty(),
        "writes sent only to the cut-off member took effect: {leaked:?}"
    );
    let held: BTreeSet<u64> = runs.iter().map(|(run, _)| *run).collect();
    assert_eq!(
        held, acknowledged,
        "runs that nobody acknowledged: {runs:?}"
    );
}

#[test]
fn a_flaky_link_between_the_leader_and_a_follower_loses_nothing_and_converges() {
    let cluster = Cluster::start_partitionable(3, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let hello = hello.to_str().unwrap();
    let leader = cluster.leader(Duration::from_secs(30));
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster
        .network()
        .flaky(leader, follower, 0.3, Duration::from_millis(40));
    let mut acknowledged = BTreeSet::new();
    let mut failed = 0;
    for n in 0..12 {
        // Every member's address, and the follower behind the flaky link alone.
        let result = if n % 2 == 0 {
            cluster.ferry(&["run", hello])
        } else {
            cluster.ferry_at(follower, &["run", hello])
        };
        match submitted(result) {
            Some(run) => {
                acknowledged.insert(run);
            }
            None => failed += 1,
        }
        // A linearizable read at any member never misses an acknowledged run.
        if let Some(ids) = cluster.run_ids(None, false) {
            assert!(
                ids.is_superset(&acknowledged),
                "{ids:?} lacks some of {acknowledged:?}"
            );
        }
    }
    println!(
        "{} acknowledged, {failed} failed over the flaky link",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 6,
        "too few writes acknowledged through a flaky link: {acknowledged:?}"
    );
    cluster.network().heal();
    let runs = wait_converged(&cluster, &acknowledged);
    let held: BTreeSet<u64> = runs.iter().map(|(run, _)| *run).collect();
    // A failed call may have taken effect; nothing else may appear.
    assert!(held.len() <= acknowledged.len() + failed, "{runs:?}");
}

#[test]
fn writes_through_a_follower_behind_a_lossy_link_succeed() {
    let cluster = Cluster::start_partitionable(3, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let hello = hello.to_str().unwrap();
    let leader = cluster.leader(Duration::from_secs(30));
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster
        .network()
        .flaky(leader, follower, 0.3, Duration::from_millis(20));
    for _ in 0..10 {
        let write = cluster.ferry_at(follower, &["run", hello]);
        assert!(
            write.success(),
            "a write through the follower failed: {write:?}"
        );
    }
}

#[test]
fn one_way_and_two_way_cuts_heal_and_every_member_converges() {
    let cluster = Cluster::start_partitionable(3, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let hello = hello.to_str().unwrap();
    let leader = cluster.leader(Duration::from_secs(30));
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let mut acknowledged = BTreeSet::new();
    let write = |acknowledged: &mut BTreeSet<u64>, what: &str| {
        let run = wait_for(Duration::from_secs(30), what, || {
            submitted(cluster.ferry(&["run", hello]))
        });
        acknowledged.insert(run);
        run
    };

    // One way: the leader's messages no longer reach the first follower, whose
    // own messages still reach the leader. The other two go on committing.
    cluster.network().cut(leader, followers[0]);
    write(
        &mut acknowledged,
        "a write with one direction of one link cut",
    );
    let lagging = write(&mut acknowledged, "a second write with one direction cut");
    let behind = cluster
        .run_ids(Some(followers[0]), true)
        .expect("a stale read at the follower");
    assert!(
        !behind.contains(&lagging),
        "the follower received entries over a cut link: {behind:?}"
    );
    cluster.network().heal();
    wait_converged(&cluster, &acknowledged);

    // Both ways, the other follower: it stays out while the rest commit.
    cluster.network().cut_both(leader, followers[1]);
    cluster.network().cut_both(followers[0], followers[1]);
    let missed = write(&mut acknowledged, "a write with a follower cut off");
    let behind = cluster
        .run_ids(Some(followers[1]), true)
        .expect("a stale read at the cut-off follower");
    assert!(!behind.contains(&missed), "{behind:?}");
    cluster.network().heal_between(leader, followers[1]);
    cluster.network().heal_between(followers[0], followers[1]);
    write(&mut acknowledged, "a write after the heal");
    let runs = wait_converged(&cluster, &acknowledged);
    let held: BTreeSet<u64> = runs.iter().map(|(run, _)| *run).collect();
    assert_eq!(held, acknowledged);
    assert!(cluster.network().faults().is_empty());
}

#[test]
fn a_write_to_a_healthy_follower_succeeds_while_the_old_leader_is_cut_off() {
    let cluster = Cluster::start_partitionable(3, "");
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let hello = hello.to_str().unwrap();
    let old = cluster.leader(Duration::from_secs(30));
    let follower = (1..=3).find(|id| *id != old).unwrap();
    cluster.network().isolate(old);
    // One call, at a member of the majority only, sent while it may still
    // take the old leader for the leader: it must race the election and land.
    let write = cluster.ferry_at(follower, &["run", hello]);
    assert!(write.success(), "{write:?}");
    let run = parse_run_id(&write.stdout).expect("a run id");
    cluster.network().heal();
    let acknowledged = BTreeSet::from([run]);
    wait_converged(&cluster, &acknowledged);
}

#[test]
fn a_nemesis_of_kills_partitions_and_heals_leaves_a_linearizable_history() {
    let seed = std::env::var("FERRY_CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(fresh_seed);
    let options = ChaosOptions::new(Duration::from_secs(15), seed);
    let report = ferry_tests::chaos::run(&options, &mut |line| println!("{line}"));
    println!("replay: FERRY_CHAOS_SEED={seed} (or ferry-bench chaos --seed {seed})");
    assert!(
        report.acknowledged_submissions >= 3,
        "too few writes to mean anything (seed {seed}): {report:?}"
    );
    match &report.verdict {
        Verdict::Linearizable { .. } => {}
        other => panic!("seed {seed}: the history is not linearizable: {other:?}"),
    }
    assert!(
        report.converged,
        "seed {seed}: the members did not converge: {report:?}"
    );
}
