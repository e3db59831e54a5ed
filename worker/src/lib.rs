//! Ferry's worker daemon: it advertises this machine's capacity to the coordinator,
//! receives assignments over one long-lived stream, runs each step as a process in
//! its own process group and work directory, and ships logs, artifacts and results
//! back.
//!
//! Code map: [`config`] reads `worker.toml`; [`fingerprint`] discovers CPUs, memory
//! and GPUs; [`session`] keeps the session with the coordinator (register,
//! heartbeat, assignments, reconnects); [`executor`] runs one attempt.

pub mod config;
pub mod executor;
pub mod fingerprint;
pub mod session;

pub use config::WorkerConfig;
pub use session::{WorkerError, run};
