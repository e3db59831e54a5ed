//! The index of queued steps against the full scans it replaced
//! (`reference`): over random sequences of commands, the index equals one built
//! afresh from the runs, and every pass sees the same queue, the same next
//! retry, the same limits' effect and so the same placements and reasons.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::reference::{limits_reference, ready_queue_reference};
use super::*;
use crate::state::{
    AttemptKey, AttemptReport, Command, ReportedOutcome, SubmitOptions, Worker, WorkerMode,
};

const TEMPLATES: [&str; 5] = [
    // A chain that may be retried.
    r#"name: chain
steps:
  - {name: a, command: ["true"], retries: 1}
  - {name: b, command: ["true"], needs: [a], retries: 1}
  - {name: c, command: ["true"], needs: [b], resources: {cpu: 2}}
"#,
    // Another project, higher priority, at most two steps at once.
    r#"name: wide
project: p1
priority: 5
max_parallel: 2
steps:
  - {name: a, command: ["true"], resources: {cpu: 1}}
  - {name: b, command: ["true"], resources: {cpu: 1}}
  - {name: c, command: ["true"], resources: {cpu: 1}, retries: 2}
  - {name: d, command: ["true"], needs: [a, b]}
"#,
    // A sweep limited to two trials at once.
    r#"name: sweep
steps:
  - name: train
    matrix: {lr: [1, 2, 3, 4, 5]}
    max_parallel: 2
    resources: {cpu: 0.5}
    command: ["train", "${matrix.lr}"]
  - {name: pick, gather: [train], command: ["pick"]}
"#,
    // A big step that fits few workers, in the second project.
    r#"name: big
project: p1
steps:
  - {name: a, command: ["true"], resources: {cpu: 6, memory: 1Gi}, retries: 2}
  - {name: b, command: ["true"], resources: {cpu: 0.1}}
"#,
    // More ready steps than a pass's window.
    r#"name: many
priority: 5
steps:
  - name: t
    matrix: {x: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], y: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]}
    resources: {cpu: 0.1, memory: 1Mi}
    command: ["t", "${matrix.x}", "${matrix.y}"]
"#,
];

#[derive(Debug, Clone)]
enum Op {
    Submit { template: usize, no_cache: bool },
    Register { worker: usize },
    Pass,
    Start { pick: usize },
    Finish { pick: usize, ok: bool },
    Cancel { pick: usize },
    Lost { worker: usize },
    Mode { worker: usize, cordon: bool },
    Wait { ms: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..TEMPLATES.len(), any::<bool>())
            .prop_map(|(template, no_cache)| Op::Submit { template, no_cache }),
        1 => (0..3usize).prop_map(|worker| Op::Register { worker }),
        4 => Just(Op::Pass),
        3 => any::<usize>().prop_map(|pick| Op::Start { pick }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, ok)| Op::Finish { pick, ok }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (0..3usize).prop_map(|worker| Op::Lost { worker }),
        1 => (0..3usize, any::<bool>()).prop_map(|(worker, cordon)| Op::Mode { worker, cordon }),
        2 => prop_oneof![Just(1i64), Just(5_000), Just(60_000)].prop_map(|ms| Op::Wait { ms }),
    ]
}

fn worker(index: usize, session: u64) -> Worker {
    let cpus = [4_000, 8_000, 2_000][index];
    Worker {
        name: format!("w{index}"),
        capacity: Resources {
            cpu_millis: cpus,
            memory_bytes: 4 << 30,
            gpus: 0,
        },
        gpus: Vec::new(),
        labels: BTreeMap::new(),
        registered_ms: 0,
        session: format!("w{index}-{session}"),
        mode: WorkerMode::Active,
        lost_ms: None,
        container_runtime: None,
    }
}

fn report(ok: bool) -> AttemptReport {
    AttemptReport {
        outcome: ReportedOutcome::Exited,
        exit_code: Some(if ok { 0 } else { 1 }),
        reason: None,
        outputs: Vec::new(),
        log: None,
        usage: None,
        ran_ms: None,
        metrics: Vec::new(),
        image: None,
    }
}

fn active(state: &State) -> Vec<(AttemptKey, String)> {
    state
        .loads
        .iter()
        .flat_map(|(worker, load)| {
            load.attempts
                .keys()
                .map(move |key| (key.clone(), worker.clone()))
        })
        .collect()
}

/// Every queued step of a run that is not finished.
fn queued(state: &State) -> BTreeSet<(RunId, String)> {
    state
        .runs
        .values()
        .filter(|run| !run.state.is_terminal())
        .flat_map(|run| {
            run.steps
                .iter()
                .filter(|s| s.state == crate::state::StepState::Queued)
                .map(|s| (run.id, s.name.clone()))
        })
        .collect()
}

/// One pass both ways: the same queue, retry time and plan.
fn compare_pass(state: &State, now: i64, quotas: &BTreeMap<String, Quota>) -> Plan {
    let (queue, next) = ready_queue(state, now);
    let (reference, reference_next) = ready_queue_reference(state, now);
    assert_eq!(queue, reference, "queue at {now}");
    assert_eq!(next, reference_next, "next retry at {now}");
    let accepting: BTreeSet<String> = state.workers.keys().cloned().collect();
    let workers = worker_slots(state, &accepting);
    let indexed = plan(&queue, &workers, &limits(state, quotas, &queue));
    let full = plan(&queue, &workers, &limits_reference(state, quotas));
    assert_eq!(indexed, full, "plan at {now}");
    indexed
}

fn run_ops(ops: Vec<Op>) {
    let quotas = BTreeMap::from([(
        "p1".to_string(),
        Quota {
            max_cpu_millis: Some(3_000),
            max_gpus: None,
        },
    )]);
    let mut state = State::default();
    let mut now = 1i64;
    let mut sessions = 0u64;
    for op in ops {
        now += 1;
        let generation = (state.room_generation, state.queued_generation);
        let queued_before = queued(&state);
        let mut expect_moved = false;
        match op {
            Op::Submit { template, no_cache } => {
                let pipeline =
                    ferry_spec::parse_pipeline("p.yaml", TEMPLATES[template], &BTreeMap::new())
                        .unwrap();
                let _ = state.apply(Command::SubmitRun {
                    pipeline,
                    bundle_digest: "blake3:b".into(),
                    submitter: "alice".into(),
                    request_id: None,
                    options: SubmitOptions {
                        no_cache,
                        ..Default::default()
                    },
                    now_ms: now,
                    placements: Vec::new(),
                });
            }
            Op::Register { worker: index } => {
                sessions += 1;
                let _ = state.apply(Command::RegisterWorker {
                    worker: worker(index, sessions),
                    running: Vec::new(),
                    now_ms: now,
                });
                expect_moved = true;
            }
            Op::Pass => {
                let placements = compare_pass(&state, now, &quotas).placements;
                if !placements.is_empty() {
                    let _ = state.apply(Command::Assign {
                        placements,
                        now_ms: now,
                    });
                }
            }
            Op::Start { pick } => {
                let attempts = active(&state);
                if let Some((key, worker)) = attempts.get(pick % attempts.len().max(1)) {
                    let _ = state.apply(Command::StepStarted {
                        key: key.clone(),
                        worker: worker.clone(),
                        now_ms: now,
                    });
                }
            }
            Op::Finish { pick, ok } => {
                let attempts = active(&state);
                if let Some((key, worker)) = attempts.get(pick % attempts.len().max(1)) {
                    let _ = state.apply(Command::StepFinished {
                        key: key.clone(),
                        worker: worker.clone(),
                        report: report(ok),
                        now_ms: now,
                        placements: Vec::new(),
                    });
                    expect_moved = true;
                }
            }
            Op::Cancel { pick } => {
                let runs: Vec<RunId> = state.runs.keys().copied().collect();
                if let Some(run) = runs.get(pick % runs.len().max(1)) {
                    let _ = state.apply(Command::CancelRun {
                        run: *run,
                        now_ms: now,
                    });
                }
            }
            Op::Lost { worker } => {
                if let Some(record) = state.workers.get(&format!("w{worker}")) {
                    let _ = state.apply(Command::WorkerLost {
                        worker: record.name.clone(),
                        session: record.session.clone(),
                        reason: "lease ran out".into(),
                        now_ms: now,
                    });
                }
            }
            Op::Mode { worker, cordon } => {
                let mode = if cordon {
                    WorkerMode::Cordoned
                } else {
                    WorkerMode::Active
                };
                let _ = state.apply(Command::SetWorkerMode {
                    worker: format!("w{worker}"),
                    mode,
                    now_ms: now,
                });
            }
            Op::Wait { ms } => now += ms,
        }
        assert_eq!(
            state.runs.ready(),
            &state.runs.rebuilt_index(),
            "the index drifted from the runs"
        );
        for run in state.runs.values() {
            assert!(
                run.steps.derived_matches_records(),
                "run {}'s step counts drifted from its records",
                run.id
            );
            // What a whole pass of `advance` would find: no waiting step
            // whose needs all succeeded is left waiting.
            if run.state == crate::state::RunState::Running {
                for index in run.steps.movable() {
                    let ready = run.pipeline.steps[index].needs.iter().all(|need| {
                        run.step(need)
                            .is_some_and(|s| s.state == crate::state::StepState::Succeeded)
                    });
                    assert!(!ready, "run {} step {index} left waiting", run.id);
                }
            }
        }
        // A command that queued a step, or may have made room, moved the
        // generation.
        if !queued(&state).is_subset(&queued_before) {
            assert_ne!(
                state.queued_generation, generation.1,
                "queued generation stayed"
            );
        }
        if expect_moved {
            assert_ne!(
                state.room_generation, generation.0,
                "room generation stayed"
            );
        }
        compare_pass(&state, now, &quotas);
        compare_pass(&state, now + 1_000_000, &quotas);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_index_places_as_the_full_scan(ops in proptest::collection::vec(op(), 1..80)) {
        run_ops(ops);
    }
}

/// Many runs, a pass after each submission: the index and the scan agree when
/// the window truncates several classes at once.
#[test]
fn many_runs_agree_with_the_full_scan() {
    let mut ops = Vec::new();
    for round in 0..40 {
        ops.push(Op::Submit {
            template: round % TEMPLATES.len(),
            no_cache: round % 3 == 0,
        });
        if round == 5 {
            ops.push(Op::Register { worker: 1 });
        }
        ops.push(Op::Pass);
        ops.push(Op::Finish {
            pick: round * 7,
            ok: round % 4 != 0,
        });
    }
    run_ops(ops);
}
