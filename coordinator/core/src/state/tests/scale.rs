//! A wide run through the state machine and the scheduler as the leader drives
//! it: submit, then passes of `ready_queue` and `plan` whose placements are
//! assigned, started and finished, until the run succeeds. The default test is
//! small; `wide_run_at_scale` (ignored: `cargo test -p ferry-coordinator-core
//! --release wide_run_at_scale -- --ignored --nocapture`, `FERRY_SCALE_STEPS`
//! steps, 100,000 by default) prints how long each phase took (BENCHMARKS.md).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferry_spec::SubmitLimits;

use super::*;
use crate::scheduler::{self, Quota};

/// A pipeline of `steps` independent no-op steps: matrix steps of at most
/// 10,000 trials each (or, with `FERRY_SCALE_PLAIN` set, steps written one
/// by one).
pub(super) fn wide_yaml(steps: usize) -> String {
    let mut yaml = String::from("name: wide\nsteps:\n");
    if std::env::var_os("FERRY_SCALE_PLAIN").is_some() {
        for i in 0..steps {
            yaml.push_str(&format!(
                "  - {{name: s{i}, command: [\"true\"], resources: {{cpu: 0.01, memory: 1Mi}}}}\n"
            ));
        }
        return yaml;
    }
    let mut left = steps;
    let mut part = 0;
    while left > 0 {
        let trials = left.min(10_000);
        let values: Vec<String> = (0..trials).map(|i| i.to_string()).collect();
        yaml.push_str(&format!(
            "  - name: part{part}\n    matrix: {{i: [{}]}}\n    resources: {{cpu: 0.01, memory: 1Mi}}\n    command: [\"true\"]\n",
            values.join(", ")
        ));
        left -= trials;
        part += 1;
    }
    yaml
}

/// What driving a wide run took.
#[derive(Default, Debug)]
struct Timings {
    parse: Duration,
    submit: Duration,
    passes: Duration,
    assign: Duration,
    start: Duration,
    finish: Duration,
    rounds: usize,
    /// The pipeline file.
    yaml_bytes: usize,
    /// The pipeline as JSON (what a `SubmitRun` entry carries).
    pipeline_json_bytes: usize,
    /// The finished run as JSON (its part of a snapshot).
    run_json_bytes: usize,
}

fn drive_wide_run(steps: usize, workers: usize) -> (State, RunId, Timings) {
    let mut timings = Timings::default();
    let limits = SubmitLimits {
        max_steps: steps.max(1),
        ..SubmitLimits::default()
    };
    let yaml = wide_yaml(steps);
    timings.yaml_bytes = yaml.len();
    let clock = Instant::now();
    let pipeline = ferry_spec::parse_pipeline_within("wide.yaml", &yaml, &BTreeMap::new(), &limits)
        .unwrap_or_else(|e| panic!("the wide pipeline does not parse:\n{e}"));
    timings.parse = clock.elapsed();
    assert_eq!(pipeline.steps.len(), steps);
    timings.pipeline_json_bytes = serde_json::to_vec(&pipeline).map_or(0, |v| v.len());

    let mut state = State::default();
    let mut now = 1i64;
    for w in 0..workers {
        state
            .apply(Command::RegisterWorker {
                worker: big_worker(&format!("w{w}")),
                running: Vec::new(),
                now_ms: now,
            })
            .unwrap();
    }
    let clock = Instant::now();
    let Outcome::RunSubmitted { run, .. } = state
        .apply(Command::SubmitRun {
            pipeline,
            bundle_digest: "blake3:b".into(),
            submitter: "alice".into(),
            request_id: None,
            options: SubmitOptions::default(),
            now_ms: now,
            placements: Vec::new(),
        })
        .unwrap()
    else {
        panic!("not submitted")
    };
    timings.submit = clock.elapsed();
    let accepting: BTreeSet<String> = state.workers.keys().cloned().collect();
    let quotas = BTreeMap::<String, Quota>::new();
    while !state.runs[&run].state.is_terminal() {
        now += 1;
        timings.rounds += 1;
        let clock = Instant::now();
        let (queue, _) = scheduler::ready_queue(&state, now);
        let slots = scheduler::worker_slots(&state, &accepting);
        let limits = scheduler::limits(&state, &quotas, &queue);
        let placements = scheduler::plan(&queue, &slots, &limits).placements;
        timings.passes += clock.elapsed();
        assert!(!placements.is_empty(), "a pass placed nothing");
        let placed: Vec<(AttemptKey, String)> = placements
            .iter()
            .map(|p| (key(p.run, &p.step, 1), p.worker.clone()))
            .collect();
        let clock = Instant::now();
        state
            .apply(Command::Assign {
                placements,
                now_ms: now,
            })
            .unwrap();
        timings.assign += clock.elapsed();
        let clock = Instant::now();
        for (key, worker) in &placed {
            state
                .apply(Command::StepStarted {
                    key: key.clone(),
                    worker: worker.clone(),
                    now_ms: now,
                })
                .unwrap();
        }
        timings.start += clock.elapsed();
        let clock = Instant::now();
        for (key, worker) in placed {
            state
                .apply(Command::StepFinished {
                    key,
                    worker,
                    report: exited_ok(&[]),
                    now_ms: now,
                    placements: Vec::new(),
                })
                .unwrap();
        }
        timings.finish += clock.elapsed();
    }
    (state, run, timings)
}

#[test]
fn a_wide_run_completes_with_its_counts_kept() {
    let (state, run, timings) = drive_wide_run(12_000, 4);
    let run = &state.runs[&run];
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.steps.counts().of(StepState::Succeeded), 12_000);
    assert_eq!(run.steps.counts().unfinished(), 0);
    assert!(run.steps.derived_matches_records());
    assert_eq!(state.runs.ready(), &state.runs.rebuilt_index());
    assert!(timings.rounds > 1);
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn wide_run_at_scale() {
    let steps = std::env::var("FERRY_SCALE_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let clock = Instant::now();
    let (state, run, timings) = drive_wide_run(steps, 20);
    let total = clock.elapsed();
    assert_eq!(state.runs[&run].state, RunState::Succeeded);
    let mut timings = timings;
    timings.run_json_bytes = serde_json::to_vec(&*state.runs[&run]).map_or(0, |v| v.len());
    println!(
        "{steps} steps: {total:.2?} in all ({:.0} steps/s through the state machine); {timings:#?}",
        steps as f64 / total.as_secs_f64()
    );
}
