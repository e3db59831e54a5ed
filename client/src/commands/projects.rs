//! `ferry projects` and `ferry admins`: projects with members and roles
//! (viewer < editor < owner) and the cluster's administrators.

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Read, Rpc};
use crate::render;

fn project_json(p: &proto::ProjectView) -> serde_json::Value {
    json!({
        "name": p.name,
        "members": p.members.iter().map(|m| json!({"user": m.user, "role": m.role})).collect::<Vec<_>>(),
        "created_by": p.created_by,
        "created_ms": p.created_ms,
        "your_role": p.caller_role,
    })
}

fn members_text(p: &proto::ProjectView) -> String {
    if p.members.is_empty() {
        return "-".to_string();
    }
    p.members
        .iter()
        .map(|m| format!("{} ({})", m.user, m.role))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(view: &proto::ProjectView, done: &str, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&project_json(view))?);
    } else {
        println!("{done}");
    }
    Ok(())
}

/// `ferry projects create NAME [--owner USER]`.
pub(crate) async fn create(
    client: &mut Client,
    name: String,
    owner: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::CreateProjectRequest {
        name,
        owner: owner.unwrap_or_default(),
    };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.create_project(request).await
        })
        .await?;
    let done = format!(
        "project {} created; members: {}",
        view.name,
        members_text(&view)
    );
    show(&view, &done, output)
}

/// `ferry projects list`.
pub(crate) async fn list(client: &mut Client, read: Read, output: Output) -> anyhow::Result<()> {
    let request = proto::ListProjectsRequest { stale: read.stale };
    let projects = client
        .rpc(request, |mut client, request| async move {
            client.list_projects(request).await
        })
        .await?
        .projects;
    if output == Output::Json {
        let list: Vec<_> = projects.iter().map(project_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = projects
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                if p.caller_role.is_empty() {
                    "-".to_string()
                } else {
                    p.caller_role.clone()
                },
                members_text(p),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(&["PROJECT", "YOUR ROLE", "MEMBERS"], &rows)
    );
    Ok(())
}

/// `ferry projects members add|remove PROJECT USER [--role R]`; `role` none
/// removes.
pub(crate) async fn set_member(
    client: &mut Client,
    project: String,
    user: String,
    role: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let removing = role.is_none();
    let request = proto::SetProjectMemberRequest {
        project,
        user: user.clone(),
        role: role.clone().unwrap_or_default(),
    };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.set_project_member(request).await
        })
        .await?;
    let done = if removing {
        format!("{user} removed from project {}", view.name)
    } else {
        format!(
            "{user} is now {} of project {}",
            role.unwrap_or_default(),
            view.name
        )
    };
    show(&view, &done, output)
}

fn print_admins(admins: &[proto::AdminView], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        let list: Vec<_> = admins
            .iter()
            .map(|a| json!({"name": a.name, "configured": a.configured}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if admins.is_empty() {
        println!(
            "no administrators (name them in `admins` of coordinator.toml, or 'ferry admins add USER' as one)"
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = admins
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                if a.configured {
                    "coordinator.toml"
                } else {
                    "ferry admins add"
                }
                .to_string(),
            ]
        })
        .collect();
    println!("{}", render::table(&["ADMIN", "FROM"], &rows));
    Ok(())
}

/// `ferry admins list`.
pub(crate) async fn list_admins(
    client: &mut Client,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListAdminsRequest { stale: read.stale };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.list_admins(request).await
        })
        .await?;
    print_admins(&answer.admins, output)
}

/// `ferry admins add|remove USER`.
pub(crate) async fn set_admin(
    client: &mut Client,
    user: String,
    admin: bool,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::SetAdminRequest {
        user: user.clone(),
        admin,
    };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.set_admin(request).await
        })
        .await?;
    if output == Output::Json {
        return print_admins(&answer.admins, output);
    }
    if admin {
        println!("{user} is now an administrator");
    } else {
        println!("{user} is no longer an administrator");
    }
    Ok(())
}

fn print_groups(groups: &[proto::GroupView], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        let list: Vec<_> = groups
            .iter()
            .map(|g| serde_json::json!({ "name": g.name, "users": g.users }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if groups.is_empty() {
        println!("no groups (an administrator adds users with 'ferry groups add GROUP USER')");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![format!("@{}", g.name), g.users.join(", ")])
        .collect();
    println!("{}", render::table(&["GROUP", "USERS"], &rows));
    Ok(())
}

/// `ferry groups list`.
pub(crate) async fn list_groups(
    client: &mut Client,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListGroupsRequest { stale: read.stale };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.list_groups(request).await
        })
        .await?;
    print_groups(&answer.groups, output)
}

/// `ferry groups add|remove GROUP USER`.
pub(crate) async fn set_group_member(
    client: &mut Client,
    group: String,
    user: String,
    member: bool,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::SetGroupMemberRequest {
        group: group.clone(),
        user: user.clone(),
        member,
    };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.set_group_member(request).await
        })
        .await?;
    if output == Output::Json {
        return print_groups(&answer.groups, output);
    }
    let group = group.trim_start_matches('@');
    if member {
        println!("{user} is in group @{group}");
    } else {
        println!("{user} is no longer in group @{group}");
    }
    Ok(())
}

/// `ferry groups delete GROUP`.
pub(crate) async fn delete_group(
    client: &mut Client,
    group: String,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::DeleteGroupRequest {
        group: group.clone(),
    };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.delete_group(request).await
        })
        .await?;
    if output == Output::Json {
        return print_groups(&answer.groups, output);
    }
    let group = group.trim_start_matches('@');
    println!("group @{group} deleted, with every role given to it");
    Ok(())
}
