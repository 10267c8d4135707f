//! Round-trip benchmarks of the gRPC server in process, on a plain and a TCP_NODELAY listener.
//!
//! The workload at scale 1 in a `MemoryStore`, served in process by `server::run` on
//! 127.0.0.1, and a tonic client asking `grpc.health.v1` Check (the floor of a unary call),
//! CheckPermission (a direct hit: the fixed cost of a Pemba call; a nested check) and
//! LookupSubjects / LookupResources (streaming) — once on a plain listener, as `pemba serve`
//! binds today, and once on a listener with TCP_NODELAY set (Linux copies it to accepted
//! sockets). The gap between the two is Nagle's algorithm meeting delayed ACKs on streamed
//! responses. `cargo bench --bench grpc`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark harness: a failed setup should abort loudly"
)]

#[path = "../src/bin/pemba-bench/workload.rs"]
mod workload;

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::StreamExt as _;
use pb::permissions_service_client::PermissionsServiceClient;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::api::{Api, Limits};
use pemba::engine::EngineConfig;
use pemba::model::Timestamp;
use pemba::server::{self, ServerOptions};
use pemba::store::{Datastore, MemoryStore, RelationshipUpdate, UpdateOp};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SEED: u64 = 42;

fn loaded_store() -> Arc<dyn Datastore> {
    let store = MemoryStore::new();
    let now = Timestamp::now();
    store.write_schema(workload::schema(), &[], now).unwrap();
    let rels = workload::relationships(1, SEED);
    for chunk in rels.chunks(1000) {
        let updates: Vec<RelationshipUpdate> = chunk
            .iter()
            .map(|r| RelationshipUpdate {
                op: UpdateOp::Touch,
                relationship: r.clone(),
            })
            .collect();
        store.write_relationships(&[], &updates, now).unwrap();
    }
    Arc::new(store)
}

/// Serves `store` on a fresh loopback port; returns a connected client.
async fn serve(
    store: Arc<dyn Datastore>,
    nodelay: bool,
) -> (PermissionsServiceClient<Channel>, HealthClient<Channel>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_nodelay(nodelay).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(128).unwrap();
    let addr = listener.local_addr().unwrap();
    let api = Api::new(
        Arc::clone(&store),
        EngineConfig::default(),
        Limits::default(),
    );
    tokio::spawn(async move {
        server::run(
            listener,
            api,
            store,
            ServerOptions::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        PermissionsServiceClient::new(channel.clone()),
        HealthClient::new(channel),
    )
}

fn obj(o: &pemba::model::ObjectRef) -> pb::ObjectReference {
    pb::ObjectReference {
        object_type: o.object_type.clone(),
        object_id: o.object_id.clone(),
    }
}

fn subj(s: &pemba::model::SubjectRef) -> pb::SubjectReference {
    pb::SubjectReference {
        object: Some(obj(&s.object)),
        optional_relation: s.relation.clone().unwrap_or_default(),
    }
}

fn round_trips(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = loaded_store();
    let rels = workload::relationships(1, SEED);
    let (doc, user) = workload::nested_viewer_pair(&rels).unwrap();
    let (direct_doc, direct_user) = workload::direct_viewer_pair(&rels).unwrap();
    let ls_doc = workload::lookup_subjects_documents(1, SEED, 1).remove(0);
    let lr_user = workload::lookup_resources_users(1, SEED, 1).remove(0);

    let mut g = c.benchmark_group("grpc");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for nodelay in [false, true] {
        let name = if nodelay { "nodelay" } else { "default" };
        let (client, health) = rt.block_on(serve(Arc::clone(&store), nodelay));
        // the floor: a tonic unary call that does no Pemba work at all
        g.bench_function(BenchmarkId::new("health_check", name), |b| {
            b.iter(|| {
                let mut health = health.clone();
                rt.block_on(async {
                    health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .unwrap()
                })
            });
        });
        // the fixed cost of a unary call: the engine answers this in about a microsecond
        g.bench_function(BenchmarkId::new("check_direct", name), |b| {
            b.iter(|| {
                let mut client = client.clone();
                rt.block_on(async {
                    client
                        .check_permission(pb::CheckPermissionRequest {
                            resource: Some(obj(&direct_doc)),
                            permission: "viewer".into(),
                            subject: Some(subj(&direct_user)),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                })
            });
        });
        g.bench_function(BenchmarkId::new("check_nested", name), |b| {
            b.iter(|| {
                let mut client = client.clone();
                rt.block_on(async {
                    client
                        .check_permission(pb::CheckPermissionRequest {
                            resource: Some(obj(&doc)),
                            permission: "view".into(),
                            subject: Some(subj(&user)),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                })
            });
        });
        g.bench_function(BenchmarkId::new("lookup_subjects", name), |b| {
            b.iter(|| {
                let mut client = client.clone();
                rt.block_on(async {
                    let mut s = client
                        .lookup_subjects(pb::LookupSubjectsRequest {
                            resource: Some(obj(&ls_doc)),
                            permission: "view".into(),
                            subject_object_type: "user".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let mut n = 0;
                    while let Some(r) = s.next().await {
                        r.unwrap();
                        n += 1;
                    }
                    n
                })
            });
        });
        g.bench_function(BenchmarkId::new("lookup_resources", name), |b| {
            b.iter(|| {
                let mut client = client.clone();
                rt.block_on(async {
                    let mut s = client
                        .lookup_resources(pb::LookupResourcesRequest {
                            resource_object_type: "document".into(),
                            permission: "view".into(),
                            subject: Some(subj(&lr_user)),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let mut n = 0;
                    while let Some(r) = s.next().await {
                        r.unwrap();
                        n += 1;
                    }
                    n
                })
            });
        });
    }
    g.finish();
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
