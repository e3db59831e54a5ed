//! Step readiness and caching: a step whose dependencies succeeded gets its
//! inputs resolved and its cache key computed, and is then completed from the
//! cache, set to wait behind an identical step already computing the same key,
//! or queued.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_spec::{Gather, Step};
use serde::Serialize;

use super::{
    ArtifactRecord, CacheEntry, InputRecord, Reuse, ReuseKind, Run, RunId, State, StepState,
};

/// The version of the cache key's layout; bump it when the layout changes.
const KEY_LAYOUT: u32 = 1;

/// What a step's cache key is computed over (README: "Step caching").
#[derive(Serialize)]
struct KeyMaterial<'a> {
    ferry_cache_key: u32,
    step: &'a str,
    command: &'a [String],
    env: &'a BTreeMap<String, String>,
    image: Option<&'a str>,
    code: &'a str,
    inputs: BTreeMap<&'a str, &'a str>,
    params: BTreeMap<&'a str, &'a str>,
    matrix: Option<&'a BTreeMap<String, String>>,
    gather: &'a [Gather],
    outputs: &'a [String],
    version: &'a str,
    /// `cache.secrets: true`: the step's secrets by name and version (never
    /// their values); absent otherwise, so earlier keys stay the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets: Option<&'a BTreeMap<String, u64>>,
}

/// A step's cache key: the BLAKE3 hash (hex) of the canonical JSON of what
/// determines its result: the step's name as written (a trial is known by its
/// sweep's name and its matrix values), the resolved command, its environment (the `env` of
/// the spec, parameters substituted; Ferry holds no secret values), its container
/// image by content (`image_id`, the ID the worker resolved the image's name to;
/// `null` for a process step), `code` (the code bundle's digest,
/// or the digest of the files under `cache.paths`), its inputs by name and
/// digest, the values of the parameters it sees, its matrix values, what it
/// gathers, its declared outputs, and `cache.version`; with `cache.secrets:
/// true`, the names and versions of its secrets (`secret_versions`, ignored
/// otherwise). A secret's value never enters it.
pub fn cache_key(
    step: &Step,
    params: &BTreeMap<String, String>,
    code: &str,
    inputs: &[InputRecord],
    secret_versions: &BTreeMap<String, u64>,
    image_id: Option<&str>,
) -> String {
    let material = KeyMaterial {
        ferry_cache_key: KEY_LAYOUT,
        // A trial is known by its values, not its index: adding values to a
        // sweep renumbers trials without invalidating the unchanged ones.
        step: step.trial.as_ref().map_or(&step.name, |t| &t.of),
        command: &step.command,
        env: &step.env,
        image: image_id,
        code,
        inputs: inputs
            .iter()
            .map(|i| (i.name.as_str(), i.digest.as_str()))
            .collect(),
        params: step
            .params
            .iter()
            .filter_map(|name| Some((name.as_str(), params.get(name)?.as_str())))
            .collect(),
        matrix: step.trial.as_ref().map(|t| &t.values),
        gather: &step.gather,
        outputs: &step.outputs,
        version: &step.cache.version,
        secrets: step.cache.secrets.then_some(secret_versions),
    };
    let bytes = serde_json::to_vec(&material).expect("the cache key material serializes");
    blake3::hash(&bytes).to_hex().to_string()
}

impl State {
    /// Moves every waiting step of a running run whose dependencies all
    /// succeeded: completed from the cache, waiting behind an identical step, or
    /// queued; then ends the run if every step is done. One forward pass reaches
    /// every step a cache hit readies, since steps are in topological order.
    pub(super) fn advance(&mut self, run_id: RunId, now_ms: i64) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        if run.state.is_terminal() {
            return;
        }
        if run.steps.stale()
            && let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut)
        {
            run.steps.refresh();
        }
        // Only waiting steps without a key can move (most completions, e.g. of
        // independent steps, find none).
        let candidates: Vec<usize> = self
            .runs
            .get(&run_id)
            .map(|run| run.steps.movable().collect())
            .unwrap_or_default();
        for index in candidates {
            let Some(run) = self.runs.get(&run_id) else {
                return;
            };
            let record = &run.steps[index];
            let spec = &run.pipeline.steps[index];
            // A waiting step with a key is waiting behind an identical step.
            // A step's needs come before it, so a cache hit earlier in this
            // pass is seen here.
            if record.state == StepState::Waiting
                && record.cache_key.is_none()
                && spec.needs.iter().all(|need| {
                    run.step(need)
                        .is_some_and(|s| s.state == StepState::Succeeded)
                })
            {
                self.make_ready(run_id, index);
            }
        }
        if let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) {
            Self::finish_run_if_done(run, now_ms);
        }
    }

    /// [`State::advance`] after step `index` of the run succeeded: only its
    /// dependents can become ready (and, through a cache hit, theirs), so only
    /// they are examined; the same outcome as a whole pass, at the cost of the
    /// step's dependents rather than of the run's waiting steps (a long chain).
    pub(super) fn advance_from(&mut self, run_id: RunId, index: usize, now_ms: i64) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        if run.state.is_terminal() {
            return;
        }
        let mut work: std::collections::BTreeSet<usize> =
            run.dependents(index).iter().map(|p| *p as usize).collect();
        while let Some(next) = work.pop_first() {
            let Some(run) = self.runs.get(&run_id) else {
                return;
            };
            let record = &run.steps[next];
            let spec = &run.pipeline.steps[next];
            if record.state == StepState::Waiting
                && record.cache_key.is_none()
                && spec.needs.iter().all(|need| {
                    run.step(need)
                        .is_some_and(|s| s.state == StepState::Succeeded)
                })
            {
                self.make_ready(run_id, next);
                if let Some(run) = self.runs.get(&run_id)
                    && run.steps[next].state == StepState::Succeeded
                {
                    work.extend(run.dependents(next).iter().map(|p| *p as usize));
                }
            }
        }
        if let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) {
            Self::finish_run_if_done(run, now_ms);
        }
    }

    /// The artifacts step `spec` of `run` is given: its inputs, and for each
    /// sweep it gathers every trial's outputs (named `<trial>/<output>`).
    fn resolve_inputs(run: &Run, spec: &Step) -> Vec<InputRecord> {
        let mut inputs = Vec::new();
        for input in &spec.inputs {
            if let Some(artifact) = run
                .step(&input.step)
                .and_then(|s| s.outputs.iter().find(|a| a.name == input.output))
            {
                inputs.push(InputRecord {
                    name: input.name.clone(),
                    digest: artifact.digest.clone(),
                    size: artifact.size,
                });
            }
        }
        for gather in &spec.gather {
            for (record, trial) in run.steps.iter().zip(&run.pipeline.steps) {
                if trial.trial.as_ref().is_some_and(|t| t.of == gather.step) {
                    for artifact in &record.outputs {
                        inputs.push(InputRecord {
                            name: format!("{}/{}", record.name, artifact.name),
                            digest: artifact.digest.clone(),
                            size: artifact.size,
                        });
                    }
                }
            }
        }
        inputs
    }

    /// The cache key of step number `index` of `run` given its `inputs` and,
    /// for a step with an image, the image's ID; none when caching is off for
    /// the step.
    pub(super) fn key_of_step(
        &self,
        run: &Run,
        index: usize,
        inputs: &[InputRecord],
        image_id: Option<&str>,
    ) -> Option<String> {
        let spec = &run.pipeline.steps[index];
        spec.cache.enabled.then(|| {
            let secret_versions = spec
                .secrets
                .iter()
                .map(|used| {
                    let version = self
                        .secret(&run.pipeline.project, &used.name)
                        .map_or(0, |s| s.version);
                    (used.name.clone(), version)
                })
                .collect();
            cache_key(
                spec,
                &run.pipeline.params,
                run.code_digest(&spec.name),
                inputs,
                &secret_versions,
                image_id,
            )
        })
    }

    fn make_ready(&mut self, run_id: RunId, index: usize) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        let spec = &run.pipeline.steps[index];
        let inputs = Self::resolve_inputs(run, spec);
        // A step with an image has no key until a worker resolves the image
        // to its ID (`image_resolved`): the name alone may stand for another
        // image on another worker, or for a rebuilt one.
        let key = if spec.container.is_some() {
            None
        } else {
            self.key_of_step(run, index, &inputs, None)
        };
        let reads_cache = !run.no_cache;
        let hit = key
            .as_ref()
            .filter(|_| reads_cache)
            .and_then(|k| self.catalog.cache.get(k))
            .cloned();
        let name = spec.name.clone();
        let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) else {
            return;
        };
        let record = &mut run.steps[index];
        record.inputs = inputs;
        record.cache_key = key.clone();
        if let Some(entry) = hit {
            Self::complete_from(record, &entry, ReuseKind::Cached);
            return;
        }
        record.state = StepState::Queued;
        record.reason = None;
        if let Some(key) = key
            && reads_cache
        {
            self.cache_pending
                .entry(key)
                .or_default()
                .insert((run_id, name));
        }
    }

    /// Called when the scheduler places a queued step with cache key `key`:
    /// whether the step takes another's result instead of running. If the
    /// result is in the cache now, the step completes from it; if an identical
    /// step is computing it, the step waits for that one (and runs after all if
    /// that one fails). Only a step placed on a worker owns a key, so a step never
    /// waits behind one that cannot be placed.
    pub(super) fn defer_to_cache(
        &mut self,
        key: &str,
        run_id: RunId,
        index: usize,
        now_ms: i64,
    ) -> bool {
        let entry = self.catalog.cache.get(key).cloned();
        let owner = self.cache_owners.get(key).cloned();
        if entry.is_none() && owner.is_none() {
            return false;
        }
        let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) else {
            return false;
        };
        let record = &mut run.steps[index];
        let me = (run_id, record.name.clone());
        match (entry, owner) {
            (Some(entry), _) => {
                Self::complete_from(record, &entry, ReuseKind::Cached);
                self.forget_pending(key, &me);
                self.advance(run_id, now_ms);
            }
            (None, Some((owner_run, owner_step))) => {
                record.state = StepState::Waiting;
                record.reason = Some(format!(
                    "waiting for the identical step \"{owner_step}\" of run {owner_run} \
                     (same cache key); its result will be reused"
                ));
            }
            (None, None) => unreachable!("checked above"),
        }
        true
    }

    /// A step of a run that reads the cache was placed: it computes its key now.
    pub(super) fn claim_cache_key(&mut self, run_id: RunId, index: usize) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        let Some(key) = run.steps[index].cache_key.clone() else {
            return;
        };
        if run.no_cache {
            return;
        }
        let me = (run_id, run.steps[index].name.clone());
        self.forget_pending(&key, &me);
        self.cache_owners.entry(key).or_insert(me);
    }

    pub(super) fn forget_pending(&mut self, key: &str, me: &(RunId, String)) {
        if let Some(pending) = self.cache_pending.get_mut(key) {
            pending.remove(me);
            if pending.is_empty() {
                self.cache_pending.remove(key);
            }
        }
    }

    /// Completes a step with the outputs of the step that produced them.
    pub(super) fn complete_from(
        record: &mut super::StepRecord,
        entry: &CacheEntry,
        how: ReuseKind,
    ) {
        record.state = StepState::Succeeded;
        record.reason = None;
        record.not_before_ms = None;
        record.outputs = entry.outputs.clone();
        record.reused = Some(Reuse {
            run: entry.run,
            step: entry.step.clone(),
            how,
        });
    }

    /// After an attempt of the step (`run`, `step`) with cache key `key` ended, or
    /// its run ended, with the step now in `state`: a success enters the cache
    /// and completes every identical step still pending; an owner that will not
    /// succeed now (a failure, a retry, a cancellation) gives the key up and the
    /// steps waiting for it are queued again, so that one of them runs. A step
    /// queued again for a retry is pending again.
    pub(super) fn settle_cache(
        &mut self,
        key: &str,
        run: RunId,
        step: &str,
        state: StepState,
        now_ms: i64,
    ) {
        let me = (run, step.to_string());
        self.forget_pending(key, &me);
        let was_owner = self.cache_owners.get(key) == Some(&me);
        if was_owner {
            self.cache_owners.remove(key);
        }
        let reads_cache = self
            .runs
            .get(&run)
            .is_some_and(|r| !r.no_cache && !r.state.is_terminal());
        if state == StepState::Queued && reads_cache {
            self.cache_pending
                .entry(key.to_string())
                .or_default()
                .insert(me.clone());
        }
        if state == StepState::Succeeded {
            let Some(record) = self.runs.get(&run).and_then(|r| r.step(step)) else {
                return;
            };
            // A step completed from the cache is not a new result.
            if record.reused.is_none() {
                let entry = CacheEntry {
                    run,
                    step: step.to_string(),
                    outputs: record.outputs.clone(),
                    created_ms: now_ms,
                };
                self.catalog.cache.insert(key.to_string(), entry);
            }
            let Some(entry) = self.catalog.cache.get(key).cloned() else {
                return;
            };
            let pending = self.cache_pending.remove(key).unwrap_or_default();
            for (pending_run, pending_step) in pending {
                let Some(run) = self.runs.get_mut(&pending_run).map(Arc::make_mut) else {
                    continue;
                };
                if let Some(record) = run
                    .steps
                    .iter_mut()
                    .find(|s| s.name == pending_step && !s.state.is_active())
                {
                    Self::complete_from(record, &entry, ReuseKind::Cached);
                }
                self.advance(pending_run, now_ms);
            }
        } else if was_owner {
            let pending: Vec<(RunId, String)> = self
                .cache_pending
                .get(key)
                .map(|p| p.iter().cloned().collect())
                .unwrap_or_default();
            for (pending_run, pending_step) in pending {
                if let Some(run) = self.runs.get_mut(&pending_run).map(Arc::make_mut)
                    && let Some(record) = run
                        .steps
                        .iter_mut()
                        .find(|s| s.name == pending_step && s.state == StepState::Waiting)
                {
                    record.state = StepState::Queued;
                    record.reason = None;
                }
            }
        }
    }

    /// The outputs a reused step points at, as a cache entry.
    pub(super) fn reuse_entry(run: &Run, step: &str) -> Option<CacheEntry> {
        let record = run.step(step)?;
        let (producer_run, producer_step) = match &record.reused {
            Some(reuse) => (reuse.run, reuse.step.clone()),
            None => (run.id, step.to_string()),
        };
        Some(CacheEntry {
            run: producer_run,
            step: producer_step,
            outputs: record.outputs.clone(),
            created_ms: 0,
        })
    }

    /// The attempt that produced the result of step number `index` of `run` (see
    /// [`producing_attempt_of`]), among this state's runs.
    pub fn producing_attempt<'a>(
        &'a self,
        run: &'a Run,
        index: usize,
    ) -> Option<&'a super::Attempt> {
        producing_attempt_of(run, index, &|id| self.runs.get(&id).map(|run| &**run))
    }

    /// Whether some record still names `digest` as an artifact.
    pub fn artifact_size(&self, digest: &str) -> Option<u64> {
        let find = |outputs: &[ArtifactRecord]| {
            outputs.iter().find(|a| a.digest == digest).map(|a| a.size)
        };
        self.catalog
            .cache
            .values()
            .find_map(|e| find(&e.outputs))
            .or_else(|| {
                self.runs
                    .values()
                    .filter(|r| r.collected_ms.is_none())
                    .flat_map(|r| &r.steps)
                    .find_map(|s| find(&s.outputs))
            })
    }
}

/// The attempt that produced the result of step number `index` of `run`: its
/// own last attempt, or that of the step it was reused from, in the run
/// `find_run` finds by id (found at the same position first: reused steps come
/// from runs of the same pipeline). Takes a lookup rather than the state so that
/// a copy of the runs read outside the state lock answers the same.
pub fn producing_attempt_of<'a>(
    run: &'a Run,
    index: usize,
    find_run: &dyn Fn(RunId) -> Option<&'a Run>,
) -> Option<&'a super::Attempt> {
    let record = run.steps.get(index)?;
    match &record.reused {
        Some(reuse) => {
            let source = find_run(reuse.run)?;
            source
                .steps
                .get(index)
                .filter(|s| s.name == reuse.step)
                .or_else(|| source.step(&reuse.step))?
                .attempts
                .last()
        }
        None => record.attempts.last(),
    }
}
