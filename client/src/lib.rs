//! The `ferry` client: configuration (flags, environment, config file), a
//! connection helper with errors a user can act on, and `ferry dev`.
//!
//! API boundary: other tools can use [`ClientConfig`] and [`connect`] to talk to a
//! Ferry cluster with the generated `ControlClient`.

pub mod config;
pub mod dev;

pub use config::{ClientConfig, ConfigError, default_config_path};

use ferry_common::proto::control_client::ControlClient;
use tonic::transport::Channel;

/// Largest message the client accepts.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] ferry_common::pki::PkiError),
    #[error(transparent)]
    Address(#[from] ferry_common::channel::ChannelError),
    #[error(
        "cannot reach the coordinator at {address}: {detail} — is 'ferry dev' or a cluster running? \
         (set the address with --coordinator, FERRY_COORDINATOR or the client config file)"
    )]
    Unreachable { address: String, detail: String },
}

/// Connects to the coordinator now, so that an unreachable address is reported
/// before any work is done.
pub async fn connect(config: &ClientConfig) -> Result<ControlClient<Channel>, ConnectError> {
    let tls = config.tls.load()?;
    let channel = ferry_common::channel::endpoint(&config.coordinator, &tls)?
        .connect()
        .await
        .map_err(|error| ConnectError::Unreachable {
            address: config.coordinator.clone(),
            detail: root_cause(&error),
        })?;
    Ok(ControlClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The innermost message of an error chain ("connection refused", not "transport error").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
