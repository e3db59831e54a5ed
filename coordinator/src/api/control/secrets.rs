//! `ferry secrets`: set (sealed here, before the command is proposed, so the
//! Raft log only ever holds ciphertext), list and delete (never a value), and
//! rotate-key (every secret sealed again with this member's current key).

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use ferry_common::secrets::{Keyring, MAX_SECRET_BYTES};
use ferry_common::spec::{Pipeline, check_secret_name};
use tonic::{Request, Response, Status};

use super::ControlService;
use crate::api::propose_status;
use crate::node::now_ms;
use crate::node::secrets::{open, seal};
use crate::state::{Command, Outcome, Secret};

fn secret_view(secret: &Secret) -> proto::SecretView {
    proto::SecretView {
        project: secret.project.clone(),
        name: secret.name.clone(),
        version: secret.version,
        set_by: secret.set_by.clone(),
        set_ms: secret.set_ms,
        key_id: secret.sealed.key_id.clone(),
    }
}

fn keyring(service: &ControlService) -> Result<&Keyring, Status> {
    service.node.keyring.as_deref().ok_or_else(|| {
        Status::failed_precondition(
            "this coordinator has no secrets key: set `secrets_key` in coordinator.toml to a \
             key file (create one with `ferry certs secrets-key PATH`, the same file on every \
             member) and restart it",
        )
    })
}

fn check_names(project: &str, name: &str) -> Result<(), Status> {
    check_secret_name(name).map_err(Status::invalid_argument)?;
    if project.is_empty() {
        return Err(Status::invalid_argument(
            "a secret belongs to a project: name it with --project",
        ));
    }
    Ok(())
}

impl ControlService {
    fn secret_view(&self, project: &str, name: &str) -> Result<proto::SecretView, Status> {
        self.node
            .read(|state| state.secret(project, name).map(secret_view))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "project {project:?} has no secret named {name:?} (see `ferry secrets list`)"
                ))
            })
    }

    /// Refuses a pipeline whose steps ask for a secret its project does not have,
    /// or one `caller` may not use.
    pub(super) async fn require_secrets(
        &self,
        caller: &ferry_common::pki::Identity,
        pipeline: &Pipeline,
    ) -> Result<(), Status> {
        if pipeline.steps.iter().all(|s| s.secrets.is_empty()) {
            return Ok(());
        }
        self.consistent_read(false).await?;
        let project = &pipeline.project;
        let missing = self.node.read(|state| {
            pipeline
                .steps
                .iter()
                .flat_map(|step| step.secrets.iter().map(move |used| (step, used)))
                .find(|(_, used)| state.secret(project, &used.name).is_none())
                .map(|(step, used)| (step.name.clone(), used.name.clone()))
        });
        if missing.is_none() {
            let refused = self.node.read(|state| {
                pipeline
                    .steps
                    .iter()
                    .flat_map(|step| step.secrets.iter())
                    .find_map(|used| {
                        crate::node::authorize::may_use_secret(
                            caller,
                            project,
                            &used.name,
                            state,
                            self.admins(),
                        )
                        .err()
                    })
            });
            if let Some(refusal) = refused {
                let about = crate::state::Described {
                    action: crate::access::Action::SubmitRun,
                    project: Some(project.clone()),
                    summary: format!(
                        "submit pipeline \"{}\" ({} steps), which uses secrets",
                        pipeline.name,
                        pipeline.steps.len()
                    ),
                };
                let refusal = self.node.refused(caller, about, refusal).await;
                return Err(Status::permission_denied(refusal));
            }
        }
        match missing {
            None => Ok(()),
            Some((step, name)) => Err(Status::failed_precondition(format!(
                "step {step:?} asks for secret {name:?}, which project {project:?} does not have; \
                 set it first with `ferry secrets set {name} --project {project} --from-file FILE`"
            ))),
        }
    }
}

pub(super) async fn set_secret(
    service: &ControlService,
    request: Request<proto::SetSecretRequest>,
) -> Result<Response<proto::SecretView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let set = request.into_inner();
    check_names(&set.project, &set.name)?;
    if set.value.len() > MAX_SECRET_BYTES {
        return Err(Status::invalid_argument(format!(
            "the value of secret {:?} has {} bytes; at most {MAX_SECRET_BYTES}",
            set.name,
            set.value.len()
        )));
    }
    if set.value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "the value of secret {:?} is empty",
            set.name
        )));
    }
    let sealed = seal(keyring(service)?, &set.project, &set.name, &set.value)
        .map_err(|e| Status::internal(e.to_string()))?;
    drop(set.value);
    let outcome = service
        .node
        .propose_as(
            &caller,
            Command::SetSecret {
                project: set.project.clone(),
                name: set.name.clone(),
                sealed,
                set_by: caller.name.clone(),
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    let version = match outcome {
        Outcome::SecretSet { version } => version,
        _ => return Err(Status::internal("unexpected outcome of setting a secret")),
    };
    tracing::info!(project = %set.project, secret = %set.name, version, client = %caller.name, "secret set");
    service.consistent_read(false).await?;
    service
        .secret_view(&set.project, &set.name)
        .map(Response::new)
}

pub(super) async fn list_secrets(
    service: &ControlService,
    request: Request<proto::ListSecretsRequest>,
) -> Result<Response<proto::ListSecretsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let list = request.into_inner();
    service.consistent_read(list.stale).await?;
    let secrets = service.node.read(|state| {
        state
            .catalog
            .secrets
            .values()
            .filter(|s| list.project.is_empty() || s.project == list.project)
            .filter(|s| {
                crate::node::authorize::may_read_secret(&caller, s, state, service.admins())
            })
            .map(secret_view)
            .collect()
    });
    Ok(Response::new(proto::ListSecretsResponse { secrets }))
}

pub(super) async fn delete_secret(
    service: &ControlService,
    request: Request<proto::DeleteSecretRequest>,
) -> Result<Response<proto::SecretView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let delete = request.into_inner();
    check_names(&delete.project, &delete.name)?;
    service.consistent_read(false).await?;
    let view = service.secret_view(&delete.project, &delete.name)?;
    service
        .node
        .propose_as(
            &caller,
            Command::DeleteSecret {
                project: delete.project.clone(),
                name: delete.name.clone(),
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    tracing::info!(project = %delete.project, secret = %delete.name, client = %caller.name, "secret deleted");
    Ok(Response::new(view))
}

pub(super) async fn rotate_secrets_key(
    service: &ControlService,
    request: Request<proto::RotateSecretsKeyRequest>,
) -> Result<Response<proto::RotateSecretsKeyResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    // Authorized first, also when no secret needs sealing again (then no
    // command is proposed that would be refused).
    let summary = "seal every secret again with the current key".to_string();
    service
        .may_change(&caller, crate::access::Action::ResealSecret, summary)
        .await?;
    let keyring = keyring(service)?;
    service.consistent_read(false).await?;
    let current = keyring.current_id().to_string();
    let stale: Vec<Secret> = service.node.read(|state| {
        state
            .catalog
            .secrets
            .values()
            .filter(|s| s.sealed.key_id != current)
            .cloned()
            .collect()
    });
    let mut resealed = 0u32;
    for secret in stale {
        let value = open(keyring, &secret.project, &secret.name, &secret.sealed).map_err(|e| {
            Status::failed_precondition(format!(
                "secret {:?} of project {:?}: {e}",
                secret.name, secret.project
            ))
        })?;
        let sealed = seal(keyring, &secret.project, &secret.name, &value)
            .map_err(|e| Status::internal(e.to_string()))?;
        let outcome = service
            .node
            .propose_as(
                &caller,
                Command::ResealSecret {
                    project: secret.project.clone(),
                    name: secret.name.clone(),
                    version: secret.version,
                    sealed,
                    now_ms: now_ms(),
                },
            )
            .await
            .map_err(propose_status)?;
        if outcome == Outcome::Done {
            resealed += 1;
        }
    }
    tracing::info!(key_id = %current, resealed, client = %caller.name, "secrets sealed again");
    Ok(Response::new(proto::RotateSecretsKeyResponse {
        key_id: current,
        resealed,
    }))
}
