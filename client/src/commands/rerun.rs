//! `ferry rerun`: a new run of an earlier run's pipeline and code that reuses
//! the outputs of its steps that succeeded.

use ferry_common::proto;

use super::shared::{Client, Read, Rpc, get_run};
use crate::render;

/// `ferry rerun`: a new run of `source` that reuses its successful steps; says
/// how many steps it took over and returns the new run.
pub(crate) async fn rerun(
    client: &mut Client,
    source: u64,
    from: Option<String>,
) -> anyhow::Result<u64> {
    // One id for every retry, so that a re-run whose answer got lost is not
    // started twice.
    let request = proto::RerunRunRequest {
        run_id: source,
        from: from.clone().unwrap_or_default(),
        request_id: ferry_client::new_request_id(),
    };
    let run = client
        .rpc(request, |mut client, request| async move {
            client.rerun_run(request).await
        })
        .await?
        .run_id;
    let view = get_run(client, run, Read::default()).await?;
    let reused = view.steps.iter().filter(|s| !s.reused.is_empty()).count() as u64;
    let summary = view.summary.unwrap_or_default();
    let from = match from {
        Some(step) => step,
        None => "the steps that did not succeed".to_string(),
    };
    println!(
        "run {run} ({}) re-runs run {source} from {from}: {} reused",
        summary.pipeline,
        render::count(reused, "step")
    );
    Ok(run)
}
