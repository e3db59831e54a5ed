//! `ferry schedules`: create (after the checks of the submission path), list,
//! pause, resume and delete cron schedules.

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::views::schedule_view;
use super::{ControlService, submit};
use crate::api::propose_status;
use crate::node::{authorize, now_ms};
use crate::state::Command;

impl ControlService {
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
}

pub(super) async fn create_schedule(
    service: &ControlService,
    request: Request<proto::CreateScheduleRequest>,
) -> Result<Response<proto::ScheduleView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let create = request.into_inner();
    let (name, cron) = (create.name.clone(), create.cron.clone());
    let schedule = submit::schedule_to_create(service, create, caller.name.clone()).await?;
    service
        .node
        .propose_as(
            &caller,
            Command::CreateSchedule {
                schedule,
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    tracing::info!(schedule = %name, cron = %cron, client = %caller.name, "schedule created");
    // A follower forwarded the command: read once this member has applied it.
    service.consistent_read(false).await?;
    service.schedule_view(&name)
}

pub(super) async fn list_schedules(
    service: &ControlService,
    request: Request<proto::ListSchedulesRequest>,
) -> Result<Response<proto::ListSchedulesResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    let now = now_ms();
    let schedules = service.node.read(|state| {
        state
            .catalog
            .schedules
            .values()
            .filter(|s| authorize::may_read_schedule(&caller, s, state, service.admins()))
            .map(|s| schedule_view(s, now))
            .collect()
    });
    Ok(Response::new(proto::ListSchedulesResponse { schedules }))
}

pub(super) async fn pause_schedule(
    service: &ControlService,
    request: Request<proto::PauseScheduleRequest>,
) -> Result<Response<proto::ScheduleView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let pause = request.into_inner();
    service
        .node
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
    service.consistent_read(false).await?;
    service.schedule_view(&pause.name)
}

pub(super) async fn delete_schedule(
    service: &ControlService,
    request: Request<proto::DeleteScheduleRequest>,
) -> Result<Response<proto::ScheduleView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let name = request.into_inner().name;
    service.consistent_read(false).await?;
    let view = service.schedule_view(&name)?;
    service
        .node
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
