use super::*;

fn res(cpu_millis: u64, memory_mib: u64, gpus: u32) -> Resources {
    Resources {
        cpu_millis,
        memory_bytes: memory_mib << 20,
        gpus,
    }
}

fn gpu(index: u32, model: &str, memory_gib: u64) -> GpuSlot {
    GpuSlot {
        index,
        model: model.to_string(),
        memory_bytes: memory_gib << 30,
    }
}

fn worker(name: &str, capacity: Resources, gpu_count: u32) -> WorkerSlot {
    let gpus: Vec<GpuSlot> = (0..gpu_count)
        .map(|i| gpu(i, "NVIDIA A100-SXM4-80GB", 80))
        .collect();
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
        free_gpus: gpus.clone(),
        gpus,
        labels: BTreeMap::new(),
        accepting: true,
        containers: false,
    }
}

fn step(run: RunId, name: &str, resources: Resources) -> QueuedStep {
    QueuedStep {
        run,
        step: name.to_string(),
        resources,
        gpu: GpuNeed::default(),
        selector: BTreeMap::new(),
        container: false,
        priority: 0,
        project: String::new(),
        sweep: None,
    }
}

fn none() -> Limits {
    Limits::default()
}

fn names(placements: &[Placement]) -> Vec<&str> {
    placements.iter().map(|p| p.step.as_str()).collect()
}

#[test]
fn places_until_capacity_runs_out_and_never_oversubscribes() {
    let workers = vec![worker("w1", res(2000, 1024, 0), 0)];
    let queue: Vec<QueuedStep> = (0..5)
        .map(|i| step(1, &format!("s{i}"), res(500, 256, 0)))
        .collect();
    let plan = plan(&queue, &workers, &none());
    assert_eq!(names(&plan.placements), ["s0", "s1", "s2", "s3"]);
    assert_eq!(plan.waiting.len(), 1);
    assert_eq!(plan.waiting[0].reason, "waiting for room on a worker");
}

#[test]
fn cpu_steps_avoid_gpu_workers_while_a_cpu_worker_fits() {
    let workers = vec![
        worker("gpu", res(8000, 8192, 0), 2),
        worker("cpu", res(2000, 2048, 0), 0),
    ];
    let placed = place(&[step(1, "a", res(1000, 512, 0))], &workers, &none());
    assert_eq!(placed[0].worker, "cpu");
    let placed = place(&[step(1, "big", res(4000, 512, 0))], &workers, &none());
    assert_eq!(placed[0].worker, "gpu", "falls back to the GPU machine");
}

#[test]
fn gpus_are_never_given_twice() {
    let workers = vec![worker("g", res(8000, 8192, 0), 2)];
    let queue: Vec<QueuedStep> = (0..3)
        .map(|i| step(1, &format!("s{i}"), res(100, 1, 1)))
        .collect();
    let placed = place(&queue, &workers, &none());
    assert_eq!(placed.len(), 2);
    assert_eq!(placed[0].gpus, vec![0]);
    assert_eq!(placed[1].gpus, vec![1]);
}

#[test]
fn workers_without_a_stream_get_nothing() {
    let mut w = worker("w", res(2000, 1024, 0), 0);
    w.accepting = false;
    let plan = plan(&[step(1, "a", res(100, 1, 0))], &[w], &none());
    assert!(plan.placements.is_empty());
    assert!(
        plan.waiting[0]
            .reason
            .contains("no worker that could run it takes work now"),
        "{}",
        plan.waiting[0].reason
    );
}

#[test]
fn best_fit_prefers_the_fuller_worker() {
    let mut busy = worker("busy", res(4000, 4096, 0), 0);
    busy.free = res(1000, 1024, 0);
    let idle = worker("idle", res(4000, 4096, 0), 0);
    let placed = place(&[step(1, "a", res(1000, 512, 0))], &[idle, busy], &none());
    assert_eq!(placed[0].worker, "busy");
}

#[test]
fn higher_priority_goes_first_and_fifo_within_a_priority() {
    let workers = vec![worker("w", res(2000, 1024, 0), 0)];
    let mut queue: Vec<QueuedStep> = (0..4)
        .map(|i| step(i + 1, &format!("low{i}"), res(1000, 1, 0)))
        .collect();
    let mut urgent = step(9, "urgent", res(1000, 1, 0));
    urgent.priority = 10;
    queue.push(urgent);
    assert_eq!(names(&place(&queue, &workers, &none())), ["urgent", "low0"]);
}

#[test]
fn competing_projects_share_fairly() {
    let workers = vec![worker("w", res(8000, 8192, 0), 0)];
    let mut queue = Vec::new();
    // Project a submitted first and a lot; b later.
    for i in 0..6 {
        let mut s = step(1, &format!("a{i}"), res(1000, 1, 0));
        s.project = "a".into();
        queue.push(s);
    }
    for i in 0..6 {
        let mut s = step(2, &format!("b{i}"), res(1000, 1, 0));
        s.project = "b".into();
        queue.push(s);
    }
    let placed = place(&queue, &workers, &none());
    assert_eq!(placed.len(), 8);
    let of = |p: &str| placed.iter().filter(|x| x.step.starts_with(p)).count();
    assert_eq!((of("a"), of("b")), (4, 4), "{:?}", names(&placed));
    // A project already holding most of the cluster waits for the other.
    let limits = Limits {
        usage: BTreeMap::from([(
            "a".to_string(),
            Usage {
                cpu_millis: 4000,
                gpus: 0,
            },
        )]),
        ..Limits::default()
    };
    let mut half = workers.clone();
    half[0].free = res(4000, 8192, 0);
    let placed = place(&queue, &half, &limits);
    assert_eq!(names(&placed), ["b0", "b1", "b2", "b3"]);
}

#[test]
fn quotas_cap_a_project_and_say_so() {
    let workers = vec![worker("g", res(16000, 65536, 0), 4)];
    let mut queue = Vec::new();
    for i in 0..3 {
        let mut s = step(1, &format!("t{i}"), res(1000, 1, 1));
        s.project = "vision".into();
        queue.push(s);
    }
    let limits = Limits {
        quotas: BTreeMap::from([(
            "vision".to_string(),
            Quota {
                max_cpu_millis: None,
                max_gpus: Some(2),
            },
        )]),
        ..Limits::default()
    };
    let plan = plan(&queue, &workers, &limits);
    assert_eq!(names(&plan.placements), ["t0", "t1"]);
    assert_eq!(
        plan.waiting[0].reason,
        "project vision is at its quota: 2 of 2 GPUs in use, the step needs 1"
    );
}

#[test]
fn max_parallel_caps_a_run_without_blocking_others() {
    let workers = vec![worker("w", res(16000, 8192, 0), 0)];
    let mut queue: Vec<QueuedStep> = (0..5)
        .map(|i| step(1, &format!("trial{i}"), res(100, 1, 0)))
        .collect();
    queue.push(step(2, "other", res(100, 1, 0)));
    let limits = Limits {
        runs: BTreeMap::from([(
            1,
            RunLimit {
                max_parallel: Some(3),
                active: 1,
            },
        )]),
        ..Limits::default()
    };
    let plan = plan(&queue, &workers, &limits);
    assert_eq!(names(&plan.placements), ["trial0", "trial1", "other"]);
    assert_eq!(
        plan.waiting[0].reason,
        "run 1 already has 3 steps at once, its max_parallel"
    );
}

#[test]
fn selectors_and_gpu_constraints_choose_the_worker() {
    let mut a = worker("a", res(8000, 8192, 0), 0);
    a.labels.insert("zone".into(), "a".into());
    let mut h100 = worker("h100", res(8000, 8192, 0), 0);
    h100.gpus = vec![
        gpu(0, "NVIDIA H100 80GB HBM3", 80),
        gpu(1, "NVIDIA H100 80GB HBM3", 80),
    ];
    h100.free_gpus = h100.gpus.clone();
    h100.capacity.gpus = 2;
    let mut small = worker("small", res(8000, 8192, 0), 0);
    small.gpus = vec![
        gpu(0, "NVIDIA T4", 16),
        gpu(1, "NVIDIA T4", 16),
        gpu(3, "NVIDIA A100", 40),
    ];
    small.free_gpus = small.gpus.clone();
    small.capacity.gpus = 3;
    let workers = vec![a, h100, small];

    let mut zoned = step(1, "zoned", res(100, 1, 0));
    zoned.selector.insert("zone".into(), "a".into());
    let mut big_memory = step(1, "big", res(100, 1, 1));
    big_memory.gpu.min_memory_bytes = 40 << 30;
    let mut t4 = step(1, "t4", res(100, 1, 2));
    t4.gpu.model = Some("t4".into());
    let placed = place(&[zoned, big_memory, t4], &workers, &none());
    let on = |name: &str| {
        placed
            .iter()
            .find(|p| p.step == name)
            .map(|p| (p.worker.as_str(), p.gpus.clone()))
    };
    assert_eq!(on("zoned"), Some(("a", vec![])));
    // Both `h100` and `small` (its 40 GiB A100) fit; with equal CPU and memory
    // left the name decides.
    assert_eq!(on("big"), Some(("h100", vec![0])));
    assert_eq!(on("t4"), Some(("small", vec![0, 1])));
}

#[test]
fn a_step_with_an_image_goes_only_to_a_worker_with_a_container_runtime() {
    let mut image = step(1, "image", res(100, 1, 0));
    image.container = true;
    let plain = worker("plain", res(8000, 8192, 0), 0);
    let mut docker = worker("docker", res(1000, 1024, 0), 0);
    docker.containers = true;
    // Best fit would pick the bigger worker for a process; the image goes
    // where Docker is.
    let placed = place(&[image.clone()], &[plain.clone(), docker.clone()], &none());
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].worker, "docker");
    let waiting = plan(&[image.clone()], std::slice::from_ref(&plain), &none()).waiting;
    assert_eq!(
        waiting[0].reason,
        "needs a container runtime: no worker with Docker is registered"
    );
    let mut busy = docker.clone();
    busy.free = res(0, 0, 0);
    let waiting = plan(&[image.clone()], &[plain.clone(), busy], &none()).waiting;
    assert_eq!(
        waiting[0].reason,
        "needs a container runtime: waiting for room on a worker with Docker"
    );
    assert_eq!(
        never_fits_reason(
            res(100, 1, 0),
            &GpuNeed::default(),
            &BTreeMap::new(),
            true,
            &[plain]
        )
        .unwrap(),
        "needs a container runtime: no worker with Docker is registered"
    );
}

#[test]
fn reasons_name_what_is_short() {
    let workers = vec![worker("w", res(2000, 1024, 0), 1)];
    assert_eq!(
        never_fits_reason(
            res(1000, 100, 1),
            &GpuNeed::default(),
            &BTreeMap::new(),
            false,
            &workers
        ),
        None
    );
    let reason = never_fits_reason(
        res(64000, 100, 2),
        &GpuNeed::default(),
        &BTreeMap::new(),
        false,
        &workers,
    )
    .unwrap();
    assert!(
        reason.contains("64 CPUs (the largest worker has 2)"),
        "{reason}"
    );
    assert!(
        reason.contains("2 GPUs (the largest worker has 1)"),
        "{reason}"
    );
    assert_eq!(
        never_fits_reason(
            res(1, 1, 0),
            &GpuNeed::default(),
            &BTreeMap::new(),
            false,
            &[]
        )
        .unwrap(),
        "no worker is registered"
    );
    let mut labelled = step(1, "a", res(100, 1, 2));
    labelled
        .selector
        .insert("accelerator".into(), "h100".into());
    labelled.gpu.min_memory_bytes = 40 << 30;
    let mut h = worker("h", res(8000, 8192, 0), 1);
    h.labels.insert("accelerator".into(), "h100".into());
    let plan = plan(&[labelled.clone()], &[h], &none());
    assert_eq!(
        plan.waiting[0].reason,
        "no registered worker can ever fit it: needs 2 GPUs with ≥40.0 GiB \
         (the largest worker with labels accelerator=h100 has 1)"
    );
    let plan = super::plan(&[labelled], &workers, &none());
    assert_eq!(
        plan.waiting[0].reason,
        "no worker with labels accelerator=h100 is registered"
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    const MODELS: [&str; 3] = [
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA T4",
        "NVIDIA H100 80GB HBM3",
    ];

    fn arb_worker(index: usize) -> impl Strategy<Value = WorkerSlot> {
        (
            1u64..=16,
            1u64..=64,
            proptest::collection::vec((0usize..3, 8u64..=80), 0..=4),
            any::<bool>(),
            0u8..3,
            0u64..=100,
        )
            .prop_map(move |(cpus, gib, gpus, accepting, zone, busy_percent)| {
                let gpus: Vec<GpuSlot> = gpus
                    .into_iter()
                    .enumerate()
                    .map(|(i, (model, memory))| gpu(i as u32, MODELS[model], memory))
                    .collect();
                let capacity = Resources {
                    cpu_millis: cpus * 1000,
                    memory_bytes: gib << 30,
                    gpus: gpus.len() as u32,
                };
                // Part of it already taken by attempts outside this pass.
                let free_gpus: Vec<GpuSlot> = gpus
                    .iter()
                    .filter(|g| (g.index as u64 * 37 + busy_percent) % 100 >= busy_percent)
                    .cloned()
                    .collect();
                let free = Resources {
                    cpu_millis: capacity.cpu_millis * (100 - busy_percent) / 100,
                    memory_bytes: capacity.memory_bytes / 100 * (100 - busy_percent),
                    gpus: free_gpus.len() as u32,
                };
                WorkerSlot {
                    name: format!("w{index:02}"),
                    capacity,
                    free,
                    gpus,
                    free_gpus,
                    labels: BTreeMap::from([("zone".to_string(), format!("z{zone}"))]),
                    accepting,
                    containers: index.is_multiple_of(2),
                }
            })
    }

    fn arb_workers() -> impl Strategy<Value = Vec<WorkerSlot>> {
        (0usize..8).prop_flat_map(|n| (0..n).map(arb_worker).collect::<Vec<_>>())
    }

    fn arb_step(index: usize) -> impl Strategy<Value = QueuedStep> {
        (
            1u64..=6,
            (1u64..=8000, 1u64..=32768, 0u32..=3),
            proptest::option::of(0usize..3),
            prop_oneof![Just(0u64), 16u64..=80],
            proptest::option::of(0u8..3),
            -1i32..=1,
            0usize..3,
        )
            .prop_map(
                move |(run, (cpu, mib, gpus), model, gib, zone, priority, project)| QueuedStep {
                    run,
                    step: format!("s{index:03}"),
                    resources: Resources {
                        cpu_millis: cpu,
                        memory_bytes: mib << 20,
                        gpus,
                    },
                    gpu: GpuNeed {
                        model: model.map(|m| MODELS[m].split(' ').nth(1).unwrap().to_string()),
                        min_memory_bytes: gib << 30,
                    },
                    selector: zone
                        .map(|z| BTreeMap::from([("zone".to_string(), format!("z{z}"))]))
                        .unwrap_or_default(),
                    container: index.is_multiple_of(3),
                    priority,
                    project: format!("p{project}"),
                    sweep: None,
                },
            )
    }

    fn arb_queue() -> impl Strategy<Value = Vec<QueuedStep>> {
        (0usize..40).prop_flat_map(|n| (0..n).map(arb_step).collect::<Vec<_>>())
    }

    fn arb_limits() -> impl Strategy<Value = Limits> {
        (
            proptest::collection::vec(
                (
                    proptest::option::of(0u64..=20),
                    proptest::option::of(0u32..=6),
                ),
                3,
            ),
            proptest::collection::vec((proptest::option::of(0u32..=4), 0u32..=3), 6),
            proptest::collection::vec((0u64..=6, 0u32..=3), 3),
        )
            .prop_map(|(quotas, runs, usage)| Limits {
                quotas: quotas
                    .into_iter()
                    .enumerate()
                    .map(|(i, (cpus, gpus))| {
                        let quota = Quota {
                            max_cpu_millis: cpus.map(|c| c * 1000),
                            max_gpus: gpus,
                        };
                        (format!("p{i}"), quota)
                    })
                    .collect(),
                runs: runs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (max_parallel, active))| {
                        (
                            i as u64 + 1,
                            RunLimit {
                                max_parallel,
                                active,
                            },
                        )
                    })
                    .collect(),
                usage: usage
                    .into_iter()
                    .enumerate()
                    .map(|(i, (cpus, gpus))| {
                        let used = Usage {
                            cpu_millis: cpus * 1000,
                            gpus,
                        };
                        (format!("p{i}"), used)
                    })
                    .collect(),
                sweeps: BTreeMap::new(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn a_pass_respects_every_limit(
            workers in arb_workers(),
            queue in arb_queue(),
            limits in arb_limits(),
        ) {
            let plan = plan(&queue, &workers, &limits);
            // Every queued step is either placed or waiting with a reason, once.
            prop_assert_eq!(plan.placements.len() + plan.waiting.len(), queue.len());
            let mut seen = BTreeSet::new();
            for p in &plan.placements {
                prop_assert!(seen.insert((p.run, p.step.clone())), "placed twice: {:?}", p);
            }
            for w in &plan.waiting {
                prop_assert!(!w.reason.is_empty());
                prop_assert!(seen.insert((w.run, w.step.clone())), "placed and waiting: {:?}", w);
            }
            let by_name: BTreeMap<&str, &WorkerSlot> =
                workers.iter().map(|w| (w.name.as_str(), w)).collect();
            let find = |p: &Placement| {
                queue.iter().find(|q| q.run == p.run && q.step == p.step).expect("a queued step")
            };
            let mut cpu: BTreeMap<&str, u64> = BTreeMap::new();
            let mut memory: BTreeMap<&str, u64> = BTreeMap::new();
            let mut gpus_taken: BTreeSet<(&str, u32)> = BTreeSet::new();
            let mut project_use: BTreeMap<String, Usage> = limits.usage.clone();
            let mut run_use: BTreeMap<RunId, u32> = BTreeMap::new();
            for p in &plan.placements {
                let step = find(p);
                let worker = by_name[p.worker.as_str()];
                prop_assert!(worker.accepting, "placed on a worker without a stream");
                for (key, value) in &step.selector {
                    prop_assert_eq!(worker.labels.get(key), Some(value));
                }
                prop_assert!(
                    !step.container || worker.containers,
                    "a step with an image on a worker without a container runtime"
                );
                *cpu.entry(&worker.name).or_default() += step.resources.cpu_millis;
                *memory.entry(&worker.name).or_default() += step.resources.memory_bytes;
                prop_assert_eq!(p.gpus.len(), step.resources.gpus as usize);
                for index in &p.gpus {
                    let free = worker.free_gpus.iter().find(|g| g.index == *index);
                    prop_assert!(free.is_some(), "GPU {} was not free", index);
                    prop_assert!(step.gpu.accepts(free.unwrap()), "GPU {} does not match", index);
                    prop_assert!(gpus_taken.insert((worker.name.as_str(), *index)), "GPU given twice");
                }
                let used = project_use.entry(step.project.clone()).or_default();
                used.cpu_millis += step.resources.cpu_millis;
                used.gpus += step.resources.gpus;
                if let Some(quota) = limits.quotas.get(&step.project) {
                    if let Some(max) = quota.max_cpu_millis {
                        prop_assert!(used.cpu_millis <= max, "CPU quota of {} broken", step.project);
                    }
                    if let (Some(max), true) = (quota.max_gpus, step.resources.gpus > 0) {
                        prop_assert!(used.gpus <= max, "GPU quota of {} broken", step.project);
                    }
                }
                let running = run_use.entry(step.run).or_insert_with(|| {
                    limits.runs.get(&step.run).map(|l| l.active).unwrap_or(0)
                });
                *running += 1;
                if let Some(max) = limits.runs.get(&step.run).and_then(|l| l.max_parallel) {
                    prop_assert!(*running <= max, "run {} over max_parallel", step.run);
                }
            }
            for (name, used) in cpu {
                prop_assert!(used <= by_name[name].free.cpu_millis, "CPU oversubscribed on {}", name);
            }
            for (name, used) in memory {
                prop_assert!(used <= by_name[name].free.memory_bytes, "memory oversubscribed on {}", name);
            }
        }

        #[test]
        fn a_step_that_fits_an_idle_cluster_is_placed(
            workers in arb_workers(),
            step in arb_step(0),
        ) {
            let idle: Vec<WorkerSlot> = workers
                .into_iter()
                .map(|mut w| {
                    w.free = w.capacity;
                    w.free_gpus = w.gpus.clone();
                    w
                })
                .collect();
            let fits = idle.iter().any(|w| w.accepting && Shape::of(&step).fits_idle(w));
            let plan = plan(std::slice::from_ref(&step), &idle, &Limits::default());
            prop_assert_eq!(plan.placements.len(), usize::from(fits), "{:?}", plan.waiting);
        }
    }
}

/// The scheduler's view of a real state: spec fields become the queue's
/// priority, project, selector and GPU needs; active attempts count towards
/// their project's usage and their run's `max_parallel`; a retry waits out its
/// backoff.
#[test]
fn the_state_view_carries_the_spec_and_the_usage() {
    use crate::state::{Command, GpuInfo, Worker, WorkerMode};
    let yaml = r#"name: p
project: vision
priority: 7
max_parallel: 2
steps:
  - name: train
    node_selector: {zone: a}
    resources: {cpu: 2, gpu: {count: 1, model: H100, min_memory: 40Gi}}
    command: ["true"]
  - name: other
    command: ["true"]
"#;
    let pipeline = ferry_spec::parse_pipeline("p.yaml", yaml, &BTreeMap::new()).unwrap();
    let mut state = State::default();
    state
        .apply(Command::SubmitRun {
            pipeline,
            bundle_digest: "blake3:b".into(),
            submitter: "alice".into(),
            request_id: None,
            options: Default::default(),
            now_ms: 1,
            placements: Vec::new(),
        })
        .unwrap();
    state
        .apply(Command::RegisterWorker {
            worker: Worker {
                name: "w".into(),
                capacity: res(8000, 8192, 1),
                gpus: vec![GpuInfo {
                    index: 0,
                    uuid: "GPU-0".into(),
                    model: "NVIDIA H100 80GB HBM3".into(),
                    memory_bytes: 80 << 30,
                }],
                labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
                registered_ms: 1,
                session: "s".into(),
                mode: WorkerMode::Active,
                lost_ms: None,
                container_runtime: None,
            },
            running: Vec::new(),
            now_ms: 2,
        })
        .unwrap();
    let accepting = BTreeSet::from(["w".to_string()]);
    let (queue, _) = ready_queue(&state, 3);
    let workers = worker_slots(&state, &accepting);
    assert_eq!(queue.len(), 2);
    let train = &queue[0];
    assert_eq!((train.priority, train.project.as_str()), (7, "vision"));
    assert_eq!(train.selector["zone"], "a");
    assert_eq!(train.gpu.model.as_deref(), Some("H100"));
    assert_eq!(train.gpu.min_memory_bytes, 40 << 30);
    let quotas = BTreeMap::from([(
        "vision".to_string(),
        Quota {
            max_cpu_millis: None,
            max_gpus: Some(1),
        },
    )]);
    let placements = place(&queue, &workers, &limits(&state, &quotas, &queue));
    assert_eq!(placements.len(), 2);
    assert_eq!(placements[0].gpus, [0]);
    state
        .apply(Command::Assign {
            placements,
            now_ms: 4,
        })
        .unwrap();
    let limits = limits(&state, &quotas, &queue);
    assert_eq!(
        limits.usage["vision"],
        Usage {
            cpu_millis: 2500,
            gpus: 1
        }
    );
    assert_eq!(
        limits.runs[&1],
        RunLimit {
            max_parallel: Some(2),
            active: 2
        }
    );
    // A cordoned worker takes no new work even with a live stream.
    state
        .apply(Command::SetWorkerMode {
            worker: "w".into(),
            mode: WorkerMode::Cordoned,
            now_ms: 5,
        })
        .unwrap();
    assert!(!worker_slots(&state, &accepting)[0].accepting);
}

/// A 100-trial sweep with `max_parallel: 8` on a cluster with room for all of
/// them: no pass, however the trials finish, has more than 8 running at once,
/// and every trial eventually runs.
#[test]
fn a_sweep_never_runs_more_trials_at_once_than_its_max_parallel() {
    use crate::state::{AttemptKey, Command, Outcome, Worker, WorkerMode};
    let yaml = r#"name: sweep
steps:
  - name: train
    matrix: {lr: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], depth: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}
    max_parallel: 8
    resources: {cpu: 0.1, memory: 1Mi}
    command: ["train", "${matrix.lr}", "${matrix.depth}"]
  - name: pick
    gather: [train]
    command: ["pick"]
"#;
    let pipeline = ferry_spec::parse_pipeline("p.yaml", yaml, &BTreeMap::new()).unwrap();
    let mut state = State::default();
    state
        .apply(Command::SubmitRun {
            pipeline,
            bundle_digest: "blake3:b".into(),
            submitter: "alice".into(),
            request_id: None,
            options: Default::default(),
            now_ms: 1,
            placements: Vec::new(),
        })
        .unwrap();
    state
        .apply(Command::RegisterWorker {
            worker: Worker {
                name: "w".into(),
                capacity: res(64_000, 65_536, 0),
                gpus: Vec::new(),
                labels: BTreeMap::new(),
                registered_ms: 1,
                session: "s".into(),
                mode: WorkerMode::Active,
                lost_ms: None,
                container_runtime: None,
            },
            running: Vec::new(),
            now_ms: 2,
        })
        .unwrap();
    let accepting = BTreeSet::from(["w".to_string()]);
    let mut now = 3;
    let mut finished = 0;
    let mut most = 0;
    for _pass in 0..200 {
        let (queue, _) = ready_queue(&state, now);
        let plan = plan(
            &queue,
            &worker_slots(&state, &accepting),
            &limits(&state, &BTreeMap::new(), &queue),
        );
        if let Some(waiting) = plan.waiting.first() {
            assert!(
                waiting
                    .reason
                    .contains("the sweep \"train\" already has 8 trials at once"),
                "{}",
                waiting.reason
            );
        }
        now += 1;
        let Outcome::Assigned(assigned) = state
            .apply(Command::Assign {
                placements: plan.placements,
                now_ms: now,
            })
            .unwrap()
        else {
            panic!("assign");
        };
        let running = state.loads["w"].attempts.len();
        most = most.max(running);
        assert!(running <= 8, "{running} trials at once");
        // Finish some of them (one, or all but one, in turn).
        let held: Vec<AttemptKey> = state.loads["w"].attempts.keys().cloned().collect();
        let take = if now % 2 == 0 {
            1
        } else {
            held.len().saturating_sub(1)
        };
        for key in held.into_iter().take(take) {
            now += 1;
            state
                .apply(Command::StepFinished {
                    key,
                    worker: "w".into(),
                    report: crate::state::AttemptReport {
                        outcome: crate::state::ReportedOutcome::Exited,
                        exit_code: Some(0),
                        reason: None,
                        outputs: Vec::new(),
                        log: None,
                        usage: None,
                        ran_ms: None,
                        metrics: Vec::new(),
                        image: None,
                    },
                    now_ms: now,
                    placements: Vec::new(),
                })
                .unwrap();
            finished += 1;
        }
        let _ = assigned;
        if state.runs[&1].state.is_terminal() {
            break;
        }
    }
    assert_eq!(most, 8);
    // 100 trials and the gathering step ran.
    assert_eq!(finished, 101);
    assert!(state.runs[&1].state == crate::state::RunState::Succeeded);
    let pick = state.runs[&1].step("pick").unwrap();
    assert_eq!(
        state.runs[&1].pipeline.steps.last().unwrap().needs.len(),
        100
    );
    assert!(pick.inputs.is_empty(), "trials declared no outputs");
}
