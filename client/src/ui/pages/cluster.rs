//! The operator's pages: workers (capacity, use, GPUs, state), schedules (next
//! tick, last run) and the cluster's members (leader, term, indexes).

use axum::extract::State;
use ferry_common::proto;
use minijinja::context;
use serde::Serialize;

use super::now_ms;
use crate::commands::workers::worker_state;
use crate::render;
use crate::ui::Shared;
use crate::ui::error::PageResult;

#[derive(Serialize)]
struct WorkerRow {
    name: String,
    state: String,
    cpus: String,
    memory: String,
    gpus: String,
    running: u32,
    heartbeat: String,
    labels: String,
    gpu_list: Vec<String>,
}

fn worker_row(w: &proto::WorkerView, now: i64) -> WorkerRow {
    let capacity = w.capacity.unwrap_or_default();
    let in_use = w.in_use.unwrap_or_default();
    WorkerRow {
        name: w.name.clone(),
        state: worker_state(w),
        cpus: format!(
            "{} of {}",
            render::cpus(in_use.cpu_millis),
            render::cpus(capacity.cpu_millis)
        ),
        memory: format!(
            "{} of {}",
            render::bytes(in_use.memory_bytes),
            render::bytes(capacity.memory_bytes)
        ),
        gpus: format!("{} of {}", in_use.gpus, capacity.gpus),
        running: w.running,
        heartbeat: render::ago(w.last_heartbeat_ms, now),
        labels: crate::compare::key_values(&w.labels),
        gpu_list: w
            .gpus
            .iter()
            .map(|g| {
                format!(
                    "{}: {} ({}, {})",
                    g.index,
                    g.model,
                    render::bytes(g.memory_bytes),
                    g.uuid
                )
            })
            .collect(),
    }
}

/// `GET /workers`.
pub(crate) async fn workers(State(ui): State<Shared>) -> PageResult {
    let answer = ui
        .gateway
        .call(|mut client| async move {
            client
                .list_workers(proto::ListWorkersRequest { stale: false })
                .await
        })
        .await?;
    let now = now_ms();
    let rows: Vec<WorkerRow> = answer.workers.iter().map(|w| worker_row(w, now)).collect();
    ui.views.page(
        "workers.html",
        context! { title => "Workers", workers => rows },
        &ui.guard.cookie(),
    )
}

#[derive(Serialize)]
struct ScheduleRow {
    name: String,
    cron: String,
    pipeline: String,
    owner: String,
    paused: bool,
    next_tick_ms: i64,
    last_tick_ms: i64,
    last_run: u64,
    fired: u64,
    missed: u64,
    params: String,
}

/// `GET /schedules`.
pub(crate) async fn schedules(State(ui): State<Shared>) -> PageResult {
    let answer = ui
        .gateway
        .call(|mut client| async move {
            client
                .list_schedules(proto::ListSchedulesRequest { stale: false })
                .await
        })
        .await?;
    let rows: Vec<ScheduleRow> = answer
        .schedules
        .into_iter()
        .map(|s| ScheduleRow {
            params: crate::compare::key_values(&s.params),
            name: s.name,
            cron: s.cron,
            pipeline: s.pipeline,
            owner: s.owner,
            paused: s.paused,
            next_tick_ms: s.next_tick_ms,
            last_tick_ms: s.last_tick_ms,
            last_run: s.last_run,
            fired: s.fired,
            missed: s.missed,
        })
        .collect();
    ui.views.page(
        "schedules.html",
        context! { title => "Schedules", schedules => rows },
        &ui.guard.cookie(),
    )
}

#[derive(Serialize)]
struct MemberRow {
    id: u64,
    client_address: String,
    role: String,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    lag: u64,
    contact: String,
    reachable: bool,
    error: String,
    learner: bool,
    promotion: String,
}

/// `GET /cluster`.
pub(crate) async fn cluster(State(ui): State<Shared>) -> PageResult {
    let answer = ui
        .gateway
        .call(
            |mut client| async move { client.cluster_status(proto::ClusterStatusRequest {}).await },
        )
        .await?;
    let members: Vec<MemberRow> = answer
        .members
        .into_iter()
        .map(|m| MemberRow {
            contact: if m.last_contact_ms > 0 {
                format!("{} ago", render::duration_ms(m.last_contact_ms))
            } else {
                String::new()
            },
            id: m.id,
            client_address: m.client_address,
            role: m.role,
            term: m.term,
            commit_index: m.commit_index,
            applied_index: m.applied_index,
            lag: m.lag,
            reachable: m.reachable,
            error: m.error,
            learner: m.learner,
            promotion: m.promotion,
        })
        .collect();
    ui.views.page(
        "cluster.html",
        context! {
            title => "Cluster",
            members => members,
            leader => answer.leader_id,
            answered_by => answer.answered_by,
        },
        &ui.guard.cookie(),
    )
}
