//! Step six, the process: serve the gRPC services on a listener until a shutdown signal, with
//! preshared-key authentication, the `grpc.health.v1` service, and background garbage
//! collection. The listener and the shutdown future come from outside, so tests can bind port 0.

pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use crate::api::{Api, PermissionsApi, SchemaApi};
use crate::store::Datastore;

/// Errors that stop the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Refused configuration.
    #[error("{0}")]
    Config(String),
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// if set, every call must carry `authorization: Bearer <key>`
    pub preshared_key: Option<String>,
    /// how long history stays readable
    pub gc_window: Duration,
    /// how often garbage collection runs
    pub gc_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            preshared_key: None,
            gc_window: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(180),
        }
    }
}

/// Checks `authorization: Bearer <key>` on every call: missing or malformed gives
/// UNAUTHENTICATED, a wrong key PERMISSION_DENIED.
#[derive(Clone, Debug)]
pub struct PresharedKeyAuth {
    key: Option<Arc<str>>,
}

impl tonic::service::Interceptor for PresharedKeyAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(key) = &self.key else {
            return Ok(request);
        };
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization header"))?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization header must be `Bearer <key>`")
            })?;
        if constant_time_eq(token.trim().as_bytes(), key.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::permission_denied("invalid preshared key"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves until `shutdown` resolves, then stops accepting, finishes in-flight calls and returns.
pub async fn run(
    listener: TcpListener,
    api: Arc<Api>,
    store: Arc<dyn Datastore>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let auth = PresharedKeyAuth {
        key: options.preshared_key.as_deref().map(Arc::from),
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let permissions = PermissionsApi(Arc::clone(&api)).into_server();
    let schema = SchemaApi(Arc::clone(&api)).into_server();
    health_reporter
        .set_serving::<crate::api::proto::authzed::api::v1::permissions_service_server::PermissionsServiceServer<PermissionsApi>>()
        .await;
    health_reporter
        .set_serving::<crate::api::proto::authzed::api::v1::schema_service_server::SchemaServiceServer<SchemaApi>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let gc = tokio::spawn(gc_loop(
        Arc::clone(&store),
        options.gc_window,
        options.gc_interval,
    ));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving authzed.api.v1 over gRPC");
    }
    // Responses are small and latency matters: without TCP_NODELAY, Nagle's algorithm and the
    // client's delayed ACK hold each streamed response back by about 40 ms.
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        if let Ok(s) = &stream
            && let Err(e) = s.set_nodelay(true)
        {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        stream
    });
    let result = tonic::transport::Server::builder()
        // Outermost, so it sees every call, refused ones included.
        .layer(metrics::MetricsLayer)
        .add_service(health_service)
        .add_service(InterceptedService::new(permissions, auth.clone()))
        .add_service(InterceptedService::new(schema, auth))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    gc.abort();
    tracing::info!("server stopped");
    Ok(result?)
}

async fn gc_loop(store: Arc<dyn Datastore>, window: Duration, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let store = Arc::clone(&store);
        let res =
            tokio::task::spawn_blocking(move || store.gc(crate::model::Timestamp::now(), window))
                .await;
        match res {
            Ok(Ok(stats)) => tracing::debug!(?stats, "garbage collection done"),
            Ok(Err(e)) => tracing::warn!(error = %e, "garbage collection failed"),
            Err(e) => tracing::warn!(error = %e, "garbage collection task failed"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
