//! `ferry ui`: a local web server that shows the cluster to a browser and acts
//! with the identity of the user's client certificate, like `kubectl proxy`.
//! It talks to the coordinators over the same mTLS gRPC as the CLI
//! ([`gateway`]), so no browser ever holds a certificate and the cluster's
//! authorization is unchanged: a page shows what the user may read, and an
//! action the user may not take is refused by the cluster as from the CLI.
//!
//! Pages are rendered on the server ([`views`]: minijinja templates embedded in
//! the binary, HTML-escaped automatically); graphs and charts are SVG drawn
//! here ([`dag`], [`chart`]); one small script follows a run and a log over
//! server-sent events. The two actions (cancel, re-run) are POSTs protected
//! against cross-site request forgery ([`guard`]); every request must name this
//! server in its `Host` header (no DNS rebinding).

mod chart;
mod dag;
mod error;
mod gateway;
mod guard;
mod pages;
mod query;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use self::gateway::Gateway;
use self::guard::Guard;
use self::views::Views;

/// What `ferry ui` was asked for.
pub struct UiOptions {
    /// Where to listen; loopback unless `expose`.
    pub listen: SocketAddr,
    /// Allow a non-loopback address: whoever reaches it acts as the user.
    pub expose: bool,
    /// Host names browsers reach it by, besides its address (`--allow-host`).
    pub allow_hosts: Vec<String>,
    /// Where the client configuration came from, for the banner.
    pub config_source: String,
}

/// Why `ferry ui` could not start.
#[derive(Debug, thiserror::Error)]
pub enum UiStartError {
    #[error(
        "{0} is not a loopback address: whoever reaches 'ferry ui' acts as you on the cluster. \
         Add --expose to bind it anyway, or use 127.0.0.1"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "{0} names no address a browser can use; name the host names it will be reached \
         by with --allow-host NAME (requests naming any other host are refused)"
    )]
    NoHostName(SocketAddr),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(#[from] ferry_client::ConnectError),
    #[error("the web server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares.
pub(crate) struct Ui {
    pub(crate) gateway: Gateway,
    pub(crate) views: Views,
    pub(crate) guard: Guard,
    /// Becomes true when the server stops: live streams end with it, so
    /// that an open page does not hold the shutdown.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

impl Ui {
    /// Resolves once the server is stopping.
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}

pub(crate) type Shared = Arc<Ui>;

/// Starts the server, prints its URL, and serves until `shutdown`.
pub async fn serve(
    config: &ferry_client::ClientConfig,
    options: UiOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UiStartError> {
    if !options.listen.ip().is_loopback() && !options.expose {
        return Err(UiStartError::NotLoopback(options.listen));
    }
    let gateway = Gateway::open(config).await?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| UiStartError::Listen {
            address: options.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(UiStartError::Serve)?;
    let guard = Guard::new(address, &options.allow_hosts);
    if guard.answers_nobody() {
        return Err(UiStartError::NoHostName(address));
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let ui = Arc::new(Ui {
        views: Views::new(gateway.identity().to_string()),
        guard,
        gateway,
        stopping,
    });
    println!(
        "ferry ui: http://{address} (acting as {} through {})",
        ui.gateway.identity(),
        options.config_source
    );
    if options.expose {
        println!(
            "ferry ui: listening beyond loopback: anyone who reaches {address} acts as {} \
             on the cluster",
            ui.gateway.identity()
        );
    }
    tracing::info!(%address, identity = ui.gateway.identity(), "ferry ui serving");
    axum::serve(listener, router(ui))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
        .map_err(UiStartError::Serve)
}

/// Every route of the UI.
fn router(ui: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/runs", get(pages::runs::list))
        .route("/runs/{run}", get(pages::run::page))
        .route("/runs/{run}/events", get(pages::run::events))
        .route("/runs/{run}/steps/{step}", get(pages::step::page))
        .route("/runs/{run}/steps/{step}/log", get(pages::logs::page))
        .route(
            "/runs/{run}/steps/{step}/log/events",
            get(pages::logs::events),
        )
        .route("/runs/{run}/steps/{step}/log.txt", get(pages::logs::text))
        .route("/runs/{run}/download", get(pages::step::download))
        .route("/artifacts/{digest}", get(pages::step::by_digest))
        .route("/runs/{run}/metrics", get(pages::metrics::run))
        .route("/runs/{run}/cancel", post(pages::actions::cancel))
        .route("/runs/{run}/rerun", post(pages::actions::rerun))
        .route("/compare", get(pages::metrics::compare))
        .route("/lineage/{digest}", get(pages::lineage::page))
        .route("/workers", get(pages::cluster::workers))
        .route("/schedules", get(pages::cluster::schedules))
        .route("/cluster", get(pages::cluster::cluster))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(script))
        .fallback(|uri: axum::http::Uri| async move {
            error::UiError::NotFound(format!("there is no page at {uri}")).into_response()
        })
        .layer(middleware::from_fn_with_state(ui.clone(), checked))
        .with_state(ui)
}

/// Refuses a request that does not name this server as its host (a page of
/// another site reaching it through DNS rebinding), and says how long the
/// server took (`Server-Timing: app;dur=MS`, what the benchmark reads).
async fn checked(State(ui): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = match ui.guard.check_host(request.headers()) {
        Err(refusal) => refusal.into_response(),
        Ok(()) => next.run(request).await,
    };
    let took = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={took:.2}")) {
        response.headers_mut().insert("server-timing", value);
    }
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; \
             img-src 'self' data:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/live.js"),
    )
}
