//! The Raft group's membership: who may change it (administrators), how a member
//! joins (as a learner, which copies the log but does not vote), when a learner
//! is promoted to voter (by the leader's `membership` loop, once its peer address
//! answers as a coordinator of this cluster with the learner's id and it has
//! caught up), which changes are refused (one that would leave no quorum the
//! leader can reach), and the cluster's status as `ferry cluster status` shows it.
//!
//! Why learners: a member added as a voter counts toward the quorum at once, so
//! adding one that never starts (a typo in its address) could take a one-member
//! cluster down for good. A learner counts toward nothing until it is promoted.
//! Promotion is automatic rather than an explicit command, so that adding a
//! member stays one step and a learner is never forgotten half-added; `ferry
//! cluster status` shows each learner and what its promotion waits for.
//! `rules` holds the decisions as pure functions; `probe` the TLS check.

mod probe;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_common::locks::lock;
use ferry_common::pki::{Identity, TlsMaterial};
use ferry_common::proto;
use raft::eraftpb::{ConfChange, ConfChangeType};
use tokio::sync::{oneshot, watch};
use tonic::Status;

use super::{Node, ProposeError};
use crate::consensus::{ConsensusError, Input, LocalStatus};
use crate::state::{Member, State};
use rules::{Change, Configuration, Progress};

/// How often the leader looks at its learners.
const PROMOTION_PERIOD: Duration = Duration::from_millis(500);
/// Each step of the TLS probe of a learner's peer address (connect, read, write).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What this member needs to decide membership changes.
pub struct Membership {
    /// The client names that may change the membership (`admins`).
    admins: BTreeSet<String>,
    /// For the TLS probe of a learner's peer address.
    tls: TlsMaterial,
    /// A member the leader heard from within this long counts as reachable (an
    /// election timeout: what Raft's own check of its quorum uses).
    contact_window: Duration,
    /// The leader's view of each learner (empty on other members).
    learners: Mutex<BTreeMap<u64, LearnerView>>,
}

#[derive(Debug, Clone, Default)]
struct LearnerView {
    /// The peer address that answered as a coordinator of this cluster with this
    /// learner's id.
    verified: Option<String>,
    /// What its promotion waits for, in words.
    waiting: String,
}

/// Why a membership change was not made.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exists(String),
    #[error("member {0} is not in the cluster")]
    NotFound(u64),
    /// The change would leave the cluster without a reachable quorum.
    #[error("{0}")]
    Unsafe(String),
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

impl Membership {
    pub fn new(admins: BTreeSet<String>, tls: TlsMaterial, contact_window: Duration) -> Membership {
        Membership {
            admins,
            tls,
            contact_window,
            learners: Mutex::new(BTreeMap::new()),
        }
    }

    /// The administrators configured on this member (`admins`).
    pub fn admins(&self) -> &BTreeSet<String> {
        &self.admins
    }

    /// Administrators only (the table's `ChangeMembership` row), configured or
    /// added by `ferry admins add`.
    pub fn authorize(
        &self,
        caller: &Identity,
        state: &crate::state::State,
    ) -> Result<(), MembershipError> {
        super::authorize::may(
            caller,
            crate::access::Action::ChangeMembership,
            state,
            &self.admins,
        )
        .map_err(MembershipError::Denied)
    }

    fn note(&self, id: u64, waiting: String) {
        lock(&self.learners, "learners")
            .entry(id)
            .or_default()
            .waiting = waiting;
    }

    /// What learner `id`'s promotion waits for, as this member (the leader)
    /// last saw it; empty elsewhere.
    pub fn waiting(&self, id: u64) -> String {
        lock(&self.learners, "learners")
            .get(&id)
            .map(|view| view.waiting.clone())
            .unwrap_or_default()
    }
}

fn conf_change(kind: ConfChangeType, member: &Member) -> ConfChange {
    let mut change = ConfChange::default();
    change.set_change_type(kind);
    change.node_id = member.id;
    // Every member records the addresses from the applied change.
    change.context = serde_json::to_vec(member)
        .expect("members serialize")
        .into();
    change
}

impl Node {
    /// The configuration as the leader sees it, with the members it heard from
    /// within the contact window (itself included). Refused on a follower.
    async fn configuration(&self) -> Result<(LocalStatus, Configuration), ProposeError> {
        let local = self.local_status().await?;
        if local.leader != Some(self.id) {
            return Err(ConsensusError::NotLeader.into());
        }
        let window = self.membership.contact_window;
        let live = local
            .voters
            .iter()
            .chain(&local.learners)
            .copied()
            .filter(|&id| {
                id == self.id
                    || self
                        .transport
                        .since_contact(id)
                        .is_some_and(|since| since <= window)
            })
            .collect();
        let config = Configuration {
            voters: local.voters.clone(),
            learners: local.learners.clone(),
            live,
        };
        Ok((local, config))
    }

    /// Hands a configuration change to the Raft loop (leader only; one at a time).
    async fn propose_conf_change(&self, change: ConfChange) -> Result<(), ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::ConfChange(change, reply))
            .await
            .map_err(|_| ConsensusError::ShuttingDown)?;
        answer.await.map_err(|_| ConsensusError::ShuttingDown)??;
        Ok(())
    }

    /// Waits (bounded) until the applied state satisfies `done`.
    async fn wait_applied(&self, done: impl Fn(&State) -> bool) -> Result<(), ProposeError> {
        let mut changes = self.subscribe_state();
        let deadline = Instant::now() + self.timings.propose_budget();
        loop {
            if self.read(&done) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConsensusError::NotCommitted.into());
            }
            let _ = tokio::time::timeout(left, changes.changed()).await;
        }
    }

    /// Adds a member as a learner and waits until the change is applied. The
    /// same member added again (a retried call) is answered as done.
    pub async fn add_learner(&self, member: Member) -> Result<(), MembershipError> {
        let members = self.read(|state| state.members.clone());
        match members.get(&member.id) {
            Some(existing)
                if existing.client_address == member.client_address
                    && existing.peer_address == member.peer_address =>
            {
                return Ok(());
            }
            Some(_) => {
                return Err(MembershipError::Exists(format!(
                    "member {} is already in the cluster with other addresses; remove it first",
                    member.id
                )));
            }
            None => {}
        }
        rules::check_new_member(&member, members.values()).map_err(MembershipError::Invalid)?;
        let (_, config) = self.configuration().await?;
        rules::check_change(Change::AddLearner(member.id), &config)
            .map_err(MembershipError::Exists)?;
        tracing::info!(member = member.id, client_address = %member.client_address, peer_address = %member.peer_address, "adding a learner");
        self.propose_conf_change(conf_change(ConfChangeType::AddLearnerNode, &member))
            .await?;
        let id = member.id;
        self.wait_applied(|state| state.members.contains_key(&id))
            .await?;
        Ok(())
    }

    /// Removes a voter or a learner, unless that would leave the cluster without
    /// a quorum the leader can reach, and waits until the change is applied.
    pub async fn remove_member(&self, id: u64) -> Result<(), MembershipError> {
        let Some(member) = self.read(|state| state.members.get(&id).cloned()) else {
            return Err(MembershipError::NotFound(id));
        };
        let (_, config) = self.configuration().await?;
        rules::check_change(Change::Remove(id), &config).map_err(MembershipError::Unsafe)?;
        tracing::info!(
            member = id,
            learner = config.learners.contains(&id),
            "removing a member"
        );
        self.propose_conf_change(conf_change(ConfChangeType::RemoveNode, &member))
            .await?;
        self.wait_applied(|state| !state.members.contains_key(&id))
            .await?;
        lock(&self.membership.learners, "learners").remove(&id);
        Ok(())
    }

    /// Whether learner `member`'s peer address is a coordinator of this cluster
    /// that says it is this member; remembered once it is.
    async fn verify_learner(&self, member: &Member) -> Result<(), String> {
        let verified = lock(&self.membership.learners, "learners")
            .get(&member.id)
            .and_then(|view| view.verified.clone());
        if verified.as_deref() == Some(member.peer_address.as_str()) {
            return Ok(());
        }
        let (address, tls) = (member.peer_address.clone(), self.membership.tls.clone());
        let identity = tokio::task::spawn_blocking(move || {
            probe::probe_coordinator(&address, &tls, PROBE_TIMEOUT)
        })
        .await
        .map_err(|error| format!("the probe failed: {error}"))??;
        match ferry_common::pki::member_id(&identity) {
            Ok(id) if id == member.id => {}
            Ok(id) => {
                return Err(format!(
                    "the coordinator at {} presented the certificate of member {id}, not of \
                     member {}",
                    member.peer_address, member.id
                ));
            }
            Err(reason) => {
                return Err(format!(
                    "the certificate of the coordinator at {} is refused: {reason}",
                    member.peer_address
                ));
            }
        }
        let mut client = self
            .transport
            .client(member.id)
            .ok_or_else(|| "no link to it yet".to_string())?;
        let answer = tokio::time::timeout(
            PROBE_TIMEOUT * 2,
            client.describe_self(proto::ClusterStatusRequest {}),
        )
        .await
        .map_err(|_| "it did not say who it is within 2 s".to_string())?
        .map_err(|status| format!("it did not say who it is: {}", status.message()))?
        .into_inner();
        if answer.id != member.id {
            return Err(format!(
                "the coordinator at {} is member {}, not member {}",
                member.peer_address, answer.id, member.id
            ));
        }
        tracing::info!(member = member.id, peer_address = %member.peer_address, certificate = %identity, "the learner answered as a coordinator of this cluster");
        lock(&self.membership.learners, "learners")
            .entry(member.id)
            .or_default()
            .verified = Some(member.peer_address.clone());
        Ok(())
    }

    /// One look at the learners (leader only): promotes the first that is
    /// reachable as a coordinator and caught up, if the quorum allows; notes
    /// what the others wait for.
    async fn promotion_pass(&self) {
        let Ok((local, config)) = self.configuration().await else {
            return;
        };
        lock(&self.membership.learners, "learners").retain(|id, _| local.learners.contains(id));
        let members = self.read(|state| state.members.clone());
        for &id in &local.learners {
            let Some(member) = members.get(&id) else {
                continue;
            };
            let reachable = self.verify_learner(member).await;
            let progress = Progress {
                matched: local.matched.get(&id).copied().unwrap_or(0),
                last_index: local.last_index,
                replicating: local.replicating.contains(&id),
            };
            let blocker = rules::promotion_blocker(
                reachable.as_ref().map(|_| ()).map_err(String::as_str),
                progress,
            )
            .or_else(|| rules::check_change(Change::Promote(id), &config).err());
            if let Some(reason) = blocker {
                tracing::debug!(member = id, %reason, "learner not promoted yet");
                self.membership.note(id, reason);
                continue;
            }
            tracing::info!(
                member = id,
                matched = progress.matched,
                last_index = progress.last_index,
                "promoting the learner to a voter: it answered as a coordinator and caught up"
            );
            let waiting = match self
                .propose_conf_change(conf_change(ConfChangeType::AddNode, member))
                .await
            {
                Ok(()) => "being promoted".to_string(),
                Err(error) => {
                    tracing::warn!(member = id, %error, "cannot promote the learner");
                    format!("the promotion was not proposed: {error}")
                }
            };
            self.membership.note(id, waiting);
            // One configuration change at a time.
            return;
        }
    }

    /// This member's own line of `ferry cluster status`.
    pub async fn member_status(&self) -> Result<proto::MemberStatus, Status> {
        let local = self
            .local_status()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let member = self.read(|state| state.members.get(&self.id).cloned());
        let learner = local.learners.contains(&self.id);
        Ok(proto::MemberStatus {
            id: self.id,
            client_address: member
                .as_ref()
                .map(|m| m.client_address.clone())
                .unwrap_or_default(),
            peer_address: member.map(|m| m.peer_address).unwrap_or_default(),
            role: if learner { "learner" } else { local.role }.to_string(),
            term: local.term,
            commit_index: local.commit,
            applied_index: local.applied,
            lag: 0,
            last_contact_ms: 0,
            reachable: true,
            error: String::new(),
            learner,
            promotion: String::new(),
        })
    }

    /// Every member's status, as seen from this one: each is asked for its own
    /// view; the lag is measured against the leader's commit index. Which
    /// members are learners is in the state (every member knows); what a
    /// learner's promotion waits for is known on the leader.
    pub async fn cluster_status(&self) -> proto::ClusterStatusResponse {
        let members: Vec<Member> = self.read(|state| state.members.values().cloned().collect());
        let mut statuses = Vec::new();
        for member in members {
            let status = if member.id == self.id {
                self.member_status().await
            } else {
                match self.transport.client(member.id) {
                    Some(mut client) => tokio::time::timeout(
                        self.timings.peer_question(),
                        client.describe_self(proto::ClusterStatusRequest {}),
                    )
                    .await
                    .map_err(|_| {
                        Status::deadline_exceeded(format!(
                            "no answer within {:?}",
                            self.timings.peer_question()
                        ))
                    })
                    .and_then(|r| r.map(|r| r.into_inner())),
                    None => Err(Status::unavailable("no link to this member")),
                }
            };
            let mut status = status.unwrap_or_else(|error| proto::MemberStatus {
                id: member.id,
                role: "unreachable".to_string(),
                reachable: false,
                error: error.message().to_string(),
                ..Default::default()
            });
            status.client_address = member.client_address.clone();
            status.peer_address = member.peer_address.clone();
            status.learner = member.learner;
            status.promotion = if member.learner {
                self.membership.waiting(member.id)
            } else {
                String::new()
            };
            if member.id != self.id {
                status.last_contact_ms = self
                    .transport
                    .since_contact(member.id)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(-1);
            }
            statuses.push(status);
        }
        let leader_commit = statuses
            .iter()
            .filter(|s| s.role == "leader")
            .map(|s| s.commit_index)
            .max()
            .unwrap_or_else(|| statuses.iter().map(|s| s.commit_index).max().unwrap_or(0));
        for status in &mut statuses {
            if status.reachable {
                status.lag = leader_commit.saturating_sub(status.applied_index);
            }
        }
        proto::ClusterStatusResponse {
            leader_id: self.role().leader.unwrap_or(0),
            members: statuses,
            answered_by: self.id,
        }
    }
}

/// The leader's membership loop: every `PROMOTION_PERIOD`, promotes a learner
/// that is ready (see [`rules::promotion_blocker`]). Supervised like the other
/// leader loops.
pub(super) async fn membership_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        match super::loops::next_pass(
            &node,
            "coordinator.membership",
            PROMOTION_PERIOD,
            &mut shutdown,
        )
        .await
        {
            None => return,
            Some(true) => node.promotion_pass().await,
            Some(false) => lock(&node.membership.learners, "learners").clear(),
        }
    }
}
