//! Rebuilding the state from its records, and determinism: the same commands give the same state.

use super::*;

// ---------------------------------------------------------------------------
// Rebuilding from records; determinism.

/// A mixed history over three workers and four runs, including refused and
/// failing commands, starting from a fresh state.
fn history() -> Vec<Command> {
    let mut commands = Vec::new();
    let mut now = 0;
    let mut at = || {
        now += 7;
        now
    };
    for w in [
        big_worker("w1"),
        worker("w2", 2000, 2 * GIB, 2),
        big_worker("w3"),
    ] {
        commands.push(Command::RegisterWorker {
            worker: w,
            running: Vec::new(),
            now_ms: at(),
        });
    }
    let gpu = r#"
name: g
steps:
  - name: train
    command: ["true"]
    resources: {cpu: 1, memory: 1Gi, gpu: 2}
  - name: eval
    command: ["true"]
    needs: [train]
"#;
    for yaml in [CHAIN, gpu, CHAIN, FIVE] {
        commands.push(Command::SubmitRun {
            pipeline: pipeline(yaml),
            bundle_digest: "blake3:b".to_string(),
            submitter: "bob".to_string(),
            request_id: None,
            options: SubmitOptions {
                no_cache: true,
                ..Default::default()
            },
            now_ms: at(),
            placements: Vec::new(),
        });
    }
    commands.push(Command::Assign {
        placements: vec![
            placement(1, "a", "w1", &[]),
            placement(2, "train", "w2", &[0, 1]),
            placement(3, "a", "w3", &[]),
            placement(4, "retry", "w1", &[]),
            placement(4, "final", "w3", &[]),
            placement(4, "pending", "w1", &[]),
            placement(4, "kept", "w2", &[0]), // refused: wrong GPU count
        ],
        now_ms: at(),
    });
    let started = |run, step: &str, worker: &str, now_ms| Command::StepStarted {
        key: key(run, step, 1),
        worker: worker.to_string(),
        now_ms,
    };
    commands.push(started(1, "a", "w1", at()));
    commands.push(started(2, "train", "w2", at()));
    commands.push(started(3, "a", "w3", at()));
    commands.push(started(4, "retry", "w1", at()));
    commands.push(started(4, "final", "w3", at()));
    commands.push(Command::StepFinished {
        key: key(1, "a", 1),
        worker: "w1".to_string(),
        report: exited_ok(&["x.txt"]),
        now_ms: at(),
        placements: Vec::new(),
    });
    commands.push(Command::StepFinished {
        key: key(3, "a", 1),
        worker: "w1".to_string(), // refused: wrong worker
        report: exited_ok(&["x.txt"]),
        now_ms: at(),
        placements: Vec::new(),
    });
    commands.push(Command::StepFinished {
        key: key(4, "final", 1),
        worker: "w3".to_string(),
        report: exited(9),
        now_ms: at(),
        placements: Vec::new(),
    });
    commands.push(Command::Assign {
        placements: vec![
            placement(1, "b", "w3", &[]),
            placement(4, "kept", "w3", &[]),
        ],
        now_ms: at(),
    });
    commands.push(started(1, "b", "w3", at()));
    commands.push(Command::CancelRun {
        run: 3,
        now_ms: at(),
    });
    commands.push(Command::CancelRun {
        run: 9, // error: no such run
        now_ms: at(),
    });
    // w1 restarts: 4/retry is lost (retried), 4/pending is resent.
    commands.push(Command::RegisterWorker {
        worker: big_worker("w1"),
        running: Vec::new(),
        now_ms: at(),
    });
    commands.push(Command::SetWorkerMode {
        worker: "w2".to_string(),
        mode: WorkerMode::Cordoned,
        now_ms: at(),
    });
    // Stale: w3 registered a session with another name since.
    commands.push(Command::WorkerLost {
        worker: "w3".to_string(),
        session: "w3-session-0".to_string(),
        reason: "no heartbeat".to_string(),
        now_ms: at(),
    });
    // No timeout in the pipeline: changes nothing.
    commands.push(Command::TimeOutRun {
        run: 1,
        now_ms: at(),
    });
    commands
}

#[test]
fn from_records_rebuilds_the_loads_apply_maintains() {
    let mut sim = Sim::new();
    for command in history() {
        let _ = sim.apply(command);
    }
    // The history leaves attempts assigned and running on every worker.
    assert_eq!(sim.load_keys("w1"), [key(4, "pending", 1)]);
    assert_eq!(sim.load_keys("w2"), [key(2, "train", 1)]);
    assert_eq!(sim.load_keys("w3"), [key(1, "b", 1), key(4, "kept", 1)]);
    assert_eq!(sim.gpus_in_use("w2"), [0, 1]);
    assert_eq!(sim.run(3).state, RunState::Cancelled);

    let rebuilt = State::from_records(
        sim.state.runs.values().map(|r| Run::clone(r)).collect(),
        sim.state.workers.values().cloned().collect(),
        sim.state.next_run_id,
    );
    assert_eq!(rebuilt.loads, sim.state.loads);
    assert_eq!(rebuilt.runs, sim.state.runs);
    assert_eq!(rebuilt.workers, sim.state.workers);
    assert_eq!(rebuilt.next_run_id, 5);

    // The rebuilt state goes on exactly like the original.
    let mut restored = Sim::with_state(rebuilt, sim.now);
    for s in [&mut sim, &mut restored] {
        let b = key(1, "b", 1);
        s.succeed(&b);
        let pending = key(4, "pending", 1);
        s.start(&pending);
        s.submit(CHAIN);
        s.assign(4, "retry", "w3");
    }
    assert_eq!(restored.snapshot(), sim.snapshot());
    assert_eq!(sim.run(1).state, RunState::Succeeded);
    assert_eq!(sim.run(5).id, 5);
}

#[test]
fn from_records_counts_only_active_attempts_and_registers_empty_loads() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("idle"));
    let run = sim.submit(CHAIN);
    sim.complete(run, "a", "w1");
    let b1 = sim.assign(run, "b", "w1");
    sim.finish(&b1, exited(1));
    let b2 = sim.assign(run, "b", "w1");

    let rebuilt = State::from_records(
        sim.state.runs.values().map(|r| Run::clone(r)).collect(),
        sim.state.workers.values().cloned().collect(),
        sim.state.next_run_id,
    );
    assert_eq!(
        rebuilt.loads["w1"]
            .attempts
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        [b2],
        "finished attempts hold nothing"
    );
    assert_eq!(rebuilt.loads["idle"], WorkerLoad::default());
    assert_eq!(rebuilt.loads, sim.state.loads);

    // An attempt on a worker that has not re-registered yet still counts.
    let orphan = State::from_records(
        sim.state.runs.values().map(|r| Run::clone(r)).collect(),
        Vec::new(),
        sim.state.next_run_id,
    );
    assert_eq!(orphan.loads["w1"].in_use(), default_resources());
    assert!(orphan.workers.is_empty());
}

#[test]
fn applying_the_same_commands_gives_the_same_state() {
    let mut one = State::default();
    let mut two = State::default();
    let outcomes_one: Vec<_> = history().into_iter().map(|c| one.apply(c)).collect();
    let outcomes_two: Vec<_> = history().into_iter().map(|c| two.apply(c)).collect();
    assert_eq!(outcomes_one, outcomes_two);
    assert_eq!(one.runs, two.runs);
    assert_eq!(one.workers, two.workers);
    assert_eq!(one.loads, two.loads);
    assert_eq!(one.next_run_id, two.next_run_id);
    assert_eq!(one.members, two.members);
    assert_eq!(one.requests, two.requests);
    assert_eq!(one.catalog, two.catalog);
    assert_eq!(one.cache_owners, two.cache_owners);
    assert_eq!(one.cache_pending, two.cache_pending);

    // The history exercised refusals and errors too.
    assert!(outcomes_one.contains(&Err(StateError::RunNotFound(9))));
    assert!(outcomes_one.iter().any(|o| matches!(
        o,
        Ok(Outcome::Report {
            accepted: false,
            ..
        })
    )));
    assert!(outcomes_one.contains(&Ok(Outcome::Registered {
        resend: vec![key(4, "pending", 1)]
    })));
}
