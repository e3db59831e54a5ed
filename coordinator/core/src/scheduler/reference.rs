//! The scheduler's full scans as they were before the index of queued steps:
//! the oracle the index is tested against (`index_tests`).

use std::collections::{BTreeMap, HashMap};

use super::{Limits, QUEUE_WINDOW, QueuedStep, Quota, RoomInRun, count_held, gpu_need};
use crate::state::State;

/// The steps ready to be placed at `now_ms` (higher priority first, then oldest
/// run first, in pipeline order within a run; at most [`QUEUE_WINDOW`] per
/// project and priority), and the earliest time a step now waiting out a retry
/// backoff becomes ready.
pub fn ready_queue_reference(state: &State, now_ms: i64) -> (Vec<QueuedStep>, Option<i64>) {
    let mut runs: Vec<&crate::state::Run> = state
        .runs
        .values()
        .filter(|r| !r.state.is_terminal())
        .map(|r| &**r)
        .collect();
    // Stable: runs of one priority stay oldest first.
    runs.sort_by_key(|r| std::cmp::Reverse(r.pipeline.priority));
    let mut taken: HashMap<(i32, &str), usize> = HashMap::new();
    let mut queue = Vec::new();
    let mut next_retry: Option<i64> = None;
    for run in runs {
        let key = (run.pipeline.priority, run.pipeline.project.as_str());
        let taken = taken.entry(key).or_default();
        // A run or sweep at its max_parallel cannot take more steps this pass:
        // its further steps are left out of the window, so that they do not
        // crowd out steps that could go.
        // Counted only for a run that gets as far as the window.
        let mut room: Option<RoomInRun> = None;
        for (record, spec) in run.steps.iter().zip(&run.pipeline.steps) {
            if record.state != crate::state::StepState::Queued {
                continue;
            }
            if let Some(at) = record.not_before_ms.filter(|at| *at > now_ms) {
                next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                continue;
            }
            if *taken >= QUEUE_WINDOW {
                continue;
            }
            if !room.get_or_insert_with(|| RoomInRun::of(run)).take(spec) {
                continue;
            }
            *taken += 1;
            queue.push(QueuedStep {
                run: run.id,
                step: spec.name.clone(),
                resources: spec.resources,
                gpu: gpu_need(spec),
                selector: spec.node_selector.clone(),
                container: spec.container.is_some(),
                priority: run.pipeline.priority,
                project: run.pipeline.project.clone(),
                sweep: spec.trial.as_ref().map(|t| t.of.clone()),
            });
        }
    }
    (queue, next_retry)
}

/// The limits in force: the configured project quotas, what each project holds
/// now, and each running run's `max_parallel` with how many attempts it holds.
pub fn limits_reference(state: &State, quotas: &BTreeMap<String, Quota>) -> Limits {
    let mut limits = Limits {
        quotas: quotas.clone(),
        ..Limits::default()
    };
    for run in state.runs.values().filter(|r| !r.state.is_terminal()) {
        if let Some(max) = run.pipeline.max_parallel {
            limits.runs.entry(run.id).or_default().max_parallel = Some(max);
        }
        for spec in &run.pipeline.steps {
            if let Some(trial) = &spec.trial
                && let Some(max) = trial.max_parallel
            {
                limits
                    .sweeps
                    .entry((run.id, trial.of.clone()))
                    .or_default()
                    .max_parallel = Some(max);
            }
        }
    }
    count_held(state, &mut limits);
    limits
}
