//! Commands sent again after an attempt whose outcome is unknown (a forward cut
//! short by a leader change), and the leader's stamping of time: every command
//! that [`Command::safe_to_resend`] allows leaves the state as one application
//! did, even stamped later by a new leader, and its answer settles to the first's.

use super::*;

/// A pipeline that times out after ten minutes.
const TEN_MINUTES: &str = r#"
name: slow
timeout: 10m
steps:
  - name: a
    command: ["true"]
"#;

/// Applies `command`, then the same command again as a new leader proposes it
/// (stamped a minute later), and checks that the second application changed
/// nothing. Returns both answers, the second settled.
fn twice(
    sim: &mut Sim,
    command: Command,
) -> (Result<Outcome, StateError>, Result<Outcome, StateError>) {
    assert!(command.safe_to_resend(), "{command:?}");
    let first = sim.apply(command.clone());
    sim.mark();
    let before = sim.snapshot();
    let mut again = command;
    again.stamp(again.now_ms() + 60_000);
    let second = sim.apply(again.clone());
    let settled = sim.state.settle_resend(&again, second);
    sim.assert_untouched(&before, &format!("the resent {again:?}"));
    (first, settled)
}

fn nightly(owner: &str) -> Schedule {
    Schedule {
        name: "nightly".into(),
        cron: "0 0 * * *".into(),
        pipeline: pipeline(CHAIN),
        bundle_digest: "blake3:bundle".into(),
        code_digests: BTreeMap::new(),
        owner: owner.into(),
        created_ms: 0,
        paused: false,
        after_ms: 0,
        last_tick_ms: None,
        last_run: None,
        fired: 0,
        missed: 0,
    }
}

#[test]
fn submissions_with_a_request_id_start_one_run() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let now_ms = sim.tick();
    let submit = Command::SubmitRun {
        pipeline: pipeline(CHAIN),
        bundle_digest: "blake3:bundle".into(),
        submitter: "alice".into(),
        request_id: Some("req-1".into()),
        options: SubmitOptions::default(),
        now_ms,
        placements: Vec::new(),
    };
    let (first, second) = twice(&mut sim, submit);
    assert!(
        matches!(first, Ok(Outcome::RunSubmitted { .. })),
        "{first:?}"
    );
    assert_eq!(first, second);
    let run = match first {
        Ok(Outcome::RunSubmitted { run, .. }) => run,
        other => panic!("{other:?}"),
    };
    sim.complete(run, "a", "w1");
    sim.complete(run, "b", "w1");

    let now_ms = sim.tick();
    let rerun = Command::RerunRun {
        source: run,
        from: Some("b".into()),
        submitter: "alice".into(),
        request_id: Some("req-2".into()),
        now_ms,
    };
    let (first, second) = twice(&mut sim, rerun);
    assert!(matches!(first, Ok(Outcome::RunSubmitted { run: id, .. }) if id != run));
    assert_eq!(first, second);
}

#[test]
fn a_submission_without_a_request_id_is_never_resent() {
    let mut sim = Sim::new();
    let submit = Command::SubmitRun {
        pipeline: pipeline(CHAIN),
        bundle_digest: "blake3:bundle".into(),
        submitter: "alice".into(),
        request_id: None,
        options: SubmitOptions::default(),
        now_ms: 1,
        placements: Vec::new(),
    };
    assert!(!submit.safe_to_resend());
    // Why: a second application would start a second run.
    sim.apply(submit.clone()).unwrap();
    sim.apply(submit).unwrap();
    assert_eq!(sim.state.runs.len(), 2);
    // The scheduler's placements are its own, never forwarded nor resent.
    assert!(
        !Command::Assign {
            placements: Vec::new(),
            now_ms: 1
        }
        .safe_to_resend()
    );
}

#[test]
fn worker_commands_resent_change_nothing() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(FIVE);
    let running = sim.assign(run, "retry", "w1");
    sim.start(&running);
    let assigned = sim.assign(run, "final", "w1");

    // A worker re-registering with what it runs (its new leader's answer lost).
    let now_ms = sim.tick();
    let mut again = big_worker("w1");
    again.session = "w1-session-2".into();
    let register = Command::RegisterWorker {
        worker: again,
        running: vec![running.clone()],
        now_ms,
    };
    let (first, second) = twice(&mut sim, register);
    assert_eq!(first, second);
    assert_eq!(sim.step_state(run, "retry"), StepState::Running);

    let now_ms = sim.tick();
    let started = Command::StepStarted {
        key: assigned.clone(),
        worker: "w1".into(),
        now_ms,
    };
    let (first, second) = twice(&mut sim, started);
    assert!(accepted(&first.unwrap()) && accepted(&second.unwrap()));

    // A report resent: the second is fenced off and changes nothing.
    let now_ms = sim.tick();
    let finished = Command::StepFinished {
        key: running.clone(),
        worker: "w1".into(),
        report: exited(0),
        now_ms,
        placements: Vec::new(),
    };
    let (first, _) = twice(&mut sim, finished);
    assert!(accepted(&first.unwrap()));
    assert_eq!(sim.attempt(&running).number, 1);

    let now_ms = sim.tick();
    let mode = Command::SetWorkerMode {
        worker: "w1".into(),
        mode: WorkerMode::Cordoned,
        now_ms,
    };
    let (first, second) = twice(&mut sim, mode);
    assert_eq!(first, second);

    let now_ms = sim.tick();
    let lost = Command::WorkerLost {
        worker: "w1".into(),
        session: "w1-session-2".into(),
        reason: "no heartbeat".into(),
        now_ms,
    };
    let (first, _) = twice(&mut sim, lost);
    assert!(matches!(first, Ok(Outcome::WorkerLost { ended, .. }) if !ended.is_empty()));
}

#[test]
fn a_resent_cancel_answers_as_the_first_did() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    let a = sim.assign(run, "a", "w1");
    sim.start(&a);
    let now_ms = sim.tick();
    let (first, second) = twice(&mut sim, Command::CancelRun { run, now_ms });
    assert!(matches!(first, Ok(Outcome::Cancelled { stop }) if stop.len() == 1));
    // The attempt was stopped by the first; nothing more to stop.
    assert_eq!(second, Ok(Outcome::Cancelled { stop: Vec::new() }));
    // A run that ended otherwise is still refused, resent or not.
    let done = sim.submit(CHAIN);
    sim.complete(done, "a", "w1");
    sim.complete(done, "b", "w1");
    let cancel = Command::CancelRun {
        run: done,
        now_ms: sim.tick(),
    };
    let answer = sim.apply(cancel.clone());
    assert!(matches!(
        sim.state.settle_resend(&cancel, answer),
        Err(StateError::RunAlreadyFinished { .. })
    ));
}

#[test]
fn schedule_and_pin_commands_resent() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let now_ms = sim.tick();
    let create = Command::CreateSchedule {
        schedule: nightly("alice"),
        now_ms,
    };
    let (first, second) = twice(&mut sim, create);
    assert_eq!((first, second), (Ok(Outcome::Done), Ok(Outcome::Done)));
    // Someone else's schedule of that name is not taken for ours.
    let theirs = Command::CreateSchedule {
        schedule: nightly("bob"),
        now_ms: sim.tick(),
    };
    let answer = sim.apply(theirs.clone());
    assert!(matches!(
        sim.state.settle_resend(&theirs, answer),
        Err(StateError::ScheduleExists(_))
    ));

    for paused in [true, false] {
        let now_ms = sim.tick();
        let pause = Command::PauseSchedule {
            name: "nightly".into(),
            paused,
            now_ms,
        };
        let (first, second) = twice(&mut sim, pause);
        assert_eq!(first, second);
    }
    let created = sim.state.catalog.schedules["nightly"].after_ms;
    let now_ms = sim.tick();
    let fire = Command::FireSchedule {
        name: "nightly".into(),
        tick_ms: created + 1,
        missed: 0,
        now_ms,
    };
    let (first, second) = twice(&mut sim, fire);
    assert!(
        matches!(first, Ok(Outcome::RunSubmitted { .. })),
        "{first:?}"
    );
    assert_eq!(second, Ok(Outcome::Unchanged));
    assert_eq!(sim.state.catalog.schedules["nightly"].fired, 1);

    let now_ms = sim.tick();
    let delete = Command::DeleteSchedule {
        name: "nightly".into(),
        now_ms,
    };
    let (first, second) = twice(&mut sim, delete);
    assert_eq!((first, second), (Ok(Outcome::Done), Ok(Outcome::Done)));

    let run = sim.submit(CHAIN);
    sim.complete(run, "a", "w1");
    let digest = sim.step(run, "a").outputs[0].digest.clone();
    let now_ms = sim.tick();
    let pin = Command::PinArtifact {
        tag: "best".into(),
        digest,
        owner: "alice".into(),
        now_ms,
    };
    let (first, second) = twice(&mut sim, pin);
    assert_eq!((first, second), (Ok(Outcome::Done), Ok(Outcome::Done)));
    let now_ms = sim.tick();
    let unpin = Command::UnpinArtifact {
        tag: "best".into(),
        now_ms,
    };
    let (first, second) = twice(&mut sim, unpin);
    assert_eq!((first, second), (Ok(Outcome::Done), Ok(Outcome::Done)));
}

#[test]
fn leader_commands_resent_change_nothing() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    for _ in 0..3 {
        let run = sim.submit(CHAIN);
        sim.complete(run, "a", "w1");
        sim.complete(run, "b", "w1");
    }
    let now_ms = sim.tick();
    let (first, _) = twice(
        &mut sim,
        Command::Collect {
            keep_last: 1,
            now_ms,
            grace_ms: 0,
        },
    );
    assert!(matches!(first, Ok(Outcome::Collected { runs, .. }) if runs.len() == 2));

    let slow = sim.submit(TEN_MINUTES);
    let submitted = sim.run(slow).submitted_ms;
    let (first, second) = twice(
        &mut sim,
        Command::TimeOutRun {
            run: slow,
            now_ms: submitted + 11 * 60_000,
        },
    );
    assert!(matches!(first, Ok(Outcome::Cancelled { .. })));
    assert_eq!(second, Ok(Outcome::Unchanged));
    assert_eq!(sim.run(slow).state, RunState::Failed);
}

#[test]
fn stamping_sets_the_time_of_every_command() {
    let mut commands = vec![
        Command::SubmitRun {
            pipeline: pipeline(CHAIN),
            bundle_digest: "b".into(),
            submitter: "alice".into(),
            request_id: None,
            options: SubmitOptions::default(),
            now_ms: 1,
            placements: Vec::new(),
        },
        Command::RegisterWorker {
            worker: big_worker("w1"),
            running: Vec::new(),
            now_ms: 1,
        },
        Command::CancelRun { run: 1, now_ms: 1 },
        Command::TimeOutRun { run: 1, now_ms: 1 },
        Command::CreateSchedule {
            schedule: nightly("alice"),
            now_ms: 1,
        },
    ];
    for command in &mut commands {
        command.stamp(42);
        assert_eq!(command.now_ms(), 42, "{command:?}");
    }
    match &commands[1] {
        Command::RegisterWorker { worker, .. } => assert_eq!(worker.registered_ms, 42),
        other => panic!("{other:?}"),
    }
}

/// A follower whose clock is 30 minutes slow takes a submission: the leader
/// stamps it again, so the run's ten-minute timeout counts from the leader's
/// clock, which the leader also checks it against.
#[test]
fn a_run_stamped_by_the_leader_times_out_by_the_leaders_clock() {
    let leader_now = 100 * 60 * 60_000;
    let follower_now = leader_now - 30 * 60_000;
    for stamped_by_leader in [false, true] {
        let mut sim = Sim::new();
        let mut submit = Command::SubmitRun {
            pipeline: pipeline(TEN_MINUTES),
            bundle_digest: "b".into(),
            submitter: "alice".into(),
            request_id: Some("r".into()),
            options: SubmitOptions::default(),
            now_ms: follower_now,
            placements: Vec::new(),
        };
        if stamped_by_leader {
            submit.stamp(leader_now);
        }
        sim.apply(submit).unwrap();
        let past = sim.state.runs_past_timeout(leader_now + 60_000);
        // Stamped by the follower, the run looks 31 minutes old at once.
        assert_eq!(past.is_empty(), stamped_by_leader, "{past:?}");
        assert_eq!(
            sim.state
                .runs_past_timeout(leader_now + 10 * 60_000 + 1)
                .len(),
            1
        );
    }
}
