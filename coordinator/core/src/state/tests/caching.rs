//! Caching, re-runs, schedules, pins, lineage and garbage collection.

use super::*;

// ---------------------------------------------------------------------------
// Caching, re-runs, schedules, pins, garbage collection, lineage (issue 5).

/// prepare → train (reads prepare's data) → evaluate; `seed` is seen by train
/// only.
fn cached_pipeline(train_command: &str, version: &str) -> String {
    format!(
        r#"
name: ml
params:
  seed: 1
  other: x
steps:
  - name: prepare
    command: ["prep"]
    outputs: [data.csv]
  - name: train
    inputs: {{data: prepare/data.csv}}
    command: ["{train_command}", "${{params.seed}}"]
    outputs: [model.bin]
    cache: {{version: "{version}"}}
  - name: evaluate
    inputs: {{model: train/model.bin}}
    command: ["eval"]
    outputs: [score.json]
"#
    )
}

/// Succeeds a step reporting each output with a digest made of `content`.
fn succeed_with(sim: &mut Sim, run: RunId, step: &str, content: &str) -> AttemptKey {
    let key = sim.assign(run, step, "w1");
    sim.start(&key);
    let outputs = sim.spec_outputs(run, step);
    let mut report = exited_ok(&[]);
    report.outputs = outputs
        .iter()
        .map(|o| (o.clone(), format!("blake3:{content}-{o}"), 10))
        .collect();
    sim.finish(&key, report);
    key
}

fn run_all(sim: &mut Sim, run: RunId, content: &str) {
    while let Some((_, step)) = sim.queued().into_iter().find(|(r, _)| *r == run) {
        succeed_with(sim, run, &step, content);
    }
    assert_eq!(
        sim.run(run).state,
        RunState::Succeeded,
        "{:?}",
        sim.states(run)
    );
}

fn reused(sim: &Sim, run: RunId) -> Vec<(String, Option<(RunId, ReuseKind)>)> {
    sim.run(run)
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.reused.as_ref().map(|r| (r.run, r.how))))
        .collect()
}

fn with_params(yaml: &str, params: &[(&str, &str)]) -> Pipeline {
    let overrides = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_pipeline("pipeline.yaml", yaml, &overrides).unwrap()
}

impl Sim {
    fn submit_pipeline(&mut self, pipeline: Pipeline, options: SubmitOptions) -> RunId {
        let now_ms = self.tick();
        match self.apply(Command::SubmitRun {
            pipeline,
            bundle_digest: "blake3:bundle".to_string(),
            submitter: "alice".to_string(),
            request_id: None,
            options,
            now_ms,
            placements: Vec::new(),
        }) {
            Ok(Outcome::RunSubmitted { run: id, .. }) => id,
            other => panic!("submit: {other:?}"),
        }
    }
}

#[test]
fn a_second_identical_run_is_served_from_the_cache_for_every_step() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = cached_pipeline("train", "");
    let first = sim.submit_cached(&yaml);
    run_all(&mut sim, first, "r1");
    let second = sim.submit_cached(&yaml);
    // Completed at submission: nothing queued, every step cached from run 1.
    assert_eq!(sim.run(second).state, RunState::Succeeded);
    assert!(sim.queued().is_empty());
    for (step, reuse) in reused(&sim, second) {
        assert_eq!(reuse, Some((first, ReuseKind::Cached)), "{step}");
    }
    // Same artifacts, by reference.
    assert_eq!(
        sim.step(second, "evaluate").outputs,
        sim.step(first, "evaluate").outputs
    );
    // `--no-cache` runs everything again.
    let fresh = sim.submit_pipeline(
        pipeline(&yaml),
        SubmitOptions {
            no_cache: true,
            ..Default::default()
        },
    );
    assert_eq!(sim.queued(), [(fresh, "prepare".to_string())]);
}

#[test]
fn changing_a_parameter_command_version_or_input_reruns_exactly_the_affected_steps() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let base = cached_pipeline("train", "");
    let first = sim.submit_cached(&base);
    run_all(&mut sim, first, "r1");

    // A parameter only `train` sees: prepare cached, train and evaluate run.
    let changed = sim.submit_pipeline(with_params(&base, &[("seed", "2")]), Default::default());
    assert_eq!(
        sim.step(changed, "prepare").reused.as_ref().unwrap().run,
        first
    );
    assert_eq!(sim.queued(), [(changed, "train".to_string())]);
    run_all(&mut sim, changed, "r2");
    assert!(sim.step(changed, "evaluate").reused.is_none());

    // A parameter no step sees changes nothing.
    let unrelated = sim.submit_pipeline(with_params(&base, &[("other", "y")]), Default::default());
    assert_eq!(sim.run(unrelated).state, RunState::Succeeded);

    // The command, and the cache version, of train.
    for yaml in [
        cached_pipeline("train2", ""),
        cached_pipeline("train", "v2"),
    ] {
        let run = sim.submit_cached(&yaml);
        assert_eq!(sim.step_state(run, "prepare"), StepState::Succeeded);
        assert_eq!(sim.queued(), [(run, "train".to_string())], "{yaml}");
        run_all(&mut sim, run, &format!("r{run}"));
    }

    // An input: prepare produces other data (not from the cache), so train
    // and evaluate run again although their specs did not change.
    let run = sim.submit_pipeline(
        pipeline(&base),
        SubmitOptions {
            no_cache: true,
            ..Default::default()
        },
    );
    succeed_with(&mut sim, run, "prepare", "new-data");
    let again = sim.submit_cached(&base);
    // The newest prepare result is in the cache: the new data.
    assert_eq!(
        sim.step(again, "prepare").outputs[0].digest,
        "blake3:new-data-data.csv"
    );
    assert_eq!(sim.queued().last(), Some(&(again, "train".to_string())));
}

#[test]
fn identical_steps_submitted_at_once_run_once() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = cached_pipeline("train", "");
    let first = sim.submit_cached(&yaml);
    let second = sim.submit_cached(&yaml);
    // Both are queued: neither is computing yet.
    assert_eq!(
        sim.queued(),
        [
            (first, "prepare".to_string()),
            (second, "prepare".to_string())
        ]
    );
    // Both placed in one pass: the first owns the key, the second waits for it.
    let assigned = sim.assign_all(vec![
        placement(first, "prepare", "w1", &[]),
        placement(second, "prepare", "w1", &[]),
    ]);
    assert_eq!(assigned.len(), 1, "{assigned:?}");
    assert_eq!(sim.step_state(second, "prepare"), StepState::Waiting);
    assert!(
        sim.step(second, "prepare")
            .reason
            .as_deref()
            .unwrap()
            .contains("identical step \"prepare\" of run 1"),
    );
    // The rebuilt state knows who computes what.
    let rebuilt = State::from_records(
        sim.state.runs.values().map(|r| Run::clone(r)).collect(),
        sim.state.workers.values().cloned().collect(),
        sim.state.next_run_id,
    );
    assert_eq!(rebuilt.cache_owners, sim.state.cache_owners);
    assert_eq!(rebuilt.cache_pending, sim.state.cache_pending);
    let key = assigned[0].0.clone();
    sim.start(&key);
    sim.succeed(&key);
    // The waiting twin took the result; the first run goes on.
    assert_eq!(sim.step_state(second, "prepare"), StepState::Succeeded);
    run_all(&mut sim, first, "r1");
    // Every step of the second run came from the first, none ran: its train was
    // queued beside the first's and completed when that one succeeded.
    assert_eq!(
        sim.run(second).state,
        RunState::Succeeded,
        "{:?}",
        sim.states(second)
    );
    assert!(sim.run(second).steps.iter().all(|s| s.attempts.is_empty()));
}

#[test]
fn a_step_never_waits_behind_an_identical_one_that_cannot_be_placed() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let stuck =
        "name: p\nsteps:\n  - name: t\n    command: [\"x\"]\n    node_selector: {pool: nowhere}\n";
    let free = "name: p\nsteps:\n  - name: t\n    command: [\"x\"]\n";
    let first = sim.submit_cached(stuck);
    let second = sim.submit_cached(free);
    // Same key (placement is not part of it); the second runs and the first,
    // still queued, takes its result.
    assert_eq!(
        sim.step(first, "t").cache_key,
        sim.step(second, "t").cache_key
    );
    succeed_with(&mut sim, second, "t", "x");
    assert_eq!(sim.run(first).state, RunState::Succeeded);
    assert_eq!(sim.step(first, "t").reused.as_ref().unwrap().run, second);
}

#[test]
fn a_failed_step_is_never_cached_and_hands_its_key_to_a_waiting_twin() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = "name: p\nsteps:\n  - name: a\n    command: [\"x\"]\n    outputs: [o]\n";
    let first = sim.submit_cached(yaml);
    let second = sim.submit_cached(yaml);
    let key = sim.assign(first, "a", "w1");
    sim.finish(&key, exited(1));
    assert_eq!(sim.run(first).state, RunState::Failed);
    assert!(sim.state.catalog.cache.is_empty());
    // The twin now runs itself.
    assert_eq!(sim.queued(), [(second, "a".to_string())]);
    succeed_with(&mut sim, second, "a", "ok");
    assert_eq!(sim.state.catalog.cache.len(), 1);
    // A cancelled owner hands over too.
    let third = sim.submit_pipeline(
        pipeline(&yaml.replace("\"x\"", "\"y\"")),
        Default::default(),
    );
    let fourth = sim.submit_pipeline(
        pipeline(&yaml.replace("\"x\"", "\"y\"")),
        Default::default(),
    );
    sim.cancel(third).unwrap();
    assert_eq!(sim.queued(), [(fourth, "a".to_string())]);
}

#[test]
fn cache_false_turns_caching_off_for_a_step() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = "name: p\nsteps:\n  - name: a\n    command: [\"x\"]\n    cache: false\n";
    let first = sim.submit_cached(yaml);
    run_all(&mut sim, first, "r1");
    let second = sim.submit_cached(yaml);
    assert_eq!(sim.queued(), [(second, "a".to_string())]);
    assert!(sim.step(second, "a").cache_key.is_none());
}

#[test]
fn rerun_from_a_step_reuses_upstream_outputs_and_runs_downstream_again() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = cached_pipeline("train", "");
    let first = sim.submit(&yaml);
    run_all(&mut sim, first, "r1");
    let now_ms = sim.tick();
    let Ok(Outcome::RunSubmitted { run: rerun, .. }) = sim.apply(Command::RerunRun {
        source: first,
        from: Some("train".into()),
        submitter: "alice".into(),
        request_id: None,
        now_ms,
    }) else {
        panic!("rerun refused");
    };
    assert_eq!(sim.run(rerun).rerun_of, Some(first));
    assert_eq!(
        sim.step(rerun, "prepare").reused,
        Some(Reuse {
            run: first,
            step: "prepare".into(),
            how: ReuseKind::Rerun
        })
    );
    assert_eq!(
        sim.step(rerun, "prepare").outputs,
        sim.step(first, "prepare").outputs
    );
    // train runs again although its result is cached; evaluate waits for it.
    assert_eq!(sim.queued(), [(rerun, "train".to_string())]);
    assert_eq!(sim.step_state(rerun, "evaluate"), StepState::Waiting);
    // train's input is prepare's artifact of run 1, by digest.
    assert_eq!(
        sim.step(rerun, "train").inputs[0].digest,
        sim.step(first, "prepare").outputs[0].digest
    );

    // Without --from: only what did not succeed (and what follows it).
    let failing = sim.submit(&yaml);
    succeed_with(&mut sim, failing, "prepare", "f");
    let key = sim.assign(failing, "train", "w1");
    sim.finish(&key, exited(3));
    assert_eq!(sim.run(failing).state, RunState::Failed);
    let now_ms = sim.tick();
    let Ok(Outcome::RunSubmitted { run: again, .. }) = sim.apply(Command::RerunRun {
        source: failing,
        from: None,
        submitter: "alice".into(),
        request_id: None,
        now_ms,
    }) else {
        panic!("rerun refused");
    };
    assert_eq!(sim.queued().last(), Some(&(again, "train".to_string())));
    assert!(sim.step(again, "prepare").reused.is_some());

    // Refusals name the problem and change nothing.
    let before = sim.state.runs.len();
    let refuse = |sim: &mut Sim, source, from: Option<&str>| {
        let now_ms = sim.tick();
        sim.apply(Command::RerunRun {
            source,
            from: from.map(str::to_string),
            submitter: "alice".into(),
            request_id: None,
            now_ms,
        })
        .unwrap_err()
        .to_string()
    };
    assert!(
        refuse(&mut sim, first, Some("trian"))
            .contains("no step or sweep \"trian\" (it has: evaluate, prepare, train)")
    );
    assert!(refuse(&mut sim, first, None).contains("every step would be reused"));
    assert!(refuse(&mut sim, again, None).contains("still running"));
    assert!(refuse(&mut sim, 99, None).contains("does not exist"));
    assert_eq!(sim.state.runs.len(), before);
}

#[test]
fn a_schedule_fires_once_per_tick_and_not_while_paused() {
    let mut sim = Sim::new();
    let schedule = Schedule {
        name: "nightly".into(),
        cron: "0 0 * * *".into(),
        pipeline: pipeline(CHAIN),
        bundle_digest: "blake3:bundle".into(),
        code_digests: BTreeMap::new(),
        owner: "alice".into(),
        created_ms: 0,
        paused: false,
        after_ms: 0,
        last_tick_ms: None,
        last_run: None,
        fired: 0,
        missed: 0,
    };
    sim.apply(Command::CreateSchedule {
        schedule: schedule.clone(),
        now_ms: 5_000,
    })
    .unwrap();
    assert!(matches!(
        sim.apply(Command::CreateSchedule {
            schedule,
            now_ms: 5_001
        }),
        Err(StateError::ScheduleExists(_))
    ));
    let fire = |sim: &mut Sim, tick_ms: i64| {
        sim.apply(Command::FireSchedule {
            name: "nightly".into(),
            tick_ms,
            missed: 0,
            now_ms: tick_ms + 1,
        })
        .unwrap()
    };
    // A tick before the schedule existed never fires.
    assert_eq!(fire(&mut sim, 4_000), Outcome::Unchanged);
    let Outcome::RunSubmitted { run, .. } = fire(&mut sim, 10_000) else {
        panic!("the tick did not fire");
    };
    assert_eq!(sim.run(run).schedule, Some(("nightly".to_string(), 10_000)));
    // The same tick again (a retry, a new leader) and an older one: nothing.
    assert_eq!(fire(&mut sim, 10_000), Outcome::Unchanged);
    assert_eq!(fire(&mut sim, 9_000), Outcome::Unchanged);
    // Paused: nothing; resumed: ticks from the pause are not made up.
    sim.apply(Command::PauseSchedule {
        name: "nightly".into(),
        paused: true,
        now_ms: 11_000,
    })
    .unwrap();
    assert_eq!(fire(&mut sim, 12_000), Outcome::Unchanged);
    sim.apply(Command::PauseSchedule {
        name: "nightly".into(),
        paused: false,
        now_ms: 15_000,
    })
    .unwrap();
    assert_eq!(fire(&mut sim, 14_000), Outcome::Unchanged);
    assert!(matches!(
        fire(&mut sim, 16_000),
        Outcome::RunSubmitted { .. }
    ));
    let schedule = &sim.state.catalog.schedules["nightly"];
    assert_eq!((schedule.fired, schedule.last_tick_ms), (2, Some(16_000)));
    sim.apply(Command::DeleteSchedule {
        name: "nightly".into(),
        now_ms: 17_000,
    })
    .unwrap();
    assert_eq!(fire(&mut sim, 20_000), Outcome::Unchanged);
}

#[test]
fn lineage_walks_from_an_artifact_to_the_code_and_parameters() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let first = sim.submit_cached(&cached_pipeline("train", ""));
    run_all(&mut sim, first, "r1");
    // A cached run: lineage still names the step that ran.
    let second = sim.submit_cached(&cached_pipeline("train", ""));
    let score = sim.step(second, "evaluate").outputs[0].digest.clone();
    let nodes = sim.state.lineage(&score).unwrap();
    let steps: Vec<(RunId, &str)> = nodes.iter().map(|n| (n.run, n.step.as_str())).collect();
    assert_eq!(
        steps,
        [(first, "evaluate"), (first, "train"), (first, "prepare")]
    );
    assert_eq!(
        nodes[1].params,
        BTreeMap::from([("seed".to_string(), "1".to_string())])
    );
    assert_eq!(nodes[1].command, ["train", "1"]);
    assert_eq!(nodes[1].code_digest, "blake3:bundle");
    assert_eq!(nodes[1].inputs[0].digest, nodes[2].digest);
    assert!(sim.state.lineage("blake3:nothing").is_none());
}

#[test]
fn pins_need_a_known_artifact() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit(CHAIN);
    run_all(&mut sim, run, "r1");
    let digest = sim.step(run, "a").outputs[0].digest.clone();
    sim.apply(Command::PinArtifact {
        tag: "best".into(),
        digest: digest.clone(),
        owner: "alice".into(),
        now_ms: 1,
    })
    .unwrap();
    assert_eq!(sim.state.catalog.pins["best"].digest, digest);
    // The same pin again is fine; the tag on another artifact is refused and
    // changes nothing.
    sim.apply(Command::PinArtifact {
        tag: "best".into(),
        digest: digest.clone(),
        owner: "bob".into(),
        now_ms: 2,
    })
    .unwrap();
    let second = sim.submit(CHAIN);
    run_all(&mut sim, second, "r2");
    let other = sim.step(second, "a").outputs[0].digest.clone();
    assert_ne!(other, digest);
    let before = sim.state.catalog.clone();
    assert!(matches!(
        sim.apply(Command::PinArtifact {
            tag: "best".into(),
            digest: other.clone(),
            owner: "bob".into(),
            now_ms: 3,
        }),
        Err(StateError::PinTaken { tag, digest: pinned }) if tag == "best" && pinned == digest
    ));
    assert_eq!(sim.state.catalog, before);
    assert!(matches!(
        sim.apply(Command::PinArtifact {
            tag: "x".into(),
            digest: "blake3:unknown".into(),
            owner: "alice".into(),
            now_ms: 2,
        }),
        Err(StateError::ArtifactNotFound(_))
    ));
    assert!(matches!(
        sim.apply(Command::UnpinArtifact {
            tag: "nope".into(),
            now_ms: 3
        }),
        Err(StateError::PinNotFound(_))
    ));
}

/// A collection keeps the blobs written within the grace period, so a run it
/// collects stays in later plans until one comes a grace period after it; that
/// one releases it, and later ones no longer look at it.
#[test]
fn a_collected_run_is_planned_again_until_its_grace_period_has_passed() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let old = sim.submit(CHAIN);
    run_all(&mut sim, old, "old");
    let newer = sim.submit(CHAIN);
    run_all(&mut sim, newer, "new");
    let a = sim.step(old, "a").outputs[0].digest.clone();
    let collect = |sim: &mut Sim, now_ms: i64| {
        let Ok(Outcome::Collected {
            runs,
            blobs,
            grace_ms,
            ..
        }) = sim.apply(Command::Collect {
            keep_last: 1,
            now_ms,
            grace_ms: 1000,
        })
        else {
            panic!("collect")
        };
        assert_eq!(grace_ms, 1000);
        let blobs: BTreeSet<String> = blobs.into_iter().map(|(d, _)| d).collect();
        (runs, blobs)
    };
    let (runs, blobs) = collect(&mut sim, 10_000);
    assert_eq!(runs, vec![old]);
    assert!(blobs.contains(&a), "{blobs:?}");
    assert!(!sim.state.runs[&old].released);
    // Within the grace period: not collected again, but its blobs are planned.
    let (runs, blobs) = collect(&mut sim, 10_999);
    assert!(runs.is_empty());
    assert!(blobs.contains(&a), "{blobs:?}");
    assert!(!sim.state.runs[&old].released);
    // The first collection a grace period later deletes them and releases it.
    let (_, blobs) = collect(&mut sim, 11_000);
    assert!(blobs.contains(&a), "{blobs:?}");
    assert!(sim.state.runs[&old].released);
    let (_, blobs) = collect(&mut sim, 20_000);
    assert!(!blobs.contains(&a), "{blobs:?}");
}

/// Every digest a live thing refers to.
fn live_digests(state: &State) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    for run in state.runs.values().filter(|r| r.collected_ms.is_none()) {
        live.insert(run.bundle_digest.clone());
        for step in &run.steps {
            live.extend(step.outputs.iter().map(|a| a.digest.clone()));
            live.extend(step.inputs.iter().map(|i| i.digest.clone()));
            live.extend(
                step.attempts
                    .iter()
                    .filter_map(|a| a.log.as_ref().map(|(d, _)| d.clone())),
            );
        }
    }
    for entry in state.catalog.cache.values() {
        live.extend(entry.outputs.iter().map(|a| a.digest.clone()));
    }
    live.extend(state.catalog.pins.values().map(|p| p.digest.clone()));
    live.extend(
        state
            .catalog
            .schedules
            .values()
            .map(|s| s.bundle_digest.clone()),
    );
    live
}

fn all_digests(state: &State) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for run in state.runs.values() {
        all.insert(run.bundle_digest.clone());
        for step in &run.steps {
            all.extend(step.outputs.iter().map(|a| a.digest.clone()));
            all.extend(step.inputs.iter().map(|i| i.digest.clone()));
            all.extend(
                step.attempts
                    .iter()
                    .filter_map(|a| a.log.as_ref().map(|(d, _)| d.clone())),
            );
        }
    }
    all
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Over random histories (runs of two pipelines that succeed, fail, are
    /// cached or run fresh, share artifacts through the cache, pins, collections
    /// in between), `ferry gc` never deletes a blob something live refers to, and
    /// deletes every other blob of the runs it collected.
    #[test]
    fn gc_never_removes_a_referenced_artifact_and_removes_the_rest(
        history in proptest::collection::vec((0u8..6, 0u8..4, proptest::bool::ANY), 1..30),
        keep in 0u32..4,
        grace_ms in proptest::sample::select(vec![0u64, 25, 1000]),
    ) {
        let mut sim = Sim::new();
        sim.register(big_worker("w1"));
        let mut deleted_before = BTreeSet::new();
        for (i, (kind, content, fresh)) in history.into_iter().enumerate() {
            let yaml = if kind % 2 == 0 { cached_pipeline("train", "") } else { CHAIN.to_string() };
            let options = SubmitOptions { no_cache: fresh, ..Default::default() };
            match kind {
                0..=3 => {
                    let run = sim.submit_pipeline(pipeline(&yaml), options);
                    // Steps run or fail; waiting twins follow their owners.
                    let mut guard = 0;
                    while let Some((r, step)) = sim.queued().into_iter().next() {
                        guard += 1;
                        if guard > 50 { break; }
                        if kind == 3 && step == "b" && r == run {
                            let key = sim.assign(r, &step, "w1");
                            let mut report = exited(1);
                            report.log = Some((format!("blake3:log-{i}"), 5));
                            sim.finish(&key, report);
                        } else {
                            succeed_with(&mut sim, r, &step, &format!("c{content}"));
                        }
                    }
                }
                4 => {
                    let digests: Vec<String> = all_digests(&sim.state)
                        .into_iter()
                        .filter(|d| sim.state.artifact_size(d).is_some())
                        .collect();
                    if let Some(digest) = digests.get(content as usize % digests.len().max(1)) {
                        // A tag in use is moved: unpinned, then pinned again.
                        let tag = format!("t{content}");
                        let now_ms = sim.tick();
                        if sim.state.catalog.pins.get(&tag).is_some_and(|p| &p.digest != digest) {
                            sim.apply(Command::UnpinArtifact { tag: tag.clone(), now_ms }).unwrap();
                        }
                        sim.apply(Command::PinArtifact {
                            tag,
                            digest: digest.clone(),
                            owner: "alice".into(),
                            now_ms,
                        }).unwrap();
                    }
                }
                _ => {
                    let now_ms = sim.tick();
                    let Ok(Outcome::Collected { blobs, .. }) =
                        sim.apply(Command::Collect { keep_last: keep, now_ms, grace_ms }) else { panic!("collect") };
                    let live = live_digests(&sim.state);
                    for (digest, _) in blobs {
                        proptest::prop_assert!(!live.contains(&digest), "{digest} was live");
                        deleted_before.insert(digest);
                    }
                }
            }
        }
        let before_collected: BTreeSet<RunId> = sim.state.runs.values()
            .filter(|r| r.collected_ms.is_some()).map(|r| r.id).collect();
        let now_ms = sim.tick();
        let plan = gc_plan(&sim.state, keep, now_ms, grace_ms);
        let Ok(Outcome::Collected { runs, blobs, .. }) =
            sim.apply(Command::Collect { keep_last: keep, now_ms, grace_ms }) else { panic!("collect") };
        proptest::prop_assert_eq!(&runs, &plan.runs);
        let deleted: BTreeSet<String> = blobs.iter().map(|(d, _)| d.clone()).collect();
        let live = live_digests(&sim.state);
        // Never a referenced blob.
        proptest::prop_assert!(deleted.is_disjoint(&live), "{:?}", deleted.intersection(&live).collect::<Vec<_>>());
        // Every other blob of a collected run goes (now, or in an earlier
        // collection), and a blob is reported once: a run whose blobs all went
        // is not looked at again.
        for run in sim.state.runs.values().filter(|r| r.collected_ms.is_some()) {
            let mut blobs = BTreeMap::new();
            catalog::run_blobs(run, &mut blobs);
            for digest in blobs.keys() {
                proptest::prop_assert!(
                    live.contains(digest) || deleted.contains(digest) || deleted_before.contains(digest),
                    "{digest} of run {} kept", run.id
                );
            }
        }
        // Nothing leaks: a blob of a run no plan looks at any more (released)
        // was deleted, or a run that plans still look at refers to it.
        let mut planned = BTreeMap::new();
        for run in sim.state.runs.values().filter(|r| !r.released) {
            catalog::run_blobs(run, &mut planned);
        }
        for run in sim.state.runs.values().filter(|r| r.released) {
            let mut blobs = BTreeMap::new();
            catalog::run_blobs(run, &mut blobs);
            for digest in blobs.keys() {
                proptest::prop_assert!(
                    deleted.contains(digest) || deleted_before.contains(digest) || planned.contains_key(digest),
                    "{digest} of released run {} is neither deleted nor planned", run.id
                );
            }
        }
        for entry in sim.state.catalog.cache.values() {
            for artifact in &entry.outputs {
                proptest::prop_assert!(!deleted.contains(&artifact.digest), "the cache names a deleted blob");
            }
        }
        // Running runs are never collected; kept runs are the newest per pipeline.
        for id in &runs {
            proptest::prop_assert!(sim.state.runs[id].state.is_terminal());
            proptest::prop_assert!(!before_collected.contains(id));
        }
        let mut per_pipeline: BTreeMap<&str, u32> = BTreeMap::new();
        for run in sim.state.runs.values().rev().filter(|r| r.state.is_terminal()) {
            let kept = per_pipeline.entry(&run.pipeline.name).or_default();
            if *kept < keep {
                proptest::prop_assert!(run.collected_ms.is_none(), "run {} is among the newest {keep}", run.id);
                *kept += 1;
            }
        }
    }
}
