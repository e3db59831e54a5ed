//! Ferry's worker daemon: it finds the leader among the coordinators, advertises
//! this machine's capacity to it, receives assignments over one long-lived stream,
//! runs each step as a process in its own process group and work directory (or,
//! when the step names an image, in a Docker container), and ships logs,
//! artifacts and results back.
//!
//! Code map: [`config`] reads `worker.toml`; [`fingerprint`] discovers CPUs, memory
//! and GPUs; [`session`] keeps the session with the leader (register, heartbeat,
//! assignments, switching coordinators on a leader hint or a failure, report
//! delivery); [`executor`] runs one attempt, its calls following the same switch;
//! [`container`] drives the Docker Engine for steps with an image; [`blobcache`]
//! keeps the inputs and bundles attempts fetched, for the next ones.

pub mod blobcache;
pub mod cgroup;
pub mod config;
pub mod container;
pub mod containment;
pub mod executor;
pub mod fingerprint;
pub mod metrics;
pub mod session;
pub mod spawn;
pub mod usage;
pub mod workdirs;

pub use config::WorkerConfig;
pub use session::{Coordinators, WorkerError, leader_hint, run, run_with};
