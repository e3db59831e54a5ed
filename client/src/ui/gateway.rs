//! The UI's way to the cluster: one [`Connection`] (the CLI's, with its
//! failover), shared by every request. A call goes out on the current member
//! without waiting for the others; only when it fails in a way another member
//! may not does it take the connection and retry with the CLI's rules.

use std::future::Future;

use ferry_client::{ClientConfig, ConnectError, Connection, worth_retrying_elsewhere};
use ferry_common::proto::control_client::ControlClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;

pub(crate) struct Gateway {
    connection: Mutex<Connection>,
    /// The name in the user's certificate (who the cluster sees).
    identity: String,
}

impl Gateway {
    /// Connects now, so that an unreachable cluster stops `ferry ui` at once.
    pub(crate) async fn open(config: &ClientConfig) -> Result<Gateway, ConnectError> {
        let identity = ferry_common::pki::certificate_facts_of_file(&config.tls.cert)
            .map(|facts| facts.identity.name)
            .unwrap_or_else(|_| "the configured certificate".to_string());
        let connection = Connection::open(config).await?;
        Ok(Gateway {
            connection: Mutex::new(connection),
            identity,
        })
    }

    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// A client on the member connected to now, for a stream that outlives one
    /// request (the caller handles its end).
    pub(crate) async fn client(&self) -> ControlClient<Channel> {
        self.connection.lock().await.client()
    }

    /// A unary call, safe to repeat (a read, or a write carrying its request
    /// id).
    pub(crate) async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client().await;
        match call(client).await {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) if worth_retrying_elsewhere(&status) => {
                self.connection.lock().await.call(call).await
            }
            Err(status) => Err(ferry_client::revoked_in_handshake(&status).unwrap_or(status)),
        }
    }
}
