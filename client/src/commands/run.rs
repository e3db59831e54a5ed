//! `ferry run`: submits a run of a pipeline validated locally, after uploading
//! its code bundle (following it with `--watch` is `ferry watch`'s job).

use std::path::Path;

use ferry_common::proto;

use super::shared::{Client, LocalSpec, Rpc, prepare};

/// `ferry run`: uploads the pipeline's code bundle and submits a run of it;
/// says what was submitted and returns the run.
pub(crate) async fn submit(
    client: &mut Client,
    pipeline: &Path,
    local: LocalSpec,
    no_cache: bool,
) -> anyhow::Result<u64> {
    let (spec, bundle) = prepare(client, pipeline, &local).await?;
    // The same request id on every retry: a submission that was applied before the
    // answer got lost is answered with its run, never started twice.
    let request = proto::SubmitRunRequest {
        spec_yaml: local.yaml,
        spec_file: local.file_name,
        params: local.overrides.into_iter().collect(),
        bundle_digest: bundle.digest.clone(),
        request_id: ferry_client::new_request_id(),
        no_cache,
    };
    tracing::debug!(request_id = %request.request_id, "submitting");
    // A big submission takes each member a while to apply: waited for longer.
    let allowance = ferry_common::timing::Timings::default().submission_allowance(spec.steps.len());
    let run = client
        .rpc_allowing(request, allowance, |mut client, request| async move {
            client.submit_run(request).await
        })
        .await?
        .run_id;
    println!(
        "run {run} ({}) submitted; code bundle {}{}",
        spec.name,
        bundle.describe(),
        if no_cache { "; cache not used" } else { "" }
    );
    Ok(run)
}
