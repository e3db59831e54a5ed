//! `next_placements`: the dependents a successful report makes ready, placed
//! with the report, and the same result as the scheduling pass after it.

use super::*;
use crate::state::{
    AttemptKey, AttemptReport, Command, GpuInfo, Outcome, ReportedOutcome, StepState, Worker,
    WorkerMode,
};

fn pipeline(yaml: &str) -> ferry_spec::Pipeline {
    ferry_spec::parse_pipeline("p.yaml", yaml, &BTreeMap::new()).unwrap()
}

fn worker(name: &str, cpu_millis: u64, gpus: u32) -> Worker {
    Worker {
        name: name.into(),
        capacity: Resources {
            cpu_millis,
            memory_bytes: 8 << 30,
            gpus,
        },
        gpus: (0..gpus)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-{index}"),
                model: "A100".into(),
                memory_bytes: 40 << 30,
            })
            .collect(),
        labels: BTreeMap::new(),
        registered_ms: 1,
        session: "s".into(),
        mode: WorkerMode::Active,
        lost_ms: None,
        container_runtime: None,
    }
}

fn with_worker(cpu_millis: u64, gpus: u32) -> State {
    let mut state = State::default();
    state
        .apply(Command::RegisterWorker {
            worker: worker("w", cpu_millis, gpus),
            running: Vec::new(),
            now_ms: 1,
        })
        .unwrap();
    state
}

fn accepting() -> BTreeSet<String> {
    BTreeSet::from(["w".to_string()])
}

/// Submits `yaml` and assigns what a scheduling pass places; the run's id.
fn submit_and_place(state: &mut State, yaml: &str) -> RunId {
    let Outcome::RunSubmitted { run, .. } = state
        .apply(Command::SubmitRun {
            pipeline: pipeline(yaml),
            bundle_digest: "blake3:b".into(),
            submitter: "alice".into(),
            request_id: None,
            options: Default::default(),
            now_ms: 2,
            placements: Vec::new(),
        })
        .unwrap()
    else {
        panic!("not submitted");
    };
    pass(state);
    run
}

/// One scheduling pass, applied.
fn pass(state: &mut State) -> Vec<(AttemptKey, String)> {
    let (queue, _) = ready_queue(state, 3);
    let workers = worker_slots(state, &accepting());
    let plan = plan(&queue, &workers, &limits(state, &BTreeMap::new(), &queue));
    match state
        .apply(Command::Assign {
            placements: plan.placements,
            now_ms: 3,
        })
        .unwrap()
    {
        Outcome::Assigned(made) => made,
        other => panic!("not assigned: {other:?}"),
    }
}

fn report(exit_code: i32) -> AttemptReport {
    AttemptReport {
        outcome: ReportedOutcome::Exited,
        exit_code: Some(exit_code),
        reason: None,
        outputs: Vec::new(),
        log: None,
        usage: None,
        ran_ms: Some(1),
        metrics: Vec::new(),
        image: None,
    }
}

fn key(run: RunId, step: &str) -> AttemptKey {
    AttemptKey {
        run,
        step: step.into(),
        attempt: 1,
    }
}

fn predicted(state: &State, run: RunId, step: &str, exit_code: i32) -> Vec<FirstPlacement> {
    next_placements(
        state,
        &key(run, step),
        "w",
        &report(exit_code),
        &accepting(),
        &BTreeMap::new(),
        4,
    )
}

/// Applies the report of `step`'s first attempt with `placements`; the
/// attempts assigned with it.
fn finish(
    state: &mut State,
    run: RunId,
    step: &str,
    exit_code: i32,
    placements: Vec<FirstPlacement>,
) -> Vec<(AttemptKey, String)> {
    match state
        .apply(Command::StepFinished {
            key: key(run, step),
            worker: "w".into(),
            report: report(exit_code),
            now_ms: 4,
            placements,
        })
        .unwrap()
    {
        Outcome::Report {
            accepted: true,
            assigned,
            ..
        } => assigned,
        other => panic!("report not accepted: {other:?}"),
    }
}

fn names(placements: &[FirstPlacement]) -> Vec<&str> {
    placements.iter().map(|p| p.step.as_str()).collect()
}

/// A step's name and state, and its attempts' workers and GPUs.
type StepOf = (String, StepState, Vec<(String, Vec<u32>)>);

/// Each step as [`StepOf`], for comparing two states.
fn steps_of(state: &State, run: RunId) -> Vec<StepOf> {
    state.runs[&run]
        .steps
        .iter()
        .map(|s| {
            let attempts = s
                .attempts
                .iter()
                .map(|a| (a.worker.clone(), a.gpus.clone()))
                .collect();
            (s.name.clone(), s.state, attempts)
        })
        .collect()
}

/// Each step takes the whole worker: only the finished attempt's room lets
/// the next one go, and its GPU is the one handed on.
const CHAIN: &str = r#"name: chain
steps:
  - name: a
    command: ["true"]
    cache: false
    resources: {cpu: 1, memory: 1Gi, gpu: 1}
  - name: b
    command: ["true"]
    cache: false
    resources: {cpu: 1, memory: 1Gi, gpu: 1}
    needs: [a]
  - name: c
    command: ["true"]
    cache: false
    resources: {cpu: 1, memory: 1Gi, gpu: 1}
    needs: [b]
"#;

#[test]
fn a_successful_report_places_the_next_step_in_the_room_it_frees() {
    let mut state = with_worker(1000, 1);
    let run = submit_and_place(&mut state, CHAIN);
    let placements = predicted(&state, run, "a", 0);
    assert_eq!(names(&placements), ["b"]);
    assert_eq!(placements[0].gpus, [0]);
    let assigned = finish(&mut state, run, "a", 0, placements);
    assert_eq!(assigned, [(key(run, "b"), "w".to_string())]);
    assert_eq!(state.runs[&run].steps[1].state, StepState::Assigned);
    // Nothing left for the scheduling pass.
    assert!(ready_queue(&state, 5).0.is_empty());

    // The same as the report without placements followed by a pass.
    let mut two_rounds = with_worker(1000, 1);
    let other = submit_and_place(&mut two_rounds, CHAIN);
    finish(&mut two_rounds, other, "a", 0, Vec::new());
    assert_eq!(pass(&mut two_rounds).len(), 1);
    assert_eq!(steps_of(&state, run), steps_of(&two_rounds, other));

    // And on along the chain.
    let placements = predicted(&state, run, "b", 0);
    assert_eq!(names(&placements), ["c"]);
    assert_eq!(finish(&mut state, run, "b", 0, placements).len(), 1);
}

#[test]
fn nothing_is_placed_ahead_of_a_queued_step_or_without_a_worker() {
    let mut state = with_worker(1000, 1);
    let run = submit_and_place(&mut state, CHAIN);
    assert!(
        next_placements(
            &state,
            &key(run, "a"),
            "w",
            &report(0),
            &BTreeSet::new(),
            &BTreeMap::new(),
            4
        )
        .is_empty()
    );
    // Another run's step waits for room: the choice between it and `b` is
    // the scheduling pass's, by its rules (here `b`, of the older run).
    let waiting =
        "name: w\nsteps:\n  - name: x\n    command: [\"true\"]\n    resources: {cpu: 1}\n";
    let other = submit_and_place(&mut state, waiting);
    assert_eq!(ready_queue(&state, 4).0.len(), 1);
    assert!(predicted(&state, run, "a", 0).is_empty());
    finish(&mut state, run, "a", 0, Vec::new());
    assert_eq!(pass(&mut state), [(key(run, "b"), "w".to_string())]);
    assert_eq!(state.runs[&other].steps[0].state, StepState::Queued);
}

#[test]
fn a_report_that_is_no_success_places_nothing_and_its_placements_are_dropped() {
    let mut state = with_worker(1000, 1);
    let run = submit_and_place(&mut state, CHAIN);
    // Predicted for none of: a failure, a stale attempt, another worker.
    assert!(predicted(&state, run, "a", 1).is_empty());
    let stale = AttemptKey {
        attempt: 2,
        ..key(run, "a")
    };
    let quotas = BTreeMap::new();
    assert!(next_placements(&state, &stale, "w", &report(0), &accepting(), &quotas, 4).is_empty());
    assert!(
        next_placements(
            &state,
            &key(run, "a"),
            "v",
            &report(0),
            &accepting(),
            &quotas,
            4
        )
        .is_empty()
    );
    // A report that turns out a failure drops what was placed with it: the
    // step is retried or, here, its dependents skipped.
    let placements = predicted(&state, run, "a", 0);
    assert_eq!(placements.len(), 1);
    assert!(finish(&mut state, run, "a", 1, placements).is_empty());
    assert_eq!(state.runs[&run].steps[0].state, StepState::Failed);
    assert_eq!(state.runs[&run].steps[1].state, StepState::Skipped);
    assert!(state.loads["w"].attempts.is_empty());

    // A refused report (sent twice) assigns nothing the second time.
    let mut state = with_worker(1000, 1);
    let run = submit_and_place(&mut state, CHAIN);
    let placements = predicted(&state, run, "a", 0);
    assert_eq!(finish(&mut state, run, "a", 0, placements.clone()).len(), 1);
    let again = state
        .apply(Command::StepFinished {
            key: key(run, "a"),
            worker: "w".into(),
            report: report(0),
            now_ms: 5,
            placements,
        })
        .unwrap();
    assert!(matches!(
        again,
        Outcome::Report {
            accepted: false,
            ref assigned,
            ..
        } if assigned.is_empty()
    ));
    assert_eq!(state.runs[&run].steps[1].attempts.len(), 1);
}

#[test]
fn a_dependent_the_cache_completes_is_not_assigned() {
    // `b` has no inputs and a cached result from the first run: the leader
    // cannot know it, the state machine completes it from the cache.
    let yaml = "name: c\nsteps:\n  - name: a\n    command: [\"true\"]\n    cache: false\n  - name: b\n    command: [\"true\"]\n    needs: [a]\n";
    let mut state = with_worker(8000, 0);
    let first = submit_and_place(&mut state, yaml);
    let placements = predicted(&state, first, "a", 0);
    assert_eq!(finish(&mut state, first, "a", 0, placements).len(), 1);
    finish(&mut state, first, "b", 0, Vec::new());
    assert_eq!(state.runs[&first].steps[1].state, StepState::Succeeded);

    let second = submit_and_place(&mut state, yaml);
    let placements = predicted(&state, second, "a", 0);
    assert_eq!(names(&placements), ["b"], "the leader cannot know");
    assert!(finish(&mut state, second, "a", 0, placements).is_empty());
    let b = &state.runs[&second].steps[1];
    assert_eq!(b.state, StepState::Succeeded);
    assert!(b.attempts.is_empty());
}

#[test]
fn max_parallel_counts_the_finished_attempt_as_ended() {
    // `x` keeps running: with `a` ended, one slot of two is free.
    let yaml = r#"name: m
max_parallel: 2
steps:
  - name: a
    command: ["true"]
  - name: x
    command: ["sleep", "60"]
  - name: b
    command: ["true"]
    needs: [a]
  - name: c
    command: ["true"]
    needs: [a]
  - name: d
    command: ["true"]
    needs: [a]
"#;
    let mut state = with_worker(8000, 0);
    let run = submit_and_place(&mut state, yaml);
    let placements = predicted(&state, run, "a", 0);
    assert_eq!(names(&placements), ["b"]);
    assert_eq!(finish(&mut state, run, "a", 0, placements).len(), 1);
    // Two more wait for the run's room; the pass agrees.
    assert!(pass(&mut state).is_empty());

    // A sweep's own max_parallel the same way.
    let sweep = r#"name: s
steps:
  - name: a
    command: ["true"]
  - name: t
    matrix: {lr: [1, 2, 3]}
    max_parallel: 2
    command: ["train", "${matrix.lr}"]
    needs: [a]
"#;
    let mut state = with_worker(8000, 0);
    let run = submit_and_place(&mut state, sweep);
    assert_eq!(names(&predicted(&state, run, "a", 0)), ["t.0", "t.1"]);
}

#[test]
fn a_sweeps_gather_waits_for_every_trial() {
    let yaml = r#"name: g
steps:
  - name: train
    matrix: {lr: [1, 2]}
    command: ["train", "${matrix.lr}"]
  - name: report
    command: ["true"]
    needs: [train]
"#;
    let mut state = with_worker(8000, 0);
    let run = submit_and_place(&mut state, yaml);
    assert!(predicted(&state, run, "train.0", 0).is_empty());
    assert!(finish(&mut state, run, "train.0", 0, Vec::new()).is_empty());
    let placements = predicted(&state, run, "train.1", 0);
    assert_eq!(names(&placements), ["report"]);
    let assigned = finish(&mut state, run, "train.1", 0, placements);
    assert_eq!(assigned, [(key(run, "report"), "w".to_string())]);
}

#[test]
fn old_entries_without_placements_still_decode() {
    let entry = serde_json::json!({"StepFinished": {
        "key": {"run": 1, "step": "a", "attempt": 1},
        "worker": "w",
        "report": {"outcome": "exited", "exit_code": 0, "reason": null, "outputs": []},
        "now_ms": 4
    }});
    let command: Command = serde_json::from_value(entry).unwrap();
    let Command::StepFinished { placements, .. } = &command else {
        panic!("not a report");
    };
    assert!(placements.is_empty());
    // And an entry without placements is written as before.
    let written = serde_json::to_value(&command).unwrap();
    assert!(written["StepFinished"].get("placements").is_none());
}
