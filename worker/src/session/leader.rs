//! Following the leader: [`Coordinators`] is the one shared choice of coordinator
//! that the session and every attempt call, with one lazily connected client per
//! address. A follower's leader hint, a lost connection or a member without a
//! leader moves it (at once to a named leader, else to the next configured address
//! after a growing wait), and [`Coordinators::call`] retries a call through such
//! switches. Every call has a deadline derived from the lease the leader asked
//! for (`ferry_common::timing`), and a call under way when another call switches
//! coordinator is abandoned and made again on the new one: a leader cut off
//! without closing its connections is left well within the lease. It knows
//! nothing of sessions or attempts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use ferry_common::channel::{ChannelError, parse_address};
use ferry_common::locks::lock;
use ferry_common::pki::TlsMaterial;
use ferry_common::proto::agent_client::AgentClient;
use ferry_common::timing::Timings;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

/// A client of one coordinator's agent service.
pub type Agent = AgentClient<Channel>;

/// Largest gRPC message accepted from the coordinator.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// The metadata key of a follower's `Unavailable` answer that names the leader's
/// client address (`HOST:PORT`).
pub const LEADER_METADATA_KEY: &str = "ferry-leader";

/// First wait before trying another coordinator after a failure; it doubles with
/// each failure in a row, up to [`SWITCH_BACKOFF_MAX`].
const SWITCH_BACKOFF_START: Duration = Duration::from_millis(50);
const SWITCH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The leader's address that a follower named in its answer, if it named one.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let hint = status
        .metadata()
        .get(LEADER_METADATA_KEY)?
        .to_str()
        .ok()?
        .trim();
    (!hint.is_empty() && parse_address(hint).is_ok()).then(|| hint.to_string())
}

/// Errors after which another coordinator, or the same one a little later, may
/// answer: not the leader, no leader yet, a member shutting down, a dropped
/// connection.
pub fn calls_for_another_coordinator(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// The answer of a call that `coordinator` did not answer within `limit`.
pub fn unanswered(coordinator: &str, limit: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!(
        "the coordinator at {coordinator} did not answer within {limit:?}"
    ))
}

/// The wait before the next try after `failures` failures in a row.
fn switch_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (SWITCH_BACKOFF_START * 2u32.pow(doublings)).min(SWITCH_BACKOFF_MAX)
}

/// The coordinator in use: its client, and the generation of the choice, which
/// tells a failure on it from a failure on a coordinator already left behind.
#[derive(Clone)]
pub struct CurrentCoordinator {
    pub generation: u64,
    pub address: String,
    pub agent: Agent,
}

/// The one coordinator this worker talks to now, shared by the session and every
/// attempt, with one lazily connected channel per address it has used.
pub struct Coordinators {
    worker: String,
    /// The configured addresses, in the order they are tried; never empty.
    addresses: Vec<String>,
    tls: TlsMaterial,
    choice: Mutex<Choice>,
    /// The generation of the current choice, for the session to notice a switch
    /// made by an attempt's call.
    switched: watch::Sender<u64>,
    /// The deadlines, from the heartbeat interval the leader asked for.
    timings: Mutex<Timings>,
    /// True once the worker gives up on what it still has to send (it is
    /// stopping): calls under way end, and nothing is tried again.
    stopping: watch::Sender<bool>,
}

struct Choice {
    current: CurrentCoordinator,
    /// Where in `addresses` the search for the leader stands; a failure without a
    /// hint moves to the address after it.
    position: usize,
    /// Failures in a row since a coordinator last answered; sets the backoff.
    failures: u32,
    clients: HashMap<String, Agent>,
}

impl Coordinators {
    /// Starts with the first configured address; nothing is dialled yet.
    pub fn new(
        worker: &str,
        addresses: Vec<String>,
        tls: TlsMaterial,
    ) -> Result<Coordinators, ChannelError> {
        let mut clients = HashMap::new();
        for address in &addresses {
            clients.insert(address.clone(), client_for(address, &tls)?);
        }
        let first = addresses.first().ok_or_else(|| ChannelError::BadAddress {
            address: String::new(),
            reason: "no coordinator address is configured".into(),
        })?;
        let current = CurrentCoordinator {
            generation: 0,
            address: first.clone(),
            agent: clients[first].clone(),
        };
        let (switched, _) = watch::channel(0);
        Ok(Coordinators {
            worker: worker.to_string(),
            addresses,
            tls,
            choice: Mutex::new(Choice {
                current,
                position: 0,
                failures: 0,
                clients,
            }),
            switched,
            timings: Mutex::new(Timings::default()),
            stopping: watch::channel(false).0,
        })
    }

    /// Gives up on every call: those under way end with `Cancelled`, and
    /// [`Coordinators::retry_after`] says not to try again. The worker calls this
    /// once it stops, after a short grace, so that an upload or a log batch of a
    /// cancelled attempt is not retried for minutes against a coordinator that
    /// is gone.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether [`Coordinators::stop`] was called.
    pub fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once [`Coordinators::stop`] is called.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// The deadlines of calls, from the lease the leader last told.
    pub fn timings(&self) -> Timings {
        *lock(&self.timings, "timings")
    }

    /// The leader asked for a heartbeat every `interval_ms`: the lease, and so
    /// every deadline, follows from it.
    pub fn set_heartbeat_interval(&self, interval_ms: u64) {
        *lock(&self.timings, "timings") = Timings::from_heartbeat_interval(interval_ms);
    }

    pub fn current(&self) -> CurrentCoordinator {
        lock(&self.choice, "coordinator").current.clone()
    }

    /// Changes to the generation of the current choice.
    pub fn switches(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// The coordinator of `generation` answered (whatever it said): the backoff
    /// starts over.
    pub fn answered(&self, generation: u64) {
        let mut choice = lock(&self.choice, "coordinator");
        if choice.current.generation == generation {
            choice.failures = 0;
        }
    }

    /// The coordinator of `generation` failed with `status`. Unless someone already
    /// moved on from it, switch: to the leader it named, else to the next configured
    /// address. Returns how long to wait before the next try.
    pub fn failed(&self, generation: u64, status: &tonic::Status) -> Duration {
        let mut choice = lock(&self.choice, "coordinator");
        if choice.current.generation != generation {
            // Another call already switched away from that coordinator.
            return Duration::ZERO;
        }
        choice.failures += 1;
        let hinted = leader_hint(status)
            .filter(|hint| *hint != choice.current.address)
            .and_then(|hint| match choice.clients.get(&hint) {
                Some(agent) => Some((hint, agent.clone())),
                None => match client_for(&hint, &self.tls) {
                    Ok(agent) => {
                        choice.clients.insert(hint.clone(), agent.clone());
                        Some((hint, agent))
                    }
                    Err(error) => {
                        tracing::warn!(worker = %self.worker, coordinator = %hint, %error, "ignoring the leader hint");
                        None
                    }
                },
            });
        let (address, agent, delay) = match hinted {
            Some((address, agent)) => {
                if let Some(position) = self.addresses.iter().position(|a| *a == address) {
                    choice.position = position;
                }
                // A hint is followed at once, unless hints have led round in a circle
                // for longer than one pass over the list.
                let delay = if choice.failures as usize <= self.addresses.len() + 1 {
                    Duration::ZERO
                } else {
                    switch_backoff(choice.failures)
                };
                (address, agent, delay)
            }
            None => {
                choice.position = (choice.position + 1) % self.addresses.len();
                let address = self.addresses[choice.position].clone();
                let agent = choice.clients[&address].clone();
                (address, agent, switch_backoff(choice.failures))
            }
        };
        let previous = std::mem::replace(
            &mut choice.current,
            CurrentCoordinator {
                generation: generation + 1,
                address: address.clone(),
                agent,
            },
        );
        self.switched.send_replace(generation + 1);
        if previous.address == address {
            tracing::warn!(worker = %self.worker, coordinator = %address, code = ?status.code(), reason = status.message(), ?delay, "the coordinator failed; trying it again");
        } else if delay.is_zero() {
            tracing::info!(worker = %self.worker, coordinator = %address, previous = %previous.address, "switching to the leader the coordinator named");
        } else {
            tracing::warn!(worker = %self.worker, coordinator = %address, previous = %previous.address, code = ?status.code(), reason = status.message(), ?delay, "switching coordinator");
        }
        delay
    }

    /// Makes a call on the current coordinator, and again on the next one after an
    /// error that calls for another coordinator, until it is answered or `give_up`
    /// (if any) passes; then the last error is returned.
    pub async fn call<T, F, Fut>(
        &self,
        give_up: Option<Instant>,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(Agent) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        loop {
            let coordinator = self.current();
            let mut limit = self.timings().worker_call();
            if let Some(give_up) = give_up {
                limit = limit.min(give_up.saturating_duration_since(Instant::now()));
            }
            let mut switches = self.switches();
            let answer = tokio::select! {
                answer = tokio::time::timeout(limit, call(coordinator.agent)) => answer
                    .unwrap_or_else(|_| Err(unanswered(&coordinator.address, limit))),
                _ = self.stopped() => return Err(stopping_status()),
                // Another call moved on (the session found the new leader): make
                // this one there, at once.
                _ = switches.wait_for(|generation| *generation != coordinator.generation) => continue,
            };
            match answer {
                Ok(response) => {
                    self.answered(coordinator.generation);
                    return Ok(response.into_inner());
                }
                Err(status) => match self.retry_after(coordinator.generation, &status, give_up) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(status),
                },
            }
        }
    }

    /// After the coordinator of `generation` answered a call with `status`: the wait
    /// before trying again (on the coordinator switched to), or `None` when the call
    /// should not be tried again (it was answered, or `give_up` comes first).
    pub fn retry_after(
        &self,
        generation: u64,
        status: &tonic::Status,
        give_up: Option<Instant>,
    ) -> Option<Duration> {
        if self.stopping() {
            return None;
        }
        if !calls_for_another_coordinator(status) {
            self.answered(generation);
            return None;
        }
        let delay = self.failed(generation, status);
        match give_up {
            Some(give_up) if Instant::now() + delay >= give_up => None,
            _ => Some(delay),
        }
    }
}

/// What a call given up because the worker stops ends with.
pub fn stopping_status() -> tonic::Status {
    tonic::Status::cancelled("the worker is stopping; given up")
}

fn client_for(address: &str, tls: &TlsMaterial) -> Result<Agent, ChannelError> {
    let channel = ferry_common::channel::endpoint(address, tls)?.connect_lazy();
    Ok(AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn unavailable_with_hint(hint: &str) -> tonic::Status {
        let mut status = tonic::Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, hint.parse().unwrap());
        status
    }

    /// A handle for worker `w1` with its own CA and certificate (shared with the
    /// other session tests).
    pub(in crate::session) fn coordinators(
        addresses: &[&str],
    ) -> (tempfile::TempDir, Coordinators) {
        let dir = tempfile::tempdir().unwrap();
        ferry_common::pki::init_ca(dir.path()).unwrap();
        ferry_common::pki::issue(
            dir.path(),
            dir.path(),
            ferry_common::pki::Role::Worker,
            "w1",
            &[],
            &[],
        )
        .unwrap();
        let tls = ferry_common::pki::TlsFiles::in_dir(dir.path(), "w1")
            .load()
            .unwrap();
        let addresses = addresses.iter().map(|a| a.to_string()).collect();
        (dir, Coordinators::new("w1", addresses, tls).unwrap())
    }

    #[test]
    fn the_leader_hint_comes_from_an_unavailable_answer_only() {
        assert_eq!(
            leader_hint(&unavailable_with_hint("10.0.0.2:7443")).as_deref(),
            Some("10.0.0.2:7443")
        );
        assert_eq!(
            leader_hint(&unavailable_with_hint(" b:2 ")).as_deref(),
            Some("b:2")
        );
        // No leader known: no hint.
        assert_eq!(leader_hint(&tonic::Status::unavailable("no leader")), None);
        // An empty or malformed hint is no hint.
        assert_eq!(leader_hint(&unavailable_with_hint("")), None);
        assert_eq!(leader_hint(&unavailable_with_hint("nohost")), None);
        // Only `Unavailable` carries a hint.
        let mut refused = tonic::Status::permission_denied("no");
        refused
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "b:2".parse().unwrap());
        assert_eq!(leader_hint(&refused), None);
    }

    #[test]
    fn failures_that_call_for_another_coordinator() {
        assert!(calls_for_another_coordinator(&tonic::Status::unavailable(
            "x"
        )));
        assert!(calls_for_another_coordinator(&tonic::Status::unknown(
            "h2 error"
        )));
        assert!(calls_for_another_coordinator(&tonic::Status::cancelled(
            "x"
        )));
        assert!(calls_for_another_coordinator(&unanswered(
            "a:1",
            Duration::from_secs(4)
        )));
        assert!(!calls_for_another_coordinator(
            &tonic::Status::permission_denied("x")
        ));
        assert!(!calls_for_another_coordinator(&tonic::Status::not_found(
            "x"
        )));
    }

    #[test]
    fn backoff_starts_short_and_is_capped() {
        assert_eq!(switch_backoff(1), Duration::from_millis(50));
        assert_eq!(switch_backoff(2), Duration::from_millis(100));
        assert_eq!(switch_backoff(4), Duration::from_millis(400));
        assert_eq!(switch_backoff(6), Duration::from_secs(1));
        assert_eq!(switch_backoff(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_hint_is_followed_at_once_and_failures_move_down_the_list() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2", "c:3"]);
        let mut switches = coordinators.switches();
        let first = coordinators.current();
        assert_eq!((first.generation, first.address.as_str()), (0, "a:1"));

        // A follower names the leader: switch to it without waiting.
        let delay = coordinators.failed(0, &unavailable_with_hint("c:3"));
        assert_eq!(delay, Duration::ZERO);
        let now = coordinators.current();
        assert_eq!((now.generation, now.address.as_str()), (1, "c:3"));
        assert!(switches.has_changed().unwrap());
        assert_eq!(*switches.borrow_and_update(), 1);

        // A failure reported on a coordinator already left behind changes nothing.
        assert_eq!(
            coordinators.failed(0, &tonic::Status::unavailable("gone")),
            Duration::ZERO
        );
        assert_eq!(coordinators.current().generation, 1);
        assert!(!switches.has_changed().unwrap());

        // The leader dies: the next address after it (wrapping), with a short wait
        // that grows while nobody answers.
        let delay = coordinators.failed(1, &tonic::Status::unavailable("connection refused"));
        assert_eq!(coordinators.current().address, "a:1");
        assert_eq!(delay, switch_backoff(2));
        let delay = coordinators.failed(2, &tonic::Status::unavailable("no leader"));
        assert_eq!(coordinators.current().address, "b:2");
        assert_eq!(delay, switch_backoff(3));

        // An answer resets the backoff.
        coordinators.answered(3);
        let delay = coordinators.failed(3, &tonic::Status::unknown("stream reset"));
        assert_eq!(delay, switch_backoff(1));
        assert_eq!(coordinators.current().address, "c:3");
    }

    // The clock is paused: a call that would otherwise retry for a minute ends
    // as soon as the worker gives up, without the clock moving.
    #[tokio::test(start_paused = true)]
    async fn a_stopping_worker_ends_calls_under_way_and_retries_nothing() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        let give_up = Some(Instant::now() + Duration::from_secs(60));
        let unavailable = tonic::Status::unavailable("connection refused");
        assert!(coordinators.retry_after(0, &unavailable, give_up).is_some());
        let started = Instant::now();
        let call = coordinators.call(give_up, |_agent| async {
            std::future::pending::<Result<tonic::Response<()>, tonic::Status>>().await
        });
        let stop = async {
            tokio::task::yield_now().await;
            coordinators.stop();
        };
        let (answer, ()) = tokio::join!(call, stop);
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Cancelled);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(coordinators.stopping());
        let generation = coordinators.current().generation;
        assert_eq!(
            coordinators.retry_after(generation, &unavailable, give_up),
            None
        );
    }

    #[tokio::test]
    async fn hints_outside_the_list_are_followed_and_hints_to_itself_are_not() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        // The leader's advertised address need not be one of the configured ones.
        coordinators.failed(0, &unavailable_with_hint("10.1.1.1:7443"));
        assert_eq!(coordinators.current().address, "10.1.1.1:7443");
        // A member naming itself as the leader while refusing: try the next one.
        coordinators.failed(1, &unavailable_with_hint("10.1.1.1:7443"));
        assert_eq!(coordinators.current().address, "b:2");
    }

    #[tokio::test]
    async fn hints_going_round_in_a_circle_are_slowed_down() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        let mut delays = Vec::new();
        for generation in 0..6 {
            let hint = if generation % 2 == 0 { "b:2" } else { "a:1" };
            delays.push(coordinators.failed(generation, &unavailable_with_hint(hint)));
        }
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert!(delays[3..].iter().all(|d| !d.is_zero()), "{delays:?}");
    }

    // The clock is paused and jumps ahead whenever every task waits: the waits
    // between tries take no real time, and the instant a call gives up is exact.
    #[tokio::test(start_paused = true)]
    async fn a_call_follows_the_switch_and_gives_up_on_time() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        let mut seen = Vec::new();
        let answer = coordinators
            .call(None, |_agent| {
                let address = coordinators.current().address;
                seen.push(address.clone());
                async move {
                    if address == "a:1" {
                        Err(unavailable_with_hint("b:2"))
                    } else {
                        Ok(tonic::Response::new(7))
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(seen, ["a:1", "b:2"]);

        // An answer that is not about leadership or reachability is returned as is.
        let refused: Result<(), _> = coordinators
            .call(None, |_agent| async {
                Err(tonic::Status::permission_denied("not yours"))
            })
            .await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);

        // Nobody answers: the call tries again on each coordinator switched to, and
        // gives up before a wait that would end past `give_up`. A call that kept
        // trying past it would run into the (virtual) minute below and fail.
        let give_up = Instant::now() + Duration::from_millis(300);
        let mut tries = 0;
        let down: Result<(), _> = tokio::time::timeout(
            Duration::from_secs(60),
            coordinators.call(Some(give_up), |_agent| {
                tries += 1;
                async { Err(tonic::Status::unavailable("connection refused")) }
            }),
        )
        .await
        .expect("the call gives up instead of trying forever");
        assert_eq!(down.unwrap_err().code(), tonic::Code::Unavailable);
        assert!(tries > 1, "it tried again after a switch ({tries} tries)");
        let late = Instant::now().saturating_duration_since(give_up);
        assert!(
            Instant::now() < give_up,
            "the call gave up {late:?} after its deadline"
        );
    }

    /// A coordinator that keeps its connection open but never answers (frozen, cut
    /// off): the call gives up on it at its deadline and is made on the next one.
    #[tokio::test(start_paused = true)]
    async fn a_call_nobody_answers_moves_on_at_its_deadline() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2"]);
        let mut seen = Vec::new();
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            coordinators.call(None, |_agent| {
                let address = coordinators.current().address;
                seen.push(address.clone());
                async move {
                    if address == "a:1" {
                        std::future::pending::<Result<tonic::Response<u32>, tonic::Status>>().await
                    } else {
                        Ok(tonic::Response::new(7))
                    }
                }
            }),
        )
        .await
        .expect("the call does not wait forever on a silent coordinator");
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(seen, ["a:1", "b:2"]);
    }

    /// The session finds the new leader while an attempt's call hangs on the old
    /// one: the call is made again on the new leader at once, not at its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_call_follows_a_switch_made_by_another() {
        let (_dir, coordinators) = coordinators(&["a:1", "b:2", "c:3"]);
        let start = Instant::now();
        let mut seen = Vec::new();
        let call = coordinators.call(None, |_agent| {
            let address = coordinators.current().address;
            seen.push(address.clone());
            async move {
                if address == "a:1" {
                    std::future::pending::<Result<tonic::Response<u32>, tonic::Status>>().await
                } else {
                    Ok(tonic::Response::new(9))
                }
            }
        });
        let switch = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            coordinators.failed(0, &unavailable_with_hint("c:3"));
        };
        let (answer, ()) = tokio::join!(call, switch);
        assert_eq!(answer.unwrap(), 9);
        assert_eq!(seen, ["a:1", "c:3"]);
        assert!(
            Instant::now() - start < coordinators.timings().worker_call(),
            "the call waited for its deadline instead of following the switch"
        );
    }
}
