//! `ferry workers`: every worker with its capacity, what is in use and its
//! state, and `cordon`, `drain` and `uncordon`.

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Read, Rpc};
use crate::render;

/// What `ferry workers` shows in its STATE column: whether the worker is connected
/// (or was declared lost), and what an operator allows on it.
pub(crate) fn worker_state(w: &proto::WorkerView) -> String {
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

/// `ferry workers cordon NAME`.
pub(crate) async fn cordon(
    client: &mut Client,
    name: String,
    output: Output,
) -> anyhow::Result<()> {
    set_mode(
        client,
        name,
        "cordoned",
        "cordoned: it takes no new work",
        output,
    )
    .await
}

/// `ferry workers drain NAME`.
pub(crate) async fn drain(client: &mut Client, name: String, output: Output) -> anyhow::Result<()> {
    set_mode(
        client,
        name,
        "draining",
        "draining: it takes no new work and its running steps finish",
        output,
    )
    .await
}

/// `ferry workers uncordon NAME`.
pub(crate) async fn uncordon(
    client: &mut Client,
    name: String,
    output: Output,
) -> anyhow::Result<()> {
    set_mode(client, name, "active", "active: it takes new work", output).await
}

/// Sets a worker's `mode`; `done` says what the worker now is.
async fn set_mode(
    client: &mut Client,
    name: String,
    mode: &str,
    done: &str,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::SetWorkerModeRequest {
        name: name.clone(),
        mode: mode.to_string(),
    };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.set_worker_mode(request).await
        })
        .await?;
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

/// `ferry workers`.
pub(crate) async fn list(client: &mut Client, read: Read, output: Output) -> anyhow::Result<()> {
    let request = proto::ListWorkersRequest { stale: read.stale };
    let workers = client
        .rpc(request, |mut client, request| async move {
            client.list_workers(request).await
        })
        .await?
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
