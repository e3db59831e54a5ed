//! Transitions of a run as a whole: created (by a submission, a re-run or a
//! schedule), finished once its steps are, cancelled, or timed out.

use std::sync::Arc;

use ferry_spec::{Pipeline, format_duration_ms};

use super::{
    AttemptKey, AttemptOutcome, Outcome, Run, RunId, RunState, State, StateError, StepRecord,
    StepState, SubmitOptions,
};

/// How [`State::end_run`] ends a run and what it leaves behind.
struct RunEnd {
    attempts: AttemptOutcome,
    active_steps: StepState,
    other_steps: StepState,
    run: RunState,
    reason: String,
}

impl State {
    /// Records a new run with every step waiting; [`State::advance`] then moves
    /// the steps whose dependencies are met.
    pub(super) fn create_run(
        &mut self,
        pipeline: Pipeline,
        bundle_digest: String,
        submitter: String,
        request_id: Option<String>,
        options: SubmitOptions,
        now_ms: i64,
    ) -> RunId {
        let id = self.next_run_id.max(1);
        if let Some(request) = &request_id {
            self.requests.insert(request.clone(), id);
        }
        self.next_run_id = id + 1;
        let steps = pipeline
            .steps
            .iter()
            .map(|step| StepRecord {
                name: step.name.clone(),
                state: StepState::Waiting,
                attempts: Vec::new(),
                outputs: Vec::new(),
                reason: None,
                not_before_ms: None,
                inputs: Vec::new(),
                cache_key: None,
                reused: None,
            })
            .collect();
        let run = Run {
            id,
            pipeline,
            bundle_digest,
            submitter,
            submitted_ms: now_ms,
            finished_ms: None,
            state: RunState::Running,
            steps,
            reason: None,
            request_id,
            no_cache: options.no_cache,
            code_digests: options.code_digests,
            rerun_of: None,
            schedule: None,
            collected_ms: None,
            released: false,
            sweep_limits: Default::default(),
            dependents: Default::default(),
        };
        self.runs.insert(id, Arc::new(run));
        id
    }

    pub(super) fn finish_run_if_done(run: &mut Run, now_ms: i64) {
        run.steps.refresh();
        let counts = *run.steps.counts();
        if run.state.is_terminal() || counts.unfinished() > 0 {
            return;
        }
        run.state = if counts.of(StepState::Succeeded) == run.steps.len() {
            RunState::Succeeded
        } else if counts.of(StepState::Cancelled) > 0 {
            RunState::Cancelled
        } else {
            RunState::Failed
        };
        run.finished_ms = Some(now_ms);
    }

    pub(super) fn cancel_run(&mut self, run_id: RunId, now_ms: i64) -> Result<Outcome, StateError> {
        let run = self
            .runs
            .get(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        if run.state.is_terminal() {
            return Err(StateError::RunAlreadyFinished {
                run: run_id,
                state: run.state.as_str(),
            });
        }
        let stop = self.end_run(
            run_id,
            now_ms,
            RunEnd {
                attempts: AttemptOutcome::Cancelled,
                active_steps: StepState::Cancelled,
                other_steps: StepState::Cancelled,
                run: RunState::Cancelled,
                reason: "run cancelled".to_string(),
            },
        );
        Ok(Outcome::Cancelled { stop })
    }

    /// Ends a running run at once: its active attempts end with `end.attempts`
    /// (their capacity freed; returned, to be stopped on their workers), its open
    /// steps take the states `end` names, and the run ends in `end.run`.
    fn end_run(&mut self, run_id: RunId, now_ms: i64, end: RunEnd) -> Vec<(AttemptKey, String)> {
        let Some(run) = self.runs.get(&run_id) else {
            return Vec::new();
        };
        // Steps that own or wait for a cache key give it up.
        let keyed: Vec<(String, String)> = run
            .steps
            .iter()
            .filter(|s| !s.state.is_terminal())
            .filter_map(|s| Some((s.cache_key.clone()?, s.name.clone())))
            .collect();
        let stop = self.end_run_steps(run_id, now_ms, end);
        for (cache_key, step) in keyed {
            self.settle_cache(&cache_key, run_id, &step, StepState::Cancelled, now_ms);
        }
        stop
    }

    fn end_run_steps(
        &mut self,
        run_id: RunId,
        now_ms: i64,
        end: RunEnd,
    ) -> Vec<(AttemptKey, String)> {
        let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) else {
            return Vec::new();
        };
        let mut stop = Vec::new();
        for step in run.steps.iter_mut() {
            if step.state.is_terminal() {
                continue;
            }
            if step.state.is_active()
                && let Some(attempt) = step.attempts.last_mut()
            {
                attempt.finished_ms = Some(now_ms);
                attempt.outcome = Some(end.attempts);
                attempt.reason = Some(end.reason.clone());
                let key = AttemptKey {
                    run: run_id,
                    step: step.name.clone(),
                    attempt: attempt.number,
                };
                if let Some(load) = self.loads.get_mut(&attempt.worker) {
                    load.attempts.remove(&key);
                }
                stop.push((key, attempt.worker.clone()));
                step.state = end.active_steps;
            } else {
                step.state = end.other_steps;
            }
            step.reason = Some(end.reason.clone());
            step.not_before_ms = None;
        }
        run.state = end.run;
        if end.run != RunState::Cancelled {
            run.reason = Some(end.reason);
        }
        run.finished_ms = Some(now_ms);
        stop
    }

    /// Stops a run that outlived its pipeline's timeout: running attempts end as
    /// timed out (and are stopped on their workers), steps not yet finished are
    /// skipped, and the run fails with the reason.
    pub(super) fn time_out_run(&mut self, run_id: RunId, now_ms: i64) -> Outcome {
        let Some(run) = self.runs.get(&run_id) else {
            return Outcome::Unchanged;
        };
        let Some(timeout) = run.pipeline.timeout_ms else {
            return Outcome::Unchanged;
        };
        if run.state.is_terminal() || now_ms.saturating_sub(run.submitted_ms) < timeout as i64 {
            return Outcome::Unchanged;
        }
        let stop = self.end_run(
            run_id,
            now_ms,
            RunEnd {
                attempts: AttemptOutcome::TimedOut,
                active_steps: StepState::TimedOut,
                other_steps: StepState::Skipped,
                run: RunState::Failed,
                reason: format!("the run timed out after {}", format_duration_ms(timeout)),
            },
        );
        Outcome::Cancelled { stop }
    }

    /// Running runs whose pipeline timeout has passed at `now_ms`.
    pub fn runs_past_timeout(&self, now_ms: i64) -> Vec<RunId> {
        self.runs
            .values()
            .filter(|r| !r.state.is_terminal())
            .filter(|r| {
                r.pipeline
                    .timeout_ms
                    .is_some_and(|t| now_ms.saturating_sub(r.submitted_ms) >= t as i64)
            })
            .map(|r| r.id)
            .collect()
    }
}
