//! What the state holds beside runs and workers: the cache index, schedules and
//! pinned artifacts; and the commands on them: re-runs, schedule firings, pins
//! and garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferry_spec::Pipeline;
use serde::{Deserialize, Serialize};

use super::{
    ArtifactRecord, Outcome, Reuse, ReuseKind, RunId, State, StateError, StepState, SubmitOptions,
};

/// Replicated records that are not runs or workers. Part of every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Cache key → the result of the first step that computed it.
    #[serde(default)]
    pub cache: BTreeMap<String, CacheEntry>,
    #[serde(default)]
    pub schedules: BTreeMap<String, Schedule>,
    /// Tag → pinned artifact.
    #[serde(default)]
    pub pins: BTreeMap<String, Pin>,
    /// `project/name` → secret (sealed: never a plaintext value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, super::Secret>,
    /// `project/name` → the last version a secret had, kept across a delete.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u64>,
}

/// A step result in the cache: the step that produced it and its outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub run: RunId,
    pub step: String,
    pub outputs: Vec<ArtifactRecord>,
    pub created_ms: i64,
}

/// A pipeline started on a cron schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    /// A cron expression, UTC (checked by `ferry_spec::cron` before it gets here).
    pub cron: String,
    pub pipeline: Pipeline,
    pub bundle_digest: String,
    #[serde(default)]
    pub code_digests: BTreeMap<String, String>,
    pub owner: String,
    pub created_ms: i64,
    pub paused: bool,
    /// Ticks at or before this time never fire: its creation, its resumption,
    /// or the last tick that fired.
    pub after_ms: i64,
    #[serde(default)]
    pub last_tick_ms: Option<i64>,
    #[serde(default)]
    pub last_run: Option<RunId>,
    /// Runs it started.
    #[serde(default)]
    pub fired: u64,
    /// Ticks that went by without a run (the cluster was down: only the latest
    /// missed tick fires).
    #[serde(default)]
    pub missed: u64,
}

/// A pinned artifact: kept by `ferry gc` whatever happens to its runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub digest: String,
    pub size: u64,
    pub owner: String,
    pub created_ms: i64,
}

/// What `ferry gc --keep-last N` removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// Finished runs whose logs and artifacts go (not yet collected).
    pub runs: Vec<RunId>,
    /// Blobs to delete, with their size when a record knows it (0 for bundles).
    pub blobs: BTreeMap<String, u64>,
    /// Cache entries that go with their runs (keys).
    pub evict: Vec<String>,
    /// Collected runs none of whose blobs is kept any more: later collections
    /// need not look at them again.
    pub release: Vec<RunId>,
}

/// Every blob a run refers to: its bundle, its steps' inputs and outputs, and
/// its attempts' logs, with sizes where known.
pub(super) fn run_blobs(run: &super::Run, into: &mut BTreeMap<String, u64>) {
    into.entry(run.bundle_digest.clone()).or_insert(0);
    for step in &run.steps {
        for artifact in &step.outputs {
            into.insert(artifact.digest.clone(), artifact.size);
        }
        for input in &step.inputs {
            into.insert(input.digest.clone(), input.size);
        }
        for attempt in &step.attempts {
            if let Some((digest, size)) = &attempt.log {
                into.insert(digest.clone(), *size);
            }
        }
    }
}

/// Which runs `ferry gc --keep-last keep_last` collects and which blobs go with
/// them. Per pipeline name, the newest `keep_last` finished runs are kept;
/// running runs are never collected. A blob is deleted only if a collected run
/// refers to it and nothing live does: no run that is kept or running, no cache
/// entry, no pin, no schedule. A cache entry made by a collected run goes with
/// it, unless a live run or a pin still holds every artifact it names (then it
/// costs nothing to keep); so the cache never keeps an old run's artifacts alive
/// on its own, and never names a deleted one.
///
/// A collected run is looked at again by later collections until one of them
/// comes `grace_ms` or more after it was collected (the blobs a collection keeps
/// because they were written within the grace period are deleted by that one),
/// and then released, never to be looked at again, if each of its blobs is
/// deleted by that collection or referenced by a run that is not collected (as
/// a newer run of the same code refers to its bundle): that run plans the blob
/// when it goes in turn. A run with a blob only a pin, a schedule or the cache
/// keeps stays in the plans, so the blob goes once they let it go.
pub fn gc_plan(state: &State, keep_last: u32, now_ms: i64, grace_ms: u64) -> GcPlan {
    let mut kept_per_pipeline: BTreeMap<&str, u32> = BTreeMap::new();
    let mut collect = BTreeSet::new();
    for run in state.runs.values().rev() {
        if !run.state.is_terminal() {
            continue;
        }
        let kept = kept_per_pipeline.entry(&run.pipeline.name).or_default();
        if *kept < keep_last {
            *kept += 1;
        } else if run.collected_ms.is_none() {
            collect.insert(run.id);
        }
    }
    let mut live = BTreeMap::new();
    let mut dead = BTreeMap::new();
    for run in state.runs.values() {
        if run.released {
            continue;
        }
        if run.collected_ms.is_some() || collect.contains(&run.id) {
            run_blobs(run, &mut dead);
        } else {
            run_blobs(run, &mut live);
        }
    }
    // Blobs that a run left uncollected refers to: that run carries them, and
    // plans them when it is collected in turn.
    let carried: BTreeSet<String> = live.keys().cloned().collect();
    for pin in state.catalog.pins.values() {
        live.insert(pin.digest.clone(), pin.size);
    }
    for schedule in state.catalog.schedules.values() {
        live.insert(schedule.bundle_digest.clone(), 0);
    }
    let mut evict = Vec::new();
    for (key, entry) in &state.catalog.cache {
        let gone = state
            .runs
            .get(&entry.run)
            .is_none_or(|run| run.collected_ms.is_some() || collect.contains(&run.id));
        if gone
            && !entry
                .outputs
                .iter()
                .all(|artifact| live.contains_key(&artifact.digest))
        {
            evict.push(key.clone());
        }
    }
    for (key, entry) in &state.catalog.cache {
        if !evict.contains(key) {
            for artifact in &entry.outputs {
                live.insert(artifact.digest.clone(), artifact.size);
            }
        }
    }
    dead.retain(|digest, _| !live.contains_key(digest));
    let release = state
        .runs
        .values()
        .filter(|run| !run.released)
        .filter(|run| {
            let collected_ms = match run.collected_ms {
                Some(at) => at,
                None if collect.contains(&run.id) => now_ms,
                None => return false,
            };
            collected_ms.saturating_add(grace_ms as i64) <= now_ms
        })
        .filter(|run| {
            let mut blobs = BTreeMap::new();
            run_blobs(run, &mut blobs);
            blobs
                .keys()
                .all(|digest| dead.contains_key(digest) || carried.contains(digest))
        })
        .map(|run| run.id)
        .collect();
    GcPlan {
        runs: collect.into_iter().collect(),
        blobs: dead,
        evict,
        release,
    }
}

/// Every blob something live refers to: runs that are not collected, the cache
/// index, pins and schedules. What a deletion checks again before it deletes.
pub fn live_blobs(state: &State) -> BTreeSet<String> {
    let mut live = BTreeMap::new();
    for run in state.runs.values().filter(|r| r.collected_ms.is_none()) {
        run_blobs(run, &mut live);
    }
    let mut live: BTreeSet<String> = live.into_keys().collect();
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

impl State {
    pub(super) fn rerun(
        &mut self,
        source: RunId,
        from: Option<&str>,
        submitter: String,
        request_id: Option<String>,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        let run = self
            .runs
            .get(&source)
            .ok_or(StateError::RunNotFound(source))?;
        if !run.state.is_terminal() {
            return Err(StateError::RunStillRunning {
                run: source,
                state: run.state.as_str(),
            });
        }
        if run.collected_ms.is_some() {
            return Err(StateError::RunCollected(source));
        }
        let mut again: BTreeSet<String> = match from {
            Some(from) => {
                let named: BTreeSet<String> = run
                    .pipeline
                    .steps
                    .iter()
                    .filter(|s| s.name == from || s.trial.as_ref().is_some_and(|t| t.of == from))
                    .map(|s| s.name.clone())
                    .collect();
                if named.is_empty() {
                    let written: BTreeSet<&str> = run
                        .pipeline
                        .steps
                        .iter()
                        .map(|s| s.trial.as_ref().map_or(s.name.as_str(), |t| t.of.as_str()))
                        .collect();
                    return Err(StateError::NoSuchRerunStep {
                        run: source,
                        step: from.to_string(),
                        steps: written.into_iter().collect::<Vec<_>>().join(", "),
                    });
                }
                named
            }
            None => {
                let failed: BTreeSet<String> = run
                    .steps
                    .iter()
                    .filter(|s| s.state != StepState::Succeeded)
                    .map(|s| s.name.clone())
                    .collect();
                if failed.is_empty() {
                    return Err(StateError::NothingToRerun(source));
                }
                failed
            }
        };
        // Everything downstream of a step that runs again runs again too.
        for spec in &run.pipeline.steps {
            if spec.needs.iter().any(|need| again.contains(need)) {
                again.insert(spec.name.clone());
            }
        }
        let kept: Vec<(usize, super::StepRecord)> = run
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == StepState::Succeeded && !again.contains(&s.name))
            .map(|(i, s)| (i, s.clone()))
            .collect();
        let entries: Vec<_> = kept
            .iter()
            .filter_map(|(_, s)| Self::reuse_entry(run, &s.name))
            .collect();
        let pipeline = run.pipeline.clone();
        let bundle = run.bundle_digest.clone();
        let options = SubmitOptions {
            no_cache: true,
            code_digests: run.code_digests.clone(),
        };
        let id = self.create_run(pipeline, bundle, submitter, request_id, options, now_ms);
        if let Some(new) = self.runs.get_mut(&id).map(Arc::make_mut) {
            new.rerun_of = Some(source);
            for ((index, old), entry) in kept.into_iter().zip(entries) {
                let record = &mut new.steps[index];
                record.state = StepState::Succeeded;
                record.outputs = entry.outputs;
                record.inputs = old.inputs;
                record.cache_key = old.cache_key;
                record.reused = Some(Reuse {
                    run: entry.run,
                    step: entry.step,
                    how: ReuseKind::Rerun,
                });
            }
        }
        self.advance(id, now_ms);
        Ok(Outcome::submitted(id))
    }

    pub(super) fn create_schedule(
        &mut self,
        schedule: Schedule,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if self.catalog.schedules.contains_key(&schedule.name) {
            return Err(StateError::ScheduleExists(schedule.name));
        }
        let mut schedule = schedule;
        schedule.created_ms = now_ms;
        schedule.after_ms = now_ms;
        schedule.paused = false;
        schedule.last_tick_ms = None;
        schedule.last_run = None;
        schedule.fired = 0;
        schedule.missed = 0;
        self.catalog
            .schedules
            .insert(schedule.name.clone(), schedule);
        Ok(Outcome::Done)
    }

    pub(super) fn pause_schedule(
        &mut self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        let schedule = self
            .catalog
            .schedules
            .get_mut(name)
            .ok_or_else(|| StateError::ScheduleNotFound(name.to_string()))?;
        if schedule.paused && !paused {
            // Ticks that came while it was paused are not made up.
            schedule.after_ms = schedule.after_ms.max(now_ms);
        }
        schedule.paused = paused;
        Ok(Outcome::Done)
    }

    pub(super) fn delete_schedule(&mut self, name: &str) -> Result<Outcome, StateError> {
        self.catalog
            .schedules
            .remove(name)
            .ok_or_else(|| StateError::ScheduleNotFound(name.to_string()))?;
        Ok(Outcome::Done)
    }

    /// Starts the run of one tick, exactly once: a tick at or before the last
    /// one that fired (a leader that retried, or a new leader that saw the same
    /// tick) changes nothing.
    pub(super) fn fire_schedule(
        &mut self,
        name: &str,
        tick_ms: i64,
        missed: u64,
        now_ms: i64,
    ) -> Outcome {
        let Some(schedule) = self.catalog.schedules.get(name) else {
            return Outcome::Unchanged;
        };
        if schedule.paused || tick_ms <= schedule.after_ms {
            return Outcome::Unchanged;
        }
        let pipeline = schedule.pipeline.clone();
        let bundle = schedule.bundle_digest.clone();
        let owner = schedule.owner.clone();
        let options = SubmitOptions {
            no_cache: false,
            code_digests: schedule.code_digests.clone(),
        };
        let id = self.create_run(pipeline, bundle, owner, None, options, now_ms);
        if let Some(run) = self.runs.get_mut(&id).map(Arc::make_mut) {
            run.schedule = Some((name.to_string(), tick_ms));
        }
        if let Some(schedule) = self.catalog.schedules.get_mut(name) {
            schedule.after_ms = tick_ms;
            schedule.last_tick_ms = Some(tick_ms);
            schedule.last_run = Some(id);
            schedule.fired += 1;
            schedule.missed += missed;
        }
        self.advance(id, now_ms);
        Outcome::submitted(id)
    }

    pub(super) fn pin(
        &mut self,
        tag: String,
        digest: String,
        owner: String,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        let size = self
            .artifact_size(&digest)
            .ok_or_else(|| StateError::ArtifactNotFound(digest.clone()))?;
        // Pinning again under the same tag is a no-op; moving a tag silently
        // would leave the artifact it pinned unprotected.
        if let Some(pin) = self.catalog.pins.get(&tag) {
            return if pin.digest == digest {
                Ok(Outcome::Done)
            } else {
                Err(StateError::PinTaken {
                    tag,
                    digest: pin.digest.clone(),
                })
            };
        }
        self.catalog.pins.insert(
            tag,
            Pin {
                digest,
                size,
                owner,
                created_ms: now_ms,
            },
        );
        Ok(Outcome::Done)
    }

    pub(super) fn unpin(&mut self, tag: &str) -> Result<Outcome, StateError> {
        self.catalog
            .pins
            .remove(tag)
            .ok_or_else(|| StateError::PinNotFound(tag.to_string()))?;
        Ok(Outcome::Done)
    }

    pub(super) fn collect(&mut self, keep_last: u32, now_ms: i64, grace_ms: u64) -> Outcome {
        let plan = gc_plan(self, keep_last, now_ms, grace_ms);
        for key in &plan.evict {
            self.catalog.cache.remove(key);
        }
        for id in &plan.runs {
            if let Some(run) = self.runs.get_mut(id).map(Arc::make_mut) {
                run.collected_ms = Some(now_ms);
            }
        }
        for id in &plan.release {
            if let Some(run) = self.runs.get_mut(id).map(Arc::make_mut) {
                run.released = true;
            }
        }
        Outcome::Collected {
            runs: plan.runs,
            blobs: plan.blobs.into_iter().collect(),
            at_ms: now_ms,
            grace_ms,
        }
    }
}
