//! Access control between users (issue 16): the exact sequence of the issue,
//! where `user-b` tried everything against `user-a`'s runs, schedule, pin and
//! the cluster, is refused step by step with PermissionDenied and changes
//! nothing; projects let their members act by role; administrators manage
//! workers.

use std::time::Duration;

use ferry_tests::{CliResult, Cluster, parse_run_id, wait_for, write_pipeline};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A finished run with an artifact.
const MAKE: &str = "name: make\nsteps:\n  - name: make\n    shell: \"echo model-bytes > model.bin\"\n    outputs: [model.bin]\n";

/// A run that keeps running until cancelled, in `project`.
fn long_running(project: &str) -> String {
    format!(
        "name: long\nproject: {project}\nsteps:\n  - name: wait\n    command: [sleep, \"120\"]\n"
    )
}

fn submit_as(cluster: &Cluster, user: &str, pipeline: &std::path::Path) -> CliResult {
    cluster.ferry_as(user, &["run", pipeline.to_str().expect("utf-8 path")])
}

fn run_id(result: &CliResult) -> u64 {
    assert!(result.success(), "ferry run failed: {result:?}");
    parse_run_id(&result.stdout).unwrap_or_else(|| panic!("no run id in {result:?}"))
}

fn status_as(cluster: &Cluster, user: &str, run: u64) -> Value {
    let result = cluster.ferry_as(user, &["status", &run.to_string(), "--output", "json"]);
    assert!(
        result.success(),
        "{user} could not read run {run}: {result:?}"
    );
    result.json()
}

/// The call failed with PermissionDenied, naming the role it needs.
fn assert_denied(result: &CliResult, needs: &str, what: &str) {
    assert!(
        !result.success()
            && result.stderr.contains("PermissionDenied")
            && result.stderr.contains(needs),
        "{what}: expected PermissionDenied naming {needs:?}: {result:?}"
    );
}

fn issue_clients(cluster: &Cluster, names: &[&str]) {
    for name in names {
        cluster
            .pki
            .issue("client", name)
            .expect("client certificate");
    }
}

#[test]
fn user_b_is_refused_everything_against_user_a_and_nothing_changes() {
    let mut cluster = Cluster::start_replicated(1, "admins = [\"root\"]\n");
    issue_clients(&cluster, &["user-a", "user-b", "root"]);
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    cluster.wait_worker_connected("w1");

    // user-a: a finished run with an artifact, a running run, a schedule, a pin.
    let make = write_pipeline(&cluster.path("make"), MAKE, &[]);
    let done = run_id(&submit_as(&cluster, "user-a", &make));
    wait_for(RUN_TIMEOUT, "user-a's run to succeed", || {
        (status_as(&cluster, "user-a", done)["state"] == "succeeded").then_some(())
    });
    let long = write_pipeline(&cluster.path("long"), &long_running("default"), &[]);
    let running = run_id(&submit_as(&cluster, "user-a", &long));
    let schedule = cluster.ferry_as(
        "user-a",
        &[
            "schedules",
            "create",
            "yearly",
            "--cron",
            "0 0 1 1 *",
            "--pipeline",
            make.to_str().unwrap(),
        ],
    );
    assert!(schedule.success(), "{schedule:?}");
    let artifacts = cluster.ferry_as(
        "user-a",
        &["artifacts", &done.to_string(), "--output", "json"],
    );
    assert!(artifacts.success(), "{artifacts:?}");
    let digest = artifacts.json()[0]["digest"].as_str().unwrap().to_string();
    let pin = cluster.ferry_as("user-a", &["artifacts", "pin", &digest, "--tag", "model"]);
    assert!(pin.success(), "{pin:?}");

    // user-b, step by step, as in the issue.
    let done_text = done.to_string();
    let running_text = running.to_string();
    let out = cluster.path("stolen.bin");
    let out = out.to_str().unwrap();
    let viewer = "the viewer role";
    let editor = "the editor role";
    let admin = "the admin role";
    let attempts: Vec<(Vec<&str>, &str)> = vec![
        (vec!["logs", &done_text], viewer),
        (vec!["status", &done_text], viewer),
        (vec!["artifacts", &done_text], viewer),
        (
            vec![
                "artifacts",
                "get",
                &done_text,
                "make",
                "model.bin",
                "-o",
                out,
            ],
            viewer,
        ),
        (vec!["lineage", &digest], viewer),
        (vec!["metrics", &done_text], viewer),
        (vec!["rerun", &done_text, "--from", "make"], viewer),
        (vec!["cancel", &running_text], editor),
        (vec!["schedules", "pause", "yearly"], editor),
        (vec!["schedules", "delete", "yearly"], editor),
        (vec!["artifacts", "unpin", "model"], editor),
        (vec!["artifacts", "pin", &digest, "--tag", "mine"], editor),
        (vec!["workers", "cordon", "w1"], admin),
        (vec!["workers", "drain", "w1"], admin),
        (vec!["gc", "--keep-last", "0"], admin),
        (vec!["admins", "add", "user-b"], admin),
        (vec!["projects", "create", "mine"], admin),
    ];
    for (args, needs) in &attempts {
        let result = cluster.ferry_as("user-b", args);
        assert_denied(&result, needs, &format!("user-b: ferry {}", args.join(" ")));
    }
    assert!(
        !std::path::Path::new(out).exists(),
        "user-b's download wrote a file"
    );
    // Listings show user-b nothing of user-a's.
    let runs = cluster.ferry_as("user-b", &["runs", "--output", "json"]);
    assert!(runs.success(), "{runs:?}");
    assert_eq!(runs.json(), serde_json::json!([]), "{runs:?}");
    let schedules = cluster.ferry_as("user-b", &["schedules", "list", "--output", "json"]);
    assert_eq!(schedules.json(), serde_json::json!([]), "{schedules:?}");
    let pins = cluster.ferry_as("user-b", &["artifacts", "pins", "--output", "json"]);
    assert_eq!(pins.json(), serde_json::json!([]), "{pins:?}");
    // A run into a project user-b is not in (one that does not exist either).
    let elsewhere = write_pipeline(&cluster.path("elsewhere"), &long_running("vision"), &[]);
    let refused = submit_as(&cluster, "user-b", &elsewhere);
    assert!(
        !refused.success() && refused.stderr.contains("PermissionDenied"),
        "{refused:?}"
    );

    // Nothing changed: user-a's run still runs, its schedule is active, its pin
    // holds, the worker takes work, the download works.
    assert_eq!(status_as(&cluster, "user-a", running)["state"], "running");
    let schedules = cluster.ferry_as("user-a", &["schedules", "list", "--output", "json"]);
    let listed = schedules.json();
    assert_eq!(listed[0]["name"], "yearly", "{listed:#}");
    assert_eq!(listed[0]["paused"], false, "{listed:#}");
    let pins = cluster.ferry_as("user-a", &["artifacts", "pins", "--output", "json"]);
    assert!(pins.stdout.contains("\"model\""), "{pins:?}");
    let workers = cluster.ferry_as("user-a", &["workers", "--output", "json"]);
    assert!(
        workers.json()[0]["state"].as_str().unwrap_or_default() == "connected",
        "{workers:?}"
    );
    let mine = cluster.path("model.bin");
    let download = cluster.ferry_as(
        "user-a",
        &[
            "artifacts",
            "get",
            &done_text,
            "make",
            "model.bin",
            "-o",
            mine.to_str().unwrap(),
        ],
    );
    assert!(download.success(), "{download:?}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "model-bytes\n");
    let runs = cluster.ferry_as("user-a", &["runs", "--output", "json"]);
    assert_eq!(runs.json().as_array().map(Vec::len), Some(2), "{runs:?}");

    // An administrator may: cordon the worker, read and cancel user-a's run.
    let cordon = cluster.ferry_as("root", &["workers", "cordon", "w1"]);
    assert!(cordon.success(), "{cordon:?}");
    let uncordon = cluster.ferry_as("root", &["workers", "uncordon", "w1"]);
    assert!(uncordon.success(), "{uncordon:?}");
    assert_eq!(status_as(&cluster, "root", done)["state"], "succeeded");
    let cancel = cluster.ferry_as("root", &["cancel", &running.to_string()]);
    assert!(cancel.success(), "{cancel:?}");
}

#[test]
fn project_members_act_by_role_and_admins_are_added_by_command() {
    let mut cluster = Cluster::start_replicated(1, "admins = [\"root\"]\n");
    issue_clients(&cluster, &["root", "carol", "dave", "erin", "frank"]);
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    cluster.wait_worker_connected("w1");

    let created = cluster.ferry_as(
        "root",
        &["projects", "create", "vision", "--owner", "carol"],
    );
    assert!(created.success(), "{created:?}");
    let again = cluster.ferry_as("root", &["projects", "create", "vision"]);
    assert!(
        !again.success() && again.stderr.contains("already exists"),
        "{again:?}"
    );
    // An editor may not manage members; the owner may.
    let by_dave = cluster.ferry_as(
        "dave",
        &[
            "projects", "members", "add", "vision", "dave", "--role", "owner",
        ],
    );
    assert_denied(&by_dave, "the owner role", "dave adds himself");
    for (user, role) in [("dave", "editor"), ("erin", "viewer")] {
        let added = cluster.ferry_as(
            "carol",
            &["projects", "members", "add", "vision", user, "--role", role],
        );
        assert!(added.success(), "{added:?}");
    }

    let vision = write_pipeline(&cluster.path("vision"), &long_running("vision"), &[]);
    // A viewer may not submit; an editor may; a stranger may do neither.
    assert_denied(
        &submit_as(&cluster, "erin", &vision),
        "the editor role",
        "erin submits",
    );
    assert_denied(
        &submit_as(&cluster, "frank", &vision),
        "the editor role",
        "frank submits",
    );
    let run = run_id(&submit_as(&cluster, "dave", &vision));
    // The viewer reads it but may not cancel it; the stranger does neither.
    assert_eq!(status_as(&cluster, "erin", run)["state"], "running");
    assert_denied(
        &cluster.ferry_as("erin", &["cancel", &run.to_string()]),
        "the editor role",
        "erin cancels",
    );
    assert_denied(
        &cluster.ferry_as("frank", &["status", &run.to_string()]),
        "the viewer role",
        "frank reads",
    );
    let listed = cluster.ferry_as("erin", &["runs", "--output", "json"]);
    assert_eq!(
        listed.json().as_array().map(Vec::len),
        Some(1),
        "{listed:?}"
    );
    let projects = cluster.ferry_as("frank", &["projects", "list", "--output", "json"]);
    let names: Vec<String> = projects
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["default"], "{projects:?}");
    let projects = cluster.ferry_as("erin", &["projects", "list", "--output", "json"]);
    assert_eq!(projects.json()[1]["your_role"], "viewer", "{projects:?}");
    // The project's owner cancels the editor's run.
    let cancel = cluster.ferry_as("carol", &["cancel", &run.to_string()]);
    assert!(cancel.success(), "{cancel:?}");

    // Administrators: dave is made one, cordons, and is one no longer.
    assert_denied(
        &cluster.ferry_as("dave", &["workers", "cordon", "w1"]),
        "the admin role",
        "dave cordons",
    );
    let add = cluster.ferry_as("root", &["admins", "add", "dave"]);
    assert!(add.success(), "{add:?}");
    let listed = cluster.ferry_as("frank", &["admins", "list", "--output", "json"]);
    assert!(
        listed.stdout.contains("\"root\"") && listed.stdout.contains("\"dave\""),
        "{listed:?}"
    );
    let cordon = cluster.ferry_as("dave", &["workers", "cordon", "w1"]);
    assert!(cordon.success(), "{cordon:?}");
    let uncordon = cluster.ferry_as("dave", &["workers", "uncordon", "w1"]);
    assert!(uncordon.success(), "{uncordon:?}");
    let remove = cluster.ferry_as("root", &["admins", "remove", "dave"]);
    assert!(remove.success(), "{remove:?}");
    let configured = cluster.ferry_as("dave", &["admins", "remove", "root"]);
    assert_denied(&configured, "the admin role", "dave removes root");
    let configured = cluster.ferry_as("root", &["admins", "remove", "root"]);
    assert!(
        !configured.success() && configured.stderr.contains("coordinator.toml"),
        "{configured:?}"
    );
    assert_denied(
        &cluster.ferry_as("dave", &["workers", "cordon", "w1"]),
        "the admin role",
        "dave cordons after removal",
    );
}

#[test]
fn a_group_gives_its_users_the_role_it_holds() {
    let mut cluster = Cluster::start_replicated(1, "admins = [\"root\"]\n");
    issue_clients(&cluster, &["root", "carol", "dave", "erin"]);
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    cluster.wait_worker_connected("w1");
    let ok = |result: CliResult| assert!(result.success(), "{result:?}");

    ok(cluster.ferry_as(
        "root",
        &["projects", "create", "vision", "--owner", "carol"],
    ));
    // Only administrators manage groups.
    assert_denied(
        &cluster.ferry_as("carol", &["groups", "add", "ml", "dave"]),
        "the admin role",
        "carol makes a group",
    );
    ok(cluster.ferry_as("root", &["groups", "add", "ml", "dave"]));
    ok(cluster.ferry_as(
        "carol",
        &[
            "projects", "members", "add", "vision", "@ml", "--role", "editor",
        ],
    ));
    let bad = cluster.ferry_as("root", &["groups", "add", "bad name", "dave"]);
    assert!(
        !bad.success() && bad.stderr.contains("not a valid name"),
        "{bad:?}"
    );
    let groups = cluster.ferry_as("erin", &["groups", "list", "--output", "json"]);
    assert_eq!(
        groups.json(),
        serde_json::json!([{ "name": "ml", "users": ["dave"] }]),
        "{groups:?}"
    );

    // dave submits as the group's editor; erin, in no group, may not.
    let vision = write_pipeline(&cluster.path("vision"), &long_running("vision"), &[]);
    let run = run_id(&submit_as(&cluster, "dave", &vision));
    assert_denied(
        &submit_as(&cluster, "erin", &vision),
        "the editor role",
        "erin submits",
    );
    let projects = cluster.ferry_as("dave", &["projects", "list", "--output", "json"]);
    assert_eq!(projects.json()[1]["your_role"], "editor", "{projects:?}");

    // An administrator by group.
    let ghost = cluster.ferry_as("root", &["admins", "add", "@ops"]);
    assert!(
        !ghost.success() && ghost.stderr.contains("there is no group \"@ops\""),
        "{ghost:?}"
    );
    ok(cluster.ferry_as("root", &["groups", "add", "ops", "carol"]));
    ok(cluster.ferry_as("root", &["admins", "add", "@ops"]));
    assert_denied(
        &cluster.ferry_as("erin", &["workers", "cordon", "w1"]),
        "the admin role",
        "erin cordons before joining ops",
    );
    ok(cluster.ferry_as("root", &["groups", "add", "ops", "erin"]));
    ok(cluster.ferry_as("erin", &["workers", "cordon", "w1"]));
    ok(cluster.ferry_as("erin", &["workers", "uncordon", "w1"]));

    // Leaving the group takes the role away.
    ok(cluster.ferry_as("root", &["groups", "remove", "ml", "dave"]));
    assert_denied(
        &submit_as(&cluster, "dave", &vision),
        "the editor role",
        "dave submits after leaving ml",
    );
    let missing = cluster.ferry_as("root", &["groups", "remove", "ml", "dave"]);
    assert!(
        !missing.success() && missing.stderr.contains("is not in group"),
        "{missing:?}"
    );
    ok(cluster.ferry_as("carol", &["cancel", &run.to_string()]));

    // Deleting a group takes its roles: re-made, it inherits none.
    ok(cluster.ferry_as("root", &["groups", "delete", "ops"]));
    ok(cluster.ferry_as("root", &["groups", "add", "ops", "erin"]));
    assert_denied(
        &cluster.ferry_as("erin", &["workers", "cordon", "w1"]),
        "the admin role",
        "erin cordons through a re-made group",
    );
}

/// A run's project is one its submitter edits, so a project's quota holds
/// every run charged to it: a stranger cannot name the project (and so
/// neither spend nor dodge its quota), and a member's runs wait at it.
#[test]
fn quotas_apply_to_the_members_of_a_project() {
    let mut cluster = Cluster::start_replicated(
        1,
        "admins = [\"root\"]\n[scheduling.quotas.capped]\ncpu = \"1\"\n",
    );
    issue_clients(&cluster, &["root", "dave", "frank"]);
    cluster.add_worker("w1", "cpus = 4\nmemory = \"2Gi\"");
    cluster.wait_worker_connected("w1");
    let created = cluster.ferry_as("root", &["projects", "create", "capped", "--owner", "dave"]);
    assert!(created.success(), "{created:?}");

    let pipeline = |name: &str, project: &str| {
        write_pipeline(
            &cluster.path(name),
            &format!(
                "name: {name}\nproject: {project}\nsteps:\n  - name: wait\n    resources: {{cpu: 1}}\n    command: [sleep, \"120\"]\n"
            ),
            &[],
        )
    };
    let first = run_id(&submit_as(&cluster, "dave", &pipeline("one", "capped")));
    let second = run_id(&submit_as(&cluster, "dave", &pipeline("two", "capped")));
    wait_for(RUN_TIMEOUT, "the first run to start", || {
        (status_as(&cluster, "dave", first)["state"] == "running").then_some(())
    });
    let waiting = wait_for(RUN_TIMEOUT, "the second run to wait at the quota", || {
        let status = status_as(&cluster, "dave", second);
        let reason = status["steps"][0]["reason"].as_str()?.to_string();
        reason
            .contains("project capped is at its quota")
            .then_some(reason)
    });
    assert!(waiting.contains("1 of 1 CPUs in use"), "{waiting}");

    // A stranger may not charge the project, and its own runs in `default`
    // do not wait behind the project's quota.
    assert_denied(
        &submit_as(&cluster, "frank", &pipeline("three", "capped")),
        "the editor role",
        "frank submits into capped",
    );
    let own = run_id(&submit_as(&cluster, "frank", &pipeline("four", "default")));
    wait_for(RUN_TIMEOUT, "frank's own run to start", || {
        (status_as(&cluster, "frank", own)["state"] == "running").then_some(())
    });
    for (user, run) in [("dave", first), ("dave", second), ("frank", own)] {
        let cancel = cluster.ferry_as(user, &["cancel", &run.to_string()]);
        assert!(cancel.success(), "{cancel:?}");
    }
}
