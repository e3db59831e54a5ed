//! Ferry's coordinator: it holds every pipeline, run, step, worker and artifact
//! record, schedules ready steps onto workers, and serves the control (clients) and
//! agent (workers) gRPC services over mutual TLS.
//!
//! Code map: [`state`] is the deterministic state machine; [`store`] persists it in
//! sled with its applied index; [`scheduler`] is pure placement; [`node`] is the
//! runtime (apply loop, scheduling loop, worker streams); [`blobs`] is the
//! content-addressed blob store; [`api`] holds the thin tonic services.

pub mod api;
pub mod blobs;
pub mod config;
pub mod node;
pub mod scheduler;
pub mod state;
pub mod store;

use std::net::SocketAddr;

use ferry_common::pki::{PkiError, TlsMaterial};
use ferry_common::proto::{agent_server::AgentServer, control_server::ControlServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::CoordinatorConfig;

/// Largest gRPC message accepted (a chunk is 256 KiB; a spec at most 1 MiB).
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Tls(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Blobs(#[from] blobs::BlobError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// A coordinator ready to serve: TLS loaded, state opened, port bound.
pub struct Coordinator {
    tls: TlsMaterial,
    config: CoordinatorConfig,
    listener: TcpListener,
}

impl Coordinator {
    /// Loads the TLS material (refusing to start without it), opens the data
    /// directory and binds the listening port.
    pub async fn bind(config: CoordinatorConfig) -> Result<Coordinator, CoordinatorError> {
        let tls = config.tls.load()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| CoordinatorError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| CoordinatorError::Bind {
                    address: config.listen,
                    source,
                })?;
        Ok(Coordinator {
            tls,
            config,
            listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` turns true, then stops the background loops.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) -> Result<(), CoordinatorError> {
        let store = store::Store::open(&self.config.data_dir.join("state"))?;
        let blobs = blobs::BlobStore::open(
            &self.config.data_dir.join("blobs"),
            self.config.max_blob_bytes,
        )?;
        let (node, tasks) = node::Node::start(store, blobs, shutdown.clone())?;
        tracing::info!(address = %self.local_addr(), "coordinator serving");
        let control = ControlServer::new(api::ControlService::new(node.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let agent = AgentServer::new(api::AgentService::new(node.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut stop = shutdown.clone();
        let result = tonic::transport::Server::builder()
            .tls_config(self.tls.server_config())?
            .add_service(control)
            .add_service(agent)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        tasks.join().await;
        node.store.flush().await?;
        result?;
        Ok(())
    }
}
