//! The process: serve the gRPC services on a listener (plain or TLS) until a shutdown signal.
//!
//! With preshared-key authentication, overload limits, a `grpc.health.v1` service that reports
//! what is true (NOT_SERVING while shutting down or while the store cannot write), a bounded
//! graceful shutdown, and background garbage collection. The listener and the shutdown future
//! come from outside, so tests can bind port 0.

pub mod gateway;
mod http;
pub mod limits;
pub mod tls;

pub mod metrics;
pub mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use crate::api::{Api, BackupApi, ExperimentalApi, PermissionsApi, SchemaApi, WatchApi};
use crate::store::Datastore;

pub use tls::{TlsError, TlsFiles};

/// Errors that stop the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Refused configuration.
    #[error("{0}")]
    Config(String),
    /// The reflection service could not read the API's descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// if not empty, every call except health checks must carry `authorization: Bearer <key>`
    /// with one of these keys; an empty key is refused
    pub preshared_keys: Vec<String>,
    /// if set, the listener speaks TLS with this certificate (reloaded when the files change)
    pub tls: Option<TlsFiles>,
    /// a client that has not completed its TLS handshake by then is disconnected
    pub tls_handshake_timeout: Duration,
    /// how long in-flight calls may run on after a shutdown signal; zero means no limit
    pub shutdown_grace_period: Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls at once on one connection
    pub max_concurrent_streams: u32,
    /// how often an idle connection is pinged (HTTP/2 PING); zero disables pings
    pub keepalive_interval: Duration,
    /// how long a ping may go unanswered before the connection is closed
    pub keepalive_timeout: Duration,
    /// the largest header list (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE) a request may carry
    pub max_header_list_size: u32,
    /// the largest request message accepted, in bytes (RESOURCE_EXHAUSTED above)
    pub max_message_size: usize,
    /// calls in flight across all connections before new ones get RESOURCE_EXHAUSTED
    /// (health checks excepted); zero means no limit
    pub concurrency_limit: usize,
    /// how often the health service asks the store whether it can write
    pub health_check_interval: Duration,
    /// how long history stays readable
    pub gc_window: Duration,
    /// how often garbage collection runs
    pub gc_interval: Duration,
    /// the directory `BackupService.CreateBackup` writes under (and nowhere else)
    pub backup_dir: std::path::PathBuf,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            preshared_keys: Vec::new(),
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace_period: Duration::from_secs(5),
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_header_list_size: 64 * 1024,
            max_message_size: 4 * 1024 * 1024,
            concurrency_limit: 1000,
            health_check_interval: Duration::from_secs(1),
            gc_window: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(180),
            backup_dir: std::path::PathBuf::from("./pemba-backups"),
        }
    }
}

/// Checks `authorization: Bearer <key>` on every call against the preshared keys, with
/// SpiceDB's codes and messages: a missing or malformed header gives UNAUTHENTICATED
/// "invalid preshared key: …", an empty token UNAUTHENTICATED "missing preshared key", a key that
/// matches none PERMISSION_DENIED "invalid preshared key: invalid token".
#[derive(Clone, Debug)]
pub struct PresharedKeyAuth {
    /// empty: no authentication
    keys: Arc<[Box<[u8]>]>,
}

impl PresharedKeyAuth {
    /// Accepts any of `keys`; no keys means every call is let through. Empty keys are refused.
    pub fn new(keys: &[String]) -> Result<PresharedKeyAuth, ServerError> {
        if keys.iter().any(String::is_empty) {
            return Err(ServerError::Config(
                "a preshared key must not be empty".to_string(),
            ));
        }
        Ok(PresharedKeyAuth {
            keys: keys
                .iter()
                .map(|k| k.as_bytes().to_vec().into_boxed_slice())
                .collect(),
        })
    }
}

/// The message grpc-go's `AuthFromMD` gives a call without a bearer token, as SpiceDB wraps it.
const UNAUTHENTICATED_BEARER: &str = "invalid preshared key: rpc error: code = Unauthenticated desc = Request unauthenticated with bearer";

impl tonic::service::Interceptor for PresharedKeyAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.keys.is_empty() {
            return Ok(request);
        }
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated(UNAUTHENTICATED_BEARER))?;
        let value = header.to_str().map_err(|_| {
            Status::unauthenticated(
                "invalid preshared key: rpc error: code = Unauthenticated desc = Bad authorization string",
            )
        })?;
        let (scheme, token) = value.split_once(' ').ok_or_else(|| {
            Status::unauthenticated(
                "invalid preshared key: rpc error: code = Unauthenticated desc = Bad authorization string",
            )
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Status::unauthenticated(UNAUTHENTICATED_BEARER));
        }
        if token.is_empty() {
            return Err(Status::unauthenticated("missing preshared key"));
        }
        // Every key is compared, so the time taken does not tell which one matched.
        let matched = self
            .keys
            .iter()
            .fold(false, |acc, k| acc | constant_time_eq(token.as_bytes(), k));
        if matched {
            Ok(request)
        } else {
            Err(Status::permission_denied(
                "invalid preshared key: invalid token",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The names the health service reports: the whole server and each API service.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "authzed.api.v1.PermissionsService",
    "authzed.api.v1.SchemaService",
    "authzed.api.v1.WatchService",
];

/// What the health service says, and why.
#[derive(Debug)]
struct Health {
    reporter: tonic_health::server::HealthReporter,
    shutting_down: bool,
    /// the last answer of [`Datastore::check_writable`]
    writable: bool,
    /// what was last published
    serving: Option<bool>,
}

impl Health {
    async fn publish(&mut self) {
        let serving = !self.shutting_down && self.writable;
        if self.serving == Some(serving) {
            return;
        }
        self.serving = Some(serving);
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        for name in HEALTH_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Asks the store every `interval` whether it can write and publishes the answer.
async fn health_loop(
    health: Arc<tokio::sync::Mutex<Health>>,
    store: Arc<dyn Datastore>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let store = Arc::clone(&store);
        let writable = match tokio::task::spawn_blocking(move || store.check_writable()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the datastore cannot write: health is NOT_SERVING");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "the datastore write check did not finish");
                false
            }
        };
        let mut h = health.lock().await;
        if writable && !h.writable {
            tracing::info!("the datastore can write again");
        }
        h.writable = writable;
        h.publish().await;
    }
}

/// Serves until `shutdown` resolves. Then: health turns NOT_SERVING, new calls are refused
/// (the listener closes, connections get GOAWAY, calls already on the way get UNAVAILABLE),
/// in-flight calls get up to the grace period, and any connection still open after it is
/// closed. Returns `Ok` once stopped.
pub async fn run(
    listener: TcpListener,
    api: Arc<Api>,
    store: Arc<dyn Datastore>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    run_with_gateway(listener, None, api, store, options, shutdown).await
}

/// The HTTP/JSON gateway's listener, and its TLS if any.
pub struct GatewayListener {
    /// where the gateway listens
    pub listener: TcpListener,
    /// TLS for it (see [`tls::server_config`]), or plain HTTP
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// [`run`], with the HTTP/JSON gateway ([`gateway`]) on `gateway` if given: the same services,
/// the same key, as JSON over HTTP.
pub async fn run_with_gateway(
    listener: TcpListener,
    gateway: Option<GatewayListener>,
    api: Arc<Api>,
    store: Arc<dyn Datastore>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let auth = PresharedKeyAuth::new(&options.preshared_keys)?;
    let size = options.max_message_size;
    let permissions = PermissionsApi(Arc::clone(&api))
        .into_server()
        .max_decoding_message_size(size);
    let schema = SchemaApi(Arc::clone(&api))
        .into_server()
        .max_decoding_message_size(size);
    let experimental = ExperimentalApi(Arc::clone(&api))
        .into_server()
        .max_decoding_message_size(size);
    let watch = WatchApi(Arc::clone(&api))
        .into_server()
        .max_decoding_message_size(size);
    let backup = BackupApi {
        api: Arc::clone(&api),
        root: options.backup_dir.clone(),
    }
    .into_server()
    .max_decoding_message_size(size);
    let routes = tonic::service::Routes::new(InterceptedService::new(permissions, auth.clone()))
        .add_service(InterceptedService::new(schema, auth.clone()))
        .add_service(InterceptedService::new(experimental, auth.clone()))
        .add_service(InterceptedService::new(watch, auth.clone()))
        .add_service(InterceptedService::new(backup, auth));
    let gc = tokio::spawn(gc_loop(
        Arc::clone(&store),
        options.gc_window,
        options.gc_interval,
    ));
    // Watch streams never end on their own: at shutdown they end at once, with UNAVAILABLE.
    let shutdown = async move {
        shutdown.await;
        api.begin_shutdown();
    };
    let result = serve(listener, routes, gateway, Some(store), &options, shutdown).await;
    gc.abort();
    result
}

/// Serves `pemba serve-testing` until `shutdown` resolves: a store per bearer token (see
/// [`testing`]) on `listener`, and the same stores read-only on `readonly`, if given.
pub async fn run_testing(
    listener: TcpListener,
    readonly: Option<TcpListener>,
    tenants: Arc<testing::Tenants>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let stop = CancellationToken::new();
    let size = options.max_message_size;
    let main = serve(
        listener,
        testing::routes(&tenants, size, false),
        None,
        None,
        &options,
        stop.cancelled(),
    );
    let read_only = async {
        match readonly {
            Some(listener) => {
                let routes = testing::routes(&tenants, size, true);
                serve(listener, routes, None, None, &options, stop.cancelled()).await
            }
            None => Ok(()),
        }
    };
    let servers = async {
        let (main, read_only) = tokio::join!(main, read_only);
        main.and(read_only)
    };
    tokio::pin!(servers);
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut servers => result,
        () = &mut shutdown => {
            // Watch streams never end on their own: they end now, with UNAVAILABLE.
            tenants.begin_shutdown();
            stop.cancel();
            servers.await
        }
    }
}

/// Serves `routes` (the API services) on `listener`, beside health and reflection, with the
/// limits, TLS and graceful shutdown of `options`; health also says whether `store` (if any)
/// can write.
async fn serve(
    listener: TcpListener,
    routes: tonic::service::Routes,
    gateway: Option<GatewayListener>,
    store: Option<Arc<dyn Datastore>>,
    options: &ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    if options.max_message_size == 0 || options.max_concurrent_streams == 0 {
        return Err(ServerError::Config(
            "the maximum message size and concurrent streams must be at least 1".to_string(),
        ));
    }
    let tls_config = options
        .tls
        .as_ref()
        .map(|files| tls::server_config(files, &[b"h2"]))
        .transpose()?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Arc::new(tokio::sync::Mutex::new(Health {
        reporter,
        shutting_down: false,
        writable: true,
        serving: None,
    }));
    health.lock().await.publish().await;
    let health_task = store.map(|store| {
        tokio::spawn(health_loop(
            Arc::clone(&health),
            store,
            options.health_check_interval.max(Duration::from_millis(10)),
        ))
    });
    let admission = limits::Admission::new(options.concurrency_limit, options.max_message_size);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            tls = tls_config.is_some(),
            "serving authzed.api.v1 over gRPC"
        );
    }
    let closer = CancellationToken::new();
    let incoming = tls::incoming(
        listener,
        tls::AcceptOptions {
            tls: tls_config,
            handshake_timeout: options.tls_handshake_timeout,
            closer: closer.clone(),
        },
    );
    let keepalive = (!options.keepalive_interval.is_zero()).then_some(options.keepalive_interval);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Reflection (v1, and v1alpha for older tools), as SpiceDB serves it: with no key, so that
    // grpcurl and similar tools can list and call the services without the .proto files.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::api::proto::FILE_DESCRIPTOR_SET)
    };
    let routes = routes
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    // The gateway calls the same routes, health included, and stops with the gRPC listener.
    let gateway_stop = CancellationToken::new();
    let gateway_task = match gateway {
        Some(GatewayListener { listener, tls }) => {
            let gw = gateway::Gateway::new(routes.clone(), options.max_message_size)?;
            let stop = gateway_stop.clone();
            let handshake = options.tls_handshake_timeout;
            Some(tokio::spawn(async move {
                gateway::serve(listener, gw, tls, handshake, stop.cancelled()).await;
            }))
        }
        None => None,
    };
    let serve = tonic::transport::Server::builder()
        // Outermost, so it sees every call, refused ones included.
        .layer(metrics::MetricsLayer)
        .max_concurrent_streams(options.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .http2_max_header_list_size(options.max_header_list_size)
        .layer(limits::AdmissionLayer(Arc::clone(&admission)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(serve);
    tokio::pin!(shutdown);

    let result = tokio::select! {
        result = &mut serve => result,
        () = &mut shutdown => {
            admission.begin_shutdown();
            {
                let mut h = health.lock().await;
                h.shutting_down = true;
                h.publish().await;
            }
            let _ = stop_tx.send(());
            let grace = options.shutdown_grace_period;
            tracing::info!(?grace, "shutting down: health is NOT_SERVING, waiting for in-flight calls");
            if grace.is_zero() {
                serve.await
            } else {
                match tokio::time::timeout(grace, &mut serve).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("shutdown grace period over: closing the remaining connections");
                        closer.cancel();
                        // Closed connections end their tasks at once; do not wait on a stuck one.
                        tokio::time::timeout(Duration::from_secs(5), &mut serve)
                            .await
                            .unwrap_or(Ok(()))
                    }
                }
            }
        }
    };
    gateway_stop.cancel();
    if let Some(task) = gateway_task {
        let _ = task.await;
    }
    if let Some(task) = health_task {
        task.abort();
    }
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
