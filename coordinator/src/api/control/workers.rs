//! Workers as clients see and steer them: `ferry workers` and
//! `ferry workers cordon|drain|uncordon`.

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use super::views::worker_view;
use crate::api::propose_status;
use crate::node::now_ms;
use crate::state::{Command, WorkerMode};

pub(super) async fn list_workers(
    service: &ControlService,
    request: Request<proto::ListWorkersRequest>,
) -> Result<Response<proto::ListWorkersResponse>, Status> {
    require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    let live = service.node.live_workers().await;
    let workers = service.node.read(|state| {
        state
            .workers
            .values()
            .map(|worker| worker_view(state, worker, &live))
            .collect()
    });
    Ok(Response::new(proto::ListWorkersResponse { workers }))
}

pub(super) async fn set_worker_mode(
    service: &ControlService,
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
    service
        .node
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
    let live = service.node.live_workers().await;
    service.node.read(|state| {
        state
            .workers
            .get(&request.name)
            .map(|worker| Response::new(worker_view(state, worker, &live)))
            .ok_or_else(|| {
                Status::not_found(format!("worker \"{}\" is not registered", request.name))
            })
    })
}
