//! Proposing a command from any member: authorized here, proposed here when this
//! member leads, else forwarded to the leader with the caller's identity. A
//! forward races the leader change: when this member sees another leader (or
//! none), or the leader does not answer within `Timings::forward_attempt`, the
//! forward is abandoned and the command sent again to the leader as it is then,
//! if sending it again is safe (`Command::safe_to_resend`; a refusal that only
//! says the first attempt took effect is settled on the leader into the first's
//! answer, `State::settle_resend`). The leader stamps every command with its own
//! clock as it proposes it, so the times the state machine compares come from
//! one clock whichever member a client reached.

use std::time::Duration;

use ferry_common::pki::Identity;
use ferry_common::proto;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Node, ProposeError, audit, authorize, in_flight, now_ms};
use crate::consensus::{ConsensusError, Input, Proposal};
use crate::state::{Command, Outcome, Request, Requester};

/// How one try of a proposal ended, for the loop that tries again.
enum Try {
    /// Answered: applied (or refused by the state machine), or failed for good.
    Done(Result<Outcome, ProposeError>),
    /// Not applied, for sure (no leader, a leader that refused to take it): send
    /// it again as it is.
    NotApplied(ProposeError),
    /// Maybe applied (the leader went silent or changed while it was in flight).
    Unknown(ProposeError),
}

impl Node {
    /// Proposes a command on behalf of `caller` and waits until it is committed,
    /// applied and durable. On a follower the command is forwarded to the leader
    /// with the caller's identity.
    pub async fn propose_as(
        &self,
        caller: &Identity,
        command: Command,
    ) -> Result<Outcome, ProposeError> {
        // A client's id for the request (the same on its retries), kept apart
        // from other callers'; else one made here.
        let id = match crate::api::request_id::current() {
            Some(id) => format!("{}/{id}", caller.uri()),
            None => self.new_request_id(),
        };
        self.propose_with(caller, command, false, id).await
    }

    /// [`Node::propose_as`] for a command that a member forwarded; `resent`: an
    /// earlier attempt of it may have been applied.
    pub async fn propose_forwarded(
        &self,
        caller: &Identity,
        command: Command,
        resent: bool,
        request_id: Option<String>,
    ) -> Result<Outcome, ProposeError> {
        let id = request_id.unwrap_or_else(|| self.new_request_id());
        self.propose_with(caller, command, resent, id).await
    }

    async fn propose_with(
        &self,
        caller: &Identity,
        command: Command,
        resent: bool,
        id: String,
    ) -> Result<Outcome, ProposeError> {
        let authorized = self
            .read(|state| authorize::authorize(caller, &command, state, self.membership.admins()));
        if let Err(reason) = authorized {
            let about = self.describe(&command);
            let reason = self.refused_as(caller, about, reason, Some(id)).await;
            return Err(ProposeError::Denied(reason));
        }
        let by = audit::audited(caller, &command);
        self.propose_authorized(caller, command, by, resent, id)
            .await
    }

    /// Proposes an authorized command here or on the leader until it is
    /// answered, within `Timings::propose_budget`.
    pub(super) async fn propose_authorized(
        &self,
        caller: &Identity,
        command: Command,
        by: Option<Requester>,
        mut resent: bool,
        id: String,
    ) -> Result<Outcome, ProposeError> {
        let allowance = self.submission_allowance(&command);
        let budget = self.timings.propose_budget() + allowance;
        let deadline = Instant::now() + budget;
        let mut role = self.role.clone();
        loop {
            let info = role.borrow_and_update().clone();
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = match info.leader {
                Some(leader) if leader == self.id => {
                    let here = self.propose_here(command.clone(), by.clone(), resent, &id);
                    local_try(here.await)
                }
                Some(leader) => {
                    self.forward_racing(leader, caller, &command, resent, &id, allowance, left)
                        .await
                }
                None => Try::NotApplied(ConsensusError::NotLeader.into()),
            };
            let last = match attempt {
                Try::Done(answer) => return answer,
                Try::NotApplied(error) => error,
                Try::Unknown(error) => {
                    if !command.safe_to_resend() {
                        tracing::warn!(%error, "the leader changed while a command was in flight; it is not sent again");
                        return Err(ConsensusError::Unknown.into());
                    }
                    tracing::info!(%error, "the leader changed while a command was in flight; sending it again");
                    resent = true;
                    error
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::debug!(error = %last, "no leader took the command in time");
                return Err(ProposeError::NoLeader(budget));
            }
            // Wait for a role change, or retry soon: the leader may have moved.
            let waited =
                tokio::time::timeout(left.min(Duration::from_millis(50)), role.changed()).await;
            if let Ok(Err(_)) = waited {
                // The Raft loop is gone: this member is stopping.
                return Err(ConsensusError::ShuttingDown.into());
            }
        }
    }

    /// Proposes a command of the coordinator itself (the scheduler), on the leader.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        self.propose_local(command, None, false, None).await
    }

    /// Proposes here (the leader), and for a resent command settles a refusal
    /// that only says an earlier attempt took effect.
    async fn propose_here(
        &self,
        command: Command,
        by: Option<Requester>,
        resent: bool,
        id: &str,
    ) -> Result<Outcome, ProposeError> {
        // Kept only to settle a resend's refusal: a large submission's copy costs.
        let copy = resent.then(|| command.clone());
        let answer = self.propose_local(command, by, resent, Some(id)).await;
        match (answer, copy) {
            (Err(ProposeError::Rejected(refusal)), Some(command)) => self
                .read(|state| state.settle_resend(&command, Err(refusal)))
                .map_err(ProposeError::Rejected),
            (other, _) => other,
        }
    }

    /// Proposes on this member, stamped with its clock (it is the leader, or the
    /// proposal fails with `NotLeader`); a request `by` a caller the audit log
    /// names goes in wrapped, so that applying it records it.
    async fn propose_local(
        &self,
        mut command: Command,
        by: Option<Requester>,
        resent: bool,
        id: Option<&str>,
    ) -> Result<Outcome, ProposeError> {
        // A request already being proposed here (the same id: a retry) waits
        // for that proposal's answer (`in_flight`).
        let owner = match id {
            Some(id) => match self.in_flight.claim(id, std::mem::discriminant(&command)) {
                in_flight::Claim::Joined(waiting) => {
                    tracing::debug!(request = id, "joined the same request in flight");
                    return waiting.answer().await;
                }
                in_flight::Claim::Mine(owner) => Some(owner),
            },
            None => None,
        };
        let now = now_ms();
        command.stamp(now);
        match &mut command {
            Command::SubmitRun {
                pipeline,
                placements,
                ..
            } => *placements = self.first_placements(pipeline, now),
            Command::StepFinished {
                key,
                worker,
                report,
                placements,
                ..
            } => *placements = self.next_placements(key, worker, report, now),
            _ => {}
        }
        if let Some(by) = by {
            command = Command::Request(Box::new(Request {
                by,
                about: self.describe(&command),
                resent,
                id: id.map(str::to_string),
                command,
            }));
        }
        let proposals = self.proposals.clone();
        let metrics = self.metrics.clone();
        let proposal = async move {
            let started = std::time::Instant::now();
            let (reply, answer) = oneshot::channel();
            // Encoded here, not on the Raft loop (`Proposal::encoded`).
            let encoded = Some(serde_json::to_vec(&command).expect("commands serialize"));
            proposals
                .send(Proposal {
                    command,
                    reply,
                    encoded,
                })
                .await
                .map_err(|_| ConsensusError::ShuttingDown)?;
            let answered: Result<Outcome, ProposeError> =
                async { Ok(answer.await.map_err(|_| ConsensusError::ShuttingDown)???) }.await;
            metrics.proposed(&answered, started.elapsed());
            answered
        };
        match owner {
            Some(owner) => owner.run(proposal).await,
            None => proposal.await,
        }
    }

    /// How much longer than others `command` may take to be applied: a
    /// submission by its steps, a rerun by its source's
    /// (`Timings::submission_allowance`).
    fn submission_allowance(&self, command: &Command) -> Duration {
        let steps = match command {
            Command::SubmitRun { pipeline, .. } => pipeline.steps.len(),
            Command::RerunRun { source, .. } => self.read(|state| {
                state
                    .runs
                    .get(source)
                    .map_or(0, |run| run.pipeline.steps.len())
            }),
            _ => 0,
        };
        self.timings.submission_allowance(steps)
    }

    /// Forwards to `leader` until it answers, the leader this member sees
    /// changes, or `Timings::forward_attempt` plus `allowance` (at most `left`)
    /// passes.
    #[allow(clippy::too_many_arguments)]
    async fn forward_racing(
        &self,
        leader: u64,
        caller: &Identity,
        command: &Command,
        resent: bool,
        id: &str,
        allowance: Duration,
        left: Duration,
    ) -> Try {
        let limit = (self.timings.forward_attempt() + allowance).min(left);
        let mut role = self.role.clone();
        tokio::select! {
            answer = tokio::time::timeout(limit, self.forward(leader, caller, command, resent, id)) => match answer {
                Ok(answer) => forward_try(answer),
                Err(_) => Try::Unknown(ProposeError::Unanswered(format!(
                    "leader {leader} did not answer within {limit:?}"
                ))),
            },
            changed = role.wait_for(|info| info.leader != Some(leader)) => match changed {
                Ok(_) => Try::Unknown(ProposeError::Unanswered(format!(
                    "leader {leader} lost its leadership"
                ))),
                // The Raft loop is gone: this member is stopping.
                Err(_) => Try::Done(Err(ConsensusError::ShuttingDown.into())),
            },
        }
    }

    async fn forward(
        &self,
        leader: u64,
        caller: &Identity,
        command: &Command,
        resent: bool,
        id: &str,
    ) -> Result<Outcome, ProposeError> {
        let Some(mut client) = self.transport.client(leader) else {
            return Err(ConsensusError::NotLeader.into());
        };
        let request = proto::ForwardRequest {
            caller: caller.uri(),
            command: serde_json::to_vec(command).expect("commands serialize"),
            resent,
            request_id: id.to_string(),
        };
        let response = client
            .forward(request)
            .await
            .map_err(ProposeError::Remote)?
            .into_inner();
        serde_json::from_slice(&response.outcome).map_err(|e| {
            ConsensusError::Refused(format!("the leader's answer does not decode: {e}")).into()
        })
    }

    /// Waits until this member has applied everything committed when the call
    /// began (Raft ReadIndex), so that a read after it is linearizable. Fails when
    /// no quorum confirms a leader in time (a minority answers no such read).
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let (budget, each) = self.timings.read_budget();
        let deadline = Instant::now() + budget;
        loop {
            let (reply, answer) = oneshot::channel();
            self.inputs
                .send(Input::ReadIndex(reply))
                .await
                .map_err(|_| ConsensusError::ShuttingDown)?;
            if let Ok(Ok(())) = tokio::time::timeout(each, answer).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::NoLeader(budget));
            }
        }
    }
}

/// A proposal made here: not taken because this member is not (or no longer)
/// the leader, or taken and then lost to another leader's entry, is known not to
/// be applied; one whose leader lost its leadership with it in flight may be.
fn local_try(answer: Result<Outcome, ProposeError>) -> Try {
    match answer {
        Err(
            error @ ProposeError::Consensus(
                ConsensusError::NotLeader | ConsensusError::NotCommitted,
            ),
        ) => Try::NotApplied(error),
        Err(error @ ProposeError::Consensus(ConsensusError::Unknown)) => Try::Unknown(error),
        other => Try::Done(other),
    }
}

/// The leader's answer to a forward. `Unavailable` is a leader that did not take
/// it (not the leader, or no longer) or a connection lost on the way; `Aborted`
/// a leader that lost its leadership with it in flight; `Unknown`, `Cancelled`
/// and `DeadlineExceeded` a call that ended without an answer. The first may or
/// may not have reached the leader, so all of them count as maybe applied.
fn forward_try(answer: Result<Outcome, ProposeError>) -> Try {
    match answer {
        Err(ProposeError::Remote(status))
            if matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Aborted
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
            ) =>
        {
            Try::Unknown(ProposeError::Remote(status))
        }
        Err(error @ ProposeError::Consensus(ConsensusError::NotLeader)) => Try::NotApplied(error),
        other => Try::Done(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failed_tries_may_have_been_applied() {
        let unknown = |answer| matches!(forward_try(answer), Try::Unknown(_));
        let remote = |code| Err(ProposeError::Remote(tonic::Status::new(code, "x")));
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Aborted,
            tonic::Code::Unknown,
            tonic::Code::Cancelled,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(unknown(remote(code)), "{code:?}");
        }
        // A refusal of the leader is its answer.
        for code in [
            tonic::Code::NotFound,
            tonic::Code::PermissionDenied,
            tonic::Code::FailedPrecondition,
            tonic::Code::AlreadyExists,
        ] {
            assert!(matches!(forward_try(remote(code)), Try::Done(Err(_))));
        }
        // No link to the leader: never sent.
        assert!(matches!(
            forward_try(Err(ConsensusError::NotLeader.into())),
            Try::NotApplied(_)
        ));
        assert!(matches!(
            local_try(Err(ConsensusError::NotCommitted.into())),
            Try::NotApplied(_)
        ));
        assert!(matches!(
            local_try(Err(ConsensusError::Unknown.into())),
            Try::Unknown(_)
        ));
        assert!(matches!(local_try(Ok(Outcome::Done)), Try::Done(Ok(_))));
    }
}
