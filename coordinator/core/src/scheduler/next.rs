//! `next_placements`: the dependents that a step's successful report makes
//! ready, placed by the leader in the same Raft entry as the report, so that a
//! chain's next step is assigned one round after its dependency ends instead of
//! two (the report's, then a scheduling pass's `Assign`).

use std::collections::{BTreeMap, BTreeSet};

use super::{QUEUE_WINDOW, QueuedStep, Quota, gpu_need, limits, plan, ready_queue, worker_slots};
use crate::state::{AttemptKey, AttemptReport, FirstPlacement, State, StepState};

/// Where the dependents of the attempt `key` go once `report` is applied, as
/// the leader decides them before proposing the report: the steps whose other
/// needs all succeeded already, placed as a scheduling pass would place them
/// after the report (the finished attempt's room, its slot in its run's and
/// sweep's `max_parallel` and its project's usage count as freed).
///
/// Nothing when the report would not end the attempt as a success (refused,
/// failed, an output missing), when no worker takes work, or when another step
/// is ready to be placed, so that no older or more important step is
/// overtaken: the scheduling pass then places the dependents as any other. The
/// state machine checks each placement again when it applies the report (the
/// report turned out a failure, a dependent was completed from the cache or
/// waits behind an identical step, a worker is gone or full: that placement is
/// dropped).
pub fn next_placements(
    state: &State,
    key: &AttemptKey,
    worker: &str,
    report: &AttemptReport,
    accepting: &BTreeSet<String>,
    quotas: &BTreeMap<String, Quota>,
    now_ms: i64,
) -> Vec<FirstPlacement> {
    if accepting.is_empty() || !state.report_succeeds(key, worker, report) {
        return Vec::new();
    }
    let Some(run) = state.runs.get(&key.run) else {
        return Vec::new();
    };
    let Some(index) = run.step_index(&key.step) else {
        return Vec::new();
    };
    if run.state.is_terminal() {
        return Vec::new();
    }
    // The same test as `State::advance_from`, with this step counted as
    // succeeded; a step with a cache key waits behind an identical step.
    let ready = |position: usize| {
        let (Some(record), Some(spec)) =
            (run.steps.get(position), run.pipeline.steps.get(position))
        else {
            return None;
        };
        let needs_met = spec.needs.iter().all(|need| {
            *need == key.step
                || run
                    .step(need)
                    .is_some_and(|s| s.state == StepState::Succeeded)
        });
        (record.state == StepState::Waiting && record.cache_key.is_none() && needs_met)
            .then_some(spec)
    };
    let queue: Vec<QueuedStep> = run
        .dependents(index)
        .iter()
        .filter_map(|position| ready(*position as usize))
        .take(QUEUE_WINDOW)
        .map(|spec| QueuedStep {
            run: run.id,
            step: spec.name.clone(),
            resources: spec.resources,
            gpu: gpu_need(spec),
            selector: spec.node_selector.clone(),
            container: spec.container.is_some(),
            priority: run.pipeline.priority,
            project: run.pipeline.project.clone(),
            sweep: spec.trial.as_ref().map(|t| t.of.clone()),
        })
        .collect();
    if queue.is_empty() || !ready_queue(state, now_ms).0.is_empty() {
        return Vec::new();
    }
    let mut workers = worker_slots(state, accepting);
    let mut limits = limits(state, quotas, &queue);
    // What the finished attempt holds is free once its report is applied.
    if let Some((resources, gpus)) = state
        .loads
        .get(worker)
        .and_then(|load| load.attempts.get(key))
    {
        if let Some(slot) = workers.iter_mut().find(|slot| slot.name == worker) {
            slot.free.cpu_millis = slot
                .free
                .cpu_millis
                .saturating_add(resources.cpu_millis)
                .min(slot.capacity.cpu_millis);
            slot.free.memory_bytes = slot
                .free
                .memory_bytes
                .saturating_add(resources.memory_bytes)
                .min(slot.capacity.memory_bytes);
            let free: BTreeSet<u32> = slot.free_gpus.iter().map(|g| g.index).collect();
            slot.free_gpus = slot
                .gpus
                .iter()
                .filter(|g| free.contains(&g.index) || gpus.contains(&g.index))
                .cloned()
                .collect();
            slot.free.gpus = u32::try_from(slot.free_gpus.len()).unwrap_or(u32::MAX);
        }
        if let Some(limit) = limits.runs.get_mut(&key.run) {
            limit.active = limit.active.saturating_sub(1);
        }
        if let Some(trial) = run.spec(&key.step).and_then(|spec| spec.trial.as_ref())
            && let Some(limit) = limits.sweeps.get_mut(&(key.run, trial.of.clone()))
        {
            limit.active = limit.active.saturating_sub(1);
        }
        if let Some(usage) = limits.usage.get_mut(&run.pipeline.project) {
            usage.cpu_millis = usage.cpu_millis.saturating_sub(resources.cpu_millis);
            usage.gpus = usage.gpus.saturating_sub(resources.gpus);
        }
    }
    plan(&queue, &workers, &limits)
        .placements
        .into_iter()
        .map(|p| FirstPlacement {
            step: p.step,
            worker: p.worker,
            gpus: p.gpus,
        })
        .collect()
}
