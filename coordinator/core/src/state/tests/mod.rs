//! Scenario tests for the coordinator's state machine. Pipelines come from YAML
//! through the real spec parser; time is whatever number a command carries (the
//! [`Sim`] clock ticks once per command).

use std::collections::BTreeMap;

use ferry_spec::{DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES, Pipeline, Resources, parse_pipeline};

use super::*;

mod caching;
mod fencing;
mod images;
mod lifecycle;
mod queries;
mod replay;
mod resend;
mod scale;
mod workers;

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
        container_runtime: None,
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
        image: None,
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
        image: None,
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
        image: None,
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
        image: None,
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
            ..
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
            runs: (*state.runs).clone(),
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
            placements: Vec::new(),
        }) {
            Ok(Outcome::RunSubmitted { run: id, .. }) => id,
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
            placements: Vec::new(),
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
            runs: (*self.state.runs).clone(),
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

/// Six steps, one of them needing another (worker registration and replay tests).
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
