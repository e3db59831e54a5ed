//! The pages and actions: thin handlers that call the cluster through the
//! gateway, shape its answers with pure functions, and render a template.

pub(crate) mod actions;
pub(crate) mod cluster;
pub(crate) mod lineage;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod step;

use ferry_common::proto;

use super::Ui;
use super::error::UiError;

/// A run's whole view: every step (the coordinator lists at most 5,000 at a
/// time), with every metric value when `history`.
pub(crate) async fn whole_run(ui: &Ui, run: u64, history: bool) -> Result<proto::RunView, UiError> {
    const PAGE: u32 = 5_000;
    let mut view: Option<proto::RunView> = None;
    let mut offset = 0u32;
    loop {
        let request = proto::GetRunRequest {
            run_id: run,
            stale: false,
            metric_history: history,
            step_offset: offset,
            step_limit: PAGE,
            step_state: String::new(),
        };
        let page = ui
            .gateway
            .call(|mut client| {
                let request = request.clone();
                async move { client.get_run(request).await }
            })
            .await?;
        let listed = page.steps.len() as u32;
        let matched = page.steps_matched;
        match view.as_mut() {
            None => view = Some(page),
            Some(view) => view.steps.extend(page.steps),
        }
        offset += listed;
        if listed == 0 || u64::from(offset) >= matched {
            break;
        }
    }
    view.ok_or_else(|| UiError::NotFound(format!("run {run} not found")))
}

/// The lineage of the artifact `digest` (checked to be a digest first).
pub(crate) async fn lineage_of(ui: &Ui, digest: &str) -> Result<proto::LineageResponse, UiError> {
    if !ferry_common::digest::is_valid_digest(digest) {
        return Err(UiError::BadRequest(format!(
            "{digest:?} is not an artifact digest (64 lowercase hexadecimal characters)"
        )));
    }
    let request = proto::LineageRequest {
        digest: digest.to_string(),
        stale: false,
    };
    Ok(ui
        .gateway
        .call(|mut client| {
            let request = request.clone();
            async move { client.lineage(request).await }
        })
        .await?)
}

/// Every artifact of `run`.
pub(crate) async fn artifacts_of(ui: &Ui, run: u64) -> Result<Vec<proto::ArtifactView>, UiError> {
    let request = proto::ListArtifactsRequest {
        run_id: run,
        stale: false,
    };
    Ok(ui
        .gateway
        .call(|mut client| async move { client.list_artifacts(request).await })
        .await?
        .artifacts)
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    ferry_common::time::now_ms()
}
