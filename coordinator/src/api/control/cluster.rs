//! The cluster's membership as clients see and change it: `ferry cluster status`,
//! `ferry cluster add-member` and `ferry cluster remove-member`. Changes are for
//! administrators only and are made on the leader (`node::membership`).

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use crate::api::propose_status;
use crate::node::membership::MembershipError;

pub(super) async fn cluster_status(
    service: &ControlService,
    request: Request<proto::ClusterStatusRequest>,
) -> Result<Response<proto::ClusterStatusResponse>, Status> {
    require_role(&request, Role::Client)?;
    Ok(Response::new(service.node.cluster_status().await))
}

fn membership_status(error: MembershipError) -> Status {
    match error {
        MembershipError::Denied(message) => Status::permission_denied(message),
        MembershipError::Invalid(message) => Status::invalid_argument(message),
        MembershipError::Exists(message) => Status::already_exists(message),
        MembershipError::NotFound(_) => Status::not_found(error.to_string()),
        MembershipError::Unsafe(message) => Status::failed_precondition(message),
        MembershipError::Propose(error) => propose_status(error),
    }
}

/// Adds a member as a learner; the leader promotes it to voter once it is
/// reachable as a coordinator and has caught up.
pub(super) async fn add_member(
    service: &ControlService,
    request: Request<proto::AddMemberRequest>,
) -> Result<Response<proto::ClusterStatusResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service
        .node
        .read(|state| service.node.membership.authorize(&caller, state))
        .map_err(membership_status)?;
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
        learner: true,
    };
    tracing::info!(member = member.id, client = %caller.name, "adding a member");
    service
        .node
        .add_learner(member)
        .await
        .map_err(membership_status)?;
    Ok(Response::new(service.node.cluster_status().await))
}

/// Removes a voter or a learner, unless that would leave no reachable quorum.
pub(super) async fn remove_member(
    service: &ControlService,
    request: Request<proto::RemoveMemberRequest>,
) -> Result<Response<proto::ClusterStatusResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service
        .node
        .read(|state| service.node.membership.authorize(&caller, state))
        .map_err(membership_status)?;
    service.node.require_leader()?;
    let id = request.get_ref().id;
    tracing::info!(member = id, client = %caller.name, "removing a member");
    service
        .node
        .remove_member(id)
        .await
        .map_err(membership_status)?;
    Ok(Response::new(service.node.cluster_status().await))
}
