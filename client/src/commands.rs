//! The `ferry` subcommands that talk to a coordinator, and `ferry certs`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_common::digest::{CHUNK_SIZE, short};
use ferry_common::pki::{self, Role};
use ferry_common::proto::{self, control_client::ControlClient};
use ferry_common::spec::{parse_param_override, parse_pipeline};
use serde_json::json;
use tonic::transport::Channel;

use crate::render;
use crate::{ArtifactsCommand, CertsCommand, Command, Output};

type Client = ControlClient<Channel>;

/// A gRPC error as a user-facing message.
fn status_error(status: tonic::Status) -> anyhow::Error {
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
/// command when it was already validated before connecting.
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
        } => {
            let local = match validated {
                Some(local) => local,
                None => validate(&pipeline, &params)?,
            };
            let run = submit(client, &pipeline, local).await?;
            if follow {
                return watch(client, run).await;
            }
        }
        Command::Runs => runs(client, output).await?,
        Command::Status { run, attempts } => status(client, run, attempts, output).await?,
        Command::Watch { run } => return watch(client, run).await,
        Command::Cancel { run } => {
            let view = client
                .cancel_run(proto::CancelRunRequest { run_id: run })
                .await
                .map_err(status_error)?
                .into_inner();
            let killed = view.steps.iter().filter(|s| s.state == "cancelled").count();
            println!("run {run} cancelled ({killed} steps stopped or never started)");
        }
        Command::Workers => workers(client, output).await?,
        Command::Logs { run, step, follow } => logs(client, run, step, follow).await?,
        Command::Artifacts { run, get } => match (run, get) {
            (
                _,
                Some(ArtifactsCommand::Get {
                    run,
                    step,
                    name,
                    dest,
                }),
            ) => download(client, run, &step, &name, dest.as_deref()).await?,
            (Some(run), None) => artifacts(client, run, output).await?,
            (None, None) => {
                bail!("name a run: 'ferry artifacts RUN' or 'ferry artifacts get RUN STEP NAME'")
            }
        },
        Command::Certs { .. } | Command::Dev { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A pipeline file read and validated locally, with the same code the coordinator
/// runs, so that a bad spec fails before anything is uploaded.
pub struct LocalSpec {
    yaml: String,
    file_name: String,
    overrides: BTreeMap<String, String>,
    spec: ferry_common::spec::Pipeline,
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

async fn submit(client: &mut Client, pipeline: &Path, local: LocalSpec) -> anyhow::Result<u64> {
    let LocalSpec {
        yaml,
        file_name,
        overrides,
        spec,
    } = local;
    let folder = pipeline
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let bundle =
        tokio::task::spawn_blocking(move || ferry_common::bundle::pack_dir(&folder)).await??;
    let present = client
        .has_blob(proto::BlobRef {
            digest: bundle.digest.clone(),
            size: bundle.bytes.len() as u64,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .present;
    let size = bundle.bytes.len();
    if !present {
        let digest = bundle.digest.clone();
        let total = size as u64;
        let chunks: Vec<proto::Chunk> = bundle
            .bytes
            .chunks(CHUNK_SIZE)
            .enumerate()
            .map(|(i, data)| proto::Chunk {
                digest: if i == 0 {
                    digest.clone()
                } else {
                    String::new()
                },
                size: total,
                data: data.to_vec(),
            })
            .collect();
        let chunks = if chunks.is_empty() {
            vec![proto::Chunk {
                digest,
                size: 0,
                data: Vec::new(),
            }]
        } else {
            chunks
        };
        client
            .upload_bundle(tokio_stream::iter(chunks))
            .await
            .map_err(status_error)?;
    }
    let run = client
        .submit_run(proto::SubmitRunRequest {
            spec_yaml: yaml,
            spec_file: file_name,
            params: overrides.into_iter().collect(),
            bundle_digest: bundle.digest.clone(),
            request_id: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .run_id;
    println!(
        "run {run} ({}) submitted; code bundle {} ({} files, {}, {})",
        spec.name,
        short(&bundle.digest),
        bundle.files,
        render::bytes(size as u64),
        if present {
            "already stored"
        } else {
            "uploaded"
        }
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

fn step_rows(view: &proto::RunView, now: i64) -> Vec<Vec<String>> {
    view.steps
        .iter()
        .map(|step| {
            vec![
                step.name.clone(),
                step.state.clone(),
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
                step.reason.clone(),
            ]
        })
        .collect()
}

const STEP_HEADERS: [&str; 7] = ["STEP", "STATE", "ATTEMPT", "WORKER", "TIME", "EXIT", "NOTE"];

async fn get_run(client: &mut Client, run: u64) -> anyhow::Result<proto::RunView> {
    Ok(client
        .get_run(proto::GetRunRequest {
            run_id: run,
            stale: false,
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

fn view_json(view: &proto::RunView) -> serde_json::Value {
    let summary = view.summary.clone().unwrap_or_default();
    json!({
        "run": summary.run_id,
        "pipeline": summary.pipeline,
        "state": summary.state,
        "submitter": summary.submitter,
        "submitted_ms": summary.submitted_ms,
        "finished_ms": summary.finished_ms,
        "bundle": view.bundle_digest,
        "params": view.params,
        "steps": view.steps.iter().map(|s| json!({
            "name": s.name,
            "state": s.state,
            "attempt": s.attempt,
            "worker": s.worker,
            "started_ms": s.started_ms,
            "finished_ms": s.finished_ms,
            "exit_code": if s.has_exit_code { json!(s.exit_code) } else { json!(null) },
            "reason": s.reason,
            "needs": s.needs,
            "attempts": s.attempts.iter().map(|a| json!({
                "attempt": a.attempt,
                "worker": a.worker,
                "outcome": a.outcome,
                "started_ms": a.started_ms,
                "finished_ms": a.finished_ms,
                "exit_code": if a.has_exit_code { json!(a.exit_code) } else { json!(null) },
                "reason": a.reason,
                "gpus": a.gpus,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

async fn status(
    client: &mut Client,
    run: u64,
    attempts: bool,
    output: Output,
) -> anyhow::Result<()> {
    let view = get_run(client, run).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&view_json(&view))?);
        return Ok(());
    }
    let summary = view.summary.clone().unwrap_or_default();
    let now = render::now_ms();
    println!(
        "run {} ({}) {} — submitted by {}, {} of {} steps done",
        summary.run_id,
        summary.pipeline,
        summary.state,
        summary.submitter,
        summary.steps_done,
        summary.steps_total
    );
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
                    "STEP", "ATTEMPT", "WORKER", "OUTCOME", "TIME", "EXIT", "REASON"
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
        let view = get_run(client, run).await?;
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
                if seen.get(&step.name) != Some(&step.state) {
                    seen.insert(step.name.clone(), step.state.clone());
                    let mut line = format!(
                        "[{}/{}] {:<12} {}",
                        summary.steps_done, summary.steps_total, step.name, step.state
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
                    if !step.reason.is_empty() && step.state != "running" {
                        line.push_str(&format!(" — {}", step.reason));
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

async fn runs(client: &mut Client, output: Output) -> anyhow::Result<()> {
    let runs = client
        .list_runs(proto::ListRunsRequest { stale: false })
        .await
        .map_err(status_error)?
        .into_inner()
        .runs;
    if output == Output::Json {
        let list: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "run": r.run_id, "pipeline": r.pipeline, "state": r.state,
                    "submitter": r.submitter, "submitted_ms": r.submitted_ms,
                    "finished_ms": r.finished_ms, "steps_total": r.steps_total,
                    "steps_done": r.steps_done,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let now = render::now_ms();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.run_id.to_string(),
                r.pipeline.clone(),
                r.state.clone(),
                format!("{}/{}", r.steps_done, r.steps_total),
                r.submitter.clone(),
                render::ago(r.submitted_ms, now),
                if r.finished_ms > 0 {
                    render::duration_ms(r.finished_ms - r.submitted_ms)
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(
            &[
                "RUN",
                "PIPELINE",
                "STATE",
                "STEPS",
                "BY",
                "SUBMITTED",
                "TOOK"
            ],
            &rows
        )
    );
    Ok(())
}

async fn workers(client: &mut Client, output: Output) -> anyhow::Result<()> {
    let workers = client
        .list_workers(proto::ListWorkersRequest { stale: false })
        .await
        .map_err(status_error)?
        .into_inner()
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
                if w.connected {
                    "connected"
                } else {
                    "disconnected"
                }
                .to_string(),
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
    let mut stream = client
        .stream_logs(proto::StreamLogsRequest {
            run_id: run,
            step: step.unwrap_or_default(),
            follow,
        })
        .await
        .map_err(status_error)?
        .into_inner();
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

async fn artifacts(client: &mut Client, run: u64, output: Output) -> anyhow::Result<()> {
    let artifacts = client
        .list_artifacts(proto::ListArtifactsRequest {
            run_id: run,
            stale: false,
        })
        .await
        .map_err(status_error)?
        .into_inner()
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
    let mut stream = client
        .download_artifact(proto::DownloadArtifactRequest {
            run_id: run,
            step: step.to_string(),
            name: name.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
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
