//! The table applied to commands and state: the user-b attack of issue 16,
//! projects, workers and coordinators.

use std::collections::BTreeSet;

use ferry_common::pki::{Identity, Role};

use super::*;
use crate::access::ProjectRole;
use crate::state::{Command, State};

fn identity(role: Role, name: &str) -> Identity {
    Identity {
        role,
        name: name.to_string(),
    }
}

fn pipeline(project: &str) -> ferry_common::spec::Pipeline {
    let text =
        format!("name: p\nproject: {project}\nsteps:\n  - name: a\n    command: [\"true\"]\n");
    ferry_common::spec::parse_pipeline("pipeline.yaml", &text, &Default::default())
        .expect("pipeline")
}

fn submit(project: &str, submitter: &str) -> Command {
    Command::SubmitRun {
        pipeline: pipeline(project),
        bundle_digest: "b".repeat(64),
        submitter: submitter.to_string(),
        request_id: None,
        options: Default::default(),
        now_ms: 1,
        placements: Vec::new(),
    }
}

/// A state with user-a's run 1 in `default`, and project `vision` owned by
/// carol with dave as editor and erin as viewer, holding carol's run 2.
fn state() -> State {
    let mut state = State::from_records(Vec::new(), Vec::new(), 1);
    state.apply(submit("default", "user-a")).expect("run 1");
    for command in [
        Command::CreateProject {
            name: "vision".into(),
            owner: "carol".into(),
            now_ms: 1,
        },
        Command::SetProjectMember {
            project: "vision".into(),
            user: "dave".into(),
            role: Some(ProjectRole::Editor),
            now_ms: 1,
        },
        Command::SetProjectMember {
            project: "vision".into(),
            user: "erin".into(),
            role: Some(ProjectRole::Viewer),
            now_ms: 1,
        },
    ] {
        state.apply(command).expect("policy");
    }
    state.apply(submit("vision", "carol")).expect("run 2");
    state
}

#[test]
fn user_b_may_not_touch_user_a_things_in_default() {
    let state = state();
    let admins = BTreeSet::from(["root".to_string()]);
    let user_a = identity(Role::Client, "user-a");
    let user_b = identity(Role::Client, "user-b");
    let cancel = Command::CancelRun { run: 1, now_ms: 0 };
    assert!(authorize(&user_a, &cancel, &state, &admins).is_ok());
    let refused = authorize(&user_b, &cancel, &state, &admins).unwrap_err();
    assert!(
        refused.starts_with(
            "client \"user-b\" may not cancel runs (run 1): that needs the editor role"
        ),
        "{refused}"
    );
    let run = &state.runs[&1];
    assert!(may_read_run(&user_a, run, &state, &admins).is_ok());
    assert!(may_read_run(&user_b, run, &state, &admins).is_err());
    for admin_only in [
        Command::Collect {
            keep_last: 0,
            now_ms: 0,
            grace_ms: 0,
        },
        Command::SetWorkerMode {
            worker: "w1".into(),
            mode: crate::state::WorkerMode::Cordoned,
            now_ms: 0,
        },
        Command::SetAdmin {
            user: "user-b".into(),
            admin: true,
            now_ms: 0,
        },
    ] {
        let refused = authorize(&user_b, &admin_only, &state, &admins).unwrap_err();
        assert!(refused.contains("needs the admin role"), "{refused}");
        assert!(
            authorize(
                &identity(Role::Client, "root"),
                &admin_only,
                &state,
                &admins
            )
            .is_ok()
        );
    }
    // Submitting into `default` under one's own name: anyone; for another: no one.
    assert!(authorize(&user_b, &submit("default", "user-b"), &state, &admins).is_ok());
    assert!(authorize(&user_b, &submit("default", "user-a"), &state, &admins).is_err());
    // Rerunning another's run needs reading it.
    let rerun = Command::RerunRun {
        source: 1,
        from: None,
        submitter: "user-b".into(),
        request_id: None,
        now_ms: 0,
    };
    assert!(authorize(&user_b, &rerun, &state, &admins).is_err());
}

#[test]
fn project_roles_decide_in_a_project() {
    let state = state();
    let admins = BTreeSet::new();
    let carol = identity(Role::Client, "carol");
    let dave = identity(Role::Client, "dave");
    let erin = identity(Role::Client, "erin");
    let user_b = identity(Role::Client, "user-b");
    // Submitting into a project: editors and owners only.
    assert!(authorize(&dave, &submit("vision", "dave"), &state, &admins).is_ok());
    let viewer = authorize(&erin, &submit("vision", "erin"), &state, &admins).unwrap_err();
    assert!(viewer.contains("needs the editor role"), "{viewer}");
    assert!(authorize(&user_b, &submit("vision", "user-b"), &state, &admins).is_err());
    let missing = authorize(&user_b, &submit("nowhere", "user-b"), &state, &admins).unwrap_err();
    assert!(missing.contains("does not exist"), "{missing}");
    // Reading and cancelling carol's run 2.
    let run = &state.runs[&2];
    assert!(may_read_run(&erin, run, &state, &admins).is_ok());
    assert!(may_read_run(&user_b, run, &state, &admins).is_err());
    let cancel = Command::CancelRun { run: 2, now_ms: 0 };
    assert!(authorize(&dave, &cancel, &state, &admins).is_ok());
    assert!(authorize(&erin, &cancel, &state, &admins).is_err());
    // Members: the owner manages them, an editor does not.
    let add = Command::SetProjectMember {
        project: "vision".into(),
        user: "user-b".into(),
        role: Some(ProjectRole::Viewer),
        now_ms: 0,
    };
    assert!(authorize(&carol, &add, &state, &admins).is_ok());
    let editor = authorize(&dave, &add, &state, &admins).unwrap_err();
    assert!(editor.contains("needs the owner role"), "{editor}");
    // Creating projects: administrators only.
    let create = Command::CreateProject {
        name: "nlp".into(),
        owner: "carol".into(),
        now_ms: 0,
    };
    assert!(authorize(&carol, &create, &state, &admins).is_err());
}

#[test]
fn workers_and_coordinators_act_only_as_themselves() {
    let state = state();
    let admins = BTreeSet::new();
    let worker = identity(Role::Worker, "w1");
    let coordinator = identity(Role::Coordinator, "coordinator");
    let lost = Command::WorkerLost {
        worker: "w1".into(),
        session: "s".into(),
        reason: String::new(),
        now_ms: 0,
    };
    assert!(authorize(&coordinator, &lost, &state, &admins).is_ok());
    assert!(authorize(&worker, &lost, &state, &admins).is_err());
    let started = |name: &str| Command::StepStarted {
        key: crate::state::AttemptKey {
            run: 1,
            step: "a".into(),
            attempt: 1,
        },
        worker: name.into(),
        now_ms: 0,
    };
    assert!(authorize(&worker, &started("w1"), &state, &admins).is_ok());
    let other = authorize(&worker, &started("w2"), &state, &admins).unwrap_err();
    assert!(
        other.contains("the worker certificate the report names"),
        "{other}"
    );
    let cancel = Command::CancelRun { run: 1, now_ms: 0 };
    let refused = authorize(&worker, &cancel, &state, &admins).unwrap_err();
    assert!(refused.contains("needs a client certificate"), "{refused}");
    assert!(authorize(&coordinator, &cancel, &state, &admins).is_err());
    // Nothing is assigned to w1: no blob for it.
    assert!(may_fetch_blob(&worker, &"b".repeat(64), &state).is_err());
    assert!(may_fetch_blob(&identity(Role::Client, "user-a"), "x", &state).is_err());
}

/// Secrets: in `default`, a secret is its setter's (another client may neither
/// replace, delete, use nor see it); in a project, by role; resealing is an
/// administrator's.
#[test]
fn a_secret_is_used_and_changed_only_by_its_setter_its_project_or_an_admin() {
    let mut state = state();
    let sealed = crate::state::SealedValue {
        key_id: "k".into(),
        nonce: vec![0; 24],
        ciphertext: vec![1; 32],
    };
    let set = |project: &str, by: &str| Command::SetSecret {
        project: project.into(),
        name: "token".into(),
        sealed: sealed.clone(),
        set_by: by.into(),
        now_ms: 2,
    };
    let admins = BTreeSet::new();
    let user_a = identity(Role::Client, "user-a");
    let user_b = identity(Role::Client, "user-b");
    assert!(authorize(&user_a, &set("default", "user-a"), &state, &admins).is_ok());
    state.apply(set("default", "user-a")).expect("set");
    state.apply(set("vision", "carol")).expect("set");
    let refused = authorize(&user_b, &set("default", "user-b"), &state, &admins).unwrap_err();
    assert!(refused.contains("may not set secrets"), "{refused}");
    let delete = |project: &str| Command::DeleteSecret {
        project: project.into(),
        name: "token".into(),
        now_ms: 3,
    };
    assert!(authorize(&user_b, &delete("default"), &state, &admins).is_err());
    assert!(authorize(&user_a, &delete("default"), &state, &admins).is_ok());
    assert!(may_use_secret(&user_b, "default", "token", &state, &admins).is_err());
    assert!(may_use_secret(&user_a, "default", "token", &state, &admins).is_ok());
    let secret = state.secret("default", "token").expect("secret").clone();
    assert!(!may_read_secret(&user_b, &secret, &state, &admins));
    // In a project: an editor uses and replaces, a viewer sees but does not use.
    let dave = identity(Role::Client, "dave");
    let erin = identity(Role::Client, "erin");
    assert!(may_use_secret(&dave, "vision", "token", &state, &admins).is_ok());
    assert!(authorize(&dave, &set("vision", "dave"), &state, &admins).is_ok());
    assert!(may_use_secret(&erin, "vision", "token", &state, &admins).is_err());
    let vision = state.secret("vision", "token").expect("secret").clone();
    assert!(may_read_secret(&erin, &vision, &state, &admins));
    let reseal = Command::ResealSecret {
        project: "vision".into(),
        name: "token".into(),
        version: 1,
        sealed: sealed.clone(),
        now_ms: 4,
    };
    assert!(authorize(&dave, &reseal, &state, &admins).is_err());
    let root: BTreeSet<String> = ["root".to_string()].into();
    assert!(authorize(&identity(Role::Client, "root"), &reseal, &state, &root).is_ok());
}

/// A secret a project does not have yet is created by its editors (or an
/// administrator) only: a viewer or a non-member naming itself as the setter
/// does not become its owner (found by t49's matrix).
#[test]
fn a_new_secret_in_a_project_needs_its_editor_role() {
    let state = state();
    let sealed = crate::state::SealedValue {
        key_id: "k".into(),
        nonce: vec![0; 24],
        ciphertext: vec![1; 32],
    };
    let set = |by: &str| Command::SetSecret {
        project: "vision".into(),
        name: "planted".into(),
        sealed: sealed.clone(),
        set_by: by.into(),
        now_ms: 2,
    };
    let admins: BTreeSet<String> = ["root".to_string()].into();
    for refused in ["erin", "user-b"] {
        let message = authorize(
            &identity(Role::Client, refused),
            &set(refused),
            &state,
            &admins,
        )
        .expect_err("refused");
        assert!(
            message.contains("the editor role in the project"),
            "{message}"
        );
    }
    for allowed in ["dave", "carol", "root"] {
        assert!(
            authorize(
                &identity(Role::Client, allowed),
                &set(allowed),
                &state,
                &admins
            )
            .is_ok(),
            "{allowed}"
        );
    }
}
