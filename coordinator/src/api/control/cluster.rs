//! The cluster's membership as clients see and change it: `ferry cluster status`,
//! `ferry cluster add` and `ferry cluster remove`.

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use crate::api::propose_status;

pub(super) async fn cluster_status(
    service: &ControlService,
    request: Request<proto::ClusterStatusRequest>,
) -> Result<Response<proto::ClusterStatusResponse>, Status> {
    require_role(&request, Role::Client)?;
    Ok(Response::new(service.node.cluster_status().await))
}

pub(super) async fn add_member(
    service: &ControlService,
    request: Request<proto::AddMemberRequest>,
) -> Result<Response<proto::ClusterStatusResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.node.require_leader()?;
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
    match service
        .node
        .read(|state| state.members.get(&member.id).cloned())
    {
        Some(existing) if existing == member => {
            return Ok(Response::new(service.node.cluster_status().await));
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
    service
        .node
        .change_membership(Some(member), None)
        .await
        .map_err(propose_status)?;
    Ok(Response::new(service.node.cluster_status().await))
}

pub(super) async fn remove_member(
    service: &ControlService,
    request: Request<proto::RemoveMemberRequest>,
) -> Result<Response<proto::ClusterStatusResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.node.require_leader()?;
    let id = request.get_ref().id;
    let members = service.node.read(|state| state.members.len());
    if !service.node.read(|state| state.members.contains_key(&id)) {
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
    service
        .node
        .change_membership(None, Some(id))
        .await
        .map_err(propose_status)?;
    Ok(Response::new(service.node.cluster_status().await))
}
