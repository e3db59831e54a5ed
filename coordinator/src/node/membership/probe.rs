//! Whether an address is a coordinator of this cluster: a TLS handshake with the
//! cluster CA as the only root and this member's certificate as the client's,
//! then the identity in the server's certificate (`spiffe://ferry/<role>/<name>`)
//! must have the coordinator role. tonic's channel checks the chain and the host
//! name but not the role, so the handshake is made here, once per learner, before
//! it may vote.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::pki::{Identity, Role, TlsMaterial, identity_from_der};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Shakes hands with `address` (`HOST:PORT`) and returns the identity in its
/// certificate if it is a coordinator's; blocks up to about `timeout` per step
/// (connect, then each read or write), so call it on a blocking thread.
pub fn probe_coordinator(
    address: &str,
    tls: &TlsMaterial,
    timeout: Duration,
) -> Result<Identity, String> {
    let (_, host) =
        ferry_common::channel::parse_address(address).map_err(|error| error.to_string())?;
    let target = address
        .strip_prefix("https://")
        .unwrap_or(address)
        .trim_end_matches('/');
    let socket_address = target
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {target}: {error}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))?;
    let mut socket = TcpStream::connect_timeout(&socket_address, timeout)
        .map_err(|error| format!("cannot connect to {target}: {error}"))?;
    socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
        .map_err(|error| format!("cannot set a timeout on the connection: {error}"))?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|error| format!("\"{host}\" is not a host name: {error}"))?;
    let mut connection = rustls::ClientConnection::new(Arc::new(client_config(tls)?), server_name)
        .map_err(|error| format!("cannot start TLS: {error}"))?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|error| format!("the TLS handshake with {target} failed: {error}"))?;
    }
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| format!("{target} presented no certificate"))?;
    let identity = coordinator_identity(target, leaf.as_ref());
    // Said politely; whether it arrives does not matter.
    connection.send_close_notify();
    let _ = connection.write_tls(&mut socket);
    let _ = socket.flush();
    identity
}

/// The identity in the certificate `target` presented, if it is a coordinator's.
/// (The handshake already refuses a worker's or a client's certificate, which
/// are not issued for serving; this also refuses any other certificate of the
/// CA that does not carry the coordinator role.)
fn coordinator_identity(target: &str, der: &[u8]) -> Result<Identity, String> {
    let identity = identity_from_der(der)
        .map_err(|error| format!("the certificate of {target} is not a Ferry one: {error}"))?;
    if identity.role != Role::Coordinator {
        return Err(format!(
            "{target} presented a {} certificate (for \"{}\"), not a coordinator's",
            identity.role, identity.name
        ));
    }
    Ok(identity)
}

/// The client side of the handshake: the cluster CA as the only root, this
/// member's certificate to present (a coordinator's peer service asks for one).
fn client_config(tls: &TlsMaterial) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        let certificate =
            certificate.map_err(|error| format!("the CA certificate does not read: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("the CA certificate is not usable: {error}"))?;
    }
    let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("this member's certificate does not read: {error}"))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem)
        .map_err(|error| format!("this member's key does not read: {error}"))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| format!("this member's certificate is not usable: {error}"))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;

    use ferry_common::pki::{TlsFiles, init_ca, issue};

    use super::*;

    /// A TLS server on a real socket presenting `name`'s certificate, for one
    /// handshake; returns its address.
    fn serve_once(certs: &Path, name: &str) -> (String, std::thread::JoinHandle<()>) {
        let material = TlsFiles::in_dir(certs, name).load().unwrap();
        let chain = CertificateDer::pem_slice_iter(&material.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&material.key_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            while connection.is_handshaking() {
                if connection.complete_io(&mut socket).is_err() {
                    break;
                }
            }
        });
        (address, server)
    }

    #[test]
    fn only_a_coordinator_certificate_of_this_cluster_passes() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path();
        init_ca(certs).unwrap();
        let localhost = ["127.0.0.1".parse().unwrap()];
        issue(certs, certs, Role::Coordinator, "member-1", &[], &localhost).unwrap();
        issue(certs, certs, Role::Coordinator, "member-2", &[], &localhost).unwrap();
        issue(certs, certs, Role::Worker, "w1", &[], &localhost).unwrap();
        let mine = TlsFiles::in_dir(certs, "member-1").load().unwrap();

        let (address, server) = serve_once(certs, "member-2");
        let identity = probe_coordinator(&address, &mine, Duration::from_secs(5)).unwrap();
        assert_eq!(identity.name, "member-2");
        server.join().unwrap();

        // A worker's certificate is not issued for serving: the handshake fails;
        // and its identity would not pass either.
        let (address, server) = serve_once(certs, "w1");
        let refusal = probe_coordinator(&address, &mine, Duration::from_secs(5)).unwrap_err();
        assert!(refusal.contains("the TLS handshake"), "{refusal}");
        server.join().unwrap();
        let worker = TlsFiles::in_dir(certs, "w1").load().unwrap();
        let der = CertificateDer::from_pem_slice(&worker.cert_pem).unwrap();
        let refusal = coordinator_identity("w1:7444", der.as_ref()).unwrap_err();
        assert_eq!(
            refusal,
            "w1:7444 presented a worker certificate (for \"w1\"), not a coordinator's"
        );

        // A coordinator of another cluster (another CA) fails the handshake.
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path()).unwrap();
        issue(
            other.path(),
            other.path(),
            Role::Coordinator,
            "member-9",
            &[],
            &localhost,
        )
        .unwrap();
        let (address, server) = serve_once(other.path(), "member-9");
        let refusal = probe_coordinator(&address, &mine, Duration::from_secs(5)).unwrap_err();
        assert!(refusal.contains("the TLS handshake"), "{refusal}");
        server.join().unwrap();

        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let refusal = probe_coordinator(&address, &mine, Duration::from_secs(5)).unwrap_err();
        assert!(refusal.starts_with("cannot connect to"), "{refusal}");
    }
}
