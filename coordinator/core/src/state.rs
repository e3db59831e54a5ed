//! The coordinator's state machine: every pipeline, run, step, attempt, worker and
//! artifact record, changed only by applying a [`Command`].
//!
//! Architecture invariant: `apply` is deterministic. It reads no clock (time travels
//! inside each command), uses no randomness, does no IO, and iterates only ordered
//! collections, so every replica that applies the same commands in the same order
//! holds the same state. Its durable form is the Raft log of commands and the
//! snapshots of the state the store keeps.
//!
//! The records are in `records`, the commands in `command`, what applying one
//! answers in `outcome`; this module holds the [`State`] and dispatches each
//! command to its transition, which lives with its area: `runs`, `attempts`,
//! `workers`, `cache` (results reused across runs), `secrets` (sealed values only) and `catalog` (schedules,
//! pins and garbage collection).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod attempts;
pub mod audit;
mod cache;
pub(crate) mod catalog;
mod command;
mod images;
mod lineage;
mod outcome;
mod policy;
mod ready;
mod records;
mod resend;
pub mod revocation;
mod runs;
mod secrets;
mod steps;
mod workers;

pub use attempts::{LOST_RETRIES, retry_delay_ms};
pub use audit::{
    AuditLog, AuditNote, AuditOutcome, AuditRecord, Described, MAX_AUDIT_RECORDS, Request,
    Requester, describe,
};
pub use cache::{cache_key, producing_attempt_of};
pub use catalog::{CacheEntry, Catalog, GcPlan, Pin, Schedule, gc_plan, live_blobs};
pub use command::{
    AttemptReport, Command, FirstPlacement, Placement, ReportedOutcome, SubmitOptions,
};
pub use lineage::LineageNode;
pub use outcome::{Outcome, StateError};
pub use policy::{Caller, GROUP_SIGIL, Policy, Project};
pub use ready::{Class, ReadyIndex, Runs};
pub use records::{
    ArtifactRecord, Attempt, AttemptKey, AttemptOutcome, AttemptUsage, GpuInfo, InputRecord,
    MAX_METRIC_NAME_LEN, MAX_METRICS_PER_ATTEMPT, Member, MetricPoint, RanImage, Reuse, ReuseKind,
    Run, RunId, RunState, StepRecord, StepState, Worker, WorkerLoad, WorkerMode,
};
pub use revocation::{PresentedCertificate, RevocationTarget, Revocations, Revoked};
pub use secrets::{SealedValue, Secret, secret_key};
pub use steps::{STEP_STATES, StateCounts, Steps, Touched};

#[derive(Debug, Default)]
pub struct State {
    /// Shared so that a snapshot can hold the runs of one moment while later
    /// commands change others (`Arc::make_mut` copies only a run still held).
    /// With the derived index of their queued steps (`ready`).
    pub runs: Runs,
    pub workers: BTreeMap<String, Worker>,
    pub loads: BTreeMap<String, WorkerLoad>,
    pub next_run_id: RunId,
    /// The coordinators of the cluster, by Raft id.
    pub members: BTreeMap<u64, Member>,
    /// Derived: submission request ids to the run they started.
    pub requests: BTreeMap<String, RunId>,
    /// The cache index, schedules and pins.
    pub catalog: Catalog,
    /// Derived: per cache key, the step computing it (assigned or running, in a
    /// run that reads the cache).
    pub cache_owners: BTreeMap<String, (RunId, String)>,
    /// Derived: per cache key, the other steps (queued, or waiting behind the
    /// owner) that will take its result.
    pub cache_pending: BTreeMap<String, BTreeSet<(RunId, String)>>,
    /// Projects, their members and the administrators added by command.
    pub policy: Policy,
    /// The certificate deny list (`revocation`).
    pub revocations: Revocations,
    /// Who asked for what, and what came of it (`audit`).
    pub audit: AuditLog,
    /// Derived, not replicated: what may let a scheduling pass place more
    /// than the last one. `room_generation` moves when an applied command may
    /// free room (an attempt ended, a worker registered or changed mode:
    /// `Command::may_free_room`), `queued_generation` when a step became
    /// queued. The leader's scheduler skips a pass while both stay put.
    pub room_generation: u64,
    pub queued_generation: u64,
}

impl State {
    /// Rebuilds the derived worker loads from persisted runs and workers.
    pub fn from_records(runs: Vec<Run>, workers: Vec<Worker>, next_run_id: RunId) -> State {
        let mut state = State {
            runs: runs.into_iter().map(|r| (r.id, Arc::new(r))).collect(),
            workers: workers.into_iter().map(|w| (w.name.clone(), w)).collect(),
            loads: BTreeMap::new(),
            next_run_id: next_run_id.max(1),
            members: BTreeMap::new(),
            requests: BTreeMap::new(),
            catalog: Catalog::default(),
            cache_owners: BTreeMap::new(),
            cache_pending: BTreeMap::new(),
            policy: Policy::default(),
            revocations: Revocations::default(),
            audit: AuditLog::default(),
            room_generation: 0,
            queued_generation: 0,
        };
        for run in state.runs.values() {
            if let Some(request) = &run.request_id {
                state.requests.insert(request.clone(), run.id);
            }
            if run.state.is_terminal() || run.no_cache {
                continue;
            }
            for step in &run.steps {
                let Some(key) = &step.cache_key else { continue };
                let me = (run.id, step.name.clone());
                if step.state.is_active() {
                    state.cache_owners.insert(key.clone(), me);
                } else if !step.state.is_terminal() {
                    state
                        .cache_pending
                        .entry(key.clone())
                        .or_default()
                        .insert(me);
                }
            }
        }
        for name in state.workers.keys() {
            state.loads.insert(name.clone(), WorkerLoad::default());
        }
        for run in state.runs.values() {
            for step in &run.steps {
                if !step.state.is_active() {
                    continue;
                }
                if let Some(attempt) = step.current_attempt() {
                    let key = AttemptKey {
                        run: run.id,
                        step: step.name.clone(),
                        attempt: attempt.number,
                    };
                    state
                        .loads
                        .entry(attempt.worker.clone())
                        .or_default()
                        .attempts
                        .insert(key, (attempt.resources, attempt.gpus.clone()));
                }
            }
        }
        state
    }

    /// Sets the cache index, schedules and pins (a restart or a snapshot).
    pub fn with_catalog(mut self, catalog: Catalog) -> State {
        self.catalog = catalog;
        self
    }

    /// Sets the projects and administrators (a restart or a snapshot).
    pub fn with_policy(mut self, policy: Policy) -> State {
        self.policy = policy;
        self
    }

    /// Sets the certificate deny list (a snapshot).
    pub fn with_revocations(mut self, revocations: Revocations) -> State {
        self.revocations = revocations;
        self
    }

    /// Sets the audit log (a snapshot).
    pub fn with_audit(mut self, audit: AuditLog) -> State {
        self.audit = audit;
        self
    }

    /// Sets the cluster's members (a restart or a snapshot).
    pub fn with_members(mut self, members: impl IntoIterator<Item = Member>) -> State {
        self.members = members.into_iter().map(|m| (m.id, m)).collect();
        self
    }

    /// Records a member added by an applied configuration change (or the initial
    /// members at bootstrap).
    pub fn set_member(&mut self, member: Member) {
        self.members.insert(member.id, member);
    }

    /// Forgets a member removed by an applied configuration change.
    pub fn remove_member(&mut self, id: u64) {
        self.members.remove(&id);
    }

    pub fn apply(&mut self, command: Command) -> Result<Outcome, StateError> {
        let frees_room = command.may_free_room();
        let outcome = self.apply_command(command);
        let newly_queued = self.runs.settle();
        if frees_room {
            self.room_generation = self.room_generation.wrapping_add(1);
        }
        if newly_queued {
            self.queued_generation = self.queued_generation.wrapping_add(1);
        }
        outcome
    }

    fn apply_command(&mut self, command: Command) -> Result<Outcome, StateError> {
        match command {
            Command::SubmitRun {
                pipeline,
                bundle_digest,
                submitter,
                request_id,
                options,
                now_ms,
                placements,
            } => {
                // A retried submission (same request id) answers with the run the
                // first one started instead of starting another.
                if let Some(id) = request_id.as_ref().and_then(|r| self.requests.get(r)) {
                    return Ok(Outcome::submitted(*id));
                }
                let id = self.create_run(
                    pipeline,
                    bundle_digest,
                    submitter,
                    request_id,
                    options,
                    now_ms,
                );
                self.advance(id, now_ms);
                let placements = placements.into_iter().map(|p| Placement {
                    run: id,
                    step: p.step,
                    worker: p.worker,
                    gpus: p.gpus,
                });
                let assigned = self.assign(placements, now_ms);
                Ok(Outcome::RunSubmitted { run: id, assigned })
            }
            Command::RerunRun {
                source,
                from,
                submitter,
                request_id,
                now_ms,
            } => {
                if let Some(id) = request_id.as_ref().and_then(|r| self.requests.get(r)) {
                    return Ok(Outcome::submitted(*id));
                }
                self.rerun(source, from.as_deref(), submitter, request_id, now_ms)
            }
            Command::CreateSchedule { schedule, now_ms } => self.create_schedule(schedule, now_ms),
            Command::PauseSchedule {
                name,
                paused,
                now_ms,
            } => self.pause_schedule(&name, paused, now_ms),
            Command::DeleteSchedule { name, now_ms: _ } => self.delete_schedule(&name),
            Command::FireSchedule {
                name,
                tick_ms,
                missed,
                now_ms,
            } => Ok(self.fire_schedule(&name, tick_ms, missed, now_ms)),
            Command::PinArtifact {
                tag,
                digest,
                owner,
                now_ms,
            } => self.pin(tag, digest, owner, now_ms),
            Command::UnpinArtifact { tag, now_ms: _ } => self.unpin(&tag),
            Command::Collect {
                keep_last,
                now_ms,
                grace_ms,
            } => Ok(self.collect(keep_last, now_ms, grace_ms)),
            Command::RegisterWorker {
                worker,
                running,
                now_ms,
            } => Ok(self.register_worker(worker, running, now_ms)),
            Command::Assign { placements, now_ms } => {
                Ok(Outcome::Assigned(self.assign(placements, now_ms)))
            }
            Command::StepStarted {
                key,
                worker,
                now_ms,
            } => self.step_started(&key, &worker, now_ms),
            Command::ImageResolved {
                key,
                worker,
                image,
                now_ms,
            } => self.image_resolved(&key, &worker, image, now_ms),
            Command::StepFinished {
                key,
                worker,
                report,
                now_ms,
                placements,
            } => {
                let outcome = self.step_finished(&key, &worker, report, now_ms)?;
                Ok(self.assign_dependents(&key, outcome, placements, now_ms))
            }
            Command::CancelRun { run, now_ms } => self.cancel_run(run, now_ms),
            Command::SetWorkerMode {
                worker,
                mode,
                now_ms: _,
            } => {
                let record = self
                    .workers
                    .get_mut(&worker)
                    .ok_or_else(|| StateError::WorkerNotFound(worker.clone()))?;
                record.mode = mode;
                Ok(Outcome::WorkerMode(mode))
            }
            Command::WorkerLost {
                worker,
                session,
                reason,
                now_ms,
            } => Ok(self.worker_lost(worker, &session, &reason, now_ms)),
            Command::TimeOutRun { run, now_ms } => Ok(self.time_out_run(run, now_ms)),
            Command::CreateProject {
                name,
                owner,
                now_ms,
            } => self.create_project(name, owner, now_ms),
            Command::SetProjectMember {
                project,
                user,
                role,
                now_ms,
            } => self.set_project_member(project, user, role, now_ms),
            Command::SetAdmin {
                user,
                admin,
                now_ms: _,
            } => self.set_admin(user, admin),
            Command::SetGroupMember {
                group,
                user,
                member,
                now_ms: _,
            } => self.set_group_member(group, user, member),
            Command::DeleteGroup { group, now_ms: _ } => self.delete_group(group),
            Command::RevokeCertificate { target, by, now_ms } => self.revoke(target, by, now_ms),
            Command::SetSecret {
                project,
                name,
                sealed,
                set_by,
                now_ms,
            } => Ok(self.set_secret(project, name, sealed, set_by, now_ms)),
            Command::ResealSecret {
                project,
                name,
                version,
                sealed,
                now_ms: _,
            } => Ok(self.reseal_secret(&project, &name, version, sealed)),
            Command::DeleteSecret {
                project,
                name,
                now_ms: _,
            } => self.delete_secret(&project, &name),
            Command::Request(request) => self.apply_request(*request),
            Command::Audit { note, now_ms } => Ok(self.record_note(*note, now_ms)),
            Command::TrimAudit {
                keep_ms,
                keep_max,
                now_ms,
            } => {
                let before = now_ms.saturating_sub(i64::try_from(keep_ms).unwrap_or(i64::MAX));
                let keep_max = usize::try_from(keep_max).unwrap_or(usize::MAX);
                self.audit.trim(before, keep_max);
                Ok(Outcome::Done)
            }
        }
    }

    /// The artifact an input of a step resolves to, from the producing step's record.
    pub fn resolve_output(&self, run: RunId, step: &str, output: &str) -> Option<&ArtifactRecord> {
        self.runs
            .get(&run)?
            .step(step)?
            .outputs
            .iter()
            .find(|artifact| artifact.name == output)
    }
}

#[cfg(test)]
mod tests;
