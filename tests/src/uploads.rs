//! The control service called directly, as the CLI would not: a client of the
//! cluster's client user, and a code bundle uploaded without a submission.

use std::path::Path;
use std::time::Duration;

use ferry_common::proto::{self, control_client::ControlClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{CLIENT, Cluster};

/// A runtime with rustls's ring provider installed.
pub fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// The control service as the cluster's client user; connects on first use.
pub fn control(cluster: &Cluster) -> ControlClient<Channel> {
    let read = |path: &Path| std::fs::read(path).expect("TLS file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cluster.pki.ca())))
        .identity(Identity::from_pem(
            read(&cluster.pki.cert(CLIENT)),
            read(&cluster.pki.key(CLIENT)),
        ))
        .domain_name("127.0.0.1");
    let channel = Endpoint::from_shared(format!("https://{}", cluster.address()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .expect("TLS config")
        .connect_lazy();
    ControlClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// Uploads `bytes` as a bundle, whole, with their true digest and size.
pub async fn upload_bundle(
    client: &mut ControlClient<Channel>,
    bytes: Vec<u8>,
) -> Result<proto::BlobRef, tonic::Status> {
    let digest = blake3::hash(&bytes).to_hex().to_string();
    let size = bytes.len() as u64;
    let chunks: Vec<proto::Chunk> = std::iter::once(Vec::new())
        .chain(bytes.chunks(1 << 20).map(<[u8]>::to_vec))
        .map(|data| proto::Chunk {
            digest: digest.clone(),
            size,
            data: data.into(),
            zeros: 0,
            digest_last: false,
        })
        .collect();
    tokio::time::timeout(
        Duration::from_secs(30),
        client.upload_bundle(futures::stream::iter(chunks)),
    )
    .await
    .expect("the upload was answered")
    .map(tonic::Response::into_inner)
}
