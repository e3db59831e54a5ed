//! `ferry artifacts RUN` and `ferry artifacts get`: a run's artifacts, and one
//! downloaded and verified (pins have their own module).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, OrStatus, Output, Read, Rpc};
use crate::render;

/// `ferry artifacts RUN`.
pub(crate) async fn list(
    client: &mut Client,
    run: u64,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListArtifactsRequest {
        run_id: run,
        stale: read.stale,
    };
    let artifacts = client
        .rpc(request, |mut client, request| async move {
            client.list_artifacts(request).await
        })
        .await?
        .artifacts;
    if output == Output::Json {
        let list: Vec<_> = artifacts
            .iter()
            .map(|a| json!({"step": a.step, "name": a.name, "size": a.size, "digest": a.digest, "attempt": a.attempt}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            vec![
                a.step.clone(),
                a.name.clone(),
                render::bytes(a.size),
                a.digest.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(&["STEP", "NAME", "SIZE", "BLAKE3"], &rows)
    );
    Ok(())
}

/// `ferry artifacts get RUN STEP NAME [-o PATH]`: the artifact written to `path`
/// (or its file name) only once its digest is verified.
pub(crate) async fn download(
    client: &mut Client,
    run: u64,
    step: &str,
    name: &str,
    path: Option<&Path>,
) -> anyhow::Result<()> {
    let target = match path {
        Some(path) => path.to_path_buf(),
        None => Path::new(name.rsplit('/').next().unwrap_or(name)).to_path_buf(),
    };
    let request = proto::DownloadArtifactRequest {
        run_id: run,
        step: step.to_string(),
        name: name.to_string(),
    };
    let mut stream = client
        .rpc(request, |mut client, request| async move {
            client.download_artifact(request).await
        })
        .await?;
    let partial = target.with_extension("ferry-partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut expected = String::new();
    let mut size = 0u64;
    loop {
        match stream.message().await.or_status() {
            Ok(Some(chunk)) => {
                if expected.is_empty() {
                    expected = chunk.digest.clone();
                }
                hasher.update(&chunk.data);
                size += chunk.data.len() as u64;
                file.write_all(&chunk.data)?;
            }
            Ok(None) => break,
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                return Err(error);
            }
        }
    }
    file.sync_all()?;
    drop(file);
    let actual = hasher.finalize().to_hex().to_string();
    if actual != expected {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{name}: downloaded content hashes to {actual}, expected {expected}; nothing written"
        );
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    println!(
        "{}: {}, blake3 {}…{} verified",
        target.display(),
        render::bytes(size),
        &actual[..4],
        &actual[actual.len() - 2..]
    );
    Ok(())
}
