//! Shared test fixtures: a real server on 127.0.0.1:0 with a real tonic client.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pemba::api::proto::authzed::api::v1 as pb;
use pemba::api::{Api, Limits};
use pemba::engine::EngineConfig;
use pemba::server::{self, ServerOptions};
use pemba::store::{Datastore, MemoryStore, RocksStore};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub use pb::permissions_service_client::PermissionsServiceClient;
pub use pb::schema_service_client::SchemaServiceClient;

/// A running server and clients for it; the server stops when this is dropped.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub channel: Channel,
    pub permissions: PermissionsServiceClient<Channel>,
    pub schema: SchemaServiceClient<Channel>,
    pub store: Arc<dyn Datastore>,
    stop: Option<oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Which store a test server uses.
pub enum Backend {
    Memory,
    Rocks,
}

/// Starts a server on a free port.
pub async fn start(backend: Backend, key: Option<&str>) -> TestServer {
    let (store, dir): (Arc<dyn Datastore>, _) = match backend {
        Backend::Memory => (Arc::new(MemoryStore::new()), None),
        Backend::Rocks => {
            let dir = tempfile::tempdir().unwrap();
            (Arc::new(RocksStore::open(dir.path()).unwrap()), Some(dir))
        }
    };
    start_with_store(store, dir, key).await
}

/// Starts a server over an existing store.
pub async fn start_with_store(
    store: Arc<dyn Datastore>,
    dir: Option<tempfile::TempDir>,
    key: Option<&str>,
) -> TestServer {
    start_with_limits(store, dir, key, Limits::default()).await
}

/// Starts a server over an existing store, with the given request limits.
pub async fn start_with_limits(
    store: Arc<dyn Datastore>,
    dir: Option<tempfile::TempDir>,
    key: Option<&str>,
    limits: Limits,
) -> TestServer {
    let options = ServerOptions {
        preshared_keys: key.map(str::to_string).into_iter().collect(),
        ..ServerOptions::default()
    };
    start_with_options(store, dir, options, limits).await
}

/// Starts a server over an existing store, with the given server options and request limits.
pub async fn start_with_options(
    store: Arc<dyn Datastore>,
    dir: Option<tempfile::TempDir>,
    options: ServerOptions,
    limits: Limits,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = Api::new(Arc::clone(&store), EngineConfig::default(), limits);
    let (tx, rx) = oneshot::channel::<()>();
    let server_store = Arc::clone(&store);
    let handle = tokio::spawn(async move {
        server::run(listener, api, server_store, options, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestServer {
        addr,
        channel: channel.clone(),
        permissions: PermissionsServiceClient::new(channel.clone()),
        schema: SchemaServiceClient::new(channel),
        store,
        stop: Some(tx),
        handle: Some(handle),
        _dir: dir,
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pemba serve` listening on `port`, for a test to add its flags to and spawn: metrics on a
/// free port (servers of parallel tests must not collide on 9090), warnings and errors on
/// stderr.
pub fn serve_command(port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pemba"));
    command
        .args(["serve", "--grpc-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .env("PEMBA_METRICS_ADDR", "127.0.0.1:0")
        .env("PEMBA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// Waits until something listens on `port`; panics if `child` exits first or `patience` runs
/// out.
pub fn wait_listening(child: &mut Child, port: u16, patience: Duration) {
    let deadline = Instant::now() + patience;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "pemba exited before listening: {exited:?}"
        );
        assert!(
            Instant::now() < deadline,
            "pemba did not listen within {patience:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn obj(t: &str, id: &str) -> pb::ObjectReference {
    pb::ObjectReference {
        object_type: t.into(),
        object_id: id.into(),
    }
}

pub fn subj(t: &str, id: &str, rel: &str) -> pb::SubjectReference {
    pb::SubjectReference {
        object: Some(obj(t, id)),
        optional_relation: rel.into(),
    }
}

/// `document:plan#viewer@user:ann` or `...@group:eng#member` as a proto relationship.
pub fn rel(text: &str) -> pb::Relationship {
    let r = pemba::model::parse_relationship(text).unwrap();
    pb::Relationship {
        resource: Some(obj(&r.resource.object_type, &r.resource.object_id)),
        relation: r.relation,
        subject: Some(subj(
            &r.subject.object.object_type,
            &r.subject.object.object_id,
            r.subject.relation.as_deref().unwrap_or(""),
        )),
        optional_caveat: None,
        optional_expires_at: None,
    }
}

pub fn update(op: pb::relationship_update::Operation, text: &str) -> pb::RelationshipUpdate {
    pb::RelationshipUpdate {
        operation: op as i32,
        relationship: Some(rel(text)),
    }
}

pub fn touch(text: &str) -> pb::RelationshipUpdate {
    update(pb::relationship_update::Operation::Touch, text)
}

pub fn create(text: &str) -> pb::RelationshipUpdate {
    update(pb::relationship_update::Operation::Create, text)
}

pub fn fully_consistent() -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
    })
}

pub fn fresh(token: &pb::ZedToken) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(token.clone())),
    })
}

/// The `ErrorInfo.reason` of a status, or "".
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// WriteRelationships through `client`: the token of the write.
pub async fn write_with(
    client: &mut PermissionsServiceClient<Channel>,
    updates: Vec<pb::RelationshipUpdate>,
) -> Result<pb::ZedToken, tonic::Status> {
    Ok(client
        .write_relationships(pb::WriteRelationshipsRequest {
            updates,
            ..Default::default()
        })
        .await?
        .into_inner()
        .written_at
        .unwrap())
}

impl TestServer {
    pub async fn write_schema(&mut self, text: &str) -> Result<pb::ZedToken, tonic::Status> {
        Ok(self
            .schema
            .write_schema(pb::WriteSchemaRequest {
                schema: text.into(),
            })
            .await?
            .into_inner()
            .written_at
            .unwrap())
    }

    pub async fn write(
        &mut self,
        updates: Vec<pb::RelationshipUpdate>,
    ) -> Result<pb::ZedToken, tonic::Status> {
        write_with(&mut self.permissions, updates).await
    }

    pub async fn read(
        &mut self,
        req: pb::ReadRelationshipsRequest,
    ) -> Result<Vec<pb::ReadRelationshipsResponse>, tonic::Status> {
        use futures::TryStreamExt;
        self.permissions
            .read_relationships(req)
            .await?
            .into_inner()
            .try_collect()
            .await
    }
}
