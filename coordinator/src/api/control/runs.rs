//! Runs as clients list, inspect and cancel them: `ferry runs` (with
//! `--where`), `ferry status` and `ferry cancel`.

use std::sync::Arc;

use ferry_common::pki::{Role, require_role};
use ferry_common::proto;
use tonic::{Request, Response, Status};

use super::ControlService;
use super::views::{
    StepPage, bounded_run_view, bounded_summary, newest_that_fit, run_metrics, run_summary,
    run_view, run_with_id,
};
use crate::api::propose_status;
use crate::node::{authorize, now_ms};
use crate::state::{Command, Run, RunId, STEP_STATES, StepState};

/// Run summaries one `ListRuns` answer holds at most (the newest first): well
/// under the 8 MiB message limit, whatever the cluster's history.
const LIST_RUNS_BYTES: usize = 6 * 1024 * 1024;
/// A listed summary larger than this has its long parameter values cut short.
const SUMMARY_TRIM_BYTES: usize = 256 * 1024;
/// Largest run view answered whole (`ferry status`; the client accepts 8 MiB):
/// a larger one is cut down (`bounded_run_view`) rather than refused.
const RUN_VIEW_BYTES: usize = 6 * 1024 * 1024;
/// A run with at most this many steps is shown whole when the request asks for
/// no page (`step_limit` 0): `ferry status` of a small run lists every step.
pub(super) const WHOLE_RUN_STEPS: usize = 1000;
/// The page a request that asks for none gets of a larger run.
pub(super) const DEFAULT_STEP_PAGE: usize = 100;
/// Most steps one view lists.
pub(super) const MAX_STEP_PAGE: usize = 5000;

/// The page of steps a `GetRun` request asks for; a state it names must be
/// one (`StepState::as_str`).
pub(super) fn step_page(
    request: &proto::GetRunRequest,
    steps_total: usize,
) -> Result<StepPage, Status> {
    let state = match request.step_state.trim() {
        "" => None,
        name => Some(StepState::parse(name).ok_or_else(|| {
            let known: Vec<&str> = STEP_STATES.iter().map(|s| s.as_str()).collect();
            Status::invalid_argument(format!(
                "{name:?} is not a step state; the states are {}",
                known.join(", ")
            ))
        })?),
    };
    let offset = request.step_offset as usize;
    let limit = match request.step_limit as usize {
        0 if state.is_none() && offset == 0 && steps_total <= WHOLE_RUN_STEPS => WHOLE_RUN_STEPS,
        0 => DEFAULT_STEP_PAGE,
        limit => limit.min(MAX_STEP_PAGE),
    };
    Ok(StepPage {
        state,
        offset,
        limit,
    })
}

impl ControlService {
    /// The view of run `id` with the steps of the page `request` asks for (every
    /// step of a small run when it asks for none).
    async fn run_view(
        &self,
        id: RunId,
        history: bool,
        request: &proto::GetRunRequest,
    ) -> Result<proto::RunView, Status> {
        let live = self.node.live_workers().await;
        let waiting = self.node.waiting_reasons(id);
        self.node
            .read(|state| {
                let run = state
                    .runs
                    .get(&id)
                    .ok_or_else(|| Status::not_found(format!("run {id} does not exist")))?;
                let page = step_page(request, run.steps.len())?;
                Ok(run_view(
                    state,
                    run,
                    &|name| live.get(name).is_some_and(|(connected, _)| *connected),
                    &waiting,
                    now_ms(),
                    history,
                    page,
                ))
            })
            .map(|view| {
                // The whole metric history is refused when too large (see `get_run`);
                // any other view is cut down to fit rather than refused.
                if history {
                    view
                } else {
                    bounded_run_view(view, RUN_VIEW_BYTES)
                }
            })
    }
}

pub(super) async fn list_runs(
    service: &ControlService,
    request: Request<proto::ListRunsRequest>,
) -> Result<Response<proto::ListRunsResponse>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    let conditions = match request.get_ref().r#where.trim() {
        "" => None,
        text => Some(crate::query::parse_where(text).map_err(Status::invalid_argument)?),
    };
    let limit = request.get_ref().limit as usize;
    // Under the state lock only a copy of the pointers to the runs, in id order
    // (as a snapshot takes it): the runs themselves are immutable once shared.
    // Each run's metrics (for `--where`) and the summaries are computed once the
    // lock is released, on a blocking thread since a long history makes that
    // long, so that applying commands never waits on a listing.
    // Only the runs the caller may read (the table's `ReadRun` row).
    let runs: Vec<Arc<Run>> = service.node.read(|state| {
        state
            .runs
            .values()
            .filter(|run| authorize::may_read_run(&caller, run, state, service.admins()).is_ok())
            .cloned()
            .collect()
    });
    let fitted = tokio::task::spawn_blocking(move || {
        let find_run = |id: RunId| run_with_id(&runs, id);
        let meeting = runs.iter().rev().map(|run| &**run).filter(|run| {
            conditions.as_ref().is_none_or(|conditions| {
                crate::query::matches(
                    conditions,
                    &run_metrics(run, &find_run),
                    &run.pipeline.params,
                )
            })
        });
        newest_that_fit(
            meeting,
            limit,
            LIST_RUNS_BYTES,
            |run| bounded_summary(run_summary(run, &find_run), SUMMARY_TRIM_BYTES),
            |summary| summary.run_id,
        )
    })
    .await
    .map_err(|e| Status::internal(format!("listing the runs failed: {e}")))?;
    if !fitted.omitted.is_empty() {
        tracing::debug!(omitted = ?fitted.omitted, "runs left out of a listing: their summaries do not fit");
    }
    Ok(Response::new(proto::ListRunsResponse {
        runs: fitted.kept,
        matched: fitted.count,
        omitted: fitted.omitted,
    }))
}

pub(super) async fn get_run(
    service: &ControlService,
    request: Request<proto::GetRunRequest>,
) -> Result<Response<proto::RunView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    service.consistent_read(request.get_ref().stale).await?;
    service.may_read_run(&caller, request.get_ref().run_id)?;
    let request = request.into_inner();
    let proto::GetRunRequest {
        run_id,
        metric_history,
        ..
    } = request;
    let view = service.run_view(run_id, metric_history, &request).await?;
    let size = prost::Message::encoded_len(&view);
    if metric_history && size > LIST_RUNS_BYTES {
        let values: usize = view
            .steps
            .iter()
            .flat_map(|s| &s.attempts)
            .map(|a| a.metrics.len())
            .sum();
        return Err(Status::resource_exhausted(format!(
            "run {run_id} holds {values} metric values ({:.1} MiB with the rest of \
             its view): too much for one answer; 'ferry metrics {run_id}' (a table) \
             shows the last value of each",
            size as f64 / (1024.0 * 1024.0)
        )));
    }
    Ok(Response::new(view))
}

pub(super) async fn cancel_run(
    service: &ControlService,
    request: Request<proto::CancelRunRequest>,
) -> Result<Response<proto::RunView>, Status> {
    let caller = require_role(&request, Role::Client)?;
    let run_id = request.get_ref().run_id;
    service
        .node
        .propose_as(
            &caller,
            Command::CancelRun {
                run: run_id,
                now_ms: now_ms(),
            },
        )
        .await
        .map_err(propose_status)?;
    tracing::info!(run = run_id, client = %caller.name, "run cancelled");
    let first_page = proto::GetRunRequest::default();
    Ok(Response::new(
        service.run_view(run_id, false, &first_page).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(offset: u32, limit: u32, state: &str) -> proto::GetRunRequest {
        proto::GetRunRequest {
            run_id: 1,
            step_offset: offset,
            step_limit: limit,
            step_state: state.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn a_small_run_is_shown_whole_and_a_big_one_a_page_at_a_time() {
        let whole = step_page(&request(0, 0, ""), 1000).unwrap();
        assert_eq!((whole.state, whole.offset, whole.limit), (None, 0, 1000));
        let big = step_page(&request(0, 0, ""), 1001).unwrap();
        assert_eq!(big.limit, DEFAULT_STEP_PAGE);
        let later = step_page(&request(200, 0, ""), 10).unwrap();
        assert_eq!((later.offset, later.limit), (200, DEFAULT_STEP_PAGE));
        let huge = step_page(&request(0, 1_000_000, "failed"), 10).unwrap();
        assert_eq!(
            (huge.state, huge.limit),
            (Some(StepState::Failed), MAX_STEP_PAGE)
        );
        let error = step_page(&request(0, 0, "sleeping"), 10).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("\"sleeping\" is not a step state")
                && error.message().contains("timed_out"),
            "{}",
            error.message()
        );
    }
}
