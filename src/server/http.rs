//! A small HTTP/1.1 server: the accept loop and connection handling shared by the metrics
//! endpoint and the JSON gateway.
//!
//! Connections come from a stream (plain TCP, or streams already wrapped in TLS by
//! [`super::tls::incoming`]); at most a fixed number are served at once and a new one past that
//! is closed at once, so a flood of idle connections holds a bounded amount of memory; a client
//! gets a fixed time to send its headers.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// connections served at once; more are closed at once
    pub max_connections: usize,
    /// how long a client may take to send a request's headers
    pub header_read_timeout: Duration,
    /// how long one connection is kept (then closed after its current response); `None`: as
    /// long as the client keeps it (a streamed response may last for hours)
    pub connection_lifetime: Option<Duration>,
    /// how long a connection asked to close may take to finish its response
    pub close_grace: Duration,
}

/// Serves one HTTP/1.1 connection until the client closes it, it idles past the header
/// timeout, or it reaches its lifetime.
async fn serve_connection<IO, S, B>(io: IO, service: S, limits: HttpLimits, what: &'static str)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let lifetime = async {
        match limits.connection_lifetime {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = lifetime => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.close_grace, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "{what} connection ended with an error");
    }
}

/// Serves `service` on every connection `incoming` yields until `shutdown` resolves; then
/// stops accepting and closes the open connections. `what` names the listener in the logs.
pub(crate) async fn serve<I, IO, E, S, B>(
    incoming: I,
    service: S,
    limits: HttpLimits,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Display,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(incoming);
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            () = &mut shutdown => break,
            next = incoming.next() => next,
        };
        while connections.try_join_next().is_some() {}
        match next {
            None => break,
            Some(Err(e)) => {
                // Such as too many open files: wait a little rather than spin.
                tracing::warn!(error = %e, "{what} listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(Ok(io)) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    let service = service.clone();
                    connections.spawn(async move {
                        serve_connection(io, service, limits, what).await;
                        drop(permit);
                    });
                }
                Err(_) => tracing::debug!("too many {what} connections; closing a new one"),
            },
        }
    }
    connections.shutdown().await;
    tracing::info!("{what} endpoint stopped");
}
