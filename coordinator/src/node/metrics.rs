//! What a node counts for Prometheus as it works (cheap atomics, kept whether
//! or not they are served; `crate::metrics` registers and serves them).

use std::time::Duration;

use ferry_common::metrics::latency_buckets;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ProposeError;
use crate::state::Outcome;

/// A proposal's result: `applied` (accepted by the state machine),
/// `refused` (committed, but the state machine refused it) or `failed` (not
/// known to be committed: leadership lost, shutting down).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// What the node counts as it works (cheap atomics, kept whether or not they
/// are served).
#[derive(Clone)]
pub struct NodeMetrics {
    proposals: Family<ResultLabels, Counter>,
    proposal_seconds: Histogram,
    pass_seconds: Histogram,
    placements: Counter,
    snapshot_seconds: Histogram,
    snapshot_bytes: prometheus_client::metrics::gauge::Gauge,
    uploads: Family<KindLabels, Counter>,
    upload_bytes: Family<KindLabels, Counter>,
    replication_seconds: Histogram,
}

/// What a blob is: `bundle` or `artifact`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            proposals: Family::default(),
            proposal_seconds: Histogram::new(latency_buckets()),
            pass_seconds: Histogram::new(exponential_buckets(0.00001, 2.0, 20)),
            placements: Counter::default(),
            snapshot_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            snapshot_bytes: Default::default(),
            uploads: Family::default(),
            upload_bytes: Family::default(),
            replication_seconds: Histogram::new(latency_buckets()),
        }
    }
}

impl NodeMetrics {
    /// A proposal made on this member (the leader) was answered after `took`.
    pub fn proposed(&self, answer: &Result<Outcome, ProposeError>, took: Duration) {
        let result = match answer {
            Ok(_) => "applied",
            Err(ProposeError::Rejected(_)) => "refused",
            Err(_) => "failed",
        };
        self.proposals.get_or_create(&ResultLabels { result }).inc();
        if result != "failed" {
            self.proposal_seconds.observe(took.as_secs_f64());
        }
    }

    /// This member compacted its log into a snapshot of `bytes` in `took`.
    pub fn snapshot_made(&self, bytes: usize, took: Duration) {
        self.snapshot_seconds.observe(took.as_secs_f64());
        self.snapshot_bytes.set(bytes as i64);
    }

    /// A client uploaded a code bundle, or a worker an artifact, of `bytes`.
    pub fn blob_uploaded(&self, kind: &'static str, bytes: u64) {
        let kind = KindLabels { kind };
        self.uploads.get_or_create(&kind).inc();
        self.upload_bytes.get_or_create(&kind).inc_by(bytes);
    }

    /// A blob was copied to a majority of the voters in `took`.
    pub fn blob_replicated(&self, took: Duration) {
        self.replication_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn register_blobs(&self, blobs: &mut Registry) {
        blobs.register(
            "uploads",
            "Blobs uploaded to this member, by kind (bundle, artifact)",
            self.uploads.clone(),
        );
        blobs.register(
            "upload_bytes",
            "Bytes of blobs uploaded to this member, by kind",
            self.upload_bytes.clone(),
        );
        blobs.register(
            "replication_seconds",
            "How long copying a blob stored here to a majority of the voters took",
            self.replication_seconds.clone(),
        );
    }

    /// A scheduling pass (the leader's) took `took`.
    pub fn scheduling_pass(&self, took: Duration) {
        self.pass_seconds.observe(took.as_secs_f64());
    }

    /// This member applied `count` placements of steps on workers.
    pub fn placed(&self, count: usize) {
        self.placements.inc_by(count as u64);
    }

    pub(crate) fn register_scheduler(&self, scheduler: &mut Registry) {
        scheduler.register(
            "pass_seconds",
            "How long the leader's scheduling passes took",
            self.pass_seconds.clone(),
        );
        scheduler.register(
            "placements",
            "Steps placed on workers, as this member applied them",
            self.placements.clone(),
        );
    }

    pub(crate) fn register(&self, raft: &mut Registry) {
        raft.register(
            "snapshot_seconds",
            "How long compacting the log into a snapshot took (encoding and storing); \
             its count is the number of snapshots made",
            self.snapshot_seconds.clone(),
        );
        raft.register(
            "snapshot_bytes",
            "The size of the last snapshot this member made",
            self.snapshot_bytes.clone(),
        );
        raft.register(
            "proposals",
            "Commands proposed on this member (as the leader), by result",
            self.proposals.clone(),
        );
        raft.register(
            "proposal_seconds",
            "How long a command proposed on this member took to be committed and applied",
            self.proposal_seconds.clone(),
        );
    }
}
