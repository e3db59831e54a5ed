//! Membership changes cannot take a cluster down: a new member joins as a
//! learner and votes only once the leader reached it as a coordinator and it
//! caught up; a member that never starts stays a harmless learner and can be
//! removed; a removal that would leave no reachable quorum is refused with its
//! reason; only administrators change the membership. Real coordinator
//! processes on 127.0.0.1.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::{CLIENT, Cluster, free_port, wait_for, write_pipeline};
use serde_json::Value;

use crate::t70_replication::{HELLO, Submitter};

/// The configuration line that makes the test's client an administrator.
fn admins() -> String {
    format!("admins = [\"{CLIENT}\"]\n")
}

/// Member `id`'s entry in a `cluster status` answer.
fn member(status: &Value, id: u64) -> Option<Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

fn member_ids(status: &Value) -> BTreeSet<u64> {
    status["members"]
        .as_array()
        .map(|members| members.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// `cluster status` as the leader answers it (it alone knows what a learner's
/// promotion waits for, and when it last heard from each member).
fn status_from_leader(cluster: &Cluster) -> Value {
    wait_for(
        Duration::from_secs(30),
        "the leader's cluster status",
        || {
            let leader = cluster.leader(Duration::from_secs(30));
            let result = cluster.ferry_at(leader, &["cluster", "status", "--output", "json"]);
            let status = result.success().then(|| result.json())?;
            (status["answered_by"] == leader).then_some(status)
        },
    )
}

#[test]
fn adding_a_member_where_nothing_listens_leaves_a_removable_learner_and_the_cluster_up() {
    let mut cluster = Cluster::start_replicated(1, &admins());
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    cluster.submit(&hello, &[]);
    // Nothing listens at this port (reserved for this test, never bound).
    let nowhere = format!("127.0.0.1:{}", free_port());

    // A non-administrator may not add it, and nothing changes.
    cluster
        .pki
        .issue("client", "bob")
        .expect("bob's certificate");
    let refused = cluster.ferry_as(
        "bob",
        &[
            "cluster",
            "add-member",
            "--id",
            "2",
            "--client-address",
            &nowhere,
        ],
    );
    assert!(!refused.success(), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("may not change the cluster's membership")
            && refused.stderr.contains("`admins` in coordinator.toml"),
        "{refused:?}"
    );
    let status = cluster.cluster_status().expect("status");
    assert_eq!(member_ids(&status), BTreeSet::from([1]), "{status:#}");

    // The exact call of the issue: a one-member cluster adds a member at an
    // address where nothing listens. It becomes a learner.
    let added = cluster.ferry(&[
        "cluster",
        "add-member",
        "--id",
        "2",
        "--client-address",
        &nowhere,
        "--output",
        "json",
    ]);
    assert!(added.success(), "{added:?}");
    let phantom = member(&added.json(), 2).expect("member 2 listed");
    assert_eq!(phantom["learner"], true, "{phantom:#}");

    // The cluster keeps committing, and keeps doing so across a restart (a
    // second voter that never answers would have cost it its quorum for good).
    let before = cluster.submit(&hello, &[]);
    cluster.terminate_member(1);
    cluster.spawn_coordinator(1, false);
    cluster.wait_answering();
    let after = cluster.submit(&hello, &[]);
    assert!(after > before);

    // Its status says it is a learner and why it is not promoted.
    let status = wait_for(
        Duration::from_secs(30),
        "the phantom's promotion note",
        || {
            let status = status_from_leader(&cluster);
            let phantom = member(&status, 2)?;
            let note = phantom["promotion"].as_str()?;
            note.contains("waiting to reach it as a coordinator")
                .then_some(status)
        },
    );
    let phantom = member(&status, 2).expect("member 2");
    assert_eq!(phantom["learner"], true, "{status:#}");
    assert_eq!(phantom["reachable"], false, "{status:#}");
    assert_eq!(
        member(&status, 1).expect("member 1")["role"],
        "leader",
        "{status:#}"
    );
    let table = cluster.ferry(&["cluster", "status"]);
    assert!(
        table.stdout.contains("learner (unreachable)")
            && table.stdout.contains("promotion: waiting to reach it"),
        "{table:?}"
    );

    // A non-administrator may not remove it either; an administrator may.
    let refused = cluster.ferry_as("bob", &["cluster", "remove-member", "--id", "2"]);
    assert!(!refused.success(), "{refused:?}");
    assert!(
        refused.stderr.contains("PermissionDenied") && refused.stderr.contains("the admin role"),
        "{refused:?}"
    );
    assert_eq!(
        member_ids(&cluster.cluster_status().expect("status")),
        BTreeSet::from([1, 2])
    );
    let removed = cluster.ferry(&["cluster", "remove-member", "--id", "2"]);
    assert!(removed.success(), "{removed:?}");
    let status = cluster.cluster_status().expect("status");
    assert_eq!(member_ids(&status), BTreeSet::from([1]), "{status:#}");
    cluster.submit(&hello, &[]);
}

#[test]
fn a_fourth_member_catches_up_under_load_is_promoted_and_holds_every_run() {
    let mut cluster = Cluster::start_replicated(3, &admins());
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let earlier: Vec<u64> = (0..3).map(|_| cluster.submit(&hello, &[])).collect();
    let address = cluster.add_coordinator_slot(4);
    // Added before its process starts: a learner the leader cannot reach yet,
    // which votes in nothing.
    let added = cluster.ferry(&[
        "cluster",
        "add-member",
        "--id",
        "4",
        "--client-address",
        &address,
        "--output",
        "json",
    ]);
    assert!(added.success(), "{added:?}");
    assert_eq!(member(&added.json(), 4).expect("member 4")["learner"], true);
    wait_for(
        Duration::from_secs(30),
        "the leader to say why member 4 waits",
        || {
            let status = status_from_leader(&cluster);
            let learner = member(&status, 4)?;
            (learner["learner"] == true
                && learner["promotion"]
                    .as_str()?
                    .contains("waiting to reach it as a coordinator"))
            .then_some(())
        },
    );
    cluster.submit(&hello, &[]);

    // It starts while submissions flow; it copies the state, catches up and is
    // promoted.
    cluster.spawn_coordinator(4, true);
    let cluster = Arc::new(cluster);
    let submitter = Submitter::start(&cluster, hello);
    let promoted = wait_for(
        Duration::from_secs(60),
        "member 4 to be promoted to a voter",
        || {
            let status = cluster.cluster_status()?;
            let new = member(&status, 4)?;
            (new["learner"] == false && new["role"] == "follower").then_some(status)
        },
    );
    // A few more submissions after the promotion, committed with four voters.
    let promoted_at = submitter.acked().len();
    wait_for(
        Duration::from_secs(30),
        "submissions after the promotion",
        || (submitter.acked().len() >= promoted_at + 3).then_some(()),
    );
    let acked = submitter.finish();
    let voters = promoted["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["learner"] == false)
        .count();
    assert_eq!(voters, 4, "{promoted:#}");
    // Member 4 holds every acknowledged run, from before it was added to after
    // it was promoted.
    let expected: BTreeSet<u64> = earlier
        .iter()
        .copied()
        .chain(acked.iter().map(|(_, _, id)| *id))
        .collect();
    wait_for(
        Duration::from_secs(30),
        "member 4 to hold every run",
        || {
            let ids = cluster.run_ids(Some(4), true)?;
            ids.is_superset(&expected).then_some(())
        },
    );
}

#[test]
fn a_removal_that_would_leave_no_reachable_quorum_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::start_replicated(3, &admins());
    let hello = write_pipeline(&cluster.path("hello"), HELLO, &[]);
    let leader = cluster.leader(Duration::from_secs(30));
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (dead, live) = (followers[0], followers[1]);
    cluster.kill_member(dead);
    // Wait until the leader has not heard from the dead member for well over
    // an election timeout (500 ms here).
    wait_for(
        Duration::from_secs(30),
        "the leader to miss the dead member",
        || {
            let status = status_from_leader(&cluster);
            let gone = member(&status, dead)?;
            (gone["reachable"] == false && gone["last_contact_ms"].as_i64()? > 2_000).then_some(())
        },
    );
    let refused = cluster.ferry(&["cluster", "remove-member", "--id", &live.to_string()]);
    assert!(!refused.success(), "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "removing member {live} would leave the cluster without a reachable quorum"
        )),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains(&format!("not from {dead}")),
        "the refusal names the unreachable voter: {refused:?}"
    );
    // Nothing changed: three members, and the cluster still commits.
    let status = status_from_leader(&cluster);
    assert_eq!(member_ids(&status), BTreeSet::from([1, 2, 3]), "{status:#}");
    assert!(
        status["members"]
            .as_array()
            .expect("members")
            .iter()
            .all(|m| m["learner"] == false),
        "{status:#}"
    );
    cluster.submit(&hello, &[]);
    // Removing the dead member instead is safe (the two left are live).
    let removed = cluster.ferry(&["cluster", "remove-member", "--id", &dead.to_string()]);
    assert!(removed.success(), "{removed:?}");
    let status = cluster.cluster_status().expect("status");
    assert_eq!(
        member_ids(&status),
        BTreeSet::from([leader, live]),
        "{status:#}"
    );
    cluster.submit(&hello, &[]);
}
