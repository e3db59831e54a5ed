//! The leader's background loops: leadership changes (worker streams), the
//! scheduling passes, worker leases and run timeouts, cron schedules and the
//! retention policy. Each is supervised (`ferry_common::tasks`): one that ends
//! before shutdown stops the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_common::time::now_ms;
use tokio::sync::watch;

use ferry_common::locks::lock;

use super::Node;

/// Waits `period` for a periodic leader loop's next pass: `Some(true)` when this
/// member leads (run it), `Some(false)` when it does not (skip it), `None` at
/// shutdown (or when the fault point `fault` says to end, in test builds).
pub(super) async fn next_pass(
    node: &Node,
    fault: &str,
    period: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<bool> {
    if ferry_common::faults::should_return(fault) {
        return None;
    }
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => None,
        _ = tokio::time::sleep(period) => Some(node.role().is_leader()),
    }
}

/// A loop as the supervisor takes it.
pub(super) type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
use crate::scheduler;
use crate::state::{Command, Outcome, RunId};

/// Drops every worker stream when this member stops leading, so that workers
/// find the new leader; a new leader starts every worker's lease afresh.
pub(super) async fn leadership_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut role = node.subscribe_role();
    let mut leading = false;
    loop {
        if ferry_common::faults::should_return("coordinator.leadership") {
            return;
        }
        let role_ended = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            changed = role.changed() => changed.is_err(),
        };
        if role_ended {
            // The Raft loop ended (this member stops serving): wait for the
            // shutdown that follows, so that this is not taken for a death.
            let _ = shutdown.wait_for(|stop| *stop).await;
            break;
        }
        let now_leading = role.borrow_and_update().is_leader();
        if leading && !now_leading {
            let dropped = std::mem::take(&mut *lock(&node.links, "links"));
            tracing::info!(
                workers = dropped.len(),
                "no longer the leader; closing worker streams"
            );
        }
        if !leading && now_leading {
            lock(&node.heartbeats, "heartbeat").clear();
            *lock(&node.leading_since_ms, "leading") = now_ms();
        }
        if !now_leading {
            lock(&node.waiting, "waiting").clear();
        }
        leading = now_leading;
        node.state_changed();
    }
    lock(&node.links, "links").clear();
}

/// How long the scheduler waits before placing again after an `Assign` could
/// not be proposed (no quorum, leadership moving).
const RETRY_AFTER_FAILED_ASSIGN: Duration = Duration::from_millis(50);

/// Shortest time between two passes while steps wait for room (under load):
/// a step queued meanwhile joins the next pass, so that a flood of submissions
/// is served in batches. Room that frees up is served at once.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// What the last scheduling pass saw.
struct Seen {
    room: u64,
    queued: u64,
    accepting: BTreeSet<String>,
    at: Instant,
    /// It placed nothing and left steps waiting (for room, a quota, a
    /// `max_parallel`).
    full: bool,
}

/// Only the leader schedules; a new leader resumes from the replicated state.
///
/// A pass runs at once when something changed that could allow a placement:
/// room (`State::room_generation`: an attempt ended, a worker registered or
/// changed mode), the workers with a live stream, a retry backoff ended, the
/// last pass placed steps (more may fit), or a step became queued
/// (`State::queued_generation`) while the last pass did not leave steps
/// waiting. A step queued while others wait for room is placed by a pass at
/// most `BATCH_INTERVAL` after the last one (batching only under load). At
/// most one `Assign` is in flight; what is applied meanwhile is served by the
/// next pass, which starts as soon as that proposal returns. Otherwise the loop
/// sleeps on the state's changes without scanning: an idle leader with a large
/// backlog and no room does no scheduling work.
pub(super) async fn schedule_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = node.subscribe_state();
    let mut seen: Option<Seen> = None;
    let mut placed_last = false;
    let mut next_retry: Option<i64> = None;
    loop {
        if ferry_common::faults::should_return("coordinator.scheduler") {
            return;
        }
        if !node.role().is_leader() {
            node.scheduler_idle.store(false, Ordering::Relaxed);
            seen = None;
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let accepting = node.accepting_workers();
        let now = now_ms();
        let (room, queued) = node.read(|state| (state.room_generation, state.queued_generation));
        let retry_due = next_retry.is_some_and(|at| at <= now);
        // A pass now, or the time until a batched one.
        let (pass, batch_in) = match &seen {
            None => (true, None),
            Some(_) if placed_last || retry_due => (true, None),
            Some(last) if last.room != room || last.accepting != accepting => (true, None),
            Some(last) if last.queued != queued => {
                let waited = last.at.elapsed();
                if last.full && waited < BATCH_INTERVAL {
                    (false, Some(BATCH_INTERVAL - waited))
                } else {
                    (true, None)
                }
            }
            Some(_) => (false, None),
        };
        if pass {
            let started = Instant::now();
            let (placements, left_waiting) = schedule_pass(&node, &accepting, now, &mut next_retry);
            node.metrics.scheduling_pass(started.elapsed());
            placed_last = !placements.is_empty();
            seen = Some(Seen {
                room,
                queued,
                accepting,
                at: Instant::now(),
                full: !placed_last && left_waiting,
            });
            if placed_last {
                let count = placements.len();
                tracing::debug!(placements = count, "scheduling pass placed steps");
                let command = Command::Assign {
                    placements,
                    now_ms: now_ms(),
                };
                match node.propose(command).await {
                    Ok(Outcome::Assigned(made)) if !made.is_empty() => {
                        tracing::debug!(placements = count, "assignments committed");
                        // The next pass at once: it serves what was applied
                        // meanwhile, and what did not fit in this pass's window.
                        continue;
                    }
                    Ok(_) => {
                        // Every placement refused (a worker gone since): a pass
                        // again after the next change, not at once.
                        tracing::debug!(placements = count, "no assignment applied");
                        placed_last = false;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not propose assignments");
                        // Nothing changed in the state: pass again shortly.
                        placed_last = false;
                        seen = None;
                        tokio::select! {
                            _ = shutdown.wait_for(|stop| *stop) => break,
                            _ = tokio::time::sleep(RETRY_AFTER_FAILED_ASSIGN) => {}
                        }
                        continue;
                    }
                }
            }
        }
        // Wake for the next change, a batched pass, the end of the earliest
        // retry backoff, or a second from now at the latest (a closed worker
        // stream is noticed then).
        let retry_in = next_retry
            .map(|at| Duration::from_millis(at.saturating_sub(now).clamp(1, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        let wait = batch_in.map_or(retry_in, |batch| batch.min(retry_in));
        if batch_in.is_some() {
            // Only time (or room) can start the batched pass: not every change.
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("scheduler stopped");
}

/// One scheduling pass: the placements to propose, and whether steps were left
/// waiting. Records why each step left queued waits, the next retry time, and
/// whether the pass left nothing to do (`scheduler_idle`, which lets a
/// submission place its first steps itself).
fn schedule_pass(
    node: &Node,
    accepting: &BTreeSet<String>,
    now: i64,
    next_retry: &mut Option<i64>,
) -> (Vec<crate::state::Placement>, bool) {
    // Nothing can be placed without a connected worker: skip the queue.
    if accepting.is_empty() {
        lock(&node.waiting, "waiting").clear();
        node.scheduler_idle.store(false, Ordering::Relaxed);
        *next_retry = None;
        return (Vec::new(), false);
    }
    let (plan, retry) = node.read(|state| {
        let (queue, next_retry) = scheduler::ready_queue(state, now);
        let workers = scheduler::worker_slots(state, accepting);
        let limits = scheduler::limits(state, &node.quotas, &queue);
        (scheduler::plan(&queue, &workers, &limits), next_retry)
    });
    *next_retry = retry;
    let left_waiting = !plan.waiting.is_empty();
    let busy = !plan.placements.is_empty() || left_waiting;
    node.scheduler_idle.store(!busy, Ordering::Relaxed);
    let mut waiting: HashMap<RunId, BTreeMap<String, String>> = HashMap::new();
    for w in plan.waiting {
        waiting.entry(w.run).or_default().insert(w.step, w.reason);
    }
    *lock(&node.waiting, "waiting") = waiting;
    tracing::trace!(placements = plan.placements.len(), "scheduling pass");
    (plan.placements, left_waiting)
}

impl Node {
    /// The workers whose assignment stream is open on this member.
    fn accepting_workers(&self) -> BTreeSet<String> {
        lock(&self.links, "links")
            .iter()
            .filter(|(_, link)| !link.sender.is_closed())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// On the leader, for a submission about to be proposed: its first steps'
    /// placements when the last scheduling pass left nothing to do
    /// (`scheduler::first_placements` checks the queue itself), so that they are
    /// assigned in the submission's own Raft entry; none otherwise.
    pub(super) fn first_placements(
        &self,
        pipeline: &ferry_common::spec::Pipeline,
        now: i64,
    ) -> Vec<crate::state::FirstPlacement> {
        if !self.scheduler_idle.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let accepting = self.accepting_workers();
        let placements = self.read(|state| {
            scheduler::first_placements(state, pipeline, &accepting, &self.quotas, now)
        });
        if !placements.is_empty() {
            tracing::debug!(
                placements = placements.len(),
                "placing the first steps with the submission"
            );
        }
        placements
    }

    /// On the leader, for a worker's report about to be proposed: the
    /// dependents it makes ready, placed when the last scheduling pass left
    /// nothing to do (`scheduler::next_placements` checks the queue and the
    /// report itself), so that they are assigned in the report's own Raft entry;
    /// none otherwise.
    pub(super) fn next_placements(
        &self,
        key: &crate::state::AttemptKey,
        worker: &str,
        report: &crate::state::AttemptReport,
        now: i64,
    ) -> Vec<crate::state::FirstPlacement> {
        if !self.scheduler_idle.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let accepting = self.accepting_workers();
        let placements = self.read(|state| {
            scheduler::next_placements(state, key, worker, report, &accepting, &self.quotas, now)
        });
        if !placements.is_empty() {
            tracing::debug!(
                run = key.run,
                step = %key.step,
                placements = placements.len(),
                "placing the next steps with the report"
            );
        }
        placements
    }
}

/// On the leader: declares lost every worker whose lease ran out (a committed
/// `WorkerLost`, so its attempts are retried elsewhere), and times out runs past
/// their pipeline's timeout. Runs five times per lease.
/// How often the leader looks for schedule ticks that came.
const CRON_PERIOD: Duration = Duration::from_millis(250);

/// Most missed ticks counted for one firing (the count is shown, not replayed).
const MAX_MISSED_COUNT: u64 = 10_000;

/// Leader only: fires each active schedule's latest tick that came since its
/// last firing. The firing is a command carrying its tick, and the state machine
/// starts one run per tick at most, so a tick fires once across retries and
/// failovers; ticks missed while no leader was up are counted, and only the
/// latest of them fires.
pub(super) async fn cron_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    while let Some(leading) = next_pass(&node, "coordinator.cron", CRON_PERIOD, &mut shutdown).await
    {
        if !leading {
            continue;
        }
        let now = now_ms();
        let due: Vec<(String, ferry_common::cron::Due)> = node.read(|state| {
            state
                .catalog
                .schedules
                .values()
                .filter(|s| !s.paused)
                .filter_map(|s| {
                    let cron = ferry_common::cron::Cron::parse(&s.cron).ok()?;
                    Some((s.name.clone(), cron.due(s.after_ms, now, MAX_MISSED_COUNT)?))
                })
                .collect()
        });
        for (name, due) in due {
            let missed = due.count.saturating_sub(1);
            tracing::info!(schedule = %name, tick_ms = due.latest_ms, missed, "schedule fires");
            let command = Command::FireSchedule {
                name: name.clone(),
                tick_ms: due.latest_ms,
                missed,
                now_ms: now,
            };
            if let Err(error) = node.propose(command).await {
                tracing::warn!(schedule = %name, %error, "could not fire the schedule");
            }
        }
    }
}

/// Leader only: `[retention] keep_last` makes the leader collect garbage by
/// itself every `interval_ms`, as `ferry gc --keep-last N` would.
pub(super) async fn retention_loop(
    node: Arc<Node>,
    keep_last: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = Duration::from_millis(node.retention.interval_ms);
    while let Some(leading) = next_pass(&node, "coordinator.retention", period, &mut shutdown).await
    {
        if !leading {
            continue;
        }
        let command = Command::Collect {
            keep_last,
            now_ms: now_ms(),
            grace_ms: node.retention.grace_ms,
        };
        match node.propose(command).await {
            Ok(Outcome::Collected { runs, blobs, .. }) => {
                tracing::info!(
                    keep_last,
                    runs = runs.len(),
                    blobs = blobs.len(),
                    "retention policy applied"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not apply the retention policy"),
        }
    }
}

/// Leader only: drops the audit records older than `[audit] keep_days` or
/// beyond the newest `max_records`, proposing a `TrimAudit` only when there is
/// something to drop.
pub(super) async fn audit_retention_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let settings = node.audit.clone();
    let period = Duration::from_millis(settings.interval_ms);
    while let Some(leading) =
        next_pass(&node, "coordinator.audit_retention", period, &mut shutdown).await
    {
        if !leading {
            continue;
        }
        let now = now_ms();
        let cutoff = now.saturating_sub(i64::try_from(settings.keep_ms()).unwrap_or(i64::MAX));
        let due = node.read(|state| {
            state.audit.len() as u64 > settings.max_records
                || state
                    .audit
                    .oldest_ms()
                    .is_some_and(|oldest| oldest < cutoff)
        });
        if !due {
            continue;
        }
        let command = Command::TrimAudit {
            keep_ms: settings.keep_ms(),
            keep_max: settings.max_records,
            now_ms: now,
        };
        match node.propose(command).await {
            Ok(_) => tracing::info!(
                keep_days = settings.keep_days,
                max_records = settings.max_records,
                "audit log trimmed"
            ),
            Err(error) => tracing::warn!(%error, "could not trim the audit log"),
        }
    }
}

pub(super) async fn lease_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis((node.lease_ms / 5).max(50));
    while let Some(leading) = next_pass(&node, "coordinator.leases", period, &mut shutdown).await {
        if !leading {
            continue;
        }
        let now = now_ms();
        let since = *lock(&node.leading_since_ms, "leading");
        let heartbeats = lock(&node.heartbeats, "heartbeat").clone();
        let (expired, timed_out) = node.read(|state| {
            let expired: Vec<(String, String, i64)> = state
                .workers
                .values()
                .filter(|w| w.lost_ms.is_none())
                .filter_map(|w| {
                    let last = heartbeats.get(&w.name).copied().unwrap_or(since).max(since);
                    let silent = now.saturating_sub(last);
                    (silent > node.lease_ms as i64)
                        .then(|| (w.name.clone(), w.session.clone(), silent))
                })
                .collect();
            (expired, state.runs_past_timeout(now))
        });
        for (worker, session, silent) in expired {
            let reason = format!(
                "no heartbeat from \"{worker}\" for {} (lease {})",
                ferry_common::spec::format_duration_ms(silent as u64),
                ferry_common::spec::format_duration_ms(node.lease_ms)
            );
            tracing::warn!(
                worker,
                silent_ms = silent,
                "worker lease expired; declaring it lost"
            );
            let command = Command::WorkerLost {
                worker,
                session,
                reason,
                now_ms: now,
            };
            if let Err(error) = node.propose(command).await {
                tracing::warn!(%error, "could not declare a worker lost");
            }
        }
        for run in timed_out {
            tracing::warn!(run, "run timed out");
            if let Err(error) = node.propose(Command::TimeOutRun { run, now_ms: now }).await {
                tracing::warn!(run, %error, "could not time out the run");
            }
        }
    }
}
