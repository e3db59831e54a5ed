//! `ferry lineage`: where an artifact came from, as the coordinators record it,
//! drawn as a tree by [`crate::lineage`].

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Read, Rpc, full_digest};
use crate::lineage;

/// `ferry lineage DIGEST`.
pub(crate) async fn lineage(
    client: &mut Client,
    digest: &str,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::LineageRequest {
        digest: full_digest(digest)?,
        stale: read.stale,
    };
    let digest = request.digest.clone();
    let nodes = client
        .rpc(request, |mut client, request| async move {
            client.lineage(request).await
        })
        .await?
        .nodes;
    if output == Output::Json {
        let list: Vec<_> = nodes
            .iter()
            .map(|n| {
                json!({
                    "digest": n.digest,
                    "name": n.name,
                    "size": n.size,
                    "run": n.run_id,
                    "step": n.step,
                    "attempt": n.attempt,
                    "command": n.command,
                    "bundle": n.bundle_digest,
                    "code": n.code_digest,
                    "params": n.params,
                    "matrix": n.matrix,
                    "inputs": n.inputs.iter().map(|i| json!({
                        "name": i.name,
                        "digest": i.digest,
                        "size": i.size,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("{}", lineage::render_tree(&digest, &nodes));
    Ok(())
}
