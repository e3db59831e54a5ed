//! The runs, and the derived index of their queued steps that a scheduling pass
//! reads instead of walking every run.
//!
//! [`Runs`] reads like the map it wraps (`Deref`), but changes go through its own
//! `get_mut`, `insert` and `remove`, which note the run as touched; `State::apply`
//! then calls [`Runs::settle`], which brings the index up to date for the touched
//! runs only. The index is derived, never serialized: building a `Runs` from its
//! runs (`collect`, as `State::from_records` does after a restart or a snapshot)
//! indexes every run, so every member holds the same index.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;

use super::{Run, RunId, StepState};

/// A scheduling class: priority (higher first), then project.
pub type Class = (Reverse<i32>, String);

/// What the index holds of one run with queued steps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    class: Class,
    /// Its queued steps, by position in the pipeline, ascending.
    queued: Vec<u32>,
    /// Those with a retry backoff, and its end.
    backoff: Vec<(i64, u32)>,
}

/// The queued steps of every run that is not finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadyIndex {
    /// Runs with at least one queued step, by class; oldest (lowest id) first.
    by_class: BTreeMap<Class, BTreeSet<RunId>>,
    /// Queued steps waiting out a retry backoff: (ready at, run, step position).
    backoff: BTreeSet<(i64, RunId, u32)>,
    entries: BTreeMap<RunId, Entry>,
}

impl ReadyIndex {
    /// The classes with queued steps, highest priority first, and their runs
    /// oldest first.
    pub fn classes(&self) -> impl Iterator<Item = (&Class, &BTreeSet<RunId>)> {
        self.by_class.iter()
    }

    /// The positions of a run's queued steps, in pipeline order.
    pub fn queued_steps(&self, run: RunId) -> &[u32] {
        self.entries.get(&run).map_or(&[], |e| e.queued.as_slice())
    }

    /// The earliest end of a retry backoff after `now_ms`.
    pub fn next_retry_after(&self, now_ms: i64) -> Option<i64> {
        self.backoff
            .range((now_ms, RunId::MAX, u32::MAX)..)
            .map(|(at, _, _)| *at)
            .find(|at| *at > now_ms)
    }

    /// Brings one run's entries up to date; true when a step of it became
    /// queued (it was not in the index as queued before).
    fn refresh(&mut self, id: RunId, run: Option<&Run>) -> bool {
        let new = run.and_then(entry_of);
        let old = self.entries.remove(&id);
        if let Some(old) = &old {
            if let Some(runs) = self.by_class.get_mut(&old.class) {
                runs.remove(&id);
                if runs.is_empty() {
                    self.by_class.remove(&old.class);
                }
            }
            for (at, step) in &old.backoff {
                self.backoff.remove(&(*at, id, *step));
            }
        }
        let Some(new) = new else { return false };
        self.by_class
            .entry(new.class.clone())
            .or_default()
            .insert(id);
        for (at, step) in &new.backoff {
            self.backoff.insert((*at, id, *step));
        }
        let newly_queued = match &old {
            None => true,
            Some(old) => new
                .queued
                .iter()
                .any(|s| old.queued.binary_search(s).is_err()),
        };
        self.entries.insert(id, new);
        newly_queued
    }
}

fn entry_of(run: &Run) -> Option<Entry> {
    if run.state.is_terminal() {
        return None;
    }
    let mut queued = Vec::new();
    let mut backoff = Vec::new();
    for (position, step) in run.steps.iter().enumerate() {
        if step.state != StepState::Queued {
            continue;
        }
        let position = u32::try_from(position).unwrap_or(u32::MAX);
        queued.push(position);
        if let Some(at) = step.not_before_ms {
            backoff.push((at, position));
        }
    }
    if queued.is_empty() {
        return None;
    }
    Some(Entry {
        class: (Reverse(run.pipeline.priority), run.pipeline.project.clone()),
        queued,
        backoff,
    })
}

/// Every run by id, with the [`ReadyIndex`] of their queued steps.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    map: BTreeMap<RunId, Arc<Run>>,
    /// Runs changed since the last [`Runs::settle`].
    touched: BTreeSet<RunId>,
    index: ReadyIndex,
}

impl Deref for Runs {
    type Target = BTreeMap<RunId, Arc<Run>>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl PartialEq for Runs {
    fn eq(&self, other: &Runs) -> bool {
        self.map == other.map
    }
}

impl FromIterator<(RunId, Arc<Run>)> for Runs {
    fn from_iter<I: IntoIterator<Item = (RunId, Arc<Run>)>>(iter: I) -> Runs {
        let map: BTreeMap<RunId, Arc<Run>> = iter.into_iter().collect();
        let mut runs = Runs {
            touched: map.keys().copied().collect(),
            map,
            index: ReadyIndex::default(),
        };
        runs.settle();
        runs
    }
}

impl From<BTreeMap<RunId, Arc<Run>>> for Runs {
    fn from(map: BTreeMap<RunId, Arc<Run>>) -> Runs {
        map.into_iter().collect()
    }
}

impl Runs {
    /// A run to change (with `Arc::make_mut`); noted for the index.
    pub fn get_mut(&mut self, id: &RunId) -> Option<&mut Arc<Run>> {
        self.touched.insert(*id);
        self.map.get_mut(id)
    }

    pub fn insert(&mut self, id: RunId, run: Arc<Run>) -> Option<Arc<Run>> {
        self.touched.insert(id);
        self.map.insert(id, run)
    }

    pub fn remove(&mut self, id: &RunId) -> Option<Arc<Run>> {
        self.touched.insert(*id);
        self.map.remove(id)
    }

    /// Brings the index up to date with the runs changed since the last call;
    /// true when a step became queued.
    pub fn settle(&mut self) -> bool {
        let mut newly_queued = false;
        for id in std::mem::take(&mut self.touched) {
            newly_queued |= self.index.refresh(id, self.map.get(&id).map(|r| &**r));
        }
        newly_queued
    }

    /// The index of queued steps (as of the last [`Runs::settle`]).
    pub fn ready(&self) -> &ReadyIndex {
        debug_assert!(self.touched.is_empty(), "runs changed but not settled");
        &self.index
    }

    /// The index as a fresh build from the runs would have it (tests compare).
    pub fn rebuilt_index(&self) -> ReadyIndex {
        let runs: Runs = self.map.clone().into();
        runs.index
    }
}
