//! The Prometheus endpoint and the per-call instrumentation, against a real server.
//!
//! A real server and metrics endpoint on port 0, calls that succeed and fail, a scrape over
//! HTTP, and the request id echoed and carried by the logs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Backend, TestServer, create, fully_consistent, obj, start, subj};
use futures::TryStreamExt as _;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::model::Timestamp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

/// The metrics live in the process-wide registry: the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SCHEMA: &str = "definition user {}\n\
    definition document {\n\
      relation viewer: user\n\
      permission view = viewer\n\
    }";

/// A server plus a metrics endpoint on port 0; the endpoint stops when this is dropped.
struct WithMetrics {
    server: TestServer,
    metrics: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_with_metrics() -> WithMetrics {
    let server = start(Backend::Memory, None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(pemba::server::metrics::serve_tcp(listener, async {
        let _ = stopped.await;
    }));
    WithMetrics {
        server,
        metrics,
        _stop: stop,
    }
}

/// One HTTP/1.1 request; returns the status code and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// A parsed scrape: every sample as (name, labels) -> value.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(body: &str) -> Scrape {
        let mut out = Vec::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap();
                    let labels = inner
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            out.push((name, labels, value));
        }
        Scrape(out)
    }

    /// The value of the one sample of `name` with (at least) `labels`; 0 if there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(hits.len() <= 1, "{name} {labels:?} is ambiguous: {hits:?}");
        hits.first().copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }
}

/// What changed between two scrapes.
struct Delta<'a> {
    after: &'a Scrape,
    before: &'a Scrape,
}

impl Delta<'_> {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.after.get(name, labels) - self.before.get(name, labels)
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

fn check_request(doc: &str, user: &str) -> pb::CheckPermissionRequest {
    pb::CheckPermissionRequest {
        consistency: fully_consistent(),
        resource: Some(obj("document", doc)),
        permission: "view".into(),
        subject: Some(subj("user", user, "")),
        ..Default::default()
    }
}

const PERMS: &str = "authzed.api.v1.PermissionsService";

fn rpc<'a>(kind: &'a str, method: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("grpc_type", kind),
        ("grpc_service", PERMS),
        ("grpc_method", method),
    ]
}

fn with_code<'a>(labels: [(&'a str, &'a str); 3], code: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = labels.to_vec();
    v.push(("grpc_code", code));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_counts_calls_engine_and_store() {
    let _serial = SERIAL.lock().await;
    let WithMetrics {
        mut server,
        metrics,
        _stop,
    } = start_with_metrics().await;

    // Before any call of this test: the families exist.
    let before = scrape(metrics).await;
    assert!(before.has("process_resident_memory_bytes"));
    assert!(before.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(before.has("pemba_datastore_head_revision"));
    assert!(before.has("spicedb_datastore_gc_failure_total"));
    assert!(before.has("pemba_dispatch_total"));
    let check = rpc("unary", "CheckPermission");

    server.write_schema(SCHEMA).await.unwrap();
    server
        .write(vec![
            create("document:a#viewer@user:ann"),
            create("document:b#viewer@user:ann"),
            create("document:c#viewer@user:bob"),
        ])
        .await
        .unwrap();
    let yes = server
        .permissions
        .check_permission(check_request("a", "ann"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        yes.permissionship,
        pb::check_permission_response::Permissionship::HasPermission as i32
    );
    let no = server
        .permissions
        .check_permission(check_request("c", "ann"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        no.permissionship,
        pb::check_permission_response::Permissionship::NoPermission as i32
    );
    let bad = server
        .permissions
        .check_permission(pb::CheckPermissionRequest {
            resource: None,
            ..check_request("a", "ann")
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let item = |doc: &str, user: &str| pb::CheckBulkPermissionsRequestItem {
        resource: Some(obj("document", doc)),
        permission: "view".into(),
        subject: Some(subj("user", user, "")),
        context: None,
    };
    let bulk = server
        .permissions
        .check_bulk_permissions(pb::CheckBulkPermissionsRequest {
            consistency: fully_consistent(),
            items: vec![item("a", "ann"), item("b", "ann"), item("c", "ann")],
            with_tracing: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bulk.pairs.len(), 3);
    let found: Vec<pb::LookupResourcesResponse> = server
        .permissions
        .lookup_resources(pb::LookupResourcesRequest {
            consistency: fully_consistent(),
            resource_object_type: "document".into(),
            permission: "view".into(),
            subject: Some(subj("user", "ann", "")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    // A method no service has: counted under `unknown`, not under a name the client chose.
    let mut grpc = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let unknown = grpc
        .unary::<_, pb::CheckPermissionResponse, _>(
            tonic::Request::new(check_request("a", "ann")),
            tonic::codegen::http::uri::PathAndQuery::from_static("/made.Up/Method"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    // Deleting one and collecting garbage at once.
    let deleted = server
        .permissions
        .delete_relationships(pb::DeleteRelationshipsRequest {
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: "document".into(),
                optional_resource_id: "c".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted_at.is_some());
    let stats = server.store.gc(Timestamp::now(), Duration::ZERO).unwrap();
    assert_eq!(stats.relationships, 1);

    let after = scrape(metrics).await;
    // Counters and histograms since `before` (other tests of this binary ran before).
    let s = Delta {
        after: &after,
        before: &before,
    };
    // Per-RPC counters, by method and code.
    assert_eq!(s.get("grpc_server_started_total", &check), 3.0);
    assert_eq!(
        s.get("grpc_server_handled_total", &with_code(check, "OK")),
        2.0
    );
    assert_eq!(
        s.get(
            "grpc_server_handled_total",
            &with_code(check, "InvalidArgument")
        ),
        1.0
    );
    assert_eq!(s.get("grpc_server_handling_seconds_count", &check), 3.0);
    let mut le = check.to_vec();
    le.push(("le", "+Inf"));
    assert_eq!(s.get("grpc_server_handling_seconds_bucket", &le), 3.0);
    let mut le_30 = check.to_vec();
    le_30.push(("le", "30"));
    assert_eq!(s.get("grpc_server_handling_seconds_bucket", &le_30), 3.0);
    let lookup = rpc("server_stream", "LookupResources");
    assert_eq!(
        s.get("grpc_server_handled_total", &with_code(lookup, "OK")),
        1.0
    );
    assert_eq!(s.get("grpc_server_handling_seconds_count", &lookup), 1.0);
    let write = rpc("unary", "WriteRelationships");
    assert_eq!(
        s.get("grpc_server_handled_total", &with_code(write, "OK")),
        1.0
    );
    assert_eq!(
        s.get(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "authzed.api.v1.SchemaService"),
                ("grpc_method", "WriteSchema"),
                ("grpc_code", "OK"),
            ]
        ),
        1.0
    );
    assert_eq!(
        s.get(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "unknown"),
                ("grpc_method", "unknown"),
                ("grpc_code", "Unimplemented"),
            ]
        ),
        1.0
    );
    assert!(
        !after
            .0
            .iter()
            .any(|(_, l, _)| l.values().any(|v| v.contains("made.Up")))
    );
    assert_eq!(after.get("pemba_grpc_in_flight_requests", &[]), 0.0);

    // Engine: both valid checks answered (fast path or not), by permissionship.
    let answers = |p: &str| {
        s.get(
            "spicedb_v1_check_permissionship_total",
            &[("method", "CheckPermission"), ("permissionship", p)],
        )
    };
    assert_eq!(answers("HAS_PERMISSION"), 1.0);
    assert_eq!(answers("NO_PERMISSION"), 1.0);
    let bulk_answers = |p: &str| {
        s.get(
            "spicedb_v1_check_permissionship_total",
            &[("method", "CheckBulkPermissions"), ("permissionship", p)],
        )
    };
    assert_eq!(bulk_answers("HAS_PERMISSION"), 2.0);
    assert_eq!(bulk_answers("NO_PERMISSION"), 1.0);
    let fast = |r: &str| s.get("pemba_check_fast_path_total", &[("result", r)]);
    assert_eq!(fast("answered") + fast("gave_up"), 5.0);
    assert!(fast("answered") >= 1.0);
    assert!(s.get("pemba_dispatch_total", &[]) >= 2.0);
    assert!(s.get("pemba_dispatches_per_evaluation_count", &[]) >= 2.0);

    // Store: schema, one write, one delete: three commits, head at revision 3, two stored.
    assert_eq!(after.get("pemba_datastore_head_revision", &[]), 3.0);
    assert_eq!(after.get("pemba_datastore_relationships", &[]), 2.0);
    assert_eq!(
        s.get("pemba_datastore_write_commit_seconds_count", &[]),
        3.0
    );
    assert_eq!(
        s.get("spicedb_datastore_gc_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(s.get("spicedb_datastore_gc_relationships_total", &[]), 1.0);
    assert!(s.get("spicedb_datastore_gc_transactions_total", &[]) >= 1.0);
    assert_eq!(s.get("spicedb_datastore_gc_failure_total", &[]), 0.0);
}

#[tokio::test]
async fn only_get_metrics_is_served() {
    let _serial = SERIAL.lock().await;
    let m = start_with_metrics().await;
    for path in ["/", "/metric", "/metrics/x", "/debug/pprof/"] {
        let (status, _) = http(m.metrics, "GET", path).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = http(m.metrics, "POST", "/metrics").await;
    assert_eq!(status, 405);
    let (status, body) = http(m.metrics, "GET", "/metrics?x=1").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE grpc_server_started_total counter"),
        "{body}"
    );
}

/// Log lines written by the server, for the whole test binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("pemba=debug"))
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .init();
        logs
    }))
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn request_id_is_echoed_and_logged() {
    let _serial = SERIAL.lock().await;
    let logs = captured_logs();
    let mut m = start_with_metrics().await;
    m.server.write_schema(SCHEMA).await.unwrap();

    let mut req = tonic::Request::new(check_request("a", "ann"));
    req.metadata_mut()
        .insert("x-request-id", "client-chosen-42".parse().unwrap());
    let resp = m.server.permissions.check_permission(req).await.unwrap();
    assert_eq!(
        resp.metadata().get("x-request-id").unwrap(),
        "client-chosen-42"
    );

    // A failing call (status in the headers) gets it too.
    let mut req = tonic::Request::new(pb::CheckPermissionRequest {
        resource: None,
        ..check_request("a", "ann")
    });
    req.metadata_mut()
        .insert("x-request-id", "failing-7".parse().unwrap());
    let err = m
        .server
        .permissions
        .check_permission(req)
        .await
        .unwrap_err();
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "failing-7");

    // Without one, or with one that is not printable: a fresh id each time.
    let ids: Vec<String> = futures::future::join_all((0..2).map(|_| {
        let mut client = m.server.permissions.clone();
        async move {
            let resp = client
                .check_permission(check_request("a", "ann"))
                .await
                .unwrap();
            resp.metadata()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        }
    }))
    .await;
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }

    // The logs of a call carry its id and method.
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("request_id=client-chosen-42"))
        .unwrap_or_else(|| panic!("no log line with the request id in:\n{text}"));
    assert!(
        line.contains("method=authzed.api.v1.PermissionsService/CheckPermission"),
        "{line}"
    );
    assert!(
        text.lines().any(|l| l.contains("request_id=failing-7")
            && l.contains("rpc finished")
            && l.contains("grpc_code=\"InvalidArgument\"")),
        "{text}"
    );
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1: (CA PEM, leaf PEM, leaf key
/// PEM).
fn ca_and_leaf() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// One HTTPS/1.1 request trusting only `ca_pem`; returns the status code and the body.
async fn https(addr: SocketAddr, ca_pem: &str, path: &str) -> (u16, String) {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(pemba::server::tls::ring_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // The server may close without a TLS close_notify: keep what was read.
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_tls_and_not_in_clear() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_leaf();
    let files = pemba::server::TlsFiles {
        cert_path: dir.path().join("cert.pem"),
        key_path: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert_path, cert).unwrap();
    std::fs::write(&files.key_path, key).unwrap();
    let tls = pemba::server::tls::server_config(&files, pemba::server::metrics::ALPN).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(pemba::server::metrics::serve_tls(
        listener,
        tls,
        Duration::from_secs(10),
        async {
            let _ = stopped.await;
        },
    ));

    let (status, body) = https(addr, &ca, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE"), "{body}");

    // Plain HTTP to the TLS port: the handshake fails and no metrics come back.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("# TYPE"), "{text}");
    assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
}
