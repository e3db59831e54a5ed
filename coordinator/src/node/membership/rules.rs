//! The rules of a membership change, as pure functions of the configuration and
//! of what the leader knows: whether a change leaves a quorum the leader can
//! reach, whether a learner is ready to vote, and whether a new member's
//! addresses are its own. Unit-tested here without a network.

use std::collections::BTreeSet;

use crate::state::Member;

/// How far (in entries) a learner may be behind the leader's last index and
/// still be promoted: it is then as current as a follower under load, and its
/// vote cannot stall commits while it copies the rest.
pub const CATCH_UP_SLACK: u64 = 64;

/// A change of the Raft configuration, one member at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new member that receives the log but does not vote.
    AddLearner(u64),
    /// A learner becomes a voter.
    Promote(u64),
    /// A voter or a learner leaves.
    Remove(u64),
}

/// The configuration a change applies to, and which members the leader has
/// heard from recently (itself included).
#[derive(Debug, Clone, Default)]
pub struct Configuration {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub live: BTreeSet<u64>,
}

/// How many voters out of `voters` make a quorum.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn list(ids: &BTreeSet<u64>) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a change that would leave the cluster without a quorum of voters the
/// leader can reach (the voters after the change that it heard from recently
/// must be a quorum of them), with the reason; a change of a learner never
/// affects the quorum.
pub fn check_change(change: Change, config: &Configuration) -> Result<(), String> {
    let mut voters = config.voters.clone();
    match change {
        Change::AddLearner(id) => {
            if config.voters.contains(&id) || config.learners.contains(&id) {
                return Err(format!("member {id} is already in the cluster"));
            }
            return Ok(());
        }
        Change::Promote(id) => {
            if !config.learners.contains(&id) {
                return Err(format!("member {id} is not a learner"));
            }
            voters.insert(id);
        }
        Change::Remove(id) => {
            if config.learners.contains(&id) {
                // A learner does not vote: removing it changes no quorum, even
                // when it never started.
                return Ok(());
            }
            if !voters.remove(&id) {
                return Err(format!("member {id} is not in the cluster"));
            }
            if voters.is_empty() {
                return Err(format!(
                    "member {id} is the last voter: a cluster cannot remove its last voting member"
                ));
            }
        }
    }
    let live: BTreeSet<u64> = voters.intersection(&config.live).copied().collect();
    let needed = quorum(voters.len());
    if live.len() >= needed {
        return Ok(());
    }
    let unreachable: BTreeSet<u64> = voters.difference(&live).copied().collect();
    let what = match change {
        Change::Promote(id) => format!("promoting member {id}"),
        Change::Remove(id) => format!("removing member {id}"),
        Change::AddLearner(_) => unreachable!("a learner changes no quorum"),
    };
    Err(format!(
        "{what} would leave the cluster without a reachable quorum: the voters would be {} \
         and a quorum of them is {needed}, but the leader has heard recently only from {} \
         (not from {}); bring those members back, or remove an unreachable voter instead",
        list(&voters),
        list(&live),
        list(&unreachable),
    ))
}

/// What the leader knows of a learner's copy of the log (raft-rs's progress
/// tracker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The highest index the learner is known to hold.
    pub matched: u64,
    /// The leader's last index.
    pub last_index: u64,
    /// The leader streams entries to it (it answered; not probing, not
    /// waiting for a snapshot).
    pub replicating: bool,
}

/// Why a learner is not promoted yet, or `None` when it may be: its peer
/// address answered as a coordinator of this cluster (`reachable`, else the
/// probe's error), and it has caught up.
pub fn promotion_blocker(reachable: Result<(), &str>, progress: Progress) -> Option<String> {
    if let Err(error) = reachable {
        return Some(format!(
            "waiting to reach it as a coordinator of this cluster: {error}"
        ));
    }
    if !progress.replicating {
        return Some(format!(
            "waiting for it to take the log (the leader is probing it or sending it a \
             snapshot; it holds {} of {} entries)",
            progress.matched, progress.last_index
        ));
    }
    let behind = progress.last_index.saturating_sub(progress.matched);
    if behind > CATCH_UP_SLACK {
        return Some(format!(
            "catching up: it holds {} of {} entries ({behind} behind; promoted within \
             {CATCH_UP_SLACK})",
            progress.matched, progress.last_index
        ));
    }
    None
}

/// Refuses a new member whose id or addresses another member already has: the
/// leader would otherwise send one member's traffic to another.
pub fn check_new_member<'a>(
    new: &Member,
    existing: impl IntoIterator<Item = &'a Member>,
) -> Result<(), String> {
    for member in existing {
        if member.id == new.id {
            continue;
        }
        for (what, address) in [
            ("client address", &new.client_address),
            ("peer address", &new.peer_address),
        ] {
            if *address == member.client_address || *address == member.peer_address {
                return Err(format!(
                    "the new member's {what} {address} is already member {}'s; each member \
                     needs addresses of its own",
                    member.id
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(voters: &[u64], learners: &[u64], live: &[u64]) -> Configuration {
        Configuration {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            live: live.iter().copied().collect(),
        }
    }

    #[test]
    fn quorums() {
        assert_eq!(
            [1, 2, 3, 4, 5, 6].map(quorum),
            [1, 2, 2, 3, 3, 4],
            "a majority of the voters"
        );
    }

    #[test]
    fn a_learner_comes_and_goes_without_touching_the_quorum() {
        // A one-member cluster adds a member nobody runs: it is a learner, and
        // the one voter keeps its quorum; removing the learner is always safe.
        let alone = config(&[1], &[], &[1]);
        assert_eq!(check_change(Change::AddLearner(2), &alone), Ok(()));
        let with_phantom = config(&[1], &[2], &[1]);
        assert_eq!(check_change(Change::Remove(2), &with_phantom), Ok(()));
        let again = check_change(Change::AddLearner(2), &with_phantom).unwrap_err();
        assert_eq!(again, "member 2 is already in the cluster");
        // Even with voters down, a learner may be removed.
        let degraded = config(&[1, 2, 3], &[4], &[1]);
        assert_eq!(check_change(Change::Remove(4), &degraded), Ok(()));
    }

    #[test]
    fn removing_a_live_voter_beside_a_dead_one_is_refused_with_the_reason() {
        // 3 voters, member 3 down: removing live member 2 leaves {1, 3}, whose
        // quorum (2) the leader cannot reach.
        let cluster = config(&[1, 2, 3], &[], &[1, 2]);
        let refusal = check_change(Change::Remove(2), &cluster).unwrap_err();
        assert_eq!(
            refusal,
            "removing member 2 would leave the cluster without a reachable quorum: the voters \
             would be 1, 3 and a quorum of them is 2, but the leader has heard recently only \
             from 1 (not from 3); bring those members back, or remove an unreachable voter instead"
        );
        // Removing the dead one instead is fine, and so is removing the leader
        // itself while the others are live.
        assert_eq!(check_change(Change::Remove(3), &cluster), Ok(()));
        let healthy = config(&[1, 2, 3], &[], &[1, 2, 3]);
        assert_eq!(check_change(Change::Remove(1), &healthy), Ok(()));
        // 5 voters, 2 down: removing a live one leaves 4 voters needing 3, with
        // only 2 live.
        let five = config(&[1, 2, 3, 4, 5], &[], &[1, 2, 3]);
        assert!(check_change(Change::Remove(3), &five).is_err());
        assert_eq!(check_change(Change::Remove(5), &five), Ok(()));
    }

    #[test]
    fn the_last_voter_and_strangers_cannot_be_removed() {
        let alone = config(&[1], &[], &[1]);
        let refusal = check_change(Change::Remove(1), &alone).unwrap_err();
        assert!(refusal.contains("last voter"), "{refusal}");
        let stranger = check_change(Change::Remove(9), &alone).unwrap_err();
        assert_eq!(stranger, "member 9 is not in the cluster");
    }

    #[test]
    fn promotion_needs_a_learner_and_a_reachable_quorum_after_it() {
        let cluster = config(&[1, 2, 3], &[4], &[1, 2, 3, 4]);
        assert_eq!(check_change(Change::Promote(4), &cluster), Ok(()));
        let voter = check_change(Change::Promote(2), &cluster).unwrap_err();
        assert_eq!(voter, "member 2 is not a learner");
        // Two voters: both must be live (quorum 2 of 2); a learner the leader
        // has not heard from would make a cluster that cannot commit.
        let pair = config(&[1], &[2], &[1]);
        let refusal = check_change(Change::Promote(2), &pair).unwrap_err();
        assert!(
            refusal.starts_with("promoting member 2 would leave"),
            "{refusal}"
        );
    }

    #[test]
    fn a_learner_is_promoted_once_reachable_and_caught_up() {
        let caught_up = Progress {
            matched: 1_000,
            last_index: 1_010,
            replicating: true,
        };
        assert_eq!(promotion_blocker(Ok(()), caught_up), None);
        let unreachable = promotion_blocker(Err("connection refused"), caught_up).unwrap();
        assert_eq!(
            unreachable,
            "waiting to reach it as a coordinator of this cluster: connection refused"
        );
        let probing = Progress {
            matched: 0,
            last_index: 50,
            replicating: false,
        };
        let blocker = promotion_blocker(Ok(()), probing).unwrap();
        assert!(blocker.contains("holds 0 of 50 entries"), "{blocker}");
        let behind = Progress {
            matched: 100,
            last_index: 100 + CATCH_UP_SLACK + 1,
            replicating: true,
        };
        let blocker = promotion_blocker(Ok(()), behind).unwrap();
        assert!(
            blocker.starts_with("catching up: it holds 100 of"),
            "{blocker}"
        );
        let at_the_edge = Progress {
            matched: 100,
            last_index: 100 + CATCH_UP_SLACK,
            replicating: true,
        };
        assert_eq!(promotion_blocker(Ok(()), at_the_edge), None);
    }

    #[test]
    fn a_new_member_needs_addresses_of_its_own() {
        let member = |id: u64, client: &str, peer: &str| Member {
            id,
            client_address: client.to_string(),
            peer_address: peer.to_string(),
            learner: false,
        };
        let existing = [
            member(1, "c1:7443", "c1:7444"),
            member(2, "c2:7443", "c2:7444"),
        ];
        assert_eq!(
            check_new_member(&member(3, "c3:7443", "c3:7444"), &existing),
            Ok(())
        );
        let stolen = check_new_member(&member(3, "c3:7443", "c2:7444"), &existing).unwrap_err();
        assert_eq!(
            stolen,
            "the new member's peer address c2:7444 is already member 2's; each member needs \
             addresses of its own"
        );
        assert!(check_new_member(&member(3, "c1:7444", "c3:7444"), &existing).is_err());
        // A retried add of the same member compares with itself only by id.
        assert_eq!(
            check_new_member(&member(2, "c2:7443", "c2:7444"), &existing),
            Ok(())
        );
    }
}
