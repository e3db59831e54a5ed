//! Placement: a pure function from (queued steps, workers and their free capacity)
//! to placements, and the human-readable reason a step cannot be placed.
//!
//! Architecture invariant: no clock, no IO, no randomness. The same inputs always
//! give the same placements, and no placement ever exceeds a worker's free CPU,
//! memory or GPUs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ferry_spec::Resources;

use crate::state::{FirstPlacement, Placement, RunId, State};

/// What a step asks of its GPUs beyond their number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GpuNeed {
    /// A GPU's model name must contain this (case-insensitive), e.g. `A100`.
    pub model: Option<String>,
    /// Each GPU must have at least this much memory.
    pub min_memory_bytes: u64,
}

impl GpuNeed {
    fn accepts(&self, gpu: &GpuSlot) -> bool {
        gpu.memory_bytes >= self.min_memory_bytes
            && self
                .model
                .as_ref()
                .is_none_or(|model| contains_ignoring_case(&gpu.model, model))
    }

    fn describe(&self, count: u32) -> String {
        let mut text = format!("{count} GPU{}", if count == 1 { "" } else { "s" });
        if let Some(model) = &self.model {
            text.push_str(&format!(" of model {model}"));
        }
        if self.min_memory_bytes > 0 {
            text.push_str(&format!(" with ≥{}", format_bytes(self.min_memory_bytes)));
        }
        text
    }
}

fn contains_ignoring_case(text: &str, part: &str) -> bool {
    let (text, part) = (text.as_bytes(), part.as_bytes());
    part.is_empty()
        || text
            .windows(part.len())
            .any(|w| w.eq_ignore_ascii_case(part))
}

/// One GPU of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSlot {
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
}

/// A worker as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot {
    pub name: String,
    pub capacity: Resources,
    pub free: Resources,
    /// Every GPU of the worker, and those no attempt holds.
    pub gpus: Vec<GpuSlot>,
    pub free_gpus: Vec<GpuSlot>,
    pub labels: BTreeMap<String, String>,
    /// Only workers with a live assignment stream receive new work.
    pub accepting: bool,
    /// The worker has a container runtime (runs steps with an `image`).
    pub containers: bool,
}

/// A step waiting for a worker. The queue is given oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedStep {
    pub run: RunId,
    pub step: String,
    pub resources: Resources,
    pub gpu: GpuNeed,
    /// Labels a worker must carry (`zone=a`).
    pub selector: BTreeMap<String, String>,
    /// The step runs in a container: only a worker with a runtime takes it.
    pub container: bool,
    /// Higher first.
    pub priority: i32,
    pub project: String,
    /// For a trial of a sweep: the sweep (the step as written), whose
    /// `max_parallel` limits its trials at once.
    pub sweep: Option<String>,
}

/// The most a project may hold at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_cpu_millis: Option<u64>,
    pub max_gpus: Option<u32>,
}

/// What a project holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_millis: u64,
    pub gpus: u32,
}

/// A run's limit on attempts at once, and how many it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunLimit {
    pub max_parallel: Option<u32>,
    pub active: u32,
}

/// Everything beyond the queue and the workers that decides a placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub quotas: BTreeMap<String, Quota>,
    /// What each project holds now (assigned and running attempts).
    pub usage: BTreeMap<String, Usage>,
    pub runs: BTreeMap<RunId, RunLimit>,
    /// Per run and sweep: the sweep's `max_parallel` and its trials at once.
    pub sweeps: BTreeMap<(RunId, String), RunLimit>,
}

/// A step left in the queue by this pass, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub run: RunId,
    pub step: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub waiting: Vec<Waiting>,
}

/// Why one step stayed queued in a pass (turned into text once, at the end).
enum Blocked {
    MaxParallel(u32),
    SweepParallel(u32),
    Quota(String),
    NoRoom,
}

/// The part of a step that decides where it can go.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Shape {
    resources: Resources,
    gpu: GpuNeed,
    selector: BTreeMap<String, String>,
    container: bool,
}

impl Shape {
    fn of(step: &QueuedStep) -> Shape {
        Shape {
            resources: step.resources,
            gpu: step.gpu.clone(),
            selector: step.selector.clone(),
            container: step.container,
        }
    }

    /// The worker is of the kind the step asks for: its labels, and a
    /// container runtime for a step with an image.
    fn selects(&self, worker: &WorkerSlot) -> bool {
        (!self.container || worker.containers)
            && self
                .selector
                .iter()
                .all(|(key, value)| worker.labels.get(key) == Some(value))
    }

    /// Fits in what the worker has free now.
    fn fits_now(&self, worker: &WorkerSlot) -> bool {
        let need = self.resources;
        need.cpu_millis <= worker.free.cpu_millis
            && need.memory_bytes <= worker.free.memory_bytes
            && self.matching(&worker.free_gpus) >= need.gpus as usize
            && self.selects(worker)
    }

    /// Would fit on the worker if it were idle.
    fn fits_idle(&self, worker: &WorkerSlot) -> bool {
        let need = self.resources;
        need.cpu_millis <= worker.capacity.cpu_millis
            && need.memory_bytes <= worker.capacity.memory_bytes
            && self.matching(&worker.gpus) >= need.gpus as usize
            && self.selects(worker)
    }

    fn matching(&self, gpus: &[GpuSlot]) -> usize {
        if self.resources.gpus == 0 {
            return 0;
        }
        gpus.iter().filter(|gpu| self.gpu.accepts(gpu)).count()
    }
}

/// One pass of placement: a pure function of the queue (oldest first), the
/// workers with what they have free, and the limits.
///
/// - Higher priority first; within a priority, projects take turns by fair share
///   (the project holding the smallest dominant share of the cluster's CPU and
///   GPUs goes next) and each project's steps go oldest first.
/// - A step goes to the accepting worker, among those whose labels match its
///   selector and which have its CPU, memory and GPUs (of the asked model and
///   memory) free, where it fits best: GPU machines only when no machine without
///   GPUs fits a step that needs none, then the least CPU and memory left over.
/// - A step that cannot go now (its run at `max_parallel`, its project at its
///   quota, no room) does not hold up the steps behind it; it stays queued with a
///   reason a user can act on.
///
/// Nothing is ever oversubscribed and a GPU goes to at most one attempt, because
/// every placement is taken out of the free amounts before the next is chosen.
pub fn plan(queue: &[QueuedStep], workers: &[WorkerSlot], limits: &Limits) -> Plan {
    let mut slots: Vec<WorkerSlot> = workers.iter().filter(|w| w.accepting).cloned().collect();
    slots.sort_by(|a, b| a.name.cmp(&b.name));
    // Accepting workers by free room, machines without GPUs apart: walking a set
    // upwards from a step's CPU need meets the best fit first (least CPU, then
    // memory, left over; then name, as `slots` is sorted by name).
    let mut by_room: [BTreeSet<RoomKey>; 2] = [BTreeSet::new(), BTreeSet::new()];
    for (index, slot) in slots.iter().enumerate() {
        by_room[usize::from(!slot.gpus.is_empty())].insert(room_key(slot, index));
    }
    let total_cpu = slots
        .iter()
        .map(|w| w.capacity.cpu_millis)
        .sum::<u64>()
        .max(1);
    let total_gpus = slots
        .iter()
        .map(|w| w.gpus.len() as u64)
        .sum::<u64>()
        .max(1);
    let mut usage = limits.usage.clone();
    let mut sweep_active: BTreeMap<(RunId, String), u32> = BTreeMap::new();
    let mut active: BTreeMap<RunId, u32> =
        limits.runs.iter().map(|(r, l)| (*r, l.active)).collect();
    // Shapes found not to fit during this pass: free room only shrinks, so they
    // will not fit later in it either.
    let mut full: std::collections::HashSet<Shape> = std::collections::HashSet::new();
    let mut plan = Plan::default();
    let mut blocked: Vec<(usize, Blocked)> = Vec::new();

    let mut levels: BTreeMap<std::cmp::Reverse<i32>, BTreeMap<&str, VecDeque<usize>>> =
        BTreeMap::new();
    for (index, step) in queue.iter().enumerate() {
        levels
            .entry(std::cmp::Reverse(step.priority))
            .or_default()
            .entry(step.project.as_str())
            .or_default()
            .push_back(index);
    }
    for (_, mut projects) in levels {
        loop {
            // The project with the smallest dominant share goes next.
            let share = |project: &str| {
                let used = usage.get(project).copied().unwrap_or_default();
                let cpu = u128::from(used.cpu_millis) * 1_000_000 / u128::from(total_cpu);
                let gpus = u128::from(used.gpus) * 1_000_000 / u128::from(total_gpus);
                cpu.max(gpus)
            };
            let Some(project) = projects
                .iter()
                .filter(|(_, steps)| !steps.is_empty())
                .map(|(project, _)| *project)
                .min_by_key(|project| (share(project), *project))
            else {
                break;
            };
            let index = projects
                .get_mut(project)
                .and_then(VecDeque::pop_front)
                .expect("a non-empty project");
            let step = &queue[index];
            let need = step.resources;
            let limit = limits.runs.get(&step.run).copied().unwrap_or_default();
            let running = active.get(&step.run).copied().unwrap_or(0);
            if let Some(max) = limit.max_parallel
                && running >= max
            {
                blocked.push((index, Blocked::MaxParallel(max)));
                continue;
            }
            let sweep_key = step.sweep.as_ref().map(|sweep| (step.run, sweep.clone()));
            if let Some(key) = &sweep_key
                && let Some(limit) = limits.sweeps.get(key)
                && let Some(max) = limit.max_parallel
                && limit.active + sweep_active.get(key).copied().unwrap_or(0) >= max
            {
                blocked.push((index, Blocked::SweepParallel(max)));
                continue;
            }
            let used = usage.get(project).copied().unwrap_or_default();
            if let Some(reason) = quota_refusal(project, used, need, limits.quotas.get(project)) {
                blocked.push((index, Blocked::Quota(reason)));
                continue;
            }
            let shape = Shape::of(step);
            if full.contains(&shape) {
                blocked.push((index, Blocked::NoRoom));
                continue;
            }
            // A step without GPUs tries the machines without GPUs first.
            let sets: &[usize] = if need.gpus == 0 { &[0, 1] } else { &[1] };
            let best = sets.iter().find_map(|set| {
                by_room[*set]
                    .range((need.cpu_millis, 0, 0)..)
                    .find(|(_, _, index)| shape.fits_now(&slots[*index]))
                    .map(|(_, _, index)| *index)
            });
            let Some(chosen) = best else {
                full.insert(shape);
                blocked.push((index, Blocked::NoRoom));
                continue;
            };
            let set = usize::from(!slots[chosen].gpus.is_empty());
            by_room[set].remove(&room_key(&slots[chosen], chosen));
            let slot = &mut slots[chosen];
            slot.free.cpu_millis -= need.cpu_millis;
            slot.free.memory_bytes -= need.memory_bytes;
            let mut gpus = Vec::new();
            slot.free_gpus.retain(|gpu| {
                let take = gpus.len() < need.gpus as usize && step.gpu.accepts(gpu);
                if take {
                    gpus.push(gpu.index);
                }
                !take
            });
            slot.free.gpus = slot.free_gpus.len() as u32;
            by_room[set].insert(room_key(slot, chosen));
            let held = usage.entry(project.to_string()).or_default();
            held.cpu_millis += need.cpu_millis;
            held.gpus += need.gpus;
            *active.entry(step.run).or_default() += 1;
            if let Some(key) = sweep_key {
                *sweep_active.entry(key).or_default() += 1;
            }
            plan.placements.push(Placement {
                run: step.run,
                step: step.step.clone(),
                worker: slot.name.clone(),
                gpus,
            });
        }
    }

    let mut explained: HashMap<Shape, String> = HashMap::new();
    blocked.sort_by_key(|(index, _)| *index);
    for (index, why) in blocked {
        let step = &queue[index];
        let reason = match why {
            Blocked::MaxParallel(max) => format!(
                "run {} already has {max} steps at once, its max_parallel",
                step.run
            ),
            Blocked::SweepParallel(max) => format!(
                "the sweep {:?} already has {max} trials at once, its max_parallel",
                step.sweep.as_deref().unwrap_or_default()
            ),
            Blocked::Quota(reason) => reason,
            Blocked::NoRoom => explained
                .entry(Shape::of(step))
                .or_insert_with_key(|shape| no_room_reason(shape, workers))
                .clone(),
        };
        plan.waiting.push(Waiting {
            run: step.run,
            step: step.step.clone(),
            reason,
        });
    }
    plan
}

/// A worker's place in the best-fit order: free CPU, free memory (MiB), position.
type RoomKey = (u64, u64, usize);

fn room_key(slot: &WorkerSlot, index: usize) -> RoomKey {
    (slot.free.cpu_millis, slot.free.memory_bytes >> 20, index)
}

/// Why taking `need` would break the project's quota, if it would.
fn quota_refusal(
    project: &str,
    used: Usage,
    need: Resources,
    quota: Option<&Quota>,
) -> Option<String> {
    let quota = quota?;
    if let Some(max) = quota.max_gpus
        && need.gpus > 0
        && used.gpus + need.gpus > max
    {
        return Some(format!(
            "project {project} is at its quota: {} of {max} GPUs in use, the step needs {}",
            used.gpus, need.gpus
        ));
    }
    if let Some(max) = quota.max_cpu_millis
        && used.cpu_millis + need.cpu_millis > max
    {
        return Some(format!(
            "project {project} is at its quota: {} of {} CPUs in use, the step needs {}",
            format_cpu(used.cpu_millis),
            format_cpu(max),
            format_cpu(need.cpu_millis)
        ));
    }
    None
}

/// Why a step of this shape has no worker now: none with its labels, none that
/// could ever hold it (naming what is short), or none with room at the moment.
fn no_room_reason(shape: &Shape, workers: &[WorkerSlot]) -> String {
    let reason = room_reason(shape, workers);
    if shape.container {
        format!("needs a container runtime: {reason}")
    } else {
        reason
    }
}

fn room_reason(shape: &Shape, workers: &[WorkerSlot]) -> String {
    let labelled: Vec<&WorkerSlot> = workers.iter().filter(|w| shape.selects(w)).collect();
    let mut kinds = Vec::new();
    if shape.container {
        kinds.push("Docker".to_string());
    }
    if !shape.selector.is_empty() {
        let labels: Vec<String> = shape
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        kinds.push(format!("labels {}", labels.join(",")));
    }
    let with_labels = if kinds.is_empty() {
        String::new()
    } else {
        format!(" with {}", kinds.join(" and "))
    };
    if labelled.is_empty() {
        return if workers.is_empty() {
            "no worker is registered".to_string()
        } else {
            format!("no worker{with_labels} is registered")
        };
    }
    if labelled.iter().any(|w| shape.fits_idle(w)) {
        return if labelled.iter().any(|w| w.accepting) {
            format!("waiting for room on a worker{with_labels}")
        } else {
            format!(
                "waiting: no worker{with_labels} that could run it takes work now \
                 (disconnected, lost, cordoned or draining)"
            )
        };
    }
    let need = shape.resources;
    let mut short = Vec::new();
    let max_cpu = labelled
        .iter()
        .map(|w| w.capacity.cpu_millis)
        .max()
        .unwrap_or(0);
    if need.cpu_millis > max_cpu {
        short.push(format!(
            "{} CPUs (the largest worker{with_labels} has {})",
            format_cpu(need.cpu_millis),
            format_cpu(max_cpu)
        ));
    }
    let max_memory = labelled
        .iter()
        .map(|w| w.capacity.memory_bytes)
        .max()
        .unwrap_or(0);
    if need.memory_bytes > max_memory {
        short.push(format!(
            "{} memory (the largest worker{with_labels} has {})",
            format_bytes(need.memory_bytes),
            format_bytes(max_memory)
        ));
    }
    let max_gpus = labelled
        .iter()
        .map(|w| shape.matching(&w.gpus))
        .max()
        .unwrap_or(0);
    if need.gpus as usize > max_gpus {
        short.push(format!(
            "{} (the largest worker{with_labels} has {max_gpus})",
            shape.gpu.describe(need.gpus)
        ));
    }
    if short.is_empty() {
        short.push(format!(
            "{} CPUs, {} memory and {} together; no worker{with_labels} has all of them",
            format_cpu(need.cpu_millis),
            format_bytes(need.memory_bytes),
            shape.gpu.describe(need.gpus)
        ));
    }
    format!(
        "no registered worker can ever fit it: needs {}",
        short.join(", ")
    )
}

/// The placements of one pass (see [`plan`]).
pub fn place(queue: &[QueuedStep], workers: &[WorkerSlot], limits: &Limits) -> Vec<Placement> {
    plan(queue, workers, limits).placements
}

/// Why a step with these needs can never run on the registered workers, or `None`
/// when at least one worker is big enough (it may still have to wait for room).
pub fn never_fits_reason(
    need: Resources,
    gpu: &GpuNeed,
    selector: &BTreeMap<String, String>,
    container: bool,
    workers: &[WorkerSlot],
) -> Option<String> {
    let shape = Shape {
        resources: need,
        gpu: gpu.clone(),
        selector: selector.clone(),
        container,
    };
    if workers.iter().any(|w| shape.fits_idle(w)) {
        return None;
    }
    Some(no_room_reason(&shape, workers))
}

pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{:.2}", millis as f64 / 1000.0)
    }
}

pub use ferry_spec::format_bytes;

/// What a step's spec asks of its GPUs, as the scheduler matches it.
pub fn gpu_need(spec: &ferry_spec::Step) -> GpuNeed {
    GpuNeed {
        model: spec.gpu.model.clone(),
        min_memory_bytes: spec.gpu.min_memory_bytes,
    }
}

/// Most queued steps of one project at one priority that one scheduling pass
/// considers (the oldest first). A pass costs time in proportion to what it
/// considers, and there are never more free places than this on a pass: a step
/// beyond the window waits for a later pass.
pub const QUEUE_WINDOW: usize = 256;

/// The steps ready to be placed at `now_ms` (higher priority first, then oldest
/// run first, in pipeline order within a run; at most [`QUEUE_WINDOW`] per
/// project and priority), and the earliest time a step now waiting out a retry
/// backoff becomes ready.
///
/// Reads the index of queued steps that `State::apply` keeps
/// ([`crate::state::ReadyIndex`]), so it costs in proportion to the window (and
/// the runs it skips: at their `max_parallel`, or every queued step in a
/// backoff), not to the number of runs.
pub fn ready_queue(state: &State, now_ms: i64) -> (Vec<QueuedStep>, Option<i64>) {
    let index = state.runs.ready();
    let mut queue = Vec::new();
    for ((std::cmp::Reverse(priority), project), runs) in index.classes() {
        let mut taken = 0usize;
        for id in runs {
            if taken >= QUEUE_WINDOW {
                break;
            }
            let Some(run) = state.runs.get(id) else {
                continue;
            };
            // A run or sweep at its max_parallel cannot take more steps this
            // pass: its further steps are left out of the window, so that they
            // do not crowd out steps that could go.
            let mut room: Option<RoomInRun> = None;
            for position in index.queued_steps(*id) {
                let position = position as usize;
                let (Some(record), Some(spec)) =
                    (run.steps.get(position), run.pipeline.steps.get(position))
                else {
                    continue;
                };
                if record.not_before_ms.is_some_and(|at| at > now_ms) {
                    continue;
                }
                if taken >= QUEUE_WINDOW {
                    break;
                }
                if !room.get_or_insert_with(|| RoomInRun::of(run)).take(spec) {
                    continue;
                }
                taken += 1;
                queue.push(QueuedStep {
                    run: run.id,
                    step: spec.name.clone(),
                    resources: spec.resources,
                    gpu: gpu_need(spec),
                    selector: spec.node_selector.clone(),
                    container: spec.container.is_some(),
                    priority: *priority,
                    project: project.clone(),
                    sweep: spec.trial.as_ref().map(|t| t.of.clone()),
                });
            }
        }
    }
    // Classes of one priority interleave by run age (stable: a run's steps stay
    // in pipeline order).
    queue.sort_by_key(|step| (std::cmp::Reverse(step.priority), step.run));
    (queue, index.next_retry_after(now_ms))
}

/// Where the first steps of a run about to be submitted go (those that need no
/// other step), decided by the leader so that they are assigned in the same
/// Raft entry as the submission: one round to a started step instead of two.
///
/// Only when nothing else is ready to be placed, so that no older or more
/// important step is overtaken; otherwise (and for whatever this leaves) the
/// scheduling pass places the run as any other. The same rules as [`plan`]
/// apply (the run's and its sweeps' `max_parallel`, quotas, best fit), and the
/// state machine checks each placement again when it applies the submission
/// (a step found in the cache, a worker gone since: that placement is dropped).
pub fn first_placements(
    state: &State,
    pipeline: &ferry_spec::Pipeline,
    accepting: &BTreeSet<String>,
    quotas: &BTreeMap<String, Quota>,
    now_ms: i64,
) -> Vec<FirstPlacement> {
    // Stands for the run the submission creates (no run has this id).
    const NEW_RUN: RunId = RunId::MAX;
    if accepting.is_empty() || !ready_queue(state, now_ms).0.is_empty() {
        return Vec::new();
    }
    let queue: Vec<QueuedStep> = pipeline
        .steps
        .iter()
        .filter(|spec| spec.needs.is_empty())
        .take(QUEUE_WINDOW)
        .map(|spec| QueuedStep {
            run: NEW_RUN,
            step: spec.name.clone(),
            resources: spec.resources,
            gpu: gpu_need(spec),
            selector: spec.node_selector.clone(),
            container: spec.container.is_some(),
            priority: pipeline.priority,
            project: pipeline.project.clone(),
            sweep: spec.trial.as_ref().map(|t| t.of.clone()),
        })
        .collect();
    if queue.is_empty() {
        return Vec::new();
    }
    let mut limits = limits(state, quotas, &[]);
    limits.runs.insert(
        NEW_RUN,
        RunLimit {
            max_parallel: pipeline.max_parallel,
            active: 0,
        },
    );
    for spec in &pipeline.steps {
        if let Some(trial) = &spec.trial
            && let Some(max) = trial.max_parallel
        {
            limits.sweeps.insert(
                (NEW_RUN, trial.of.clone()),
                RunLimit {
                    max_parallel: Some(max),
                    active: 0,
                },
            );
        }
    }
    let workers = worker_slots(state, accepting);
    plan(&queue, &workers, &limits)
        .placements
        .into_iter()
        .map(|p| FirstPlacement {
            step: p.step,
            worker: p.worker,
            gpus: p.gpus,
        })
        .collect()
}

/// How many more steps of one run, and of each of its sweeps, `max_parallel`
/// lets the queue hold this pass.
struct RoomInRun<'a> {
    run: Option<u32>,
    sweeps: HashMap<&'a str, u32>,
}

impl<'a> RoomInRun<'a> {
    fn of(run: &'a crate::state::Run) -> RoomInRun<'a> {
        let limited = run.sweep_limits();
        if run.pipeline.max_parallel.is_none() && limited.is_empty() {
            return RoomInRun {
                run: None,
                sweeps: HashMap::new(),
            };
        }
        let active_run = u32::try_from(run.steps.counts().active()).unwrap_or(u32::MAX);
        let mut active_sweeps: HashMap<&str, u32> = HashMap::new();
        if !limited.is_empty() {
            for (record, spec) in run.steps.iter().zip(&run.pipeline.steps) {
                if record.state.is_active()
                    && let Some(trial) = &spec.trial
                {
                    *active_sweeps.entry(trial.of.as_str()).or_default() += 1;
                }
            }
        }
        let sweeps = limited
            .iter()
            .map(|(sweep, max)| {
                let active = active_sweeps.get(sweep.as_str()).copied().unwrap_or(0);
                (sweep.as_str(), max.saturating_sub(active))
            })
            .collect();
        RoomInRun {
            run: run
                .pipeline
                .max_parallel
                .map(|max| max.saturating_sub(active_run)),
            sweeps,
        }
    }

    /// Whether the step may join the queue; counts it if so.
    fn take(&mut self, spec: &ferry_spec::Step) -> bool {
        let sweep = spec.trial.as_ref().map(|t| t.of.as_str());
        let sweep_room = sweep.and_then(|s| self.sweeps.get(s).copied());
        if self.run == Some(0) || sweep_room == Some(0) {
            return false;
        }
        if let Some(room) = self.run.as_mut() {
            *room -= 1;
        }
        if let Some(room) = sweep.and_then(|s| self.sweeps.get_mut(s)) {
            *room -= 1;
        }
        true
    }
}

/// Every registered worker with what is free on it; only those in `accepting`
/// (a live stream) that an operator has not cordoned or drained, and that are not
/// lost, take new work.
pub fn worker_slots(state: &State, accepting: &BTreeSet<String>) -> Vec<WorkerSlot> {
    state
        .workers
        .values()
        .map(|worker| {
            let load = state.loads.get(&worker.name).cloned().unwrap_or_default();
            let used = load.in_use();
            let busy_gpus = load.gpus_in_use();
            let gpus: Vec<GpuSlot> = worker
                .gpus
                .iter()
                .map(|g| GpuSlot {
                    index: g.index,
                    model: g.model.clone(),
                    memory_bytes: g.memory_bytes,
                })
                .collect();
            let free_gpus: Vec<GpuSlot> = gpus
                .iter()
                .filter(|g| !busy_gpus.contains(&g.index))
                .cloned()
                .collect();
            WorkerSlot {
                name: worker.name.clone(),
                capacity: worker.capacity,
                free: Resources {
                    cpu_millis: worker.capacity.cpu_millis.saturating_sub(used.cpu_millis),
                    memory_bytes: worker
                        .capacity
                        .memory_bytes
                        .saturating_sub(used.memory_bytes),
                    gpus: free_gpus.len() as u32,
                },
                gpus,
                free_gpus,
                labels: worker.labels.clone(),
                accepting: worker.schedulable() && accepting.contains(&worker.name),
                containers: worker.container_runtime.is_some(),
            }
        })
        .collect()
}

/// The limits in force for `queue`: the configured project quotas, what each
/// project holds now, and the `max_parallel` of each run (and sweep) with steps
/// in the queue, with how many attempts it holds. Costs in proportion to the
/// queue and the attempts assigned or running, not to the number of runs.
pub fn limits(state: &State, quotas: &BTreeMap<String, Quota>, queue: &[QueuedStep]) -> Limits {
    let mut limits = Limits {
        quotas: quotas.clone(),
        ..Limits::default()
    };
    let queued_runs: BTreeSet<RunId> = queue.iter().map(|step| step.run).collect();
    for run in queued_runs
        .iter()
        .filter_map(|id| state.runs.get(id))
        .filter(|r| !r.state.is_terminal())
    {
        if let Some(max) = run.pipeline.max_parallel {
            limits.runs.entry(run.id).or_default().max_parallel = Some(max);
        }
        for (sweep, max) in run.sweep_limits() {
            limits
                .sweeps
                .entry((run.id, sweep.clone()))
                .or_default()
                .max_parallel = Some(*max);
        }
    }
    count_held(state, &mut limits);
    limits
}

/// Adds what the assigned and running attempts hold to `limits`: per run, per
/// sweep with a limit already in `limits`, and per project.
fn count_held(state: &State, limits: &mut Limits) {
    for load in state.loads.values() {
        for (key, (resources, _)) in &load.attempts {
            limits.runs.entry(key.run).or_default().active += 1;
            if let Some(run) = state.runs.get(&key.run) {
                let has_sweep_limit = limits
                    .sweeps
                    .range((key.run, String::new())..)
                    .next()
                    .is_some_and(|((r, _), _)| *r == key.run);
                if has_sweep_limit
                    && let Some(trial) = run
                        .step_index(&key.step)
                        .and_then(|index| run.pipeline.steps.get(index))
                        .and_then(|s| s.trial.as_ref())
                    && let Some(limit) = limits.sweeps.get_mut(&(key.run, trial.of.clone()))
                {
                    limit.active += 1;
                }
                let usage = limits
                    .usage
                    .entry(run.pipeline.project.clone())
                    .or_default();
                usage.cpu_millis = usage.cpu_millis.saturating_add(resources.cpu_millis);
                usage.gpus = usage.gpus.saturating_add(resources.gpus);
            }
        }
    }
}

mod next;
pub use next::next_placements;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod next_tests;

#[cfg(test)]
mod first_tests;

#[cfg(test)]
mod reference;

#[cfg(test)]
mod index_tests;
