//! Transitions of a step's attempts: placed on a worker, started, finished (or
//! lost), with retries, backoff and the skipping of dependents that follow.
//! Reports are fenced: only the current attempt, from its own worker, counts.

use std::collections::BTreeSet;
use std::sync::Arc;

use ferry_spec::format_duration_ms;

use super::{
    ArtifactRecord, Attempt, AttemptKey, AttemptOutcome, AttemptReport, FirstPlacement, Outcome,
    Placement, ReportedOutcome, Run, State, StateError, StepState,
};

/// How many times an attempt lost with its worker is retried (beyond `retries`).
pub const LOST_RETRIES: u32 = 3;

/// The wait before retry number `retry` (from 1): `backoff_ms` doubled for each
/// retry after the first, at most [`MAX_RETRY_BACKOFF_MS`].
pub fn retry_delay_ms(backoff_ms: u64, retry: u32) -> u64 {
    let doublings = retry.saturating_sub(1).min(32);
    backoff_ms
        .saturating_mul(1u64 << doublings)
        .min(ferry_spec::MAX_RETRY_BACKOFF_MS)
}

impl State {
    /// Applies each placement that is still valid; the attempts made, with their
    /// workers.
    pub(super) fn assign(
        &mut self,
        placements: impl IntoIterator<Item = Placement>,
        now_ms: i64,
    ) -> Vec<(AttemptKey, String)> {
        let mut assigned = Vec::new();
        for placement in placements {
            if let Some(key) = self.assign_one(&placement, now_ms) {
                assigned.push((key, placement.worker));
            }
        }
        assigned
    }

    /// Applies one placement if it is still valid: the step is queued, the worker is
    /// registered, takes work (not lost, cordoned or draining: a placement decided
    /// just before that changed is dropped, and the step stays queued), and has
    /// room (the no-oversubscription invariant is enforced here as well as in the
    /// scheduler).
    fn assign_one(&mut self, placement: &Placement, now_ms: i64) -> Option<AttemptKey> {
        self.workers
            .get(&placement.worker)
            .filter(|w| w.schedulable())?;
        let run = self.runs.get(&placement.run)?;
        if run.state.is_terminal() {
            return None;
        }
        let index = run.step_index(&placement.step)?;
        if run.steps[index].state != StepState::Queued {
            return None;
        }
        // A step with an image decides once the worker has resolved it
        // (`image_resolved`); the key of an earlier attempt is not this one's.
        let has_image = run.pipeline.steps[index].container.is_some();
        // An identical step computes (or computed) its result: take that instead.
        if let Some(key) = run.steps[index].cache_key.clone()
            && !has_image
            && !run.no_cache
            && self.defer_to_cache(&key, placement.run, index, now_ms)
        {
            return None;
        }
        let worker = self.workers.get(&placement.worker)?;
        let run = self.runs.get(&placement.run)?;
        let resources = run.pipeline.steps.get(index)?.resources;
        let load = self.loads.entry(worker.name.clone()).or_default();
        let used = load.in_use();
        let gpus_in_use = load.gpus_in_use();
        let fits = used.cpu_millis.saturating_add(resources.cpu_millis)
            <= worker.capacity.cpu_millis
            && used.memory_bytes.saturating_add(resources.memory_bytes)
                <= worker.capacity.memory_bytes
            && placement.gpus.len() == resources.gpus as usize
            && placement.gpus.iter().all(|g| {
                !gpus_in_use.contains(g) && worker.gpus.iter().any(|known| known.index == *g)
            })
            && placement.gpus.iter().collect::<BTreeSet<_>>().len() == placement.gpus.len();
        if !fits {
            return None;
        }
        let run = self.runs.get_mut(&placement.run).map(Arc::make_mut)?;
        let step = &mut run.steps[index];
        let number = step.attempts.len() as u32 + 1;
        step.attempts.push(Attempt {
            number,
            worker: placement.worker.clone(),
            gpus: placement.gpus.clone(),
            resources,
            assigned_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            outcome: None,
            exit_code: None,
            reason: None,
            log: None,
            usage: None,
            metrics: Vec::new(),
            image: None,
        });
        step.state = StepState::Assigned;
        step.reason = None;
        step.not_before_ms = None;
        let earlier_key = if has_image {
            step.cache_key.take()
        } else {
            None
        };
        let key = AttemptKey {
            run: placement.run,
            step: placement.step.clone(),
            attempt: number,
        };
        load.attempts
            .insert(key.clone(), (resources, placement.gpus.clone()));
        if has_image {
            if let Some(old) = earlier_key {
                let me = (placement.run, placement.step.clone());
                self.forget_pending(&old, &me);
            }
        } else {
            self.claim_cache_key(placement.run, index);
        }
        Some(key)
    }

    /// Checks that a report names the current attempt of an active step, made by the
    /// worker that attempt was given to. Anything else is stale and must be refused.
    pub(super) fn fence(
        &self,
        key: &AttemptKey,
        worker: &str,
    ) -> Result<Result<(), String>, StateError> {
        let run = self
            .runs
            .get(&key.run)
            .ok_or(StateError::RunNotFound(key.run))?;
        let step = run
            .step(&key.step)
            .ok_or_else(|| StateError::StepNotFound {
                run: key.run,
                step: key.step.clone(),
            })?;
        let Some(current) = step.current_attempt() else {
            return Ok(Err(format!("{key} was never assigned")));
        };
        if current.number != key.attempt {
            return Ok(Err(format!(
                "{key} is stale: the current attempt is {}",
                current.number
            )));
        }
        if current.worker != worker {
            return Ok(Err(format!(
                "{key} belongs to worker \"{}\", not \"{worker}\"",
                current.worker
            )));
        }
        if !step.state.is_active() {
            return Ok(Err(format!(
                "{key} already ended ({})",
                step.state.as_str()
            )));
        }
        Ok(Ok(()))
    }

    pub(super) fn step_started(
        &mut self,
        key: &AttemptKey,
        worker: &str,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if let Err(detail) = self.fence(key, worker)? {
            return Ok(Outcome::report_refused(detail));
        }
        let run = self
            .runs
            .get_mut(&key.run)
            .map(Arc::make_mut)
            .expect("fenced");
        let index = run.step_index(&key.step).expect("fenced");
        let step = &mut run.steps[index];
        step.state = StepState::Running;
        if let Some(attempt) = step.attempts.last_mut() {
            attempt.started_ms.get_or_insert(now_ms);
        }
        Ok(Outcome::report_accepted())
    }

    pub(super) fn step_finished(
        &mut self,
        key: &AttemptKey,
        worker: &str,
        report: AttemptReport,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if let Err(detail) = self.fence(key, worker)? {
            return Ok(Outcome::report_refused(detail));
        }
        let run = &self.runs[&key.run];
        let declared = run
            .step_index(&key.step)
            .and_then(|index| run.pipeline.steps.get(index))
            .map(|s| s.outputs.clone())
            .unwrap_or_default();
        let (outcome, reason) = match report.outcome {
            ReportedOutcome::Exited if report.exit_code == Some(0) => {
                let missing = missing_outputs(&declared, &report);
                if missing.is_empty() {
                    (AttemptOutcome::Succeeded, report.reason)
                } else {
                    (
                        AttemptOutcome::Failed,
                        Some(format!("declared outputs were not reported: {missing:?}")),
                    )
                }
            }
            ReportedOutcome::Exited => (
                AttemptOutcome::Failed,
                report.reason.or_else(|| {
                    Some(match report.exit_code {
                        Some(code) => format!("exited with code {code}"),
                        None => "killed by a signal".to_string(),
                    })
                }),
            ),
            ReportedOutcome::TimedOut => (AttemptOutcome::TimedOut, report.reason),
            // The run was not cancelled (the fence passed), so the worker stopped the
            // attempt on its own, e.g. while shutting down: the attempt is lost and the
            // step is retried per its policy, like any other lost attempt.
            ReportedOutcome::Cancelled => (
                AttemptOutcome::Lost,
                Some(format!(
                    "stopped by the worker: {}",
                    report.reason.as_deref().unwrap_or("no reason given")
                )),
            ),
            ReportedOutcome::Error => (AttemptOutcome::Failed, report.reason),
        };
        let outputs = if outcome == AttemptOutcome::Succeeded {
            // Only declared outputs become artifacts: downstream steps and users
            // can rely on the spec for what a step produced.
            report
                .outputs
                .into_iter()
                .filter(|(name, _, _)| declared.contains(name))
                .collect()
        } else {
            Vec::new()
        };
        if (report.log.is_some()
            || report.usage.is_some()
            || report.ran_ms.is_some()
            || report.image.is_some()
            || !report.metrics.is_empty())
            && let Some(attempt) = self
                .runs
                .get_mut(&key.run)
                .map(Arc::make_mut)
                .and_then(|run| {
                    let index = run.step_index(&key.step)?;
                    Some(&mut run.steps[index])
                })
                .and_then(|step| step.attempts.last_mut())
        {
            if report.log.is_some() {
                attempt.log = report.log;
            }
            attempt.usage = report.usage;
            attempt.metrics = report.metrics;
            if report.image.is_some() {
                attempt.image = report.image;
            }
            if attempt.started_ms.is_none()
                && let Some(ran) = report.ran_ms
            {
                attempt.started_ms =
                    Some(now_ms.saturating_sub(ran as i64).max(attempt.assigned_ms));
            }
        }
        self.key_from_ran_image(key);
        self.end_attempt(key, outcome, report.exit_code, reason, outputs, now_ms);
        Ok(Outcome::report_accepted())
    }

    /// After a `StepFinished` report was applied: assigns the dependents the
    /// leader placed with it, if the attempt succeeded (a refused report, a
    /// failure or a retry drops them all), each through the checks of an
    /// `Assign` (a step the cache completed or that is not ready, a worker gone
    /// or full: that placement is dropped, and the scheduling pass places the
    /// step). The outcome names the attempts made, to be pushed to workers.
    pub(super) fn assign_dependents(
        &mut self,
        key: &AttemptKey,
        outcome: Outcome,
        placements: Vec<FirstPlacement>,
        now_ms: i64,
    ) -> Outcome {
        let (detail, mut assigned) = match outcome {
            Outcome::Report {
                accepted: true,
                detail,
                assigned,
            } => (detail, assigned),
            other => return other,
        };
        let succeeded = self
            .runs
            .get(&key.run)
            .and_then(|run| run.step(&key.step))
            .is_some_and(|step| step.state == StepState::Succeeded);
        if succeeded && !placements.is_empty() {
            let placements = placements.into_iter().map(|p| Placement {
                run: key.run,
                step: p.step,
                worker: p.worker,
                gpus: p.gpus,
            });
            assigned.extend(self.assign(placements, now_ms));
        }
        Outcome::Report {
            accepted: true,
            detail,
            assigned,
        }
    }

    /// Whether applying this report now would end the attempt `key` as a
    /// success: the report is not fenced, the process exited 0 and every
    /// declared output is reported. What the leader predicts from before it
    /// proposes the report ([`crate::scheduler::next_placements`]).
    pub fn report_succeeds(&self, key: &AttemptKey, worker: &str, report: &AttemptReport) -> bool {
        if !matches!(self.fence(key, worker), Ok(Ok(()))) {
            return false;
        }
        let Some(spec) = self.runs.get(&key.run).and_then(|run| run.spec(&key.step)) else {
            return false;
        };
        report.outcome == ReportedOutcome::Exited
            && report.exit_code == Some(0)
            && missing_outputs(&spec.outputs, report).is_empty()
    }

    /// Ends the current attempt of a step, frees its worker capacity, and moves the
    /// step (and through it the run) forward: success readies dependents, a failure
    /// is retried while retries remain, and a final failure skips every dependent.
    pub(super) fn end_attempt(
        &mut self,
        key: &AttemptKey,
        outcome: AttemptOutcome,
        exit_code: Option<i32>,
        reason: Option<String>,
        outputs: Vec<(String, String, u64)>,
        now_ms: i64,
    ) {
        let Some(run) = self.runs.get_mut(&key.run).map(Arc::make_mut) else {
            return;
        };
        let Some(index) = run.step_index(&key.step) else {
            return;
        };
        let retries = run.pipeline.steps[index].retries;
        let backoff_ms = run.pipeline.steps[index].retry_backoff_ms;
        let step = &mut run.steps[index];
        let Some(attempt) = step.attempts.last_mut() else {
            return;
        };
        attempt.finished_ms = Some(now_ms);
        attempt.outcome = Some(outcome);
        attempt.exit_code = exit_code;
        attempt.reason = reason.clone();
        let worker = attempt.worker.clone();
        if let Some(load) = self.loads.get_mut(&worker) {
            load.attempts.remove(key);
        }
        match outcome {
            AttemptOutcome::Succeeded => {
                step.state = StepState::Succeeded;
                step.reason = None;
                step.outputs = outputs
                    .into_iter()
                    .map(|(name, digest, size)| ArtifactRecord {
                        name,
                        digest,
                        size,
                        attempt: key.attempt,
                    })
                    .collect();
            }
            AttemptOutcome::Cancelled => {
                step.state = StepState::Cancelled;
                step.reason = reason;
            }
            // Ended by `image_resolved`, which moves the step itself.
            AttemptOutcome::Deferred => {}
            AttemptOutcome::Failed | AttemptOutcome::TimedOut | AttemptOutcome::Lost => {
                // A failure of the step itself uses up its `retries` and waits an
                // exponential backoff; an attempt lost with its worker is retried at
                // once, up to LOST_RETRIES times, without using up `retries`.
                let lost = step
                    .attempts
                    .iter()
                    .filter(|a| a.outcome == Some(AttemptOutcome::Lost))
                    .count() as u32;
                // An attempt deferred to the cache did not fail.
                let deferred = step
                    .attempts
                    .iter()
                    .filter(|a| a.outcome == Some(AttemptOutcome::Deferred))
                    .count() as u32;
                let failures = step.attempts.len() as u32 - lost - deferred;
                let why = reason.unwrap_or_else(|| outcome.as_str().to_string());
                if outcome == AttemptOutcome::Lost && lost <= LOST_RETRIES {
                    step.state = StepState::Queued;
                    step.not_before_ms = None;
                    step.reason = Some(format!("retrying after attempt {}: {why}", key.attempt));
                } else if outcome != AttemptOutcome::Lost && failures <= retries {
                    let delay = retry_delay_ms(backoff_ms, failures);
                    step.state = StepState::Queued;
                    step.not_before_ms = Some(now_ms.saturating_add(delay as i64));
                    step.reason = Some(format!(
                        "retry {failures} of {retries} in {} after attempt {}: {why}",
                        format_duration_ms(delay),
                        key.attempt
                    ));
                } else {
                    step.state = if outcome == AttemptOutcome::TimedOut {
                        StepState::TimedOut
                    } else {
                        StepState::Failed
                    };
                    step.reason = Some(if outcome == AttemptOutcome::Lost {
                        format!("{why} (lost {lost} times; giving up)")
                    } else {
                        why
                    });
                    let failed = step.name.clone();
                    Self::skip_dependents(run, &failed);
                }
            }
        }
        let settled = (run.steps[index].cache_key.clone(), run.steps[index].state);
        // Its own run goes on first, so that its next steps take the lead over
        // identical steps of runs that wait for this one. A success can only
        // ready the step's dependents.
        if settled.1 == StepState::Succeeded {
            self.advance_from(key.run, index, now_ms);
        } else {
            self.advance(key.run, now_ms);
        }
        if let (Some(cache_key), state) = settled {
            self.settle_cache(&cache_key, key.run, &key.step, state, now_ms);
        }
    }

    /// Marks every step that depends, directly or not, on `failed` as skipped. The
    /// steps are in topological order, so one forward pass reaches them all.
    fn skip_dependents(run: &mut Run, failed: &str) {
        let mut blocked: BTreeSet<String> = BTreeSet::from([failed.to_string()]);
        for (record, spec) in run.steps.iter_mut().zip(&run.pipeline.steps) {
            if let Some(cause) = spec.needs.iter().find(|need| blocked.contains(*need)) {
                if record.state == StepState::Waiting {
                    record.state = StepState::Skipped;
                    record.reason = Some(format!("dependency \"{cause}\" did not succeed"));
                }
                blocked.insert(record.name.clone());
            }
        }
    }
}

/// The declared outputs a report does not name.
fn missing_outputs<'a>(declared: &'a [String], report: &AttemptReport) -> Vec<&'a String> {
    declared
        .iter()
        .filter(|d| !report.outputs.iter().any(|(name, _, _)| name == *d))
        .collect()
}
