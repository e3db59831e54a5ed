//! `ferry audit`: the replicated audit log as clients read it. An
//! administrator sees every record; a project's owner the records of the
//! projects it owns (`node::authorize::may_read_audit`, the table's
//! `ReadAudit` row). Anyone else is refused, naming the role needed.

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use crate::node::authorize;
use crate::state::{AuditOutcome, AuditRecord};

/// Records answered when the request names no limit.
const DEFAULT_LIMIT: usize = 1000;
/// The most records one answer holds.
const MAX_LIMIT: usize = 10_000;

pub(super) async fn list_audit(
    service: &ControlService,
    request: Request<proto::ListAuditRequest>,
) -> Result<Response<proto::ListAuditResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let query = request.into_inner();
    let limit = match query.limit as usize {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(Status::invalid_argument(format!(
                "--limit {n} is more than {MAX_LIMIT} records; narrow the query with --since, \
                 --user or --project"
            )));
        }
        n => n,
    };
    service.consistent_read(query.stale).await?;
    let project = (!query.project.is_empty()).then_some(query.project.as_str());
    let user = (!query.user.is_empty()).then_some(query.user.as_str());
    let admins = service.admins();
    let (records, matched, dropped) = service
        .node
        .read(|state| {
            // Refused outright when the caller may see nothing the query asks
            // for: an explicit project it does not own, or no project at all.
            let asked = match project {
                Some(project) => authorize::may_read_audit(&caller, Some(project), state, admins),
                None => {
                    authorize::may_read_audit(&caller, None, state, admins).or_else(|refusal| {
                        let owns_one = state.policy.projects.keys().any(|p| {
                            authorize::may_read_audit(&caller, Some(p), state, admins).is_ok()
                        });
                        if owns_one { Ok(()) } else { Err(refusal) }
                    })
                }
            };
            asked?;
            // Decided once per project, borrowing the records' names.
            let mut visible: std::collections::HashMap<Option<&str>, bool> = Default::default();

            let mut matched = 0u64;
            let mut newest = Vec::new();
            for record in state.audit.iter().rev() {
                if record.time_ms < query.since_ms {
                    break;
                }
                let wanted = user.is_none_or(|u| record.caller == u)
                    && project.is_none_or(|p| record.project.as_deref() == Some(p));
                let project = record.project.as_deref();
                let may_see = *visible.entry(project).or_insert_with(|| {
                    authorize::may_read_audit(&caller, project, state, admins).is_ok()
                });
                if !wanted || !may_see {
                    continue;
                }
                matched += 1;
                if newest.len() < limit {
                    newest.push(view(record));
                }
            }
            newest.reverse();
            Ok::<_, String>((newest, matched, state.audit.dropped()))
        })
        .map_err(Status::permission_denied)?;
    Ok(Response::new(proto::ListAuditResponse {
        records,
        matched,
        dropped,
    }))
}

fn view(record: &AuditRecord) -> proto::AuditRecordView {
    let (outcome, detail) = match &record.outcome {
        AuditOutcome::Accepted { detail } => ("accepted", detail),
        AuditOutcome::Refused { reason } => ("refused", reason),
        AuditOutcome::Repeated { detail } => ("repeated", detail),
    };
    proto::AuditRecordView {
        seq: record.seq,
        time_ms: record.time_ms,
        caller: record.caller.clone(),
        role: record.role.as_str().to_string(),
        project: record.project.clone().unwrap_or_default(),
        action: action_name(record),
        summary: record.summary.clone(),
        outcome: outcome.to_string(),
        detail: detail.clone(),
    }
}

/// The action's name as the table's serialization spells it (`cancel-run`).
fn action_name(record: &AuditRecord) -> String {
    serde_json::to_value(record.action)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", record.action))
}
