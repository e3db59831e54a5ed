//! `ferry artifacts pin|unpin|pins`: the tags under which garbage collection
//! keeps an artifact.

use ferry_common::digest::short;
use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Read, Rpc, full_digest};
use crate::render;

fn pin_json(p: &proto::PinView) -> serde_json::Value {
    json!({
        "tag": p.tag,
        "digest": p.digest,
        "size": p.size,
        "owner": p.owner,
        "created_ms": p.created_ms,
    })
}

/// `ferry artifacts pin DIGEST [--tag NAME]`.
pub(crate) async fn pin(
    client: &mut Client,
    digest: &str,
    tag: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::PinArtifactRequest {
        digest: full_digest(digest)?,
        tag: tag.unwrap_or_default().trim().to_string(),
    };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.pin_artifact(request).await
        })
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&pin_json(&view))?);
        return Ok(());
    }
    let tagged = if view.tag == view.digest {
        String::new()
    } else {
        format!(" as {:?}", view.tag)
    };
    println!(
        "pinned {} ({}){tagged}: garbage collection keeps it until 'ferry artifacts unpin {}'",
        short(&view.digest),
        render::bytes(view.size),
        if view.tag == view.digest {
            view.digest.clone()
        } else {
            view.tag.clone()
        }
    );
    Ok(())
}

/// `ferry artifacts unpin TAG`.
pub(crate) async fn unpin(client: &mut Client, tag: &str, output: Output) -> anyhow::Result<()> {
    let request = proto::UnpinArtifactRequest {
        tag: tag.trim().to_string(),
    };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.unpin_artifact(request).await
        })
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&pin_json(&view))?);
        return Ok(());
    }
    println!(
        "unpinned {:?} ({}): it can be collected once no kept run or other pin uses it",
        view.tag,
        short(&view.digest)
    );
    Ok(())
}

fn pins_table(pins: &[proto::PinView]) -> String {
    let rows: Vec<Vec<String>> = pins
        .iter()
        .map(|p| {
            vec![
                p.tag.clone(),
                short(&p.digest).to_string(),
                render::bytes(p.size),
                p.owner.clone(),
                render::utc_time(p.created_ms),
            ]
        })
        .collect();
    render::table(&["TAG", "DIGEST", "SIZE", "OWNER", "CREATED"], &rows)
}

/// `ferry artifacts pins`.
pub(crate) async fn list(client: &mut Client, read: Read, output: Output) -> anyhow::Result<()> {
    let request = proto::ListPinsRequest { stale: read.stale };
    let pins = client
        .rpc(request, |mut client, request| async move {
            client.list_pins(request).await
        })
        .await?
        .pins;
    if output == Output::Json {
        let list: Vec<_> = pins.iter().map(pin_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if pins.is_empty() {
        println!("no pins ('ferry artifacts pin DIGEST' keeps an artifact through 'ferry gc')");
    } else {
        println!("{}", pins_table(&pins));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_table_lists_tags() {
        let pin = proto::PinView {
            tag: "best-model".into(),
            digest: "c".repeat(64),
            size: 2048,
            owner: "alice".into(),
            created_ms: 1_795_600_800_000,
        };
        assert_eq!(
            pins_table(&[pin]),
            "TAG         DIGEST        SIZE     OWNER  CREATED\n\
             best-model  cccccccccccc  2.0 KiB  alice  2026-11-25 10:00:00Z"
        );
    }
}
