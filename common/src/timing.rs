//! The timings every deadline between members, workers and clients is derived
//! from: Raft's tick and election timeout, and the worker lease. They are named
//! once here so that a wait on another process is never longer than the failover
//! it has to survive (a call to a member cut off by a partition stays open until a
//! deadline or keep-alive ends it: HTTP/2 keep-alive alone is not a deadline).
//!
//! Pure arithmetic, no clock: the coordinator builds [`Timings`] from its
//! `[raft]` and `[scheduling]` settings, a worker from the heartbeat interval the
//! leader tells it at registration, and the client from the defaults.

use std::time::Duration;

/// Default length of one Raft tick.
pub const DEFAULT_TICK_MS: u64 = 50;
/// Default ticks without a leader's heartbeat before a follower campaigns.
pub const DEFAULT_ELECTION_TICKS: u64 = 10;
/// Default worker lease: a worker silent this long is declared lost.
pub const DEFAULT_WORKER_LEASE_MS: u64 = 10_000;
/// Workers heartbeat this many times per lease.
pub const HEARTBEATS_PER_LEASE: u64 = 5;
/// A submission of up to this many steps waits no longer than any command.
const SUBMISSION_STEPS_UNCOUNTED: usize = 10_000;
/// Beyond that, one more failover of waiting for each this many steps.
const SUBMISSION_STEPS_PER_FAILOVER: usize = 10_000;

/// The cluster's timing settings, and every deadline derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    tick: Duration,
    election_ticks: u32,
    lease: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings::new(
            DEFAULT_TICK_MS,
            DEFAULT_ELECTION_TICKS,
            DEFAULT_WORKER_LEASE_MS,
        )
    }
}

impl Timings {
    /// From `[raft] tick_ms, election_ticks` and `[scheduling] worker_lease_ms`
    /// (each at least 1).
    pub fn new(tick_ms: u64, election_ticks: u64, lease_ms: u64) -> Timings {
        Timings {
            tick: Duration::from_millis(tick_ms.max(1)),
            election_ticks: election_ticks.clamp(1, u64::from(u32::MAX)) as u32,
            lease: Duration::from_millis(lease_ms.max(1)),
        }
    }

    /// A worker's view: the Raft defaults, and the lease implied by the heartbeat
    /// interval the leader asked for (`HEARTBEATS_PER_LEASE` per lease).
    pub fn from_heartbeat_interval(interval_ms: u64) -> Timings {
        Timings::new(
            DEFAULT_TICK_MS,
            DEFAULT_ELECTION_TICKS,
            interval_ms.max(1).saturating_mul(HEARTBEATS_PER_LEASE),
        )
    }

    /// A follower that hears no leader for this long (raft-rs randomizes it
    /// between one and two of these) starts an election.
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks
    }

    /// How long after a leader goes silent the cluster has a new one, in the
    /// normal case: a follower notices within two election timeouts, and one
    /// split vote costs at most two more.
    pub fn failover(&self) -> Duration {
        self.election_timeout() * 4
    }

    /// The worker lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    // ---- between members ----

    /// A batch of Raft messages that the connection to a peer does not take within
    /// this is stuck (a connection in retransmission back-off): the stream is
    /// dropped and the peer dialled again on a fresh connection.
    pub fn peer_send(&self) -> Duration {
        self.election_timeout()
    }

    /// HTTP/2 keep-alive of the Raft lanes: (interval, timeout). A connection that
    /// stops answering is closed, and redialled, within one election timeout.
    pub fn peer_keepalive(&self) -> (Duration, Duration) {
        let half = self.election_timeout() / 2;
        (half, half)
    }

    /// How long a dial to a peer may take.
    pub fn peer_connect(&self) -> Duration {
        self.election_timeout()
    }

    /// One forwarded proposal waits at most this for the leader's answer (unless
    /// the leader changes first) before it counts as lost and is sent again.
    pub fn forward_attempt(&self) -> Duration {
        self.failover() * 2
    }

    /// How long a proposal waits in all for a leader to take it, across elections.
    pub fn propose_budget(&self) -> Duration {
        self.failover() * 5
    }

    /// How long a linearizable read waits in all for a quorum to confirm a leader,
    /// and each try of it.
    pub fn read_budget(&self) -> (Duration, Duration) {
        (self.propose_budget() / 2, self.election_timeout())
    }

    /// A short question to a peer (its status, whether it holds a blob).
    pub fn peer_question(&self) -> Duration {
        self.failover() / 2
    }

    // ---- workers ----

    /// How often a worker heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / HEARTBEATS_PER_LEASE as u32
    }

    /// A heartbeat not answered within one interval fails, and the worker looks
    /// for the leader elsewhere: it then has most of its lease left to find it.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat_interval()
    }

    /// Every other call of a worker (registration, reports, logs): long enough for
    /// the leader to commit, short enough that two of them fit in the lease.
    pub fn worker_call(&self) -> Duration {
        self.heartbeat_interval() * 2
    }

    // ---- clients and workers ----

    /// HTTP/2 keep-alive of client and worker connections: (interval, timeout). A
    /// member that stops answering (stopped, or cut off) is given up within
    /// two failovers.
    pub fn client_keepalive(&self) -> (Duration, Duration) {
        (self.failover(), self.failover())
    }

    /// The longest one attempt of a client's call may go unanswered: the member's
    /// own wait for a leader plus one failover, so that its answer (even "no
    /// leader") arrives before the client gives up on it.
    pub fn client_attempt(&self) -> Duration {
        self.propose_budget() + self.failover()
    }

    /// How long a client retries a call on other members in all; no attempt
    /// outlives it.
    pub fn client_retry_budget(&self) -> Duration {
        self.propose_budget() + self.failover() * 2
    }

    /// What a submission of `steps` steps may take beyond a small command's
    /// deadlines, at every level that waits for it (the client's attempts and
    /// budget, a member's forward and proposal budget): each member encodes,
    /// syncs, decodes and applies it, and a 100,000-step one is tens of MB
    /// (one failover for each 10,000 steps beyond the first 10,000; none for
    /// a small one). A retry is cheap (it joins the first on the leader), but
    /// giving up early turns a slow success into an error.
    pub fn submission_allowance(&self, steps: usize) -> Duration {
        let extra =
            steps.saturating_sub(SUBMISSION_STEPS_UNCOUNTED) / SUBMISSION_STEPS_PER_FAILOVER;
        self.failover() * u32::try_from(extra).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_defaults_give_the_documented_deadlines() {
        let t = Timings::default();
        assert_eq!(t.election_timeout(), MS(500));
        assert_eq!(t.failover(), MS(2_000));
        assert_eq!(t.peer_send(), MS(500));
        assert_eq!(t.peer_keepalive(), (MS(250), MS(250)));
        assert_eq!(t.forward_attempt(), MS(4_000));
        assert_eq!(t.propose_budget(), MS(10_000));
        assert_eq!(t.read_budget(), (MS(5_000), MS(500)));
        assert_eq!(t.heartbeat_interval(), MS(2_000));
        assert_eq!(t.heartbeat_deadline(), MS(2_000));
        assert_eq!(t.worker_call(), MS(4_000));
        assert_eq!(t.client_attempt(), MS(12_000));
        assert_eq!(t.client_retry_budget(), MS(14_000));
        assert_eq!(t.submission_allowance(5_000), MS(0));
        assert_eq!(t.submission_allowance(19_999), MS(0));
        assert_eq!(t.submission_allowance(20_000), MS(2_000));
        assert_eq!(t.submission_allowance(100_000), MS(18_000));
    }

    #[test]
    fn deadlines_follow_the_settings() {
        let slow = Timings::new(100, 20, 60_000);
        assert_eq!(slow.election_timeout(), MS(2_000));
        assert_eq!(slow.failover(), MS(8_000));
        assert_eq!(slow.propose_budget(), MS(40_000));
        assert_eq!(slow.heartbeat_interval(), MS(12_000));
        // Zeroes cannot make a deadline of zero.
        let tiny = Timings::new(0, 0, 0);
        assert!(!tiny.election_timeout().is_zero());
        assert!(!tiny.heartbeat_interval().is_zero());
    }

    #[test]
    fn a_worker_derives_its_lease_from_the_heartbeat_interval() {
        let t = Timings::from_heartbeat_interval(2_000);
        assert_eq!(t.lease(), MS(10_000));
        assert_eq!(t, Timings::default());
        assert_eq!(Timings::from_heartbeat_interval(0).lease(), MS(5));
    }

    /// The orderings the failover depends on, for a range of settings.
    #[test]
    fn the_deadlines_nest() {
        for tick in [1, 10, 50, 100, 500] {
            for election in [2, 5, 10, 30] {
                for lease in [500, 2_000, 10_000, 120_000] {
                    let t = Timings::new(tick, election, lease);
                    // A stuck peer stream is redialled within an election timeout.
                    let (interval, timeout) = t.peer_keepalive();
                    assert!(interval + timeout <= t.election_timeout());
                    assert!(t.peer_send() <= t.election_timeout());
                    // A forward gives up on a silent leader before the proposal's
                    // whole budget is spent, leaving room to resend it.
                    assert!(t.forward_attempt() + t.failover() <= t.propose_budget());
                    // A member answers (even "no leader") before its client gives
                    // up on the attempt, and one attempt fits in the retry budget.
                    assert!(t.propose_budget() < t.client_attempt());
                    assert!(t.client_attempt() < t.client_retry_budget());
                    // A worker's heartbeat fails over well within its lease.
                    assert!(t.heartbeat_deadline() * 2 < t.lease());
                    assert!(t.worker_call() * 2 < t.lease());
                }
            }
        }
    }
}
