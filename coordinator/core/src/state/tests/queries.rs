//! Queries of the state, idempotent submissions, and the Raft entry encoding of
//! commands.

use super::*;

// ---------------------------------------------------------------------------
// Queries.

#[test]
fn queued_steps_are_oldest_run_first_in_pipeline_order() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    // File order z, y, x; x needs w, which comes after it in the file, so the
    // topological order is z, y, w, x.
    let yaml = r#"
name: order
steps:
  - name: z
    command: ["true"]
  - name: y
    command: ["true"]
  - name: x
    command: ["true"]
    needs: [w]
  - name: w
    command: ["true"]
"#;
    let first = sim.submit(yaml);
    let second = sim.submit(yaml);
    let third = sim.submit(yaml);
    let names: Vec<&str> = sim
        .run(first)
        .pipeline
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["z", "y", "w", "x"]);

    let expect = |runs: &[(RunId, &[&str])]| -> Vec<(RunId, String)> {
        runs.iter()
            .flat_map(|(run, steps)| steps.iter().map(move |s| (*run, s.to_string())))
            .collect()
    };
    assert_eq!(
        sim.queued(),
        expect(&[
            (first, &["z", "y", "w"]),
            (second, &["z", "y", "w"]),
            (third, &["z", "y", "w"]),
        ])
    );

    sim.assign(first, "y", "w1");
    sim.complete(second, "w", "w1");
    sim.cancel(third).unwrap();
    assert_eq!(
        sim.queued(),
        expect(&[(first, &["z", "w"]), (second, &["z", "y", "x"])]),
        "assigned steps and cancelled runs drop out; readied steps keep pipeline order"
    );
}

#[test]
fn assigned_to_lists_only_unstarted_attempts_of_that_worker() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("w2"));
    let run = sim.submit(
        "name: q\nsteps:\n  - name: s1\n    command: [\"true\"]\n  - name: s2\n    command: [\"true\"]\n  - name: s3\n    command: [\"true\"]\n",
    );
    let s1 = sim.assign(run, "s1", "w1");
    let s2 = sim.assign(run, "s2", "w1");
    let s3 = sim.assign(run, "s3", "w2");
    assert_eq!(sim.state.assigned_to("w1"), [s1.clone(), s2.clone()]);
    assert_eq!(sim.state.assigned_to("w2"), [s3]);
    assert!(sim.state.assigned_to("nobody").is_empty());

    sim.start(&s1);
    assert_eq!(sim.state.assigned_to("w1"), std::slice::from_ref(&s2));
    sim.finish(&s2, exited(1));
    assert!(sim.state.assigned_to("w1").is_empty());
}

#[test]
fn a_cancel_reported_by_the_worker_is_a_lost_attempt_and_never_strands_dependents() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    let a = sim.assign(run, "a", "w1");
    sim.start(&a);
    sim.finish(&a, stopped_by_worker());
    let record = sim.run(run);
    let attempt = &record.steps[0].attempts[0];
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Lost));
    assert!(
        attempt
            .reason
            .as_deref()
            .unwrap()
            .contains("worker shutting down")
    );
    // Lost, not failed: queued again at once, without using up `retries`.
    assert_eq!(record.steps[0].state, StepState::Queued);
    assert_eq!(record.steps[0].not_before_ms, None);
    // Lost again and again: after LOST_RETRIES retries the step fails, and the run
    // ends instead of being stuck.
    for number in 2..=LOST_RETRIES + 1 {
        let a = sim.assign(run, "a", "w1");
        assert_eq!(a.attempt, number);
        sim.start(&a);
        sim.finish(&a, stopped_by_worker());
    }
    let record = sim.run(run);
    assert!(record.state.is_terminal(), "the run must not be stuck");
    assert_eq!(record.steps[0].state, StepState::Failed);
    let reason = record.steps[0].reason.as_deref().unwrap();
    assert!(reason.contains("lost 4 times; giving up"), "{reason}");
    assert_eq!(record.steps[1].state, StepState::Skipped);
}

#[test]
fn a_retried_submission_with_the_same_request_id_starts_no_second_run() {
    let mut state = State::default();
    let submit = |request: &str| Command::SubmitRun {
        pipeline: pipeline(CHAIN),
        bundle_digest: "blake3:b".to_string(),
        submitter: "alice".to_string(),
        request_id: Some(request.to_string()),
        options: Default::default(),
        now_ms: 1,
        placements: Vec::new(),
    };
    let first = state.apply(submit("r-1")).unwrap();
    let again = state.apply(submit("r-1")).unwrap();
    let other = state.apply(submit("r-2")).unwrap();
    assert_eq!(first, Outcome::submitted(1));
    assert_eq!(again, Outcome::submitted(1));
    assert_eq!(other, Outcome::submitted(2));
    assert_eq!(state.runs.len(), 2);
    // The index is rebuilt from the records after a restart.
    let runs: Vec<Run> = state.runs.values().map(|r| Run::clone(r)).collect();
    let mut rebuilt = State::from_records(runs, Vec::new(), state.next_run_id);
    assert_eq!(rebuilt.apply(submit("r-2")).unwrap(), Outcome::submitted(2));
    assert_eq!(rebuilt.runs.len(), 2);
}

/// The leader applies the commands it proposed as they are; every other member
/// applies them decoded from the Raft entry. Both must be the same commands.
#[test]
fn commands_are_unchanged_by_the_raft_entry_encoding() {
    let mut report = exited_ok(&["model.bin"]);
    report.log = Some((digest("log"), 12));
    let commands = [
        Command::SubmitRun {
            pipeline: pipeline(
                "name: p\nparams:\n  k: 3\nsteps:\n  - name: a\n    command: [\"echo\", \"${params.k}\"]\n    env: {X: \"1\"}\n    timeout: 5s\n",
            ),
            bundle_digest: digest("bundle"),
            submitter: "alice".into(),
            request_id: Some("r".into()),
            options: Default::default(),
            now_ms: -1,
            placements: Vec::new(),
        },
        Command::SubmitRun {
            pipeline: pipeline("name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n"),
            bundle_digest: digest("bundle"),
            submitter: "alice".into(),
            request_id: None,
            options: Default::default(),
            now_ms: i64::MAX,
            placements: Vec::new(),
        },
        Command::RegisterWorker {
            worker: worker("w1", 4000, 1 << 30, 2),
            running: vec![key(1, "a", 1)],
            now_ms: 3,
        },
        Command::Assign {
            placements: vec![placement(1, "a", "w1", &[0, 1])],
            now_ms: 4,
        },
        Command::StepFinished {
            key: key(1, "a", 1),
            worker: "w1".into(),
            report,
            now_ms: 5,
            placements: Vec::new(),
        },
        Command::CancelRun { run: 1, now_ms: 6 },
    ];
    for command in commands {
        let bytes = serde_json::to_vec(&command).unwrap();
        let decoded: Command = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded, command);
    }
}
