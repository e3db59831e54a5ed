//! Requests being proposed on this member (the leader), by request id: a retry
//! of one (a client that gave up waiting and called again, a member whose
//! forward timed out and sent it again) waits for the first one's answer
//! instead of being proposed a second time. Applying a repeat is harmless (the
//! state machine answers a repeated submission with its first run), but a
//! repeat costs what the first cost: a 100,000-step submission is encoded,
//! replicated, synced and decoded again, on every member, for each retry, while
//! the first is still being applied.
//!
//! The proposal runs on a task of its own, so that it is followed to its answer
//! even when the call that started it is dropped (a forward abandoned by the
//! member that sent it): whoever asks with the same id meanwhile gets that answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use ferry_common::locks::lock;
use tokio::sync::watch;

use super::ProposeError;
use crate::consensus::ConsensusError;
use crate::state::{Command, Outcome};

type Answer = Result<Outcome, ProposeError>;

/// Which command a request is (the variant, not its contents).
pub(super) type Kind = std::mem::Discriminant<Command>;

/// One request in flight: what kind of command it is (a repeat must be the
/// same kind to be joined) and where its answer will appear.
struct Entry {
    kind: Kind,
    answer: watch::Receiver<Option<Answer>>,
}

/// The requests in flight on this member.
#[derive(Default, Clone)]
pub(super) struct InFlight(Arc<Mutex<HashMap<String, Entry>>>);

/// What [`InFlight::claim`] found.
pub(super) enum Claim {
    /// The same request is in flight: its answer, when it comes.
    Joined(Waiting),
    /// Not in flight: the caller proposes it with [`Owner::run`].
    Mine(Owner),
}

/// The answer of a request proposed by another call.
pub(super) struct Waiting(watch::Receiver<Option<Answer>>);

impl Waiting {
    pub(super) async fn answer(mut self) -> Answer {
        match self.0.wait_for(Option::is_some).await {
            Ok(answer) => answer
                .clone()
                .unwrap_or(Err(ConsensusError::ShuttingDown.into())),
            // The task that followed it ended without an answer: the member is stopping.
            Err(_) => Err(ConsensusError::ShuttingDown.into()),
        }
    }
}

/// The right, and the duty, to propose a request: [`Owner::run`] follows the
/// proposal to its answer; dropped without running, it lets the next call
/// with the same id propose it.
pub(super) struct Owner {
    id: String,
    map: InFlight,
    sender: Option<watch::Sender<Option<Answer>>>,
}

impl InFlight {
    /// Joins the request `id` if a command of the same `kind` is in flight
    /// under it, else claims it for the caller.
    pub(super) fn claim(&self, id: &str, kind: Kind) -> Claim {
        let mut map = lock(&self.0, "requests in flight");
        if let Some(entry) = map.get(id) {
            if entry.kind == kind {
                return Claim::Joined(Waiting(entry.answer.clone()));
            }
            // Another command under the same id (a client that reuses ids): not
            // the same request; proposed on its own, and not joinable.
            return Claim::Mine(Owner {
                id: String::new(),
                map: self.clone(),
                sender: None,
            });
        }
        let (sender, answer) = watch::channel(None);
        map.insert(id.to_string(), Entry { kind, answer });
        Claim::Mine(Owner {
            id: id.to_string(),
            map: self.clone(),
            sender: Some(sender),
        })
    }

    /// How many requests are in flight (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0, "requests in flight").len()
    }
}

impl Owner {
    /// Runs `proposal` on a task of its own and waits for its answer, which
    /// every call that joined the request gets too.
    pub(super) async fn run<F>(mut self, proposal: F) -> Answer
    where
        F: Future<Output = Answer> + Send + 'static,
    {
        let Some(sender) = self.sender.take() else {
            return proposal.await;
        };
        let waiting = Waiting(sender.subscribe());
        let (id, map) = (std::mem::take(&mut self.id), self.map.clone());
        tokio::spawn(async move {
            let answer = proposal.await;
            // Forgotten before the answer is published: a call that comes after
            // the answer proposes afresh (the state machine settles a repeat).
            lock(&map.0, "requests in flight").remove(&id);
            let _ = sender.send(Some(answer));
        });
        waiting.answer().await
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Claimed but never run: forget it; a call that joined meanwhile sees
        // the channel close and answers that this member is stopping (the only
        // way a claim goes unrun is the proposing call being dropped at once).
        if self.sender.is_some() {
            lock(&self.map.0, "requests in flight").remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn one_kind() -> Kind {
        std::mem::discriminant(&Command::UnpinArtifact {
            tag: String::new(),
            now_ms: 0,
        })
    }

    fn another_kind() -> Kind {
        std::mem::discriminant(&Command::PauseSchedule {
            name: String::new(),
            paused: true,
            now_ms: 0,
        })
    }

    fn submitted(run: u64) -> Answer {
        Ok(Outcome::RunSubmitted {
            run,
            assigned: Vec::new(),
        })
    }

    #[tokio::test]
    async fn a_repeat_waits_for_the_first_answer_and_proposes_nothing() {
        let in_flight = InFlight::default();
        let proposed = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let Claim::Mine(owner) = in_flight.claim("alice/r1", one_kind()) else {
            panic!("nothing was in flight")
        };
        let count = proposed.clone();
        let first = tokio::spawn(owner.run(async move {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = released.await;
            submitted(7)
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Claim::Joined(waiting) = in_flight.claim("alice/r1", one_kind()) else {
            panic!("the first is in flight")
        };
        let repeat = tokio::spawn(waiting.answer());
        // Another request, and another kind under the same id, are not joined.
        assert!(matches!(
            in_flight.claim("alice/r2", one_kind()),
            Claim::Mine(_)
        ));
        assert!(matches!(
            in_flight.claim("alice/r1", another_kind()),
            Claim::Mine(_)
        ));
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), submitted(7).unwrap());
        assert_eq!(repeat.await.unwrap().unwrap(), submitted(7).unwrap());
        assert_eq!(proposed.load(Ordering::SeqCst), 1);
        assert_eq!(in_flight.len(), 0, "answered requests are forgotten");
    }

    #[tokio::test]
    async fn a_dropped_caller_leaves_its_proposal_followed_to_the_answer() {
        let in_flight = InFlight::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let Claim::Mine(owner) = in_flight.claim("bob/r1", one_kind()) else {
            panic!("nothing was in flight")
        };
        let first = tokio::spawn(owner.run(async move {
            let _ = released.await;
            submitted(9)
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The caller goes away (a forward abandoned by its member).
        first.abort();
        let Claim::Joined(waiting) = in_flight.claim("bob/r1", one_kind()) else {
            panic!("the proposal is still in flight")
        };
        release.send(()).unwrap();
        assert_eq!(waiting.answer().await.unwrap(), submitted(9).unwrap());
    }

    #[tokio::test]
    async fn a_claim_never_run_is_forgotten() {
        let in_flight = InFlight::default();
        let Claim::Mine(owner) = in_flight.claim("carol/r1", one_kind()) else {
            panic!("nothing was in flight")
        };
        drop(owner);
        assert_eq!(in_flight.len(), 0);
        assert!(matches!(
            in_flight.claim("carol/r1", one_kind()),
            Claim::Mine(_)
        ));
    }
}
