//! The audit log (issue 16): every accepted or refused mutating request is
//! recorded once, with time, caller, project, summary and outcome; it is
//! replicated, so it survives the leader's death with every accepted command
//! in it exactly once; `ferry audit` filters by time, user and project, shows
//! administrators everything and a project's owners their project only; the
//! leader trims it by `[audit] max_records`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_tests::{CliResult, Cluster, wait_for};
use serde_json::Value;

fn audit(cluster: &Cluster, user: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--output", "json"];
    all.extend_from_slice(args);
    let result = cluster.ferry_as(user, &all);
    assert!(result.success(), "ferry audit as {user}: {result:?}");
    result
        .json()
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not a list: {result:?}"))
}

fn issue_clients(cluster: &Cluster, names: &[&str]) {
    for name in names {
        cluster
            .pki
            .issue("client", name)
            .expect("client certificate");
    }
}

fn field<'a>(record: &'a Value, name: &str) -> &'a str {
    record[name].as_str().unwrap_or_default()
}

/// One CLI call of the test and the summary its record carries.
struct Call {
    args: Vec<String>,
    summary: String,
    result: Option<CliResult>,
}

fn calls() -> Vec<Call> {
    let mut calls = Vec::new();
    for n in 0..16 {
        let project = format!("team-{n:02}");
        calls.push(Call {
            args: vec!["projects".into(), "create".into(), project.clone()],
            summary: format!("create project \"{project}\" owned by \"root\""),
            result: None,
        });
        // Succeeds again if applied twice: only its id tells a repeat.
        let user = format!("user-{n:02}");
        calls.push(Call {
            args: vec![
                "projects".into(),
                "members".into(),
                "add".into(),
                project.clone(),
                user.clone(),
                "--role".into(),
                "viewer".into(),
            ],
            summary: format!("make \"{user}\" viewer of project \"{project}\""),
            result: None,
        });
    }
    calls
}

#[test]
fn every_accepted_command_is_in_the_log_exactly_once_across_a_leader_kill() {
    let mut cluster = Cluster::start_replicated(3, "admins = [\"root\", \"alice\"]\n");
    issue_clients(&cluster, &["root", "mallory"]);
    let leader = cluster.leader(Duration::from_secs(20));
    let leader_pid = cluster
        .coordinators
        .iter()
        .find(|c| c.id == leader)
        .and_then(|c| c.daemon.as_ref())
        .map(|d| d.pid())
        .expect("the leader runs");

    // The calls go on from another thread while the leader is killed, so
    // that some are in flight when it dies (and are retried by the CLI, or
    // resent by the member that forwarded them).
    let done = AtomicUsize::new(0);
    let calls = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut calls = calls();
            for call in &mut calls {
                let args: Vec<&str> = call.args.iter().map(String::as_str).collect();
                call.result = Some(cluster.ferry_as("root", &args));
                done.fetch_add(1, Ordering::SeqCst);
            }
            calls
        });
        wait_for(Duration::from_secs(60), "some calls to be made", || {
            (done.load(Ordering::SeqCst) >= 6).then_some(())
        });
        // A raw kill of the process, as in a power loss of that machine.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(leader_pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the leader");
        worker.join().expect("the calls")
    });
    cluster.kill_member(leader);
    cluster.spawn_coordinator(leader, false);
    cluster.wait_answering();

    // Refusals, once the cluster is whole again: each recorded once.
    for _ in 0..4 {
        let refused = cluster.ferry_as("mallory", &["projects", "create", "stolen"]);
        assert!(
            !refused.success() && refused.stderr.contains("PermissionDenied"),
            "{refused:?}"
        );
    }

    let records = audit(&cluster, "root", &["--limit", "10000"]);
    let accepted = |summary: &str| {
        records
            .iter()
            .filter(|r| field(r, "summary") == summary && field(r, "outcome") == "accepted")
            .count()
    };
    let mut succeeded = 0;
    for call in &calls {
        let result = call.result.as_ref().expect("made");
        let count = accepted(&call.summary);
        if result.success() {
            succeeded += 1;
            assert_eq!(count, 1, "{:?} accepted once: {records:#?}", call.args);
        } else {
            assert!(count <= 1, "{:?} at most once: {records:#?}", call.args);
        }
    }
    assert!(
        succeeded >= calls.len() - 4,
        "most calls succeed across one leader change"
    );
    // The sequence numbers are unique and rising.
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Mallory's refusals: recorded once each, with who, what and the role
    // needed, and nothing was created.
    let refusals: Vec<&Value> = records
        .iter()
        .filter(|r| field(r, "caller") == "mallory")
        .collect();
    assert_eq!(refusals.len(), 4, "{records:#?}");
    for record in refusals {
        assert_eq!(field(record, "outcome"), "refused", "{record}");
        assert_eq!(field(record, "role"), "client", "{record}");
        assert_eq!(field(record, "project"), "stolen", "{record}");
        assert!(
            field(record, "detail").contains("the admin role"),
            "{record}"
        );
    }
    let projects = cluster.ferry_as("root", &["projects", "list", "--output", "json"]);
    assert!(!projects.stdout.contains("stolen"), "{projects:?}");
    // The restarted member holds the same log: read it there.
    let there = cluster.ferry_at(leader, &["audit", "--output", "json", "--limit", "10000"]);
    assert!(there.success(), "{there:?} (member {leader})");
    let there: Vec<u64> = there
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(
        there.len() >= seqs.len() && there[..seqs.len()] == seqs[..],
        "member {leader} holds the same records"
    );
}

#[test]
fn owners_see_their_project_and_filters_narrow_the_log() {
    let mut cluster = Cluster::start_replicated(
        1,
        "admins = [\"root\"]\n[audit]\nmax_records = 12\ninterval_ms = 1000\n",
    );
    issue_clients(&cluster, &["root", "olga", "vera", "sam"]);
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    cluster.wait_worker_connected("w1");

    let created = cluster.ferry_as("root", &["projects", "create", "vision", "--owner", "olga"]);
    assert!(created.success(), "{created:?}");
    let added = cluster.ferry_as(
        "olga",
        &[
            "projects", "members", "add", "vision", "vera", "--role", "viewer",
        ],
    );
    assert!(added.success(), "{added:?}");
    let cordon = cluster.ferry_as("root", &["workers", "cordon", "w1"]);
    assert!(cordon.success(), "{cordon:?}");
    let uncordon = cluster.ferry_as("sam", &["workers", "uncordon", "w1"]);
    assert!(!uncordon.success(), "{uncordon:?}");

    // The owner sees the records of her project only.
    let seen = audit(&cluster, "olga", &[]);
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| field(r, "project") == "vision"),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|r| field(r, "summary") == "make \"vera\" viewer of project \"vision\""),
        "{seen:#?}"
    );
    // A viewer, and a stranger, are refused, naming the role needed.
    for user in ["vera", "sam"] {
        let refused = cluster.ferry_as(user, &["audit"]);
        assert!(
            !refused.success()
                && refused.stderr.contains("PermissionDenied")
                && refused.stderr.contains("the owner role"),
            "{user}: {refused:?}"
        );
    }
    let other = cluster.ferry_as("olga", &["audit", "--project", "default"]);
    assert!(
        !other.success() && other.stderr.contains("PermissionDenied"),
        "{other:?}"
    );

    // The administrator sees everything; filters narrow it.
    let all = audit(&cluster, "root", &[]);
    let by_sam = audit(&cluster, "root", &["--user", "sam"]);
    assert_eq!(by_sam.len(), 1, "{by_sam:#?}");
    assert_eq!(field(&by_sam[0], "action"), "set-worker-mode");
    assert_eq!(field(&by_sam[0], "outcome"), "refused");
    let worker_joined = all
        .iter()
        .any(|r| field(r, "action") == "register-worker" && field(r, "caller") == "w1");
    assert!(
        worker_joined,
        "a worker's registration is recorded: {all:#?}"
    );
    let future = audit(&cluster, "root", &["--since", "2100-01-01T00:00:00Z"]);
    assert!(future.is_empty(), "{future:#?}");
    let recent = audit(&cluster, "root", &["--since", "1h"]);
    assert!(recent.len() >= all.len(), "{recent:#?}");
    let bad = cluster.ferry_as("root", &["audit", "--since", "yesterday"]);
    assert!(
        !bad.success() && bad.stderr.contains("--since \"yesterday\""),
        "{bad:?}"
    );
    let table = cluster.ferry_as("root", &["audit"]);
    assert!(
        table.success() && table.stdout.contains("cordoned"),
        "{table:?}"
    );

    // Retention: at most 12 records once the leader trimmed.
    for n in 0..12 {
        let name = format!("extra-{n}");
        let made = cluster.ferry_as("root", &["projects", "create", &name]);
        assert!(made.success(), "{made:?}");
    }
    wait_for(
        Duration::from_secs(20),
        "the audit log to be trimmed",
        || {
            let kept = audit(&cluster, "root", &[]);
            (kept.len() <= 12).then_some(())
        },
    );
    let kept = audit(&cluster, "root", &[]);
    assert!(
        kept.iter()
            .any(|r| field(r, "summary").contains("extra-11")),
        "the newest are kept: {kept:#?}"
    );
}
