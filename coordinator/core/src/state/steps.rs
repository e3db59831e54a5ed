//! A run's step records with what the transitions and views look up in them,
//! derived once instead of found by walking every step: each step's position by
//! name, the number of steps in each state, and the waiting steps without a
//! cache key (those readiness may move).
//!
//! [`Steps`] reads like the slice of records it holds (`Deref`); a record
//! changes through `steps[i]` (`IndexMut`) or [`Steps::iter_mut`], which note
//! its position. [`Steps::refresh`] brings the counts up to date for the noted
//! positions only (the state machine calls it before reading them and after
//! every command), and [`Steps::take_touched`] hands the positions changed since
//! the last call to the ready index (`state::ready`). Nothing derived is
//! serialized: a `Steps` read back (a snapshot, a restart) derives it all again.
//! Invariant: a step's name and position never change once the run exists.

use std::collections::{BTreeSet, HashMap};
use std::ops::{Deref, Index, IndexMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{StepRecord, StepState};

/// Every [`StepState`], in the order of [`StateCounts`].
pub const STEP_STATES: [StepState; 9] = [
    StepState::Waiting,
    StepState::Queued,
    StepState::Assigned,
    StepState::Running,
    StepState::Succeeded,
    StepState::Failed,
    StepState::TimedOut,
    StepState::Cancelled,
    StepState::Skipped,
];

fn slot(state: StepState) -> usize {
    match state {
        StepState::Waiting => 0,
        StepState::Queued => 1,
        StepState::Assigned => 2,
        StepState::Running => 3,
        StepState::Succeeded => 4,
        StepState::Failed => 5,
        StepState::TimedOut => 6,
        StepState::Cancelled => 7,
        StepState::Skipped => 8,
    }
}

/// How many steps of a run are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts([usize; 9]);

impl StateCounts {
    /// The steps in `state`.
    pub fn of(&self, state: StepState) -> usize {
        self.0[slot(state)]
    }

    /// Every state with its count, in [`STEP_STATES`] order (zeros included).
    pub fn iter(&self) -> impl Iterator<Item = (StepState, usize)> + '_ {
        STEP_STATES.iter().map(|s| (*s, self.0[slot(*s)]))
    }

    /// The steps not yet in a terminal state.
    pub fn unfinished(&self) -> usize {
        self.iter()
            .filter(|(s, _)| !s.is_terminal())
            .map(|(_, n)| n)
            .sum()
    }

    /// The steps holding room on a worker (assigned or running).
    pub fn active(&self) -> usize {
        self.of(StepState::Assigned) + self.of(StepState::Running)
    }

    fn add(&mut self, state: StepState) {
        self.0[slot(state)] += 1;
    }

    fn remove(&mut self, state: StepState) {
        self.0[slot(state)] -= 1;
    }
}

/// What the counts last saw of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    state: StepState,
    keyed: bool,
}

impl Seen {
    fn of(record: &StepRecord) -> Seen {
        Seen {
            state: record.state,
            keyed: record.cache_key.is_some(),
        }
    }

    /// Waiting for its dependencies (a waiting step with a key waits behind an
    /// identical step instead).
    fn movable(self) -> bool {
        self.state == StepState::Waiting && !self.keyed
    }
}

/// Positions changed since the last [`Steps::take_touched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Only these (ascending, each once).
    Some(Vec<u32>),
    /// Possibly every step.
    All,
}

/// A run's step records in pipeline (topological) order, with derived lookups.
#[derive(Debug, Clone)]
pub struct Steps {
    records: Vec<StepRecord>,
    /// Derived: position by step name.
    positions: HashMap<String, u32>,
    /// Derived: each step as the counts last saw it.
    seen: Vec<Seen>,
    counts: StateCounts,
    /// Derived: the positions of the steps in each state (by [`STEP_STATES`]
    /// order), for a page of the steps in one state.
    by_state: [BTreeSet<u32>; 9],
    /// Derived: waiting steps without a cache key, by position.
    movable: BTreeSet<u32>,
    /// Positions changed since the last `refresh` (may repeat).
    pending: Vec<u32>,
    /// Positions changed since the last `take_touched` (may repeat); `None`
    /// when possibly all were.
    touched: Option<Vec<u32>>,
}

impl Steps {
    /// Steps from their records, every derived lookup built.
    pub fn new(records: Vec<StepRecord>) -> Steps {
        let positions = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), position(i)))
            .collect();
        let mut steps = Steps {
            seen: Vec::with_capacity(records.len()),
            records,
            positions,
            counts: StateCounts::default(),
            by_state: Default::default(),
            movable: BTreeSet::new(),
            pending: Vec::new(),
            touched: None,
        };
        for (i, record) in steps.records.iter().enumerate() {
            let seen = Seen::of(record);
            steps.counts.add(seen.state);
            steps.by_state[slot(seen.state)].insert(position(i));
            if seen.movable() {
                steps.movable.insert(position(i));
            }
            steps.seen.push(seen);
        }
        steps
    }

    /// The position of the step named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.positions.get(name).map(|p| *p as usize)
    }

    /// The record of the step named `name`.
    pub fn named(&self, name: &str) -> Option<&StepRecord> {
        self.position(name).map(|p| &self.records[p])
    }

    /// Every record, to change (all are noted as changed).
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, StepRecord> {
        self.pending.extend(0..position(self.records.len()));
        self.touched = None;
        self.records.iter_mut()
    }

    /// Brings the counts up to date with the records changed since the last call.
    pub fn refresh(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable();
        pending.dedup();
        for p in pending {
            let i = p as usize;
            let now = Seen::of(&self.records[i]);
            let before = self.seen[i];
            if now == before {
                continue;
            }
            self.counts.remove(before.state);
            self.counts.add(now.state);
            if before.state != now.state {
                self.by_state[slot(before.state)].remove(&p);
                self.by_state[slot(now.state)].insert(p);
            }
            if before.movable() {
                self.movable.remove(&p);
            }
            if now.movable() {
                self.movable.insert(p);
            }
            self.seen[i] = now;
        }
    }

    /// Whether records changed since the last [`Steps::refresh`].
    pub fn stale(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many steps are in each state (as of the last [`Steps::refresh`]).
    pub fn counts(&self) -> &StateCounts {
        debug_assert!(!self.stale(), "steps changed but not refreshed");
        &self.counts
    }

    /// The waiting steps without a cache key, by position ascending (as of the
    /// last [`Steps::refresh`]).
    pub fn movable(&self) -> impl Iterator<Item = usize> + '_ {
        debug_assert!(!self.stale(), "steps changed but not refreshed");
        self.movable.iter().map(|p| *p as usize)
    }

    /// A page of the steps: the positions of at most `limit` steps from the
    /// `offset`-th of those in `state` (every step when `None`), in pipeline
    /// order, and how many steps `state` matches (as of the last
    /// [`Steps::refresh`]). Costs the page and the offset, not the run.
    pub fn page(
        &self,
        state: Option<StepState>,
        offset: usize,
        limit: usize,
    ) -> (Vec<usize>, usize) {
        debug_assert!(!self.stale(), "steps changed but not refreshed");
        match state {
            None => {
                let end = offset.saturating_add(limit).min(self.records.len());
                ((offset.min(end)..end).collect(), self.records.len())
            }
            Some(state) => {
                let members = &self.by_state[slot(state)];
                let page = members
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|p| *p as usize)
                    .collect();
                (page, members.len())
            }
        }
    }

    /// Whether records changed since the last [`Steps::take_touched`].
    pub fn has_touched(&self) -> bool {
        self.touched.as_ref().is_none_or(|t| !t.is_empty())
    }

    /// The positions changed since the last call, and forgets them.
    pub fn take_touched(&mut self) -> Touched {
        match self.touched.replace(Vec::new()) {
            None => Touched::All,
            Some(mut positions) => {
                positions.sort_unstable();
                positions.dedup();
                Touched::Some(positions)
            }
        }
    }

    /// The records.
    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }

    /// Whether the derived lookups equal those built afresh from the records
    /// (tests compare after every command).
    pub fn derived_matches_records(&self) -> bool {
        let fresh = Steps::new(self.records.clone());
        !self.stale()
            && self.positions == fresh.positions
            && self.seen == fresh.seen
            && self.counts == fresh.counts
            && self.by_state == fresh.by_state
            && self.movable == fresh.movable
    }
}

fn position(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl From<Vec<StepRecord>> for Steps {
    fn from(records: Vec<StepRecord>) -> Steps {
        Steps::new(records)
    }
}

impl FromIterator<StepRecord> for Steps {
    fn from_iter<I: IntoIterator<Item = StepRecord>>(iter: I) -> Steps {
        Steps::new(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Steps {
    type Item = &'a StepRecord;
    type IntoIter = std::slice::Iter<'a, StepRecord>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

impl Deref for Steps {
    type Target = [StepRecord];
    fn deref(&self) -> &[StepRecord] {
        &self.records
    }
}

impl Index<usize> for Steps {
    type Output = StepRecord;
    fn index(&self, i: usize) -> &StepRecord {
        &self.records[i]
    }
}

impl IndexMut<usize> for Steps {
    fn index_mut(&mut self, i: usize) -> &mut StepRecord {
        let p = position(i);
        self.pending.push(p);
        if let Some(touched) = &mut self.touched {
            touched.push(p);
        }
        &mut self.records[i]
    }
}

impl PartialEq for Steps {
    fn eq(&self, other: &Steps) -> bool {
        self.records == other.records
    }
}

impl Eq for Steps {}

impl Serialize for Steps {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.records.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Steps, D::Error> {
        Vec::<StepRecord>::deserialize(deserializer).map(Steps::new)
    }
}

#[cfg(test)]
mod tests;
