//! The coordinator's Prometheus metrics, served at `GET /metrics` when
//! `[metrics] listen` is set: Raft (this member's role, term, commit and
//! applied index, read at each scrape; proposals made here by result and how
//! long each took to be applied), the scheduler (queued steps by project and
//! priority and steps finished by outcome, read from the replicated state at
//! each scrape, so every member reports the same; the leader's passes and
//! every member's applied placements) and every gRPC call of its servers
//! (`ferry_common::metrics::GrpcMetrics`). Metric names start with `ferry_`.

use std::sync::Arc;

use ferry_common::metrics::{GrpcMetrics, Refresh};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::node::Node;

/// A class of queued steps.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub project: String,
    pub priority: String,
}

/// How a step ended (`succeeded`, `failed`, `timed_out`, `cancelled`,
/// `skipped`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A Raft role (`leader`, `follower`, `candidate`, `pre-candidate`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

/// The registry a coordinator serves, with the gRPC metrics its servers
/// record into and the refresh that reads the Raft gauges at each scrape.
pub struct Exported {
    pub registry: Registry,
    pub grpc: GrpcMetrics,
    pub refresh: Refresh,
}

/// Every family of `node`, registered under `ferry_`.
pub fn exported(node: &Arc<Node>) -> Exported {
    let mut registry = Registry::with_prefix("ferry");
    let grpc = GrpcMetrics::register(&mut registry);
    let raft = registry.sub_registry_with_prefix("raft");
    node.metrics.register(raft);
    let role: Family<RoleLabels, Gauge> = Family::default();
    let (term, commit, applied): (Gauge, Gauge, Gauge) = Default::default();
    raft.register(
        "role",
        "1 for this member's Raft role, 0 for the others",
        role.clone(),
    );
    raft.register("term", "This member's Raft term", term.clone());
    raft.register(
        "commit_index",
        "The highest log index this member knows is committed",
        commit.clone(),
    );
    raft.register(
        "applied_index",
        "The highest log index this member has applied to its state",
        applied.clone(),
    );
    let scheduler = registry.sub_registry_with_prefix("scheduler");
    node.metrics.register_scheduler(scheduler);
    let queued: Family<ClassLabels, Gauge> = Family::default();
    scheduler.register(
        "queued_steps",
        "Steps ready to run and waiting for a worker, by project and priority",
        queued.clone(),
    );
    let finished: Family<OutcomeLabels, Counter> = Family::default();
    registry.register(
        "steps_finished",
        "Steps that ended, by outcome (every run the state holds; a step taken \
         from the cache counts as succeeded)",
        finished.clone(),
    );
    let blobs = registry.sub_registry_with_prefix("blob");
    node.metrics.register_blobs(blobs);
    let (stored, stored_bytes): (Gauge, Gauge) = Default::default();
    if !node.blobs.is_shared() {
        blobs.register("stored", "Blobs in this member's own store", stored.clone());
        blobs.register(
            "stored_bytes",
            "Bytes of the blobs in this member's own store",
            stored_bytes.clone(),
        );
    }
    let node = node.clone();
    let refresh: Refresh = Arc::new(move || {
        let (stored, stored_bytes) = (stored.clone(), stored_bytes.clone());
        let (node, role, term, commit, applied) = (
            node.clone(),
            role.clone(),
            term.clone(),
            commit.clone(),
            applied.clone(),
        );
        let (queued, finished) = (queued.clone(), finished.clone());
        Box::pin(async move {
            if let Some((count, bytes)) = node.blobs.stored().await {
                stored.set(count as i64);
                stored_bytes.set(bytes as i64);
            }
            let (classes, ended) =
                node.read(|state| (queued_by_class(state), finished_by_outcome(state)));
            // A class that emptied is no longer reported.
            queued.clear();
            for (labels, count) in classes {
                queued.get_or_create(&labels).set(count as i64);
            }
            for (outcome, count) in ended {
                let counter = finished.get_or_create(&OutcomeLabels { outcome });
                // Read from the state: only ever grows (run records stay).
                let seen = counter.get();
                if count > seen {
                    counter.inc_by(count - seen);
                }
            }
            // A member shutting down answers nothing: its last values stay.
            let Ok(status) = node.local_status().await else {
                return;
            };
            for name in ["leader", "follower", "candidate", "pre-candidate"] {
                let on = i64::from(status.role == name);
                role.get_or_create(&RoleLabels { role: name }).set(on);
            }
            term.set(status.term as i64);
            commit.set(status.commit as i64);
            applied.set(status.applied as i64);
        })
    });
    Exported {
        registry,
        grpc,
        refresh,
    }
}

/// The queued steps of `state` by project and priority.
fn queued_by_class(state: &crate::state::State) -> Vec<(ClassLabels, usize)> {
    let index = state.runs.ready();
    index
        .classes()
        .map(|((std::cmp::Reverse(priority), project), runs)| {
            let count = runs
                .iter()
                .map(|run| index.queued_steps(*run).count())
                .sum();
            (
                ClassLabels {
                    project: project.clone(),
                    priority: priority.to_string(),
                },
                count,
            )
        })
        .collect()
}

/// The steps of every run of `state` in each terminal state.
fn finished_by_outcome(state: &crate::state::State) -> Vec<(&'static str, u64)> {
    use crate::state::StepState;
    let ended = [
        (StepState::Succeeded, "succeeded"),
        (StepState::Failed, "failed"),
        (StepState::TimedOut, "timed_out"),
        (StepState::Cancelled, "cancelled"),
        (StepState::Skipped, "skipped"),
    ];
    let mut totals = [0u64; 5];
    for run in state.runs.values() {
        let counts = run.steps.counts();
        for (total, (step_state, _)) in totals.iter_mut().zip(ended) {
            *total += counts.of(step_state) as u64;
        }
    }
    ended
        .iter()
        .zip(totals)
        .map(|((_, name), total)| (*name, total))
        .collect()
}
