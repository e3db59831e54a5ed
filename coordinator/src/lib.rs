//! Ferry's coordinator: it holds every pipeline, run, step, worker and artifact
//! record, schedules ready steps onto workers, and serves the control (clients) and
//! agent (workers) gRPC services over mutual TLS.
//!
//! Code map: [`state`], [`scheduler`] and [`query`] are the pure core (the crate
//! `ferry-coordinator-core`, re-exported here); [`consensus`] is Raft around any
//! state machine (driver, log storage, transport); [`node`] is the runtime that
//! drives it (authorization, assignments, worker streams, the leader's loops);
//! [`store`] holds what lives beside the Raft log (live log lines; the snapshot
//! encoding; the state itself is durable as the log's snapshot plus its entries);
//! [`blobs`] and [`replication`] keep content-addressed blobs on a majority;
//! [`api`] holds the thin tonic services.

pub mod api;
pub mod blobs;
pub mod config;
pub mod consensus;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod store;

/// The pure core, a crate of its own: `crate::state`, `crate::scheduler` and
/// `crate::query` are its modules.
pub use ferry_coordinator_core::{access, query, scheduler, state};

use std::net::SocketAddr;

use api::limits::{
    MAX_PEER_STREAMS_PER_CONNECTION, MAX_STREAMS_PER_CONNECTION, deny_list_of, role_gate,
};
use ferry_common::pki::{CertificateFacts, PkiError, Role, TlsMaterial};
use ferry_common::proto::{
    agent_server::AgentServer, control_server::ControlServer, peer_server::PeerServer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

pub use config::CoordinatorConfig;

/// Largest gRPC message a worker may send (a chunk is 256 KiB); clients may
/// send a pipeline file up to `spec::MAX_SUBMIT_MESSAGE_BYTES`.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Tls(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error("this coordinator stopped serving: {0}")]
    Stopped(String),
    #[error(transparent)]
    Blobs(#[from] blobs::BlobError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot create the data directory {path} or make it private: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// Most TLS handshakes one server runs at once; a connection beyond them is
/// closed at once (the others go on).
const MAX_HANDSHAKES: usize = 1024;
/// Longest a TLS handshake may take: a caller that stalls in it is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long open calls may take to finish once the servers stop.
const SERVER_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for a server task, aborting it after `limit`.
async fn finish_within(
    mut task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    limit: std::time::Duration,
) -> Result<(), tonic::transport::Error> {
    match tokio::time::timeout(limit, &mut task).await {
        Ok(result) => result.unwrap_or(Ok(())),
        Err(_) => {
            task.abort();
            tracing::info!("open calls ended at shutdown");
            Ok(())
        }
    }
}

/// A coordinator ready to serve: TLS loaded, state opened, port bound.
pub struct Coordinator {
    tls: TlsMaterial,
    config: CoordinatorConfig,
    listener: TcpListener,
    peer_listener: Option<TcpListener>,
    /// `[metrics] listen`, bound.
    metrics_listener: Option<TcpListener>,
    /// Registers more families beside the coordinator's (`export_also`).
    also_exported: Vec<RegisterMore>,
}

/// Registers families in the registry a coordinator serves.
pub type RegisterMore = Box<dyn FnOnce(&mut prometheus_client::registry::Registry) + Send>;

impl Coordinator {
    /// Loads the TLS material (refusing to start without it), opens the data
    /// directory and binds the listening port.
    pub async fn bind(config: CoordinatorConfig) -> Result<Coordinator, CoordinatorError> {
        let tls = config.tls.load()?;
        // A coordinator certificate speaks for one member: the peer service of
        // every other member holds the caller to the member id it names. Checked
        // before anything is created or bound, like the configuration.
        config.initial_members().map_err(node::NodeError::from)?;
        ferry_common::pki::check_own_member_certificate(&tls.identity, config.id)?;
        // Made durable: the Raft log inside it must not vanish with its name.
        ferry_common::durable::create_dir_all(&config.data_dir).map_err(|source| {
            CoordinatorError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            }
        })?;
        // A data directory made by an older version (or by hand) may be open to
        // other users: its state, snapshots, blobs and log are not theirs.
        match ferry_common::durable::tighten_tree(&config.data_dir) {
            Ok(0) => {}
            Ok(changed) => tracing::warn!(
                data_dir = %config.data_dir.display(),
                changed,
                "took group and other permissions away from files and directories in the data directory"
            ),
            Err(source) => {
                return Err(CoordinatorError::DataDir {
                    path: config.data_dir.display().to_string(),
                    source,
                });
            }
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| CoordinatorError::Bind {
                    address: config.listen,
                    source,
                })?;
        let peer_listener = match config.peer_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| CoordinatorError::Bind { address, source })?,
            ),
            None => None,
        };
        let metrics_listener = match config.metrics.listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| CoordinatorError::Bind { address, source })?,
            ),
            None => None,
        };
        // Port 0 asks the system for a port: record the one it gave, since a
        // one-member cluster names itself by its listening address.
        let mut config = config;
        if let Ok(address) = listener.local_addr() {
            config.listen = address;
        }
        if let Some(address) = peer_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            config.peer_listen = Some(address);
        }
        Ok(Coordinator {
            tls,
            config,
            listener,
            peer_listener,
            metrics_listener,
            also_exported: Vec::new(),
        })
    }

    /// Where peers reach this coordinator (the client address unless `peer_listen`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| self.local_addr())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves the families `register` adds beside the coordinator's (`ferry
    /// dev`: its worker's, on the one address).
    pub fn export_also(&mut self, register: RegisterMore) {
        self.also_exported.push(register);
    }

    /// Where `GET /metrics` is served, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` turns true; a leader first hands leadership to an
    /// up-to-date follower. Stops by itself (with an error) when this member can no
    /// longer serve: its storage failed, or it was removed from the cluster.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), CoordinatorError> {
        let store = store::Store::open(&self.config.data_dir.join("state"))?;
        let blobs = blobs::BlobStore::from_settings(
            &self.config.blobs,
            &self.config.data_dir,
            self.config.max_blob_bytes,
        )?;
        let (stop_tasks, tasks_shutdown) = watch::channel(false);
        let (node, tasks) = node::Node::start(
            &self.config,
            self.tls.clone(),
            store,
            blobs,
            tasks_shutdown.clone(),
        )?;
        tracing::info!(id = self.config.id, address = %self.local_addr(), peer_address = %self.peer_addr(), "coordinator serving");
        // Each service checks the caller's role, and that its certificate is not
        // revoked, on every call's headers, before its body is read or decoded
        // (the handlers check the role again, and take the caller's identity
        // from the same certificate).
        // Each client call runs with the id its client gave it in scope
        // (`api::request_id`), which the audit log uses to tell repeats.
        let control = api::request_id::RequestScope(InterceptedService::new(
            ControlServer::new(api::ControlService::new(node.clone()))
                .max_decoding_message_size(ferry_common::spec::MAX_SUBMIT_MESSAGE_BYTES),
            role_gate(Role::Client, deny_list_of(node.clone())),
        ));
        let agent = InterceptedService::new(
            AgentServer::new(api::AgentService::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            role_gate(Role::Worker, deny_list_of(node.clone())),
        );
        let peer = InterceptedService::new(
            PeerServer::new(api::PeerService::new(node.clone()))
                .max_decoding_message_size(consensus::transport::MAX_PEER_MESSAGE_BYTES),
            role_gate(Role::Coordinator, deny_list_of(node.clone())),
        );
        let (stop_servers, servers_shutdown) = watch::channel(false);
        // Every call is counted and timed; served only with `[metrics] listen`.
        let mut exported = metrics::exported(&node);
        for register in self.also_exported {
            register(&mut exported.registry);
        }
        let grpc_metrics = exported.grpc.clone();
        let mut metrics_server = self.metrics_listener.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "serving Prometheus metrics at /metrics");
            tokio::spawn(ferry_common::metrics::serve(
                listener,
                std::sync::Arc::new(exported.registry),
                exported.refresh,
                until_stopped_owned(servers_shutdown.clone()),
            ))
        });
        let until_stopped = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|s| *s).await;
        };
        // The TLS handshake itself refuses a revoked certificate (as this member
        // has applied the deny list): such a caller gets no connection at all.
        let denied = deny_list_of(node.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            ferry_common::tls_server::server_config(
                &self.tls,
                std::sync::Arc::new(move |facts: &CertificateFacts| denied(facts)),
            )?,
        ));
        let mut main_server =
            server_builder(&grpc_metrics).max_concurrent_streams(if self.peer_listener.is_some() {
                MAX_STREAMS_PER_CONNECTION
            } else {
                MAX_PEER_STREAMS_PER_CONNECTION
            });
        let main_router = main_server.add_service(control).add_service(agent);
        let (main_router, mut peer_server) = match self.peer_listener {
            Some(listener) => {
                let server = server_builder(&grpc_metrics)
                    .max_concurrent_streams(MAX_PEER_STREAMS_PER_CONNECTION)
                    .add_service(peer)
                    .serve_with_incoming_shutdown(
                        tls_incoming(listener, acceptor.clone()),
                        until_stopped(servers_shutdown.clone()),
                    );
                (main_router, Some(tokio::spawn(server)))
            }
            None => (main_router.add_service(peer), None),
        };
        let mut main = tokio::spawn(main_router.serve_with_incoming_shutdown(
            tls_incoming(self.listener, acceptor),
            until_stopped(servers_shutdown),
        ));
        let mut stopped = node.subscribe_stop();
        // A server that ends by itself is a death like any other task's: the
        // member stops (fail-stop) instead of running Raft with nobody to serve.
        let peer_ended = async {
            match &mut peer_server {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        };
        let metrics_ended = async {
            match &mut metrics_server {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        };
        let failure = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {
                node.step_down().await;
                None
            }
            reason = stopped.wait_for(|r| r.is_some()) => reason.ok().and_then(|r| r.clone()),
            ended = &mut main => Some(server_death("client and worker", ended)),
            ended = peer_ended => Some(server_death("peer", ended)),
            ended = metrics_ended => Some(metrics_death(ended)),
        };
        let _ = stop_servers.send(true);
        let _ = stop_tasks.send(true);
        tasks.join().await;
        node.store.flush().await?;
        // Long-lived calls (worker streams, `logs -f`, other members' Raft streams)
        // would hold a graceful server shutdown open forever: give them a moment,
        // then end them; their callers move to another member.
        let served = finish_within(main, SERVER_DRAIN).await;
        if let Some(peer_server) = peer_server {
            finish_within(peer_server, SERVER_DRAIN).await?;
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        served?;
        match failure {
            Some(reason) => Err(CoordinatorError::Stopped(reason)),
            None => Ok(()),
        }
    }
}

/// A server with the same flow-control windows as the clients
/// (`ferry_common::channel`), so that blob frames are not held to HTTP/2's
/// default 64 KiB per round trip, whose calls `grpc` counts and times.
fn server_builder(
    grpc: &ferry_common::metrics::GrpcMetrics,
) -> tonic::transport::Server<
    tower_layer::Stack<ferry_common::metrics::GrpcMetricsLayer, tower_layer::Identity>,
> {
    tonic::transport::Server::builder()
        .initial_stream_window_size(ferry_common::channel::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(ferry_common::channel::CONNECTION_WINDOW_BYTES)
        .max_frame_size(ferry_common::channel::MAX_FRAME_BYTES)
        .layer(grpc.layer())
}

/// Resolves once `receiver` turns true (or its sender is gone).
async fn until_stopped_owned(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|s| *s).await;
}

/// Why the metrics server ended before the coordinator asked it to.
fn metrics_death(ended: Result<std::io::Result<()>, tokio::task::JoinError>) -> String {
    let detail = match ended {
        Ok(Ok(())) => "it returned".to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    };
    tracing::error!(%detail, "the metrics server stopped by itself; stopping this member");
    format!("the metrics server stopped by itself: {detail}")
}

/// Why a server task ended before the coordinator asked it to.
fn server_death(
    which: &str,
    ended: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> String {
    let detail = match ended {
        Ok(Ok(())) => "it returned".to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    };
    tracing::error!(server = which, %detail, "a gRPC server stopped by itself; stopping this member");
    format!("the {which} server stopped by itself: {detail}")
}

/// Accepted connections after their TLS handshake (with the deny-list check in
/// the acceptor's configuration). Accepting never waits on a handshake: each
/// runs in a task of its own (at most [`MAX_HANDSHAKES`] at once, each within
/// [`HANDSHAKE_TIMEOUT`]; a connection beyond that is closed at once), so
/// connections that never finish their handshake hold up no other caller.
/// tonic reads each request's client certificate from the TLS stream
/// (`Request::peer_certs`). A failed handshake is logged and dropped.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>
{
    use futures::StreamExt;
    let (ready, handshaken) = tokio::sync::mpsc::channel(64);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    // Yields only accept errors (which the server logs); every accepted socket
    // goes to a handshake task, whose stream comes out of `handshaken`.
    let accepting = no_delay(listener).filter_map(move |accepted| {
        let outcome = match accepted {
            Err(error) => Some(Err(error)),
            Ok(socket) => {
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let (acceptor, ready) = (acceptor.clone(), ready.clone());
                        tokio::spawn(async move {
                            let peer = socket.peer_addr().ok();
                            let handshake = acceptor.accept(socket);
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                                Ok(Ok(stream)) => {
                                    drop(slot);
                                    // The server is gone when nobody receives.
                                    let _ = ready.send(stream).await;
                                }
                                Ok(Err(error)) => {
                                    tracing::debug!(?peer, %error, "a TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(
                                    ?peer,
                                    "a TLS handshake took longer than {HANDSHAKE_TIMEOUT:?}"
                                ),
                            }
                        });
                    }
                    Err(_) => tracing::warn!(
                        "{MAX_HANDSHAKES} TLS handshakes are under way: a new connection was \
                         closed"
                    ),
                }
                None
            }
        };
        std::future::ready(outcome)
    });
    let handshaken = tokio_stream::wrappers::ReceiverStream::new(handshaken).map(Ok);
    futures::stream::select(accepting, handshaken)
}

/// Accepted connections with Nagle's algorithm off: a server given its own
/// listener does not set TCP_NODELAY, and small writes (an assignment on a
/// worker's stream, a Raft acknowledgement) would otherwise wait for the peer's
/// delayed ACK.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        })
    })
}
