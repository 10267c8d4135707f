//! Observability of the server: per-call metrics and request ids, and the `/metrics` endpoint.
//!
//! A tower layer around the gRPC router counts and times every call (`grpc_server_*`) and gives
//! it a request id (a tracing span, and the `x-request-id` response header); a small HTTP/1.1
//! server answers `GET /metrics` with every metric of the default Prometheus registry in the
//! text format.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, TextEncoder,
};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::Span;

/// The header carrying a call's request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client-chosen request id kept; a longer or non-printable one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// SpiceDB's buckets for `grpc_server_handling_seconds`.
const HANDLING_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 30.0,
];

/// gRPC status codes as grpc-go names them, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CODE_CANCELED: usize = 1;
const CODE_UNKNOWN: usize = 2;

/// Methods served outside the API's own protos: `(service, method, grpc_type)`.
const EXTRA_METHODS: &[(&str, &str, &str)] = &[
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
];

/// One method's labels and its metric handles, resolved once.
struct RpcMethod {
    /// `service/method`, for the logs
    name: String,
    /// `grpc_type`, `grpc_service`, `grpc_method`
    labels: [String; 3],
    started: IntCounter,
    seconds: Histogram,
    /// `grpc_server_handled_total` by code number, resolved on first use
    handled: [OnceLock<IntCounter>; 17],
}

/// The per-RPC metrics.
struct GrpcMetrics {
    handled: IntCounterVec,
    in_flight: IntGauge,
    /// by request path, `/service/method`
    methods: HashMap<String, RpcMethod>,
    /// every path not served: a client cannot create label values at will
    unknown: RpcMethod,
}

impl GrpcMetrics {
    fn build() -> Result<GrpcMetrics, prometheus::Error> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = IntCounterVec::new(
            Opts::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            &labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC calls, to the end of the \
                 response stream.",
            )
            .buckets(HANDLING_BUCKETS.to_vec()),
            &labels,
        )?;
        let in_flight = IntGauge::new(
            "pemba_grpc_in_flight_requests",
            "gRPC calls started and not yet finished.",
        )?;
        let collectors: [Box<dyn prometheus::core::Collector>; 4] = [
            Box::new(started.clone()),
            Box::new(handled.clone()),
            Box::new(seconds.clone()),
            Box::new(in_flight.clone()),
        ];
        for c in collectors {
            prometheus::register(c)?;
        }
        let method = |service: &str, name: &str, kind: &str| RpcMethod {
            name: format!("{service}/{name}"),
            labels: [kind.to_string(), service.to_string(), name.to_string()],
            started: started.with_label_values(&[kind, service, name]),
            seconds: seconds.with_label_values(&[kind, service, name]),
            handled: std::array::from_fn(|_| OnceLock::new()),
        };
        let mut methods = HashMap::new();
        for (service, name, kind) in served_methods()? {
            methods.insert(format!("/{service}/{name}"), method(&service, &name, kind));
        }
        let unknown = method("unknown", "unknown", "unary");
        Ok(GrpcMetrics {
            handled,
            in_flight,
            methods,
            unknown,
        })
    }

    fn method(&self, path: &str) -> &RpcMethod {
        self.methods.get(path).unwrap_or(&self.unknown)
    }

    fn handled<'a>(&self, rpc: &'a RpcMethod, code: usize) -> Option<&'a IntCounter> {
        let name = CODE_NAMES.get(code)?;
        let slot = rpc.handled.get(code)?;
        Some(slot.get_or_init(|| {
            let [kind, service, method] = &rpc.labels;
            self.handled
                .with_label_values(&[kind.as_str(), service, method, name])
        }))
    }
}

/// Every method of the API's protos, and of health and reflection:
/// `(service, method, grpc_type)`.
fn served_methods() -> Result<Vec<(String, String, &'static str)>, prometheus::Error> {
    let set = prost_types::FileDescriptorSet::decode(crate::api::proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| prometheus::Error::Msg(format!("cannot read the API descriptors: {e}")))?;
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            for m in &service.method {
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                };
                out.push((full.clone(), m.name().to_string(), kind));
            }
        }
    }
    out.extend(
        EXTRA_METHODS
            .iter()
            .map(|(s, m, k)| ((*s).to_string(), (*m).to_string(), *k)),
    );
    Ok(out)
}

static GRPC_METRICS: LazyLock<Option<GrpcMetrics>> = LazyLock::new(|| match GrpcMetrics::build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "cannot register the gRPC metrics");
        None
    }
});

/// Registers every metric (gRPC, engine, datastore; process metrics come with the default
/// registry) so that a scrape shows them before the first call. True if all registered.
pub fn init_metrics() -> bool {
    let grpc = GRPC_METRICS.is_some();
    let engine = crate::engine::init_metrics();
    let store = crate::store::init_metrics();
    let watch = crate::api::init_watch_metrics();
    grpc && engine && store && watch
}

// ---- the tower layer ----

/// The request id of a call, also put in the request's extensions for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Wraps the whole gRPC router: metrics and a request id for every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

/// The client's `x-request-id` if it is printable ASCII of reasonable length, else a new
/// random one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID_HEADER) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
        {
            return v.clone();
        }
    }
    HeaderValue::try_from(format!("{:016x}", rand::random::<u64>()))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// The code number of a `grpc-status` value; a malformed or unknown one is `Unknown`.
fn code_of(value: Option<&HeaderValue>) -> usize {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|c| *c < CODE_NAMES.len())
        .unwrap_or(CODE_UNKNOWN)
}

impl<S, B, RB> tower::Service<Request<B>> for Metered<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: Body<Data = Bytes>,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = request_id(req.headers());
        let id_text = id.to_str().unwrap_or_default().to_string();
        let metrics = GRPC_METRICS.as_ref();
        let rpc = metrics.map(|m| m.method(req.uri().path()));
        // `otel.*` and `rpc.*` fields name and describe the span when it is exported over
        // OpenTelemetry (semantic conventions for gRPC servers).
        let span = tracing::info_span!(
            "rpc",
            request_id = %id_text,
            method = %rpc.map_or("unknown", |r| r.name.as_str()),
            otel.name = %rpc.map_or("unknown", |r| r.name.as_str()),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %rpc.map_or("unknown", |r| r.labels[1].as_str()),
            rpc.method = %rpc.map_or("unknown", |r| r.labels[2].as_str()),
            rpc.grpc.status_code = tracing::field::Empty,
        );
        if let Some(m) = metrics
            && rpc.is_some_and(|r| std::ptr::eq(r, &m.unknown))
        {
            let path: String = req.uri().path().chars().take(200).collect();
            span.in_scope(|| tracing::debug!(path = ?path, "call to a method not served"));
        }
        req.extensions_mut().insert(RequestId(id_text));
        let call = metrics
            .zip(rpc)
            .map(|(m, r)| Call::start(m, r, span.clone()));
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        MeteredFuture {
            inner,
            call,
            span,
            id: Some(id),
        }
    }
}

/// One call being measured; recorded when dropped, with `Canceled` if no status was seen.
struct Call {
    metrics: &'static GrpcMetrics,
    rpc: &'static RpcMethod,
    start: Instant,
    span: Span,
    code: usize,
}

impl Call {
    fn start(metrics: &'static GrpcMetrics, rpc: &'static RpcMethod, span: Span) -> Call {
        rpc.started.inc();
        metrics.in_flight.inc();
        Call {
            metrics,
            rpc,
            start: Instant::now(),
            span,
            code: CODE_CANCELED,
        }
    }

    /// Ends the call with status `code`.
    fn finish(mut self, code: usize) {
        self.code = code;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        self.rpc.seconds.observe(elapsed.as_secs_f64());
        if let Some(c) = self.metrics.handled(self.rpc, self.code) {
            c.inc();
        }
        self.metrics.in_flight.dec();
        self.span.record(
            "rpc.grpc.status_code",
            i64::try_from(self.code).unwrap_or(2),
        );
        let _entered = self.span.enter();
        tracing::debug!(
            grpc_code = CODE_NAMES.get(self.code).copied().unwrap_or("Unknown"),
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "rpc finished"
        );
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Metered`].
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
        span: Span,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body<Data = Bytes>,
{
    type Output = Result<Response<MeteredBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        let mut call = this.call.take();
        match polled {
            Ok(mut response) => {
                if let Some(id) = this.id.take() {
                    response.headers_mut().insert(REQUEST_ID_HEADER, id);
                }
                // A trailers-only response (an error before any message) carries its status
                // in the headers.
                if let Some(status) = response.headers().get("grpc-status")
                    && let Some(c) = call.take()
                {
                    c.finish(code_of(Some(status)));
                }
                let span = this.span.clone();
                Poll::Ready(Ok(response.map(|inner| MeteredBody { inner, call, span })))
            }
            Err(e) => {
                if let Some(c) = call {
                    c.finish(CODE_UNKNOWN);
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's measurement at the trailers (a streaming call is
    /// measured to its end).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
        span: Span,
    }
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = {
            let _entered = this.span.enter();
            ready!(this.inner.poll_frame(cx))
        };
        let code = match &polled {
            Some(Ok(frame)) => frame.trailers_ref().map(|t| code_of(t.get("grpc-status"))),
            Some(Err(_)) | None => Some(CODE_UNKNOWN),
        };
        if let Some(code) = code
            && let Some(c) = this.call.take()
        {
            c.finish(code);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- the HTTP endpoint ----

/// The bounds of the scrape listener: a few scrapers, each connection kept for five minutes.
const LIMITS: super::http::HttpLimits = super::http::HttpLimits {
    max_connections: 16,
    header_read_timeout: Duration::from_secs(30),
    connection_lifetime: Some(Duration::from_secs(300)),
    close_grace: Duration::from_secs(10),
};

/// Answers one HTTP request: the metrics at `GET /metrics`, 405 for another method there,
/// 404 elsewhere.
fn answer<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
        tracing::warn!(error = %e, "cannot encode the metrics");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        );
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = HeaderValue::from_str(encoder.format_type()) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// Serves `GET /metrics` on every connection `incoming` yields (plain TCP, or streams already
/// wrapped in TLS) until `shutdown` resolves; then stops accepting and closes the open
/// connections.
pub async fn serve<I, IO, E>(incoming: I, shutdown: impl Future<Output = ()>)
where
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Display,
{
    init_metrics();
    let service =
        hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(answer(&req)) });
    super::http::serve(incoming, service, LIMITS, "metrics", shutdown).await;
}

/// [`serve`] on a plain TCP listener.
pub async fn serve_tcp(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    serve(incoming, shutdown).await;
}

/// [`serve`] over HTTPS: every connection must complete a TLS handshake with `tls` (see
/// [`super::tls::server_config`]; the certificate is reloaded when its files change) within
/// `handshake_timeout`. A client speaking plain HTTP fails the handshake and gets no metrics.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics over TLS");
    }
    let closer = tokio_util::sync::CancellationToken::new();
    let incoming = super::tls::incoming(
        listener,
        super::tls::AcceptOptions {
            tls: Some(tls),
            handshake_timeout,
            closer: closer.clone(),
        },
    );
    serve(incoming, shutdown).await;
    closer.cancel();
}

/// The ALPN protocol the metrics endpoint offers over TLS.
pub const ALPN: &[&[u8]] = &[b"http/1.1"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_method_has_labels() {
        let m = GRPC_METRICS.as_ref().unwrap();
        let check = m.method("/authzed.api.v1.PermissionsService/CheckPermission");
        assert_eq!(
            check.labels,
            [
                "unary".to_string(),
                "authzed.api.v1.PermissionsService".to_string(),
                "CheckPermission".to_string()
            ]
        );
        let lookup = m.method("/authzed.api.v1.PermissionsService/LookupResources");
        assert_eq!(lookup.labels[0], "server_stream");
        let import = m.method("/authzed.api.v1.PermissionsService/ImportBulkRelationships");
        assert_eq!(import.labels[0], "client_stream");
        let other = m.method("/authzed.api.v1.PermissionsService/NoSuchMethod");
        assert_eq!(other.labels[1], "unknown");
    }

    #[test]
    fn request_ids_are_kept_only_when_printable_and_short() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_str(&"x".repeat(MAX_REQUEST_ID_LEN + 1)).unwrap(),
        );
        let generated = request_id(&h);
        assert_eq!(generated.len(), 16);
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("a b"));
        assert_ne!(request_id(&h), "a b");
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[test]
    fn status_codes_are_named_as_grpc_go_does() {
        assert_eq!(
            CODE_NAMES[code_of(Some(&HeaderValue::from_static("0")))],
            "OK"
        );
        assert_eq!(
            CODE_NAMES[code_of(Some(&HeaderValue::from_static("3")))],
            "InvalidArgument"
        );
        assert_eq!(
            CODE_NAMES[code_of(Some(&HeaderValue::from_static("16")))],
            "Unauthenticated"
        );
        assert_eq!(
            CODE_NAMES[code_of(Some(&HeaderValue::from_static("99")))],
            "Unknown"
        );
        assert_eq!(CODE_NAMES[code_of(None)], "Unknown");
    }
}
