//! `ferry bundle`: a folder packed as `ferry run` packs it, shown and not
//! uploaded — what a run of a pipeline in that folder would carry, and the
//! digest the Python SDK's packing must equal.

use std::path::Path;

use anyhow::Context;
use serde_json::json;

use super::shared::Output;
use crate::render;

/// Packs `folder` (honouring its `.ferryignore` files) and prints the
/// bundle's digest, compressed size and file count, or with `list` also each
/// entry. Nothing is written or sent.
pub(crate) fn show(folder: &Path, list: bool, output: Output) -> anyhow::Result<()> {
    let bundle = ferry_common::bundle::pack_dir(folder)?;
    let entries = if list {
        ferry_common::bundle::entry_names(bundle.bytes.as_slice())
            .with_context(|| format!("reading back the bundle of {}", folder.display()))?
    } else {
        Vec::new()
    };
    match output {
        Output::Json => {
            let mut value = json!({
                "folder": folder.display().to_string(),
                "digest": bundle.digest,
                "bytes": bundle.bytes.len(),
                "files": bundle.files,
            });
            if list {
                value["entries"] = json!(entries);
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Table => {
            println!(
                "{}: bundle {} ({} files, {})",
                folder.display(),
                bundle.digest,
                bundle.files,
                render::bytes(bundle.bytes.len() as u64)
            );
            for entry in entries {
                println!("  {entry}");
            }
        }
    }
    Ok(())
}
