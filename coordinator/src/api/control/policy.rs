//! `ferry projects` and `ferry admins`: create projects, list them, add and
//! remove members, list, add and remove administrators. Each change is a
//! command authorized by the table (`node::authorize`) like every other.

use ferry_common::pki::{Identity, Role, require_role, validate_name};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use crate::access::{Action, ProjectRole};
use crate::api::propose_status;
use crate::node::{authorize, now_ms};
use crate::state::{Command, GROUP_SIGIL, Policy, State};

/// A project or user name: what a certificate name may be.
fn checked_name(what: &str, name: &str) -> Result<String, Status> {
    let name = name.trim();
    validate_name(name).map_err(|error| {
        Status::invalid_argument(format!("{what} {name:?} is not a valid name: {error}"))
    })?;
    Ok(name.to_string())
}

/// A user name, or a group as `@group`: what a project member or an
/// administrator may be.
fn checked_member(what: &str, name: &str) -> Result<String, Status> {
    let name = name.trim();
    match name.strip_prefix(GROUP_SIGIL) {
        Some(group) => Ok(format!("{GROUP_SIGIL}{}", checked_name("group", group)?)),
        None => checked_name(what, name),
    }
}

fn groups_answer(state: &crate::state::State) -> proto::ListGroupsResponse {
    proto::ListGroupsResponse {
        groups: state
            .policy
            .groups
            .iter()
            .map(|(name, users)| proto::GroupView {
                name: name.clone(),
                users: users.iter().cloned().collect(),
            })
            .collect(),
    }
}

pub(super) async fn list_groups(
    service: &ControlService,
    request: Request<proto::ListGroupsRequest>,
) -> Result<Response<proto::ListGroupsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    service.node.read(|state| {
        authorize::may(&caller, Action::ListGroups, state, service.admins())
            .map_err(Status::permission_denied)?;
        Ok(Response::new(groups_answer(state)))
    })
}

pub(super) async fn set_group_member(
    service: &ControlService,
    request: Request<proto::SetGroupMemberRequest>,
) -> Result<Response<proto::ListGroupsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let set = request.into_inner();
    let group = checked_name("group", set.group.trim().trim_start_matches(GROUP_SIGIL))?;
    let user = checked_name("user", &set.user)?;
    let command = Command::SetGroupMember {
        group: group.clone(),
        user: user.clone(),
        member: set.member,
        now_ms: now_ms(),
    };
    service
        .node
        .propose_as(&caller, command)
        .await
        .map_err(propose_status)?;
    tracing::info!(group = %group, user = %user, member = set.member, by = %caller, "group member set");
    service.consistent_read(false).await?;
    Ok(Response::new(service.node.read(groups_answer)))
}

/// A project as `caller` sees it (its role: its own, or through a group).
pub(super) async fn delete_group(
    service: &ControlService,
    request: Request<proto::DeleteGroupRequest>,
) -> Result<Response<proto::ListGroupsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let group = request.into_inner().group;
    let group = checked_name("group", group.trim().trim_start_matches(GROUP_SIGIL))?;
    let command = Command::DeleteGroup {
        group: group.clone(),
        now_ms: now_ms(),
    };
    service
        .node
        .propose_as(&caller, command)
        .await
        .map_err(propose_status)?;
    tracing::info!(group = %group, by = %caller, "group deleted");
    service.consistent_read(false).await?;
    Ok(Response::new(service.node.read(groups_answer)))
}

fn project_view(name: &str, policy: &Policy, caller: &str) -> proto::ProjectView {
    let project = policy.projects.get(name);
    let members = project.map(|p| &p.members);
    proto::ProjectView {
        name: name.to_string(),
        members: members
            .into_iter()
            .flatten()
            .map(|(user, role)| proto::ProjectMember {
                user: user.clone(),
                role: role.as_str().to_string(),
            })
            .collect(),
        created_by: project.map(|p| p.created_by.clone()).unwrap_or_default(),
        created_ms: project.map_or(0, |p| p.created_ms),
        caller_role: policy
            .role_in(name, caller)
            .map(|role| role.as_str().to_string())
            .unwrap_or_default(),
    }
}

impl ControlService {
    fn project_answer(
        &self,
        name: &str,
        caller: &Identity,
    ) -> Result<Response<proto::ProjectView>, Status> {
        self.node.read(|state| {
            if !state.policy.project_exists(name) {
                return Err(Status::not_found(format!(
                    "there is no project named {name:?}"
                )));
            }
            Ok(Response::new(project_view(
                name,
                &state.policy,
                &caller.name,
            )))
        })
    }

    fn admins_answer(&self, state: &State) -> proto::ListAdminsResponse {
        let configured = self.admins();
        let mut admins: Vec<proto::AdminView> = configured
            .iter()
            .map(|name| proto::AdminView {
                name: name.clone(),
                configured: true,
            })
            .collect();
        admins.extend(
            state
                .policy
                .admins
                .iter()
                .filter(|name| !configured.contains(*name))
                .map(|name| proto::AdminView {
                    name: name.clone(),
                    configured: false,
                }),
        );
        proto::ListAdminsResponse { admins }
    }
}

pub(super) async fn create_project(
    service: &ControlService,
    request: Request<proto::CreateProjectRequest>,
) -> Result<Response<proto::ProjectView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let create = request.into_inner();
    let name = checked_name("project", &create.name)?;
    let owner = if create.owner.trim().is_empty() {
        caller.name.clone()
    } else {
        checked_name("owner", &create.owner)?
    };
    service
        .node
        .propose_as(
            &caller,
            Command::CreateProject {
                name: name.clone(),
                owner: owner.clone(),
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    tracing::info!(project = %name, owner = %owner, by = %caller, "project created");
    service.consistent_read(false).await?;
    service.project_answer(&name, &caller)
}

pub(super) async fn list_projects(
    service: &ControlService,
    request: Request<proto::ListProjectsRequest>,
) -> Result<Response<proto::ListProjectsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    service.node.read(|state| {
        authorize::may(&caller, Action::ListProjects, state, service.admins())
            .map_err(Status::permission_denied)?;
        let admin = state.policy.is_admin(service.admins(), &caller.name);
        // `default` always, then the projects the caller is a member of (every
        // project for an administrator).
        let mut projects = vec![project_view(
            ferry_common::spec::DEFAULT_PROJECT,
            &state.policy,
            &caller.name,
        )];
        projects.extend(
            state
                .policy
                .projects
                .keys()
                .filter(|name| {
                    name.as_str() != ferry_common::spec::DEFAULT_PROJECT
                        && (admin || state.policy.role_in(name, &caller.name).is_some())
                })
                .map(|name| project_view(name, &state.policy, &caller.name)),
        );
        Ok(Response::new(proto::ListProjectsResponse { projects }))
    })
}

pub(super) async fn set_project_member(
    service: &ControlService,
    request: Request<proto::SetProjectMemberRequest>,
) -> Result<Response<proto::ProjectView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let set = request.into_inner();
    let project = checked_name("project", &set.project)?;
    let user = checked_member("user", &set.user)?;
    let role = match set.role.trim() {
        "" => None,
        text => Some(ProjectRole::parse(text).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown role {text:?}; use viewer, editor or owner"
            ))
        })?),
    };
    service
        .node
        .propose_as(
            &caller,
            Command::SetProjectMember {
                project: project.clone(),
                user: user.clone(),
                role,
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    tracing::info!(project = %project, user = %user, role = ?role, by = %caller, "project member set");
    service.consistent_read(false).await?;
    service.project_answer(&project, &caller)
}

pub(super) async fn list_admins(
    service: &ControlService,
    request: Request<proto::ListAdminsRequest>,
) -> Result<Response<proto::ListAdminsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    service.node.read(|state| {
        authorize::may(&caller, Action::ListAdmins, state, service.admins())
            .map_err(Status::permission_denied)?;
        Ok(Response::new(service.admins_answer(state)))
    })
}

pub(super) async fn set_admin(
    service: &ControlService,
    request: Request<proto::SetAdminRequest>,
) -> Result<Response<proto::ListAdminsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let set = request.into_inner();
    let user = checked_member("user", &set.user)?;
    if !set.admin && service.admins().contains(&user) {
        // Authorized first, so that a refusal says what the caller lacks.
        let summary = format!("remove administrator \"{user}\"");
        service
            .may_change(&caller, Action::SetAdmin, summary)
            .await?;
        return Err(Status::failed_precondition(format!(
            "\"{user}\" is an administrator named in `admins` of coordinator.toml; remove it \
             there (on every coordinator) and restart them"
        )));
    }
    service
        .node
        .propose_as(
            &caller,
            Command::SetAdmin {
                user: user.clone(),
                admin: set.admin,
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    tracing::info!(user = %user, admin = set.admin, by = %caller, "administrator set");
    service.consistent_read(false).await?;
    Ok(Response::new(
        service.node.read(|state| service.admins_answer(state)),
    ))
}
