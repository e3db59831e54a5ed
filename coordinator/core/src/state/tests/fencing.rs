//! Fencing of stale reports, cancelling runs, and worker registration.

use super::*;

// ---------------------------------------------------------------------------
// Fencing.

#[test]
fn stale_and_foreign_reports_are_refused_without_changing_anything() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("w2"));
    let run = sim.submit(
        r#"
name: p
steps:
  - name: a
    command: ["true"]
    outputs: [x.txt]
    retries: 1
  - name: b
    command: ["true"]
    inputs: {x: a/x.txt}
  - name: c
    command: ["true"]
"#,
    );
    let first = sim.assign(run, "a", "w1");
    sim.start(&first);
    sim.finish(&first, exited(1));
    let second = sim.assign(run, "a", "w2");
    sim.start(&second);
    sim.mark();

    let check = |sim: &mut Sim, what: &str, key: AttemptKey, worker: &str, needle: &str| {
        let before = sim.snapshot();
        let finished = sim
            .finish_as(&key, worker, exited_ok(&["x.txt"]))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let detail = refusal_detail(finished);
        assert!(detail.contains(needle), "{what}: {detail}");
        sim.assert_untouched(&before, what);
        let started = sim.start_as(&key, worker);
        let detail = refusal_detail(started);
        assert!(detail.contains(needle), "{what} (start): {detail}");
        sim.assert_untouched(&before, what);
    };
    check(
        &mut sim,
        "the previous attempt",
        first.clone(),
        "w1",
        "stale",
    );
    check(
        &mut sim,
        "a future attempt",
        key(run, "a", 3),
        "w2",
        "stale",
    );
    check(&mut sim, "another worker", second.clone(), "w1", "w2");
    check(&mut sim, "an unknown worker", second.clone(), "ghost", "w2");
    check(
        &mut sim,
        "a step never assigned",
        key(run, "c", 1),
        "w1",
        "never assigned",
    );
    check(
        &mut sim,
        "a waiting step",
        key(run, "b", 1),
        "w1",
        "never assigned",
    );

    // The real report goes through; a duplicate of it is then refused.
    sim.finish(&second, exited_ok(&["x.txt"]));
    assert_eq!(sim.step_state(run, "a"), StepState::Succeeded);
    sim.mark();
    check(
        &mut sim,
        "a finished attempt",
        second.clone(),
        "w2",
        "already ended",
    );
    assert_eq!(sim.step(run, "a").outputs[0].attempt, 2);

    // Unknown runs and steps are errors, not refusals.
    let before = sim.snapshot();
    assert_eq!(
        sim.finish_as(&key(99, "a", 1), "w1", exited(0)),
        Err(StateError::RunNotFound(99))
    );
    let now_ms = sim.tick();
    assert_eq!(
        sim.apply(Command::StepStarted {
            key: key(99, "a", 1),
            worker: "w1".to_string(),
            now_ms,
        }),
        Err(StateError::RunNotFound(99))
    );
    assert_eq!(
        sim.finish_as(&key(run, "zz", 1), "w1", exited(0)),
        Err(StateError::StepNotFound {
            run,
            step: "zz".to_string()
        })
    );
    sim.assert_untouched(&before, "reports for unknown records");
}

#[test]
fn a_report_for_an_attempt_that_is_retried_is_refused() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    sim.complete(run, "a", "w1");
    let first = sim.assign(run, "b", "w1");
    sim.start(&first);
    sim.finish(&first, exited(1));
    assert_eq!(sim.step_state(run, "b"), StepState::Queued);
    sim.mark();

    // The attempt is current but over; the step waits for its retry.
    let before = sim.snapshot();
    let detail = refusal_detail(sim.finish_as(&first, "w1", exited_ok(&[])).unwrap());
    assert!(detail.contains("already ended (queued)"), "{detail}");
    sim.assert_untouched(&before, "a late duplicate");
}

#[test]
fn a_repeated_start_keeps_the_first_start_time() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    let a = sim.assign(run, "a", "w1");
    sim.start(&a);
    let first = sim.now;
    sim.start(&a);
    assert_eq!(sim.attempt(&a).started_ms, Some(first));
    assert_eq!(sim.step_state(run, "a"), StepState::Running);
}

// ---------------------------------------------------------------------------
// Cancel.

#[test]
fn cancel_stops_active_attempts_and_ends_every_open_step() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(worker("w2", 4000, 4 * GIB, 1));
    let run = sim.submit(
        r#"
name: c
steps:
  - name: done
    command: ["true"]
  - name: running
    command: ["true"]
  - name: assigned
    command: ["true"]
    resources: {gpu: 1}
  - name: queued
    command: ["true"]
  - name: waiting
    command: ["true"]
    needs: [running]
"#,
    );
    let other = sim.submit(CHAIN);
    let other_a = sim.assign(other, "a", "w1");

    sim.complete(run, "done", "w1");
    let running = sim.assign(run, "running", "w1");
    sim.start(&running);
    let assigned = sim.try_assign(run, "assigned", "w2", &[0]).unwrap();
    sim.mark();

    let stop = match sim.cancel(run) {
        Ok(Outcome::Cancelled { stop }) => stop,
        other => panic!("cancel: {other:?}"),
    };
    let at = sim.now;
    assert_eq!(
        stop,
        [
            (running.clone(), "w1".to_string()),
            (assigned.clone(), "w2".to_string())
        ]
    );
    for key in [&running, &assigned] {
        let attempt = sim.attempt(key);
        assert_eq!(attempt.outcome, Some(AttemptOutcome::Cancelled));
        assert_eq!(attempt.finished_ms, Some(at));
        assert_eq!(attempt.reason.as_deref(), Some("run cancelled"));
    }
    assert_eq!(
        sim.states(run),
        [
            ("done", StepState::Succeeded),
            ("running", StepState::Cancelled),
            ("assigned", StepState::Cancelled),
            ("queued", StepState::Cancelled),
            ("waiting", StepState::Cancelled),
        ]
    );
    assert_eq!(sim.step(run, "done").reason, None);
    assert_eq!(
        sim.step(run, "done").attempts[0].outcome,
        Some(AttemptOutcome::Succeeded)
    );
    assert_eq!(
        sim.step(run, "queued").reason.as_deref(),
        Some("run cancelled")
    );
    assert!(sim.step(run, "queued").attempts.is_empty());
    let record = sim.run(run);
    assert_eq!(record.state, RunState::Cancelled);
    assert_eq!(record.finished_ms, Some(at));
    assert_eq!(sim.changed_runs(), [run]);

    // Loads: the other run keeps its attempt; the cancelled one holds nothing.
    assert_eq!(sim.load_keys("w1"), [other_a]);
    assert!(sim.load_keys("w2").is_empty());
    assert!(sim.gpus_in_use("w2").is_empty());
    assert!(sim.queued().is_empty());
    assert_eq!(sim.run(other).state, RunState::Running);

    // Late reports from the stopped attempts are refused.
    sim.mark();
    let before = sim.snapshot();
    let detail = refusal_detail(sim.finish_as(&running, "w1", exited(0)).unwrap());
    assert!(detail.contains("already ended (cancelled)"), "{detail}");
    let detail = refusal_detail(sim.start_as(&assigned, "w2"));
    assert!(detail.contains("already ended"), "{detail}");
    assert!(
        sim.assign_all(vec![placement(run, "queued", "w1", &[])])
            .is_empty()
    );
    sim.assert_untouched(&before, "reports after cancel");

    assert_eq!(
        sim.cancel(run),
        Err(StateError::RunAlreadyFinished {
            run,
            state: "cancelled"
        })
    );
    assert_eq!(sim.cancel(42), Err(StateError::RunNotFound(42)));
    sim.assert_untouched(&before, "refused cancels");
}

#[test]
fn a_finished_run_cannot_be_cancelled() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let ok = sim.submit(CHAIN);
    sim.complete(ok, "a", "w1");
    sim.complete(ok, "b", "w1");
    let failed = sim.submit(CHAIN);
    let a = sim.assign(failed, "a", "w1");
    sim.finish(&a, exited(1));
    assert_eq!(sim.run(failed).state, RunState::Failed);
    sim.mark();

    let before = sim.snapshot();
    assert_eq!(
        sim.cancel(ok),
        Err(StateError::RunAlreadyFinished {
            run: ok,
            state: "succeeded"
        })
    );
    assert_eq!(
        sim.cancel(failed),
        Err(StateError::RunAlreadyFinished {
            run: failed,
            state: "failed"
        })
    );
    sim.assert_untouched(&before, "cancelling finished runs");
}

// ---------------------------------------------------------------------------
// Worker registration.

#[test]
fn reregistering_loses_unlisted_running_attempts_and_resends_unstarted_ones() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("w2"));
    let run = sim.submit(FIVE);
    let retry = sim.assign(run, "retry", "w1");
    let fin = sim.assign(run, "final", "w1");
    let pending = sim.assign(run, "pending", "w1");
    let kept = sim.assign(run, "kept", "w1");
    let kept_pending = sim.assign(run, "kept-pending", "w1");
    for key in [&retry, &fin, &kept] {
        sim.start(key);
    }
    // Another worker's attempt is not affected by w1 restarting.
    let elsewhere_run = sim.submit(CHAIN);
    let elsewhere = sim.assign(elsewhere_run, "a", "w2");
    sim.start(&elsewhere);
    let kept_before = sim.step(run, "kept").clone();
    let kept_pending_before = sim.step(run, "kept-pending").clone();
    let pending_before = sim.step(run, "pending").clone();
    sim.mark();

    let mut restarted = big_worker("w1");
    restarted.session = "w1-session-2".to_string();
    restarted.registered_ms = 5;
    let resend = sim.register_with(
        restarted.clone(),
        vec![kept.clone(), kept_pending.clone(), key(77, "ghost", 1)],
    );
    let at = sim.now;

    assert_eq!(
        resend,
        std::slice::from_ref(&pending),
        "only the unlisted, unstarted attempt"
    );
    assert_eq!(sim.state.workers["w1"], restarted);
    assert!(sim.changed_workers().contains(&"w1".to_string()));
    assert!(sim.changed_runs().contains(&run));

    // Running and unlisted, one retry left: lost, then queued again.
    let lost = sim.attempt(&retry);
    assert_eq!(lost.outcome, Some(AttemptOutcome::Lost));
    assert_eq!(lost.finished_ms, Some(at));
    assert!(
        lost.reason
            .as_deref()
            .unwrap_or_default()
            .contains("re-registered"),
        "{:?}",
        lost.reason
    );
    assert_eq!(sim.step_state(run, "retry"), StepState::Queued);
    assert!(
        sim.step(run, "retry")
            .reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("retrying after attempt 1"),
    );
    // Running and unlisted, no retries: a lost attempt does not use up `retries`,
    // so it is queued again too; its dependents wait.
    assert_eq!(sim.attempt(&fin).outcome, Some(AttemptOutcome::Lost));
    assert_eq!(sim.step_state(run, "final"), StepState::Queued);
    assert_eq!(sim.step(run, "final").not_before_ms, None, "no backoff");
    assert_eq!(sim.step_state(run, "after"), StepState::Waiting);
    // Listed or merely assigned: untouched.
    assert_eq!(sim.step(run, "kept"), &kept_before);
    assert_eq!(sim.step(run, "kept-pending"), &kept_pending_before);
    assert_eq!(sim.step(run, "pending"), &pending_before);
    assert_eq!(sim.step_state(run, "pending"), StepState::Assigned);
    assert_eq!(sim.step_state(elsewhere_run, "a"), StepState::Running);

    assert_eq!(
        sim.load_keys("w1"),
        [kept.clone(), kept_pending.clone(), pending.clone()]
    );
    assert_eq!(sim.load_keys("w2"), [elsewhere]);
    assert_eq!(
        sim.state.assigned_to("w1"),
        [kept_pending.clone(), pending.clone()]
    );
    assert_eq!(sim.run(run).state, RunState::Running);

    // The lost step is retried as attempt 2; the resent attempt can still start.
    let again = sim.assign(run, "retry", "w1");
    assert_eq!(again.attempt, 2);
    sim.start(&pending);
    assert_eq!(sim.step_state(run, "pending"), StepState::Running);

    // A second restart that lists nothing loses both again: lost attempts are
    // retried (up to LOST_RETRIES) without using up `retries`.
    sim.start(&again);
    let resend = sim.register_with(restarted, vec![kept.clone()]);
    assert_eq!(
        resend,
        std::slice::from_ref(&kept_pending),
        "still unstarted, sent again"
    );
    assert_eq!(sim.step_state(run, "retry"), StepState::Queued);
    assert_eq!(sim.step(run, "retry").attempts.len(), 2);
    assert_eq!(sim.step_state(run, "pending"), StepState::Queued);
    assert_eq!(sim.step_state(run, "kept"), StepState::Running);
    assert_eq!(sim.step_state(run, "kept-pending"), StepState::Assigned);
    assert_eq!(sim.load_keys("w1"), [kept, kept_pending]);
}

#[test]
fn registering_a_new_worker_resends_nothing() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    let a = sim.assign(run, "a", "w1");
    sim.mark();
    let resend = sim.register_with(big_worker("w2"), vec![a]);
    assert!(resend.is_empty());
    assert_eq!(sim.state.workers.len(), 2);
    assert!(sim.state.loads.contains_key("w2"));
    assert_eq!(sim.step_state(run, "a"), StepState::Assigned);
    assert!(sim.changed_runs().is_empty());
    assert_eq!(sim.changed_workers(), ["w2"]);
}
