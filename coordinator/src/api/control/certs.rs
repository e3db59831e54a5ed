//! `ferry certs revoke` and `ferry certs revoked`: the replicated certificate
//! deny list as clients change and see it. Revoking is for administrators
//! (`node::authorize`, checked in `Node::propose_as` on this member and again on
//! the leader); the list itself is enforced on every request by `api::limits`.

use ferry_common::pki::{self, Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use crate::api::propose_status;
use crate::state::{Command, Outcome, RevocationTarget, Revoked};

pub(super) async fn revoke_certificate(
    service: &ControlService,
    request: Request<proto::RevokeCertificateRequest>,
) -> Result<Response<proto::RevokeCertificateResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let revoke = request.into_inner();
    let target = match (revoke.serial.is_empty(), revoke.name.is_empty()) {
        (false, true) => RevocationTarget::Serial(
            pki::parse_serial(&revoke.serial)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        ),
        (true, false) => {
            pki::validate_name(&revoke.name)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            RevocationTarget::Name(revoke.name)
        }
        _ => {
            return Err(Status::invalid_argument(
                "name exactly one of a certificate serial number or a holder name to revoke",
            ));
        }
    };
    let command = Command::RevokeCertificate {
        target: target.clone(),
        by: caller.name.clone(),
        now_ms: 0,
    };
    let outcome = service
        .node
        .propose_as(&caller, command)
        .await
        .map_err(propose_status)?;
    let Outcome::Revoked { already, .. } = outcome else {
        return Err(Status::internal("revoking answered something else"));
    };
    tracing::info!(%target, client = %caller.name, already, "certificate revoked");
    let revoked = service.node.read(|state| {
        let list = &state.revocations;
        match &target {
            RevocationTarget::Serial(serial) => list.serials.get(serial).map(|r| (serial, r)),
            RevocationTarget::Name(name) => list.names.get(name).map(|r| (name, r)),
        }
        .map(|(value, record)| view(&target, value, record))
    });
    Ok(Response::new(proto::RevokeCertificateResponse {
        revoked,
        already,
    }))
}

pub(super) async fn list_revocations(
    service: &ControlService,
    request: Request<proto::ListRevocationsRequest>,
) -> Result<Response<proto::ListRevocationsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.may(&caller, crate::access::Action::ListRevocations)?;
    service.consistent_read(request.get_ref().stale).await?;
    let revocations = service.node.read(|state| {
        let list = &state.revocations;
        let serials = list
            .serials
            .iter()
            .map(|(serial, record)| view(&RevocationTarget::Serial(String::new()), serial, record));
        let names = list
            .names
            .iter()
            .map(|(name, record)| view(&RevocationTarget::Name(String::new()), name, record));
        serials.chain(names).collect()
    });
    Ok(Response::new(proto::ListRevocationsResponse {
        revocations,
    }))
}

fn view(kind: &RevocationTarget, value: &str, record: &Revoked) -> proto::RevocationView {
    proto::RevocationView {
        kind: match kind {
            RevocationTarget::Serial(_) => "serial",
            RevocationTarget::Name(_) => "name",
        }
        .to_string(),
        value: value.to_string(),
        revoked_by: record.by.clone(),
        revoked_ms: record.at_ms,
    }
}
