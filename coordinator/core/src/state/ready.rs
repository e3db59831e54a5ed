//! The runs, and the derived index of their queued steps that a scheduling pass
//! reads instead of walking every run.
//!
//! [`Runs`] reads like the map it wraps (`Deref`), but changes go through its own
//! `get_mut`, `insert` and `remove`, which note the run as touched; `State::apply`
//! then calls [`Runs::settle`], which brings the index up to date for the touched
//! runs only, and within a run for the steps it changed only (`Steps::take_touched`),
//! so a command costs what it changes, not the size of its run. The index is derived, never serialized: building a `Runs` from its
//! runs (`collect`, as `State::from_records` does after a restart or a snapshot)
//! indexes every run, so every member holds the same index.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;

use super::{Run, RunId, StepState, Touched};

/// A scheduling class: priority (higher first), then project.
pub type Class = (Reverse<i32>, String);

/// What the index holds of one run that is not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    class: Class,
    /// Its queued steps, by position in the pipeline.
    queued: BTreeSet<u32>,
    /// Those with a retry backoff: position to its end.
    backoff: BTreeMap<u32, i64>,
}

/// The queued steps of every run that is not finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadyIndex {
    /// Runs with at least one queued step, by class; oldest (lowest id) first.
    by_class: BTreeMap<Class, BTreeSet<RunId>>,
    /// Queued steps waiting out a retry backoff: (ready at, run, step position).
    backoff: BTreeSet<(i64, RunId, u32)>,
    /// Every run that is not finished (with or without queued steps).
    entries: BTreeMap<RunId, Entry>,
}

impl ReadyIndex {
    /// The classes with queued steps, highest priority first, and their runs
    /// oldest first.
    pub fn classes(&self) -> impl Iterator<Item = (&Class, &BTreeSet<RunId>)> {
        self.by_class.iter()
    }

    /// The positions of a run's queued steps, in pipeline order.
    pub fn queued_steps(&self, run: RunId) -> impl Iterator<Item = u32> + '_ {
        self.entries
            .get(&run)
            .into_iter()
            .flat_map(|e| e.queued.iter().copied())
    }

    /// The earliest end of a retry backoff after `now_ms`.
    pub fn next_retry_after(&self, now_ms: i64) -> Option<i64> {
        self.backoff
            .range((now_ms, RunId::MAX, u32::MAX)..)
            .map(|(at, _, _)| *at)
            .find(|at| *at > now_ms)
    }

    /// Brings one run's entry up to date with the steps `touched` since the
    /// last refresh (all of them for a run new to the index); true when a step
    /// of it became queued.
    fn refresh(&mut self, id: RunId, run: Option<&Run>, touched: Touched) -> bool {
        let live = run.filter(|r| !r.state.is_terminal());
        let Some(run) = live else {
            self.drop_entry(id);
            return false;
        };
        let positions = match touched {
            Touched::Some(positions) if self.entries.contains_key(&id) => positions,
            _ => {
                let old = self.drop_entry(id);
                let new = entry_of(run);
                let newly = new
                    .queued
                    .iter()
                    .any(|p| old.as_ref().is_none_or(|o: &Entry| !o.queued.contains(p)));
                self.put_entry(id, new);
                return newly;
            }
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        let was_listed = !entry.queued.is_empty();
        let mut newly = false;
        for p in positions {
            let Some(step) = run.steps.get(p as usize) else {
                continue;
            };
            let queued = step.state == StepState::Queued;
            if queued {
                newly |= entry.queued.insert(p);
            } else {
                entry.queued.remove(&p);
            }
            let wait = step.not_before_ms.filter(|_| queued);
            let before = match wait {
                Some(at) => entry.backoff.insert(p, at),
                None => entry.backoff.remove(&p),
            };
            if before != wait {
                if let Some(at) = before {
                    self.backoff.remove(&(at, id, p));
                }
                if let Some(at) = wait {
                    self.backoff.insert((at, id, p));
                }
            }
        }
        let listed = !entry.queued.is_empty();
        if listed != was_listed {
            let class = entry.class.clone();
            if listed {
                self.by_class.entry(class).or_default().insert(id);
            } else {
                self.unlist(&class, id);
            }
        }
        newly
    }

    fn unlist(&mut self, class: &Class, id: RunId) {
        if let Some(runs) = self.by_class.get_mut(class) {
            runs.remove(&id);
            if runs.is_empty() {
                self.by_class.remove(class);
            }
        }
    }

    fn drop_entry(&mut self, id: RunId) -> Option<Entry> {
        let old = self.entries.remove(&id)?;
        self.unlist(&old.class, id);
        for (step, at) in &old.backoff {
            self.backoff.remove(&(*at, id, *step));
        }
        Some(old)
    }

    fn put_entry(&mut self, id: RunId, new: Entry) {
        if !new.queued.is_empty() {
            self.by_class
                .entry(new.class.clone())
                .or_default()
                .insert(id);
        }
        for (step, at) in &new.backoff {
            self.backoff.insert((*at, id, *step));
        }
        self.entries.insert(id, new);
    }
}

/// A run's entry built from all of its steps (a run that is not finished).
fn entry_of(run: &Run) -> Entry {
    let mut queued = BTreeSet::new();
    let mut backoff = BTreeMap::new();
    for (position, step) in run.steps.iter().enumerate() {
        if step.state != StepState::Queued {
            continue;
        }
        let position = u32::try_from(position).unwrap_or(u32::MAX);
        queued.insert(position);
        if let Some(at) = step.not_before_ms {
            backoff.insert(position, at);
        }
    }
    Entry {
        class: (Reverse(run.pipeline.priority), run.pipeline.project.clone()),
        queued,
        backoff,
    }
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
        // A run put in place of another is indexed afresh.
        self.index.drop_entry(id);
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
            let touched = match self.map.get_mut(&id) {
                // Only a run whose steps changed is made unique (it already is:
                // they changed through `Arc::make_mut`).
                Some(run) if run.steps.has_touched() || run.steps.stale() => {
                    let run = Arc::make_mut(run);
                    run.steps.refresh();
                    run.steps.take_touched()
                }
                _ => Touched::Some(Vec::new()),
            };
            newly_queued |= self
                .index
                .refresh(id, self.map.get(&id).map(|r| &**r), touched);
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
