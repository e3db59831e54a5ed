//! A step with an image is cached by the image's content: its cache key is
//! made only once the worker that runs an attempt has resolved the image's
//! name to its ID, and the attempt then runs, or stops before running anything
//! because the result with that key exists or an identical step computes it.

use std::sync::Arc;

use super::{
    AttemptKey, AttemptOutcome, Outcome, RanImage, ReuseKind, RunId, State, StateError, StepState,
};

impl State {
    /// A worker resolved the image of attempt `key`: the attempt records it,
    /// the step's key is computed with its ID, and the answer says whether the
    /// attempt runs. Applied again (a report sent again through a failover),
    /// it answers as the first did: an owner goes on, an ended attempt stops.
    pub(super) fn image_resolved(
        &mut self,
        key: &AttemptKey,
        worker: &str,
        image: RanImage,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if let Err(reason) = self.fence(key, worker)? {
            return Ok(Outcome::ImageChecked { run: false, reason });
        }
        let run = &self.runs[&key.run];
        let index = run.step_index(&key.step).expect("fenced");
        let reads_cache = !run.no_cache;
        let inputs = run.steps[index].inputs.clone();
        let new_key = self.key_of_step(run, index, &inputs, Some(&image.id));
        let me = (key.run, key.step.clone());
        let image_id = image.id.clone();
        let run = self
            .runs
            .get_mut(&key.run)
            .map(Arc::make_mut)
            .expect("fenced");
        let record = &mut run.steps[index];
        if let Some(attempt) = record.attempts.last_mut() {
            attempt.image = Some(image);
        }
        let earlier = std::mem::replace(&mut record.cache_key, new_key.clone());
        if let Some(earlier) = earlier
            && Some(&earlier) != new_key.as_ref()
        {
            self.forget_pending(&earlier, &me);
            if self.cache_owners.get(&earlier) == Some(&me) {
                self.cache_owners.remove(&earlier);
            }
        }
        let Some(new_key) = new_key.filter(|_| reads_cache) else {
            return Ok(go());
        };
        self.forget_pending(&new_key, &me);
        if let Some(entry) = self.catalog.cache.get(&new_key).cloned() {
            let reason = format!(
                "the step's result is in the cache (image {}, the same cache key as step \
                 \"{}\" of run {}); it takes that result",
                short_id(&image_id),
                entry.step,
                entry.run
            );
            let record = self.defer_attempt(key, &reason, now_ms);
            Self::complete_from(record, &entry, ReuseKind::Cached);
            self.advance(key.run, now_ms);
            return Ok(Outcome::ImageChecked { run: false, reason });
        }
        match self.cache_owners.get(&new_key).cloned() {
            Some(owner) if owner != me => {
                let (owner_run, owner_step): (RunId, String) = owner;
                let reason = format!(
                    "waiting for the identical step \"{owner_step}\" of run {owner_run} (image {}, \
                     same cache key); its result will be reused",
                    short_id(&image_id)
                );
                let record = self.defer_attempt(key, &reason, now_ms);
                record.state = StepState::Waiting;
                record.reason = Some(reason.clone());
                self.cache_pending.entry(new_key).or_default().insert(me);
                Ok(Outcome::ImageChecked { run: false, reason })
            }
            _ => {
                self.cache_owners.insert(new_key, me);
                Ok(go())
            }
        }
    }

    /// A step with an image in a run that does not read the cache is not
    /// asked to report its image before running (nothing would stop it): its
    /// key, for the cache to record its success, is made from the image its
    /// final report names.
    pub(super) fn key_from_ran_image(&mut self, key: &AttemptKey) {
        let Some(run) = self.runs.get(&key.run) else {
            return;
        };
        let Some(index) = run.step_index(&key.step) else {
            return;
        };
        let record = &run.steps[index];
        if record.cache_key.is_some() || run.pipeline.steps[index].container.is_none() {
            return;
        }
        let Some(id) = record
            .current_attempt()
            .and_then(|a| a.image.as_ref())
            .map(|i| i.id.clone())
        else {
            return;
        };
        let inputs = record.inputs.clone();
        let made = self.key_of_step(run, index, &inputs, Some(&id));
        if let Some(run) = self.runs.get_mut(&key.run).map(Arc::make_mut) {
            run.steps[index].cache_key = made;
        }
    }

    /// Ends the current attempt of `key` as deferred and frees its worker's
    /// capacity; the step, for the caller to move on.
    fn defer_attempt(
        &mut self,
        key: &AttemptKey,
        reason: &str,
        now_ms: i64,
    ) -> &mut super::StepRecord {
        let run = self
            .runs
            .get_mut(&key.run)
            .map(Arc::make_mut)
            .expect("fenced");
        let index = run.step_index(&key.step).expect("fenced");
        let record = &mut run.steps[index];
        if let Some(attempt) = record.attempts.last_mut() {
            attempt.finished_ms = Some(now_ms);
            attempt.outcome = Some(AttemptOutcome::Deferred);
            attempt.reason = Some(reason.to_string());
            if let Some(load) = self.loads.get_mut(&attempt.worker) {
                load.attempts.remove(key);
            }
        }
        record
    }
}

fn go() -> Outcome {
    Outcome::ImageChecked {
        run: true,
        reason: String::new(),
    }
}

/// An image ID as `docker images` shows it: 12 hex digits.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}
