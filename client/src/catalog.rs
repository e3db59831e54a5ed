//! The `ferry` subcommands about what the cluster keeps beside runs: schedules
//! (`ferry schedules`), pins (`ferry artifacts pin|unpin|pins`), garbage
//! collection (`ferry gc`) and where an artifact came from (`ferry lineage`).
//! Like every command, each call goes through [`ferry_client::Connection::call`].

use anyhow::bail;
use ferry_common::digest::{is_valid_digest, short};
use ferry_common::proto;
use serde_json::json;

use crate::commands::{Client, LocalSpec, status_error, upload_bundle, validate};
use crate::{Output, Read, SchedulesCommand, lineage, render};

/// A digest as typed: surrounding blanks dropped, lower-cased; only a full one
/// is accepted, so that no prefix can name the wrong artifact.
fn full_digest(text: &str) -> anyhow::Result<String> {
    let digest = text.trim().to_ascii_lowercase();
    if !is_valid_digest(&digest) {
        bail!(
            "{:?} is not a full artifact digest (64 hex digits); 'ferry artifacts RUN' lists them",
            text.trim()
        );
    }
    Ok(digest)
}

/// `ferry lineage DIGEST`.
pub async fn lineage(
    client: &mut Client,
    digest: &str,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::LineageRequest {
        digest: full_digest(digest)?,
        stale: read.stale,
    };
    let digest = request.digest.clone();
    let nodes = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.lineage(request).await }
        })
        .await
        .map_err(status_error)?
        .nodes;
    if output == Output::Json {
        let list: Vec<_> = nodes
            .iter()
            .map(|n| {
                json!({
                    "digest": n.digest,
                    "name": n.name,
                    "size": n.size,
                    "run": n.run_id,
                    "step": n.step,
                    "attempt": n.attempt,
                    "command": n.command,
                    "bundle": n.bundle_digest,
                    "code": n.code_digest,
                    "params": n.params,
                    "matrix": n.matrix,
                    "inputs": n.inputs.iter().map(|i| json!({
                        "name": i.name,
                        "digest": i.digest,
                        "size": i.size,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("{}", lineage::render_tree(&digest, &nodes));
    Ok(())
}

fn schedule_json(s: &proto::ScheduleView) -> serde_json::Value {
    json!({
        "name": s.name,
        "cron": s.cron,
        "pipeline": s.pipeline,
        "owner": s.owner,
        "paused": s.paused,
        "created_ms": s.created_ms,
        "last_tick_ms": s.last_tick_ms,
        "last_run": if s.last_run > 0 { json!(s.last_run) } else { json!(null) },
        "next_tick_ms": s.next_tick_ms,
        "fired": s.fired,
        "missed": s.missed,
        "params": s.params,
    })
}

/// When a schedule next starts a run, as a phrase.
fn next_tick(s: &proto::ScheduleView) -> String {
    if s.paused {
        "none while paused".to_string()
    } else if s.next_tick_ms > 0 {
        render::utc_time(s.next_tick_ms)
    } else {
        "never (the expression matches no date)".to_string()
    }
}

pub fn schedules_table(schedules: &[proto::ScheduleView]) -> String {
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.cron.clone(),
                s.pipeline.clone(),
                if s.paused { "paused" } else { "active" }.to_string(),
                if s.last_tick_ms > 0 {
                    render::utc_time(s.last_tick_ms)
                } else {
                    "never".to_string()
                },
                if s.last_run > 0 {
                    s.last_run.to_string()
                } else {
                    String::new()
                },
                if s.paused || s.next_tick_ms <= 0 {
                    "-".to_string()
                } else {
                    render::utc_time(s.next_tick_ms)
                },
                s.fired.to_string(),
                s.missed.to_string(),
            ]
        })
        .collect();
    render::table(
        &[
            "NAME",
            "CRON",
            "PIPELINE",
            "STATE",
            "LAST TICK",
            "LAST RUN",
            "NEXT",
            "FIRED",
            "MISSED",
        ],
        &rows,
    )
}

/// `ferry schedules ...`; `validated` is the pipeline of `create`, checked before
/// connecting.
pub async fn schedules(
    client: &mut Client,
    command: SchedulesCommand,
    validated: Option<LocalSpec>,
    output: Output,
) -> anyhow::Result<()> {
    let (view, done) = match command {
        SchedulesCommand::List { read } => {
            let request = proto::ListSchedulesRequest { stale: read.stale };
            let schedules = client
                .call(|mut client| async move { client.list_schedules(request).await })
                .await
                .map_err(status_error)?
                .schedules;
            if output == Output::Json {
                let list: Vec<_> = schedules.iter().map(schedule_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if schedules.is_empty() {
                println!(
                    "no schedules ('ferry schedules create NAME --cron EXPR --pipeline FILE' makes one)"
                );
            } else {
                println!("{}", schedules_table(&schedules));
            }
            return Ok(());
        }
        SchedulesCommand::Create {
            name,
            cron,
            pipeline,
            params,
        } => {
            let local = match validated {
                Some(local) => local,
                None => validate(&pipeline, &params)?,
            };
            let bundle = upload_bundle(client, &pipeline, &local.spec).await?;
            // A name is created once: a retry after a lost answer is refused
            // (AlreadyExists), never a second schedule.
            let request = proto::CreateScheduleRequest {
                name,
                cron: cron.trim().to_string(),
                spec_yaml: local.yaml,
                spec_file: local.file_name,
                params: local.overrides.into_iter().collect(),
                bundle_digest: bundle.digest.clone(),
            };
            let view = client
                .call(|mut client| {
                    let request = request.clone();
                    async move { client.create_schedule(request).await }
                })
                .await
                .map_err(status_error)?;
            let done = format!(
                "schedule {} created: runs {} at {:?} (UTC), next {}; code bundle {}",
                view.name,
                local.spec.name,
                view.cron,
                next_tick(&view),
                bundle.describe()
            );
            (view, done)
        }
        SchedulesCommand::Pause { name } => {
            let view = set_paused(client, name, true).await?;
            let done = format!(
                "schedule {} paused: it starts no runs until resumed",
                view.name
            );
            (view, done)
        }
        SchedulesCommand::Resume { name } => {
            let view = set_paused(client, name, false).await?;
            let done = format!(
                "schedule {} resumed: next run {}",
                view.name,
                next_tick(&view)
            );
            (view, done)
        }
        SchedulesCommand::Delete { name } => {
            let request = proto::DeleteScheduleRequest { name };
            let view = client
                .call(|mut client| {
                    let request = request.clone();
                    async move { client.delete_schedule(request).await }
                })
                .await
                .map_err(status_error)?;
            let done = format!(
                "schedule {} deleted; the {} it started stay",
                view.name,
                render::count(view.fired, "run")
            );
            (view, done)
        }
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&schedule_json(&view))?);
    } else {
        println!("{done}");
    }
    Ok(())
}

async fn set_paused(
    client: &mut Client,
    name: String,
    paused: bool,
) -> anyhow::Result<proto::ScheduleView> {
    let request = proto::PauseScheduleRequest { name, paused };
    client
        .call(|mut client| {
            let request = request.clone();
            async move { client.pause_schedule(request).await }
        })
        .await
        .map_err(status_error)
}

fn pin_json(p: &proto::PinView) -> serde_json::Value {
    json!({
        "tag": p.tag,
        "digest": p.digest,
        "size": p.size,
        "owner": p.owner,
        "created_ms": p.created_ms,
    })
}

/// `ferry artifacts pin DIGEST [--tag NAME]`.
pub async fn pin(
    client: &mut Client,
    digest: &str,
    tag: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::PinArtifactRequest {
        digest: full_digest(digest)?,
        tag: tag.unwrap_or_default().trim().to_string(),
    };
    let view = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.pin_artifact(request).await }
        })
        .await
        .map_err(status_error)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&pin_json(&view))?);
        return Ok(());
    }
    let tagged = if view.tag == view.digest {
        String::new()
    } else {
        format!(" as {:?}", view.tag)
    };
    println!(
        "pinned {} ({}){tagged}: garbage collection keeps it until 'ferry artifacts unpin {}'",
        short(&view.digest),
        render::bytes(view.size),
        if view.tag == view.digest {
            view.digest.clone()
        } else {
            view.tag.clone()
        }
    );
    Ok(())
}

/// `ferry artifacts unpin TAG`.
pub async fn unpin(client: &mut Client, tag: &str, output: Output) -> anyhow::Result<()> {
    let request = proto::UnpinArtifactRequest {
        tag: tag.trim().to_string(),
    };
    let view = client
        .call(|mut client| {
            let request = request.clone();
            async move { client.unpin_artifact(request).await }
        })
        .await
        .map_err(status_error)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&pin_json(&view))?);
        return Ok(());
    }
    println!(
        "unpinned {:?} ({}): it can be collected once no kept run or other pin uses it",
        view.tag,
        short(&view.digest)
    );
    Ok(())
}

pub fn pins_table(pins: &[proto::PinView]) -> String {
    let rows: Vec<Vec<String>> = pins
        .iter()
        .map(|p| {
            vec![
                p.tag.clone(),
                short(&p.digest).to_string(),
                render::bytes(p.size),
                p.owner.clone(),
                render::utc_time(p.created_ms),
            ]
        })
        .collect();
    render::table(&["TAG", "DIGEST", "SIZE", "OWNER", "CREATED"], &rows)
}

/// `ferry artifacts pins`.
pub async fn pins(client: &mut Client, read: Read, output: Output) -> anyhow::Result<()> {
    let request = proto::ListPinsRequest { stale: read.stale };
    let pins = client
        .call(|mut client| async move { client.list_pins(request).await })
        .await
        .map_err(status_error)?
        .pins;
    if output == Output::Json {
        let list: Vec<_> = pins.iter().map(pin_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if pins.is_empty() {
        println!("no pins ('ferry artifacts pin DIGEST' keeps an artifact through 'ferry gc')");
    } else {
        println!("{}", pins_table(&pins));
    }
    Ok(())
}

/// What `ferry gc` says it did (or, with `dry_run`, would do).
pub fn gc_summary(answer: &proto::CollectGarbageResponse, dry_run: bool) -> String {
    let runs = render::count(answer.runs.len() as u64, "run");
    let blobs = render::count(answer.blobs, "blob");
    let bytes = render::bytes(answer.bytes);
    let kept = render::count(runs_kept(answer, dry_run), "run");
    let mut text = if dry_run {
        format!("would collect {runs}: would delete {blobs}, reclaiming {bytes} ({kept} kept)")
    } else {
        format!("collected {runs}: deleted {blobs}, {bytes} reclaimed ({kept} kept)")
    };
    if answer.recent_blobs > 0 {
        let grace = ferry_common::spec::format_duration_ms(answer.grace_ms);
        text.push_str(&format!(
            "\n{} {} ({}) written in the last {grace}: the first collection \
             after that deletes them (run 'ferry gc' again then)",
            if dry_run { "would keep" } else { "kept" },
            render::count(answer.recent_blobs, "blob"),
            render::bytes(answer.recent_bytes),
        ));
    }
    if !answer.runs.is_empty() {
        const SHOWN: usize = 20;
        let mut ids: Vec<String> = answer.runs.iter().take(SHOWN).map(u64::to_string).collect();
        if answer.runs.len() > SHOWN {
            ids.push(format!("… {} more", answer.runs.len() - SHOWN));
        }
        text.push_str(&format!("\nruns: {}", ids.join(", ")));
    }
    text
}

/// Finished runs left uncollected (after the collection, for a dry run too:
/// nothing was collected then, so the coordinator's count still includes the
/// runs that would go).
fn runs_kept(answer: &proto::CollectGarbageResponse, dry_run: bool) -> u64 {
    if dry_run {
        answer.runs_kept.saturating_sub(answer.runs.len() as u64)
    } else {
        answer.runs_kept
    }
}

/// `ferry gc --keep-last N [--dry-run]`.
pub async fn collect_garbage(
    client: &mut Client,
    keep_last: u32,
    dry_run: bool,
    output: Output,
) -> anyhow::Result<()> {
    // Collecting twice deletes nothing more the second time, so a retry after a
    // lost answer is safe (it reports only what was left to collect).
    let request = proto::CollectGarbageRequest { keep_last, dry_run };
    let answer = client
        .call(|mut client| async move { client.collect_garbage(request).await })
        .await
        .map_err(status_error)?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "dry_run": dry_run,
                "runs": answer.runs,
                "blobs": answer.blobs,
                "bytes": answer.bytes,
                "runs_kept": runs_kept(&answer, dry_run),
                "recent_blobs": answer.recent_blobs,
                "recent_bytes": answer.recent_bytes,
                "grace_ms": answer.grace_ms,
            }))?
        );
        return Ok(());
    }
    println!("{}", gc_summary(&answer, dry_run));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_digests_are_taken() {
        let digest = "ab".repeat(32);
        assert_eq!(
            full_digest(&format!("  {}\n", digest.to_uppercase())).unwrap(),
            digest
        );
        let error = full_digest("abcd").unwrap_err().to_string();
        assert!(error.contains("not a full artifact digest"), "{error}");
    }

    #[test]
    fn the_schedule_table_shows_times_in_utc() {
        let schedule = proto::ScheduleView {
            name: "nightly".into(),
            cron: "0 10 * * *".into(),
            pipeline: "iris".into(),
            last_tick_ms: 1_795_514_400_000,
            last_run: 12,
            next_tick_ms: 1_795_600_800_000,
            fired: 3,
            missed: 1,
            ..Default::default()
        };
        let paused = proto::ScheduleView {
            name: "weekly".into(),
            cron: "0 0 * * MON".into(),
            pipeline: "iris".into(),
            paused: true,
            ..Default::default()
        };
        let text = schedules_table(&[schedule.clone(), paused.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME     CRON"), "{text}");
        assert!(
            lines[1].contains("active")
                && lines[1]
                    .contains("2026-11-24 10:00:00Z  12        2026-11-25 10:00:00Z  3      1"),
            "{text}"
        );
        assert!(
            lines[2].contains("paused") && lines[2].contains("never"),
            "{text}"
        );
        assert_eq!(next_tick(&schedule), "2026-11-25 10:00:00Z");
        assert_eq!(next_tick(&paused), "none while paused");
    }

    #[test]
    fn the_gc_summary_counts_what_went() {
        let answer = proto::CollectGarbageResponse {
            runs: (1..=12).collect(),
            blobs: 57,
            bytes: 1_288_490_189,
            runs_kept: 34,
            ..Default::default()
        };
        assert_eq!(
            gc_summary(&answer, false),
            "collected 12 runs: deleted 57 blobs, 1.2 GiB reclaimed (34 runs kept)\n\
             runs: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"
        );
        assert!(gc_summary(&answer, true).starts_with(
            "would collect 12 runs: would delete 57 blobs, reclaiming 1.2 GiB (22 runs kept)"
        ));
        let nothing = proto::CollectGarbageResponse {
            runs: vec![],
            blobs: 1,
            bytes: 0,
            runs_kept: 1,
            ..Default::default()
        };
        assert_eq!(
            gc_summary(&nothing, false),
            "collected 0 runs: deleted 1 blob, 0 B reclaimed (1 run kept)"
        );
        let recent = proto::CollectGarbageResponse {
            runs: vec![3],
            recent_blobs: 4,
            recent_bytes: 3 * 1024,
            grace_ms: 600_000,
            runs_kept: 0,
            ..Default::default()
        };
        assert_eq!(
            gc_summary(&recent, false),
            "collected 1 run: deleted 0 blobs, 0 B reclaimed (0 runs kept)\n\
             kept 4 blobs (3.0 KiB) written in the last 10m: the first collection after that \
             deletes them (run 'ferry gc' again then)\n\
             runs: 3"
        );
    }

    #[test]
    fn the_pin_table_lists_tags() {
        let pin = proto::PinView {
            tag: "best-model".into(),
            digest: "c".repeat(64),
            size: 2048,
            owner: "alice".into(),
            created_ms: 1_795_600_800_000,
        };
        assert_eq!(
            pins_table(&[pin]),
            "TAG         DIGEST        SIZE     OWNER  CREATED\n\
             best-model  cccccccccccc  2.0 KiB  alice  2026-11-25 10:00:00Z"
        );
    }
}
