//! Raft around the state machine: the durable Raft log on sled (`storage`), the
//! peer transport over mutual TLS (`transport`), and the loop that drives raft-rs
//! and applies committed commands (`driver`).

pub mod driver;
pub mod storage;
pub mod transport;
