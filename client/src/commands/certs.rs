//! `ferry certs`: the cluster CA and the certificates it issues, made locally
//! (no coordinator is called), and the replicated deny list (`revoke`,
//! `revoked`), which is the coordinators'.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ferry_common::pki::{self, Role};
use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Rpc};
use crate::render;

/// A client's own certificate that expires within this long gets a warning.
pub(crate) const EXPIRY_WARNING_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// `ferry certs init`: the cluster CA in `dir`.
pub(crate) fn init(dir: &Path) -> anyhow::Result<()> {
    let paths = pki::init_ca(dir)?;
    println!(
        "cluster CA created: {} (keep {} secret)",
        paths.cert.display(),
        paths.key.display()
    );
    Ok(())
}

/// What `ferry certs issue` was asked for.
pub(crate) struct IssueRequest<'a> {
    pub dir: &'a Path,
    pub out: Option<PathBuf>,
    pub role: &'a str,
    pub holder: Holder,
    pub dns: &'a [String],
    pub ip: &'a [IpAddr],
    /// `--valid-for`; the role's default when absent.
    pub valid_for: Option<&'a str>,
}

/// Whom `ferry certs issue` names: `--name` or a coordinator's `--member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    Name(String),
    Member(u64),
}

impl Holder {
    /// From the two exclusive options (clap requires one of them).
    pub(crate) fn from_arguments(name: Option<String>, member: Option<u64>) -> Holder {
        match (name, member) {
            (_, Some(id)) => Holder::Member(id),
            (Some(name), None) => Holder::Name(name),
            (None, None) => Holder::Name(String::new()),
        }
    }

    /// The certificate name for `role`; `--member` is for coordinators only, and
    /// member 0 does not exist.
    fn name_for(&self, role: Role) -> anyhow::Result<String> {
        match self {
            Holder::Name(name) => Ok(name.clone()),
            Holder::Member(_) if role != Role::Coordinator => anyhow::bail!(
                "--member is for coordinator certificates; give a {role} certificate a --name"
            ),
            Holder::Member(0) => {
                anyhow::bail!("--member 0: member ids start at 1 (0 is not a Raft id)")
            }
            Holder::Member(id) => Ok(pki::member_name(*id)),
        }
    }
}

/// `ferry certs issue`: a key and certificate for `role`, signed by the CA in
/// `dir`, written to `out` (or `dir`), valid for `valid_for` or the role's
/// default; prints its serial number (what `ferry certs revoke` takes).
pub(crate) fn issue(request: IssueRequest<'_>) -> anyhow::Result<()> {
    let role: Role = request.role.parse()?;
    let name = request.holder.name_for(role)?;
    let valid_for = match request.valid_for {
        Some(text) => pki::parse_validity(text)?,
        None => pki::default_validity(role),
    };
    let out = request.out.unwrap_or_else(|| request.dir.to_path_buf());
    let paths = pki::issue_valid_for(
        request.dir,
        &out,
        role,
        &name,
        request.dns,
        request.ip,
        valid_for,
    )?;
    println!(
        "{role} certificate for \"{name}\": {} (key {})\nserial {}, valid until {} ({})",
        paths.cert.display(),
        paths.key.display(),
        paths.serial,
        render::utc_time(paths.not_after_secs.saturating_mul(1000)),
        humantime::format_duration(valid_for),
    );
    Ok(())
}

/// `ferry certs revoke TARGET`: a serial number (it has a ':' or 16 or more
/// hexadecimal digits and nothing else) or else a holder name; `--name` forces
/// the name.
pub(crate) async fn revoke(
    client: &mut Client,
    target: &str,
    force_name: bool,
    output: Output,
) -> anyhow::Result<()> {
    let request = if !force_name && pki::looks_like_serial(target) {
        proto::RevokeCertificateRequest {
            serial: pki::parse_serial(target)?,
            name: String::new(),
        }
    } else {
        pki::validate_name(target)?;
        proto::RevokeCertificateRequest {
            serial: String::new(),
            name: target.to_string(),
        }
    };
    // Revoking is idempotent (a name's cut-off only moves forward), so it is
    // retried through a failover like a read.
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.revoke_certificate(request).await
        })
        .await?;
    if output == Output::Json {
        let revoked = answer.revoked.as_ref().map(revocation_json);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"revoked": revoked, "already": answer.already}))?
        );
        return Ok(());
    }
    match answer.revoked {
        Some(entry) if entry.kind == "name" => println!(
            "revoked every certificate issued for \"{}\" until {}; a certificate issued for it \
             from now on is accepted",
            entry.value,
            render::utc_time(entry.revoked_ms)
        ),
        Some(entry) => println!("revoked the certificate with serial {}", entry.value),
        None => println!("revoked {target}"),
    }
    if answer.already {
        println!("(it was on the deny list already)");
    }
    Ok(())
}

/// `ferry certs revoked`: the deny list.
pub(crate) async fn revoked(client: &mut Client, output: Output) -> anyhow::Result<()> {
    let answer = client
        .rpc(
            proto::ListRevocationsRequest { stale: false },
            |mut client, request| async move { client.list_revocations(request).await },
        )
        .await?;
    if output == Output::Json {
        let list: Vec<_> = answer.revocations.iter().map(revocation_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if answer.revocations.is_empty() {
        println!("no certificate is revoked");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer
        .revocations
        .iter()
        .map(|entry| {
            vec![
                entry.kind.clone(),
                entry.value.clone(),
                entry.revoked_by.clone(),
                render::utc_time(entry.revoked_ms),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(
            &["KIND", "SERIAL OR NAME", "REVOKED BY", "REVOKED AT"],
            &rows
        )
    );
    Ok(())
}

fn revocation_json(entry: &proto::RevocationView) -> serde_json::Value {
    json!({
        "kind": entry.kind,
        "value": entry.value,
        "revoked_by": entry.revoked_by,
        "revoked_ms": entry.revoked_ms,
    })
}

/// A warning when the certificate in `cert` expires within
/// [`EXPIRY_WARNING_MS`] of `now_ms` (or has expired); `None` otherwise, and
/// when the file cannot be read (connecting will say why).
pub(crate) fn expiry_warning(cert: &Path, now_ms: i64) -> Option<String> {
    let facts = pki::certificate_facts_of_file(cert).ok()?;
    let not_after_ms = facts.not_after_secs.saturating_mul(1000);
    let left = not_after_ms.saturating_sub(now_ms);
    if left > EXPIRY_WARNING_MS {
        return None;
    }
    let when = render::utc_time(not_after_ms);
    Some(if left <= 0 {
        format!(
            "warning: your certificate {} expired at {when}; ask an administrator for a new one \
             ('ferry certs issue --role client --name {}')",
            cert.display(),
            facts.identity.name
        )
    } else {
        format!(
            "warning: your certificate {} expires at {when} (in {}); ask an administrator for \
             a new one ('ferry certs issue --role client --name {}')",
            cert.display(),
            render::duration_ms(left),
            facts.identity.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_certificate_is_named_by_its_member_id() {
        let member = Holder::from_arguments(None, Some(2));
        assert_eq!(member.name_for(Role::Coordinator).unwrap(), "member-2");
        let error = member.name_for(Role::Worker).unwrap_err().to_string();
        assert!(error.contains("--member is for coordinator"), "{error}");
        let error = Holder::Member(0)
            .name_for(Role::Coordinator)
            .unwrap_err()
            .to_string();
        assert!(error.contains("start at 1"), "{error}");
        let named = Holder::from_arguments(Some("gpu-01".to_string()), None);
        assert_eq!(named.name_for(Role::Worker).unwrap(), "gpu-01");
    }

    #[test]
    fn a_certificate_close_to_its_end_gets_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(dir.path()).unwrap();
        let paths = pki::issue_valid_for(
            dir.path(),
            dir.path(),
            Role::Client,
            "bob",
            &[],
            &[],
            std::time::Duration::from_secs(3 * 24 * 3600),
        )
        .unwrap();
        let now = ferry_common::time::now_ms();
        let warning = expiry_warning(&paths.cert, now).unwrap();
        assert!(warning.contains("expires at"), "{warning}");
        let later = now + 4 * 24 * 3600 * 1000;
        assert!(
            expiry_warning(&paths.cert, later)
                .unwrap()
                .contains("expired at")
        );
        let long = pki::issue(dir.path(), dir.path(), Role::Client, "carol", &[], &[]).unwrap();
        assert_eq!(expiry_warning(&long.cert, now), None);
    }
}
