//! The control service, for clients: submit, inspect and cancel runs, follow logs,
//! list and download artifacts, list workers. Only client certificates may call it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::pki::{Role, require_role};
use ferry_common::proto::{self, control_server::Control};
use ferry_common::spec::{Pipeline, SpecError, parse_pipeline};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, propose_status, receive_blob, send_blob};
use crate::node::{Node, now_ms};
use crate::scheduler;
use crate::state::{Command, Outcome, Run, RunId, State, StepState, Worker, WorkerMode};

/// Upper bound on a submitted pipeline file.
const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// Run summaries one `ListRuns` answer holds at most (the newest first): well
/// under the 8 MiB message limit, whatever the cluster's history.
const LIST_RUNS_BYTES: usize = 6 * 1024 * 1024;

pub struct ControlService {
    node: Arc<Node>,
    parsed: ParsedPipelines,
    /// (bundle digest, cache.paths) → the digest of those files.
    code_memo: std::sync::Mutex<HashMap<(String, Vec<String>), String>>,
}

/// Pipelines already parsed and validated, by a hash of what determines the
/// result (file name, text, parameter overrides): a sweep or a scheduled job
/// submits the same spec again and again, and YAML parsing was a tenth of a
/// submission's cost. Only valid specs are kept; parsing is pure, so a hit
/// answers exactly what parsing would.
#[derive(Default)]
struct ParsedPipelines(std::sync::Mutex<HashMap<[u8; 32], Pipeline>>);

/// Distinct specs remembered; when full the cache starts over.
const PARSED_PIPELINES_KEPT: usize = 256;

impl ParsedPipelines {
    fn parse(
        &self,
        file: &str,
        yaml: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Pipeline, SpecError> {
        let mut hasher = blake3::Hasher::new();
        for part in [file, yaml] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        for (name, value) in overrides {
            for part in [name, value] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
        }
        let key = *hasher.finalize().as_bytes();
        if let Some(pipeline) = self.lock().get(&key) {
            return Ok(pipeline.clone());
        }
        let pipeline = parse_pipeline(file, yaml, overrides)?;
        let mut parsed = self.lock();
        if parsed.len() >= PARSED_PIPELINES_KEPT {
            parsed.clear();
        }
        parsed.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Pipeline>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ControlService {
    /// Linearizable unless the caller asked for this replica's possibly stale view.
    async fn consistent_read(&self, stale: bool) -> Result<(), Status> {
        if stale {
            return Ok(());
        }
        self.node.read_barrier().await.map_err(propose_status)
    }

    pub fn new(node: Arc<Node>) -> ControlService {
        ControlService {
            node,
            parsed: ParsedPipelines::default(),
            code_memo: Default::default(),
        }
    }

    /// Validates a submitted pipeline file (with its `--param` overrides) exactly
    /// as the CLI did.
    fn parse_spec(
        &self,
        yaml: &str,
        file: &str,
        params: HashMap<String, String>,
    ) -> Result<Pipeline, Status> {
        if yaml.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "the pipeline file is {} bytes; the limit is {MAX_SPEC_BYTES}",
                yaml.len()
            )));
        }
        let file = if file.is_empty() {
            "pipeline.yaml"
        } else {
            file
        };
        let overrides: BTreeMap<String, String> = params.into_iter().collect();
        (self.parsed)
            .parse(file, yaml, &overrides)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// The code bundle a submission names must be stored (on a majority).
    async fn require_bundle(&self, digest: &str) -> Result<(), Status> {
        let stored = super::is_digest(digest) && self.node.ensure_blob(digest).await.is_ok();
        if stored {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "code bundle {digest} is not stored on the coordinators; upload it first"
            )))
        }
    }

    /// For each step with `cache.paths`: the digest of those files in the
    /// bundle (read from the blob store), which stands for its code in its cache
    /// key. A path that is not in the bundle is the caller's error.
    async fn code_digests(
        &self,
        pipeline: &Pipeline,
        bundle_digest: &str,
    ) -> Result<BTreeMap<String, String>, Status> {
        let mut digests = BTreeMap::new();
        if pipeline
            .steps
            .iter()
            .all(|s| s.cache.paths.is_empty() || !s.cache.enabled)
        {
            return Ok(digests);
        }
        // Each distinct set of paths once, from the bundle file, off the async
        // threads; remembered per bundle (a schedule or sweep submits the same
        // bundle again and again).
        let mut wanted: Vec<Vec<String>> = pipeline
            .steps
            .iter()
            .filter(|s| s.cache.enabled && !s.cache.paths.is_empty())
            .map(|s| s.cache.paths.clone())
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut by_paths: BTreeMap<Vec<String>, String> = BTreeMap::new();
        let mut missing = Vec::new();
        {
            let memo = self.code_memo.lock().unwrap_or_else(|p| p.into_inner());
            for paths in wanted {
                match memo.get(&(bundle_digest.to_string(), paths.clone())) {
                    Some(digest) => {
                        by_paths.insert(paths, digest.clone());
                    }
                    None => missing.push(paths),
                }
            }
        }
        if !missing.is_empty() {
            let file = self.node.blobs.file_of(bundle_digest);
            let computed = tokio::task::spawn_blocking(move || {
                missing
                    .into_iter()
                    .map(|paths| {
                        let digest = std::fs::File::open(&file)
                            .map(std::io::BufReader::new)
                            .map_err(|e| {
                                ferry_common::bundle::PathsDigestError::Archive(e.to_string())
                            })
                            .and_then(|reader| ferry_common::bundle::paths_digest(reader, &paths));
                        match digest {
                            Ok(digest) => Ok((paths, digest)),
                            Err(e) => Err((paths, e)),
                        }
                    })
                    .collect::<Vec<Result<_, (Vec<String>, ferry_common::bundle::PathsDigestError)>>>()
            })
            .await
            .map_err(|e| Status::internal(format!("reading the code bundle failed: {e}")))?;
            let mut memo = self.code_memo.lock().unwrap_or_else(|p| p.into_inner());
            if memo.len() >= 1024 {
                memo.clear();
            }
            for result in computed {
                let (paths, digest) = result.map_err(|(paths, e)| {
                    let step = pipeline
                        .steps
                        .iter()
                        .find(|s| s.cache.paths == paths)
                        .map_or("?", |s| s.trial.as_ref().map_or(&s.name, |t| &t.of));
                    Status::invalid_argument(format!("cache.paths of step \"{step}\": {e}"))
                })?;
                memo.insert((bundle_digest.to_string(), paths.clone()), digest.clone());
                by_paths.insert(paths, digest);
            }
        }
        for step in &pipeline.steps {
            if let Some(digest) = by_paths.get(&step.cache.paths)
                && step.cache.enabled
            {
                digests.insert(step.name.clone(), digest.clone());
            }
        }
        Ok(digests)
    }

    fn schedule_view(&self, name: &str) -> Result<Response<proto::ScheduleView>, Status> {
        let now = now_ms();
        self.node
            .read(|state| {
                state
                    .catalog
                    .schedules
                    .get(name)
                    .map(|s| schedule_view(s, now))
            })
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("there is no schedule named {name:?}")))
    }

    fn pin_view(&self, tag: &str) -> Result<Response<proto::PinView>, Status> {
        self.node
            .read(|state| state.catalog.pins.get(tag).map(|p| pin_view(tag, p)))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("there is no pin named {tag:?}")))
    }

    async fn run_view(&self, id: RunId, history: bool) -> Result<proto::RunView, Status> {
        let live = self.node.live_workers().await;
        let waiting = self.node.waiting_reasons(id);
        self.node.read(|state| {
            let run = state
                .runs
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("run {id} does not exist")))?;
            Ok(run_view(
                state,
                run,
                &|name| live.get(name).is_some_and(|(connected, _)| *connected),
                &waiting,
                now_ms(),
                history,
            ))
        })
    }
}

fn worker_view(
    state: &State,
    worker: &Worker,
    live: &HashMap<String, (bool, i64)>,
) -> proto::WorkerView {
    let load = state.loads.get(&worker.name).cloned().unwrap_or_default();
    proto::WorkerView {
        name: worker.name.clone(),
        capacity: Some(resources(worker.capacity)),
        in_use: Some(resources(load.in_use())),
        labels: worker
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        gpus: worker
            .gpus
            .iter()
            .map(|g| proto::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_bytes: g.memory_bytes,
            })
            .collect(),
        last_heartbeat_ms: live.get(&worker.name).map_or(0, |(_, at)| *at),
        connected: live
            .get(&worker.name)
            .is_some_and(|(connected, _)| *connected),
        running: load.attempts.len() as u32,
        mode: worker.mode.as_str().to_string(),
        lost_ms: worker.lost_ms.unwrap_or(0),
    }
}

fn resources(resources: ferry_common::spec::Resources) -> proto::Resources {
    proto::Resources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        gpus: resources.gpus,
    }
}

/// Per metric name, the last value reported by the last step (in pipeline order)
/// that succeeded and reported it, following cached and reused steps to the
/// attempt that ran; a name only steps that did not succeed reported (a
/// diverged training's loss) takes the last of theirs.
pub(crate) fn run_metrics(state: &State, run: &Run) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    let mut not_succeeded = BTreeMap::new();
    for (index, step) in run.steps.iter().enumerate() {
        // Later values replace earlier ones: the last value of the last step.
        if let Some(attempt) = state.producing_attempt(run, index) {
            let into = if step.state == StepState::Succeeded {
                &mut metrics
            } else {
                &mut not_succeeded
            };
            for point in &attempt.metrics {
                into.insert(point.name.clone(), point.value);
            }
        }
    }
    for (name, value) in not_succeeded {
        metrics.entry(name).or_insert(value);
    }
    metrics
}

/// Of the items `newest_first`, the first `limit` (0: no limit) whose messages,
/// made by `make`, fit in `max_bytes` together, oldest first; and how many items
/// there were. Only the items kept are made.
fn newest_that_fit<I, M: prost::Message>(
    newest_first: impl Iterator<Item = I>,
    limit: usize,
    max_bytes: usize,
    make: impl Fn(I) -> M,
) -> (Vec<M>, u64) {
    let mut kept = Vec::new();
    let (mut count, mut bytes, mut full) = (0u64, 0usize, false);
    for item in newest_first {
        count += 1;
        full = full || (limit > 0 && kept.len() >= limit);
        if full {
            continue;
        }
        let message = make(item);
        // The field's tag and length prefix included, roughly.
        bytes += message.encoded_len() + 8;
        if bytes > max_bytes {
            full = true;
            continue;
        }
        kept.push(message);
    }
    kept.reverse();
    (kept, count)
}

pub(crate) fn run_summary(state: &State, run: &Run) -> proto::RunSummary {
    proto::RunSummary {
        run_id: run.id,
        pipeline: run.pipeline.name.clone(),
        state: run.state.as_str().to_string(),
        submitter: run.submitter.clone(),
        submitted_ms: run.submitted_ms,
        finished_ms: run.finished_ms.unwrap_or(0),
        steps_total: run.steps.len() as u32,
        steps_done: run.steps.iter().filter(|s| s.state.is_terminal()).count() as u32,
        reason: run.reason.clone().unwrap_or_default(),
        priority: run.pipeline.priority,
        project: run.pipeline.project.clone(),
        rerun_of: run.rerun_of.unwrap_or(0),
        schedule: run
            .schedule
            .as_ref()
            .map(|(name, _)| name.clone())
            .unwrap_or_default(),
        schedule_tick_ms: run.schedule.as_ref().map_or(0, |(_, tick)| *tick),
        collected: run.collected_ms.is_some(),
        params: run
            .pipeline
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metrics: run_metrics(state, run).into_iter().collect(),
        steps_cached: run.steps.iter().filter(|s| s.reused.is_some()).count() as u32,
    }
}

fn input_views(inputs: &[crate::state::InputRecord]) -> Vec<proto::InputView> {
    inputs
        .iter()
        .map(|i| proto::InputView {
            name: i.name.clone(),
            digest: i.digest.clone(),
            size: i.size,
        })
        .collect()
}

fn metric_view(m: &crate::state::MetricPoint) -> proto::Metric {
    proto::Metric {
        name: m.name.clone(),
        value: m.value,
        has_step: m.step.is_some(),
        step: m.step.unwrap_or(0),
        count: 0,
    }
}

/// An attempt's metrics in a run view: with `history` every value reported;
/// otherwise the last value of each name with how many there were, in the
/// order the names first came (a training curve of thousands of points stays
/// one entry, so a big sweep's view stays small).
fn metric_views(points: &[crate::state::MetricPoint], history: bool) -> Vec<proto::Metric> {
    if history {
        return points.iter().map(metric_view).collect();
    }
    let mut views: Vec<proto::Metric> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for point in points {
        match at.get(point.name.as_str()) {
            Some(&i) => {
                let count = views[i].count + 1;
                views[i] = proto::Metric {
                    count,
                    ..metric_view(point)
                };
            }
            None => {
                at.insert(&point.name, views.len());
                views.push(proto::Metric {
                    count: 1,
                    ..metric_view(point)
                });
            }
        }
    }
    views
}

/// A run as `ferry status` shows it. A queued step's reason is, in order: that no
/// worker can ever hold it, the retry backoff it waits out, why the leader's last
/// scheduling pass left it queued (`waiting`), or what its record says.
fn run_view(
    state: &State,
    run: &Run,
    connected: &dyn Fn(&str) -> bool,
    waiting: &BTreeMap<String, String>,
    now_ms: i64,
    history: bool,
) -> proto::RunView {
    let accepting = state
        .workers
        .keys()
        .filter(|name| connected(name))
        .cloned()
        .collect();
    let workers = scheduler::worker_slots(state, &accepting);
    // Steps a run's or sweep's max_parallel holds back never reach a scheduling
    // pass: say so.
    let active_run = run.steps.iter().filter(|s| s.state.is_active()).count() as u32;
    let mut active_sweeps: BTreeMap<&str, u32> = BTreeMap::new();
    for (record, spec) in run.steps.iter().zip(&run.pipeline.steps) {
        if let Some(trial) = &spec.trial
            && record.state.is_active()
        {
            *active_sweeps.entry(trial.of.as_str()).or_default() += 1;
        }
    }
    let held_back = |spec: &ferry_common::spec::Step| -> Option<String> {
        if let Some(trial) = &spec.trial
            && let Some(max) = trial.max_parallel
            && active_sweeps.get(trial.of.as_str()).copied().unwrap_or(0) >= max
        {
            return Some(format!(
                "the sweep {:?} already has {max} trials at once, its max_parallel",
                trial.of
            ));
        }
        run.pipeline
            .max_parallel
            .filter(|max| active_run >= *max)
            .map(|max| {
                format!(
                    "run {} already has {max} steps at once, its max_parallel",
                    run.id
                )
            })
    };
    let steps =
        run.steps
            .iter()
            .zip(&run.pipeline.steps)
            .enumerate()
            .map(|(index, (record, spec))| {
                let current = record.current_attempt();
                let reason = match record.state {
                    StepState::Queued => scheduler::never_fits_reason(
                        spec.resources,
                        &scheduler::gpu_need(spec),
                        &spec.node_selector,
                        &workers,
                    )
                    .or_else(|| {
                        record
                            .not_before_ms
                            .filter(|t| *t > now_ms)
                            .and(record.reason.clone())
                    })
                    .or_else(|| waiting.get(&record.name).cloned())
                    .or_else(|| held_back(spec))
                    .or_else(|| record.reason.clone())
                    .unwrap_or_else(|| "waiting for a worker with room".to_string()),
                    StepState::Waiting if record.cache_key.is_some() => {
                        record.reason.clone().unwrap_or_default()
                    }
                    StepState::Waiting => {
                        let pending: Vec<&str> = spec
                            .needs
                            .iter()
                            .filter(|need| {
                                run.step(need)
                                    .is_some_and(|s| s.state != StepState::Succeeded)
                            })
                            .map(String::as_str)
                            .collect();
                        format!("needs {}", pending.join(", "))
                    }
                    _ => record
                        .reason
                        .clone()
                        .or_else(|| current.and_then(|a| a.reason.clone()))
                        .unwrap_or_default(),
                };
                proto::StepView {
                    name: record.name.clone(),
                    state: record.state.as_str().to_string(),
                    attempt: current.map(|a| a.number).unwrap_or(0),
                    worker: current.map(|a| a.worker.clone()).unwrap_or_default(),
                    started_ms: current.and_then(|a| a.started_ms).unwrap_or(0),
                    finished_ms: current.and_then(|a| a.finished_ms).unwrap_or(0),
                    has_exit_code: current.and_then(|a| a.exit_code).is_some(),
                    exit_code: current.and_then(|a| a.exit_code).unwrap_or(0),
                    reason,
                    needs: spec.needs.clone(),
                    resources: Some(resources(spec.resources)),
                    attempts: record
                        .attempts
                        .iter()
                        .map(|a| proto::AttemptView {
                            attempt: a.number,
                            worker: a.worker.clone(),
                            outcome: a.outcome.map(|o| o.as_str().to_string()).unwrap_or_else(
                                || {
                                    if a.started_ms.is_some() {
                                        "running"
                                    } else {
                                        "assigned"
                                    }
                                    .to_string()
                                },
                            ),
                            started_ms: a.started_ms.unwrap_or(0),
                            finished_ms: a.finished_ms.unwrap_or(0),
                            has_exit_code: a.exit_code.is_some(),
                            exit_code: a.exit_code.unwrap_or(0),
                            reason: a.reason.clone().unwrap_or_default(),
                            gpus: a.gpus.clone(),
                            cpu_time_ms: a.usage.map_or(0, |u| u.cpu_time_ms),
                            peak_memory_bytes: a.usage.map_or(0, |u| u.peak_memory_bytes),
                            metrics: metric_views(&a.metrics, history),
                        })
                        .collect(),
                    reused: record
                        .reused
                        .as_ref()
                        .map(|r| r.how.as_str().to_string())
                        .unwrap_or_default(),
                    reused_run: record.reused.as_ref().map_or(0, |r| r.run),
                    reused_step: record
                        .reused
                        .as_ref()
                        .map(|r| r.step.clone())
                        .unwrap_or_default(),
                    inputs: input_views(&record.inputs),
                    cache_key: record.cache_key.clone().unwrap_or_default(),
                    trial_of: spec
                        .trial
                        .as_ref()
                        .map(|t| t.of.clone())
                        .unwrap_or_default(),
                    matrix: spec
                        .trial
                        .as_ref()
                        .map(|t| t.values.clone().into_iter().collect())
                        .unwrap_or_default(),
                    metrics: if record.state == StepState::Succeeded {
                        state
                            .producing_attempt(run, index)
                            .map(|a| metric_views(&a.metrics, history))
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
    proto::RunView {
        summary: Some(run_summary(state, run)),
        steps,
        params: run
            .pipeline
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        bundle_digest: run.bundle_digest.clone(),
    }
}

/// Logs and artifacts of a run `ferry gc` collected are gone: say so.
fn refuse_collected(run: &Run) -> Result<(), Status> {
    if run.collected_ms.is_some() {
        return Err(Status::failed_precondition(format!(
            "run {} was garbage-collected (ferry gc): its logs and artifacts are deleted; \
             its record, metrics and lineage remain",
            run.id
        )));
    }
    Ok(())
}

fn is_schedule_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn schedule_view(schedule: &crate::state::Schedule, now_ms: i64) -> proto::ScheduleView {
    let next = if schedule.paused {
        0
    } else {
        ferry_common::cron::Cron::parse(&schedule.cron)
            .ok()
            .and_then(|cron| cron.next_after(schedule.after_ms.max(now_ms)))
            .unwrap_or(0)
    };
    proto::ScheduleView {
        name: schedule.name.clone(),
        cron: schedule.cron.clone(),
        pipeline: schedule.pipeline.name.clone(),
        owner: schedule.owner.clone(),
        paused: schedule.paused,
        created_ms: schedule.created_ms,
        last_tick_ms: schedule.last_tick_ms.unwrap_or(0),
        last_run: schedule.last_run.unwrap_or(0),
        next_tick_ms: next,
        fired: schedule.fired,
        missed: schedule.missed,
        params: schedule
            .pipeline
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn pin_view(tag: &str, pin: &crate::state::Pin) -> proto::PinView {
    proto::PinView {
        tag: tag.to_string(),
        digest: pin.digest.clone(),
        size: pin.size,
        owner: pin.owner.clone(),
        created_ms: pin.created_ms,
    }
}

/// One line of an attempt's log blob, as the worker wrote it.
#[derive(serde::Deserialize)]
struct BlobLogLine {
    stream: String,
    seq: u64,
    timestamp_ms: i64,
    text: String,
}

/// Reads an attempt's whole log from its blob (copied from a peer if this member
/// lacks it).
async fn read_log_blob(node: &Node, digest: &str) -> Result<Vec<BlobLogLine>, Status> {
    node.ensure_blob(digest).await?;
    let (_, mut chunks) = node.blobs.read(digest).await.map_err(super::blob_status)?;
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        bytes.extend_from_slice(&chunk.map_err(super::blob_status)?);
    }
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).map_err(|e| {
                Status::data_loss(format!(
                    "log blob {digest} holds a line that does not decode: {e}"
                ))
            })
        })
        .collect()
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn upload_bundle(
        &self,
        request: Request<Streaming<proto::Chunk>>,
    ) -> Result<Response<proto::BlobRef>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let blob = receive_blob(&self.node.blobs, request.into_inner()).await?;
        self.node.replicate_blob(&blob.digest, blob.size).await?;
        tracing::info!(client = %caller.name, digest = %blob.digest, size = blob.size, "bundle stored");
        Ok(Response::new(blob))
    }

    async fn has_blob(
        &self,
        request: Request<proto::BlobRef>,
    ) -> Result<Response<proto::HasBlobResponse>, Status> {
        require_role(&request, Role::Client)?;
        let blob = request.into_inner();
        let stored = self
            .node
            .blobs
            .holds(&blob.digest, blob.size)
            .await
            .map_err(super::blob_status)?;
        if stored {
            // About to be referenced: `ferry gc` must not take it meanwhile.
            self.node.blobs.touch(&blob.digest);
        }
        // Present only when a majority holds it: otherwise the client uploads it
        // again, which copies it to the others.
        let present = stored
            && self
                .node
                .replicate_blob(&blob.digest, blob.size)
                .await
                .is_ok();
        Ok(Response::new(proto::HasBlobResponse { present }))
    }

    async fn submit_run(
        &self,
        request: Request<proto::SubmitRunRequest>,
    ) -> Result<Response<proto::SubmitRunResponse>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let submit = request.into_inner();
        let pipeline = self.parse_spec(&submit.spec_yaml, &submit.spec_file, submit.params)?;
        self.require_bundle(&submit.bundle_digest).await?;
        let code_digests = self.code_digests(&pipeline, &submit.bundle_digest).await?;
        let outcome = self
            .node
            .propose_as(
                &caller,
                Command::SubmitRun {
                    pipeline,
                    bundle_digest: submit.bundle_digest,
                    submitter: caller.name.clone(),
                    request_id: (!submit.request_id.is_empty()).then(|| submit.request_id.clone()),
                    options: crate::state::SubmitOptions {
                        no_cache: submit.no_cache,
                        code_digests,
                    },
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        let Outcome::RunSubmitted(run_id) = outcome else {
            return Err(Status::internal("unexpected outcome of a submission"));
        };
        tracing::debug!(run = run_id, client = %caller.name, "run submitted");
        Ok(Response::new(proto::SubmitRunResponse { run_id }))
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        require_role(&request, Role::Client)?;
        self.consistent_read(request.get_ref().stale).await?;
        let conditions = match request.get_ref().r#where.trim() {
            "" => None,
            text => Some(crate::query::parse_where(text).map_err(Status::invalid_argument)?),
        };
        let limit = request.get_ref().limit as usize;
        let (runs, matched) = self.node.read(|state| {
            let meeting = state.runs.values().rev().filter(|run| {
                conditions.as_ref().is_none_or(|conditions| {
                    crate::query::matches(
                        conditions,
                        &run_metrics(state, run),
                        &run.pipeline.params,
                    )
                })
            });
            newest_that_fit(meeting, limit, LIST_RUNS_BYTES, |run| {
                run_summary(state, run)
            })
        });
        Ok(Response::new(proto::ListRunsResponse { runs, matched }))
    }

    async fn get_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::RunView>, Status> {
        require_role(&request, Role::Client)?;
        self.consistent_read(request.get_ref().stale).await?;
        let proto::GetRunRequest {
            run_id,
            metric_history,
            ..
        } = *request.get_ref();
        let view = self.run_view(run_id, metric_history).await?;
        let size = prost::Message::encoded_len(&view);
        if metric_history && size > LIST_RUNS_BYTES {
            let values: usize = view
                .steps
                .iter()
                .flat_map(|s| &s.attempts)
                .map(|a| a.metrics.len())
                .sum();
            return Err(Status::resource_exhausted(format!(
                "run {run_id} holds {values} metric values ({:.1} MiB with the rest of \
                 its view): too much for one answer; 'ferry metrics {run_id}' (a table) \
                 shows the last value of each",
                size as f64 / (1024.0 * 1024.0)
            )));
        }
        Ok(Response::new(view))
    }

    async fn cancel_run(
        &self,
        request: Request<proto::CancelRunRequest>,
    ) -> Result<Response<proto::RunView>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let run_id = request.get_ref().run_id;
        self.node
            .propose_as(
                &caller,
                Command::CancelRun {
                    run: run_id,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        tracing::info!(run = run_id, client = %caller.name, "run cancelled");
        Ok(Response::new(self.run_view(run_id, false).await?))
    }

    async fn list_workers(
        &self,
        request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        require_role(&request, Role::Client)?;
        self.consistent_read(request.get_ref().stale).await?;
        let live = self.node.live_workers().await;
        let workers = self.node.read(|state| {
            state
                .workers
                .values()
                .map(|worker| worker_view(state, worker, &live))
                .collect()
        });
        Ok(Response::new(proto::ListWorkersResponse { workers }))
    }

    async fn set_worker_mode(
        &self,
        request: Request<proto::SetWorkerModeRequest>,
    ) -> Result<Response<proto::WorkerView>, Status> {
        let identity = require_role(&request, Role::Client)?;
        let request = request.into_inner();
        let mode = match request.mode.as_str() {
            "active" => WorkerMode::Active,
            "cordoned" => WorkerMode::Cordoned,
            "draining" => WorkerMode::Draining,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown worker mode {other:?}; use \"active\", \"cordoned\" or \"draining\""
                )));
            }
        };
        self.node
            .propose_as(
                &identity,
                Command::SetWorkerMode {
                    worker: request.name.clone(),
                    mode,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        tracing::info!(worker = %request.name, mode = mode.as_str(), by = %identity, "worker mode set");
        let live = self.node.live_workers().await;
        self.node.read(|state| {
            state
                .workers
                .get(&request.name)
                .map(|worker| Response::new(worker_view(state, worker, &live)))
                .ok_or_else(|| {
                    Status::not_found(format!("worker \"{}\" is not registered", request.name))
                })
        })
    }

    type StreamLogsStream = ResponseStream<proto::LogLine>;

    async fn stream_logs(
        &self,
        request: Request<proto::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        require_role(&request, Role::Client)?;
        let query = request.into_inner();
        let run_id = query.run_id;
        self.node.read(|state| {
            let run = state
                .runs
                .get(&run_id)
                .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))?;
            refuse_collected(run)?;
            if !query.step.is_empty() && run.step(&query.step).is_none() {
                return Err(Status::not_found(format!(
                    "run {run_id} has no step \"{}\"",
                    query.step
                )));
            }
            Ok(())
        })?;
        let node = self.node.clone();
        let stream = async_stream::try_stream! {
            let mut log_changes = node.subscribe_logs();
            let mut state_changes = node.subscribe_state();
            let mut cursor: Option<Vec<u8>> = None;
            // A finished attempt's log comes from its blob (held by a majority, so
            // any member serves it); a running attempt's lines come from the live
            // lines this member received. Both are tracked so no line is sent twice.
            let mut sent_whole: HashSet<(String, u32)> = HashSet::new();
            let mut sent_live: HashMap<(String, u32), u64> = HashMap::new();
            loop {
                // Read whether the run had ended *before* reading the logs, so that
                // lines stored before the end are never missed.
                let (finished, whole_logs) = node.read(|state| {
                    let run = state.runs.get(&run_id);
                    let whole_logs: Vec<(String, u32, String)> = run
                        .map(|run| {
                            run.steps
                                .iter()
                                .filter(|step| query.step.is_empty() || step.name == query.step)
                                .flat_map(|step| {
                                    step.attempts.iter().filter_map(|attempt| {
                                        attempt.log.as_ref().map(|(digest, _)| {
                                            (step.name.clone(), attempt.number, digest.clone())
                                        })
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (run.is_none_or(|run| run.state.is_terminal()), whole_logs)
                });
                for (step, attempt, digest) in whole_logs {
                    let key = (step.clone(), attempt);
                    if sent_whole.contains(&key) {
                        continue;
                    }
                    let after = sent_live.get(&key).copied();
                    for line in read_log_blob(&node, &digest).await? {
                        if after.is_some_and(|seen| line.seq <= seen) {
                            continue;
                        }
                        yield proto::LogLine {
                            run_id,
                            step: step.clone(),
                            attempt,
                            stream: line.stream,
                            seq: line.seq,
                            timestamp_ms: line.timestamp_ms,
                            text: line.text,
                        };
                    }
                    sent_whole.insert(key);
                }
                loop {
                    let (lines, next) = node
                        .store
                        .read_logs(run_id, cursor.as_deref(), 1000)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    let count = lines.len();
                    cursor = next;
                    for line in lines {
                        if !query.step.is_empty() && line.step != query.step {
                            continue;
                        }
                        let key = (line.step.clone(), line.attempt);
                        if sent_whole.contains(&key) {
                            continue;
                        }
                        let seen = sent_live.entry(key).or_insert(line.seq);
                        *seen = (*seen).max(line.seq);
                        yield proto::LogLine {
                            run_id,
                            step: line.step,
                            attempt: line.attempt,
                            stream: line.stream,
                            seq: line.seq,
                            timestamp_ms: line.timestamp_ms,
                            text: line.text,
                        };
                    }
                    if count < 1000 {
                        break;
                    }
                }
                if !query.follow || finished {
                    break;
                }
                tokio::select! {
                    _ = log_changes.changed() => {}
                    _ = state_changes.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_artifacts(
        &self,
        request: Request<proto::ListArtifactsRequest>,
    ) -> Result<Response<proto::ListArtifactsResponse>, Status> {
        require_role(&request, Role::Client)?;
        self.consistent_read(request.get_ref().stale).await?;
        let run_id = request.get_ref().run_id;
        let artifacts = self.node.read(|state| {
            let run = state
                .runs
                .get(&run_id)
                .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))?;
            Ok::<_, Status>(
                run.steps
                    .iter()
                    .flat_map(|step| {
                        step.outputs.iter().map(|artifact| proto::ArtifactView {
                            step: step.name.clone(),
                            name: artifact.name.clone(),
                            digest: artifact.digest.clone(),
                            size: artifact.size,
                            attempt: artifact.attempt,
                        })
                    })
                    .collect(),
            )
        })?;
        Ok(Response::new(proto::ListArtifactsResponse { artifacts }))
    }

    type DownloadArtifactStream = ResponseStream<proto::Chunk>;

    async fn download_artifact(
        &self,
        request: Request<proto::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        require_role(&request, Role::Client)?;
        let query = request.into_inner();
        let digest = self.node.read(|state| {
            let run = state
                .runs
                .get(&query.run_id)
                .ok_or_else(|| Status::not_found(format!("run {} does not exist", query.run_id)))?;
            let step = run.step(&query.step).ok_or_else(|| {
                Status::not_found(format!(
                    "run {} has no step \"{}\"",
                    query.run_id, query.step
                ))
            })?;
            step.outputs
                .iter()
                .find(|a| a.name == query.name)
                .map(|a| a.digest.clone())
                .ok_or_else(|| {
                    let have: Vec<&str> = step.outputs.iter().map(|a| a.name.as_str()).collect();
                    Status::not_found(format!(
                        "step \"{}\" of run {} has no artifact \"{}\" (it has: {})",
                        query.step,
                        query.run_id,
                        query.name,
                        if have.is_empty() {
                            "none yet".to_string()
                        } else {
                            have.join(", ")
                        }
                    ))
                })
                .and_then(|digest| {
                    // A collected run's artifact survives if something live keeps it.
                    let kept = state.catalog.pins.values().any(|p| p.digest == digest)
                        || state.artifact_size(&digest).is_some();
                    if kept {
                        Ok(digest)
                    } else {
                        refuse_collected(run).map(|()| digest)
                    }
                })
        })?;
        self.node.ensure_blob(&digest).await?;
        Ok(Response::new(send_blob(&self.node.blobs, &digest).await?))
    }

    async fn rerun_run(
        &self,
        request: Request<proto::RerunRunRequest>,
    ) -> Result<Response<proto::SubmitRunResponse>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let rerun = request.into_inner();
        let outcome = self
            .node
            .propose_as(
                &caller,
                Command::RerunRun {
                    source: rerun.run_id,
                    from: (!rerun.from.is_empty()).then_some(rerun.from),
                    submitter: caller.name.clone(),
                    request_id: (!rerun.request_id.is_empty()).then_some(rerun.request_id),
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        let Outcome::RunSubmitted(run_id) = outcome else {
            return Err(Status::internal("unexpected outcome of a re-run"));
        };
        tracing::info!(run = run_id, source = rerun.run_id, client = %caller.name, "run re-run");
        Ok(Response::new(proto::SubmitRunResponse { run_id }))
    }

    async fn lineage(
        &self,
        request: Request<proto::LineageRequest>,
    ) -> Result<Response<proto::LineageResponse>, Status> {
        require_role(&request, Role::Client)?;
        self.consistent_read(request.get_ref().stale).await?;
        let digest = request.get_ref().digest.trim().to_string();
        let nodes = self
            .node
            .read(|state| state.lineage(&digest))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no step produced an artifact with digest {digest:?} \
                     (see `ferry artifacts RUN` for digests)"
                ))
            })?;
        let nodes = nodes
            .into_iter()
            .map(|n| proto::LineageNode {
                digest: n.digest,
                name: n.name,
                size: n.size,
                run_id: n.run,
                step: n.step,
                attempt: n.attempt,
                command: n.command,
                bundle_digest: n.bundle_digest,
                code_digest: n.code_digest,
                params: n.params.into_iter().collect(),
                matrix: n.matrix.into_iter().collect(),
                inputs: input_views(&n.inputs),
            })
            .collect();
        Ok(Response::new(proto::LineageResponse { nodes }))
    }

    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::ScheduleView>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let create = request.into_inner();
        if !is_schedule_name(&create.name) {
            return Err(Status::invalid_argument(format!(
                "schedule name {:?} is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '_', '.', '-'",
                create.name
            )));
        }
        let cron =
            ferry_common::cron::Cron::parse(&create.cron).map_err(Status::invalid_argument)?;
        if cron.next_after(now_ms()).is_none() {
            return Err(Status::invalid_argument(format!(
                "cron expression {:?} never fires: no date in the next 8 years matches it",
                cron.expr()
            )));
        }
        let pipeline = self.parse_spec(&create.spec_yaml, &create.spec_file, create.params)?;
        self.require_bundle(&create.bundle_digest).await?;
        let code_digests = self.code_digests(&pipeline, &create.bundle_digest).await?;
        let schedule = crate::state::Schedule {
            name: create.name.clone(),
            cron: create.cron.trim().to_string(),
            pipeline,
            bundle_digest: create.bundle_digest,
            code_digests,
            owner: caller.name.clone(),
            created_ms: 0,
            paused: false,
            after_ms: 0,
            last_tick_ms: None,
            last_run: None,
            fired: 0,
            missed: 0,
        };
        self.node
            .propose_as(
                &caller,
                Command::CreateSchedule {
                    schedule,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        tracing::info!(schedule = %create.name, cron = %create.cron, client = %caller.name, "schedule created");
        // A follower forwarded the command: read once this member has applied it.
        self.consistent_read(false).await?;
        self.schedule_view(&create.name)
    }

    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        require_role(&request, Role::Client)?;
        self.consistent_read(request.get_ref().stale).await?;
        let now = now_ms();
        let schedules = self.node.read(|state| {
            state
                .catalog
                .schedules
                .values()
                .map(|s| schedule_view(s, now))
                .collect()
        });
        Ok(Response::new(proto::ListSchedulesResponse { schedules }))
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::PauseScheduleRequest>,
    ) -> Result<Response<proto::ScheduleView>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let pause = request.into_inner();
        self.node
            .propose_as(
                &caller,
                Command::PauseSchedule {
                    name: pause.name.clone(),
                    paused: pause.paused,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        self.consistent_read(false).await?;
        self.schedule_view(&pause.name)
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::DeleteScheduleRequest>,
    ) -> Result<Response<proto::ScheduleView>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let name = request.into_inner().name;
        self.consistent_read(false).await?;
        let view = self.schedule_view(&name)?;
        self.node
            .propose_as(
                &caller,
                Command::DeleteSchedule {
                    name: name.clone(),
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        tracing::info!(schedule = %name, client = %caller.name, "schedule deleted");
        Ok(view)
    }

    async fn pin_artifact(
        &self,
        request: Request<proto::PinArtifactRequest>,
    ) -> Result<Response<proto::PinView>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let pin = request.into_inner();
        let digest = pin.digest.trim().to_string();
        let tag = if pin.tag.trim().is_empty() {
            digest.clone()
        } else {
            pin.tag.trim().to_string()
        };
        if tag.len() > 128 || tag.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Status::invalid_argument(format!(
                "pin tag {tag:?} is invalid: at most 128 printable characters, no spaces"
            )));
        }
        self.node
            .propose_as(
                &caller,
                Command::PinArtifact {
                    tag: tag.clone(),
                    digest,
                    owner: caller.name.clone(),
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        self.consistent_read(false).await?;
        self.pin_view(&tag)
    }

    async fn unpin_artifact(
        &self,
        request: Request<proto::UnpinArtifactRequest>,
    ) -> Result<Response<proto::PinView>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let tag = request.into_inner().tag;
        self.consistent_read(false).await?;
        let view = self.pin_view(&tag)?;
        self.node
            .propose_as(
                &caller,
                Command::UnpinArtifact {
                    tag,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        Ok(view)
    }

    async fn list_pins(
        &self,
        request: Request<proto::ListPinsRequest>,
    ) -> Result<Response<proto::ListPinsResponse>, Status> {
        require_role(&request, Role::Client)?;
        self.consistent_read(request.get_ref().stale).await?;
        let pins = self.node.read(|state| {
            state
                .catalog
                .pins
                .iter()
                .map(|(tag, pin)| pin_view(tag, pin))
                .collect()
        });
        Ok(Response::new(proto::ListPinsResponse { pins }))
    }

    async fn collect_garbage(
        &self,
        request: Request<proto::CollectGarbageRequest>,
    ) -> Result<Response<proto::CollectGarbageResponse>, Status> {
        let caller = require_role(&request, Role::Client)?;
        let gc = request.into_inner();
        self.consistent_read(false).await?;
        let grace_ms = self.node.retention.grace_ms;
        let started_ms = now_ms();
        let plan = self
            .node
            .read(|state| crate::state::gc_plan(state, gc.keep_last, started_ms, grace_ms));
        // What is reclaimed: the planned blobs this member still stores that are
        // old enough to go (measured before the deletion starts; others were
        // deleted before). Those written within the grace period are kept for a
        // later collection, and reported as such.
        let before_ms = started_ms.saturating_sub(grace_ms as i64);
        let mut sizes = HashMap::new();
        let mut recent = HashMap::new();
        for digest in plan.blobs.keys() {
            if let Ok(Some(size)) = self.node.blobs.size_of(digest).await {
                if self.node.blobs.written_before(digest, before_ms) {
                    sizes.insert(digest.clone(), size);
                } else {
                    recent.insert(digest.clone(), size);
                }
            }
        }
        let (runs, blobs) = if gc.dry_run {
            (plan.runs, plan.blobs.into_iter().collect::<Vec<_>>())
        } else {
            let outcome = self
                .node
                .propose_as(
                    &caller,
                    Command::Collect {
                        keep_last: gc.keep_last,
                        now_ms: now_ms(),
                        grace_ms,
                    },
                )
                .await
                .map_err(propose_status)?;
            let Outcome::Collected { runs, blobs, .. } = outcome else {
                return Err(Status::internal("unexpected outcome of a collection"));
            };
            (runs, blobs)
        };
        let freed: Vec<u64> = blobs
            .iter()
            .filter_map(|(digest, _)| sizes.get(digest).copied())
            .collect();
        let (deleted, bytes) = (freed.len() as u64, freed.iter().sum::<u64>());
        let held: Vec<u64> = blobs
            .iter()
            .filter_map(|(digest, _)| recent.get(digest).copied())
            .collect();
        self.consistent_read(false).await?;
        let runs_kept = self.node.read(|state| {
            state
                .runs
                .values()
                .filter(|r| r.state.is_terminal() && r.collected_ms.is_none())
                .count() as u64
        });
        tracing::info!(runs = runs.len(), blobs = deleted, bytes, recent = held.len(), dry_run = gc.dry_run, client = %caller.name, "garbage collection");
        Ok(Response::new(proto::CollectGarbageResponse {
            runs,
            blobs: deleted,
            bytes,
            runs_kept,
            recent_blobs: held.len() as u64,
            recent_bytes: held.iter().sum(),
            grace_ms,
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        require_role(&request, Role::Client)?;
        Ok(Response::new(self.node.cluster_status().await))
    }

    async fn add_member(
        &self,
        request: Request<proto::AddMemberRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let caller = require_role(&request, Role::Client)?;
        self.node.require_leader()?;
        let add = request.into_inner();
        if add.id == 0 {
            return Err(Status::invalid_argument(
                "member id 0 is not allowed; use ids from 1",
            ));
        }
        for (what, address) in [
            ("client address", &add.client_address),
            ("peer address", &add.peer_address),
        ] {
            if address.is_empty() && what == "peer address" {
                continue;
            }
            ferry_common::channel::parse_address(address).map_err(|e| {
                Status::invalid_argument(format!("the new member's {what} is not valid: {e}"))
            })?;
        }
        let member = crate::state::Member {
            id: add.id,
            peer_address: if add.peer_address.is_empty() {
                add.client_address.clone()
            } else {
                add.peer_address
            },
            client_address: add.client_address,
        };
        // A retried call whose change already applied answers with the status.
        match self
            .node
            .read(|state| state.members.get(&member.id).cloned())
        {
            Some(existing) if existing == member => {
                return Ok(Response::new(self.node.cluster_status().await));
            }
            Some(_) => {
                return Err(Status::already_exists(format!(
                    "member {} is already in the cluster with other addresses; remove it first",
                    member.id
                )));
            }
            None => {}
        }
        tracing::info!(member = member.id, client = %caller.name, "adding a member");
        self.node
            .change_membership(Some(member), None)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(self.node.cluster_status().await))
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let caller = require_role(&request, Role::Client)?;
        self.node.require_leader()?;
        let id = request.get_ref().id;
        let members = self.node.read(|state| state.members.len());
        if !self.node.read(|state| state.members.contains_key(&id)) {
            return Err(Status::not_found(format!(
                "member {id} is not in the cluster"
            )));
        }
        if members <= 1 {
            return Err(Status::failed_precondition(
                "the last member cannot be removed",
            ));
        }
        tracing::info!(member = id, client = %caller.name, "removing a member");
        self.node
            .change_membership(None, Some(id))
            .await
            .map_err(propose_status)?;
        Ok(Response::new(self.node.cluster_status().await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: u64) -> proto::RunSummary {
        proto::RunSummary {
            run_id: id,
            pipeline: "p".repeat(90),
            ..Default::default()
        }
    }

    #[test]
    fn a_view_holds_the_last_value_of_each_metric_and_how_many_there_were() {
        let point = |name: &str, value: f64, step: Option<i64>| crate::state::MetricPoint {
            name: name.into(),
            value,
            step,
        };
        let points = [
            point("loss", 0.5, Some(1)),
            point("accuracy", 0.8, None),
            point("loss", 0.25, Some(2)),
            point("loss", 0.125, Some(3)),
        ];
        let views = metric_views(&points, false);
        let shown: Vec<(&str, f64, Option<i64>, u32)> = views
            .iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.value,
                    m.has_step.then_some(m.step),
                    m.count,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [("loss", 0.125, Some(3), 3), ("accuracy", 0.8, None, 1)]
        );
        let history = metric_views(&points, true);
        assert_eq!(history.len(), 4);
        assert_eq!(history[2].value, 0.25);
        assert!(history.iter().all(|m| m.count == 0));
    }

    #[test]
    fn listings_keep_the_newest_runs_that_fit() {
        let size = prost::Message::encoded_len(&summary(5)) + 8;
        let ids = |(kept, count): (Vec<proto::RunSummary>, u64)| {
            (kept.iter().map(|s| s.run_id).collect::<Vec<_>>(), count)
        };
        // Newest first in, oldest first out; every item counted.
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 0, usize::MAX, summary)),
            (vec![1, 2, 3, 4, 5], 5)
        );
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 2, usize::MAX, summary)),
            (vec![4, 5], 5)
        );
        // The byte budget cuts too: three summaries' worth keeps three.
        assert_eq!(
            ids(newest_that_fit((1..=5).rev(), 0, 3 * size + 1, summary)),
            (vec![3, 4, 5], 5)
        );
        assert_eq!(
            ids(newest_that_fit(std::iter::empty(), 10, 100, summary)),
            (vec![], 0)
        );
    }
}
