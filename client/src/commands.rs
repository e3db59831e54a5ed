//! The `ferry` subcommands, one module per group of `main.rs`'s clap
//! definitions. Every module depends only on [`shared`] (the connection, the
//! one way a refused call becomes an error, locally validated pipelines and
//! bundle uploads, output helpers) and on the pure `compare`, `lineage` and
//! `render` modules, never on another command module; `main.rs` dispatches
//! (and chains `run --watch` to [`status::watch`]).

pub(crate) mod artifacts;
pub(crate) mod audit;
pub(crate) mod bundle;
pub(crate) mod cancel;
pub(crate) mod certs;
pub(crate) mod cluster;
pub(crate) mod gc;
pub(crate) mod lineage;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod pins;
pub(crate) mod projects;
pub(crate) mod rerun;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod schedules;
pub(crate) mod secrets;
pub(crate) mod shared;
pub(crate) mod status;
pub(crate) mod workers;
