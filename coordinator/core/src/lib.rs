//! The coordinator's pure core: [`state`] (the deterministic state machine,
//! `State::apply(Command) -> Outcome`), [`scheduler`] (placement, a pure function
//! of the queue, the workers and the limits) and [`query`] (`ferry runs --where`).
//!
//! Architecture invariant: no IO, no clock, no randomness, no async. This crate
//! depends on nothing that could do any of that (no tokio, tonic, sled or raft),
//! so the boundary ARCHITECTURE.md states is enforced by the compiler; time
//! arrives inside commands. The coordinator re-exports these modules.

pub mod access;
pub mod query;
pub mod scheduler;
pub mod state;
