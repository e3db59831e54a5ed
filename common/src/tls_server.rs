//! The server side of Ferry's mutual TLS: a rustls configuration whose client
//! certificate check is the cluster CA's (WebPKI) and then the replicated deny
//! list, so that a revoked certificate fails the TLS handshake itself and never
//! gets a connection. (tonic's `ServerTlsConfig` takes no custom verifier; a
//! coordinator serves with this configuration through a tokio-rustls acceptor,
//! and tonic still reads the caller's certificate from each request.)
//!
//! The deny list is a function given by the caller: this module knows nothing
//! about where the list lives. Like [`crate::pki`], it opens no sockets.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::pki::{CertificateFacts, PkiError, TlsMaterial, certificate_facts};

/// The protocol a gRPC server speaks, offered in the handshake (ALPN).
const ALPN_H2: &[u8] = b"h2";

/// Why a certificate is refused, if it is: the deny list as the server knows it
/// at the moment of the handshake.
pub type DenyCheck = Arc<dyn Fn(&CertificateFacts) -> Option<String> + Send + Sync>;

/// A client certificate verifier: the cluster CA's chain check, then the deny
/// list. A certificate that carries no Ferry identity passes here when its
/// chain does: the check on each request refuses it with a message the caller
/// can read, which a handshake alert cannot carry.
pub struct DenyListVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    denied: DenyCheck,
}

impl fmt::Debug for DenyListVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenyListVerifier")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl DenyListVerifier {
    /// The verifier for certificates issued by the CA(s) in `ca_pem`.
    pub fn new(ca_pem: &[u8], denied: DenyCheck) -> Result<DenyListVerifier, String> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem) {
            let certificate =
                certificate.map_err(|e| format!("the CA certificate does not read: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
        }
        let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| format!("cannot check client certificates: {e}"))?;
        Ok(DenyListVerifier { chain, denied })
    }
}

impl ClientCertVerifier for DenyListVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Ok(facts) = certificate_facts(end_entity.as_ref())
            && let Some(reason) = (self.denied)(&facts)
        {
            tracing::warn!(
                caller = %facts.identity,
                serial = %facts.serial,
                reason,
                "refused a TLS handshake: the client certificate is revoked"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS settings of a gRPC server of this member: its certificate and key,
/// client certificates required, checked against the cluster CA and then
/// against `denied` during the handshake, and HTTP/2 offered.
pub fn server_config(
    material: &TlsMaterial,
    denied: DenyCheck,
) -> Result<rustls::ServerConfig, PkiError> {
    // The material was checked when it was loaded; these fail only on a key
    // type rustls does not take.
    let bad = PkiError::Certificate;
    let verifier = DenyListVerifier::new(&material.ca_pem, denied).map_err(bad)?;
    let chain = CertificateDer::pem_slice_iter(&material.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("this member's certificate is not valid PEM ({e})")))?;
    let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
        .map_err(|e| bad(format!("this member's key is not a PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Certificate(format!("TLS: {e}")))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(|e| {
            bad(format!(
                "this member's certificate does not go with its key: {e}"
            ))
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Role, TlsFiles, init_ca, issue};

    /// One in-memory handshake between `client` and a server of `server`'s
    /// certificate that refuses what `denied` refuses; the server's error, if any.
    fn handshake(
        dir: &std::path::Path,
        server: &str,
        client: &str,
        denied: DenyCheck,
    ) -> Result<(), String> {
        let load = |name: &str| TlsFiles::in_dir(dir, name).load().unwrap();
        let (s, c) = (load(server), load(client));
        let server_config = server_config(&s, denied).unwrap();
        assert_eq!(server_config.alpn_protocols, vec![b"h2".to_vec()]);
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&c.ca_pem) {
            roots.add(ca.unwrap()).unwrap();
        }
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(&c.cert_pem).unwrap()],
                PrivateKeyDer::from_pem_slice(&c.key_pem).unwrap(),
            )
            .unwrap();
        let mut sconn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let mut cconn =
            rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            cconn.write_tls(&mut buf).unwrap();
            sconn.read_tls(&mut buf.as_slice()).unwrap();
            sconn.process_new_packets().map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            sconn.write_tls(&mut buf).unwrap();
            cconn.read_tls(&mut buf.as_slice()).unwrap();
            let _ = cconn.process_new_packets();
            if !sconn.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".to_string())
    }

    #[test]
    fn a_denied_certificate_fails_the_handshake_and_others_pass() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        issue(
            dir.path(),
            dir.path(),
            Role::Coordinator,
            "member-1",
            &[],
            &[],
        )
        .unwrap();
        let bob = issue(dir.path(), dir.path(), Role::Client, "bob", &[], &[]).unwrap();
        issue(dir.path(), dir.path(), Role::Client, "alice", &[], &[]).unwrap();
        let bob_serial = bob.serial.clone();
        let denied: DenyCheck = Arc::new(move |facts: &CertificateFacts| {
            (facts.serial == bob_serial).then(|| "revoked by the test".to_string())
        });
        handshake(dir.path(), "member-1", "alice", denied.clone()).unwrap();
        let error = handshake(dir.path(), "member-1", "bob", denied).unwrap_err();
        assert!(error.contains("Revoked"), "{error}");

        // A certificate of another CA still fails on its chain, before the list.
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path()).unwrap();
        issue(other.path(), dir.path(), Role::Client, "mallory", &[], &[]).unwrap();
        let never: DenyCheck = Arc::new(|_: &CertificateFacts| None);
        let error = handshake(dir.path(), "member-1", "mallory", never).unwrap_err();
        assert!(!error.contains("Revoked"), "{error}");
    }
}
