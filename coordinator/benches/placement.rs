//! The pure placement function at scale: 10,000 queued steps, 1,000 workers.
//! `cargo bench -p ferry-coordinator --bench placement` (see BENCHMARKS.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_common::spec::Resources;
use ferry_coordinator::scheduler::{
    GpuNeed, GpuSlot, Limits, QueuedStep, Quota, RunLimit, WorkerSlot, plan,
};

fn workers(count: usize) -> Vec<WorkerSlot> {
    (0..count)
        .map(|i| {
            // One in four machines has 8 GPUs; three zones.
            let gpus: Vec<GpuSlot> = if i % 4 == 0 {
                (0..8)
                    .map(|index| GpuSlot {
                        index,
                        model: "NVIDIA H100 80GB HBM3".to_string(),
                        memory_bytes: 80 << 30,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let capacity = Resources {
                cpu_millis: 32_000,
                memory_bytes: 128 << 30,
                gpus: gpus.len() as u32,
            };
            WorkerSlot {
                name: format!("worker-{i:04}"),
                capacity,
                free: capacity,
                free_gpus: gpus.clone(),
                gpus,
                labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]),
                accepting: true,
                containers: true,
            }
        })
        .collect()
}

fn queue(count: usize) -> Vec<QueuedStep> {
    (0..count)
        .map(|i| {
            let gpus = if i % 5 == 0 { 1 + (i % 2) as u32 } else { 0 };
            QueuedStep {
                run: (i / 100) as u64 + 1,
                step: format!("step-{i:05}"),
                resources: Resources {
                    cpu_millis: 500 + (i % 8) as u64 * 500,
                    memory_bytes: (1 + (i % 16) as u64) << 30,
                    gpus,
                },
                gpu: GpuNeed {
                    model: (gpus > 0).then(|| "H100".to_string()),
                    min_memory_bytes: if gpus > 0 { 40 << 30 } else { 0 },
                },
                selector: if i % 7 == 0 {
                    BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))])
                } else {
                    BTreeMap::new()
                },
                container: false,
                priority: (i % 3) as i32,
                project: format!("team-{}", i % 4),
                sweep: None,
            }
        })
        .collect()
}

fn limits() -> Limits {
    Limits {
        quotas: BTreeMap::from([(
            "team-0".to_string(),
            Quota {
                max_cpu_millis: Some(2_000_000),
                max_gpus: Some(200),
            },
        )]),
        usage: BTreeMap::new(),
        runs: (1..=100)
            .map(|run| {
                let limit = RunLimit {
                    max_parallel: Some(64),
                    active: 0,
                };
                (run, limit)
            })
            .collect(),
        sweeps: BTreeMap::new(),
    }
}

fn main() {
    let (workers, queue, limits) = (workers(1000), queue(10_000), limits());
    let mut times: Vec<Duration> = Vec::new();
    let mut placed = 0;
    for _ in 0..20 {
        let began = Instant::now();
        let result = plan(&queue, &workers, &limits);
        times.push(began.elapsed());
        placed = result.placements.len();
        std::hint::black_box(result);
    }
    times.sort();
    println!(
        "placement: 10,000 queued steps, 1,000 workers: {placed} placed; full pass median {:.1} ms, \
         min {:.1} ms, max {:.1} ms (20 passes)",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}
