//! Submitting, assigning, starting and finishing steps; retries, skipping and independent branches.

use super::*;

// ---------------------------------------------------------------------------
// Submit.

#[test]
fn submit_numbers_runs_from_one_and_queues_only_steps_without_needs() {
    let mut sim = Sim::new();
    assert_eq!(sim.state.next_run_id, 0, "a fresh state has issued no id");

    let first = sim.submit(CHAIN);
    let submitted_at = sim.now;
    let second = sim.submit(CHAIN);
    let third = sim.submit(CHAIN);
    assert_eq!((first, second, third), (1, 2, 3));
    assert_eq!(sim.state.next_run_id, 4);
    assert!(sim.meta_changed(), "next_run_id changed");
    assert_eq!(sim.changed_runs(), [1, 2, 3]);
    assert!(sim.changed_workers().is_empty());

    let run = sim.run(1);
    assert_eq!(run.id, 1);
    assert_eq!(run.state, RunState::Running);
    assert_eq!(run.submitted_ms, submitted_at);
    assert_eq!(run.finished_ms, None);
    assert_eq!(run.submitter, "alice");
    assert_eq!(run.bundle_digest, "blake3:bundle");
    assert_eq!(run.pipeline, pipeline(CHAIN));
    assert_eq!(
        sim.states(1),
        [("a", StepState::Queued), ("b", StepState::Waiting)]
    );
    for step in &run.steps {
        assert!(step.attempts.is_empty() && step.outputs.is_empty());
        assert_eq!(step.reason, None);
    }

    // Ids continue from the persisted counter.
    let mut restored = Sim::with_state(State::from_records(Vec::new(), Vec::new(), 7), 0);
    assert_eq!(restored.submit(CHAIN), 7);
    assert_eq!(restored.state.next_run_id, 8);
    let mut zero = Sim::with_state(State::from_records(Vec::new(), Vec::new(), 0), 0);
    assert_eq!(zero.submit(CHAIN), 1, "run ids start at 1");
}

// ---------------------------------------------------------------------------
// Assign.

#[test]
fn assign_creates_the_first_attempt_and_takes_worker_capacity() {
    let mut sim = Sim::new();
    sim.register(worker("w1", 4000, 8 * GIB, 2));
    let run = sim.submit(
        r#"
name: gpu
steps:
  - name: train
    command: [python, train.py]
    resources: {cpu: 2, memory: 1Gi, gpu: 1}
  - name: plot
    command: [python, plot.py]
"#,
    );
    sim.mark();

    let assigned = sim.assign_all(vec![
        placement(run, "train", "w1", &[1]),
        placement(run, "plot", "w1", &[]),
    ]);
    let at = sim.now;
    assert_eq!(
        assigned,
        [
            (key(run, "train", 1), "w1".to_string()),
            (key(run, "plot", 1), "w1".to_string())
        ]
    );
    assert_eq!(
        sim.states(run),
        [
            ("train", StepState::Assigned),
            ("plot", StepState::Assigned)
        ]
    );
    let train = sim.step(run, "train");
    assert_eq!(train.attempts.len(), 1);
    assert_eq!(
        train.attempts[0],
        Attempt {
            number: 1,
            worker: "w1".to_string(),
            gpus: vec![1],
            resources: Resources {
                cpu_millis: 2000,
                memory_bytes: GIB,
                gpus: 1,
            },
            assigned_ms: at,
            started_ms: None,
            finished_ms: None,
            outcome: None,
            exit_code: None,
            reason: None,
            log: None,
            usage: None,
            metrics: Vec::new(),
            image: None,
        }
    );
    assert_eq!(
        sim.attempt(&key(run, "plot", 1)).resources,
        default_resources()
    );
    assert_eq!(
        sim.in_use("w1"),
        Resources {
            cpu_millis: 2000 + DEFAULT_CPU_MILLIS,
            memory_bytes: GIB + DEFAULT_MEMORY_BYTES,
            gpus: 1,
        }
    );
    assert_eq!(sim.gpus_in_use("w1"), [1]);
    assert_eq!(
        sim.state.loads["w1"].attempts[&key(run, "train", 1)],
        (
            Resources {
                cpu_millis: 2000,
                memory_bytes: GIB,
                gpus: 1
            },
            vec![1]
        )
    );
    assert_eq!(sim.changed_runs(), [run]);
    assert!(sim.queued().is_empty());
    assert_eq!(
        sim.state.assigned_to("w1"),
        [key(run, "plot", 1), key(run, "train", 1)],
        "in key order"
    );
}

#[test]
fn assign_skips_placements_that_are_no_longer_valid_and_changes_nothing() {
    let mut sim = Sim::new();
    sim.register(worker("w1", 2000, 2 * GIB, 2));
    sim.register(worker("tiny", 1000, 128 * MIB, 0));
    let run = sim.submit(
        r#"
name: mixed
steps:
  - name: big
    command: ["true"]
    resources: {cpu: 4}
  - name: fat
    command: ["true"]
    resources: {memory: 4Gi}
  - name: gpu1
    command: ["true"]
    resources: {cpu: 100m, memory: 64Mi, gpu: 1}
  - name: gpu2
    command: ["true"]
    resources: {cpu: 100m, memory: 64Mi, gpu: 2}
  - name: gpu-b
    command: ["true"]
    resources: {cpu: 100m, memory: 64Mi, gpu: 1}
  - name: small
    command: ["true"]
    resources: {cpu: 100m, memory: 64Mi}
  - name: plain
    command: ["true"]
  - name: after
    command: ["true"]
    needs: [small]
"#,
    );
    // One GPU taken, so the worker is neither empty nor full.
    let held = sim.try_assign(run, "gpu1", "w1", &[0]).unwrap();
    sim.mark();

    let refused: Vec<(&str, Placement)> = vec![
        ("a waiting step", placement(run, "after", "w1", &[])),
        ("an assigned step", placement(run, "gpu1", "w1", &[1])),
        ("an unknown step", placement(run, "nope", "w1", &[])),
        ("an unknown worker", placement(run, "small", "ghost", &[])),
        ("an unknown run", placement(99, "small", "w1", &[])),
        ("not enough CPU", placement(run, "big", "w1", &[])),
        ("not enough memory", placement(run, "fat", "w1", &[])),
        (
            "not enough memory (default request)",
            placement(run, "plain", "tiny", &[]),
        ),
        ("a busy GPU", placement(run, "gpu2", "w1", &[0, 1])),
        (
            "a GPU the worker lacks",
            placement(run, "gpu2", "w1", &[1, 5]),
        ),
        (
            "a GPU on a GPU-less worker",
            placement(run, "gpu-b", "tiny", &[0]),
        ),
        ("too few GPUs", placement(run, "gpu2", "w1", &[1])),
        ("too many GPUs", placement(run, "small", "w1", &[1])),
        ("the same GPU twice", placement(run, "gpu2", "w1", &[1, 1])),
    ];
    for (what, p) in refused {
        let before = sim.snapshot();
        let assigned = sim.assign_all(vec![p.clone()]);
        assert!(
            assigned.is_empty(),
            "{what}: {p:?} was placed: {assigned:?}"
        );
        sim.assert_untouched(&before, what);
    }
    assert_eq!(sim.in_use("w1").gpus, 1);
    assert_eq!(sim.load_keys("w1"), [held]);
    assert!(sim.load_keys("tiny").is_empty());

    // In a mixed batch the valid placements go through, in order.
    let assigned = sim.assign_all(vec![
        placement(run, "big", "w1", &[]),
        placement(run, "small", "w1", &[]),
        placement(run, "small", "tiny", &[]),
    ]);
    assert_eq!(assigned, [(key(run, "small", 1), "w1".to_string())]);
    assert_eq!(sim.step(run, "small").attempts.len(), 1);
}

#[test]
fn assign_never_oversubscribes_a_worker() {
    let mut sim = Sim::new();
    sim.register(worker("w1", 1000, 4 * GIB, 1));
    let run = sim.submit(
        r#"
name: fill
steps:
  - name: s1
    command: ["true"]
    resources: {cpu: 400m, memory: 1Gi}
  - name: s2
    command: ["true"]
    resources: {cpu: 400m, memory: 1Gi}
  - name: s3
    command: ["true"]
    resources: {cpu: 400m, memory: 1Gi}
  - name: g1
    command: ["true"]
    resources: {cpu: 100m, memory: 1Mi, gpu: 1}
  - name: g2
    command: ["true"]
    resources: {cpu: 100m, memory: 1Mi, gpu: 1}
"#,
    );
    let assigned = sim.assign_all(vec![
        placement(run, "s1", "w1", &[]),
        placement(run, "s2", "w1", &[]),
        placement(run, "s3", "w1", &[]),
        placement(run, "g1", "w1", &[0]),
        placement(run, "g2", "w1", &[0]),
    ]);
    let names: Vec<&str> = assigned.iter().map(|(k, _)| k.step.as_str()).collect();
    assert_eq!(names, ["s1", "s2", "g1"], "s3 lacks CPU, g2's GPU is taken");
    assert_eq!(
        sim.in_use("w1"),
        Resources {
            cpu_millis: 900,
            memory_bytes: 2 * GIB + MIB,
            gpus: 1,
        }
    );
    assert_eq!(sim.gpus_in_use("w1"), [0]);
    assert_eq!(sim.step_state(run, "s3"), StepState::Queued);

    // Finishing s1 frees exactly its share; s3 now fits.
    let s1 = key(run, "s1", 1);
    sim.start(&s1);
    sim.succeed(&s1);
    assert_eq!(sim.in_use("w1").cpu_millis, 500);
    assert!(sim.try_assign(run, "s3", "w1", &[]).is_some());
    // Finishing g1 frees GPU 0 for g2.
    let g1 = key(run, "g1", 1);
    sim.start(&g1);
    sim.succeed(&g1);
    assert!(sim.gpus_in_use("w1").is_empty());
    assert!(sim.try_assign(run, "g2", "w1", &[0]).is_some());
    assert_eq!(sim.gpus_in_use("w1"), [0]);
}

// ---------------------------------------------------------------------------
// Started / finished.

#[test]
fn a_chain_runs_to_success() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);

    let a = sim.assign(run, "a", "w1");
    assert_eq!(a, key(run, "a", 1));
    sim.start(&a);
    let started_at = sim.now;
    assert_eq!(sim.step_state(run, "a"), StepState::Running);
    assert_eq!(sim.attempt(&a).started_ms, Some(started_at));
    assert_eq!(
        sim.in_use("w1"),
        default_resources(),
        "running holds capacity"
    );
    assert!(sim.state.assigned_to("w1").is_empty(), "a has started");

    sim.finish(&a, exited_ok(&["x.txt"]));
    let finished_at = sim.now;
    let attempt = sim.attempt(&a);
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(attempt.exit_code, Some(0));
    assert_eq!(attempt.started_ms, Some(started_at));
    assert_eq!(attempt.finished_ms, Some(finished_at));
    let record = sim.step(run, "a");
    assert_eq!(record.state, StepState::Succeeded);
    assert_eq!(record.reason, None);
    assert_eq!(
        record.outputs,
        [ArtifactRecord {
            name: "x.txt".to_string(),
            digest: digest("x.txt"),
            size: 5,
            attempt: 1,
        }]
    );
    assert_eq!(sim.step_state(run, "b"), StepState::Queued);
    assert_eq!(sim.queued(), [(run, "b".to_string())]);
    assert_eq!(sim.in_use("w1"), Resources::default(), "a's share is freed");
    assert!(sim.load_keys("w1").is_empty());
    assert_eq!(sim.run(run).state, RunState::Running);
    assert_eq!(sim.run(run).finished_ms, None);

    assert_eq!(
        sim.state.resolve_output(run, "a", "x.txt"),
        Some(&record.outputs[0])
    );
    assert_eq!(sim.state.resolve_output(run, "a", "y.txt"), None);
    assert_eq!(sim.state.resolve_output(run, "b", "x.txt"), None);
    assert_eq!(sim.state.resolve_output(run + 1, "a", "x.txt"), None);

    let b = sim.complete(run, "b", "w1");
    assert_eq!(b, key(run, "b", 1));
    let run_record = sim.run(run);
    assert_eq!(run_record.state, RunState::Succeeded);
    assert_eq!(run_record.finished_ms, Some(sim.now));
    assert!(
        run_record
            .steps
            .iter()
            .all(|s| s.state == StepState::Succeeded && s.attempts.len() == 1)
    );
    assert!(sim.load_keys("w1").is_empty());
    assert!(sim.queued().is_empty());
}

#[test]
fn a_step_is_queued_only_when_all_of_its_needs_succeeded() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(
        r#"
name: join
steps:
  - name: left
    command: ["true"]
    outputs: [l.txt]
  - name: right
    command: ["true"]
  - name: both
    command: ["true"]
    inputs: {l: left/l.txt}
    needs: [right]
"#,
    );
    assert_eq!(sim.run(run).pipeline.steps[2].needs, ["left", "right"]);
    let left = sim.assign(run, "left", "w1");
    let right = sim.assign(run, "right", "w1");
    sim.start(&left);
    sim.start(&right);

    sim.succeed(&left);
    assert_eq!(sim.step_state(run, "both"), StepState::Waiting);
    assert!(sim.try_assign(run, "both", "w1", &[]).is_none());

    sim.succeed(&right);
    assert_eq!(sim.step_state(run, "both"), StepState::Queued);
    sim.complete(run, "both", "w1");
    assert_eq!(sim.run(run).state, RunState::Succeeded);
}

#[test]
fn success_without_a_declared_output_fails_the_attempt() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(
        r#"
name: p
steps:
  - name: a
    command: ["true"]
    outputs: [x.txt, out/y.bin]
  - name: b
    command: ["true"]
    inputs: {x: a/x.txt}
"#,
    );
    let a = sim.assign(run, "a", "w1");
    sim.start(&a);
    sim.finish(&a, exited_ok(&["x.txt", "stray.log"]));

    let attempt = sim.attempt(&a);
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Failed));
    assert_eq!(attempt.exit_code, Some(0));
    let reason = attempt.reason.clone().unwrap_or_default();
    assert!(reason.contains("out/y.bin"), "{reason}");
    assert!(!reason.contains("x.txt"), "x.txt was reported: {reason}");
    let record = sim.step(run, "a");
    assert_eq!(record.state, StepState::Failed);
    assert_eq!(record.reason.as_deref(), Some(reason.as_str()));
    assert!(
        record.outputs.is_empty(),
        "a failed attempt stores no outputs"
    );
    assert_eq!(sim.state.resolve_output(run, "a", "x.txt"), None);
    assert_eq!(sim.step_state(run, "b"), StepState::Skipped);
    assert_eq!(sim.run(run).state, RunState::Failed);
    assert!(sim.load_keys("w1").is_empty());
}

#[test]
fn failure_reasons_name_the_exit() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(
        "name: p\nsteps:\n  - name: a\n    command: [\"false\"]\n  - name: b\n    command: [\"false\"]\n  - name: c\n    command: [\"false\"]\n",
    );
    let a = sim.assign(run, "a", "w1");
    sim.finish(&a, exited(3));
    assert_eq!(sim.attempt(&a).exit_code, Some(3));
    assert_eq!(
        sim.attempt(&a).reason.as_deref(),
        Some("exited with code 3")
    );

    let b = sim.assign(run, "b", "w1");
    sim.finish(
        &b,
        AttemptReport {
            outcome: ReportedOutcome::Exited,
            exit_code: None,
            reason: None,
            outputs: Vec::new(),
            log: None,
            usage: None,
            ran_ms: None,
            metrics: Vec::new(),
            image: None,
        },
    );
    assert_eq!(
        sim.attempt(&b).reason.as_deref(),
        Some("killed by a signal")
    );

    let c = sim.assign(run, "c", "w1");
    sim.finish(
        &c,
        AttemptReport {
            outcome: ReportedOutcome::Error,
            exit_code: None,
            reason: Some("image pull failed".to_string()),
            outputs: Vec::new(),
            log: None,
            usage: None,
            ran_ms: None,
            metrics: Vec::new(),
            image: None,
        },
    );
    assert_eq!(sim.attempt(&c).outcome, Some(AttemptOutcome::Failed));
    assert_eq!(
        sim.step(run, "c").reason.as_deref(),
        Some("image pull failed")
    );
    assert_eq!(sim.run(run).state, RunState::Failed);
}

// ---------------------------------------------------------------------------
// Retries, skipping, independent branches.

#[test]
fn retries_then_fails_skipping_dependents_while_independent_steps_go_on() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("w2"));
    let run = sim.submit(
        r#"
name: branches
steps:
  - name: prep
    command: ["false"]
    outputs: [data.csv]
    retries: 2
  - name: lint
    command: ["true"]
  - name: train
    command: ["true"]
    inputs: {d: prep/data.csv}
    outputs: [model.bin]
  - name: report
    command: ["true"]
    inputs: {m: train/model.bin}
  - name: docs
    command: ["true"]
    needs: [lint]
"#,
    );
    let lint = sim.assign(run, "lint", "w2");
    sim.start(&lint);

    for number in 1..=3 {
        // Alternate workers: the retry may land anywhere.
        let on = if number % 2 == 1 { "w1" } else { "w2" };
        let attempt = sim.assign(run, "prep", on);
        assert_eq!(attempt, key(run, "prep", number));
        sim.start(&attempt);
        sim.finish(&attempt, exited(1));
        assert_eq!(sim.attempt(&attempt).outcome, Some(AttemptOutcome::Failed));
        assert!(sim.load_keys(on).iter().all(|k| k.step != "prep"));
        let prep = sim.step(run, "prep");
        if number < 3 {
            assert_eq!(prep.state, StepState::Queued, "attempt {number} is retried");
            let reason = prep.reason.clone().unwrap_or_default();
            // Exponential backoff from the default 1 s: 1 s, then 2 s.
            let delay = 1000 << (number - 1);
            assert!(
                reason.starts_with(&format!(
                    "retry {number} of 2 in {}s after attempt {number}",
                    delay / 1000
                )) && reason.contains("exited with code 1"),
                "{reason}"
            );
            let finished = sim.attempt(&attempt).finished_ms.unwrap();
            assert_eq!(prep.not_before_ms, Some(finished + delay));
            let (waiting, next_retry) =
                crate::scheduler::ready_queue(&sim.state, finished + delay - 1);
            assert!(waiting.is_empty());
            assert_eq!(next_retry, Some(finished + delay));
            assert_eq!(
                crate::scheduler::ready_queue(&sim.state, finished + delay)
                    .0
                    .len(),
                1
            );
            assert_eq!(sim.step_state(run, "train"), StepState::Waiting);
            assert_eq!(sim.step_state(run, "report"), StepState::Waiting);
        } else {
            assert_eq!(prep.state, StepState::Failed);
            assert_eq!(prep.reason.as_deref(), Some("exited with code 1"));
        }
        assert!(
            !sim.queued()
                .iter()
                .any(|(_, s)| s == "train" || s == "report"),
            "dependents are never queued"
        );
    }
    let prep = sim.step(run, "prep");
    assert_eq!(prep.attempts.len(), 3, "retries: 2 means three attempts");
    assert_eq!(
        prep.attempts
            .iter()
            .map(|a| a.worker.as_str())
            .collect::<Vec<_>>(),
        ["w1", "w2", "w1"]
    );
    assert!(
        sim.try_assign(run, "prep", "w1", &[]).is_none(),
        "no 4th attempt"
    );

    let train = sim.step(run, "train");
    assert_eq!(train.state, StepState::Skipped);
    assert!(train.attempts.is_empty());
    assert!(
        train.reason.as_deref().unwrap_or_default().contains("prep"),
        "{:?}",
        train.reason
    );
    let report = sim.step(run, "report");
    assert_eq!(report.state, StepState::Skipped, "skipped transitively");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("train"),
        "{:?}",
        report.reason
    );

    // The independent branch is still going, so the run is not over.
    assert_eq!(sim.run(run).state, RunState::Running);
    assert_eq!(sim.run(run).finished_ms, None);
    assert_eq!(sim.step_state(run, "lint"), StepState::Running);
    assert_eq!(sim.step_state(run, "docs"), StepState::Waiting);
    sim.succeed(&lint);
    assert_eq!(sim.step_state(run, "docs"), StepState::Queued);
    assert_eq!(sim.run(run).state, RunState::Running);
    sim.complete(run, "docs", "w1");

    let finished = sim.run(run);
    assert_eq!(finished.state, RunState::Failed);
    assert_eq!(finished.finished_ms, Some(sim.now));
    assert_eq!(
        sim.states(run),
        [
            ("prep", StepState::Failed),
            ("lint", StepState::Succeeded),
            ("train", StepState::Skipped),
            ("report", StepState::Skipped),
            ("docs", StepState::Succeeded),
        ]
    );
    assert!(sim.load_keys("w1").is_empty() && sim.load_keys("w2").is_empty());
}

#[test]
fn a_retry_that_succeeds_readies_dependents() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    sim.complete(run, "a", "w1");

    let first = sim.assign(run, "b", "w1");
    sim.start(&first);
    sim.finish(&first, exited(2));
    assert_eq!(sim.step_state(run, "b"), StepState::Queued);
    assert!(sim.step(run, "b").reason.is_some());

    let second = sim.assign(run, "b", "w1");
    assert_eq!(second.attempt, 2);
    assert_eq!(
        sim.step(run, "b").reason,
        None,
        "assigning clears the reason"
    );
    sim.start(&second);
    sim.succeed(&second);
    let b = sim.step(run, "b");
    assert_eq!(b.state, StepState::Succeeded);
    assert_eq!(
        b.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        [
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Succeeded)
        ]
    );
    assert_eq!(sim.run(run).state, RunState::Succeeded);
}

#[test]
fn timing_out_is_retried_and_then_final() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(
        r#"
name: slow
steps:
  - name: once
    command: [sleep, "60"]
    timeout: 10s
  - name: twice
    command: [sleep, "60"]
    timeout: 10s
    retries: 1
  - name: after
    command: ["true"]
    needs: [once]
"#,
    );
    assert_eq!(sim.run(run).pipeline.steps[0].timeout_ms, Some(10_000));

    let once = sim.assign(run, "once", "w1");
    sim.start(&once);
    sim.finish(&once, timed_out());
    assert_eq!(sim.attempt(&once).outcome, Some(AttemptOutcome::TimedOut));
    let record = sim.step(run, "once");
    assert_eq!(record.state, StepState::TimedOut);
    assert_eq!(record.reason.as_deref(), Some("ran past its 10s timeout"));
    assert_eq!(sim.step_state(run, "after"), StepState::Skipped);

    let first = sim.assign(run, "twice", "w1");
    sim.start(&first);
    sim.finish(&first, timed_out());
    assert_eq!(sim.step_state(run, "twice"), StepState::Queued);
    assert_eq!(sim.run(run).state, RunState::Running);
    let second = sim.assign(run, "twice", "w1");
    sim.start(&second);
    sim.finish(&second, timed_out());
    assert_eq!(sim.step_state(run, "twice"), StepState::TimedOut);
    assert_eq!(sim.step(run, "twice").attempts.len(), 2);

    assert_eq!(sim.run(run).state, RunState::Failed);
    assert_eq!(sim.run(run).finished_ms, Some(sim.now));
}
