//! Scenario tests for the coordinator's state machine. Pipelines come from YAML
//! through the real spec parser; time is whatever number a command carries (the
//! [`Sim`] clock ticks once per command).

use std::collections::BTreeMap;

use ferry_spec::{DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES, Pipeline, Resources, parse_pipeline};

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `a` produces `x.txt`; `b` reads it and may be retried twice.
const CHAIN: &str = r#"
name: p
steps:
  - name: a
    command: ["true"]
    outputs: [x.txt]
  - name: b
    inputs: {x: a/x.txt}
    command: ["true"]
    retries: 2
"#;

fn pipeline(yaml: &str) -> Pipeline {
    match parse_pipeline("pipeline.yaml", yaml, &BTreeMap::new()) {
        Ok(pipeline) => pipeline,
        Err(e) => panic!("test pipeline does not parse:\n{e}"),
    }
}

fn worker(name: &str, cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Worker {
    Worker {
        name: name.to_string(),
        capacity: Resources {
            cpu_millis,
            memory_bytes,
            gpus,
        },
        gpus: (0..gpus)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-{name}-{index}"),
                model: "H100".to_string(),
                memory_bytes: 80 * GIB,
            })
            .collect(),
        labels: BTreeMap::new(),
        registered_ms: 0,
        session: format!("{name}-session-1"),
        mode: WorkerMode::Active,
        lost_ms: None,
    }
}

/// A roomy CPU-only worker: 8 cores, 16 GiB.
fn big_worker(name: &str) -> Worker {
    worker(name, 8000, 16 * GIB, 0)
}

fn key(run: RunId, step: &str, attempt: u32) -> AttemptKey {
    AttemptKey {
        run,
        step: step.to_string(),
        attempt,
    }
}

fn placement(run: RunId, step: &str, worker: &str, gpus: &[u32]) -> Placement {
    Placement {
        run,
        step: step.to_string(),
        worker: worker.to_string(),
        gpus: gpus.to_vec(),
    }
}

fn digest(output: &str) -> String {
    format!("blake3:{output}")
}

/// Exit code 0 with the given outputs reported (digest derived from the name).
fn exited_ok(outputs: &[&str]) -> AttemptReport {
    AttemptReport {
        outcome: ReportedOutcome::Exited,
        exit_code: Some(0),
        reason: None,
        outputs: outputs
            .iter()
            .map(|o| (o.to_string(), digest(o), o.len() as u64))
            .collect(),
        log: None,
        usage: None,
        ran_ms: None,
        metrics: Vec::new(),
    }
}

fn exited(code: i32) -> AttemptReport {
    AttemptReport {
        outcome: ReportedOutcome::Exited,
        exit_code: Some(code),
        reason: None,
        outputs: Vec::new(),
        log: None,
        usage: None,
        ran_ms: None,
        metrics: Vec::new(),
    }
}

fn timed_out() -> AttemptReport {
    AttemptReport {
        outcome: ReportedOutcome::TimedOut,
        exit_code: None,
        reason: Some("ran past its 10s timeout".to_string()),
        outputs: Vec::new(),
        log: None,
        usage: None,
        ran_ms: None,
        metrics: Vec::new(),
    }
}

/// The worker stopped the attempt on its own (it was shutting down).
fn stopped_by_worker() -> AttemptReport {
    AttemptReport {
        outcome: ReportedOutcome::Cancelled,
        exit_code: None,
        reason: Some("worker shutting down".into()),
        outputs: Vec::new(),
        log: None,
        usage: None,
        ran_ms: None,
        metrics: Vec::new(),
    }
}

fn accepted(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Report { accepted, .. } => *accepted,
        other => panic!("expected a report outcome, got {other:?}"),
    }
}

fn refusal_detail(outcome: Outcome) -> String {
    match outcome {
        Outcome::Report {
            accepted: false,
            detail,
        } => detail,
        other => panic!("expected a refused report, got {other:?}"),
    }
}

/// A state plus a clock that ticks once per applied command, and the records as
/// they were at the last [`Sim::mark`].
struct Sim {
    state: State,
    now: i64,
    marked: Marked,
}

/// The persisted records at one moment: which runs, workers and other records
/// later commands changed is read by comparing the state with it.
struct Marked {
    runs: BTreeMap<RunId, std::sync::Arc<Run>>,
    workers: BTreeMap<String, Worker>,
    next_run_id: RunId,
    catalog: Catalog,
}

impl Marked {
    fn of(state: &State) -> Marked {
        Marked {
            runs: state.runs.clone(),
            workers: state.workers.clone(),
            next_run_id: state.next_run_id,
            catalog: state.catalog.clone(),
        }
    }
}

impl Sim {
    fn new() -> Sim {
        Sim::with_state(State::default(), 1_000)
    }

    fn with_state(state: State, now: i64) -> Sim {
        let marked = Marked::of(&state);
        Sim { state, now, marked }
    }

    fn apply(&mut self, command: Command) -> Result<Outcome, StateError> {
        self.state.apply(command)
    }

    fn tick(&mut self) -> i64 {
        self.now += 10;
        self.now
    }

    /// Submits without reading the cache (most tests run one pipeline again and
    /// again and want it to run); `submit_cached` reads it.
    fn submit(&mut self, yaml: &str) -> RunId {
        self.submit_with(yaml, true)
    }

    fn submit_cached(&mut self, yaml: &str) -> RunId {
        self.submit_with(yaml, false)
    }

    fn submit_with(&mut self, yaml: &str, no_cache: bool) -> RunId {
        let now_ms = self.tick();
        match self.apply(Command::SubmitRun {
            pipeline: pipeline(yaml),
            bundle_digest: "blake3:bundle".to_string(),
            submitter: "alice".to_string(),
            request_id: None,
            options: SubmitOptions {
                no_cache,
                ..Default::default()
            },
            now_ms,
        }) {
            Ok(Outcome::RunSubmitted(id)) => id,
            other => panic!("submit: {other:?}"),
        }
    }

    /// Registers (or re-registers) a worker; returns the attempts to resend.
    fn register_with(&mut self, worker: Worker, running: Vec<AttemptKey>) -> Vec<AttemptKey> {
        let now_ms = self.tick();
        match self.apply(Command::RegisterWorker {
            worker,
            running,
            now_ms,
        }) {
            Ok(Outcome::Registered { resend }) => resend,
            other => panic!("register: {other:?}"),
        }
    }

    fn register(&mut self, worker: Worker) {
        let resend = self.register_with(worker, Vec::new());
        assert!(resend.is_empty(), "{resend:?}");
    }

    fn assign_all(&mut self, placements: Vec<Placement>) -> Vec<(AttemptKey, String)> {
        let now_ms = self.tick();
        match self.apply(Command::Assign { placements, now_ms }) {
            Ok(Outcome::Assigned(assigned)) => assigned,
            other => panic!("assign: {other:?}"),
        }
    }

    /// One placement; the key of the new attempt, or None when it was refused.
    fn try_assign(
        &mut self,
        run: RunId,
        step: &str,
        worker: &str,
        gpus: &[u32],
    ) -> Option<AttemptKey> {
        let mut assigned = self.assign_all(vec![placement(run, step, worker, gpus)]);
        assert!(assigned.len() <= 1, "{assigned:?}");
        let (key, on) = assigned.pop()?;
        assert_eq!(on, worker);
        Some(key)
    }

    fn assign(&mut self, run: RunId, step: &str, worker: &str) -> AttemptKey {
        self.try_assign(run, step, worker, &[])
            .unwrap_or_else(|| panic!("run {run} step {step} was not placed on {worker}"))
    }

    fn worker_of(&self, key: &AttemptKey) -> String {
        let step = self.step(key.run, &key.step);
        step.attempts[key.attempt as usize - 1].worker.clone()
    }

    fn start_as(&mut self, key: &AttemptKey, worker: &str) -> Outcome {
        let now_ms = self.tick();
        self.apply(Command::StepStarted {
            key: key.clone(),
            worker: worker.to_string(),
            now_ms,
        })
        .unwrap_or_else(|e| panic!("start {key}: {e}"))
    }

    fn start(&mut self, key: &AttemptKey) {
        let worker = self.worker_of(key);
        let outcome = self.start_as(key, &worker);
        assert!(accepted(&outcome), "start {key}: {outcome:?}");
    }

    fn finish_as(
        &mut self,
        key: &AttemptKey,
        worker: &str,
        report: AttemptReport,
    ) -> Result<Outcome, StateError> {
        let now_ms = self.tick();
        self.apply(Command::StepFinished {
            key: key.clone(),
            worker: worker.to_string(),
            report,
            now_ms,
        })
    }

    fn finish(&mut self, key: &AttemptKey, report: AttemptReport) {
        let worker = self.worker_of(key);
        let outcome = self
            .finish_as(key, &worker, report)
            .unwrap_or_else(|e| panic!("finish {key}: {e}"));
        assert!(accepted(&outcome), "finish {key}: {outcome:?}");
    }

    /// Finishes successfully, reporting every output the step declares.
    fn succeed(&mut self, key: &AttemptKey) {
        let declared = self.spec_outputs(key.run, &key.step);
        let names: Vec<&str> = declared.iter().map(String::as_str).collect();
        self.finish(key, exited_ok(&names));
    }

    /// Assigns, starts and succeeds a step on `worker`.
    fn complete(&mut self, run: RunId, step: &str, worker: &str) -> AttemptKey {
        let key = self.assign(run, step, worker);
        self.start(&key);
        self.succeed(&key);
        key
    }

    fn cancel(&mut self, run: RunId) -> Result<Outcome, StateError> {
        let now_ms = self.tick();
        self.apply(Command::CancelRun { run, now_ms })
    }

    fn spec_outputs(&self, run: RunId, step: &str) -> Vec<String> {
        self.run(run)
            .pipeline
            .steps
            .iter()
            .find(|s| s.name == step)
            .map(|s| s.outputs.clone())
            .unwrap_or_default()
    }

    fn run(&self, id: RunId) -> &Run {
        self.state
            .runs
            .get(&id)
            .unwrap_or_else(|| panic!("no run {id}"))
    }

    fn step(&self, run: RunId, name: &str) -> &StepRecord {
        self.run(run)
            .step(name)
            .unwrap_or_else(|| panic!("run {run} has no step {name}"))
    }

    fn step_state(&self, run: RunId, name: &str) -> StepState {
        self.step(run, name).state
    }

    fn states(&self, run: RunId) -> Vec<(&str, StepState)> {
        self.run(run)
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect()
    }

    fn attempt(&self, key: &AttemptKey) -> &Attempt {
        let step = self.step(key.run, &key.step);
        step.attempts
            .iter()
            .find(|a| a.number == key.attempt)
            .unwrap_or_else(|| panic!("no {key}"))
    }

    fn in_use(&self, worker: &str) -> Resources {
        self.state
            .loads
            .get(worker)
            .map(WorkerLoad::in_use)
            .unwrap_or_default()
    }

    fn gpus_in_use(&self, worker: &str) -> Vec<u32> {
        self.state
            .loads
            .get(worker)
            .map(|l| l.gpus_in_use().into_iter().collect())
            .unwrap_or_default()
    }

    fn load_keys(&self, worker: &str) -> Vec<AttemptKey> {
        self.state
            .loads
            .get(worker)
            .map(|l| l.attempts.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn queued(&self) -> Vec<(RunId, String)> {
        crate::scheduler::ready_queue(&self.state, i64::MAX)
            .0
            .into_iter()
            .map(|step| (step.run, step.step))
            .collect()
    }

    /// Remembers the records as they are now, for [`Sim::changed_runs`],
    /// [`Sim::changed_workers`] and [`Sim::meta_changed`].
    fn mark(&mut self) {
        self.marked = Marked::of(&self.state);
    }

    /// The runs created, changed or removed since the last mark, in id order.
    fn changed_runs(&self) -> Vec<RunId> {
        let ids: std::collections::BTreeSet<RunId> = self
            .marked
            .runs
            .keys()
            .chain(self.state.runs.keys())
            .copied()
            .collect();
        ids.into_iter()
            .filter(|id| self.marked.runs.get(id) != self.state.runs.get(id))
            .collect()
    }

    /// The workers registered, changed or removed since the last mark, by name.
    fn changed_workers(&self) -> Vec<String> {
        let names: std::collections::BTreeSet<&String> = self
            .marked
            .workers
            .keys()
            .chain(self.state.workers.keys())
            .collect();
        names
            .into_iter()
            .filter(|name| self.marked.workers.get(*name) != self.state.workers.get(*name))
            .cloned()
            .collect()
    }

    /// Whether the run id counter or the catalog (cache index, schedules, pins)
    /// changed since the last mark.
    fn meta_changed(&self) -> bool {
        self.marked.next_run_id != self.state.next_run_id
            || self.marked.catalog != self.state.catalog
    }

    /// Everything `apply` may change, for before/after comparisons.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            runs: self.state.runs.clone(),
            workers: self.state.workers.clone(),
            loads: self.state.loads.clone(),
            next_run_id: self.state.next_run_id,
        }
    }

    fn assert_untouched(&self, before: &Snapshot, what: &str) {
        assert!(
            before == &self.snapshot(),
            "{what} changed the state:\nbefore: {before:#?}\nafter: {:#?}",
            self.snapshot()
        );
        assert!(
            self.changed_runs().is_empty()
                && self.changed_workers().is_empty()
                && !self.meta_changed(),
            "{what} changed records since the mark: runs {:?}, workers {:?}, \
             id counter or catalog: {}",
            self.changed_runs(),
            self.changed_workers(),
            self.meta_changed()
        );
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    runs: BTreeMap<RunId, std::sync::Arc<Run>>,
    workers: BTreeMap<String, Worker>,
    loads: BTreeMap<String, WorkerLoad>,
    next_run_id: RunId,
}

fn default_resources() -> Resources {
    Resources {
        cpu_millis: DEFAULT_CPU_MILLIS,
        memory_bytes: DEFAULT_MEMORY_BYTES,
        gpus: 0,
    }
}

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

const FIVE: &str = r#"
name: five
steps:
  - name: retry
    command: ["true"]
    retries: 1
  - name: final
    command: ["true"]
  - name: after
    command: ["true"]
    needs: [final]
  - name: pending
    command: ["true"]
  - name: kept
    command: ["true"]
  - name: kept-pending
    command: ["true"]
"#;

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
    });
    commands.push(Command::StepFinished {
        key: key(3, "a", 1),
        worker: "w1".to_string(), // refused: wrong worker
        report: exited_ok(&["x.txt"]),
        now_ms: at(),
    });
    commands.push(Command::StepFinished {
        key: key(4, "final", 1),
        worker: "w3".to_string(),
        report: exited(9),
        now_ms: at(),
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
    };
    let first = state.apply(submit("r-1")).unwrap();
    let again = state.apply(submit("r-1")).unwrap();
    let other = state.apply(submit("r-2")).unwrap();
    assert_eq!(first, Outcome::RunSubmitted(1));
    assert_eq!(again, Outcome::RunSubmitted(1));
    assert_eq!(other, Outcome::RunSubmitted(2));
    assert_eq!(state.runs.len(), 2);
    // The index is rebuilt from the records after a restart.
    let runs: Vec<Run> = state.runs.values().map(|r| Run::clone(r)).collect();
    let mut rebuilt = State::from_records(runs, Vec::new(), state.next_run_id);
    assert_eq!(
        rebuilt.apply(submit("r-2")).unwrap(),
        Outcome::RunSubmitted(2)
    );
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
        },
        Command::SubmitRun {
            pipeline: pipeline("name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n"),
            bundle_digest: digest("bundle"),
            submitter: "alice".into(),
            request_id: None,
            options: Default::default(),
            now_ms: i64::MAX,
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
        },
        Command::CancelRun { run: 1, now_ms: 6 },
    ];
    for command in commands {
        let bytes = serde_json::to_vec(&command).unwrap();
        let decoded: Command = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded, command);
    }
}

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

// ---------------------------------------------------------------------------
// Caching, re-runs, schedules, pins, garbage collection, lineage (issue 5).

/// prepare → train (reads prepare's data) → evaluate; `seed` is seen by train
/// only.
fn cached_pipeline(train_command: &str, version: &str) -> String {
    format!(
        r#"
name: ml
params:
  seed: 1
  other: x
steps:
  - name: prepare
    command: ["prep"]
    outputs: [data.csv]
  - name: train
    inputs: {{data: prepare/data.csv}}
    command: ["{train_command}", "${{params.seed}}"]
    outputs: [model.bin]
    cache: {{version: "{version}"}}
  - name: evaluate
    inputs: {{model: train/model.bin}}
    command: ["eval"]
    outputs: [score.json]
"#
    )
}

/// Succeeds a step reporting each output with a digest made of `content`.
fn succeed_with(sim: &mut Sim, run: RunId, step: &str, content: &str) -> AttemptKey {
    let key = sim.assign(run, step, "w1");
    sim.start(&key);
    let outputs = sim.spec_outputs(run, step);
    let mut report = exited_ok(&[]);
    report.outputs = outputs
        .iter()
        .map(|o| (o.clone(), format!("blake3:{content}-{o}"), 10))
        .collect();
    sim.finish(&key, report);
    key
}

fn run_all(sim: &mut Sim, run: RunId, content: &str) {
    while let Some((_, step)) = sim.queued().into_iter().find(|(r, _)| *r == run) {
        succeed_with(sim, run, &step, content);
    }
    assert_eq!(
        sim.run(run).state,
        RunState::Succeeded,
        "{:?}",
        sim.states(run)
    );
}

fn reused(sim: &Sim, run: RunId) -> Vec<(String, Option<(RunId, ReuseKind)>)> {
    sim.run(run)
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.reused.as_ref().map(|r| (r.run, r.how))))
        .collect()
}

fn with_params(yaml: &str, params: &[(&str, &str)]) -> Pipeline {
    let overrides = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_pipeline("pipeline.yaml", yaml, &overrides).unwrap()
}

impl Sim {
    fn submit_pipeline(&mut self, pipeline: Pipeline, options: SubmitOptions) -> RunId {
        let now_ms = self.tick();
        match self.apply(Command::SubmitRun {
            pipeline,
            bundle_digest: "blake3:bundle".to_string(),
            submitter: "alice".to_string(),
            request_id: None,
            options,
            now_ms,
        }) {
            Ok(Outcome::RunSubmitted(id)) => id,
            other => panic!("submit: {other:?}"),
        }
    }
}

#[test]
fn a_second_identical_run_is_served_from_the_cache_for_every_step() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = cached_pipeline("train", "");
    let first = sim.submit_cached(&yaml);
    run_all(&mut sim, first, "r1");
    let second = sim.submit_cached(&yaml);
    // Completed at submission: nothing queued, every step cached from run 1.
    assert_eq!(sim.run(second).state, RunState::Succeeded);
    assert!(sim.queued().is_empty());
    for (step, reuse) in reused(&sim, second) {
        assert_eq!(reuse, Some((first, ReuseKind::Cached)), "{step}");
    }
    // Same artifacts, by reference.
    assert_eq!(
        sim.step(second, "evaluate").outputs,
        sim.step(first, "evaluate").outputs
    );
    // `--no-cache` runs everything again.
    let fresh = sim.submit_pipeline(
        pipeline(&yaml),
        SubmitOptions {
            no_cache: true,
            ..Default::default()
        },
    );
    assert_eq!(sim.queued(), [(fresh, "prepare".to_string())]);
}

#[test]
fn changing_a_parameter_command_version_or_input_reruns_exactly_the_affected_steps() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let base = cached_pipeline("train", "");
    let first = sim.submit_cached(&base);
    run_all(&mut sim, first, "r1");

    // A parameter only `train` sees: prepare cached, train and evaluate run.
    let changed = sim.submit_pipeline(with_params(&base, &[("seed", "2")]), Default::default());
    assert_eq!(
        sim.step(changed, "prepare").reused.as_ref().unwrap().run,
        first
    );
    assert_eq!(sim.queued(), [(changed, "train".to_string())]);
    run_all(&mut sim, changed, "r2");
    assert!(sim.step(changed, "evaluate").reused.is_none());

    // A parameter no step sees changes nothing.
    let unrelated = sim.submit_pipeline(with_params(&base, &[("other", "y")]), Default::default());
    assert_eq!(sim.run(unrelated).state, RunState::Succeeded);

    // The command, and the cache version, of train.
    for yaml in [
        cached_pipeline("train2", ""),
        cached_pipeline("train", "v2"),
    ] {
        let run = sim.submit_cached(&yaml);
        assert_eq!(sim.step_state(run, "prepare"), StepState::Succeeded);
        assert_eq!(sim.queued(), [(run, "train".to_string())], "{yaml}");
        run_all(&mut sim, run, &format!("r{run}"));
    }

    // An input: prepare produces other data (not from the cache), so train
    // and evaluate run again although their specs did not change.
    let run = sim.submit_pipeline(
        pipeline(&base),
        SubmitOptions {
            no_cache: true,
            ..Default::default()
        },
    );
    succeed_with(&mut sim, run, "prepare", "new-data");
    let again = sim.submit_cached(&base);
    // The newest prepare result is in the cache: the new data.
    assert_eq!(
        sim.step(again, "prepare").outputs[0].digest,
        "blake3:new-data-data.csv"
    );
    assert_eq!(sim.queued().last(), Some(&(again, "train".to_string())));
}

#[test]
fn identical_steps_submitted_at_once_run_once() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = cached_pipeline("train", "");
    let first = sim.submit_cached(&yaml);
    let second = sim.submit_cached(&yaml);
    // Both are queued: neither is computing yet.
    assert_eq!(
        sim.queued(),
        [
            (first, "prepare".to_string()),
            (second, "prepare".to_string())
        ]
    );
    // Both placed in one pass: the first owns the key, the second waits for it.
    let assigned = sim.assign_all(vec![
        placement(first, "prepare", "w1", &[]),
        placement(second, "prepare", "w1", &[]),
    ]);
    assert_eq!(assigned.len(), 1, "{assigned:?}");
    assert_eq!(sim.step_state(second, "prepare"), StepState::Waiting);
    assert!(
        sim.step(second, "prepare")
            .reason
            .as_deref()
            .unwrap()
            .contains("identical step \"prepare\" of run 1"),
    );
    // The rebuilt state knows who computes what.
    let rebuilt = State::from_records(
        sim.state.runs.values().map(|r| Run::clone(r)).collect(),
        sim.state.workers.values().cloned().collect(),
        sim.state.next_run_id,
    );
    assert_eq!(rebuilt.cache_owners, sim.state.cache_owners);
    assert_eq!(rebuilt.cache_pending, sim.state.cache_pending);
    let key = assigned[0].0.clone();
    sim.start(&key);
    sim.succeed(&key);
    // The waiting twin took the result; the first run goes on.
    assert_eq!(sim.step_state(second, "prepare"), StepState::Succeeded);
    run_all(&mut sim, first, "r1");
    // Every step of the second run came from the first, none ran: its train was
    // queued beside the first's and completed when that one succeeded.
    assert_eq!(
        sim.run(second).state,
        RunState::Succeeded,
        "{:?}",
        sim.states(second)
    );
    assert!(sim.run(second).steps.iter().all(|s| s.attempts.is_empty()));
}

#[test]
fn a_step_never_waits_behind_an_identical_one_that_cannot_be_placed() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let stuck =
        "name: p\nsteps:\n  - name: t\n    command: [\"x\"]\n    node_selector: {pool: nowhere}\n";
    let free = "name: p\nsteps:\n  - name: t\n    command: [\"x\"]\n";
    let first = sim.submit_cached(stuck);
    let second = sim.submit_cached(free);
    // Same key (placement is not part of it); the second runs and the first,
    // still queued, takes its result.
    assert_eq!(
        sim.step(first, "t").cache_key,
        sim.step(second, "t").cache_key
    );
    succeed_with(&mut sim, second, "t", "x");
    assert_eq!(sim.run(first).state, RunState::Succeeded);
    assert_eq!(sim.step(first, "t").reused.as_ref().unwrap().run, second);
}

#[test]
fn a_failed_step_is_never_cached_and_hands_its_key_to_a_waiting_twin() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = "name: p\nsteps:\n  - name: a\n    command: [\"x\"]\n    outputs: [o]\n";
    let first = sim.submit_cached(yaml);
    let second = sim.submit_cached(yaml);
    let key = sim.assign(first, "a", "w1");
    sim.finish(&key, exited(1));
    assert_eq!(sim.run(first).state, RunState::Failed);
    assert!(sim.state.catalog.cache.is_empty());
    // The twin now runs itself.
    assert_eq!(sim.queued(), [(second, "a".to_string())]);
    succeed_with(&mut sim, second, "a", "ok");
    assert_eq!(sim.state.catalog.cache.len(), 1);
    // A cancelled owner hands over too.
    let third = sim.submit_pipeline(
        pipeline(&yaml.replace("\"x\"", "\"y\"")),
        Default::default(),
    );
    let fourth = sim.submit_pipeline(
        pipeline(&yaml.replace("\"x\"", "\"y\"")),
        Default::default(),
    );
    sim.cancel(third).unwrap();
    assert_eq!(sim.queued(), [(fourth, "a".to_string())]);
}

#[test]
fn cache_false_turns_caching_off_for_a_step() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = "name: p\nsteps:\n  - name: a\n    command: [\"x\"]\n    cache: false\n";
    let first = sim.submit_cached(yaml);
    run_all(&mut sim, first, "r1");
    let second = sim.submit_cached(yaml);
    assert_eq!(sim.queued(), [(second, "a".to_string())]);
    assert!(sim.step(second, "a").cache_key.is_none());
}

#[test]
fn rerun_from_a_step_reuses_upstream_outputs_and_runs_downstream_again() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = cached_pipeline("train", "");
    let first = sim.submit(&yaml);
    run_all(&mut sim, first, "r1");
    let now_ms = sim.tick();
    let Ok(Outcome::RunSubmitted(rerun)) = sim.apply(Command::RerunRun {
        source: first,
        from: Some("train".into()),
        submitter: "alice".into(),
        request_id: None,
        now_ms,
    }) else {
        panic!("rerun refused");
    };
    assert_eq!(sim.run(rerun).rerun_of, Some(first));
    assert_eq!(
        sim.step(rerun, "prepare").reused,
        Some(Reuse {
            run: first,
            step: "prepare".into(),
            how: ReuseKind::Rerun
        })
    );
    assert_eq!(
        sim.step(rerun, "prepare").outputs,
        sim.step(first, "prepare").outputs
    );
    // train runs again although its result is cached; evaluate waits for it.
    assert_eq!(sim.queued(), [(rerun, "train".to_string())]);
    assert_eq!(sim.step_state(rerun, "evaluate"), StepState::Waiting);
    // train's input is prepare's artifact of run 1, by digest.
    assert_eq!(
        sim.step(rerun, "train").inputs[0].digest,
        sim.step(first, "prepare").outputs[0].digest
    );

    // Without --from: only what did not succeed (and what follows it).
    let failing = sim.submit(&yaml);
    succeed_with(&mut sim, failing, "prepare", "f");
    let key = sim.assign(failing, "train", "w1");
    sim.finish(&key, exited(3));
    assert_eq!(sim.run(failing).state, RunState::Failed);
    let now_ms = sim.tick();
    let Ok(Outcome::RunSubmitted(again)) = sim.apply(Command::RerunRun {
        source: failing,
        from: None,
        submitter: "alice".into(),
        request_id: None,
        now_ms,
    }) else {
        panic!("rerun refused");
    };
    assert_eq!(sim.queued().last(), Some(&(again, "train".to_string())));
    assert!(sim.step(again, "prepare").reused.is_some());

    // Refusals name the problem and change nothing.
    let before = sim.state.runs.len();
    let refuse = |sim: &mut Sim, source, from: Option<&str>| {
        let now_ms = sim.tick();
        sim.apply(Command::RerunRun {
            source,
            from: from.map(str::to_string),
            submitter: "alice".into(),
            request_id: None,
            now_ms,
        })
        .unwrap_err()
        .to_string()
    };
    assert!(
        refuse(&mut sim, first, Some("trian"))
            .contains("no step or sweep \"trian\" (it has: evaluate, prepare, train)")
    );
    assert!(refuse(&mut sim, first, None).contains("every step would be reused"));
    assert!(refuse(&mut sim, again, None).contains("still running"));
    assert!(refuse(&mut sim, 99, None).contains("does not exist"));
    assert_eq!(sim.state.runs.len(), before);
}

#[test]
fn a_schedule_fires_once_per_tick_and_not_while_paused() {
    let mut sim = Sim::new();
    let schedule = Schedule {
        name: "nightly".into(),
        cron: "0 0 * * *".into(),
        pipeline: pipeline(CHAIN),
        bundle_digest: "blake3:bundle".into(),
        code_digests: BTreeMap::new(),
        owner: "alice".into(),
        created_ms: 0,
        paused: false,
        after_ms: 0,
        last_tick_ms: None,
        last_run: None,
        fired: 0,
        missed: 0,
    };
    sim.apply(Command::CreateSchedule {
        schedule: schedule.clone(),
        now_ms: 5_000,
    })
    .unwrap();
    assert!(matches!(
        sim.apply(Command::CreateSchedule {
            schedule,
            now_ms: 5_001
        }),
        Err(StateError::ScheduleExists(_))
    ));
    let fire = |sim: &mut Sim, tick_ms: i64| {
        sim.apply(Command::FireSchedule {
            name: "nightly".into(),
            tick_ms,
            missed: 0,
            now_ms: tick_ms + 1,
        })
        .unwrap()
    };
    // A tick before the schedule existed never fires.
    assert_eq!(fire(&mut sim, 4_000), Outcome::Unchanged);
    let Outcome::RunSubmitted(run) = fire(&mut sim, 10_000) else {
        panic!("the tick did not fire");
    };
    assert_eq!(sim.run(run).schedule, Some(("nightly".to_string(), 10_000)));
    // The same tick again (a retry, a new leader) and an older one: nothing.
    assert_eq!(fire(&mut sim, 10_000), Outcome::Unchanged);
    assert_eq!(fire(&mut sim, 9_000), Outcome::Unchanged);
    // Paused: nothing; resumed: ticks from the pause are not made up.
    sim.apply(Command::PauseSchedule {
        name: "nightly".into(),
        paused: true,
        now_ms: 11_000,
    })
    .unwrap();
    assert_eq!(fire(&mut sim, 12_000), Outcome::Unchanged);
    sim.apply(Command::PauseSchedule {
        name: "nightly".into(),
        paused: false,
        now_ms: 15_000,
    })
    .unwrap();
    assert_eq!(fire(&mut sim, 14_000), Outcome::Unchanged);
    assert!(matches!(fire(&mut sim, 16_000), Outcome::RunSubmitted(_)));
    let schedule = &sim.state.catalog.schedules["nightly"];
    assert_eq!((schedule.fired, schedule.last_tick_ms), (2, Some(16_000)));
    sim.apply(Command::DeleteSchedule {
        name: "nightly".into(),
        now_ms: 17_000,
    })
    .unwrap();
    assert_eq!(fire(&mut sim, 20_000), Outcome::Unchanged);
}

#[test]
fn lineage_walks_from_an_artifact_to_the_code_and_parameters() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let first = sim.submit_cached(&cached_pipeline("train", ""));
    run_all(&mut sim, first, "r1");
    // A cached run: lineage still names the step that ran.
    let second = sim.submit_cached(&cached_pipeline("train", ""));
    let score = sim.step(second, "evaluate").outputs[0].digest.clone();
    let nodes = sim.state.lineage(&score).unwrap();
    let steps: Vec<(RunId, &str)> = nodes.iter().map(|n| (n.run, n.step.as_str())).collect();
    assert_eq!(
        steps,
        [(first, "evaluate"), (first, "train"), (first, "prepare")]
    );
    assert_eq!(
        nodes[1].params,
        BTreeMap::from([("seed".to_string(), "1".to_string())])
    );
    assert_eq!(nodes[1].command, ["train", "1"]);
    assert_eq!(nodes[1].code_digest, "blake3:bundle");
    assert_eq!(nodes[1].inputs[0].digest, nodes[2].digest);
    assert!(sim.state.lineage("blake3:nothing").is_none());
}

#[test]
fn pins_need_a_known_artifact() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    run_all(&mut sim, run, "r1");
    let digest = sim.step(run, "a").outputs[0].digest.clone();
    sim.apply(Command::PinArtifact {
        tag: "best".into(),
        digest: digest.clone(),
        owner: "alice".into(),
        now_ms: 1,
    })
    .unwrap();
    assert_eq!(sim.state.catalog.pins["best"].digest, digest);
    // The same pin again is fine; the tag on another artifact is refused and
    // changes nothing.
    sim.apply(Command::PinArtifact {
        tag: "best".into(),
        digest: digest.clone(),
        owner: "bob".into(),
        now_ms: 2,
    })
    .unwrap();
    let second = sim.submit(CHAIN);
    run_all(&mut sim, second, "r2");
    let other = sim.step(second, "a").outputs[0].digest.clone();
    assert_ne!(other, digest);
    let before = sim.state.catalog.clone();
    assert!(matches!(
        sim.apply(Command::PinArtifact {
            tag: "best".into(),
            digest: other.clone(),
            owner: "bob".into(),
            now_ms: 3,
        }),
        Err(StateError::PinTaken { tag, digest: pinned }) if tag == "best" && pinned == digest
    ));
    assert_eq!(sim.state.catalog, before);
    assert!(matches!(
        sim.apply(Command::PinArtifact {
            tag: "x".into(),
            digest: "blake3:unknown".into(),
            owner: "alice".into(),
            now_ms: 2,
        }),
        Err(StateError::ArtifactNotFound(_))
    ));
    assert!(matches!(
        sim.apply(Command::UnpinArtifact {
            tag: "nope".into(),
            now_ms: 3
        }),
        Err(StateError::PinNotFound(_))
    ));
}

/// A collection keeps the blobs written within the grace period, so a run it
/// collects stays in later plans until one comes a grace period after it; that
/// one releases it, and later ones no longer look at it.
#[test]
fn a_collected_run_is_planned_again_until_its_grace_period_has_passed() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let old = sim.submit(CHAIN);
    run_all(&mut sim, old, "old");
    let newer = sim.submit(CHAIN);
    run_all(&mut sim, newer, "new");
    let a = sim.step(old, "a").outputs[0].digest.clone();
    let collect = |sim: &mut Sim, now_ms: i64| {
        let Ok(Outcome::Collected {
            runs,
            blobs,
            grace_ms,
            ..
        }) = sim.apply(Command::Collect {
            keep_last: 1,
            now_ms,
            grace_ms: 1000,
        })
        else {
            panic!("collect")
        };
        assert_eq!(grace_ms, 1000);
        let blobs: BTreeSet<String> = blobs.into_iter().map(|(d, _)| d).collect();
        (runs, blobs)
    };
    let (runs, blobs) = collect(&mut sim, 10_000);
    assert_eq!(runs, vec![old]);
    assert!(blobs.contains(&a), "{blobs:?}");
    assert!(!sim.state.runs[&old].released);
    // Within the grace period: not collected again, but its blobs are planned.
    let (runs, blobs) = collect(&mut sim, 10_999);
    assert!(runs.is_empty());
    assert!(blobs.contains(&a), "{blobs:?}");
    assert!(!sim.state.runs[&old].released);
    // The first collection a grace period later deletes them and releases it.
    let (_, blobs) = collect(&mut sim, 11_000);
    assert!(blobs.contains(&a), "{blobs:?}");
    assert!(sim.state.runs[&old].released);
    let (_, blobs) = collect(&mut sim, 20_000);
    assert!(!blobs.contains(&a), "{blobs:?}");
}

/// Every digest a live thing refers to.
fn live_digests(state: &State) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    for run in state.runs.values().filter(|r| r.collected_ms.is_none()) {
        live.insert(run.bundle_digest.clone());
        for step in &run.steps {
            live.extend(step.outputs.iter().map(|a| a.digest.clone()));
            live.extend(step.inputs.iter().map(|i| i.digest.clone()));
            live.extend(
                step.attempts
                    .iter()
                    .filter_map(|a| a.log.as_ref().map(|(d, _)| d.clone())),
            );
        }
    }
    for entry in state.catalog.cache.values() {
        live.extend(entry.outputs.iter().map(|a| a.digest.clone()));
    }
    live.extend(state.catalog.pins.values().map(|p| p.digest.clone()));
    live.extend(
        state
            .catalog
            .schedules
            .values()
            .map(|s| s.bundle_digest.clone()),
    );
    live
}

fn all_digests(state: &State) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for run in state.runs.values() {
        all.insert(run.bundle_digest.clone());
        for step in &run.steps {
            all.extend(step.outputs.iter().map(|a| a.digest.clone()));
            all.extend(step.inputs.iter().map(|i| i.digest.clone()));
            all.extend(
                step.attempts
                    .iter()
                    .filter_map(|a| a.log.as_ref().map(|(d, _)| d.clone())),
            );
        }
    }
    all
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Over random histories (runs of two pipelines that succeed, fail, are
    /// cached or run fresh, share artifacts through the cache, pins, collections
    /// in between), `ferry gc` never deletes a blob something live refers to, and
    /// deletes every other blob of the runs it collected.
    #[test]
    fn gc_never_removes_a_referenced_artifact_and_removes_the_rest(
        history in proptest::collection::vec((0u8..6, 0u8..4, proptest::bool::ANY), 1..30),
        keep in 0u32..4,
        grace_ms in proptest::sample::select(vec![0u64, 25, 1000]),
    ) {
        let mut sim = Sim::new();
        sim.register(big_worker("w1"));
        let mut deleted_before = BTreeSet::new();
        for (i, (kind, content, fresh)) in history.into_iter().enumerate() {
            let yaml = if kind % 2 == 0 { cached_pipeline("train", "") } else { CHAIN.to_string() };
            let options = SubmitOptions { no_cache: fresh, ..Default::default() };
            match kind {
                0..=3 => {
                    let run = sim.submit_pipeline(pipeline(&yaml), options);
                    // Steps run or fail; waiting twins follow their owners.
                    let mut guard = 0;
                    while let Some((r, step)) = sim.queued().into_iter().next() {
                        guard += 1;
                        if guard > 50 { break; }
                        if kind == 3 && step == "b" && r == run {
                            let key = sim.assign(r, &step, "w1");
                            let mut report = exited(1);
                            report.log = Some((format!("blake3:log-{i}"), 5));
                            sim.finish(&key, report);
                        } else {
                            succeed_with(&mut sim, r, &step, &format!("c{content}"));
                        }
                    }
                }
                4 => {
                    let digests: Vec<String> = all_digests(&sim.state)
                        .into_iter()
                        .filter(|d| sim.state.artifact_size(d).is_some())
                        .collect();
                    if let Some(digest) = digests.get(content as usize % digests.len().max(1)) {
                        // A tag in use is moved: unpinned, then pinned again.
                        let tag = format!("t{content}");
                        let now_ms = sim.tick();
                        if sim.state.catalog.pins.get(&tag).is_some_and(|p| &p.digest != digest) {
                            sim.apply(Command::UnpinArtifact { tag: tag.clone(), now_ms }).unwrap();
                        }
                        sim.apply(Command::PinArtifact {
                            tag,
                            digest: digest.clone(),
                            owner: "alice".into(),
                            now_ms,
                        }).unwrap();
                    }
                }
                _ => {
                    let now_ms = sim.tick();
                    let Ok(Outcome::Collected { blobs, .. }) =
                        sim.apply(Command::Collect { keep_last: keep, now_ms, grace_ms }) else { panic!("collect") };
                    let live = live_digests(&sim.state);
                    for (digest, _) in blobs {
                        proptest::prop_assert!(!live.contains(&digest), "{digest} was live");
                        deleted_before.insert(digest);
                    }
                }
            }
        }
        let before_collected: BTreeSet<RunId> = sim.state.runs.values()
            .filter(|r| r.collected_ms.is_some()).map(|r| r.id).collect();
        let now_ms = sim.tick();
        let plan = gc_plan(&sim.state, keep, now_ms, grace_ms);
        let Ok(Outcome::Collected { runs, blobs, .. }) =
            sim.apply(Command::Collect { keep_last: keep, now_ms, grace_ms }) else { panic!("collect") };
        proptest::prop_assert_eq!(&runs, &plan.runs);
        let deleted: BTreeSet<String> = blobs.iter().map(|(d, _)| d.clone()).collect();
        let live = live_digests(&sim.state);
        // Never a referenced blob.
        proptest::prop_assert!(deleted.is_disjoint(&live), "{:?}", deleted.intersection(&live).collect::<Vec<_>>());
        // Every other blob of a collected run goes (now, or in an earlier
        // collection), and a blob is reported once: a run whose blobs all went
        // is not looked at again.
        for run in sim.state.runs.values().filter(|r| r.collected_ms.is_some()) {
            let mut blobs = BTreeMap::new();
            catalog::run_blobs(run, &mut blobs);
            for digest in blobs.keys() {
                proptest::prop_assert!(
                    live.contains(digest) || deleted.contains(digest) || deleted_before.contains(digest),
                    "{digest} of run {} kept", run.id
                );
            }
        }
        // Nothing leaks: a blob of a run no plan looks at any more (released)
        // was deleted, or a run that plans still look at refers to it.
        let mut planned = BTreeMap::new();
        for run in sim.state.runs.values().filter(|r| !r.released) {
            catalog::run_blobs(run, &mut planned);
        }
        for run in sim.state.runs.values().filter(|r| r.released) {
            let mut blobs = BTreeMap::new();
            catalog::run_blobs(run, &mut blobs);
            for digest in blobs.keys() {
                proptest::prop_assert!(
                    deleted.contains(digest) || deleted_before.contains(digest) || planned.contains_key(digest),
                    "{digest} of released run {} is neither deleted nor planned", run.id
                );
            }
        }
        for entry in sim.state.catalog.cache.values() {
            for artifact in &entry.outputs {
                proptest::prop_assert!(!deleted.contains(&artifact.digest), "the cache names a deleted blob");
            }
        }
        // Running runs are never collected; kept runs are the newest per pipeline.
        for id in &runs {
            proptest::prop_assert!(sim.state.runs[id].state.is_terminal());
            proptest::prop_assert!(!before_collected.contains(id));
        }
        let mut per_pipeline: BTreeMap<&str, u32> = BTreeMap::new();
        for run in sim.state.runs.values().rev().filter(|r| r.state.is_terminal()) {
            let kept = per_pipeline.entry(&run.pipeline.name).or_default();
            if *kept < keep {
                proptest::prop_assert!(run.collected_ms.is_none(), "run {} is among the newest {keep}", run.id);
                *kept += 1;
            }
        }
    }
}
