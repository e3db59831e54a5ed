//! Prometheus metrics: a daemon's registry served as OpenMetrics text at
//! `GET /metrics` on a listen address of its own (off unless configured), and
//! the tower layer that counts and times every gRPC call of a server by
//! service, method and status code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

/// The content type of the OpenMetrics text format `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape runs before the registry is encoded: gauges read from the
/// daemon's state at that moment (a Raft member's term and indexes).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A refresh that reads nothing.
pub fn no_refresh() -> Refresh {
    Arc::new(|| Box::pin(async {}))
}

/// Seconds, from half a millisecond to about 16 s: a histogram's buckets for
/// calls and commits.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

/// A histogram family whose histograms have [`latency_buckets`].
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new [`LatencyFamily`].
pub fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(|| Histogram::new(latency_buckets()))
}

/// Serves `registry` at `GET /metrics` on `listener` until `shutdown`
/// resolves; every other path is 404. Scrapes run one at a time: a refresh
/// (which may clear a family and set it again, or bring a counter up to a
/// value read from state) is never seen half done, nor done twice at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let scrape = move || {
        let (registry, refresh) = (registry.clone(), refresh.clone());
        let one_at_a_time = one_at_a_time.clone();
        async move {
            let _scraping = one_at_a_time.lock().await;
            refresh().await;
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => (
                    http::StatusCode::OK,
                    [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    text,
                ),
                Err(error) => (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    format!("encoding the metrics failed: {error}\n"),
                ),
            }
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A gRPC call's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The service without its package (`Control`, `Agent`, `Peer`).
    pub service: String,
    pub method: String,
    /// The status code's name (`OK`, `InvalidArgument`, ...; `Cancelled`
    /// when the caller went away before the answer ended).
    pub code: String,
}

/// Calls of a gRPC server by service, method and status code, and how long
/// each took until its answer ended (a stream: until it ended).
#[derive(Clone)]
pub struct GrpcMetrics {
    calls: Family<CallLabels, Counter>,
    seconds: LatencyFamily<CallLabels>,
}

impl GrpcMetrics {
    /// The families, registered in `registry` as `grpc_requests` and
    /// `grpc_request_seconds`.
    pub fn register(registry: &mut Registry) -> GrpcMetrics {
        let metrics = GrpcMetrics {
            calls: Family::default(),
            seconds: latency_family(),
        };
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by service, method and status code",
            metrics.calls.clone(),
        );
        registry.register(
            "grpc_request_seconds",
            "How long gRPC calls took until their answer ended, by service, method and status code",
            metrics.seconds.clone(),
        );
        metrics
    }

    /// The tower layer that records every call of the server it wraps.
    pub fn layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer(self.clone())
    }

    fn record(&self, labels: CallLabels, seconds: f64) {
        self.calls.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(seconds);
    }
}

/// Records each call of the service it wraps in a [`GrpcMetrics`].
#[derive(Clone)]
pub struct GrpcMetricsLayer(GrpcMetrics);

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A service whose calls are recorded (see [`GrpcMetricsLayer`]).
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Measured<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeasuredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = service_and_method(request.uri().path());
        let call = Call {
            metrics: self.metrics.clone(),
            service,
            method,
            started: Instant::now(),
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // A trailers-only answer (a refusal before any message) carries
            // its status in the headers; others in the trailers.
            let status = response.headers().get("grpc-status").cloned();
            let (parts, body) = response.into_parts();
            let mut body = MeasuredBody {
                inner: body,
                call: Some(call),
            };
            if let Some(status) = status {
                body.finish(code_name(&status));
            }
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A call being answered.
struct Call {
    metrics: GrpcMetrics,
    service: String,
    method: String,
    started: Instant,
}

/// An answer's body that records its call when its status is known.
pub struct MeasuredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> MeasuredBody<B> {
    fn finish(&mut self, code: String) {
        let Some(call) = self.call.take() else {
            return;
        };
        // A method the server does not have is any name a caller made up:
        // one label for all of them keeps the families bounded.
        let (service, method) = if code == "Unimplemented" {
            ("unknown".to_string(), "unknown".to_string())
        } else {
            (call.service, call.method)
        };
        let labels = CallLabels {
            service,
            method,
            code,
        };
        call.metrics
            .record(labels, call.started.elapsed().as_secs_f64());
    }
}

impl<B> Drop for MeasuredBody<B> {
    fn drop(&mut self) {
        // Dropped before its status was sent: the caller went away.
        self.finish("Cancelled".to_string());
    }
}

impl<B> http_body::Body for MeasuredBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    let code = code_name(status);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("Internal".to_string()),
            Poll::Ready(None) => self.finish("Unknown".to_string()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `("Control", "SubmitRun")` from `/ferry.v1.Control/SubmitRun`.
fn service_and_method(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let service = service.rsplit('.').next().unwrap_or(service);
    let method = parts.next().unwrap_or_default();
    (service.to_string(), method.to_string())
}

/// The name of the status code in a `grpc-status` value (`OK` for 0).
fn code_name(value: &http::HeaderValue) -> String {
    match value.to_str().ok().and_then(|v| v.parse::<i32>().ok()) {
        Some(0) => "OK".to_string(),
        Some(code) => format!("{:?}", tonic::Code::from_i32(code)),
        None => "Unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_service_and_method() {
        assert_eq!(
            service_and_method("/ferry.v1.Control/SubmitRun"),
            ("Control".to_string(), "SubmitRun".to_string())
        );
        assert_eq!(service_and_method("/"), (String::new(), String::new()));
    }

    #[test]
    fn status_codes_are_named() {
        let name = |v: &str| code_name(&http::HeaderValue::from_str(v).unwrap());
        assert_eq!(name("0"), "OK");
        assert_eq!(name("3"), "InvalidArgument");
        assert_eq!(name("12"), "Unimplemented");
        assert_eq!(name("x"), "Unknown");
    }

    #[test]
    fn an_unknown_method_is_recorded_under_one_label() {
        let mut registry = Registry::default();
        let metrics = GrpcMetrics::register(&mut registry);
        for method in ["Made", "Up"] {
            let mut body = MeasuredBody {
                inner: (),
                call: Some(Call {
                    metrics: metrics.clone(),
                    service: "Control".into(),
                    method: method.into(),
                    started: Instant::now(),
                }),
            };
            body.finish("Unimplemented".into());
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "grpc_requests_total{service=\"unknown\",method=\"unknown\",code=\"Unimplemented\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("Made"), "{text}");
    }
}
