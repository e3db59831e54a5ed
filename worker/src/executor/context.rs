//! What every attempt on this worker shares: the choice of coordinator, the data
//! directory, the GPUs, the limits, the usage monitor, the containment, the
//! step's user and base environment, the pool of work directories, the blob
//! cache and the report sender. Every part of the executor reads it; it
//! holds no logic.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_common::proto;

use super::environment::StepIdentity;
use crate::blobcache::BlobCache;
use crate::container::DockerRuntime;
use crate::containment::Containment;
use crate::session::leader::Coordinators;
use crate::session::reports::Reports;
use crate::usage::Monitor;
use crate::workdirs::WorkDirs;

/// What every attempt on this worker shares.
#[derive(Clone)]
pub struct ExecutorContext {
    /// Every call goes to the coordinator chosen now, and follows a switch.
    pub coordinators: Arc<Coordinators>,
    pub data_dir: PathBuf,
    pub gpus: Vec<proto::Gpu>,
    pub max_log_bytes: u64,
    /// Samples every attempt's process group (CPU, memory) and flags one over its
    /// memory limit.
    pub monitor: Arc<Monitor>,
    /// A step is killed once its processes hold more than this times its memory
    /// request (0: never).
    pub memory_limit_factor: f64,
    /// What a code bundle may unpack to (`max_unpacked_bundle_bytes`,
    /// `max_bundle_entries` in worker.toml).
    pub bundle_limits: ferry_common::bundle::UnpackLimits,
    /// Work directories, reused when an attempt left them untouched.
    pub work_dirs: Arc<WorkDirs>,
    /// Inputs, gathered files and bundles already fetched, by digest.
    pub blob_cache: Arc<BlobCache>,
    /// Sends the attempts' final reports, batched.
    pub reports: Reports,
    /// A cgroup per attempt, or the subreaper.
    pub containment: Arc<Containment>,
    /// Most processes one attempt may hold (cgroup mode).
    pub pids_max: u64,
    /// Who steps run as.
    pub identity: StepIdentity,
    /// What a step's environment starts from (the allow-list of the worker's own).
    pub base_environment: Arc<Vec<(String, String)>>,
    /// The container runtime steps with an image run in; none when the
    /// worker has none (they are then never placed here).
    pub containers: Option<Arc<DockerRuntime>>,
    /// What the worker counts for Prometheus.
    pub metrics: crate::metrics::WorkerMetrics,
}
