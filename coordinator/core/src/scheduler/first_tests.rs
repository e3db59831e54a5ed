//! `first_placements`: a submission's first steps placed with it, and the same
//! result as the scheduling pass would have given.

use super::*;
use crate::state::{
    AttemptKey, AttemptReport, Command, Outcome, ReportedOutcome, StepState, Worker, WorkerMode,
};

const YAML: &str = r#"name: p
steps:
  - name: prepare
    command: ["true"]
  - name: fetch
    command: ["true"]
  - name: train
    matrix: {lr: [1, 2, 3, 4]}
    max_parallel: 2
    resources: {cpu: 0.5, memory: 1Mi}
    command: ["train", "${matrix.lr}"]
  - name: report
    needs: [prepare]
    command: ["true"]
"#;

fn pipeline(yaml: &str) -> ferry_spec::Pipeline {
    ferry_spec::parse_pipeline("p.yaml", yaml, &BTreeMap::new()).unwrap()
}

fn with_worker(cpu_millis: u64) -> State {
    let mut state = State::default();
    state
        .apply(Command::RegisterWorker {
            worker: Worker {
                name: "w".into(),
                capacity: Resources {
                    cpu_millis,
                    memory_bytes: 8 << 30,
                    gpus: 0,
                },
                gpus: Vec::new(),
                labels: BTreeMap::new(),
                registered_ms: 1,
                session: "s".into(),
                mode: WorkerMode::Active,
                lost_ms: None,
                container_runtime: None,
            },
            running: Vec::new(),
            now_ms: 1,
        })
        .unwrap();
    state
}

fn accepting() -> BTreeSet<String> {
    BTreeSet::from(["w".to_string()])
}

fn submit(state: &mut State, yaml: &str, placements: Vec<FirstPlacement>) -> Outcome {
    state
        .apply(Command::SubmitRun {
            pipeline: pipeline(yaml),
            bundle_digest: "blake3:b".into(),
            submitter: "alice".into(),
            request_id: None,
            options: Default::default(),
            now_ms: 2,
            placements,
        })
        .unwrap()
}

fn placed(state: &State, yaml: &str) -> Vec<FirstPlacement> {
    first_placements(state, &pipeline(yaml), &accepting(), &BTreeMap::new(), 2)
}

/// Each step's state and its attempts' workers, for comparing two states.
fn steps_of(state: &State, run: RunId) -> Vec<(String, StepState, Vec<String>)> {
    state.runs[&run]
        .steps
        .iter()
        .map(|s| {
            let workers = s.attempts.iter().map(|a| a.worker.clone()).collect();
            (s.name.clone(), s.state, workers)
        })
        .collect()
}

#[test]
fn an_idle_cluster_places_the_first_steps_with_the_submission() {
    let mut state = with_worker(8000);
    let placements = placed(&state, YAML);
    let names: Vec<&str> = placements.iter().map(|p| p.step.as_str()).collect();
    // Steps that need none; the sweep's max_parallel holds two trials back and
    // `report` waits for `prepare`.
    assert_eq!(names, ["prepare", "fetch", "train.0", "train.1"]);
    let Outcome::RunSubmitted { run, assigned } = submit(&mut state, YAML, placements) else {
        panic!("not submitted");
    };
    assert_eq!(assigned.len(), 4);
    assert!(
        assigned
            .iter()
            .all(|(key, worker)| key.run == run && worker == "w")
    );
    // Nothing more for the scheduling pass to place.
    assert!(ready_queue(&state, 3).0.is_empty());

    // The same as a submission without placements followed by a pass.
    let mut two_rounds = with_worker(8000);
    let Outcome::RunSubmitted { run: other, .. } = submit(&mut two_rounds, YAML, Vec::new()) else {
        panic!("not submitted");
    };
    let (queue, _) = ready_queue(&two_rounds, 2);
    let workers = worker_slots(&two_rounds, &accepting());
    let plan = plan(
        &queue,
        &workers,
        &limits(&two_rounds, &BTreeMap::new(), &queue),
    );
    two_rounds
        .apply(Command::Assign {
            placements: plan.placements,
            now_ms: 2,
        })
        .unwrap();
    assert_eq!(steps_of(&state, run), steps_of(&two_rounds, other));
}

#[test]
fn nothing_is_placed_ahead_of_a_queued_step_or_without_a_worker() {
    let state = with_worker(8000);
    assert!(
        first_placements(
            &state,
            &pipeline(YAML),
            &BTreeSet::new(),
            &BTreeMap::new(),
            2
        )
        .is_empty()
    );
    // A run whose step waits for room: a new run's steps would overtake it.
    let mut busy = with_worker(1000);
    let big = "name: big\nsteps:\n  - name: huge\n    resources: {cpu: 1}\n    command: [\"true\"]\n  - name: more\n    resources: {cpu: 1}\n    command: [\"true\"]\n";
    submit(&mut busy, big, Vec::new());
    assert_eq!(ready_queue(&busy, 2).0.len(), 2);
    assert!(placed(&busy, YAML).is_empty());
    // A run's own max_parallel.
    let limited = "name: l\nmax_parallel: 1\nsteps:\n  - name: a\n    command: [\"true\"]\n  - name: b\n    command: [\"true\"]\n";
    assert_eq!(placed(&state, limited).len(), 1);
}

#[test]
fn the_state_machine_checks_each_first_placement_again() {
    // A placement decided against a worker that is cordoned by the time the
    // submission applies is dropped, and the step stays queued.
    let mut state = with_worker(8000);
    let placements = placed(&state, YAML);
    state
        .apply(Command::SetWorkerMode {
            worker: "w".into(),
            mode: WorkerMode::Cordoned,
            now_ms: 2,
        })
        .unwrap();
    let Outcome::RunSubmitted { run, assigned } = submit(&mut state, YAML, placements) else {
        panic!("not submitted");
    };
    assert!(assigned.is_empty());
    assert_eq!(state.runs[&run].steps[0].state, StepState::Queued);

    // A placement for a step the cache completes at submission is dropped.
    let one = "name: c\nsteps:\n  - name: a\n    command: [\"true\"]\n";
    let mut state = with_worker(8000);
    let placements = placed(&state, one);
    let Outcome::RunSubmitted { run, assigned } = submit(&mut state, one, placements) else {
        panic!("not submitted");
    };
    assert_eq!(assigned.len(), 1);
    let key = AttemptKey {
        run,
        step: "a".into(),
        attempt: 1,
    };
    state
        .apply(Command::StepFinished {
            key,
            worker: "w".into(),
            report: AttemptReport {
                outcome: ReportedOutcome::Exited,
                exit_code: Some(0),
                reason: None,
                outputs: Vec::new(),
                log: None,
                usage: None,
                ran_ms: Some(1),
                metrics: Vec::new(),
                image: None,
            },
            now_ms: 3,
            placements: Vec::new(),
        })
        .unwrap();
    let placements = placed(&state, one);
    assert_eq!(
        placements.len(),
        1,
        "the leader cannot know the cache will answer"
    );
    let Outcome::RunSubmitted { run, assigned } = submit(&mut state, one, placements) else {
        panic!("not submitted");
    };
    assert!(assigned.is_empty());
    assert_eq!(state.runs[&run].steps[0].state, StepState::Succeeded);
}
