//! `ferry schedules`: pipelines started on a cron schedule (UTC), and listing,
//! pausing, resuming and deleting them.

use std::path::Path;

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, LocalSpec, Output, Read, Rpc, prepare};
use crate::render;

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

fn schedules_table(schedules: &[proto::ScheduleView]) -> String {
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

/// `ferry schedules list`.
pub(crate) async fn list(client: &mut Client, read: Read, output: Output) -> anyhow::Result<()> {
    let request = proto::ListSchedulesRequest { stale: read.stale };
    let schedules = client
        .rpc(request, |mut client, request| async move {
            client.list_schedules(request).await
        })
        .await?
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
    Ok(())
}

/// `ferry schedules create`: uploads the code bundle of `local`, the pipeline
/// at `pipeline` (validated before connecting), and starts it on `cron`.
pub(crate) async fn create(
    client: &mut Client,
    name: String,
    cron: &str,
    pipeline: &Path,
    local: LocalSpec,
    output: Output,
) -> anyhow::Result<()> {
    let (spec, bundle) = prepare(client, pipeline, &local).await?;
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
        .rpc(request, |mut client, request| async move {
            client.create_schedule(request).await
        })
        .await?;
    let done = format!(
        "schedule {} created: runs {} at {:?} (UTC), next {}; code bundle {}",
        view.name,
        spec.name,
        view.cron,
        next_tick(&view),
        bundle.describe()
    );
    show(&view, &done, output)
}

/// `ferry schedules pause NAME`.
pub(crate) async fn pause(client: &mut Client, name: String, output: Output) -> anyhow::Result<()> {
    let view = set_paused(client, name, true).await?;
    let done = format!(
        "schedule {} paused: it starts no runs until resumed",
        view.name
    );
    show(&view, &done, output)
}

/// `ferry schedules resume NAME`.
pub(crate) async fn resume(
    client: &mut Client,
    name: String,
    output: Output,
) -> anyhow::Result<()> {
    let view = set_paused(client, name, false).await?;
    let done = format!(
        "schedule {} resumed: next run {}",
        view.name,
        next_tick(&view)
    );
    show(&view, &done, output)
}

/// `ferry schedules delete NAME`.
pub(crate) async fn delete(
    client: &mut Client,
    name: String,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::DeleteScheduleRequest { name };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.delete_schedule(request).await
        })
        .await?;
    let done = format!(
        "schedule {} deleted; the {} it started stay",
        view.name,
        render::count(view.fired, "run")
    );
    show(&view, &done, output)
}

/// Prints the schedule a change left, as JSON, or `done`: what the change did.
fn show(view: &proto::ScheduleView, done: &str, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&schedule_json(view))?);
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
        .rpc(request, |mut client, request| async move {
            client.pause_schedule(request).await
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
