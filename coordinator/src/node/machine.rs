//! The coordinator's state machine as consensus sees it: `Replica` applies
//! committed commands and membership changes to the node's `State`, hands out
//! snapshot images and restores snapshots, and carries out outcomes once they are
//! durable.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Node;
use crate::consensus::{Committed, SnapshotImage, StateMachine};
use crate::state::{Command, Member, Outcome, State, StateError};
use crate::store::{StateImage, Store};

pub struct Replica {
    node: Arc<Node>,
}

impl Replica {
    pub fn new(node: Arc<Node>) -> Replica {
        Replica { node }
    }
}

impl SnapshotImage for StateImage {
    fn encode(&self) -> Vec<u8> {
        StateImage::encode(self)
    }
}

impl StateMachine for Replica {
    type Command = Command;
    type Outcome = Outcome;
    type Rejection = StateError;
    type Image = StateImage;
    type Restored = State;

    fn apply(&self, committed: Vec<Committed<Command>>) -> Vec<Result<Outcome, StateError>> {
        let mut results = Vec::new();
        let mut state = self.node.state_mut();
        for item in committed {
            match item {
                Committed::Commands(commands) => {
                    results.extend(commands.into_iter().map(|command| state.apply(command)));
                }
                Committed::MemberAdded {
                    id,
                    context,
                    learner,
                } => {
                    match serde_json::from_slice::<Member>(&context) {
                        Ok(mut member) if member.id == id => {
                            // What the change did, not what its context says.
                            member.learner = learner;
                            tracing::info!(member = member.id, address = %member.client_address, learner, "member added");
                            state.set_member(member);
                        }
                        _ => {
                            tracing::warn!(member = id, "a member was added without its addresses")
                        }
                    }
                }
                Committed::MemberRemoved { id } => {
                    tracing::info!(member = id, "member removed");
                    state.remove_member(id);
                }
            }
        }
        results
    }

    fn peers(&self) -> BTreeMap<u64, String> {
        self.node.read(peer_addresses)
    }

    fn image(&self) -> StateImage {
        self.node.read(StateImage::of)
    }

    fn decode(&self, data: &[u8]) -> Result<State, String> {
        Store::state_from_snapshot(data).map_err(|e| e.to_string())
    }

    fn restore(&self, state: State) {
        *self.node.state_mut() = state;
    }

    fn deliver(&self, outcome: &Outcome) {
        self.node.carry_out(outcome);
    }

    fn applied(&self) {
        self.node.state_changed();
    }

    fn snapshot_made(&self, bytes: usize, took: std::time::Duration) {
        self.node.metrics.snapshot_made(bytes, took);
    }
}

/// Every member's peer address, by id.
pub fn peer_addresses(state: &State) -> BTreeMap<u64, String> {
    state
        .members
        .values()
        .map(|m| (m.id, m.peer_address.clone()))
        .collect()
}
