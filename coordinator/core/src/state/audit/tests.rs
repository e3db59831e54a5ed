//! The audit log: a request is recorded once, with its outcome, in the entry
//! that carries it; repeats are told apart; retention and the ceiling drop the
//! oldest; a snapshot keeps everything, sequence numbers included.

use std::collections::BTreeMap;

use super::*;
use crate::access::ProjectRole;
use crate::state::{RunId, SealedValue, SubmitOptions};

fn alice() -> Requester {
    Requester {
        name: "alice".into(),
        role: CertRole::Client,
    }
}

/// `command` as the leader proposes a client's: described from `state`.
fn request(state: &State, command: Command, resent: bool) -> Command {
    with_id(state, command, resent, None)
}

fn with_id(state: &State, command: Command, resent: bool, id: Option<&str>) -> Command {
    Command::Request(Box::new(Request {
        by: alice(),
        about: describe(&command, state),
        resent,
        id: id.map(str::to_string),
        command,
    }))
}

fn create_project(name: &str, now_ms: i64) -> Command {
    Command::CreateProject {
        name: name.into(),
        owner: "alice".into(),
        now_ms,
    }
}

fn submit(request_id: &str, now_ms: i64) -> Command {
    let yaml = "name: p\nproject: vision\nsteps:\n  - name: a\n    command: [\"true\"]\n";
    Command::SubmitRun {
        pipeline: ferry_spec::parse_pipeline("p.yaml", yaml, &BTreeMap::new()).unwrap(),
        bundle_digest: "blake3:bundle".into(),
        submitter: "alice".into(),
        request_id: Some(request_id.into()),
        options: SubmitOptions::default(),
        now_ms,
        placements: Vec::new(),
    }
}

fn outcomes(state: &State) -> Vec<(Action, Option<String>, AuditOutcome)> {
    state
        .audit
        .iter()
        .map(|r| (r.action, r.project.clone(), r.outcome.clone()))
        .collect()
}

#[test]
fn a_request_is_applied_as_its_command_and_recorded_with_what_came_of_it() {
    let mut state = State::default();
    let mut bare = State::default();
    state
        .apply(request(&state, create_project("vision", 10), false))
        .unwrap();
    bare.apply(create_project("vision", 10)).unwrap();
    assert_eq!(state.policy, bare.policy, "the same change as the command");

    let refused = state.apply(request(&state, create_project("vision", 11), false));
    assert!(matches!(refused, Err(StateError::ProjectExists(_))));
    let run = state
        .apply(request(&state, submit("r1", 12), false))
        .unwrap();
    let Outcome::RunSubmitted { run, .. } = run else {
        panic!("{run:?}")
    };

    let records: Vec<&AuditRecord> = state.audit.iter().collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(records[0].time_ms, 10);
    assert_eq!(records[0].caller, "alice");
    assert_eq!(
        records[0].summary,
        "create project \"vision\" owned by \"alice\""
    );
    assert_eq!(
        outcomes(&state),
        [
            (
                Action::CreateProject,
                Some("vision".into()),
                AuditOutcome::Accepted {
                    detail: String::new()
                }
            ),
            (
                Action::CreateProject,
                Some("vision".into()),
                AuditOutcome::Refused {
                    reason: StateError::ProjectExists("vision".into()).to_string()
                }
            ),
            (
                Action::SubmitRun,
                Some("vision".into()),
                AuditOutcome::Accepted {
                    detail: format!("run {run}")
                }
            ),
        ]
    );
}

#[test]
fn a_repeat_is_recorded_as_one_and_not_as_a_second_acceptance() {
    let mut state = State::default();
    let first = state
        .apply(request(&state, submit("r1", 1), false))
        .unwrap();
    let again = state.apply(request(&state, submit("r1", 2), true)).unwrap();
    assert_eq!(first, again, "a retried submission names the first run");
    let run: RunId = match first {
        Outcome::RunSubmitted { run, .. } => run,
        other => panic!("{other:?}"),
    };
    // A cancel resent after the first took effect.
    let cancel = |now_ms| Command::CancelRun { run, now_ms };
    state.apply(request(&state, cancel(3), false)).unwrap();
    let resent = state.apply(request(&state, cancel(4), true));
    assert!(resent.is_err(), "the state machine refuses the second");
    // Not resent: a plain refusal.
    let _ = state.apply(request(&state, cancel(5), false));

    let kinds: Vec<&str> = state
        .audit
        .iter()
        .map(|r| match &r.outcome {
            AuditOutcome::Accepted { .. } => "accepted",
            AuditOutcome::Refused { .. } => "refused",
            AuditOutcome::Repeated { .. } => "repeated",
        })
        .collect();
    assert_eq!(
        kinds,
        ["accepted", "repeated", "accepted", "repeated", "refused"]
    );
}

#[test]
fn notes_record_refusals_and_changes_outside_the_state_machine() {
    let mut state = State::default();
    let command = Command::SetProjectMember {
        project: "vision".into(),
        user: "bob".into(),
        role: Some(ProjectRole::Owner),
        now_ms: 0,
    };
    let note = AuditNote {
        by: Requester {
            name: "bob".into(),
            role: CertRole::Client,
        },
        about: describe(&command, &state),
        outcome: AuditOutcome::Refused {
            reason: "bob may not manage the project's members".into(),
        },
        id: Some("bob/1".into()),
    };
    let answer = state.apply(Command::Audit {
        note: Box::new(note.clone()),
        now_ms: 7,
    });
    assert_eq!(answer, Ok(Outcome::Done));
    assert!(state.policy.projects.is_empty(), "nothing else changed");
    let record = state.audit.iter().next().unwrap();
    assert_eq!(record.time_ms, 7);
    assert_eq!(record.summary, "make \"bob\" owner of project \"vision\"");
    // The same refusal recorded again (by the leader after a follower): once.
    let again = state.apply(Command::Audit {
        note: Box::new(note),
        now_ms: 8,
    });
    assert_eq!(again, Ok(Outcome::Unchanged));
    assert_eq!(state.audit.len(), 1);
}

#[test]
fn a_request_applied_again_under_its_id_is_a_repeat_even_when_it_succeeds_again() {
    let mut state = State::default();
    state
        .apply(request(&state, create_project("vision", 1), false))
        .unwrap();
    let add = |now_ms| Command::SetProjectMember {
        project: "vision".into(),
        user: "bob".into(),
        role: Some(ProjectRole::Editor),
        now_ms,
    };
    // A client's retry reaching another member: not marked resent, same id.
    state
        .apply(with_id(&state, add(2), false, Some("alice/req-1")))
        .unwrap();
    state
        .apply(with_id(&state, add(3), false, Some("alice/req-1")))
        .unwrap();
    // Another request doing the same is another acceptance.
    state
        .apply(with_id(&state, add(4), false, Some("alice/req-2")))
        .unwrap();
    let kinds: Vec<&str> = state
        .audit
        .iter()
        .skip(1)
        .map(|r| match &r.outcome {
            AuditOutcome::Accepted { .. } => "accepted",
            AuditOutcome::Refused { .. } => "refused",
            AuditOutcome::Repeated { .. } => "repeated",
        })
        .collect();
    assert_eq!(kinds, ["accepted", "repeated", "accepted"]);
    // The ids are part of the snapshot.
    let json = serde_json::to_vec(&state.audit).unwrap();
    let restored: AuditLog = serde_json::from_slice(&json).unwrap();
    let mut state = State::default()
        .with_policy(state.policy.clone())
        .with_audit(restored);
    state
        .apply(with_id(&state, add(5), false, Some("alice/req-2")))
        .unwrap();
    assert!(matches!(
        state.audit.iter().last().unwrap().outcome,
        AuditOutcome::Repeated { .. }
    ));
}

#[test]
fn a_request_never_wraps_another_and_records_keep_time_order() {
    let mut state = State::default();
    let inner = request(&state, create_project("vision", 5), false);
    let nested = request(&state, inner, false);
    assert!(matches!(
        state.apply(nested),
        Err(StateError::InvalidRequest(_))
    ));
    assert!(
        state.policy.projects.is_empty(),
        "the inner command was not applied"
    );
    // A leader whose clock is behind the last record's: no record goes back.
    state.apply(note(100)).unwrap();
    state.apply(note(90)).unwrap();
    let times: Vec<i64> = state.audit.iter().map(|r| r.time_ms).collect();
    assert_eq!(times, [100, 100]);
    assert_eq!(state.audit.dropped(), 0);
    state
        .apply(Command::TrimAudit {
            keep_ms: u64::MAX,
            keep_max: 1,
            now_ms: 200,
        })
        .unwrap();
    assert_eq!(state.audit.dropped(), 1);
}

#[test]
fn summaries_name_a_secret_never_its_value() {
    let state = State::default();
    let command = Command::SetSecret {
        project: "vision".into(),
        name: "hf_token".into(),
        sealed: SealedValue {
            key_id: "k1".into(),
            nonce: vec![7; 24],
            ciphertext: b"SEALED-BYTES".to_vec(),
        },
        set_by: "alice".into(),
        now_ms: 0,
    };
    let about = describe(&command, &state);
    assert_eq!(
        about.summary,
        "set secret \"hf_token\" of project \"vision\""
    );
    let json = serde_json::to_string(&about).unwrap();
    assert!(!json.contains("SEALED") && !json.contains("k1"), "{json}");
}

fn note(now_ms: i64) -> Command {
    let state = State::default();
    Command::Audit {
        note: Box::new(AuditNote {
            by: alice(),
            about: describe(&create_project("p", 0), &state),
            outcome: AuditOutcome::Accepted {
                detail: String::new(),
            },
            id: None,
        }),
        now_ms,
    }
}

#[test]
fn retention_drops_the_oldest_by_age_and_by_count() {
    let mut state = State::default();
    for time in 0..3000 {
        state.apply(note(time)).unwrap();
    }
    // Older than 1000 ms before 2500: times below 1500 go.
    state
        .apply(Command::TrimAudit {
            keep_ms: 1000,
            keep_max: 10_000,
            now_ms: 2500,
        })
        .unwrap();
    assert_eq!(state.audit.len(), 1500);
    assert_eq!(state.audit.oldest_ms(), Some(1500));
    state
        .apply(Command::TrimAudit {
            keep_ms: u64::MAX,
            keep_max: 100,
            now_ms: 2500,
        })
        .unwrap();
    assert_eq!(state.audit.len(), 100);
    let seqs: Vec<u64> = state.audit.iter().map(|r| r.seq).collect();
    assert_eq!(seqs.first(), Some(&2901));
    assert_eq!(seqs.last(), Some(&3000));
    // Numbering goes on after a trim.
    state.apply(note(3000)).unwrap();
    assert_eq!(state.audit.iter().last().unwrap().seq, 3001);
}

#[test]
fn the_log_never_grows_past_its_ceiling() {
    let mut log = AuditLog::default();
    for time in 0..(MAX_AUDIT_RECORDS as i64 + 5) {
        log.push(
            time,
            alice(),
            Described {
                action: Action::CancelRun,
                project: None,
                summary: String::new(),
            },
            AuditOutcome::Accepted {
                detail: String::new(),
            },
        );
    }
    assert_eq!(log.len(), MAX_AUDIT_RECORDS);
    assert_eq!(log.iter().count(), MAX_AUDIT_RECORDS);
    assert_eq!(log.oldest_ms(), Some(5));
}

#[test]
fn a_snapshot_keeps_every_record_and_an_image_is_not_changed_by_later_ones() {
    let mut state = State::default();
    for time in 0..2500 {
        state.apply(note(time)).unwrap();
    }
    let image = state.audit.clone();
    state.apply(note(2500)).unwrap();
    state
        .apply(Command::TrimAudit {
            keep_ms: 0,
            keep_max: 10,
            now_ms: 0,
        })
        .unwrap();
    assert_eq!(image.len(), 2500, "the image holds what it held");
    assert_eq!(image.iter().last().unwrap().time_ms, 2499);

    let json = serde_json::to_vec(&image).unwrap();
    let restored: AuditLog = serde_json::from_slice(&json).unwrap();
    assert_eq!(restored, image);
    let mut restored_state = State::default().with_audit(restored);
    restored_state.apply(note(3000)).unwrap();
    assert_eq!(restored_state.audit.iter().last().unwrap().seq, 2501);
}

#[test]
fn only_the_leader_makes_requests_trims_and_its_loops_commands() {
    let state = State::default();
    let wrapped = request(&state, create_project("p", 0), false);
    let trim = Command::TrimAudit {
        keep_ms: 0,
        keep_max: 0,
        now_ms: 0,
    };
    assert!(wrapped.leader_only() && trim.leader_only());
    assert!(!create_project("p", 0).leader_only());
    assert!(!note(0).leader_only(), "a member forwards its own notes");
}
