//! Placement: a pure function from (queued steps, workers and their free capacity)
//! to placements, and the human-readable reason a step cannot be placed.
//!
//! Architecture invariant: no clock, no IO, no randomness. The same inputs always
//! give the same placements, and no placement ever exceeds a worker's free CPU,
//! memory or GPUs.

use std::collections::BTreeSet;

use ferry_common::spec::Resources;

use crate::state::{Placement, RunId, State};

/// A worker as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot {
    pub name: String,
    pub capacity: Resources,
    pub free: Resources,
    pub free_gpus: Vec<u32>,
    /// Only workers with a live assignment stream receive new work.
    pub accepting: bool,
}

/// A step waiting for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedStep {
    pub run: RunId,
    pub step: String,
    pub resources: Resources,
}

/// Places queued steps in order (oldest run first), each on the worker where it fits
/// best: the one left with the least free room afterwards, preferring workers without
/// GPUs for steps that need none, so GPU machines stay free for GPU work.
pub fn place(queue: &[QueuedStep], workers: &[WorkerSlot]) -> Vec<Placement> {
    let mut slots: Vec<WorkerSlot> = workers.iter().filter(|w| w.accepting).cloned().collect();
    let mut placements = Vec::new();
    for queued in queue {
        let need = queued.resources;
        let best = slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| fits(need, slot))
            .min_by_key(|(_, slot)| {
                let wastes_gpus = need.gpus == 0 && slot.capacity.gpus > 0;
                let cpu_left = slot.free.cpu_millis - need.cpu_millis;
                let memory_left = (slot.free.memory_bytes - need.memory_bytes) >> 20;
                (wastes_gpus, cpu_left, memory_left, slot.name.clone())
            })
            .map(|(index, _)| index);
        let Some(index) = best else {
            continue;
        };
        let slot = &mut slots[index];
        slot.free.cpu_millis -= need.cpu_millis;
        slot.free.memory_bytes -= need.memory_bytes;
        slot.free.gpus -= need.gpus;
        let gpus: Vec<u32> = slot.free_gpus.drain(..need.gpus as usize).collect();
        placements.push(Placement {
            run: queued.run,
            step: queued.step.clone(),
            worker: slot.name.clone(),
            gpus,
        });
    }
    placements
}

fn fits(need: Resources, slot: &WorkerSlot) -> bool {
    need.cpu_millis <= slot.free.cpu_millis
        && need.memory_bytes <= slot.free.memory_bytes
        && need.gpus as usize <= slot.free_gpus.len()
}

/// Why a step with these needs can never run on the registered workers, or `None`
/// when at least one worker is big enough (it may still have to wait for room).
pub fn never_fits_reason(need: Resources, workers: &[WorkerSlot]) -> Option<String> {
    if workers.is_empty() {
        return Some("no worker is registered".to_string());
    }
    let fits_some = workers.iter().any(|w| {
        need.cpu_millis <= w.capacity.cpu_millis
            && need.memory_bytes <= w.capacity.memory_bytes
            && need.gpus <= w.capacity.gpus
    });
    if fits_some {
        return None;
    }
    let max_cpu = workers
        .iter()
        .map(|w| w.capacity.cpu_millis)
        .max()
        .unwrap_or(0);
    let max_memory = workers
        .iter()
        .map(|w| w.capacity.memory_bytes)
        .max()
        .unwrap_or(0);
    let max_gpus = workers.iter().map(|w| w.capacity.gpus).max().unwrap_or(0);
    let mut short = Vec::new();
    if need.cpu_millis > max_cpu {
        short.push(format!(
            "{} CPUs (the largest worker has {})",
            format_cpu(need.cpu_millis),
            format_cpu(max_cpu)
        ));
    }
    if need.memory_bytes > max_memory {
        short.push(format!(
            "{} memory (the largest worker has {})",
            format_bytes(need.memory_bytes),
            format_bytes(max_memory)
        ));
    }
    if need.gpus > max_gpus {
        short.push(format!(
            "{} GPUs (the largest worker has {})",
            need.gpus, max_gpus
        ));
    }
    if short.is_empty() {
        short.push(format!(
            "{} CPUs, {} memory and {} GPUs together",
            format_cpu(need.cpu_millis),
            format_bytes(need.memory_bytes),
            need.gpus
        ));
    }
    Some(format!(
        "no registered worker can ever fit it: needs {}",
        short.join(", ")
    ))
}

pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{:.2}", millis as f64 / 1000.0)
    }
}

pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Builds the scheduler's view of the state: the queue and every registered worker
/// with what is still free on it. `accepting` says which workers have a live stream.
pub fn snapshot(state: &State, accepting: &BTreeSet<String>) -> (Vec<QueuedStep>, Vec<WorkerSlot>) {
    let queue = state
        .queued_steps()
        .into_iter()
        .map(|(run, spec)| QueuedStep {
            run,
            step: spec.name.clone(),
            resources: spec.resources,
        })
        .collect();
    let workers = state
        .workers
        .values()
        .map(|worker| {
            let load = state.loads.get(&worker.name).cloned().unwrap_or_default();
            let used = load.in_use();
            let busy_gpus = load.gpus_in_use();
            let free_gpus: Vec<u32> = worker
                .gpus
                .iter()
                .map(|g| g.index)
                .filter(|g| !busy_gpus.contains(g))
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
                free_gpus,
                accepting: accepting.contains(&worker.name),
            }
        })
        .collect();
    (queue, workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu_millis: u64, memory_mib: u64, gpus: u32) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes: memory_mib << 20,
            gpus,
        }
    }

    fn worker(name: &str, capacity: Resources, gpu_count: u32) -> WorkerSlot {
        WorkerSlot {
            name: name.to_string(),
            capacity: Resources {
                gpus: gpu_count,
                ..capacity
            },
            free: Resources {
                gpus: gpu_count,
                ..capacity
            },
            free_gpus: (0..gpu_count).collect(),
            accepting: true,
        }
    }

    fn step(run: RunId, name: &str, resources: Resources) -> QueuedStep {
        QueuedStep {
            run,
            step: name.to_string(),
            resources,
        }
    }

    #[test]
    fn places_until_capacity_runs_out_and_never_oversubscribes() {
        let workers = vec![worker("w1", res(2000, 1024, 0), 0)];
        let queue: Vec<QueuedStep> = (0..5)
            .map(|i| step(1, &format!("s{i}"), res(500, 256, 0)))
            .collect();
        let placed = place(&queue, &workers);
        assert_eq!(placed.len(), 4);
        assert_eq!(
            placed.iter().map(|p| p.step.as_str()).collect::<Vec<_>>(),
            ["s0", "s1", "s2", "s3"]
        );
    }

    #[test]
    fn cpu_steps_avoid_gpu_workers_while_a_cpu_worker_fits() {
        let workers = vec![
            worker("gpu", res(8000, 8192, 0), 2),
            worker("cpu", res(2000, 2048, 0), 0),
        ];
        let placed = place(&[step(1, "a", res(1000, 512, 0))], &workers);
        assert_eq!(placed[0].worker, "cpu");
        let placed = place(&[step(1, "big", res(4000, 512, 0))], &workers);
        assert_eq!(placed[0].worker, "gpu", "falls back to the GPU machine");
    }

    #[test]
    fn gpus_are_never_given_twice() {
        let workers = vec![worker("g", res(8000, 8192, 0), 2)];
        let queue: Vec<QueuedStep> = (0..3)
            .map(|i| step(1, &format!("s{i}"), res(100, 1, 1)))
            .collect();
        let placed = place(&queue, &workers);
        assert_eq!(placed.len(), 2);
        assert_eq!(placed[0].gpus, vec![0]);
        assert_eq!(placed[1].gpus, vec![1]);
    }

    #[test]
    fn workers_without_a_stream_get_nothing() {
        let mut w = worker("w", res(2000, 1024, 0), 0);
        w.accepting = false;
        assert!(place(&[step(1, "a", res(100, 1, 0))], &[w]).is_empty());
    }

    #[test]
    fn best_fit_prefers_the_fuller_worker() {
        let mut busy = worker("busy", res(4000, 4096, 0), 0);
        busy.free = res(1000, 1024, 0);
        let idle = worker("idle", res(4000, 4096, 0), 0);
        let placed = place(&[step(1, "a", res(1000, 512, 0))], &[idle, busy]);
        assert_eq!(placed[0].worker, "busy");
    }

    #[test]
    fn reasons_name_what_is_short() {
        let workers = vec![worker("w", res(2000, 1024, 0), 1)];
        assert_eq!(never_fits_reason(res(1000, 100, 1), &workers), None);
        let reason = never_fits_reason(res(64000, 100, 2), &workers).unwrap();
        assert!(
            reason.contains("64 CPUs (the largest worker has 2)"),
            "{reason}"
        );
        assert!(
            reason.contains("2 GPUs (the largest worker has 1)"),
            "{reason}"
        );
        assert_eq!(
            never_fits_reason(res(1, 1, 0), &[]).unwrap(),
            "no worker is registered"
        );
    }
}
