//! The server's transport with real tonic clients on port 0: TLS, keys, health, limits.
//!
//! TLS with a certificate reloaded from disk, several preshared keys, TLS handshakes that
//! cannot hold up the accept loop, health that turns NOT_SERVING on shutdown and on a store
//! that cannot write, the shutdown grace period, the global concurrency limit and the message
//! size limit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::api::{Api, Limits};
use pemba::engine::EngineConfig;
use pemba::model::{
    OrphanCheck, Relationship, RelationshipFilter, RelationshipKey, Revision, Timestamp,
};
use pemba::server::{self, ServerError, ServerOptions, TlsFiles};
use pemba::store::{
    Datastore, DeleteOutcome, GcStats, GraphView, MemoryStore, Page, Precondition,
    RelationshipUpdate, StoreError, StoreResult, StoredSchema,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::AsyncReadExt as _;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use pb::schema_service_client::SchemaServiceClient;

/// How long a test waits for something that should happen at once, before calling it a hang.
const PATIENCE: Duration = Duration::from_secs(30);

/// A memory store whose schema writes can be held at a gate, and whose writability the test
/// sets, so calls can be kept in flight and a full disk simulated deterministically.
#[derive(Debug, Default)]
struct TestStore {
    inner: MemoryStore,
    /// schema writes wait while this is true
    gate_closed: Mutex<bool>,
    gate: Condvar,
    /// schema writes that have reached the store
    entered: AtomicUsize,
    /// `check_writable` fails while set
    disk_full: AtomicBool,
}

impl TestStore {
    fn close_gate(&self) {
        *self.gate_closed.lock().unwrap() = true;
    }

    fn open_gate(&self) {
        *self.gate_closed.lock().unwrap() = false;
        self.gate.notify_all();
    }

    async fn wait_entered(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.entered.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the call never reached the store"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Datastore for TestStore {
    fn unique_id(&self) -> &str {
        self.inner.unique_id()
    }
    fn head_revision(&self) -> StoreResult<Revision> {
        self.inner.head_revision()
    }
    fn check_revision(&self, rev: Revision) -> StoreResult<()> {
        self.inner.check_revision(rev)
    }
    fn read_schema(&self, rev: Revision) -> StoreResult<Option<StoredSchema>> {
        self.inner.read_schema(rev)
    }
    fn query(
        &self,
        rev: Revision,
        filter: &RelationshipFilter,
        after: Option<&RelationshipKey>,
        limit: usize,
        now: Timestamp,
    ) -> StoreResult<Page> {
        self.inner.query(rev, filter, after, limit, now)
    }
    fn query_all(
        &self,
        rev: Revision,
        filter: &RelationshipFilter,
        now: Timestamp,
        out: &mut Vec<Relationship>,
    ) -> StoreResult<()> {
        self.inner.query_all(rev, filter, now, out)
    }
    fn graph_view(&self, rev: Revision, now: Timestamp) -> StoreResult<Option<GraphView<'_>>> {
        self.inner.graph_view(rev, now)
    }
    fn write_relationships(
        &self,
        preconditions: &[Precondition],
        updates: &[RelationshipUpdate],
        now: Timestamp,
    ) -> StoreResult<Revision> {
        self.inner.write_relationships(preconditions, updates, now)
    }
    fn delete_relationships(
        &self,
        filter: &RelationshipFilter,
        preconditions: &[Precondition],
        limit: Option<u64>,
        allow_partial: bool,
        now: Timestamp,
    ) -> StoreResult<DeleteOutcome> {
        self.inner
            .delete_relationships(filter, preconditions, limit, allow_partial, now)
    }
    fn write_schema(
        &self,
        text: &str,
        orphan_checks: &[OrphanCheck],
        now: Timestamp,
    ) -> StoreResult<Revision> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.gate_closed.lock().unwrap();
        while *closed {
            closed = self.gate.wait(closed).unwrap();
        }
        drop(closed);
        self.inner.write_schema(text, orphan_checks, now)
    }
    fn begin_import(&self) -> StoreResult<u64> {
        self.inner.begin_import()
    }
    fn stage_import(&self, import: u64, relationships: &[Relationship]) -> StoreResult<()> {
        self.inner.stage_import(import, relationships)
    }
    fn commit_import(&self, import: u64, now: Timestamp) -> StoreResult<(Revision, u64)> {
        self.inner.commit_import(import, now)
    }
    fn abort_import(&self, import: u64) -> StoreResult<()> {
        self.inner.abort_import(import)
    }
    fn gc(&self, now: Timestamp, window: Duration) -> StoreResult<GcStats> {
        self.inner.gc(now, window)
    }
    fn check_writable(&self) -> StoreResult<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            Err(StoreError::Engine("No space left on device".into()))
        } else {
            Ok(())
        }
    }
}

/// A server running in this process.
struct Running {
    addr: SocketAddr,
    store: Arc<TestStore>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl Drop for Running {
    /// A failed assertion must not leave a call blocked at the gate: the runtime would wait
    /// for its blocking thread forever and the failure would look like a hang.
    fn drop(&mut self) {
        self.store.open_gate();
    }
}

impl Running {
    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn stopped(mut self) -> Result<(), ServerError> {
        let done = self.done.take().expect("not awaited yet");
        tokio::time::timeout(PATIENCE, done)
            .await
            .expect("the server did not stop")
            .expect("server task")
    }
}

async fn serve(options: ServerOptions) -> Running {
    let store = Arc::new(TestStore::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dyn_store: Arc<dyn Datastore> = store.clone();
    let api = Api::new(
        Arc::clone(&dyn_store),
        EngineConfig::default(),
        Limits::default(),
    );
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(server::run(listener, api, dyn_store, options, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        store,
        stop: Some(tx),
        done: Some(done),
    }
}

async fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write_pair(files: &TlsFiles, (cert, key): &(String, String)) {
    // Key first, then certificate: a reader between the two sees a mismatched pair and must
    // keep the previous certificate until the next change.
    std::fs::write(&files.key_path, key).unwrap();
    std::fs::write(&files.cert_path, cert).unwrap();
}

fn tls_files(dir: &Path) -> TlsFiles {
    TlsFiles {
        cert_path: dir.join("cert.pem"),
        key_path: dir.join("key.pem"),
    }
}

/// A channel over TLS that trusts only `ca_pem`, offering ALPN h2.
async fn tls_channel(addr: SocketAddr, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(server::tls::ring_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

/// ReadSchema with `key`: NOT_FOUND (no schema yet) means the call got through.
async fn read_schema(channel: Channel, key: &str) -> Result<(), tonic::Status> {
    let err = SchemaServiceClient::new(channel)
        .read_schema(with_key(pb::ReadSchemaRequest {}, key))
        .await
        .map(|_| ())
        .unwrap_err();
    if err.code() == Code::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

async fn health(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(resp.status())
}

fn status_of(resp: &HealthCheckResponse) -> ServingStatus {
    resp.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_serves_several_keys_and_a_replaced_certificate_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    let first = self_signed();
    write_pair(&files, &first);
    let mut s = serve(ServerOptions {
        preshared_keys: vec!["k1".into(), "k2".into()],
        tls: Some(files.clone()),
        ..ServerOptions::default()
    })
    .await;

    let channel = tls_channel(s.addr, &first.0).await.unwrap();
    read_schema(channel.clone(), "k1").await.unwrap();
    read_schema(channel.clone(), "k2").await.unwrap();
    let err = read_schema(channel.clone(), "k3").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "invalid preshared key: invalid token");

    // Plain text to a TLS listener gets nowhere.
    let plain = Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Ok(ch) => read_schema(ch, "k1").await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a plain-text client was served by the TLS listener"
    );

    // A new certificate on disk: new connections get it, without a restart.
    let second = self_signed();
    write_pair(&files, &second);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(ch) = tls_channel(s.addr, &second.0).await
            && read_schema(ch, "k1").await.is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replaced certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = match tls_channel(s.addr, &first.0).await {
        Ok(ch) => read_schema(ch, "k1").await.is_ok(),
        Err(_) => false,
    };
    assert!(!old, "new connections still get the old certificate");
    // The connection made before the change goes on working.
    read_schema(channel, "k2").await.unwrap();

    // Garbage on disk: the last good certificate stays.
    std::fs::write(&files.cert_path, "garbage").unwrap();
    tokio::time::sleep(server::tls::RELOAD_CHECK_INTERVAL * 2).await;
    let ch = tls_channel(s.addr, &second.0).await.unwrap();
    read_schema(ch, "k1").await.unwrap();

    s.shutdown();
    s.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_listed_key_is_accepted_with_spicedb_errors_for_the_rest() {
    let mut s = serve(ServerOptions {
        preshared_keys: vec!["first-key".into(), "second-key".into()],
        ..ServerOptions::default()
    })
    .await;
    let ch = plain_channel(s.addr).await;
    read_schema(ch.clone(), "first-key").await.unwrap();
    read_schema(ch.clone(), "second-key").await.unwrap();
    for wrong in ["third-key", "first-ke", "first-key2"] {
        let err = read_schema(ch.clone(), wrong).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{wrong}");
        assert_eq!(err.message(), "invalid preshared key: invalid token");
    }
    let mut schema = SchemaServiceClient::new(ch.clone());
    let err = schema
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().starts_with("invalid preshared key: "),
        "{err:?}"
    );
    let mut req = tonic::Request::new(pb::ReadSchemaRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer ".parse().unwrap());
    let err = schema.read_schema(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "missing preshared key");
    // health needs no key
    assert_eq!(health(ch, "").await.unwrap(), ServingStatus::Serving);
    s.shutdown();
    s.stopped().await.unwrap();

    // An empty key is refused at startup.
    let s = serve(ServerOptions {
        preshared_keys: vec!["k1".into(), String::new()],
        ..ServerOptions::default()
    })
    .await;
    assert!(matches!(s.stopped().await, Err(ServerError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_clients_do_not_stop_others_from_completing_a_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    let pair = self_signed();
    write_pair(&files, &pair);
    let mut s = serve(ServerOptions {
        tls: Some(files),
        // far longer than the test waits: only concurrency lets the others through
        tls_handshake_timeout: Duration::from_secs(600),
        ..ServerOptions::default()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    // one that starts a ClientHello and stops
    let mut partial = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, &[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    silent.push(partial);

    let served = tokio::time::timeout(PATIENCE, async {
        let ch = tls_channel(s.addr, &pair.0).await.unwrap();
        health(ch, "").await.unwrap()
    })
    .await
    .expect("a client behind silent ones was not served");
    assert_eq!(served, ServingStatus::Serving);
    drop(silent);
    s.shutdown();
    s.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_finishes_its_handshake_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    write_pair(&files, &self_signed());
    let mut s = serve(ServerOptions {
        tls: Some(files),
        tls_handshake_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the silent client was never disconnected");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    s.shutdown();
    s.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_turns_health_not_serving_and_lets_in_flight_calls_finish() {
    let mut s = serve(ServerOptions {
        shutdown_grace_period: Duration::from_secs(600),
        ..ServerOptions::default()
    })
    .await;
    let ch = plain_channel(s.addr).await;
    let mut watch = HealthClient::new(ch.clone())
        .watch(HealthCheckRequest {
            service: "authzed.api.v1.PermissionsService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(status_of(&first), ServingStatus::Serving);

    s.store.close_gate();
    let held = tokio::spawn({
        let ch = ch.clone();
        async move {
            SchemaServiceClient::new(ch)
                .write_schema(pb::WriteSchemaRequest {
                    schema: "definition user {}".into(),
                })
                .await
        }
    });
    s.store.wait_entered(1).await;

    s.shutdown();
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("health did not change on shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&next), ServingStatus::NotServing);
    drop(watch);

    // New calls are refused: the listener is closed or the call is turned away.
    let refused = match Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
    {
        Err(_) => true,
        Ok(c) => read_schema(c, "").await.is_err(),
    };
    assert!(refused, "a new call was served during shutdown");

    // The in-flight call finishes and the server stops.
    s.store.open_gate();
    let written = tokio::time::timeout(PATIENCE, held)
        .await
        .expect("the held call did not finish")
        .unwrap();
    assert!(written.is_ok(), "{written:?}");
    s.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grace_period_bounds_the_wait_for_in_flight_calls() {
    let mut s = serve(ServerOptions {
        shutdown_grace_period: Duration::from_millis(300),
        ..ServerOptions::default()
    })
    .await;
    let ch = plain_channel(s.addr).await;
    s.store.close_gate();
    let held = tokio::spawn({
        let ch = ch.clone();
        async move {
            SchemaServiceClient::new(ch)
                .write_schema(pb::WriteSchemaRequest {
                    schema: "definition user {}".into(),
                })
                .await
        }
    });
    s.store.wait_entered(1).await;
    s.shutdown();
    let store = Arc::clone(&s.store);
    let stopped = s.stopped().await;
    let cut = tokio::time::timeout(PATIENCE, held)
        .await
        .expect("the held call was not cut off")
        .unwrap();
    store.open_gate();
    stopped.unwrap();
    assert!(cut.is_err(), "the call outlived the server: {cut:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_is_not_serving_while_the_store_cannot_write() {
    let mut s = serve(ServerOptions {
        health_check_interval: Duration::from_millis(20),
        ..ServerOptions::default()
    })
    .await;
    let ch = plain_channel(s.addr).await;
    let wait_for = |want: ServingStatus| {
        let ch = ch.clone();
        async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let all = [
                    health(ch.clone(), "").await.unwrap(),
                    health(ch.clone(), "authzed.api.v1.SchemaService")
                        .await
                        .unwrap(),
                    health(ch.clone(), "authzed.api.v1.WatchService")
                        .await
                        .unwrap(),
                ];
                if all == [want, want, want] {
                    return;
                }
                assert!(Instant::now() < deadline, "health never became {want:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(ServingStatus::Serving).await;
    s.store.disk_full.store(true, Ordering::SeqCst);
    wait_for(ServingStatus::NotServing).await;
    s.store.disk_full.store(false, Ordering::SeqCst);
    wait_for(ServingStatus::Serving).await;
    s.shutdown();
    s.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_over_the_concurrency_limit_get_resource_exhausted_but_health_answers() {
    let mut s = serve(ServerOptions {
        concurrency_limit: 1,
        ..ServerOptions::default()
    })
    .await;
    let ch = plain_channel(s.addr).await;
    s.store.close_gate();
    let held = tokio::spawn({
        let ch = ch.clone();
        async move {
            SchemaServiceClient::new(ch)
                .write_schema(pb::WriteSchemaRequest {
                    schema: "definition user {}".into(),
                })
                .await
        }
    });
    s.store.wait_entered(1).await;
    let err = read_schema(ch.clone(), "").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        health(ch.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    s.store.open_gate();
    held.await.unwrap().unwrap();
    // the slot is free again
    SchemaServiceClient::new(ch)
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap();
    s.shutdown();
    s.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_messages_are_refused() {
    let mut s = serve(ServerOptions {
        max_message_size: 1024,
        ..ServerOptions::default()
    })
    .await;
    let mut schema = SchemaServiceClient::new(plain_channel(s.addr).await);
    let big = format!("/** {} */\ndefinition user {{}}", "x".repeat(2000));
    let err = schema
        .write_schema(pb::WriteSchemaRequest { schema: big })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        s.store.entered.load(Ordering::SeqCst),
        0,
        "the oversized write reached the store"
    );
    let small = format!("/** {} */\ndefinition user {{}}", "x".repeat(500));
    schema
        .write_schema(pb::WriteSchemaRequest { schema: small })
        .await
        .unwrap();
    s.shutdown();
    s.stopped().await.unwrap();
}
