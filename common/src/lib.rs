//! Ferry's shared core: the generated wire types, the pipeline spec and its
//! validation, content hashing, code bundles, and identity/TLS loading.
//!
//! Architecture invariant: nothing here opens a socket or spawns a task. The
//! coordinator, the worker and the client all validate specs and hash blobs with the
//! same code, so a spec the client accepts is one the coordinator accepts.

pub mod proto {
    //! Code generated from `proto/ferry/v1/ferry.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferry.v1");
}

pub mod bundle;
pub mod channel;
pub mod config_file;
pub mod cron;
pub mod digest;
pub mod pki;
pub mod signals;
pub mod spec;
