//! `ferry cluster`: the coordinators' replication group (who answered, who
//! leads, each member's progress), and adding or removing a member.

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Rpc};
use crate::render;

/// `ferry cluster status`.
pub(crate) async fn status(client: &mut Client, output: Output) -> anyhow::Result<()> {
    let status = client
        .rpc(
            proto::ClusterStatusRequest {},
            |mut client, request| async move { client.cluster_status(request).await },
        )
        .await?;
    show(client, &status, output)
}

// Membership changes are retried through a failover like everything else; the
// coordinators answer a change already made with the group as it is.

/// `ferry cluster add-member`: adds the member, then shows the group.
pub(crate) async fn add_member(
    client: &mut Client,
    id: u64,
    client_address: String,
    peer_address: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::AddMemberRequest {
        id,
        client_address,
        peer_address: peer_address.unwrap_or_default(),
    };
    let status = client
        .rpc(request, |mut client, request| async move {
            client.add_member(request).await
        })
        .await?;
    if output == Output::Table {
        println!(
            "member {id} added as a learner: it copies the log without voting, and the leader \
             promotes it to voter once it answers as a coordinator and has caught up"
        );
    }
    show(client, &status, output)
}

/// `ferry cluster remove-member`: removes the member, then shows the group.
pub(crate) async fn remove_member(
    client: &mut Client,
    id: u64,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::RemoveMemberRequest { id };
    let status = client
        .rpc(request, |mut client, request| async move {
            client.remove_member(request).await
        })
        .await?;
    if output == Output::Table {
        println!("member {id} removed");
    }
    show(client, &status, output)
}

/// Prints the group, as JSON or as [`cluster_table`].
fn show(
    client: &Client,
    status: &proto::ClusterStatusResponse,
    output: Output,
) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&cluster_json(status))?);
        return Ok(());
    }
    println!("{}", cluster_table(status, client.address()));
    Ok(())
}

fn cluster_json(status: &proto::ClusterStatusResponse) -> serde_json::Value {
    json!({
        "leader_id": status.leader_id,
        "answered_by": status.answered_by,
        "members": status.members.iter().map(|m| json!({
            "id": m.id,
            "client_address": m.client_address,
            "peer_address": m.peer_address,
            "role": m.role,
            "term": m.term,
            "commit_index": m.commit_index,
            "applied_index": m.applied_index,
            "lag": m.lag,
            "last_contact_ms": m.last_contact_ms,
            "reachable": m.reachable,
            "error": m.error,
            "learner": m.learner,
            "promotion": m.promotion,
        })).collect::<Vec<_>>(),
    })
}

/// The group as a table, after a line saying who answered (at `address`) and who
/// leads.
fn cluster_table(status: &proto::ClusterStatusResponse, address: &str) -> String {
    let name = |id: u64| match status.members.iter().find(|m| m.id == id) {
        Some(member) if !member.client_address.is_empty() => {
            format!("member {id} ({})", member.client_address)
        }
        _ => format!("member {id}"),
    };
    let leader = if status.leader_id == 0 {
        "no leader is known (an election may be running)".to_string()
    } else {
        format!("the leader is {}", name(status.leader_id))
    };
    let header = format!(
        "answered by member {} at {address}; {leader}",
        status.answered_by
    );
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            let role = match (m.reachable || m.id == status.answered_by, m.learner) {
                (true, false) => m.role.clone(),
                (true, true) => "learner".to_string(),
                (false, false) => "unreachable".to_string(),
                (false, true) => "learner (unreachable)".to_string(),
            };
            let note = match (m.error.is_empty(), m.promotion.is_empty()) {
                (_, true) => m.error.clone(),
                (true, false) => format!("promotion: {}", m.promotion),
                (false, false) => format!("{}; promotion: {}", m.error, m.promotion),
            };
            let contact = if m.id == status.answered_by {
                "(answered)".to_string()
            } else if m.last_contact_ms < 0 || (!m.reachable && m.last_contact_ms == 0) {
                "never".to_string()
            } else {
                format!("{} ago", render::duration_ms(m.last_contact_ms))
            };
            vec![
                m.id.to_string(),
                m.client_address.clone(),
                m.peer_address.clone(),
                role,
                m.term.to_string(),
                m.commit_index.to_string(),
                m.applied_index.to_string(),
                m.lag.to_string(),
                contact,
                note,
            ]
        })
        .collect();
    let table = render::table(
        &[
            "ID",
            "CLIENT ADDRESS",
            "PEER ADDRESS",
            "ROLE",
            "TERM",
            "COMMIT",
            "APPLIED",
            "LAG",
            "LAST CONTACT",
            "NOTE",
        ],
        &rows,
    );
    format!("{header}\n{table}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str, reachable: bool, last_contact_ms: i64) -> proto::MemberStatus {
        proto::MemberStatus {
            id,
            client_address: format!("c{id}:7443"),
            peer_address: format!("c{id}:7444"),
            role: role.into(),
            term: 5,
            commit_index: 40,
            applied_index: 40,
            lag: 0,
            last_contact_ms,
            reachable,
            error: if reachable {
                String::new()
            } else {
                "connection refused".into()
            },
            learner: false,
            promotion: String::new(),
        }
    }

    #[test]
    fn the_cluster_table_names_who_answered_and_who_leads() {
        let status = proto::ClusterStatusResponse {
            leader_id: 1,
            answered_by: 2,
            members: vec![
                member(1, "leader", true, 120),
                member(2, "follower", true, 0),
                member(3, "follower", false, 0),
            ],
        };
        let text = cluster_table(&status, "c2:7443");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "answered by member 2 at c2:7443; the leader is member 1 (c1:7443)"
        );
        assert!(lines[1].starts_with("ID  CLIENT ADDRESS"), "{text}");
        assert!(
            lines[2].contains("leader") && lines[2].contains("0.12s ago"),
            "{text}"
        );
        assert!(lines[3].contains("(answered)"), "{text}");
        assert!(
            lines[4].contains("unreachable")
                && lines[4].contains("never")
                && lines[4].contains("connection refused"),
            "{text}"
        );
        let json = cluster_json(&status);
        assert_eq!(json["leader_id"], 1);
        assert_eq!(json["members"][2]["reachable"], false);
        let mut with_learners = status.clone();
        with_learners.members.push(proto::MemberStatus {
            learner: true,
            promotion: "catching up: it holds 10 of 400 entries".into(),
            ..member(4, "learner", true, 50)
        });
        with_learners.members.push(proto::MemberStatus {
            learner: true,
            promotion: "waiting to reach it as a coordinator of this cluster".into(),
            ..member(5, "unreachable", false, -1)
        });
        let text = cluster_table(&with_learners, "c2:7443");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[5].contains("learner") && lines[5].contains("promotion: catching up"),
            "{text}"
        );
        assert!(
            lines[6].contains("learner (unreachable)")
                && lines[6].contains("connection refused; promotion: waiting to reach it"),
            "{text}"
        );
        let json = cluster_json(&with_learners);
        assert_eq!(json["members"][3]["learner"], true);
        assert_eq!(
            json["members"][3]["promotion"],
            "catching up: it holds 10 of 400 entries"
        );
        let leaderless = proto::ClusterStatusResponse {
            leader_id: 0,
            ..status
        };
        assert!(cluster_table(&leaderless, "c2:7443").contains("no leader is known"));
    }
}
