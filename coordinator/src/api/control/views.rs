//! The proto views the control service answers with: runs, steps and attempts
//! (`ferry status`), run summaries and their metrics (`ferry runs`), workers,
//! schedules and pins; and how a listing stays within one message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferry_common::proto;

use crate::scheduler;
use crate::state::{Run, RunId, State, StepState, Worker};

pub(super) fn worker_view(
    state: &State,
    worker: &Worker,
    live: &HashMap<String, (bool, i64)>,
) -> proto::WorkerView {
    let load = state.loads.get(&worker.name).cloned().unwrap_or_default();
    proto::WorkerView {
        name: worker.name.clone(),
        capacity: Some(resources(worker.capacity)),
        in_use: Some(resources(load.in_use())),
        labels: worker
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        gpus: worker
            .gpus
            .iter()
            .map(|g| proto::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_bytes: g.memory_bytes,
            })
            .collect(),
        last_heartbeat_ms: live.get(&worker.name).map_or(0, |(_, at)| *at),
        connected: live
            .get(&worker.name)
            .is_some_and(|(connected, _)| *connected),
        running: load.attempts.len() as u32,
        mode: worker.mode.as_str().to_string(),
        lost_ms: worker.lost_ms.unwrap_or(0),
    }
}

fn resources(resources: ferry_common::spec::Resources) -> proto::Resources {
    proto::Resources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        gpus: resources.gpus,
    }
}

/// Per metric name, the last value reported by the last step (in pipeline order)
/// that succeeded and reported it, following cached and reused steps to the
/// attempt that ran (in the run `find_run` finds by id); a name only steps that
/// did not succeed reported (a diverged training's loss) takes the last of theirs.
pub(super) fn run_metrics<'a>(
    run: &'a Run,
    find_run: &dyn Fn(RunId) -> Option<&'a Run>,
) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    let mut not_succeeded = BTreeMap::new();
    for (index, step) in run.steps.iter().enumerate() {
        // Later values replace earlier ones: the last value of the last step.
        if let Some(attempt) = crate::state::producing_attempt_of(run, index, find_run) {
            let into = if step.state == StepState::Succeeded {
                &mut metrics
            } else {
                &mut not_succeeded
            };
            for point in &attempt.metrics {
                into.insert(point.name.clone(), point.value);
            }
        }
    }
    for (name, value) in not_succeeded {
        metrics.entry(name).or_insert(value);
    }
    metrics
}

/// What [`newest_that_fit`] kept of a listing.
pub(super) struct Fitted<M> {
    /// Oldest first.
    pub(super) kept: Vec<M>,
    /// How many items there were, kept or not.
    pub(super) count: u64,
    /// The ids of items skipped because their message did not fit in what was
    /// left (at most [`MAX_OMITTED`]), newest first.
    pub(super) omitted: Vec<u64>,
}

/// Most omitted ids one listing names.
pub(super) const MAX_OMITTED: usize = 100;
/// Consecutive items that do not fit after which a listing stops trying older
/// ones (the answer is full): a listing costs in proportion to what it holds.
const MAX_SKIPPED_IN_A_ROW: usize = 64;

/// Of the items `newest_first`, the first `limit` (0: no limit) whose messages,
/// made by `make`, fit in `max_bytes` together, oldest first; and how many items
/// there were. An item whose message does not fit in what is left is skipped
/// (its id, by `id`, is named in `omitted`) and older ones are still tried, so
/// one oversize item never hides the others. Only the items tried are made.
pub(super) fn newest_that_fit<I, M: prost::Message>(
    newest_first: impl Iterator<Item = I>,
    limit: usize,
    max_bytes: usize,
    make: impl Fn(I) -> M,
    id: impl Fn(&M) -> u64,
) -> Fitted<M> {
    let mut kept = Vec::new();
    let mut omitted = Vec::new();
    let (mut count, mut bytes, mut skipped_in_a_row, mut full) = (0u64, 0usize, 0usize, false);
    for item in newest_first {
        count += 1;
        full =
            full || (limit > 0 && kept.len() >= limit) || skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW;
        if full {
            continue;
        }
        let message = make(item);
        // The field's tag and length prefix included, roughly.
        let size = message.encoded_len() + 8;
        if bytes + size > max_bytes {
            skipped_in_a_row += 1;
            if omitted.len() < MAX_OMITTED {
                omitted.push(id(&message));
            }
            continue;
        }
        skipped_in_a_row = 0;
        bytes += size;
        kept.push(message);
    }
    kept.reverse();
    // Only those newer than a kept item were skipped over; older ones are past
    // the end of what fit.
    let oldest_kept = kept.first().map(&id);
    omitted.retain(|skipped| oldest_kept.is_some_and(|oldest| *skipped > oldest));
    Fitted {
        kept,
        count,
        omitted,
    }
}

/// Longest parameter value a trimmed summary or view keeps whole.
const TRIMMED_VALUE_BYTES: usize = 1024;

/// `value` cut to [`TRIMMED_VALUE_BYTES`] (at a character boundary) with a
/// marker saying how long it was; `None` when it is short enough.
fn trimmed_value(value: &str) -> Option<String> {
    if value.len() <= TRIMMED_VALUE_BYTES {
        return None;
    }
    let mut end = TRIMMED_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!(
        "{}…[trimmed: {} bytes in all]",
        &value[..end],
        value.len()
    ))
}

/// Cuts long parameter values short (see [`trimmed_value`]); whether any was.
fn trim_params(params: &mut HashMap<String, String>) -> bool {
    let mut any = false;
    for value in params.values_mut() {
        if let Some(short) = trimmed_value(value) {
            *value = short;
            any = true;
        }
    }
    any
}

/// A summary over `max_bytes` with its long parameter values cut short (a
/// listing shows them in a column; `ferry status` gives the whole run).
pub(super) fn bounded_summary(
    mut summary: proto::RunSummary,
    max_bytes: usize,
) -> proto::RunSummary {
    if prost::Message::encoded_len(&summary) > max_bytes {
        trim_params(&mut summary.params);
    }
    summary
}

/// A run view cut down to `max_bytes` if it is larger, saying what was cut in
/// `trimmed`: first long parameter values (which the view carries twice: in
/// its summary, which `ferry runs` also lists, and on its own), then the
/// attempts' metric lists where the step shows its own, the summary's metrics,
/// and last the steps' metric lists to their first values.
pub(super) fn bounded_run_view(mut view: proto::RunView, max_bytes: usize) -> proto::RunView {
    let fits = |view: &proto::RunView| prost::Message::encoded_len(view) <= max_bytes;
    if fits(&view) {
        return view;
    }
    let mut cuts = Vec::new();
    let mut params_cut = trim_params(&mut view.params);
    if let Some(summary) = view.summary.as_mut() {
        params_cut |= trim_params(&mut summary.params);
    }
    if params_cut {
        cuts.push(format!(
            "parameter values over {TRIMMED_VALUE_BYTES} bytes are cut short"
        ));
    }
    if !fits(&view) {
        for step in &mut view.steps {
            let shown = !step.metrics.is_empty();
            for attempt in &mut step.attempts {
                if shown || attempt.metrics.len() > 16 {
                    attempt.metrics.clear();
                }
            }
        }
        cuts.push("attempts' metrics are left out ('ferry metrics' shows them)".to_string());
    }
    if !fits(&view) {
        if let Some(summary) = view.summary.as_mut() {
            summary.metrics.clear();
        }
        cuts.push("the run's metric summary is left out".to_string());
    }
    let mut keep = 1024usize;
    while !fits(&view) && keep > 0 {
        keep /= 4;
        for step in &mut view.steps {
            step.metrics.truncate(keep);
        }
    }
    if keep < 1024 {
        cuts.push(format!("each step shows at most {keep} metrics"));
    }
    view.trimmed = format!(
        "this view was over {} MiB and was cut down: {}",
        max_bytes / (1024 * 1024),
        cuts.join("; ")
    );
    view
}

/// A run as `ferry runs` lists it; `find_run` finds the runs its reused steps
/// came from (see [`run_metrics`]).
pub(super) fn run_summary<'a>(
    run: &'a Run,
    find_run: &dyn Fn(RunId) -> Option<&'a Run>,
) -> proto::RunSummary {
    proto::RunSummary {
        run_id: run.id,
        pipeline: run.pipeline.name.clone(),
        state: run.state.as_str().to_string(),
        submitter: run.submitter.clone(),
        submitted_ms: run.submitted_ms,
        finished_ms: run.finished_ms.unwrap_or(0),
        steps_total: run.steps.len() as u32,
        steps_done: (run.steps.len() - run.steps.counts().unfinished()) as u32,
        reason: run.reason.clone().unwrap_or_default(),
        priority: run.pipeline.priority,
        project: run.pipeline.project.clone(),
        rerun_of: run.rerun_of.unwrap_or(0),
        schedule: run
            .schedule
            .as_ref()
            .map(|(name, _)| name.clone())
            .unwrap_or_default(),
        schedule_tick_ms: run.schedule.as_ref().map_or(0, |(_, tick)| *tick),
        collected: run.collected_ms.is_some(),
        params: run
            .pipeline
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metrics: run_metrics(run, find_run).into_iter().collect(),
        steps_cached: run.steps.iter().filter(|s| s.reused.is_some()).count() as u32,
    }
}

pub(super) fn input_views(inputs: &[crate::state::InputRecord]) -> Vec<proto::InputView> {
    inputs
        .iter()
        .map(|i| proto::InputView {
            name: i.name.clone(),
            digest: i.digest.clone(),
            size: i.size,
        })
        .collect()
}

fn metric_view(m: &crate::state::MetricPoint) -> proto::Metric {
    proto::Metric {
        name: m.name.clone(),
        value: m.value,
        has_step: m.step.is_some(),
        step: m.step.unwrap_or(0),
        count: 0,
    }
}

/// An attempt's metrics in a run view: with `history` every value reported;
/// otherwise the last value of each name with how many there were, in the
/// order the names first came (a training curve of thousands of points stays
/// one entry, so a big sweep's view stays small).
fn metric_views(points: &[crate::state::MetricPoint], history: bool) -> Vec<proto::Metric> {
    if history {
        return points.iter().map(metric_view).collect();
    }
    let mut views: Vec<proto::Metric> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for point in points {
        match at.get(point.name.as_str()) {
            Some(&i) => {
                let count = views[i].count + 1;
                views[i] = proto::Metric {
                    count,
                    ..metric_view(point)
                };
            }
            None => {
                at.insert(&point.name, views.len());
                views.push(proto::Metric {
                    count: 1,
                    ..metric_view(point)
                });
            }
        }
    }
    views
}

/// Which of a run's steps a view lists: at most `limit` of those in `state`
/// (every state when `None`) from the `offset`-th, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StepPage {
    pub(super) state: Option<StepState>,
    pub(super) offset: usize,
    pub(super) limit: usize,
}

/// A run as `ferry status` shows it: its summary, its steps' counts by state,
/// and the steps of `page`. A queued step's reason is, in order: that no
/// worker can ever hold it, the retry backoff it waits out, why the leader's last
/// scheduling pass left it queued (`waiting`), or what its record says. Costs
/// the page, not the run (but for the summary's metrics).
pub(super) fn run_view(
    state: &State,
    run: &Run,
    connected: &dyn Fn(&str) -> bool,
    waiting: &BTreeMap<String, String>,
    now_ms: i64,
    history: bool,
    page: StepPage,
) -> proto::RunView {
    let accepting = state
        .workers
        .keys()
        .filter(|name| connected(name))
        .cloned()
        .collect();
    let workers = scheduler::worker_slots(state, &accepting);
    // Steps a run's or sweep's max_parallel holds back never reach a scheduling
    // pass: say so.
    let active_run = u32::try_from(run.steps.counts().active()).unwrap_or(u32::MAX);
    let mut active_sweeps: BTreeMap<&str, u32> = BTreeMap::new();
    if !run.sweep_limits().is_empty() {
        for (record, spec) in run.steps.iter().zip(&run.pipeline.steps) {
            if let Some(trial) = &spec.trial
                && record.state.is_active()
            {
                *active_sweeps.entry(trial.of.as_str()).or_default() += 1;
            }
        }
    }
    let (positions, matched) = run.steps.page(page.state, page.offset, page.limit);
    let held_back = |spec: &ferry_common::spec::Step| -> Option<String> {
        if let Some(trial) = &spec.trial
            && let Some(max) = trial.max_parallel
            && active_sweeps.get(trial.of.as_str()).copied().unwrap_or(0) >= max
        {
            return Some(format!(
                "the sweep {:?} already has {max} trials at once, its max_parallel",
                trial.of
            ));
        }
        run.pipeline
            .max_parallel
            .filter(|max| active_run >= *max)
            .map(|max| {
                format!(
                    "run {} already has {max} steps at once, its max_parallel",
                    run.id
                )
            })
    };
    let steps = positions
        .iter()
        .map(|&index| (index, (&run.steps[index], &run.pipeline.steps[index])))
        .map(|(index, (record, spec))| {
            let current = record.current_attempt();
            let reason = match record.state {
                StepState::Queued => scheduler::never_fits_reason(
                    spec.resources,
                    &scheduler::gpu_need(spec),
                    &spec.node_selector,
                    spec.container.is_some(),
                    &workers,
                )
                .or_else(|| {
                    record
                        .not_before_ms
                        .filter(|t| *t > now_ms)
                        .and(record.reason.clone())
                })
                .or_else(|| waiting.get(&record.name).cloned())
                .or_else(|| held_back(spec))
                .or_else(|| record.reason.clone())
                .unwrap_or_else(|| "waiting for a worker with room".to_string()),
                StepState::Waiting if record.cache_key.is_some() => {
                    record.reason.clone().unwrap_or_default()
                }
                StepState::Waiting => {
                    let pending: Vec<&str> = spec
                        .needs
                        .iter()
                        .filter(|need| {
                            run.step(need)
                                .is_some_and(|s| s.state != StepState::Succeeded)
                        })
                        .map(String::as_str)
                        .collect();
                    format!("needs {}", pending.join(", "))
                }
                _ => record
                    .reason
                    .clone()
                    .or_else(|| current.and_then(|a| a.reason.clone()))
                    .unwrap_or_default(),
            };
            proto::StepView {
                name: record.name.clone(),
                state: record.state.as_str().to_string(),
                attempt: current.map(|a| a.number).unwrap_or(0),
                worker: current.map(|a| a.worker.clone()).unwrap_or_default(),
                started_ms: current.and_then(|a| a.started_ms).unwrap_or(0),
                finished_ms: current.and_then(|a| a.finished_ms).unwrap_or(0),
                has_exit_code: current.and_then(|a| a.exit_code).is_some(),
                exit_code: current.and_then(|a| a.exit_code).unwrap_or(0),
                reason,
                needs: spec.needs.clone(),
                resources: Some(resources(spec.resources)),
                attempts: record
                    .attempts
                    .iter()
                    .map(|a| proto::AttemptView {
                        attempt: a.number,
                        worker: a.worker.clone(),
                        outcome: a
                            .outcome
                            .map(|o| o.as_str().to_string())
                            .unwrap_or_else(|| {
                                if a.started_ms.is_some() {
                                    "running"
                                } else {
                                    "assigned"
                                }
                                .to_string()
                            }),
                        started_ms: a.started_ms.unwrap_or(0),
                        finished_ms: a.finished_ms.unwrap_or(0),
                        has_exit_code: a.exit_code.is_some(),
                        exit_code: a.exit_code.unwrap_or(0),
                        reason: a.reason.clone().unwrap_or_default(),
                        gpus: a.gpus.clone(),
                        cpu_time_ms: a.usage.map_or(0, |u| u.cpu_time_ms),
                        peak_memory_bytes: a.usage.map_or(0, |u| u.peak_memory_bytes),
                        metrics: metric_views(&a.metrics, history),
                        image_id: a.image.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
                        image_repo_digest: a
                            .image
                            .as_ref()
                            .and_then(|i| i.repo_digest.clone())
                            .unwrap_or_default(),
                    })
                    .collect(),
                reused: record
                    .reused
                    .as_ref()
                    .map(|r| r.how.as_str().to_string())
                    .unwrap_or_default(),
                reused_run: record.reused.as_ref().map_or(0, |r| r.run),
                reused_step: record
                    .reused
                    .as_ref()
                    .map(|r| r.step.clone())
                    .unwrap_or_default(),
                inputs: input_views(&record.inputs),
                cache_key: record.cache_key.clone().unwrap_or_default(),
                trial_of: spec
                    .trial
                    .as_ref()
                    .map(|t| t.of.clone())
                    .unwrap_or_default(),
                matrix: spec
                    .trial
                    .as_ref()
                    .map(|t| t.values.clone().into_iter().collect())
                    .unwrap_or_default(),
                metrics: if record.state == StepState::Succeeded {
                    state
                        .producing_attempt(run, index)
                        .map(|a| metric_views(&a.metrics, history))
                        .unwrap_or_default()
                } else {
                    Vec::new()
                },
            }
        })
        .collect();
    proto::RunView {
        summary: Some(run_summary(run, &|id| run_in(state, id))),
        steps,
        params: run
            .pipeline
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        bundle_digest: run.bundle_digest.clone(),
        trimmed: String::new(),
        step_counts: run
            .steps
            .counts()
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(state, count)| (state.as_str().to_string(), count as u64))
            .collect(),
        steps_offset: page.offset as u64,
        steps_matched: matched as u64,
    }
}

/// The run with id `id` in `state`.
fn run_in(state: &State, id: RunId) -> Option<&Run> {
    state.runs.get(&id).map(|run| &**run)
}

/// The run with id `id` among `runs`, a copy of the state's runs in id order.
pub(super) fn run_with_id(runs: &[Arc<Run>], id: RunId) -> Option<&Run> {
    runs.binary_search_by_key(&id, |run| run.id)
        .ok()
        .map(|at| &*runs[at])
}

pub(super) fn schedule_view(schedule: &crate::state::Schedule, now_ms: i64) -> proto::ScheduleView {
    let next = if schedule.paused {
        0
    } else {
        ferry_common::cron::Cron::parse(&schedule.cron)
            .ok()
            .and_then(|cron| cron.next_after(schedule.after_ms.max(now_ms)))
            .unwrap_or(0)
    };
    proto::ScheduleView {
        name: schedule.name.clone(),
        cron: schedule.cron.clone(),
        pipeline: schedule.pipeline.name.clone(),
        owner: schedule.owner.clone(),
        paused: schedule.paused,
        created_ms: schedule.created_ms,
        last_tick_ms: schedule.last_tick_ms.unwrap_or(0),
        last_run: schedule.last_run.unwrap_or(0),
        next_tick_ms: next,
        fired: schedule.fired,
        missed: schedule.missed,
        params: schedule
            .pipeline
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(super) fn pin_view(tag: &str, pin: &crate::state::Pin) -> proto::PinView {
    proto::PinView {
        tag: tag.to_string(),
        digest: pin.digest.clone(),
        size: pin.size,
        owner: pin.owner.clone(),
        created_ms: pin.created_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: u64) -> proto::RunSummary {
        proto::RunSummary {
            run_id: id,
            pipeline: "p".repeat(90),
            ..Default::default()
        }
    }

    #[test]
    fn a_view_holds_the_last_value_of_each_metric_and_how_many_there_were() {
        let point = |name: &str, value: f64, step: Option<i64>| crate::state::MetricPoint {
            name: name.into(),
            value,
            step,
        };
        let points = [
            point("loss", 0.5, Some(1)),
            point("accuracy", 0.8, None),
            point("loss", 0.25, Some(2)),
            point("loss", 0.125, Some(3)),
        ];
        let views = metric_views(&points, false);
        let shown: Vec<(&str, f64, Option<i64>, u32)> = views
            .iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.value,
                    m.has_step.then_some(m.step),
                    m.count,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [("loss", 0.125, Some(3), 3), ("accuracy", 0.8, None, 1)]
        );
        let history = metric_views(&points, true);
        assert_eq!(history.len(), 4);
        assert_eq!(history[2].value, 0.25);
        assert!(history.iter().all(|m| m.count == 0));
    }

    fn ids(fitted: Fitted<proto::RunSummary>) -> (Vec<u64>, u64, Vec<u64>) {
        (
            fitted.kept.iter().map(|s| s.run_id).collect(),
            fitted.count,
            fitted.omitted,
        )
    }

    fn id(summary: &proto::RunSummary) -> u64 {
        summary.run_id
    }

    #[test]
    fn listings_keep_the_newest_runs_that_fit() {
        let size = prost::Message::encoded_len(&summary(5)) + 8;
        // Newest first in, oldest first out; every item counted.
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 0, usize::MAX, summary, id)),
            (vec![1, 2, 3, 4, 5], 5, vec![])
        );
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 2, usize::MAX, summary, id)),
            (vec![4, 5], 5, vec![])
        );
        // The byte budget cuts too: three summaries' worth keeps three.
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 0, 3 * size + 1, summary, id)),
            (vec![3, 4, 5], 5, vec![])
        );
        assert_eq!(
            ids(newest_that_fit(std::iter::empty(), 10, 100, summary, id)),
            (vec![], 0, vec![])
        );
    }

    #[test]
    fn an_oversize_entry_is_skipped_not_a_wall() {
        let size = prost::Message::encoded_len(&summary(5)) + 8;
        let make = |id: u64| {
            let mut s = summary(id);
            if id == 4 {
                s.pipeline = "x".repeat(100 * size);
            }
            s
        };
        // Run 4 alone is over the budget: 5, 3, 2 and 1 are listed, 4 named.
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 0, 10 * size, make, id)),
            (vec![1, 2, 3, 5], 5, vec![4])
        );
        // The newest one oversize: the older ones are still listed.
        let newest_huge = |id: u64| {
            let mut s = summary(id);
            if id == 5 {
                s.pipeline = "x".repeat(100 * size);
            }
            s
        };
        assert_eq!(
            ids(newest_that_fit(
                (1..=5).rev(),
                0,
                10 * size,
                newest_huge,
                id
            )),
            (vec![1, 2, 3, 4], 5, vec![5])
        );
        // With the limit: the skipped one does not count towards it.
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 2, 10 * size, make, id)),
            (vec![3, 5], 5, vec![4])
        );
    }

    #[test]
    fn a_full_listing_stops_trying_older_entries() {
        let size = prost::Message::encoded_len(&summary(5)) + 8;
        let made = std::cell::Cell::new(0usize);
        let make = |id: u64| {
            made.set(made.get() + 1);
            summary(id)
        };
        let fitted = newest_that_fit((1..=10_000).rev(), 0, 2 * size + 8, make, id);
        assert_eq!(fitted.kept.len(), 2);
        assert_eq!(fitted.count, 10_000);
        // Skipped ones older than every kept one are not "omitted".
        assert!(fitted.omitted.is_empty());
        assert!(made.get() <= 2 + MAX_SKIPPED_IN_A_ROW, "{}", made.get());
    }

    #[test]
    fn a_view_over_its_bound_is_trimmed_and_says_so() {
        let huge = "p".repeat(7 * 1024 * 1024);
        let params: HashMap<String, String> = [
            ("blob".to_string(), huge.clone()),
            ("seed".to_string(), "42".to_string()),
        ]
        .into();
        let view = proto::RunView {
            summary: Some(proto::RunSummary {
                run_id: 1,
                params: params.clone(),
                ..Default::default()
            }),
            params,
            ..Default::default()
        };
        let max = 6 * 1024 * 1024;
        let trimmed = bounded_run_view(view, max);
        assert!(prost::Message::encoded_len(&trimmed) <= max);
        assert_eq!(trimmed.params["seed"], "42");
        assert!(trimmed.params["blob"].ends_with("[trimmed: 7340032 bytes in all]"));
        assert!(trimmed.params["blob"].starts_with("pppp"));
        assert_eq!(
            trimmed.summary.as_ref().unwrap().params["blob"],
            trimmed.params["blob"]
        );
        assert!(
            trimmed.trimmed.contains("parameter values"),
            "{}",
            trimmed.trimmed
        );
        // A view within its bound is left alone.
        let small = proto::RunView::default();
        assert_eq!(bounded_run_view(small.clone(), max), small);
    }

    #[test]
    fn a_view_with_too_many_metrics_is_cut_to_fit() {
        let metric = |i: usize| proto::Metric {
            name: format!("{i:0>120}"),
            value: 1.0,
            count: 1,
            ..Default::default()
        };
        let metrics: Vec<proto::Metric> = (0..10_000).map(metric).collect();
        let step = proto::StepView {
            metrics: metrics.clone(),
            attempts: vec![proto::AttemptView {
                metrics: metrics.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let view = proto::RunView {
            summary: Some(proto::RunSummary {
                metrics: metrics.iter().map(|m| (m.name.clone(), m.value)).collect(),
                ..Default::default()
            }),
            steps: vec![step; 5],
            ..Default::default()
        };
        let max = 6 * 1024 * 1024;
        assert!(prost::Message::encoded_len(&view) > max);
        let trimmed = bounded_run_view(view, max);
        assert!(prost::Message::encoded_len(&trimmed) <= max);
        assert!(
            trimmed
                .steps
                .iter()
                .all(|s| s.attempts[0].metrics.is_empty())
        );
        assert!(trimmed.trimmed.contains("metrics"), "{}", trimmed.trimmed);
    }

    #[test]
    fn a_long_value_is_cut_at_a_character_boundary() {
        assert_eq!(trimmed_value("short"), None);
        let cut = trimmed_value(&"é".repeat(2000)).unwrap();
        assert!(cut.ends_with("[trimmed: 4000 bytes in all]"));
        let summary = proto::RunSummary {
            params: [("a".to_string(), "v".repeat(5000))].into(),
            ..Default::default()
        };
        assert_eq!(bounded_summary(summary.clone(), 1 << 20), summary);
        let cut = bounded_summary(summary, 100);
        assert!(cut.params["a"].len() < 1100);
    }
}
