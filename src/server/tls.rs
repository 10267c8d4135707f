//! TLS for the server's listeners: certificates reloaded from disk, handshakes in their own tasks.
//!
//! PEM certificate and key files reloaded when they change, and a stream of accepted
//! connections (plain or TLS) whose handshakes each run in their own task.
//!
//! Reusable by any HTTP listener: [`server_config`] builds a rustls configuration from the files
//! (ring provider, TLS 1.2 and 1.3, the given ALPN protocols), and [`incoming`] turns a
//! [`TcpListener`] into a stream of [`Conn`]s ready for hyper or tonic.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How often, at most, the certificate files are checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of TLS setup.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("cannot load `{path}`: {reason}")]
    Load {
        /// the file
        path: String,
        /// what went wrong
        reason: String,
    },
    /// rustls refused the configuration (for example a key that does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Where a listener's certificate chain and private key live (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// the certificate chain, leaf first
    pub cert_path: PathBuf,
    /// the private key (PKCS#8, PKCS#1 or SEC1)
    pub key_path: PathBuf,
}

/// What identifies one version of a file: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn load_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads and checks the certificate chain and key.
fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert_path)
        .map_err(|e| load_error(&files.cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_error(&files.cert_path, e))?;
    if certs.is_empty() {
        return Err(load_error(&files.cert_path, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_path)
        .map_err(|e| load_error(&files.key_path, e))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| load_error(&files.key_path, e))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

/// A certificate resolver that re-reads the files when they change (checked at most every
/// [`RELOAD_CHECK_INTERVAL`], during a handshake), so a renewed certificate is served to new
/// connections without a restart. If the new files are invalid (or half written) the previous
/// certificate stays in use and a warning is logged; the next change is tried again.
#[derive(Debug)]
pub struct CertReloader {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// when the files were last looked at, and what they were then
    check: Mutex<(Instant, Stamp, Stamp)>,
}

impl CertReloader {
    /// Loads the files; fails if they are missing or invalid.
    pub fn load(files: TlsFiles, provider: Arc<CryptoProvider>) -> Result<CertReloader, TlsError> {
        let stamps = (stamp(&files.cert_path), stamp(&files.key_path));
        let key = load_certified_key(&files, &provider)?;
        Ok(CertReloader {
            files,
            provider,
            current: RwLock::new(key),
            check: Mutex::new((Instant::now(), stamps.0, stamps.1)),
        })
    }

    /// The certificate being served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the files now if they changed since the last look. Returns whether a new
    /// certificate was installed; on an error the previous one stays.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let mut check = self.check.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh_locked(&mut check)
    }

    fn refresh_locked(&self, check: &mut (Instant, Stamp, Stamp)) -> Result<bool, TlsError> {
        check.0 = Instant::now();
        let cert = stamp(&self.files.cert_path);
        let key = stamp(&self.files.key_path);
        if cert == check.1 && key == check.2 {
            return Ok(false);
        }
        // Remember the stamps taken before reading: a failed load is retried only once the
        // files change again, and a write racing with the read is seen as a change next time.
        check.1 = cert;
        check.2 = key;
        let loaded = load_certified_key(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(true)
    }

    /// The rate-limited check done during handshakes; one handshake checks, the others go on
    /// with the current certificate.
    fn maybe_refresh(&self) {
        let Ok(mut check) = self.check.try_lock() else {
            return;
        };
        if check.0.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        match self.refresh_locked(&mut check) {
            Ok(true) => tracing::info!(
                cert = %self.files.cert_path.display(),
                "TLS certificate reloaded"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "the TLS certificate files changed but cannot be loaded; still serving the previous certificate"
            ),
        }
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_refresh();
        Some(self.current())
    }
}

/// The ring crypto provider (rustls's default choice, aws-lc-rs, needs a long C build). rustls
/// deprecates it for lacking post-quantum key exchange; its classical suites are what we offer.
#[allow(deprecated, reason = "ring is the chosen provider; see above")]
pub fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A rustls server configuration serving the certificate in `files` (reloaded when it changes)
/// with the ring crypto provider, TLS 1.2 and 1.3, no client certificates, and the ALPN
/// protocols `alpn` in order of preference (e.g. `[b"h2"]` for gRPC).
pub fn server_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(ring_provider());
    let resolver = Arc::new(CertReloader::load(files.clone(), Arc::clone(&provider))?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// How [`incoming`] accepts connections.
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    /// if set, every connection must complete a TLS handshake with this configuration
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// a client that has not completed its handshake by then is disconnected
    pub handshake_timeout: Duration,
    /// when cancelled, every connection accepted so far fails its next read or write (a hard
    /// stop, for after a graceful shutdown's grace period)
    pub closer: CancellationToken,
}

/// How many accepted connections may wait for the consumer of [`incoming`].
const ACCEPT_QUEUE: usize = 64;

/// Accepts connections from `listener` in a background task and yields them, with TCP_NODELAY
/// set. With TLS, each handshake runs in its own task under `handshake_timeout`, so a slow or
/// silent client never holds up the others; failed handshakes are logged and dropped. The task
/// ends (closing the listener) when the returned stream is dropped.
pub fn incoming(listener: TcpListener, options: AcceptOptions) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept_loop(listener, options, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    options: AcceptOptions,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let acceptor = options.tls.map(TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        // Responses are small and latency matters: without TCP_NODELAY, Nagle's algorithm and
        // the client's delayed ACK hold each streamed response back by about 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let info = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let closed = options.closer.child_token();
        match &acceptor {
            None => {
                let conn = Conn::new(ConnIo::Plain(tcp), info, closed);
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let timeout = options.handshake_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let conn = Conn::new(ConnIo::Tls(Box::new(tls)), info, closed);
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, plain or TLS, that fails once its [`AcceptOptions::closer`] is
/// cancelled.
pub struct Conn {
    io: ConnIo,
    info: TcpConnectInfo,
    token: CancellationToken,
    /// resolves when `token` is cancelled; polled on reads so a cancel wakes an idle connection
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("remote_addr", &self.info.remote_addr)
            .field("tls", &matches!(self.io, ConnIo::Tls(_)))
            .finish()
    }
}

impl Conn {
    fn new(io: ConnIo, info: TcpConnectInfo, token: CancellationToken) -> Conn {
        let cancelled = Box::pin(token.clone().cancelled_owned());
        Conn {
            io,
            info,
            token,
            cancelled,
        }
    }

    /// Is this a TLS connection?
    pub fn is_tls(&self) -> bool {
        matches!(self.io, ConnIo::Tls(_))
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.info.remote_addr
    }

    fn closed_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by the server",
        )
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Conn::closed_error()));
        }
        match &mut this.io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.token.is_cancelled() {
            return Poll::Ready(Err(Conn::closed_error()));
        }
        match &mut this.io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.token.is_cancelled() {
            return Poll::Ready(Err(Conn::closed_error()));
        }
        match &mut this.io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.token.is_cancelled() {
            return Poll::Ready(Err(Conn::closed_error()));
        }
        match &mut this.io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(files: &TlsFiles, (cert, key): &(String, String)) {
        std::fs::write(&files.cert_path, cert).unwrap();
        std::fs::write(&files.key_path, key).unwrap();
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].as_ref().to_vec()
    }

    #[test]
    fn reload_installs_valid_files_and_keeps_the_old_certificate_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert_path: dir.path().join("cert.pem"),
            key_path: dir.path().join("key.pem"),
        };
        let a = self_signed("a.example");
        write(&files, &a);
        let provider = Arc::new(ring_provider());
        let r = CertReloader::load(files.clone(), provider).unwrap();
        let first = leaf(&r.current());
        assert!(!r.refresh().unwrap(), "unchanged files are not reloaded");

        // garbage: refused, the old certificate stays
        std::fs::write(&files.cert_path, "not a certificate").unwrap();
        assert!(r.refresh().is_err());
        assert_eq!(leaf(&r.current()), first);

        // a certificate with someone else's key: refused too
        let b = self_signed("b.example");
        let other = self_signed("c.example");
        write(&files, &(b.0.clone(), other.1.clone()));
        assert!(r.refresh().is_err());
        assert_eq!(leaf(&r.current()), first);

        // a valid pair: installed
        write(&files, &b);
        assert!(r.refresh().unwrap());
        let second = leaf(&r.current());
        assert_ne!(second, first);
        let expected = CertificateDer::from_pem_slice(b.0.as_bytes()).unwrap();
        assert_eq!(second, expected.as_ref());
    }

    #[test]
    fn missing_or_empty_files_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert_path: dir.path().join("cert.pem"),
            key_path: dir.path().join("key.pem"),
        };
        assert!(server_config(&files, &[b"h2"]).is_err());
        std::fs::write(&files.cert_path, "").unwrap();
        std::fs::write(&files.key_path, "").unwrap();
        let err = server_config(&files, &[b"h2"]).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        write(&files, &self_signed("localhost"));
        assert!(server_config(&files, &[b"h2"]).is_ok());
    }
}
