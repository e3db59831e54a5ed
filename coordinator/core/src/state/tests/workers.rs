//! Lost workers, cordon and drain, run timeouts, retry delays, usage, and
//! placements that went stale.

use super::*;

/// Two roomy workers and a run of CHAIN whose step `a` runs on w1.
fn running_on_w1() -> (Sim, RunId, AttemptKey) {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("w2"));
    let run = sim.submit(CHAIN);
    let a = sim.assign(run, "a", "w1");
    sim.start(&a);
    (sim, run, a)
}

fn lose(sim: &mut Sim, worker: &str, session: &str) -> Outcome {
    let now_ms = sim.tick();
    sim.apply(Command::WorkerLost {
        worker: worker.to_string(),
        session: session.to_string(),
        reason: "no heartbeat for 12s (lease 10s)".to_string(),
        now_ms,
    })
    .unwrap()
}

#[test]
fn a_lost_worker_loses_its_attempts_which_are_retried_elsewhere_and_its_late_report_is_refused() {
    let (mut sim, run, a) = running_on_w1();
    let outcome = lose(&mut sim, "w1", "w1-session-1");
    assert_eq!(
        outcome,
        Outcome::WorkerLost {
            worker: "w1".to_string(),
            ended: vec![a.clone()]
        }
    );
    let w1 = &sim.state.workers["w1"];
    assert!(w1.lost_ms.is_some() && !w1.schedulable());
    assert!(sim.load_keys("w1").is_empty(), "its capacity is free");
    let attempt = sim.attempt(&a);
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Lost));
    assert_eq!(
        attempt.reason.as_deref(),
        Some("worker lost: no heartbeat for 12s (lease 10s)")
    );
    // Retried at once, without using up `retries` (CHAIN's `a` has none).
    assert_eq!(sim.step_state(run, "a"), StepState::Queued);
    assert_eq!(sim.step(run, "a").not_before_ms, None);

    // The second attempt runs on w2 and succeeds.
    let again = sim.assign(run, "a", "w2");
    assert_eq!(again.attempt, 2);
    sim.start(&again);
    sim.succeed(&again);
    assert_eq!(sim.step_state(run, "a"), StepState::Succeeded);

    // w1 comes back and reports its old attempt: refused, nothing changes, the
    // step is not counted twice.
    sim.mark();
    let before = sim.snapshot();
    let late = sim.finish_as(&a, "w1", exited_ok(&["x.txt"]));
    assert!(refusal_detail(late.unwrap()).contains("stale"));
    sim.assert_untouched(&before, "a late report of a lost attempt");
    assert_eq!(sim.step(run, "a").attempts.len(), 2);
    assert_eq!(sim.step(run, "a").outputs[0].attempt, 2);

    // Declaring it lost again, or with an old session, changes nothing.
    sim.mark();
    let before = sim.snapshot();
    for session in ["w1-session-1", "w1-session-0"] {
        let outcome = lose(&mut sim, "w1", session);
        assert_eq!(
            outcome,
            Outcome::WorkerLost {
                worker: "w1".to_string(),
                ended: Vec::new()
            }
        );
    }
    sim.assert_untouched(&before, "a repeated or stale WorkerLost");

    // Registering again makes it schedulable.
    sim.register(big_worker("w1"));
    assert!(sim.state.workers["w1"].schedulable());
}

#[test]
fn a_worker_lost_after_it_registered_a_new_session_is_not_declared_lost() {
    let (mut sim, run, a) = running_on_w1();
    let mut restarted = big_worker("w1");
    restarted.session = "w1-session-2".to_string();
    sim.register_with(restarted, vec![a.clone()]);
    sim.mark();
    let before = sim.snapshot();
    lose(&mut sim, "w1", "w1-session-1");
    sim.assert_untouched(&before, "WorkerLost for an old session");
    assert_eq!(sim.step_state(run, "a"), StepState::Running);
}

#[test]
fn cordon_and_drain_stop_new_work_survive_a_restart_and_uncordon_restores_it() {
    let (mut sim, run, a) = running_on_w1();
    for mode in [WorkerMode::Cordoned, WorkerMode::Draining] {
        let now_ms = sim.tick();
        assert_eq!(
            sim.apply(Command::SetWorkerMode {
                worker: "w1".to_string(),
                mode,
                now_ms,
            }),
            Ok(Outcome::WorkerMode(mode))
        );
        assert!(!sim.state.workers["w1"].schedulable());
        // What runs there goes on.
        assert_eq!(sim.step_state(run, "a"), StepState::Running);
        assert_eq!(sim.load_keys("w1"), std::slice::from_ref(&a));
    }
    // A restart of the worker keeps the operator's choice.
    sim.register_with(big_worker("w1"), vec![a.clone()]);
    assert_eq!(sim.state.workers["w1"].mode, WorkerMode::Draining);
    let slots =
        crate::scheduler::worker_slots(&sim.state, &["w1".to_string(), "w2".to_string()].into());
    assert!(!slots[0].accepting && slots[1].accepting);
    let now_ms = sim.tick();
    sim.apply(Command::SetWorkerMode {
        worker: "w1".to_string(),
        mode: WorkerMode::Active,
        now_ms,
    })
    .unwrap();
    assert!(sim.state.workers["w1"].schedulable());

    // An unknown worker is an error that changes nothing.
    sim.mark();
    let before = sim.snapshot();
    let now_ms = sim.tick();
    assert_eq!(
        sim.apply(Command::SetWorkerMode {
            worker: "nope".to_string(),
            mode: WorkerMode::Cordoned,
            now_ms,
        }),
        Err(StateError::WorkerNotFound("nope".to_string()))
    );
    sim.assert_untouched(&before, "cordoning an unknown worker");
}

#[test]
fn a_run_past_its_timeout_stops_its_attempts_skips_the_rest_and_fails() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(&format!("timeout: 1m\n{CHAIN}"));
    let submitted = sim.run(run).submitted_ms;
    let a = sim.assign(run, "a", "w1");
    sim.start(&a);
    assert!(sim.state.runs_past_timeout(submitted + 59_999).is_empty());
    assert_eq!(sim.state.runs_past_timeout(submitted + 60_000), [run]);

    // Too early: nothing changes.
    sim.mark();
    let before = sim.snapshot();
    assert_eq!(
        sim.apply(Command::TimeOutRun {
            run,
            now_ms: submitted + 59_999
        }),
        Ok(Outcome::Unchanged)
    );
    sim.assert_untouched(&before, "an early TimeOutRun");

    let outcome = sim
        .apply(Command::TimeOutRun {
            run,
            now_ms: submitted + 60_000,
        })
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Cancelled {
            stop: vec![(a.clone(), "w1".to_string())]
        }
    );
    let record = sim.run(run);
    assert_eq!(record.state, RunState::Failed);
    assert_eq!(record.reason.as_deref(), Some("the run timed out after 1m"));
    assert_eq!(sim.attempt(&a).outcome, Some(AttemptOutcome::TimedOut));
    assert_eq!(sim.step_state(run, "a"), StepState::TimedOut);
    assert_eq!(sim.step_state(run, "b"), StepState::Skipped);
    assert!(sim.load_keys("w1").is_empty());
    // Once over, a second TimeOutRun changes nothing.
    sim.mark();
    let before = sim.snapshot();
    assert_eq!(
        sim.apply(Command::TimeOutRun {
            run,
            now_ms: submitted + 120_000
        }),
        Ok(Outcome::Unchanged)
    );
    sim.assert_untouched(&before, "a TimeOutRun for a finished run");
}

#[test]
fn retry_delays_double_up_to_the_cap() {
    assert_eq!(retry_delay_ms(1000, 1), 1000);
    assert_eq!(retry_delay_ms(1000, 2), 2000);
    assert_eq!(retry_delay_ms(1000, 4), 8000);
    assert_eq!(retry_delay_ms(1000, 40), ferry_spec::MAX_RETRY_BACKOFF_MS);
    assert_eq!(ferry_spec::format_duration_ms(1500), "1.5s");
    assert_eq!(ferry_spec::format_duration_ms(90_000), "1m30s");
    assert_eq!(ferry_spec::format_duration_ms(5_400_000), "1h30m");
}

#[test]
fn the_usage_a_worker_measured_is_kept_with_the_attempt() {
    let (mut sim, _, a) = running_on_w1();
    let mut report = exited_ok(&["x.txt"]);
    report.usage = Some(AttemptUsage {
        cpu_time_ms: 1234,
        peak_memory_bytes: 56 * MIB,
    });
    report.metrics = vec![
        MetricPoint {
            name: "loss".into(),
            value: 0.25,
            step: Some(3),
        },
        MetricPoint {
            name: "weird".into(),
            value: f64::NAN,
            step: None,
        },
    ];
    let metrics = report.metrics.clone();
    sim.finish(&a, report);
    assert_eq!(sim.attempt(&a).metrics, metrics, "a NaN equals itself here");
    assert_eq!(
        sim.attempt(&a).usage,
        Some(AttemptUsage {
            cpu_time_ms: 1234,
            peak_memory_bytes: 56 * MIB
        })
    );
}

#[test]
fn a_step_whose_start_was_never_reported_starts_when_the_worker_says_it_ran_from() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    let a = sim.assign(run, "a", "w1");
    let assigned = sim.attempt(&a).assigned_ms;
    let mut report = exited_ok(&["x.txt"]);
    report.ran_ms = Some(3);
    let at = sim.tick();
    sim.apply(Command::StepFinished {
        key: a.clone(),
        worker: "w1".to_string(),
        report,
        now_ms: at,
        placements: Vec::new(),
    })
    .unwrap();
    assert_eq!(sim.step_state(run, "a"), StepState::Succeeded);
    assert_eq!(sim.attempt(&a).started_ms, Some(at - 3));
    // Never before it was assigned, whatever the worker's clock says.
    let b = sim.assign(run, "b", "w1");
    let mut report = exited_ok(&[]);
    report.ran_ms = Some(1_000_000);
    let at = sim.tick();
    sim.apply(Command::StepFinished {
        key: b.clone(),
        worker: "w1".to_string(),
        report,
        now_ms: at,
        placements: Vec::new(),
    })
    .unwrap();
    assert_eq!(
        sim.attempt(&b).started_ms,
        Some(sim.attempt(&b).assigned_ms)
    );
    assert!(assigned < at);
}

#[test]
fn a_placement_on_a_worker_lost_or_cordoned_since_it_was_decided_is_dropped() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("w2"));
    let run = sim.submit(CHAIN);
    lose(&mut sim, "w1", "w1-session-1");
    let now_ms = sim.tick();
    sim.apply(Command::SetWorkerMode {
        worker: "w2".to_string(),
        mode: WorkerMode::Cordoned,
        now_ms,
    })
    .unwrap();
    sim.mark();
    let before = sim.snapshot();
    for worker in ["w1", "w2"] {
        assert!(sim.try_assign(run, "a", worker, &[]).is_none(), "{worker}");
    }
    sim.assert_untouched(&before, "placements on workers that take no work");
    assert_eq!(sim.step_state(run, "a"), StepState::Queued);
}
