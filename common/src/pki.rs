//! The cluster's certificate authority, role-bound certificates, TLS loading and
//! peer identity.
//!
//! Each Ferry cluster has one CA. Every certificate it issues names its holder
//! (common name = the holder's name) and binds a role to it with a URI subject
//! alternative name `spiffe://ferry/<role>/<name>`, where the role is `coordinator`,
//! `worker` or `client`. All connections use mutual TLS: a service reads the caller's
//! identity from the leaf certificate the caller presented ([`peer_identity`]) and
//! can accept one role only ([`require_role`]). This module writes and reads files
//! but opens no sockets.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use x509_parser::extensions::GeneralName;

/// File name of the CA certificate, in the CA directory and in every TLS directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key, in the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Scheme and trust domain of the URI SAN that carries a Ferry identity.
pub const SPIFFE_PREFIX: &str = "spiffe://ferry/";
/// Common name of the cluster CA.
pub const CA_COMMON_NAME: &str = "Ferry cluster CA";

/// Lifetime of the cluster CA, in days (10 years).
const CA_VALIDITY_DAYS: u64 = 3652;
/// Default lifetime of a coordinator's or worker's certificate: 2 years (daemons
/// whose certificates are replaced by hand; a compromised one is revoked).
pub const DAEMON_VALIDITY: Duration = Duration::from_secs(731 * 24 * 60 * 60);
/// Default lifetime of a client (user) certificate: 90 days, so that a
/// certificate nobody remembers revoking stops working by itself.
pub const CLIENT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Shortest lifetime `ferry certs issue --valid-for` accepts.
pub const MIN_VALIDITY: Duration = Duration::from_secs(60);
/// Longest lifetime `ferry certs issue --valid-for` accepts (the CA's own).
pub const MAX_VALIDITY: Duration = Duration::from_secs(CA_VALIDITY_DAYS * 24 * 60 * 60);
/// Certificates are valid from a little before they are issued, to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// Longest accepted name.
const MAX_NAME_LEN: usize = 64;

/// What a certificate holder is allowed to be in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The coordinator: schedules steps and stores blobs.
    Coordinator,
    /// A worker: runs steps.
    Worker,
    /// A client: the `ferry` command line of a user.
    Client,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Coordinator, Role::Worker, Role::Client];

    /// The role's lowercase name, as used in URIs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PkiError::UnknownRole {
                value: s.to_string(),
            })
    }
}

/// Who a certificate belongs to: its role and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The role bound into the certificate.
    pub role: Role,
    /// The holder's name (also the certificate's common name).
    pub name: String,
}

impl Identity {
    /// The URI SAN that carries this identity: `spiffe://ferry/<role>/<name>`.
    pub fn uri(&self) -> String {
        spiffe_uri(self.role, &self.name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} \"{}\"", self.role, self.name)
    }
}

/// Returns the URI SAN for a role and name: `spiffe://ferry/<role>/<name>`.
pub fn spiffe_uri(role: Role, name: &str) -> String {
    format!("{SPIFFE_PREFIX}{role}/{name}")
}

/// What a coordinator's certificate name starts with: the rest is its member id
/// (`member-2`), so that a coordinator certificate speaks for one member only.
pub const MEMBER_NAME_PREFIX: &str = "member-";

/// The certificate name of member `id`: `member-<id>`.
pub fn member_name(id: u64) -> String {
    format!("{MEMBER_NAME_PREFIX}{id}")
}

/// The member id a certificate name carries (`member-2` gives 2): decimal, not 0,
/// no leading zeros, so that each id has exactly one name.
pub fn member_id_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(MEMBER_NAME_PREFIX)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The member id of a coordinator certificate, or why it has none.
pub fn member_id(identity: &Identity) -> Result<u64, String> {
    if identity.role != Role::Coordinator {
        return Err(format!(
            "it is a {} certificate (for \"{}\"), not a coordinator's",
            identity.role, identity.name
        ));
    }
    member_id_of_name(&identity.name).ok_or_else(|| {
        format!(
            "its name \"{}\" names no member id (a coordinator's certificate is named \
             {MEMBER_NAME_PREFIX}<id>: issue it with 'ferry certs issue --role coordinator \
             --member <id>')",
            identity.name
        )
    })
}

/// Checks that `identity`, this coordinator's own certificate, names member `id`
/// (what a coordinator checks at start).
pub fn check_own_member_certificate(identity: &Identity, id: u64) -> Result<(), PkiError> {
    let wrong = |reason: String| PkiError::WrongMember { id, reason };
    match member_id(identity) {
        Ok(named) if named == id => Ok(()),
        Ok(named) => Err(wrong(format!(
            "it is the certificate of member {named} (\"{}\")",
            identity.name
        ))),
        Err(reason) => Err(wrong(reason)),
    }
}

/// Errors from creating, issuing, loading or inspecting certificates.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A file that is needed does not exist.
    #[error("TLS {} file {} ({what}) is missing: {}", describe(what), path.display(), hint(what))]
    MissingFile {
        /// Which file: `ca`, `ca-key`, `cert` or `key`.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file exists but does not hold what it should.
    #[error("TLS {} file {} ({what}) is not usable: {reason}", describe(what), path.display())]
    BadFile {
        /// Which file: `ca`, `ca-key`, `cert` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate holder name is not acceptable.
    #[error(
        "invalid name \"{name}\": {reason} (names are 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-')"
    )]
    InvalidName {
        /// The name that was given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A role name is not one of the known roles.
    #[error("unknown role \"{value}\": expected one of coordinator, worker, client")]
    UnknownRole {
        /// The text that was given.
        value: String,
    },
    /// Generating a key or a certificate failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate could not be parsed or carries no valid Ferry identity.
    #[error("invalid certificate: {0}")]
    Certificate(String),
    /// A certificate lifetime (`--valid-for`) is not acceptable.
    #[error(
        "invalid validity \"{value}\": {reason} (give a duration between 1 minute and 3652 days, \
         such as 12h, 90d or \"30d 12h\")"
    )]
    InvalidValidity {
        /// The text that was given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A certificate serial number is not acceptable.
    #[error(
        "invalid serial number \"{value}\": {reason} (a serial is up to 40 hexadecimal digits, \
         optionally separated by ':', as 'ferry certs issue' prints it)"
    )]
    InvalidSerial {
        /// The text that was given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A coordinator certificate was asked for under a name that carries no member id.
    #[error(
        "a coordinator's certificate is named after the member id it speaks for \
         ({MEMBER_NAME_PREFIX}<id>), not \"{name}\": give --member <id> instead of --name"
    )]
    CoordinatorName {
        /// The name that was given.
        name: String,
    },
    /// A coordinator's certificate does not name the member id it is configured with.
    #[error(
        "this coordinator is member {id} (`id` in its configuration), but its TLS certificate \
         does not speak for member {id}: {reason}. Issue one with 'ferry certs issue --role \
         coordinator --member {id}' and point [tls] cert and key at it"
    )]
    WrongMember {
        /// The configured member id.
        id: u64,
        /// What the certificate says instead.
        reason: String,
    },
    /// `init_ca` was asked to create a CA where one already exists.
    #[error(
        "a cluster CA already exists ({} is present); refusing to overwrite it, because every \
         certificate it issued would stop working. Remove ca.pem and ca-key.pem yourself to start over",
        path.display()
    )]
    CaExists {
        /// The existing CA file.
        path: PathBuf,
    },
}

fn describe(what: &str) -> &'static str {
    match what {
        "ca" => "CA certificate",
        "ca-key" => "CA private key",
        "cert" => "certificate",
        "key" => "private key",
        _ => "",
    }
}

fn hint(what: &str) -> &'static str {
    match what {
        "ca" | "ca-key" => "create the cluster CA with 'ferry certs init ...'",
        _ => "create it with 'ferry certs issue ...'",
    }
}

/// Paths of the CA certificate and key written by [`init_ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// `<dir>/ca.pem`.
    pub cert: PathBuf,
    /// `<dir>/ca-key.pem` (mode 0600).
    pub key: PathBuf,
}

/// Paths of a certificate and key written by [`issue`], and what identifies the
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPaths {
    /// `<out_dir>/<name>.pem`.
    pub cert: PathBuf,
    /// `<out_dir>/<name>-key.pem` (mode 0600).
    pub key: PathBuf,
    /// The certificate's serial number, as [`parse_serial`] writes it (what
    /// `ferry certs revoke` takes).
    pub serial: String,
    /// When it stops being valid (seconds since the epoch).
    pub not_after_secs: i64,
}

/// The default lifetime of a certificate for `role`: [`CLIENT_VALIDITY`] for
/// clients, [`DAEMON_VALIDITY`] for coordinators and workers.
pub fn default_validity(role: Role) -> Duration {
    match role {
        Role::Client => CLIENT_VALIDITY,
        Role::Coordinator | Role::Worker => DAEMON_VALIDITY,
    }
}

/// Parses a certificate lifetime such as `90d`, `12h` or `30d 12h` (humantime's
/// syntax), between [`MIN_VALIDITY`] and [`MAX_VALIDITY`].
pub fn parse_validity(text: &str) -> Result<Duration, PkiError> {
    let invalid = |reason: String| PkiError::InvalidValidity {
        value: text.to_string(),
        reason,
    };
    let duration = humantime::parse_duration(text.trim()).map_err(|e| invalid(e.to_string()))?;
    if duration < MIN_VALIDITY {
        return Err(invalid("it is shorter than a minute".to_string()));
    }
    if duration > MAX_VALIDITY {
        return Err(invalid(
            "it is longer than the cluster CA's own lifetime".to_string(),
        ));
    }
    Ok(duration)
}

/// Parses a serial number as `ferry certs issue` prints it or as other tools do
/// (`AB:12:...`, `0x...`), into Ferry's one form: lowercase hexadecimal, no
/// separators, no leading zeros.
pub fn parse_serial(text: &str) -> Result<String, PkiError> {
    let invalid = |reason| PkiError::InvalidSerial {
        value: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    let digits = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let digits: String = digits
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() {
        return Err(invalid("it holds no digits"));
    }
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            "it holds a character that is not a hexadecimal digit",
        ));
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Err(invalid("it is zero"));
    }
    if significant.len() > 40 {
        return Err(invalid("it is longer than 20 bytes"));
    }
    Ok(significant.to_string())
}

/// Whether `text` is meant as a serial number rather than a holder name: it has
/// a ':' (never in a name) or at least 16 hexadecimal digits and nothing else.
pub fn looks_like_serial(text: &str) -> bool {
    text.contains(':') || (text.len() >= 16 && text.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What a certificate says about itself, as revocation and expiry need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The Ferry identity bound into it.
    pub identity: Identity,
    /// Its serial number, as [`parse_serial`] writes it.
    pub serial: String,
    /// When it was issued (milliseconds since the epoch, whole seconds): its
    /// notBefore plus the hour Ferry backdates every certificate by.
    pub issued_ms: i64,
    /// When it stops being valid (seconds since the epoch).
    pub not_after_secs: i64,
}

/// Reads identity, serial number, issue and expiry times from a DER certificate.
pub fn certificate_facts(der: &[u8]) -> Result<CertificateFacts, PkiError> {
    let identity = identity_from_der(der)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Certificate(format!("cannot parse the certificate: {e}")))?;
    let serial_hex: String = cert
        .raw_serial()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let serial = parse_serial(&serial_hex).map_err(|e| PkiError::Certificate(e.to_string()))?;
    let not_before = cert.validity().not_before.timestamp();
    let backdate_ms = i64::try_from(BACKDATE.as_millis()).unwrap_or(0);
    Ok(CertificateFacts {
        identity,
        serial,
        issued_ms: not_before.saturating_mul(1000).saturating_add(backdate_ms),
        not_after_secs: cert.validity().not_after.timestamp(),
    })
}

/// [`certificate_facts`] of the first certificate in a PEM file.
pub fn certificate_facts_of_file(path: &Path) -> Result<CertificateFacts, PkiError> {
    let pem = read_bytes(path, "cert")?;
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| PkiError::BadFile {
        what: "cert",
        path: path.to_path_buf(),
        reason: format!("it holds no PEM certificate (BEGIN CERTIFICATE): {e}"),
    })?;
    certificate_facts(&der).map_err(|e| PkiError::BadFile {
        what: "cert",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Checks a certificate holder name: 1 to 64 characters from `[A-Za-z0-9_.-]`.
///
/// `.` and `..` are refused, and so are `ca` and `ca-key`, whose certificate files
/// would collide with the CA's own files.
pub fn validate_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| {
        Err(PkiError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return invalid("it contains a character that is not allowed");
    }
    if name == "." || name == ".." {
        return invalid("it is a relative directory name");
    }
    if name == "ca" || name == "ca-key" {
        return invalid("it is reserved for the cluster CA's files");
    }
    Ok(())
}

/// Creates the cluster CA in `dir` (created if needed): `ca.pem` and `ca-key.pem`
/// (mode 0600). Refuses to overwrite an existing CA.
///
/// The CA certificate has the common name "Ferry cluster CA", is valid for 10 years
/// and may sign certificates (no path length constraint).
pub fn init_ca(dir: &Path) -> Result<CaPaths, PkiError> {
    create_private_dir(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let paths = CaPaths {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    for path in [&paths.cert, &paths.key] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(PkiError::CaExists { path: path.clone() });
        }
    }

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;

    write_new(&paths.key, key.serialize_pem().as_bytes()).map_err(|e| match e {
        WriteError::Exists => PkiError::CaExists {
            path: paths.key.clone(),
        },
        WriteError::Io(source) => PkiError::Io {
            path: paths.key.clone(),
            source,
        },
    })?;
    write_new(&paths.cert, cert.pem().as_bytes()).map_err(|e| match e {
        WriteError::Exists => PkiError::CaExists {
            path: paths.cert.clone(),
        },
        WriteError::Io(source) => PkiError::Io {
            path: paths.cert.clone(),
            source,
        },
    })?;
    Ok(paths)
}

/// Issues a certificate for `name` with `role`, signed by the CA in `ca_dir`, and
/// writes `<out_dir>/<name>.pem` and `<out_dir>/<name>-key.pem` (mode 0600),
/// replacing earlier ones. `out_dir` is created if needed.
///
/// The certificate has common name `name`, the URI SAN `spiffe://ferry/<role>/<name>`,
/// the DNS and IP SANs given (coordinators always also get `localhost` and
/// `127.0.0.1`; their name must be [`member_name`] of the member they speak for) and is valid for the role's [`default_validity`]. Coordinators
/// may act as TLS servers and clients; workers and clients as TLS clients only.
pub fn issue(
    ca_dir: &Path,
    out_dir: &Path,
    role: Role,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<IssuedPaths, PkiError> {
    issue_valid_for(
        ca_dir,
        out_dir,
        role,
        name,
        dns,
        ips,
        default_validity(role),
    )
}

/// [`issue`] with a lifetime of `valid_for` from now (between [`MIN_VALIDITY`]
/// and [`MAX_VALIDITY`]).
pub fn issue_valid_for(
    ca_dir: &Path,
    out_dir: &Path,
    role: Role,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
    valid_for: Duration,
) -> Result<IssuedPaths, PkiError> {
    validate_name(name)?;
    if role == Role::Coordinator && member_id_of_name(name).is_none() {
        return Err(PkiError::CoordinatorName {
            name: name.to_string(),
        });
    }
    if !(MIN_VALIDITY..=MAX_VALIDITY).contains(&valid_for) {
        return Err(PkiError::InvalidValidity {
            value: humantime::format_duration(valid_for).to_string(),
            reason: "it is outside the accepted range".to_string(),
        });
    }
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_pem = read_text(&ca_cert_path, "ca")?;
    let ca_key_pem = read_text(&ca_key_path, "ca-key")?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::BadFile {
        what: "ca-key",
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| PkiError::BadFile {
        what: "ca",
        path: ca_cert_path.clone(),
        reason: e.to_string(),
    })?;

    let mut dns_names: Vec<String> = Vec::new();
    let mut ip_addrs: Vec<IpAddr> = Vec::new();
    if role == Role::Coordinator {
        dns_names.push("localhost".to_string());
        ip_addrs.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    for d in dns {
        if !dns_names.contains(d) {
            dns_names.push(d.clone());
        }
    }
    for ip in ips {
        if !ip_addrs.contains(ip) {
            ip_addrs.push(*ip);
        }
    }

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params
        .subject_alt_names
        .push(SanType::URI(spiffe_uri(role, name).as_str().try_into()?));
    for d in &dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(d.as_str().try_into()?));
    }
    for ip in &ip_addrs {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Coordinator => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Worker | Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    set_leaf_validity(&mut params, valid_for);

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    create_private_dir(out_dir).map_err(|source| PkiError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let facts = certificate_facts(cert.der())?;
    let paths = IssuedPaths {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}-key.pem")),
        serial: facts.serial,
        not_after_secs: facts.not_after_secs,
    };
    write_replace(&paths.key, key.serialize_pem().as_bytes()).map_err(|source| PkiError::Io {
        path: paths.key.clone(),
        source,
    })?;
    write_replace(&paths.cert, cert.pem().as_bytes()).map_err(|source| PkiError::Io {
        path: paths.cert.clone(),
        source,
    })?;
    Ok(paths)
}

/// Reads the Ferry identity (`spiffe://ferry/<role>/<name>` URI SAN) from a DER
/// certificate.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Certificate(format!("cannot parse the certificate: {e}")))?;
    let san = cert.subject_alternative_name().map_err(|e| {
        PkiError::Certificate(format!("cannot parse the subject alternative names: {e}"))
    })?;
    let no_identity = || {
        PkiError::Certificate(format!(
            "it carries no Ferry identity (a URI subject alternative name \
             {SPIFFE_PREFIX}<role>/<name>); was it issued by 'ferry certs issue'?"
        ))
    };
    let Some(san) = san else {
        return Err(no_identity());
    };
    let mut found: Option<Identity> = None;
    for general_name in &san.value.general_names {
        let GeneralName::URI(uri) = general_name else {
            continue;
        };
        let Some(rest) = uri.strip_prefix(SPIFFE_PREFIX) else {
            continue;
        };
        let identity = parse_identity_path(rest).map_err(|reason| {
            PkiError::Certificate(format!(
                "its Ferry identity URI \"{uri}\" is malformed: {reason}"
            ))
        })?;
        if let Some(previous) = &found {
            if *previous != identity {
                return Err(PkiError::Certificate(format!(
                    "it carries two different Ferry identities ({previous} and {identity})"
                )));
            }
        } else {
            found = Some(identity);
        }
    }
    found.ok_or_else(no_identity)
}

/// Parses an identity URI (`spiffe://ferry/<role>/<name>`), as a coordinator
/// forwarding a call names its original caller.
pub fn identity_from_uri(uri: &str) -> Result<Identity, PkiError> {
    let rest = uri
        .strip_prefix(SPIFFE_PREFIX)
        .ok_or_else(|| PkiError::Certificate(format!("\"{uri}\" is not a Ferry identity URI")))?;
    parse_identity_path(rest).map_err(|reason| {
        PkiError::Certificate(format!("the identity URI \"{uri}\" is malformed: {reason}"))
    })
}

/// Parses `<role>/<name>`, the part of the identity URI after the prefix.
fn parse_identity_path(rest: &str) -> Result<Identity, String> {
    let Some((role, name)) = rest.split_once('/') else {
        return Err("expected <role>/<name>".to_string());
    };
    let role: Role = role.parse().map_err(|e: PkiError| e.to_string())?;
    validate_name(name).map_err(|e| e.to_string())?;
    Ok(Identity {
        role,
        name: name.to_string(),
    })
}

/// Where the three TLS files of one cluster member are; the `[tls]` table of every
/// Ferry configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (`ca.pem`).
    pub ca: PathBuf,
    /// This member's certificate (`<name>.pem`).
    pub cert: PathBuf,
    /// This member's private key (`<name>-key.pem`).
    pub key: PathBuf,
}

/// The contents of a member's TLS files, checked to be PEM, and the identity in its
/// certificate.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// PEM of the cluster CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// PEM of this member's certificate.
    pub cert_pem: Vec<u8>,
    /// PEM of this member's private key.
    pub key_pem: Vec<u8>,
    /// The identity bound into this member's certificate.
    pub identity: Identity,
}

impl TlsFiles {
    /// The same files with relative paths taken relative to `base` (the folder of
    /// the configuration file that named them).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        TlsFiles {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }

    /// The conventional layout: `dir/ca.pem`, `dir/<name>.pem`, `dir/<name>-key.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }

    /// Reads and checks the three PEM files and the identity in the certificate.
    pub fn load(&self) -> Result<TlsMaterial, PkiError> {
        let ca_pem = read_bytes(&self.ca, "ca")?;
        let cert_pem = read_bytes(&self.cert, "cert")?;
        let key_pem = read_bytes(&self.key, "key")?;

        let bad = |what: &'static str, path: &Path, reason: String| PkiError::BadFile {
            what,
            path: path.to_path_buf(),
            reason,
        };
        let ca_certs = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("ca", &self.ca, format!("it is not valid PEM ({e})")))?;
        if ca_certs.is_empty() {
            return Err(bad(
                "ca",
                &self.ca,
                "it holds no PEM certificate (BEGIN CERTIFICATE)".to_string(),
            ));
        }
        let leaf = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| {
            bad(
                "cert",
                &self.cert,
                format!("it holds no PEM certificate (BEGIN CERTIFICATE): {e}"),
            )
        })?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            bad(
                "key",
                &self.key,
                format!("it holds no PEM private key (BEGIN PRIVATE KEY): {e}"),
            )
        })?;
        let identity =
            identity_from_der(&leaf).map_err(|e| bad("cert", &self.cert, e.to_string()))?;
        Ok(TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
            identity,
        })
    }
}

impl TlsMaterial {
    /// TLS settings for a tonic channel to a server whose certificate names
    /// `domain` (a DNS name or IP address in its SANs): the cluster CA as the only
    /// root, and this member's certificate as the client identity.
    pub fn client_config(&self, domain: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(domain)
    }
}

/// The identity of the caller of a request, from the leaf certificate it presented
/// over mutual TLS.
///
/// No certificate (a plaintext connection, or a Unix socket) gives
/// `Status::unauthenticated`, and so does a certificate without a valid Ferry identity.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    Ok(peer_certificate(request)?.identity.clone())
}

/// What the leaf certificate the caller presented says (identity, serial number,
/// issue time), for [`peer_identity`] and the revocation check on each request.
///
/// The facts are a pure function of the certificate's bytes (the handshake
/// already verified the chain), so parsed ones are remembered: every request of a
/// connection presents the same certificate, and it is parsed once.
pub fn peer_certificate<T>(
    request: &tonic::Request<T>,
) -> Result<std::sync::Arc<CertificateFacts>, tonic::Status> {
    use std::sync::Arc;
    let certs = request.peer_certs();
    let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
        return Err(tonic::Status::unauthenticated(
            "no client certificate was presented; Ferry requires mutual TLS with a certificate \
             issued by the cluster CA",
        ));
    };
    type Known = std::collections::HashMap<Vec<u8>, Arc<CertificateFacts>>;
    static KNOWN: std::sync::LazyLock<std::sync::Mutex<Known>> =
        std::sync::LazyLock::new(Default::default);
    let der: &[u8] = leaf.as_ref();
    if let Some(facts) = crate::locks::lock(&KNOWN, "known certificates")
        .get(der)
        .cloned()
    {
        return Ok(facts);
    }
    let facts = Arc::new(certificate_facts(der).map_err(|e| {
        tonic::Status::unauthenticated(format!("the client certificate was not accepted: {e}"))
    })?);
    {
        let mut known = crate::locks::lock(&KNOWN, "known certificates");
        if known.len() >= 4096 {
            known.clear();
        }
        known.insert(der.to_vec(), facts.clone());
    }
    Ok(facts)
}

/// Like [`peer_identity`], and also requires the caller's role to be `role`
/// (`Status::permission_denied` otherwise).
pub fn require_role<T>(request: &tonic::Request<T>, role: Role) -> Result<Identity, tonic::Status> {
    check_role(peer_identity(request)?, role)
}

fn check_role(identity: Identity, role: Role) -> Result<Identity, tonic::Status> {
    if identity.role == role {
        return Ok(identity);
    }
    Err(tonic::Status::permission_denied(format!(
        "this service accepts {role} certificates only; the caller presented a {other} \
         certificate for \"{name}\"",
        other = identity.role,
        name = identity.name
    )))
}

/// Sets not_before to a little before now and not_after `valid_for` after now.
fn set_leaf_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let epoch = date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + valid_for;
}

/// Sets not_before to a little before now and not_after `days` later.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let start = now.saturating_sub(BACKDATE);
    let epoch = date_time_ymd(1970, 1, 1);
    params.not_before = epoch + start;
    params.not_after = epoch + start + Duration::from_secs(days * 24 * 60 * 60);
}

fn read_bytes(path: &Path, what: &'static str) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            PkiError::MissingFile {
                what,
                path: path.to_path_buf(),
            }
        } else {
            PkiError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn read_text(path: &Path, what: &'static str) -> Result<String, PkiError> {
    let bytes = read_bytes(path, what)?;
    String::from_utf8(bytes).map_err(|_| PkiError::BadFile {
        what,
        path: path.to_path_buf(),
        reason: "it is not a text (PEM) file".to_string(),
    })
}

enum WriteError {
    Exists,
    Io(io::Error),
}

/// Creates `dir` and its missing ancestors with mode 0700 (an existing one keeps
/// its mode).
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates `path` with mode 0600, failing if it exists. Certificates are written
/// 0600 like keys: whoever runs `ferry certs` hands them out.
fn write_new(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    set_private(&mut options);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            WriteError::Exists
        } else {
            WriteError::Io(e)
        }
    })?;
    file.write_all(data).map_err(WriteError::Io)?;
    file.sync_all().map_err(WriteError::Io)
}

/// Creates or replaces `path`, with mode 0600 even if it existed.
fn write_replace(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    set_private(&mut options);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(data)?;
    file.sync_all()
}

#[cfg(unix)]
fn set_private(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn set_private(_options: &mut OpenOptions) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn der_of(pem_path: &Path) -> Vec<u8> {
        let pem = fs::read(pem_path).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
    }

    fn issue_simple(ca: &Path, out: &Path, role: Role, name: &str) -> IssuedPaths {
        issue(ca, out, role, name, &[], &[]).unwrap()
    }

    #[test]
    fn roles_parse_and_print() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(role.to_string(), role.as_str());
        }
        let err = "admin".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("admin"), "{err}");
        for accepted in ["coordinator", "worker", "client"] {
            assert!(err.contains(accepted), "{err}");
        }
    }

    #[test]
    fn init_ca_then_issue_every_role() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(&dir.path().join("ca")).unwrap();
        assert!(ca.cert.ends_with("ca/ca.pem"));
        assert!(ca.key.ends_with("ca/ca-key.pem"));
        let ca_der = der_of(&ca.cert);
        let (_, ca_x509) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca_x509.is_ca());
        assert_eq!(
            ca_x509
                .subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            CA_COMMON_NAME
        );
        let ca_years = (ca_x509.validity().not_after.timestamp()
            - ca_x509.validity().not_before.timestamp())
            / (365 * 86400);
        assert_eq!(ca_years, 10);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&ca.key), 0o600);
            assert_eq!(mode(&ca.cert), 0o600);
            assert_eq!(mode(&dir.path().join("ca")), 0o700);
        }

        let out = dir.path().join("tls");
        for (role, name) in [
            (Role::Coordinator, "member-1"),
            (Role::Worker, "gpu_box.2"),
            (Role::Client, "alice"),
        ] {
            let paths = issue(
                &dir.path().join("ca"),
                &out,
                role,
                name,
                &["ferry.example.org".to_string()],
                &["10.0.0.7".parse().unwrap()],
            )
            .unwrap();
            assert_eq!(paths.cert, out.join(format!("{name}.pem")));
            assert_eq!(paths.key, out.join(format!("{name}-key.pem")));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600);
            }

            let der = der_of(&paths.cert);
            let identity = identity_from_der(&der).unwrap();
            assert_eq!(
                identity,
                Identity {
                    role,
                    name: name.to_string()
                }
            );

            let (_, x509) = X509Certificate::from_der(&der).unwrap();
            assert!(!x509.is_ca());
            assert_eq!(x509.issuer(), ca_x509.subject());
            x509.verify_signature(Some(ca_x509.public_key())).unwrap();
            assert_eq!(
                x509.subject()
                    .iter_common_name()
                    .next()
                    .unwrap()
                    .as_str()
                    .unwrap(),
                name
            );
            // notBefore is backdated an hour; the lifetime runs from the issue.
            let lifetime = x509.validity().not_after.timestamp()
                - x509.validity().not_before.timestamp()
                - 3600;
            let expected = default_validity(role).as_secs() as i64;
            assert!(
                (expected - 5..=expected + 5).contains(&lifetime),
                "{role}: {lifetime} s"
            );

            let eku = x509.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth);
            assert_eq!(eku.server_auth, role == Role::Coordinator);

            let sans = &x509
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names;
            let has_dns = |d: &str| {
                sans.iter()
                    .any(|g| matches!(g, GeneralName::DNSName(x) if *x == d))
            };
            let has_ip = |ip: [u8; 4]| {
                sans.iter()
                    .any(|g| matches!(g, GeneralName::IPAddress(x) if *x == ip.as_slice()))
            };
            assert!(has_dns("ferry.example.org"));
            assert!(has_ip([10, 0, 0, 7]));
            assert_eq!(has_dns("localhost"), role == Role::Coordinator);
            assert_eq!(has_ip([127, 0, 0, 1]), role == Role::Coordinator);
        }
    }

    #[test]
    fn certificates_from_another_ca_have_that_ca_as_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let ca_a = dir.path().join("a");
        let ca_b = dir.path().join("b");
        init_ca(&ca_a).unwrap();
        init_ca(&ca_b).unwrap();
        let cert_a = issue_simple(&ca_a, &dir.path().join("out-a"), Role::Worker, "w1");
        let cert_b = issue_simple(&ca_b, &dir.path().join("out-b"), Role::Worker, "w1");

        let ca_a_der = der_of(&ca_a.join(CA_CERT_FILE));
        let ca_b_der = der_of(&ca_b.join(CA_CERT_FILE));
        let (_, ca_a_x) = X509Certificate::from_der(&ca_a_der).unwrap();
        let (_, ca_b_x) = X509Certificate::from_der(&ca_b_der).unwrap();
        let leaf_b_der = der_of(&cert_b.cert);
        let (_, leaf_b) = X509Certificate::from_der(&leaf_b_der).unwrap();
        let leaf_a_der = der_of(&cert_a.cert);
        let (_, leaf_a) = X509Certificate::from_der(&leaf_a_der).unwrap();

        leaf_b.verify_signature(Some(ca_b_x.public_key())).unwrap();
        assert!(leaf_b.verify_signature(Some(ca_a_x.public_key())).is_err());
        leaf_a.verify_signature(Some(ca_a_x.public_key())).unwrap();
        assert!(leaf_a.verify_signature(Some(ca_b_x.public_key())).is_err());
        // Both CAs share a name, so only the signature tells them apart.
        assert_eq!(leaf_a.issuer(), leaf_b.issuer());
    }

    #[test]
    fn coordinator_certificates_name_their_member_id() {
        assert_eq!(member_name(2), "member-2");
        assert_eq!(member_id_of_name("member-2"), Some(2));
        assert_eq!(member_id_of_name("member-12"), Some(12));
        for bad in [
            "member-",
            "member-0",
            "member-02",
            "member-2a",
            "member--2",
            "coord1",
            "2",
        ] {
            assert_eq!(member_id_of_name(bad), None, "{bad}");
        }
        let coordinator = |name: &str| Identity {
            role: Role::Coordinator,
            name: name.to_string(),
        };
        assert_eq!(member_id(&coordinator("member-3")), Ok(3));
        let error = member_id(&coordinator("coordinator")).unwrap_err();
        assert!(error.contains("--member <id>"), "{error}");
        let worker = Identity {
            role: Role::Worker,
            name: "member-3".to_string(),
        };
        assert!(
            member_id(&worker)
                .unwrap_err()
                .contains("worker certificate")
        );

        check_own_member_certificate(&coordinator("member-3"), 3).unwrap();
        let error = check_own_member_certificate(&coordinator("member-2"), 3)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("member 3") && error.contains("certificate of member 2"),
            "{error}"
        );
        assert!(error.contains("--member 3"), "{error}");

        // Issuing refuses a coordinator name without a member id, and writes nothing.
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let error = issue(
            dir.path(),
            dir.path(),
            Role::Coordinator,
            "coord1",
            &[],
            &[],
        )
        .unwrap_err();
        assert!(matches!(error, PkiError::CoordinatorName { .. }), "{error}");
        assert!(error.to_string().contains("--member"), "{error}");
        assert!(!dir.path().join("coord1.pem").exists());
        issue_simple(dir.path(), dir.path(), Role::Coordinator, "member-1");
        // Other roles may be named anything valid, member-like or not.
        issue_simple(dir.path(), dir.path(), Role::Client, "member-1-user");
    }

    #[test]
    fn init_ca_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_ca(dir.path()).unwrap();
        let before = fs::read(&first.key).unwrap();
        let err = init_ca(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::CaExists { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("already exists"), "{msg}");
        assert!(msg.contains(&first.cert.display().to_string()), "{msg}");
        assert_eq!(fs::read(&first.key).unwrap(), before);

        // A lone key is protected too.
        fs::remove_file(&first.cert).unwrap();
        let err = init_ca(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&first.key.display().to_string()), "{err}");
    }

    #[test]
    fn issue_names_a_missing_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), dir.path(), Role::Client, "bob", &[], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, PkiError::MissingFile { what: "ca", .. }),
            "{err:?}"
        );
        assert!(
            msg.contains(&dir.path().join("ca.pem").display().to_string()),
            "{msg}"
        );

        init_ca(dir.path()).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = issue(dir.path(), dir.path(), Role::Client, "bob", &[], &[]).unwrap_err();
        assert!(
            matches!(err, PkiError::MissingFile { what: "ca-key", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let long = "a".repeat(65);
        for bad in [
            "",
            "a b",
            "a/b",
            "../x",
            "é",
            "ca",
            "ca-key",
            ".",
            "..",
            long.as_str(),
        ] {
            let err = issue(dir.path(), dir.path(), Role::Worker, bad, &[], &[]).unwrap_err();
            assert!(
                matches!(err, PkiError::InvalidName { .. }),
                "{bad:?}: {err:?}"
            );
        }
        for good in ["a", "A-z_0.9", &"x".repeat(64)] {
            validate_name(good).unwrap();
        }
        assert!(!dir.path().join("a b.pem").exists());
    }

    #[test]
    fn identity_errors_are_reported() {
        // A certificate without any Ferry URI.
        let plain = rcgen::generate_simple_self_signed(vec!["example.org".to_string()]).unwrap();
        let err = identity_from_der(plain.cert.der()).unwrap_err().to_string();
        assert!(err.contains("no Ferry identity"), "{err}");

        // A malformed Ferry URI.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://ferry/admin/root".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        let err = identity_from_der(cert.der()).unwrap_err().to_string();
        assert!(err.contains("malformed") && err.contains("admin"), "{err}");

        let err = identity_from_der(b"not der").unwrap_err().to_string();
        assert!(err.contains("cannot parse"), "{err}");
    }

    #[test]
    fn load_reports_missing_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        issue_simple(dir.path(), dir.path(), Role::Worker, "w1");

        let files = TlsFiles::in_dir(dir.path(), "w1");
        assert_eq!(files.ca, dir.path().join("ca.pem"));
        assert_eq!(files.cert, dir.path().join("w1.pem"));
        assert_eq!(files.key, dir.path().join("w1-key.pem"));
        let material = files.load().unwrap();
        assert_eq!(
            material.identity,
            Identity {
                role: Role::Worker,
                name: "w1".to_string()
            }
        );

        fs::remove_file(&files.key).unwrap();
        let err = files.load().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, PkiError::MissingFile { what: "key", .. }),
            "{err:?}"
        );
        assert!(msg.contains("(key)"), "{msg}");
        assert!(msg.contains(&files.key.display().to_string()), "{msg}");
        assert!(msg.contains("ferry certs issue"), "{msg}");

        let other = TlsFiles::in_dir(dir.path(), "nobody");
        let msg = other.load().unwrap_err().to_string();
        assert!(msg.starts_with("TLS certificate file"), "{msg}");
        assert!(msg.contains("(cert)"), "{msg}");

        fs::write(&files.key, b"hello").unwrap();
        let err = files.load().unwrap_err();
        assert!(
            matches!(err, PkiError::BadFile { what: "key", .. }),
            "{err:?}"
        );

        issue_simple(dir.path(), dir.path(), Role::Worker, "w1");
        fs::write(&files.ca, b"not a certificate").unwrap();
        let err = files.load().unwrap_err();
        assert!(
            matches!(err, PkiError::BadFile { what: "ca", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn serials_parse_into_one_form() {
        assert_eq!(parse_serial("4F:0C:00:e1").unwrap(), "4f0c00e1");
        assert_eq!(parse_serial(" 0x00ab ").unwrap(), "ab");
        assert_eq!(parse_serial("00:01").unwrap(), "1");
        assert_eq!(parse_serial(&"f".repeat(40)).unwrap(), "f".repeat(40));
        for bad in ["", ":", "0x", "00:00", "12g4", "bob", &"1".repeat(41)] {
            let error = parse_serial(bad).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid serial number"),
                "{bad:?}: {error}"
            );
        }
        assert!(looks_like_serial("4f:0c"));
        assert!(looks_like_serial("0123456789abcdef"));
        assert!(!looks_like_serial("user-b"));
        assert!(!looks_like_serial("deadbeef"));
    }

    #[test]
    fn validities_parse_within_bounds() {
        let day = 24 * 60 * 60;
        assert_eq!(
            parse_validity("90d").unwrap(),
            Duration::from_secs(90 * day)
        );
        assert_eq!(
            parse_validity("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            parse_validity("30d 12h").unwrap(),
            Duration::from_secs(30 * day + 12 * 3600)
        );
        assert_eq!(parse_validity("1m").unwrap(), MIN_VALIDITY);
        for bad in ["", "soon", "10s", "0d", "90", "20000d", "-1h"] {
            let error = parse_validity(bad).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid validity"),
                "{bad:?}: {error}"
            );
        }
        assert_eq!(default_validity(Role::Client), CLIENT_VALIDITY);
        assert_eq!(default_validity(Role::Worker), DAEMON_VALIDITY);
        assert_eq!(default_validity(Role::Coordinator), DAEMON_VALIDITY);
    }

    #[test]
    fn issued_certificates_carry_their_serial_issue_time_and_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let hour = Duration::from_secs(3600);
        let paths =
            issue_valid_for(dir.path(), dir.path(), Role::Client, "bob", &[], &[], hour).unwrap();
        let facts = certificate_facts(&der_of(&paths.cert)).unwrap();
        assert_eq!(facts.serial, paths.serial);
        assert_eq!(facts.not_after_secs, paths.not_after_secs);
        assert!(
            (now_secs + 3590..=now_secs + 3610).contains(&facts.not_after_secs),
            "notAfter {} for now {now_secs}",
            facts.not_after_secs
        );
        // The issue time is the moment of issue (notBefore is backdated an hour).
        let issued_secs = facts.issued_ms / 1000;
        assert!(
            (now_secs - 5..=now_secs + 5).contains(&issued_secs),
            "issued {issued_secs} for now {now_secs}"
        );
        assert_eq!(facts.identity.name, "bob");
        assert_eq!(parse_serial(&facts.serial).unwrap(), facts.serial);
        assert!(facts.serial.len() >= 30, "{}", facts.serial);
        // Every certificate has its own serial, even for the same name.
        let again = issue(dir.path(), dir.path(), Role::Client, "bob", &[], &[]).unwrap();
        assert_ne!(again.serial, paths.serial);
        // A lifetime out of bounds is refused.
        let error = issue_valid_for(
            dir.path(),
            dir.path(),
            Role::Client,
            "carol",
            &[],
            &[],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(error, PkiError::InvalidValidity { .. }), "{error}");
        assert!(!dir.path().join("carol.pem").exists());
    }

    #[test]
    fn peer_identity_requires_a_certificate() {
        let request = tonic::Request::new(());
        let status = peer_identity(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = require_role(&request, Role::Worker).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_different_role_is_denied() {
        let caller = Identity {
            role: Role::Client,
            name: "alice".to_string(),
        };
        assert_eq!(check_role(caller.clone(), Role::Client).unwrap(), caller);
        let status = check_role(caller, Role::Worker).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "this service accepts worker certificates only; the caller presented a client \
             certificate for \"alice\""
        );
    }

    #[test]
    fn tonic_configs_build() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        issue_simple(dir.path(), dir.path(), Role::Coordinator, "member-1");
        let material = TlsFiles::in_dir(dir.path(), "member-1").load().unwrap();
        let never: crate::tls_server::DenyCheck = Arc::new(|_: &CertificateFacts| None);
        crate::tls_server::server_config(&material, never).unwrap();
        let _client = material.client_config("localhost");
    }

    /// Runs a full mutual-TLS handshake in memory with rustls (what tonic uses), to
    /// prove the issued certificates carry the right extensions for their roles.
    fn handshake(dir: &Path, server: &str, client: &str) -> Result<Identity, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let load = |name: &str| TlsFiles::in_dir(dir, name).load().unwrap();
        let (s, c) = (load(server), load(client));
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&s.ca_pem) {
            roots.add(ca.unwrap()).unwrap();
        }
        let roots = Arc::new(roots);
        let chain = |m: &TlsMaterial| vec![CertificateDer::from_pem_slice(&m.cert_pem).unwrap()];
        let key = |m: &TlsMaterial| PrivateKeyDer::from_pem_slice(&m.key_pem).unwrap();

        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(&s), key(&s))
            .unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain(&c), key(&c))
            .unwrap();
        let mut sconn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let mut cconn =
            rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();

        for _ in 0..20 {
            let mut buf = Vec::new();
            cconn.write_tls(&mut buf).unwrap();
            sconn.read_tls(&mut buf.as_slice()).unwrap();
            sconn
                .process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            let mut buf = Vec::new();
            sconn.write_tls(&mut buf).unwrap();
            cconn.read_tls(&mut buf.as_slice()).unwrap();
            cconn
                .process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
            if !sconn.is_handshaking() && !cconn.is_handshaking() {
                let certs = sconn.peer_certificates().ok_or("no client certificate")?;
                return identity_from_der(&certs[0]).map_err(|e| e.to_string());
            }
        }
        Err("handshake did not finish".to_string())
    }

    #[test]
    fn issued_certificates_work_for_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        issue_simple(dir.path(), dir.path(), Role::Coordinator, "member-1");
        issue_simple(dir.path(), dir.path(), Role::Worker, "w1");
        issue_simple(dir.path(), dir.path(), Role::Client, "alice");

        for (client, role) in [
            ("w1", Role::Worker),
            ("alice", Role::Client),
            ("member-1", Role::Coordinator),
        ] {
            let identity = handshake(dir.path(), "member-1", client).unwrap();
            assert_eq!(identity.role, role);
            assert_eq!(identity.name, client);
        }
        // A worker certificate cannot serve: it lacks the server-auth usage.
        let err = handshake(dir.path(), "w1", "alice").unwrap_err();
        assert!(err.starts_with("client:"), "{err}");

        // A client certificate from another cluster is refused by the server.
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path()).unwrap();
        issue_simple(other.path(), dir.path(), Role::Client, "mallory");
        let err = handshake(dir.path(), "member-1", "mallory").unwrap_err();
        assert!(err.starts_with("server:"), "{err}");
    }
}
