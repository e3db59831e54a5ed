//! Ferry's shared core: the generated wire types, the pipeline spec and its
//! validation, content hashing, code bundles, and identity/TLS loading.
//!
//! Architecture invariant: nothing here opens a socket, and the only tasks spawned
//! here are supervision's own (`tasks`) and the debug-build fault trigger. The
//! coordinator, the worker and the client all validate specs and hash blobs with the
//! same code, so a spec the client accepts is one the coordinator accepts.

pub mod proto {
    //! Code generated from `proto/ferry/v1/ferry.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferry.v1");
}

pub mod blobio;
pub mod bundle;
pub mod channel;
pub mod config_file;
pub mod digest;
pub mod durable;
pub mod faults;
pub mod locks;
pub mod logchunk;
pub mod metrics;
pub mod pki;
pub mod secrets;
pub mod signals;
/// The pipeline spec, a crate of its own (pure: no IO, no async).
pub use ferry_spec as spec;
/// Cron expressions, with the spec.
pub use ferry_spec::cron;
pub mod tasks;
pub mod time;
pub mod timing;
pub mod tls_server;
