//! Artifacts and what keeps them: `ferry artifacts` (list, download, pin,
//! unpin, pins), `ferry lineage` and `ferry gc`.

use std::collections::HashMap;

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::views::{input_views, pin_view};
use super::{ControlService, refuse_collected};
use crate::api::{ResponseStream, propose_status, send_blob_from};
use crate::node::{authorize, now_ms};
use crate::state::{Command, Outcome};

impl ControlService {
    fn pin_view(&self, tag: &str) -> Result<Response<proto::PinView>, Status> {
        self.node
            .read(|state| state.catalog.pins.get(tag).map(|p| pin_view(tag, p)))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("there is no pin named {tag:?}")))
    }
}

pub(super) async fn list_artifacts(
    service: &ControlService,
    request: Request<proto::ListArtifactsRequest>,
) -> Result<Response<proto::ListArtifactsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    let run_id = request.get_ref().run_id;
    service.may_read_run(&caller, run_id)?;
    let artifacts = service.node.read(|state| {
        let run = state
            .runs
            .get(&run_id)
            .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))?;
        Ok::<_, Status>(
            run.steps
                .iter()
                .flat_map(|step| {
                    step.outputs.iter().map(|artifact| proto::ArtifactView {
                        step: step.name.clone(),
                        name: artifact.name.clone(),
                        digest: artifact.digest.clone(),
                        size: artifact.size,
                        attempt: artifact.attempt,
                    })
                })
                .collect(),
        )
    })?;
    Ok(Response::new(proto::ListArtifactsResponse { artifacts }))
}

pub(super) async fn download_artifact(
    service: &ControlService,
    request: Request<proto::DownloadArtifactRequest>,
) -> Result<Response<ResponseStream<proto::Chunk>>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.may_read_run(&caller, request.get_ref().run_id)?;
    let slot = service.streams.take(&caller.name)?;
    let query = request.into_inner();
    let digest = service.node.read(|state| {
        let run = state
            .runs
            .get(&query.run_id)
            .ok_or_else(|| Status::not_found(format!("run {} does not exist", query.run_id)))?;
        let step = run.step(&query.step).ok_or_else(|| {
            Status::not_found(format!(
                "run {} has no step \"{}\"",
                query.run_id, query.step
            ))
        })?;
        step.outputs
            .iter()
            .find(|a| a.name == query.name)
            .map(|a| a.digest.clone())
            .ok_or_else(|| {
                let have: Vec<&str> = step.outputs.iter().map(|a| a.name.as_str()).collect();
                Status::not_found(format!(
                    "step \"{}\" of run {} has no artifact \"{}\" (it has: {})",
                    query.step,
                    query.run_id,
                    query.name,
                    if have.is_empty() {
                        "none yet".to_string()
                    } else {
                        have.join(", ")
                    }
                ))
            })
            .and_then(|digest| {
                // A collected run's artifact survives if something live keeps it.
                let kept = state.catalog.pins.values().any(|p| p.digest == digest)
                    || state.artifact_size(&digest).is_some();
                if kept {
                    Ok(digest)
                } else {
                    refuse_collected(run).map(|()| digest)
                }
            })
    })?;
    service.node.ensure_blob(&digest).await?;
    Ok(Response::new(crate::api::limits::holding(
        send_blob_from(&service.node.blobs, &digest, query.offset).await?,
        slot,
    )))
}

pub(super) async fn lineage(
    service: &ControlService,
    request: Request<proto::LineageRequest>,
) -> Result<Response<proto::LineageResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    let digest = request.get_ref().digest.trim().to_string();
    // The artifact asked about must be readable; its ancestors in runs the
    // caller may not read are left out.
    let nodes = service
        .node
        .read(|state| {
            let nodes = state.lineage(&digest)?;
            let may_read = |run| match state.runs.get(&run) {
                Some(run) => authorize::may_read_run(&caller, run, state, service.admins()),
                None => Ok(()),
            };
            let first = nodes.first().map_or(Ok(()), |node| may_read(node.run));
            Some(first.map(|()| {
                nodes
                    .into_iter()
                    .filter(|node| may_read(node.run).is_ok())
                    .collect::<Vec<_>>()
            }))
        })
        .ok_or_else(|| {
            Status::not_found(format!(
                "no step produced an artifact with digest {digest:?} \
                 (see `ferry artifacts RUN` for digests)"
            ))
        })?
        .map_err(Status::permission_denied)?;
    let nodes = nodes
        .into_iter()
        .map(|n| proto::LineageNode {
            digest: n.digest,
            name: n.name,
            size: n.size,
            run_id: n.run,
            step: n.step,
            attempt: n.attempt,
            command: n.command,
            bundle_digest: n.bundle_digest,
            code_digest: n.code_digest,
            params: n.params.into_iter().collect(),
            matrix: n.matrix.into_iter().collect(),
            inputs: input_views(&n.inputs),
        })
        .collect();
    Ok(Response::new(proto::LineageResponse { nodes }))
}

pub(super) async fn pin_artifact(
    service: &ControlService,
    request: Request<proto::PinArtifactRequest>,
) -> Result<Response<proto::PinView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let pin = request.into_inner();
    let digest = pin.digest.trim().to_string();
    let tag = if pin.tag.trim().is_empty() {
        digest.clone()
    } else {
        pin.tag.trim().to_string()
    };
    if tag.len() > 128 || tag.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Status::invalid_argument(format!(
            "pin tag {tag:?} is invalid: at most 128 printable characters, no spaces"
        )));
    }
    service
        .node
        .propose_as(
            &caller,
            Command::PinArtifact {
                tag: tag.clone(),
                digest,
                owner: caller.name.clone(),
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    service.consistent_read(false).await?;
    service.pin_view(&tag)
}

pub(super) async fn unpin_artifact(
    service: &ControlService,
    request: Request<proto::UnpinArtifactRequest>,
) -> Result<Response<proto::PinView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let tag = request.into_inner().tag;
    service.consistent_read(false).await?;
    let view = service.pin_view(&tag)?;
    service
        .node
        .propose_as(
            &caller,
            Command::UnpinArtifact {
                tag,
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    Ok(view)
}

pub(super) async fn list_pins(
    service: &ControlService,
    request: Request<proto::ListPinsRequest>,
) -> Result<Response<proto::ListPinsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    let pins = service.node.read(|state| {
        state
            .catalog
            .pins
            .iter()
            .filter(|(_, pin)| authorize::may_read_pin(&caller, pin, state, service.admins()))
            .map(|(tag, pin)| pin_view(tag, pin))
            .collect()
    });
    Ok(Response::new(proto::ListPinsResponse { pins }))
}

pub(super) async fn collect_garbage(
    service: &ControlService,
    request: Request<proto::CollectGarbageRequest>,
) -> Result<Response<proto::CollectGarbageResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let gc = request.into_inner();
    // A dry run too: what it would delete is the cluster's whole history.
    let summary = format!(
        "collect garbage, keeping the last {} runs of each pipeline{}",
        gc.keep_last,
        if gc.dry_run { " (dry run)" } else { "" }
    );
    service
        .may_change(&caller, crate::access::Action::Collect, summary)
        .await?;
    service.consistent_read(false).await?;
    let grace_ms = service.node.retention.grace_ms;
    let started_ms = now_ms();
    let plan = service
        .node
        .read(|state| crate::state::gc_plan(state, gc.keep_last, started_ms, grace_ms));
    // What is reclaimed: the planned blobs this member still stores that are
    // old enough to go (measured before the deletion starts; others were
    // deleted before). Those written within the grace period are kept for a
    // later collection, and reported as such.
    let before_ms = started_ms.saturating_sub(grace_ms as i64);
    let mut sizes = HashMap::new();
    let mut recent = HashMap::new();
    for digest in plan.blobs.keys() {
        if let Ok(Some(size)) = service.node.blobs.size_of(digest).await {
            if service.node.blobs.written_before(digest, before_ms).await {
                sizes.insert(digest.clone(), size);
            } else {
                recent.insert(digest.clone(), size);
            }
        }
    }
    // And the blobs nothing refers to (a bundle whose submission was refused
    // or never made), old enough to go: each member deletes its own.
    let live = service.node.read(crate::state::live_blobs);
    let unreferenced: Vec<(String, u64)> = service
        .node
        .blobs
        .unreferenced(&live, before_ms)
        .await
        .into_iter()
        .filter(|(digest, _)| !plan.blobs.contains_key(digest))
        .collect();
    let (runs, blobs) = if gc.dry_run {
        (plan.runs, plan.blobs.into_iter().collect::<Vec<_>>())
    } else {
        let outcome = service
            .node
            .propose_as(
                &caller,
                Command::Collect {
                    keep_last: gc.keep_last,
                    now_ms: now_ms(),
                    grace_ms,
                },
            )
            .await
            .map_err(propose_status)?;
        let Outcome::Collected { runs, blobs, .. } = outcome else {
            return Err(Status::internal("unexpected outcome of a collection"));
        };
        (runs, blobs)
    };
    let freed: Vec<u64> = blobs
        .iter()
        .filter_map(|(digest, _)| sizes.get(digest).copied())
        .collect();
    let (deleted, bytes) = (
        (freed.len() + unreferenced.len()) as u64,
        freed
            .iter()
            .chain(unreferenced.iter().map(|(_, size)| size))
            .sum::<u64>(),
    );
    let held: Vec<u64> = blobs
        .iter()
        .filter_map(|(digest, _)| recent.get(digest).copied())
        .collect();
    service.consistent_read(false).await?;
    let runs_kept = service.node.read(|state| {
        state
            .runs
            .values()
            .filter(|r| r.state.is_terminal() && r.collected_ms.is_none())
            .count() as u64
    });
    tracing::info!(runs = runs.len(), blobs = deleted, bytes, recent = held.len(), dry_run = gc.dry_run, client = %caller.name, "garbage collection");
    Ok(Response::new(proto::CollectGarbageResponse {
        runs,
        blobs: deleted,
        bytes,
        runs_kept,
        recent_blobs: held.len() as u64,
        recent_bytes: held.iter().sum(),
        grace_ms,
    }))
}
