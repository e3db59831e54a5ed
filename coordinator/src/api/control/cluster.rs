//! The cluster's membership as clients see and change it: `ferry cluster status`,
//! `ferry cluster add-member` and `ferry cluster remove-member`. Changes are for
//! administrators only and are made on the leader (`node::membership`).

use ferry_common::pki::{Identity, Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use crate::access::Action;
use crate::api::propose_status;
use crate::node::membership::MembershipError;
use crate::state::{AuditOutcome, Described};

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
    let add = request.into_inner();
    let about = change_about(format!(
        "add member {} at {} (peer address {})",
        add.id,
        add.client_address,
        if add.peer_address.is_empty() {
            &add.client_address
        } else {
            &add.peer_address
        }
    ));
    authorize_change(service, &caller, &about).await?;
    service.node.require_leader()?;
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
    let added = service.node.add_learner(member).await;
    record_change(service, &caller, about, &added).await;
    added.map_err(membership_status)?;
    Ok(Response::new(service.node.cluster_status().await))
}

/// Removes a voter or a learner, unless that would leave no reachable quorum.
pub(super) async fn remove_member(
    service: &ControlService,
    request: Request<proto::RemoveMemberRequest>,
) -> Result<Response<proto::ClusterStatusResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let id = request.get_ref().id;
    let about = change_about(format!("remove member {id}"));
    authorize_change(service, &caller, &about).await?;
    service.node.require_leader()?;
    tracing::info!(member = id, client = %caller.name, "removing a member");
    let removed = service.node.remove_member(id).await;
    record_change(service, &caller, about, &removed).await;
    removed.map_err(membership_status)?;
    Ok(Response::new(service.node.cluster_status().await))
}

/// A membership change as the audit log names it.
fn change_about(summary: String) -> Described {
    Described {
        action: Action::ChangeMembership,
        project: None,
        summary,
    }
}

/// Administrators only; a refusal is recorded in the audit log.
async fn authorize_change(
    service: &ControlService,
    caller: &Identity,
    about: &Described,
) -> Result<(), Status> {
    let allowed = service
        .node
        .read(|state| service.node.membership.authorize(caller, state));
    if let Err(error) = allowed {
        let reason = service
            .node
            .refused(caller, about.clone(), error.to_string())
            .await;
        tracing::debug!(%reason, "membership change refused");
        return Err(membership_status(error));
    }
    Ok(())
}

/// A membership change is a Raft configuration change, outside the state
/// machine: what came of it is recorded by an entry of its own.
async fn record_change(
    service: &ControlService,
    caller: &Identity,
    about: Described,
    result: &Result<(), MembershipError>,
) {
    let outcome = match result {
        Ok(()) => AuditOutcome::Accepted {
            detail: String::new(),
        },
        Err(error) => AuditOutcome::Refused {
            reason: error.to_string(),
        },
    };
    service.node.record(caller, about, outcome).await;
}
