//! The UI's only two writes: cancel a run, and re-run it (from a step or a
//! sweep, or from the steps that did not succeed). Both are POSTs checked by
//! [`crate::ui::guard`] before anything reaches the cluster; the cluster then
//! applies its own authorization to the user's identity, as for the CLI.

use std::collections::HashMap;

use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use ferry_common::proto;

use crate::ui::Shared;
use crate::ui::error::PageResult;
use crate::ui::guard::TOKEN_FIELD;

/// `POST /runs/{run}/cancel` (form: `csrf`).
pub(crate) async fn cancel(
    State(ui): State<Shared>,
    Path(run): Path<u64>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    ui.guard
        .check_post(&headers, form.get(TOKEN_FIELD).map(String::as_str))?;
    ui.gateway
        .call(|mut client| async move {
            client
                .cancel_run(proto::CancelRunRequest { run_id: run })
                .await
        })
        .await?;
    tracing::info!(run, "cancelled from the UI");
    Ok(Redirect::to(&format!("/runs/{run}")).into_response())
}

/// `POST /runs/{run}/rerun` (form: `csrf`, `from`, `request_id`): starts the
/// new run and shows it. The request id comes with the page, so a form sent
/// twice starts one run.
pub(crate) async fn rerun(
    State(ui): State<Shared>,
    Path(run): Path<u64>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    ui.guard
        .check_post(&headers, form.get(TOKEN_FIELD).map(String::as_str))?;
    let request = proto::RerunRunRequest {
        run_id: run,
        from: form.get("from").cloned().unwrap_or_default(),
        request_id: form
            .get("request_id")
            .filter(|id| !id.is_empty())
            .cloned()
            .unwrap_or_else(ferry_client::new_request_id),
    };
    let answer = ui
        .gateway
        .call(|mut client| {
            let request = request.clone();
            async move { client.rerun_run(request).await }
        })
        .await?;
    tracing::info!(run, new_run = answer.run_id, from = %request.from, "re-run from the UI");
    Ok(Redirect::to(&format!("/runs/{}", answer.run_id)).into_response())
}
