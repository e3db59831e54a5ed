//! `ferry certs`: the cluster CA and the certificates it issues, made locally
//! (no coordinator is called).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ferry_common::pki::{self, Role};

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

/// `ferry certs issue`: a key and certificate for `role`, signed by the CA in
/// `dir`, written to `out` (or `dir`).
pub(crate) fn issue(
    dir: &Path,
    out: Option<PathBuf>,
    role: &str,
    name: &str,
    dns: &[String],
    ip: &[IpAddr],
) -> anyhow::Result<()> {
    let role: Role = role.parse()?;
    let out = out.unwrap_or_else(|| dir.to_path_buf());
    let paths = pki::issue(dir, &out, role, name, dns, ip)?;
    println!(
        "{role} certificate for \"{name}\": {} (key {})",
        paths.cert.display(),
        paths.key.display()
    );
    Ok(())
}
