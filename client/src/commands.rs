//! The `ferry` subcommands that talk to the coordinators, and `ferry certs`. Every
//! call goes through [`Connection::call`], which rides out a failover by moving to
//! another member and trying again. Schedules, pins, garbage collection and
//! lineage live in [`crate::catalog`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_client::Connection;
use ferry_common::digest::{CHUNK_SIZE, short};
use ferry_common::pki::{self, Role};
use ferry_common::proto;
use ferry_common::spec::{parse_param_override, parse_pipeline};
use serde_json::json;

use crate::compare::{self, Goal};
use crate::render;
use crate::{
    ArtifactsCommand, CertsCommand, ClusterCommand, Command, Output, Read, RunsCommand,
    WorkersCommand, catalog,
};

pub(crate) type Client = Connection;

/// A gRPC error as a user-facing message.
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

pub fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir } => {
            let paths = pki::init_ca(&dir)?;
            println!(
                "cluster CA created: {} (keep {} secret)",
                paths.cert.display(),
                paths.key.display()
            );
        }
        CertsCommand::Issue {
            dir,
            out,
            role,
            name,
            dns,
            ip,
        } => {
            let role: Role = role.parse()?;
            let out = out.unwrap_or_else(|| dir.clone());
            let paths = pki::issue(&dir, &out, role, &name, &dns, &ip)?;
            println!(
                "{role} certificate for \"{name}\": {} (key {})",
                paths.cert.display(),
                paths.key.display()
            );
        }
    }
    Ok(())
}

/// Runs a command against the coordinator; `validated` is the pipeline of a `run`
/// or `schedules create` command when it was already validated before connecting.
pub async fn remote(
    client: &mut Client,
    command: Command,
    validated: Option<LocalSpec>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            pipeline,
            params,
            watch: follow,
            no_cache,
        } => {
            let local = match validated {
                Some(local) => local,
                None => validate(&pipeline, &params)?,
            };
            let run = submit(client, &pipeline, local, no_cache).await?;
            if follow {
                return watch(client, run).await;
            }
        }
        Command::Runs {
            read,
            conditions,
            limit,
            command: None,
        } => runs(client, read, conditions.as_deref(), limit, output).await?,
        Command::Runs {
            command: Some(RunsCommand::Diff { a, b, read }),
            ..
        } => diff(client, a, b, read, output).await?,
        Command::Runs {
            command:
                Some(RunsCommand::Compare {
                    runs,
                    metric,
                    goal,
                    read,
                }),
            ..
        } => compare(client, &runs, metric.as_deref(), goal, read, output).await?,
        Command::Rerun {
            run,
            from,
            watch: follow,
        } => {
            let new_run = rerun(client, run, from).await?;
            if follow {
                return watch(client, new_run).await;
            }
        }
        Command::Status {
            run,
            attempts,
            read,
        } => status(client, run, attempts, read, output).await?,
        Command::Watch { run } => return watch(client, run).await,
        Command::Metrics {
            run,
            metric,
            goal,
            read,
        } => metrics(client, run, metric.as_deref(), goal, read, output).await?,
        Command::Lineage { digest, read } => {
            catalog::lineage(client, &digest, read, output).await?
        }
        Command::Cancel { run } => cancel(client, run).await?,
        Command::Workers {
            command: Some(command),
            ..
        } => set_worker_mode(client, command, output).await?,
        Command::Workers {
            read,
            command: None,
        } => workers(client, read, output).await?,
        Command::Logs { run, step, follow } => logs(client, run, step, follow).await?,
        Command::Cluster { command } => cluster(client, command, output).await?,
        Command::Artifacts { run, read, command } => match (run, command) {
            (
                _,
                Some(ArtifactsCommand::Get {
                    run,
                    step,
                    name,
                    dest,
                }),
            ) => download(client, run, &step, &name, dest.as_deref()).await?,
            (_, Some(ArtifactsCommand::Pin { digest, tag })) => {
                catalog::pin(client, &digest, tag.as_deref(), output).await?
            }
            (_, Some(ArtifactsCommand::Unpin { tag })) => {
                catalog::unpin(client, &tag, output).await?
            }
            (_, Some(ArtifactsCommand::Pins { read })) => {
                catalog::pins(client, read, output).await?
            }
            (Some(run), None) => artifacts(client, run, read, output).await?,
            (None, None) => {
                bail!(
                    "name a run: 'ferry artifacts RUN' or 'ferry artifacts get RUN STEP NAME' \
                     (or list pins: 'ferry artifacts pins')"
                )
            }
        },
        Command::Schedules { command } => {
            catalog::schedules(client, command, validated, output).await?
        }
        Command::Gc { keep_last, dry_run } => {
            catalog::collect_garbage(client, keep_last, dry_run, output).await?
        }
        Command::Certs { .. } | Command::Dev { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A pipeline file read and validated locally, with the same code the coordinator
/// runs, so that a bad spec fails before anything is uploaded.
pub struct LocalSpec {
    pub(crate) yaml: String,
    pub(crate) file_name: String,
    pub(crate) overrides: BTreeMap<String, String>,
    pub(crate) spec: ferry_common::spec::Pipeline,
}

/// The pipeline file a path names: the file itself, or `pipeline.yaml` (else
/// `pipeline.yml`) in a folder.
pub fn pipeline_file(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ["pipeline.yaml", "pipeline.yml"]
        .iter()
        .map(|name| path.join(name))
        .find(|file| file.is_file())
        .with_context(|| {
            format!(
                "{} is a folder without a pipeline.yaml; name the pipeline file instead",
                path.display()
            )
        })
}

pub fn validate(pipeline: &Path, params: &[String]) -> anyhow::Result<LocalSpec> {
    let yaml = std::fs::read_to_string(pipeline)
        .with_context(|| format!("cannot read {}", pipeline.display()))?;
    let file_name = pipeline
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline.yaml".into());
    let mut overrides = BTreeMap::new();
    for text in params {
        let (key, value) = parse_param_override(text)?;
        overrides.insert(key, value);
    }
    let spec = parse_pipeline(&file_name, &yaml, &overrides)?;
    Ok(LocalSpec {
        yaml,
        file_name,
        overrides,
        spec,
    })
}

/// A code bundle as stored on the coordinators.
pub(crate) struct UploadedBundle {
    pub(crate) digest: String,
    pub(crate) files: usize,
    pub(crate) size: u64,
    /// It was stored already, so nothing was sent.
    pub(crate) already_stored: bool,
}

impl UploadedBundle {
    /// `3f9a1c2d4e5f (12 files, 4.0 KiB, uploaded)`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} ({} files, {}, {})",
            short(&self.digest),
            self.files,
            render::bytes(self.size),
            if self.already_stored {
                "already stored"
            } else {
                "uploaded"
            }
        )
    }
}

/// Packs the folder holding `pipeline` into a code bundle and uploads it unless
/// the coordinators hold it already. Each step's `cache.paths` must be in the
/// bundle (the coordinator checks it too): checked first, so that a pipeline
/// it would refuse leaves nothing stored.
pub(crate) async fn upload_bundle(
    client: &mut Client,
    pipeline: &Path,
    spec: &ferry_common::spec::Pipeline,
) -> anyhow::Result<UploadedBundle> {
    let folder = pipeline
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut cache_paths: Vec<(String, Vec<String>)> = Vec::new();
    for step in spec
        .steps
        .iter()
        .filter(|s| s.cache.enabled && !s.cache.paths.is_empty())
    {
        let name = step.trial.as_ref().map_or(&step.name, |t| &t.of);
        if !cache_paths.iter().any(|(n, _)| n == name) {
            cache_paths.push((name.clone(), step.cache.paths.clone()));
        }
    }
    let bundle = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let bundle = ferry_common::bundle::pack_dir(&folder)?;
        for (step, paths) in &cache_paths {
            ferry_common::bundle::paths_digest(bundle.bytes.as_slice(), paths)
                .map_err(|e| anyhow::anyhow!("cache.paths of step \"{step}\": {e}"))?;
        }
        Ok(bundle)
    })
    .await??;
    let size = bundle.bytes.len() as u64;
    let blob = proto::BlobRef {
        digest: bundle.digest.clone(),
        size,
    };
    let present = client
        .call(|mut client| {
            let blob = blob.clone();
            async move { client.has_blob(blob).await }
        })
        .await
        .map_err(status_error)?
        .present;
    if !present {
        let digest = bundle.digest.clone();
        let mut chunks: Vec<proto::Chunk> = bundle
            .bytes
            .chunks(CHUNK_SIZE)
            .enumerate()
            .map(|(i, data)| proto::Chunk {
                digest: if i == 0 {
                    digest.clone()
                } else {
                    String::new()
                },
                size,
                data: data.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(proto::Chunk {
                digest,
                size: 0,
                data: Vec::new(),
            });
        }
        // Content-addressed: sending it again after a failover stores it once.
        client
            .call(|mut client| {
                let chunks = chunks.clone();
                async move { client.upload_bundle(tokio_stream::iter(chunks)).await }
            })
            .await
            .map_err(status_error)?;
    }
    Ok(UploadedBundle {
        digest: bundle.digest,
        files: bundle.files,
        size,
        already_stored: present,
    })
}

async fn submit(
    client: &mut Client,
    pipeline: &Path,
    local: LocalSpec,
    no_cache: bool,
) -> anyhow::Result<u64> {
    let bundle = upload_bundle(client, pipeline, &local.spec).await?;
    // The same request id on every retry: a submission that was applied before the
    // answer got lost is answered with its run, never started twice.
    let request = proto::SubmitRunRequest {
        spec_yaml: local.yaml,
        spec_file: local.file_name,
        params: local.overrides.into_iter().collect(),
        bundle_digest: bundle.digest.clone(),
        request_id: ferry_client::new_request_id(),
        no_cache,
    };
    tracing::debug!(request_id = %request.request_id, "submitting");
    let run = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.submit_run(request).await }
        })
        .await
        .map_err(status_error)?
        .run_id;
    println!(
        "run {run} ({}) submitted; code bundle {}{}",
        local.spec.name,
        bundle.describe(),
        if no_cache { "; cache not used" } else { "" }
    );
    Ok(run)
}

/// `ferry rerun`: a new run of `source` that reuses its successful steps; says
/// how many steps it took over and returns the new run.
async fn rerun(client: &mut Client, source: u64, from: Option<String>) -> anyhow::Result<u64> {
    // One id for every retry, so that a re-run whose answer got lost is not
    // started twice.
    let request = proto::RerunRunRequest {
        run_id: source,
        from: from.clone().unwrap_or_default(),
        request_id: ferry_client::new_request_id(),
    };
    let run = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.rerun_run(request).await }
        })
        .await
        .map_err(status_error)?
        .run_id;
    let view = get_run(client, run, Read::default()).await?;
    let reused = view.steps.iter().filter(|s| !s.reused.is_empty()).count() as u64;
    let summary = view.summary.unwrap_or_default();
    let from = match from {
        Some(step) => step,
        None => "the steps that did not succeed".to_string(),
    };
    println!(
        "run {run} ({}) re-runs run {source} from {from}: {} reused",
        summary.pipeline,
        render::count(reused, "step")
    );
    Ok(run)
}

fn step_time(step: &proto::StepView, now: i64) -> String {
    if step.started_ms == 0 {
        return String::new();
    }
    let end = if step.finished_ms > 0 {
        step.finished_ms
    } else {
        now
    };
    render::duration_ms(end - step.started_ms)
}

/// What a step's STATE column says: "cached" or "reused" for a step that took
/// an earlier run's result instead of running.
fn step_state(step: &proto::StepView) -> &str {
    if step.reused.is_empty() {
        &step.state
    } else {
        &step.reused
    }
}

/// What a step's NOTE column says: where a cached or reused result came from,
/// and the step's reason.
fn step_note(step: &proto::StepView) -> String {
    if step.reused.is_empty() {
        return step.reason.clone();
    }
    let from = format!("from run {} step {}", step.reused_run, step.reused_step);
    if step.reason.is_empty() {
        from
    } else {
        format!("{from}; {}", step.reason)
    }
}

fn step_rows(view: &proto::RunView, now: i64) -> Vec<Vec<String>> {
    view.steps
        .iter()
        .map(|step| {
            vec![
                step.name.clone(),
                step_state(step).to_string(),
                if step.attempt > 0 {
                    step.attempt.to_string()
                } else {
                    String::new()
                },
                step.worker.clone(),
                step_time(step, now),
                if step.has_exit_code {
                    step.exit_code.to_string()
                } else {
                    String::new()
                },
                step_note(step),
            ]
        })
        .collect()
}

const STEP_HEADERS: [&str; 7] = ["STEP", "STATE", "ATTEMPT", "WORKER", "TIME", "EXIT", "NOTE"];

pub(crate) async fn get_run(
    client: &mut Client,
    run: u64,
    read: Read,
) -> anyhow::Result<proto::RunView> {
    get_run_view(client, run, read, false).await
}

/// A run's view; with `metric_history`, every metric value each attempt
/// reported instead of the last of each name.
async fn get_run_view(
    client: &mut Client,
    run: u64,
    read: Read,
    metric_history: bool,
) -> anyhow::Result<proto::RunView> {
    let request = proto::GetRunRequest {
        run_id: run,
        stale: read.stale,
        metric_history,
    };
    client
        .call(|mut client| async move { client.get_run(request).await })
        .await
        .map_err(status_error)
}

/// The metrics `ferry metrics` shows for a step: those of its latest attempt, or,
/// for a step that took an earlier run's result, those of the attempt that
/// produced it. None for a step that has neither.
fn shown_metrics(step: &proto::StepView) -> Option<(Option<u32>, &[proto::Metric])> {
    match step.attempts.last() {
        Some(attempt) => Some((Some(attempt.attempt), attempt.metrics.as_slice())),
        None if !step.metrics.is_empty() => Some((None, step.metrics.as_slice())),
        None => None,
    }
}

/// `ferry metrics RUN`: the metrics of each step's latest attempt (or, for a
/// cached step, of the attempt that produced its result). With `metric`, the
/// steps are sorted by it, best first, and the best one is marked.
async fn metrics(
    client: &mut Client,
    run: u64,
    metric: Option<&str>,
    goal: Goal,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    // JSON is for scripts: every value (a training curve); the table shows the
    // last value of each metric and how many there were.
    let view = get_run_view(client, run, read, output == Output::Json).await?;
    let shown: Vec<(&proto::StepView, Option<u32>, &[proto::Metric])> = view
        .steps
        .iter()
        .filter_map(|step| {
            let (attempt, metrics) = shown_metrics(step)?;
            Some((step, attempt, metrics))
        })
        .collect();
    // Steps in pipeline order, or best first by the metric asked for.
    let value_of = |metrics: &[proto::Metric], name: &str| {
        metrics
            .iter()
            .rev()
            .find(|m| m.name == name)
            .map(|m| m.value)
    };
    let (order, best) = match metric {
        Some(name) => {
            let values: Vec<Option<f64>> =
                shown.iter().map(|(_, _, m)| value_of(m, name)).collect();
            let order = compare::rank(&values, goal);
            let best = order
                .first()
                .copied()
                .filter(|i| values[*i].is_some_and(|v| !v.is_nan()));
            (order, best)
        }
        None => ((0..shown.len()).collect(), None),
    };
    if output == Output::Json {
        let steps: Vec<_> = order
            .iter()
            .map(|i| {
                let (step, attempt, metrics) = shown[*i];
                let mut entry = json!({
                    "step": step.name,
                    "attempt": attempt,
                    "metrics": metrics.iter().map(|m| json!({
                        "name": m.name,
                        "value": m.value,
                        "step": if m.has_step { json!(m.step) } else { json!(null) },
                    })).collect::<Vec<_>>(),
                });
                if !step.reused.is_empty() {
                    entry["reused"] = json!(step.reused);
                    entry["reused_run"] = json!(step.reused_run);
                    entry["reused_step"] = json!(step.reused_step);
                }
                if !step.trial_of.is_empty() {
                    entry["trial_of"] = json!(step.trial_of);
                    entry["matrix"] = json!(step.matrix);
                }
                if metric.is_some() {
                    entry["best"] = json!(best == Some(*i));
                }
                entry
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&steps)?);
        return Ok(());
    }
    let trials = shown.iter().any(|(step, _, _)| !step.matrix.is_empty());
    let mut rows = Vec::new();
    for i in &order {
        let (step, attempt, metrics) = shown[*i];
        for (name, _) in compare::last_values(metrics) {
            let values: Vec<&proto::Metric> = metrics.iter().filter(|m| m.name == name).collect();
            let last = values.last().expect("a value per name");
            let mut row = vec![
                step.name.clone(),
                match attempt {
                    Some(attempt) => attempt.to_string(),
                    None => step.reused.clone(),
                },
                name.clone(),
                render::metric(last.value),
                if last.has_step {
                    last.step.to_string()
                } else {
                    String::new()
                },
                values
                    .iter()
                    .map(|m| m.count.max(1))
                    .sum::<u32>()
                    .to_string(),
            ];
            if trials {
                row.push(compare::key_values(&step.matrix));
            }
            if metric.is_some() {
                let marked = best == Some(*i) && Some(name.as_str()) == metric;
                row.push(if marked { "*".into() } else { String::new() });
            }
            rows.push(row);
        }
    }
    if rows.is_empty() {
        println!(
            "run {run} has no metrics (a step reports them as JSON lines in the file named by FERRY_METRICS)"
        );
        return Ok(());
    }
    let mut headers = vec!["STEP", "ATTEMPT", "METRIC", "LAST", "AT STEP", "VALUES"];
    if trials {
        headers.push("MATRIX");
    }
    if metric.is_some() {
        headers.push("BEST");
    }
    println!("{}", render::table(&headers, &rows));
    if let Some(name) = metric {
        match best {
            Some(i) => {
                let (step, _, metrics) = shown[i];
                let value = value_of(metrics, name).unwrap_or(f64::NAN);
                let matrix = if step.matrix.is_empty() {
                    String::new()
                } else {
                    format!(", {}", compare::key_values(&step.matrix))
                };
                println!(
                    "best: {} ({name} = {}{matrix})",
                    step.name,
                    render::metric(value)
                );
            }
            None => println!("best: no step of run {run} reported {name:?}"),
        }
    }
    Ok(())
}

async fn cancel(client: &mut Client, run: u64) -> anyhow::Result<()> {
    let request = proto::CancelRunRequest { run_id: run };
    match client
        .call(|mut client| async move { client.cancel_run(request).await })
        .await
    {
        Ok(view) => {
            let killed = view.steps.iter().filter(|s| s.state == "cancelled").count();
            println!("run {run} cancelled ({killed} steps stopped or never started)");
            Ok(())
        }
        Err(status) => Err(status_error(status)),
    }
}

fn metrics_json(metrics: &[proto::Metric]) -> serde_json::Value {
    metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "value": m.value,
                "step": if m.has_step { json!(m.step) } else { json!(null) },
                "count": m.count.max(1),
            })
        })
        .collect()
}

/// A run's summary fields that `ferry runs` and `ferry status` both give in JSON.
fn summary_json(summary: &proto::RunSummary) -> serde_json::Value {
    json!({
        "run": summary.run_id,
        "pipeline": summary.pipeline,
        "state": summary.state,
        "submitter": summary.submitter,
        "submitted_ms": summary.submitted_ms,
        "finished_ms": summary.finished_ms,
        "steps_total": summary.steps_total,
        "steps_done": summary.steps_done,
        "steps_cached": summary.steps_cached,
        "reason": summary.reason,
        "priority": summary.priority,
        "project": summary.project,
        "rerun_of": if summary.rerun_of > 0 { json!(summary.rerun_of) } else { json!(null) },
        "schedule": if summary.schedule.is_empty() { json!(null) } else { json!(summary.schedule) },
        "schedule_tick_ms": summary.schedule_tick_ms,
        "collected": summary.collected,
        "params": summary.params,
        "metrics": summary.metrics,
    })
}

fn view_json(view: &proto::RunView) -> serde_json::Value {
    let summary = view.summary.clone().unwrap_or_default();
    let mut json = summary_json(&summary);
    json["bundle"] = json!(view.bundle_digest);
    json["params"] = json!(view.params);
    json["steps"] = view
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "state": s.state,
                "attempt": s.attempt,
                "worker": s.worker,
                "started_ms": s.started_ms,
                "finished_ms": s.finished_ms,
                "exit_code": if s.has_exit_code { json!(s.exit_code) } else { json!(null) },
                "reason": s.reason,
                "needs": s.needs,
                "reused": if s.reused.is_empty() { json!(null) } else { json!(s.reused) },
                "reused_run": if s.reused.is_empty() { json!(null) } else { json!(s.reused_run) },
                "reused_step": if s.reused.is_empty() { json!(null) } else { json!(s.reused_step) },
                "cache_key": s.cache_key,
                "inputs": s.inputs.iter().map(|i| json!({
                    "name": i.name,
                    "digest": i.digest,
                    "size": i.size,
                })).collect::<Vec<_>>(),
                "trial_of": if s.trial_of.is_empty() { json!(null) } else { json!(s.trial_of) },
                "matrix": s.matrix,
                "metrics": metrics_json(&s.metrics),
                "attempts": s.attempts.iter().map(|a| json!({
                    "attempt": a.attempt,
                    "worker": a.worker,
                    "outcome": a.outcome,
                    "started_ms": a.started_ms,
                    "finished_ms": a.finished_ms,
                    "exit_code": if a.has_exit_code { json!(a.exit_code) } else { json!(null) },
                    "reason": a.reason,
                    "gpus": a.gpus,
                    "cpu_time_ms": a.cpu_time_ms,
                    "peak_memory_bytes": a.peak_memory_bytes,
                    "metrics": metrics_json(&a.metrics),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json
}

/// The lines under `ferry status`'s first line that say how a run came to be
/// and what is left of it.
fn origin_lines(summary: &proto::RunSummary) -> Vec<String> {
    let mut lines = Vec::new();
    if summary.rerun_of > 0 {
        lines.push(format!("re-run of run {}", summary.rerun_of));
    }
    if !summary.schedule.is_empty() {
        let tick = if summary.schedule_tick_ms > 0 {
            format!(
                " for its tick at {}",
                render::utc_time(summary.schedule_tick_ms)
            )
        } else {
            String::new()
        };
        lines.push(format!("started by schedule {}{tick}", summary.schedule));
    }
    if summary.collected {
        lines.push("collected: its logs and artifacts were deleted by 'ferry gc'".to_string());
    }
    lines
}

async fn status(
    client: &mut Client,
    run: u64,
    attempts: bool,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let view = get_run(client, run, read).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&view_json(&view))?);
        return Ok(());
    }
    let summary = view.summary.clone().unwrap_or_default();
    let now = render::now_ms();
    println!(
        "run {} ({}) {} — submitted by {}, {} of {} steps done{}",
        summary.run_id,
        summary.pipeline,
        summary.state,
        summary.submitter,
        summary.steps_done,
        summary.steps_total,
        if summary.steps_cached > 0 {
            format!(" ({} from earlier runs)", summary.steps_cached)
        } else {
            String::new()
        }
    );
    for line in origin_lines(&summary) {
        println!("{line}");
    }
    if !summary.reason.is_empty() {
        println!("{}", summary.reason);
    }
    if summary.priority != 0 || !matches!(summary.project.as_str(), "" | "default") {
        println!("project {}, priority {}", summary.project, summary.priority);
    }
    println!("{}", render::table(&STEP_HEADERS, &step_rows(&view, now)));
    if attempts {
        let rows: Vec<Vec<String>> = view
            .steps
            .iter()
            .flat_map(|step| {
                step.attempts.iter().map(move |a| {
                    vec![
                        step.name.clone(),
                        a.attempt.to_string(),
                        a.worker.clone(),
                        a.outcome.clone(),
                        if a.started_ms > 0 && a.finished_ms > 0 {
                            render::duration_ms(a.finished_ms - a.started_ms)
                        } else {
                            String::new()
                        },
                        if a.has_exit_code {
                            a.exit_code.to_string()
                        } else {
                            String::new()
                        },
                        if a.finished_ms > 0 {
                            render::duration_ms(a.cpu_time_ms as i64)
                        } else {
                            String::new()
                        },
                        if a.peak_memory_bytes > 0 {
                            render::bytes(a.peak_memory_bytes)
                        } else {
                            String::new()
                        },
                        a.gpus
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        a.reason.clone(),
                    ]
                })
            })
            .collect();
        println!();
        println!(
            "{}",
            render::table(
                &[
                    "STEP", "ATTEMPT", "WORKER", "OUTCOME", "TIME", "EXIT", "CPU", "PEAK MEM",
                    "GPUS", "REASON"
                ],
                &rows
            )
        );
    }
    Ok(())
}

/// Follows a run until it ends. On a terminal the table is redrawn in place;
/// otherwise each change of a step's state is printed once.
async fn watch(client: &mut Client, run: u64) -> anyhow::Result<ExitCode> {
    let tty = std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let started = std::time::Instant::now();
    loop {
        let view = get_run(client, run, Read::default()).await?;
        let summary = view.summary.clone().unwrap_or_default();
        let now = render::now_ms();
        let mut out = std::io::stdout().lock();
        if tty {
            if drawn_lines > 0 {
                write!(out, "\x1b[{drawn_lines}A\x1b[J")?;
            }
            let table = render::table(&STEP_HEADERS, &step_rows(&view, now));
            let header = format!(
                "run {} ({}) {} {} {}/{} steps",
                summary.run_id,
                summary.pipeline,
                summary.state,
                render::bar(summary.steps_done, summary.steps_total, 20),
                summary.steps_done,
                summary.steps_total
            );
            writeln!(out, "{header}\n{table}")?;
            drawn_lines = 2 + table.matches('\n').count();
        } else {
            for step in &view.steps {
                let state = step_state(step);
                if seen.get(&step.name).map(String::as_str) != Some(state) {
                    seen.insert(step.name.clone(), state.to_string());
                    let mut line = format!(
                        "[{}/{}] {:<12} {}",
                        summary.steps_done, summary.steps_total, step.name, state
                    );
                    if step.attempt > 0 {
                        line.push_str(&format!(" (attempt {}", step.attempt));
                        if !step.worker.is_empty() {
                            line.push_str(&format!(" on {}", step.worker));
                        }
                        line.push(')');
                    }
                    let time = step_time(step, now);
                    if step.finished_ms > 0 && !time.is_empty() {
                        line.push_str(&format!(" in {time}"));
                    }
                    let note = step_note(step);
                    if !note.is_empty() && step.state != "running" {
                        line.push_str(&format!(" — {note}"));
                    }
                    writeln!(out, "{line}")?;
                }
            }
        }
        out.flush()?;
        drop(out);
        if summary.state != "running" {
            let took = if summary.finished_ms > 0 {
                render::duration_ms(summary.finished_ms - summary.submitted_ms)
            } else {
                render::duration_ms(started.elapsed().as_millis() as i64)
            };
            println!("run {run} {} in {took}", summary.state);
            return Ok(if summary.state == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The NOTE column of `ferry runs`: how a run came to be, and whether it was
/// collected.
fn run_note(run: &proto::RunSummary) -> String {
    let mut notes = Vec::new();
    if run.rerun_of > 0 {
        notes.push(format!("rerun of {}", run.rerun_of));
    }
    if !run.schedule.is_empty() {
        notes.push(format!("schedule {}", run.schedule));
    }
    if run.collected {
        notes.push("collected".to_string());
    }
    notes.join(", ")
}

/// The STEPS column of `ferry runs`: done of total, and how many were cached.
fn run_steps(run: &proto::RunSummary) -> String {
    if run.steps_cached > 0 {
        format!(
            "{}/{} ({} cached)",
            run.steps_done, run.steps_total, run.steps_cached
        )
    } else {
        format!("{}/{}", run.steps_done, run.steps_total)
    }
}

async fn runs(
    client: &mut Client,
    read: Read,
    conditions: Option<&str>,
    limit: u32,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListRunsRequest {
        stale: read.stale,
        r#where: conditions.unwrap_or_default().to_string(),
        limit,
    };
    let answer = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.list_runs(request).await }
        })
        .await
        .map_err(status_error)?;
    let runs = answer.runs;
    if (runs.len() as u64) < answer.matched {
        // On stderr, so that the table or the JSON stays whole for scripts.
        eprintln!(
            "the newest {} of {} runs{}; --limit N shows more{}",
            runs.len(),
            answer.matched,
            conditions
                .map(|c| format!(" meeting {c:?}"))
                .unwrap_or_default(),
            if limit == 0 {
                " (the rest did not fit in one answer: narrow it with --where)"
            } else {
                ", --limit 0 every run"
            }
        );
    }
    if output == Output::Json {
        let list: Vec<_> = runs.iter().map(summary_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if runs.is_empty() && conditions.is_some() {
        println!("no run meets {:?}", conditions.unwrap_or_default());
        return Ok(());
    }
    let columns = conditions.map(compare::where_names).unwrap_or_default();
    let now = render::now_ms();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![
                r.run_id.to_string(),
                r.pipeline.clone(),
                r.state.clone(),
                run_steps(r),
            ];
            row.extend(columns.iter().map(|name| compare::where_value(r, name)));
            row.extend([
                r.submitter.clone(),
                render::ago(r.submitted_ms, now),
                if r.finished_ms > 0 {
                    render::duration_ms(r.finished_ms - r.submitted_ms)
                } else {
                    String::new()
                },
                run_note(r),
            ]);
            row
        })
        .collect();
    let mut headers = vec!["RUN", "PIPELINE", "STATE", "STEPS"];
    headers.extend(columns.iter().map(String::as_str));
    headers.extend(["BY", "SUBMITTED", "TOOK", "NOTE"]);
    println!("{}", render::table(&headers, &rows));
    Ok(())
}

/// `ferry runs diff A B`.
async fn diff(
    client: &mut Client,
    a: u64,
    b: u64,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let view_a = get_run(client, a, read).await?;
    let view_b = get_run(client, b, read).await?;
    let diff = compare::diff_runs(&view_a, &view_b);
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
    } else {
        println!("{}", compare::render_diff(&diff));
    }
    Ok(())
}

/// `ferry runs compare RUN...`.
async fn compare(
    client: &mut Client,
    runs: &[u64],
    metric: Option<&str>,
    goal: Goal,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let mut summaries = Vec::new();
    for run in runs {
        summaries.push(
            get_run(client, *run, read)
                .await?
                .summary
                .unwrap_or_default(),
        );
    }
    let comparison = compare::compare_runs(&summaries, metric, goal);
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        println!("{}", compare::render_comparison(&comparison));
    }
    Ok(())
}

/// What `ferry workers` shows in its STATE column: whether the worker is connected
/// (or was declared lost), and what an operator allows on it.
fn worker_state(w: &proto::WorkerView) -> String {
    let link = if w.lost_ms > 0 {
        "lost"
    } else if w.connected {
        "connected"
    } else {
        "disconnected"
    };
    match w.mode.as_str() {
        "" | "active" => link.to_string(),
        "draining" if w.running == 0 => format!("{link}, drained"),
        mode => format!("{link}, {mode}"),
    }
}

async fn set_worker_mode(
    client: &mut Client,
    command: WorkersCommand,
    output: Output,
) -> anyhow::Result<()> {
    let (name, mode, done) = match command {
        WorkersCommand::Cordon { name } => (name, "cordoned", "cordoned: it takes no new work"),
        WorkersCommand::Drain { name } => (
            name,
            "draining",
            "draining: it takes no new work and its running steps finish",
        ),
        WorkersCommand::Uncordon { name } => (name, "active", "active: it takes new work"),
    };
    let request = proto::SetWorkerModeRequest {
        name: name.clone(),
        mode: mode.to_string(),
    };
    let view = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.set_worker_mode(request).await }
        })
        .await
        .map_err(status_error)?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "name": view.name,
                "mode": view.mode,
                "running": view.running,
                "state": worker_state(&view),
            }))?
        );
        return Ok(());
    }
    println!("worker {name} is {done}");
    if mode == "draining" {
        if view.running == 0 {
            println!("it runs nothing: it is drained");
        } else {
            println!(
                "{} step{} still running; 'ferry workers' shows \"drained\" once they end",
                view.running,
                if view.running == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

async fn workers(client: &mut Client, read: Read, output: Output) -> anyhow::Result<()> {
    let request = proto::ListWorkersRequest { stale: read.stale };
    let workers = client
        .call(|mut client| async move { client.list_workers(request).await })
        .await
        .map_err(status_error)?
        .workers;
    if output == Output::Json {
        let list: Vec<_> = workers
            .iter()
            .map(|w| {
                let capacity = w.capacity.unwrap_or_default();
                let in_use = w.in_use.unwrap_or_default();
                json!({
                    "name": w.name,
                    "connected": w.connected,
                    "mode": w.mode,
                    "lost": w.lost_ms > 0,
                    "state": worker_state(w),
                    "capacity": {"cpu_millis": capacity.cpu_millis, "memory_bytes": capacity.memory_bytes, "gpus": capacity.gpus},
                    "in_use": {"cpu_millis": in_use.cpu_millis, "memory_bytes": in_use.memory_bytes, "gpus": in_use.gpus},
                    "labels": w.labels,
                    "gpus": w.gpus.iter().map(|g| json!({"index": g.index, "uuid": g.uuid, "model": g.model, "memory_bytes": g.memory_bytes})).collect::<Vec<_>>(),
                    "running": w.running,
                    "last_heartbeat_ms": w.last_heartbeat_ms,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let now = render::now_ms();
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let capacity = w.capacity.unwrap_or_default();
            let in_use = w.in_use.unwrap_or_default();
            let mut labels: Vec<String> =
                w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                w.name.clone(),
                worker_state(w),
                format!(
                    "{}/{}",
                    render::cpus(in_use.cpu_millis),
                    render::cpus(capacity.cpu_millis)
                ),
                format!(
                    "{}/{}",
                    render::bytes(in_use.memory_bytes),
                    render::bytes(capacity.memory_bytes)
                ),
                format!("{}/{}", in_use.gpus, capacity.gpus),
                w.running.to_string(),
                labels.join(","),
                render::ago(w.last_heartbeat_ms, now),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(
            &[
                "WORKER",
                "STATE",
                "CPU",
                "MEMORY",
                "GPU",
                "STEPS",
                "LABELS",
                "HEARTBEAT"
            ],
            &rows
        )
    );
    Ok(())
}

async fn logs(
    client: &mut Client,
    run: u64,
    step: Option<String>,
    follow: bool,
) -> anyhow::Result<()> {
    let request = proto::StreamLogsRequest {
        run_id: run,
        step: step.unwrap_or_default(),
        follow,
    };
    let mut stream = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.stream_logs(request).await }
        })
        .await
        .map_err(status_error)?;
    // Steps that did not run in this run have their log where they ran.
    if let Ok(view) = get_run(client, run, Read { stale: true }).await {
        for step in view
            .steps
            .iter()
            .filter(|s| !s.reused.is_empty())
            .filter(|s| request.step.is_empty() || s.name == request.step)
        {
            eprintln!(
                "note: step {} is {} from run {} step {}; its log: ferry logs {} {}",
                step.name,
                step.reused,
                step.reused_run,
                step.reused_step,
                step.reused_run,
                step.reused_step
            );
        }
    }
    let mut out = std::io::stdout().lock();
    while let Some(line) = stream.message().await.map_err(status_error)? {
        writeln!(
            out,
            "[{}#{} {}] {}",
            line.step, line.attempt, line.stream, line.text
        )?;
        if follow {
            out.flush()?;
        }
    }
    Ok(())
}

async fn artifacts(
    client: &mut Client,
    run: u64,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListArtifactsRequest {
        run_id: run,
        stale: read.stale,
    };
    let artifacts = client
        .call(|mut client| async move { client.list_artifacts(request).await })
        .await
        .map_err(status_error)?
        .artifacts;
    if output == Output::Json {
        let list: Vec<_> = artifacts
            .iter()
            .map(|a| json!({"step": a.step, "name": a.name, "size": a.size, "digest": a.digest, "attempt": a.attempt}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            vec![
                a.step.clone(),
                a.name.clone(),
                render::bytes(a.size),
                a.digest.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(&["STEP", "NAME", "SIZE", "BLAKE3"], &rows)
    );
    Ok(())
}

async fn download(
    client: &mut Client,
    run: u64,
    step: &str,
    name: &str,
    path: Option<&Path>,
) -> anyhow::Result<()> {
    let target = match path {
        Some(path) => path.to_path_buf(),
        None => Path::new(name.rsplit('/').next().unwrap_or(name)).to_path_buf(),
    };
    let request = proto::DownloadArtifactRequest {
        run_id: run,
        step: step.to_string(),
        name: name.to_string(),
    };
    let mut stream = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.download_artifact(request).await }
        })
        .await
        .map_err(status_error)?;
    let partial = target.with_extension("ferry-partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut expected = String::new();
    let mut size = 0u64;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if expected.is_empty() {
                    expected = chunk.digest.clone();
                }
                hasher.update(&chunk.data);
                size += chunk.data.len() as u64;
                file.write_all(&chunk.data)?;
            }
            Ok(None) => break,
            Err(status) => {
                let _ = std::fs::remove_file(&partial);
                return Err(status_error(status));
            }
        }
    }
    file.sync_all()?;
    drop(file);
    let actual = hasher.finalize().to_hex().to_string();
    if actual != expected {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{name}: downloaded content hashes to {actual}, expected {expected}; nothing written"
        );
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    println!(
        "{}: {}, blake3 {}…{} verified",
        target.display(),
        render::bytes(size),
        &actual[..4],
        &actual[actual.len() - 2..]
    );
    Ok(())
}

async fn cluster(
    client: &mut Client,
    command: ClusterCommand,
    output: Output,
) -> anyhow::Result<()> {
    let status = match command {
        ClusterCommand::Status => client
            .call(|mut client| async move {
                client.cluster_status(proto::ClusterStatusRequest {}).await
            })
            .await
            .map_err(status_error)?,
        // Membership changes are retried through a failover like everything else;
        // the coordinators answer a change already made with the group as it is.
        ClusterCommand::AddMember {
            id,
            client_address,
            peer_address,
        } => {
            let request = proto::AddMemberRequest {
                id,
                client_address,
                peer_address: peer_address.unwrap_or_default(),
            };
            let status = client
                .call(|mut client| {
                    let request = request.clone();
                    async move { client.add_member(request).await }
                })
                .await
                .map_err(status_error)?;
            if output == Output::Table {
                println!("member {id} added");
            }
            status
        }
        ClusterCommand::RemoveMember { id } => {
            let request = proto::RemoveMemberRequest { id };
            let status = client
                .call(|mut client| async move { client.remove_member(request).await })
                .await
                .map_err(status_error)?;
            if output == Output::Table {
                println!("member {id} removed");
            }
            status
        }
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&cluster_json(&status))?);
        return Ok(());
    }
    println!("{}", cluster_table(&status, client.address()));
    Ok(())
}

fn cluster_json(status: &proto::ClusterStatusResponse) -> serde_json::Value {
    json!({
        "leader_id": status.leader_id,
        "answered_by": status.answered_by,
        "members": status.members.iter().map(|m| json!({
            "id": m.id,
            "client_address": m.client_address,
            "peer_address": m.peer_address,
            "role": m.role,
            "term": m.term,
            "commit_index": m.commit_index,
            "applied_index": m.applied_index,
            "lag": m.lag,
            "last_contact_ms": m.last_contact_ms,
            "reachable": m.reachable,
            "error": m.error,
        })).collect::<Vec<_>>(),
    })
}

/// The group as a table, after a line saying who answered (at `address`) and who
/// leads.
fn cluster_table(status: &proto::ClusterStatusResponse, address: &str) -> String {
    let name = |id: u64| match status.members.iter().find(|m| m.id == id) {
        Some(member) if !member.client_address.is_empty() => {
            format!("member {id} ({})", member.client_address)
        }
        _ => format!("member {id}"),
    };
    let leader = if status.leader_id == 0 {
        "no leader is known (an election may be running)".to_string()
    } else {
        format!("the leader is {}", name(status.leader_id))
    };
    let header = format!(
        "answered by member {} at {address}; {leader}",
        status.answered_by
    );
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            let role = if m.reachable || m.id == status.answered_by {
                m.role.clone()
            } else {
                "unreachable".to_string()
            };
            let contact = if m.id == status.answered_by {
                "(answered)".to_string()
            } else if m.last_contact_ms < 0 || (!m.reachable && m.last_contact_ms == 0) {
                "never".to_string()
            } else {
                format!("{} ago", render::duration_ms(m.last_contact_ms))
            };
            vec![
                m.id.to_string(),
                m.client_address.clone(),
                m.peer_address.clone(),
                role,
                m.term.to_string(),
                m.commit_index.to_string(),
                m.applied_index.to_string(),
                m.lag.to_string(),
                contact,
                m.error.clone(),
            ]
        })
        .collect();
    let table = render::table(
        &[
            "ID",
            "CLIENT ADDRESS",
            "PEER ADDRESS",
            "ROLE",
            "TERM",
            "COMMIT",
            "APPLIED",
            "LAG",
            "LAST CONTACT",
            "NOTE",
        ],
        &rows,
    );
    format!("{header}\n{table}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str, reachable: bool, last_contact_ms: i64) -> proto::MemberStatus {
        proto::MemberStatus {
            id,
            client_address: format!("c{id}:7443"),
            peer_address: format!("c{id}:7444"),
            role: role.into(),
            term: 5,
            commit_index: 40,
            applied_index: 40,
            lag: 0,
            last_contact_ms,
            reachable,
            error: if reachable {
                String::new()
            } else {
                "connection refused".into()
            },
        }
    }

    #[test]
    fn the_cluster_table_names_who_answered_and_who_leads() {
        let status = proto::ClusterStatusResponse {
            leader_id: 1,
            answered_by: 2,
            members: vec![
                member(1, "leader", true, 120),
                member(2, "follower", true, 0),
                member(3, "follower", false, 0),
            ],
        };
        let text = cluster_table(&status, "c2:7443");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "answered by member 2 at c2:7443; the leader is member 1 (c1:7443)"
        );
        assert!(lines[1].starts_with("ID  CLIENT ADDRESS"), "{text}");
        assert!(
            lines[2].contains("leader") && lines[2].contains("0.12s ago"),
            "{text}"
        );
        assert!(lines[3].contains("(answered)"), "{text}");
        assert!(
            lines[4].contains("unreachable")
                && lines[4].contains("never")
                && lines[4].contains("connection refused"),
            "{text}"
        );
        let json = cluster_json(&status);
        assert_eq!(json["leader_id"], 1);
        assert_eq!(json["members"][2]["reachable"], false);
        let leaderless = proto::ClusterStatusResponse {
            leader_id: 0,
            ..status
        };
        assert!(cluster_table(&leaderless, "c2:7443").contains("no leader is known"));
    }
}
