//! `ferry secrets set|list|delete|rotate-key`: cluster secrets of a project.
//! A value goes to the coordinator once, over mutual TLS, and is never printed
//! or answered back; `ferry certs secrets-key` makes a key file (locally).

use std::path::Path;

use anyhow::{Context, bail};
use ferry_common::proto;
use ferry_common::secrets::MAX_SECRET_BYTES;
use ferry_common::spec::check_secret_name;
use serde_json::json;

use super::shared::{Client, Output, Read, Rpc};
use crate::render;

fn secret_json(s: &proto::SecretView) -> serde_json::Value {
    json!({
        "project": s.project,
        "name": s.name,
        "version": s.version,
        "set_by": s.set_by,
        "set_ms": s.set_ms,
        "key_id": s.key_id,
    })
}

/// Where `ferry secrets set` reads the value from.
pub(crate) enum Source<'a> {
    File(&'a Path),
    Env(&'a str),
}

fn read_value(source: Source<'_>) -> anyhow::Result<Vec<u8>> {
    let value = match source {
        Source::File(path) => {
            let size = std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            if size > MAX_SECRET_BYTES as u64 {
                bail!(
                    "{} has {size} bytes; a secret holds at most {MAX_SECRET_BYTES}",
                    path.display()
                );
            }
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        Source::Env(var) => std::env::var_os(var)
            .with_context(|| format!("the environment variable {var} is not set"))?
            .into_encoded_bytes(),
    };
    if value.is_empty() {
        bail!("the value is empty; a secret needs a value");
    }
    if value.len() > MAX_SECRET_BYTES {
        bail!(
            "the value has {} bytes; a secret holds at most {MAX_SECRET_BYTES}",
            value.len()
        );
    }
    Ok(value)
}

/// `ferry secrets set NAME --project P (--from-file F | --from-env VAR)`.
pub(crate) async fn set(
    client: &mut Client,
    name: &str,
    project: &str,
    source: Source<'_>,
    output: Output,
) -> anyhow::Result<()> {
    check_secret_name(name).map_err(anyhow::Error::msg)?;
    let request = proto::SetSecretRequest {
        project: project.to_string(),
        name: name.to_string(),
        value: read_value(source)?,
    };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.set_secret(request).await
        })
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&secret_json(&view))?);
        return Ok(());
    }
    println!(
        "secret {:?} of project {:?} set (version {}); steps receive it with \
         `secrets: [{{name: {}, env: VAR}}]`",
        view.name, view.project, view.version, view.name
    );
    Ok(())
}

/// `ferry secrets list [--project P]`: names and versions, never values.
pub(crate) async fn list(
    client: &mut Client,
    project: Option<&str>,
    read: Read,
    output: Output,
) -> anyhow::Result<()> {
    let request = proto::ListSecretsRequest {
        project: project.unwrap_or_default().to_string(),
        stale: read.stale,
    };
    let secrets = client
        .rpc(request, |mut client, request| async move {
            client.list_secrets(request).await
        })
        .await?
        .secrets;
    if output == Output::Json {
        let list: Vec<_> = secrets.iter().map(secret_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if secrets.is_empty() {
        println!("no secrets ('ferry secrets set NAME --project P --from-file F' sets one)");
    } else {
        let rows: Vec<Vec<String>> = secrets
            .iter()
            .map(|s| {
                vec![
                    s.project.clone(),
                    s.name.clone(),
                    s.version.to_string(),
                    s.set_by.clone(),
                    render::utc_time(s.set_ms),
                    s.key_id.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            render::table(
                &["PROJECT", "NAME", "VERSION", "SET BY", "SET", "KEY"],
                &rows
            )
        );
    }
    Ok(())
}

/// `ferry secrets delete NAME --project P`.
pub(crate) async fn delete(
    client: &mut Client,
    name: &str,
    project: &str,
    output: Output,
) -> anyhow::Result<()> {
    check_secret_name(name).map_err(anyhow::Error::msg)?;
    let request = proto::DeleteSecretRequest {
        project: project.to_string(),
        name: name.to_string(),
    };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.delete_secret(request).await
        })
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&secret_json(&view))?);
        return Ok(());
    }
    println!(
        "secret {:?} of project {:?} deleted",
        view.name, view.project
    );
    Ok(())
}

/// `ferry secrets rotate-key`: every secret sealed again with the current key.
pub(crate) async fn rotate_key(client: &mut Client, output: Output) -> anyhow::Result<()> {
    let answer = client
        .rpc(
            proto::RotateSecretsKeyRequest {},
            |mut client, request| async move { client.rotate_secrets_key(request).await },
        )
        .await?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"key_id": answer.key_id, "resealed": answer.resealed})
            )?
        );
        return Ok(());
    }
    println!(
        "{} sealed again with key {}; older keys can leave `secrets_keys` once every member \
         runs with this one",
        render::count(u64::from(answer.resealed), "secret"),
        answer.key_id
    );
    Ok(())
}

/// `ferry certs secrets-key PATH`: a new cluster secrets key file.
pub(crate) fn create_key(path: &Path) -> anyhow::Result<()> {
    let id = ferry_common::secrets::create_key_file(path)?;
    println!(
        "secrets key {id} written to {} (mode 0600): copy it to every coordinator and set \
         `secrets_key = \"{}\"` in coordinator.toml",
        path.display(),
        path.display()
    );
    Ok(())
}
