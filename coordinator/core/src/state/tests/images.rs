//! A step with an image is cached by the image's ID, known only once a worker
//! resolved the image (issue 17).

use super::*;

/// `train` runs in `image` and produces a model that `evaluate` reads.
fn image_pipeline(image: &str, retries: u32) -> String {
    format!(
        r#"
name: ml
steps:
  - name: train
    image: {image}
    command: ["python3", "train.py"]
    outputs: [model.bin]
    retries: {retries}
  - name: evaluate
    inputs: {{model: train/model.bin}}
    command: ["eval"]
    outputs: [score.json]
"#
    )
}

const IMAGE_A: &str = "sha256:aaaa0000000000000000000000000000000000000000000000000000000000aa";
const IMAGE_B: &str = "sha256:bbbb0000000000000000000000000000000000000000000000000000000000bb";

impl Sim {
    fn resolve(&mut self, key: &AttemptKey, worker: &str, id: &str) -> (bool, String) {
        let now_ms = self.tick();
        match self.apply(Command::ImageResolved {
            key: key.clone(),
            worker: worker.to_string(),
            image: RanImage {
                id: id.to_string(),
                repo_digest: None,
            },
            now_ms,
        }) {
            Ok(Outcome::ImageChecked { run, reason }) => (run, reason),
            other => panic!("image resolved: {other:?}"),
        }
    }

    /// `train` of `run` placed on w1, its image resolved to `id`, then (if it
    /// is to run) succeeded with outputs made of `content`; whether it ran.
    fn train_in(&mut self, run: RunId, id: &str, content: &str) -> bool {
        let key = self.assign(run, "train", "w1");
        let (go, _) = self.resolve(&key, "w1", id);
        if go {
            self.start(&key);
            let mut report = exited_ok(&[]);
            report.outputs = vec![("model.bin".into(), format!("blake3:{content}"), 10)];
            self.finish(&key, report);
        }
        go
    }
}

#[test]
fn an_image_step_has_no_key_until_its_image_is_resolved_and_then_owns_it() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let run = sim.submit_cached(&image_pipeline("trainer:1", 0));
    // Queued, not completed or keyed at readiness: the name is not the image.
    assert_eq!(sim.step_state(run, "train"), StepState::Queued);
    assert_eq!(sim.step(run, "train").cache_key, None);
    let key = sim.assign(run, "train", "w1");
    assert_eq!(sim.resolve(&key, "w1", IMAGE_A), (true, String::new()));
    let attempt = sim.attempt(&key);
    assert_eq!(attempt.image.as_ref().map(|i| i.id.as_str()), Some(IMAGE_A));
    let keyed = sim.step(run, "train").cache_key.clone().expect("keyed");
    assert_eq!(
        sim.state.cache_owners.get(&keyed),
        Some(&(run, "train".into()))
    );
    // Applied again (a resend through a failover): the owner goes on.
    let before = sim.snapshot();
    assert_eq!(sim.resolve(&key, "w1", IMAGE_A), (true, String::new()));
    assert_eq!(before, sim.snapshot());
}

#[test]
fn the_same_image_id_reuses_the_result_and_a_rebuilt_one_runs_again() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let first = sim.submit_cached(&image_pipeline("trainer:1", 0));
    assert!(sim.train_in(first, IMAGE_A, "model-a"));
    let evaluate = sim.assign(first, "evaluate", "w1");
    sim.succeed(&evaluate);
    assert_eq!(sim.run(first).state, RunState::Succeeded);

    // Another tag of the same image: the attempt stops before running, the
    // step takes the cached model, and its dependent (the same model in)
    // takes its cached result in turn.
    let retagged = sim.submit_cached(&image_pipeline("trainer:also", 0));
    let key = sim.assign(retagged, "train", "w1");
    let (go, reason) = sim.resolve(&key, "w1", IMAGE_A);
    assert!(!go);
    assert!(
        reason.contains("in the cache") && reason.contains("aaaa00000000"),
        "{reason}"
    );
    let step = sim.step(retagged, "train");
    assert_eq!(step.state, StepState::Succeeded);
    assert_eq!(
        step.reused.as_ref().map(|r| (r.run, r.how)),
        Some((first, ReuseKind::Cached))
    );
    assert_eq!(step.outputs, sim.step(first, "train").outputs);
    assert_eq!(sim.attempt(&key).outcome, Some(AttemptOutcome::Deferred));
    assert!(
        sim.load_keys("w1").is_empty(),
        "the deferred attempt frees its room"
    );
    assert_eq!(sim.run(retagged).state, RunState::Succeeded);

    // The same tag, rebuilt: another ID, another key; the step runs.
    let rebuilt = sim.submit_cached(&image_pipeline("trainer:1", 0));
    assert!(sim.train_in(rebuilt, IMAGE_B, "model-b"));
    assert_eq!(sim.step(rebuilt, "train").reused, None);
    assert_ne!(
        sim.step(rebuilt, "train").cache_key,
        sim.step(first, "train").cache_key
    );
    // A run that does not read the cache runs even with a cached image.
    let fresh = sim.submit(&image_pipeline("trainer:1", 0));
    assert!(sim.train_in(fresh, IMAGE_A, "model-a2"));
}

#[test]
fn an_identical_step_waits_for_the_owner_and_runs_when_it_fails() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = image_pipeline("trainer:1", 1);
    let owner_run = sim.submit_cached(&yaml);
    let owner = sim.assign(owner_run, "train", "w1");
    assert!(sim.resolve(&owner, "w1", IMAGE_A).0);
    let waiting_run = sim.submit_cached(&yaml);
    let first = sim.assign(waiting_run, "train", "w1");
    let (go, reason) = sim.resolve(&first, "w1", IMAGE_A);
    assert!(!go);
    assert!(
        reason.contains("waiting for the identical step"),
        "{reason}"
    );
    assert_eq!(sim.step_state(waiting_run, "train"), StepState::Waiting);
    assert_eq!(sim.load_keys("w1"), vec![owner.clone()]);

    // The owner fails for good (its run has retries left, but a retry is
    // another attempt that resolves again): the waiting step is queued again,
    // resolves, and runs now.
    sim.start(&owner);
    sim.finish(&owner, exited(1));
    assert_eq!(sim.step_state(waiting_run, "train"), StepState::Queued);
    let second = sim.assign(waiting_run, "train", "w1");
    assert_eq!(second.attempt, 2);
    assert!(sim.resolve(&second, "w1", IMAGE_A).0);
    // Its deferred attempt did not use up a retry: a failure now is retried.
    sim.start(&second);
    sim.finish(&second, exited(1));
    let step = sim.step(waiting_run, "train");
    assert_eq!(step.state, StepState::Queued, "{:?}", step.reason);
    assert!(
        step.reason
            .as_deref()
            .unwrap_or("")
            .contains("retry 1 of 1")
    );
}

#[test]
fn an_identical_step_waiting_for_the_owner_takes_its_result() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = image_pipeline("trainer:1", 0);
    let owner_run = sim.submit_cached(&yaml);
    let owner = sim.assign(owner_run, "train", "w1");
    assert!(sim.resolve(&owner, "w1", IMAGE_A).0);
    let waiting_run = sim.submit_cached(&yaml);
    let deferred = sim.assign(waiting_run, "train", "w1");
    assert!(!sim.resolve(&deferred, "w1", IMAGE_A).0);
    // A snapshot taken now restores the owner and the waiting step.
    let restored = State::from_records(
        sim.state.runs.values().map(|r| (**r).clone()).collect(),
        sim.state.workers.values().cloned().collect(),
        sim.state.next_run_id,
    );
    assert_eq!(restored.cache_owners, sim.state.cache_owners);
    assert_eq!(restored.cache_pending, sim.state.cache_pending);
    sim.start(&owner);
    let mut report = exited_ok(&[]);
    report.outputs = vec![("model.bin".into(), "blake3:m".into(), 10)];
    sim.finish(&owner, report);
    let step = sim.step(waiting_run, "train");
    assert_eq!(step.state, StepState::Succeeded);
    assert_eq!(step.reused.as_ref().map(|r| r.run), Some(owner_run));
}

#[test]
fn a_stale_image_report_is_refused_and_changes_nothing() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    sim.register(big_worker("w2"));
    let run = sim.submit_cached(&image_pipeline("trainer:1", 0));
    let key = sim.assign(run, "train", "w1");
    let before = sim.snapshot();
    sim.mark();
    let (go, reason) = sim.resolve(&key, "w2", IMAGE_A);
    assert!(!go);
    assert!(reason.contains("belongs to worker \"w1\""), "{reason}");
    sim.assert_untouched(&before, "a report from another worker");
}

#[test]
fn an_image_step_without_caching_records_its_image_and_runs() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    let yaml = image_pipeline("trainer:1", 0).replace(
        "    retries: 0\n",
        "    retries: 0\n    cache: {enabled: false}\n",
    );
    let run = sim.submit_cached(&yaml);
    let key = sim.assign(run, "train", "w1");
    assert!(sim.resolve(&key, "w1", IMAGE_A).0);
    assert_eq!(sim.step(run, "train").cache_key, None);
    assert!(sim.attempt(&key).image.is_some());
}

#[test]
fn a_run_that_does_not_read_the_cache_keys_its_success_by_the_image_it_reports() {
    let mut sim = Sim::new();
    sim.register(big_worker("w1"));
    // --no-cache: the worker is not asked to report its image first; the
    // final report names it and the key is made from it.
    let fresh = sim.submit(&image_pipeline("trainer:1", 0));
    let key = sim.assign(fresh, "train", "w1");
    sim.start(&key);
    let mut report = exited_ok(&[]);
    report.outputs = vec![("model.bin".into(), "blake3:m".into(), 10)];
    report.image = Some(RanImage {
        id: IMAGE_A.into(),
        repo_digest: None,
    });
    sim.finish(&key, report);
    assert!(sim.step(fresh, "train").cache_key.is_some());
    // A later run of the same image takes that result.
    let cached = sim.submit_cached(&image_pipeline("trainer:1", 0));
    assert!(!sim.train_in(cached, IMAGE_A, "unused"));
    let step = sim.step(cached, "train");
    assert_eq!(step.reused.as_ref().map(|r| r.run), Some(fresh));
}
