//! Transitions of workers: registered (again, after a restart) and lost; and
//! which attempts a worker holds.

use std::collections::BTreeSet;

use super::{AttemptKey, AttemptOutcome, Outcome, State, StepState, Worker};

impl State {
    pub(super) fn register_worker(
        &mut self,
        worker: Worker,
        running: Vec<AttemptKey>,
        now_ms: i64,
    ) -> Outcome {
        let name = worker.name.clone();
        let mut worker = worker;
        // The operator's choice outlives a restart of the worker; being lost does not.
        worker.mode = self.workers.get(&name).map_or(worker.mode, |w| w.mode);
        // The same session registered again is a resent command: it keeps the
        // time of the first.
        if let Some(first) = self
            .workers
            .get(&name)
            .filter(|w| w.session == worker.session)
        {
            worker.registered_ms = first.registered_ms;
        }
        worker.lost_ms = None;
        self.workers.insert(name.clone(), worker);
        let load = self.loads.entry(name.clone()).or_default().clone();
        let still_running: BTreeSet<AttemptKey> = running.into_iter().collect();
        let mut resend = Vec::new();
        for key in load.attempts.keys() {
            let Some(step) = self.runs.get(&key.run).and_then(|run| run.step(&key.step)) else {
                continue;
            };
            if step.state == StepState::Assigned && !still_running.contains(key) {
                // Never reached the worker (or it was lost in transit): send it again.
                resend.push(key.clone());
            } else if !still_running.contains(key) {
                self.end_attempt(
                    key,
                    AttemptOutcome::Lost,
                    None,
                    Some(format!(
                        "worker \"{name}\" re-registered without this attempt (it restarted)"
                    )),
                    Vec::new(),
                    now_ms,
                );
            }
        }
        Outcome::Registered { resend }
    }

    pub(super) fn worker_lost(
        &mut self,
        name: String,
        session: &str,
        reason: &str,
        now_ms: i64,
    ) -> Outcome {
        let Some(worker) = self.workers.get_mut(&name) else {
            return Outcome::WorkerLost {
                worker: name,
                ended: Vec::new(),
            };
        };
        if worker.session != session || worker.lost_ms.is_some() {
            // It registered again since the leader decided, or is already lost.
            return Outcome::WorkerLost {
                worker: name,
                ended: Vec::new(),
            };
        }
        worker.lost_ms = Some(now_ms);
        let held: Vec<AttemptKey> = self
            .loads
            .get(&name)
            .map(|load| load.attempts.keys().cloned().collect())
            .unwrap_or_default();
        for key in &held {
            self.end_attempt(
                key,
                AttemptOutcome::Lost,
                None,
                Some(format!("worker lost: {reason}")),
                Vec::new(),
                now_ms,
            );
        }
        Outcome::WorkerLost {
            worker: name,
            ended: held,
        }
    }

    /// Whether `key` is an assigned or running attempt of `worker`.
    pub fn holds(&self, worker: &str, key: &AttemptKey) -> bool {
        self.loads
            .get(worker)
            .is_some_and(|load| load.attempts.contains_key(key))
    }

    /// The attempts currently assigned to (not yet started on) a worker.
    pub fn assigned_to(&self, worker: &str) -> Vec<AttemptKey> {
        self.loads
            .get(worker)
            .map(|load| {
                load.attempts
                    .keys()
                    .filter(|key| {
                        self.runs
                            .get(&key.run)
                            .and_then(|run| run.step(&key.step))
                            .is_some_and(|step| step.state == StepState::Assigned)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}
