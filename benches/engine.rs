//! Micro-benchmarks of the engine in process, without gRPC, on both stores.
//!
//! Schema compile of the benchmark workload, then a direct check, a nested check, a run of
//! random checks, a 1000-item bulk check, LookupResources for one user and LookupSubjects for one
//! document, on the in-memory and the RocksDB store, each loaded with the workload at scale 1
//! (batches of 1000 through `Datastore::write_relationships`). `cargo bench --bench engine`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark harness: a failed setup should abort loudly"
)]

#[path = "../src/bin/pemba-bench/workload.rs"]
mod workload;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pemba::engine::{CheckRequest, Engine, EngineConfig, Permissionship, Snapshot};
use pemba::model::{Context, ObjectRef, SubjectRef, Timestamp};
use pemba::schema::CompiledSchema;
use pemba::store::{Datastore, MemoryStore, RelationshipUpdate, RocksStore, UpdateOp};

const SEED: u64 = 42;

/// A store loaded with the workload at scale 1, and what queries need.
struct Loaded {
    name: &'static str,
    store: Box<dyn Datastore>,
    _dir: Option<tempfile::TempDir>,
}

fn load(name: &'static str, store: Box<dyn Datastore>, dir: Option<tempfile::TempDir>) -> Loaded {
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
    Loaded {
        name,
        store,
        _dir: dir,
    }
}

fn check_req(resource: &ObjectRef, permission: &str, subject: &SubjectRef) -> CheckRequest {
    CheckRequest {
        resource: resource.clone(),
        permission: permission.to_string(),
        subject: subject.clone(),
        context: Context::new(),
        with_tracing: false,
    }
}

fn quick(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("engine");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    g
}

fn schema_compile(c: &mut Criterion) {
    let mut g = quick(c);
    g.bench_function("schema_compile", |b| {
        b.iter(|| pemba::schema::compile(black_box(workload::schema())).unwrap());
    });
    g.finish();
}

fn queries(c: &mut Criterion) {
    let rels = workload::relationships(1, SEED);
    let (direct_doc, direct_user) = workload::direct_viewer_pair(&rels).unwrap();
    let (nested_doc, nested_user) = workload::nested_viewer_pair(&rels).unwrap();
    let pairs = workload::check_pairs(1, SEED, 1000);
    let lr_user = workload::lookup_resources_users(1, SEED, 1).remove(0);
    let ls_doc = workload::lookup_subjects_documents(1, SEED, 1).remove(0);
    let schema: CompiledSchema = pemba::schema::compile(workload::schema()).unwrap();
    let engine = Engine::new(EngineConfig::default());
    // The general checker alone, for the checks the fast path would answer.
    let general = Engine::new(EngineConfig {
        fast_path: false,
        ..EngineConfig::default()
    });

    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    let stores = [
        load("memory", Box::new(MemoryStore::new()), None),
        load("rocksdb", Box::new(rocks), Some(dir)),
    ];

    let mut g = quick(c);
    for loaded in &stores {
        let store: &dyn Datastore = loaded.store.as_ref();
        let rev = store.head_revision().unwrap();
        let snap = Snapshot::new(store, &schema, rev, Timestamp::now());

        // sanity: the picked pairs answer as intended
        let direct = check_req(&direct_doc, "viewer", &direct_user);
        let nested = check_req(&nested_doc, "view", &nested_user);
        for req in [&direct, &nested] {
            let got = engine.check(&snap, req).unwrap().permissionship;
            assert_eq!(got, Permissionship::HasPermission, "{req:?}");
        }
        let random: Vec<CheckRequest> =
            pairs.iter().map(|(d, u)| check_req(d, "view", u)).collect();
        let lr = engine
            .lookup_resources(&snap, "document", "view", &lr_user, &Context::new())
            .unwrap();
        let ls = engine
            .lookup_subjects(&snap, &ls_doc, "view", "user", None, &Context::new())
            .unwrap();
        eprintln!(
            "[{}] LookupResources {}: {} documents; LookupSubjects {}: {} users",
            loaded.name,
            lr_user,
            lr.len(),
            ls_doc,
            ls.len()
        );

        g.bench_function(BenchmarkId::new("check_direct", loaded.name), |b| {
            b.iter(|| engine.check(&snap, black_box(&direct)).unwrap());
        });
        g.bench_function(BenchmarkId::new("check_nested", loaded.name), |b| {
            b.iter(|| engine.check(&snap, black_box(&nested)).unwrap());
        });
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("check_random", loaded.name), |b| {
            b.iter(|| {
                i = (i + 1) % random.len();
                engine.check(&snap, black_box(&random[i])).unwrap()
            });
        });
        g.bench_function(BenchmarkId::new("check_nested_general", loaded.name), |b| {
            b.iter(|| general.check(&snap, black_box(&nested)).unwrap());
        });
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("check_random_general", loaded.name), |b| {
            b.iter(|| {
                i = (i + 1) % random.len();
                general.check(&snap, black_box(&random[i])).unwrap()
            });
        });
        g.bench_function(BenchmarkId::new("check_bulk_1000", loaded.name), |b| {
            b.iter(|| engine.check_bulk(&snap, black_box(&random)));
        });
        g.bench_function(BenchmarkId::new("lookup_resources", loaded.name), |b| {
            b.iter(|| {
                engine
                    .lookup_resources(
                        &snap,
                        "document",
                        "view",
                        black_box(&lr_user),
                        &Context::new(),
                    )
                    .unwrap()
            });
        });
        g.bench_function(BenchmarkId::new("lookup_subjects", loaded.name), |b| {
            b.iter(|| {
                engine
                    .lookup_subjects(
                        &snap,
                        black_box(&ls_doc),
                        "view",
                        "user",
                        None,
                        &Context::new(),
                    )
                    .unwrap()
            });
        });
    }
    g.finish();
}

/// Caveat evaluation with CEL, of ordinary expressions: a comparison, a conjunction over
/// timestamps and strings, a list membership, a comprehension over a short list, and one with a
/// parameter missing (partial evaluation).
fn caveat(c: &mut Criterion) {
    use pemba::engine::{CaveatEvaluator, CelCaveatEvaluator};
    let schema = pemba::schema::compile(
        "caveat cmp(x int) { x > 10 }\n\
         caveat window(now timestamp, until timestamp, tier string) { now < until && tier == 'gold' }\n\
         caveat member(tag string, tags list<string>) { tag in tags }\n\
         caveat every(tags list<string>) { tags.all(t, t.startsWith('a')) }\n",
    )
    .unwrap();
    let ctx = |v: serde_json::Value| -> Context { serde_json::from_value(v).unwrap() };
    let cases = [
        ("cmp", ctx(serde_json::json!({"x": 42}))),
        (
            "window",
            ctx(
                serde_json::json!({"now": "2024-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z", "tier": "gold"}),
            ),
        ),
        (
            "member",
            ctx(serde_json::json!({"tag": "c", "tags": ["a", "b", "c", "d"]})),
        ),
        (
            "every",
            ctx(serde_json::json!({"tags": ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"]})),
        ),
        ("window_missing", ctx(serde_json::json!({"tier": "gold"}))),
    ];
    let ev = CelCaveatEvaluator::new();
    let mut g = c.benchmark_group("caveat");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for (name, context) in &cases {
        let def = schema
            .caveat(name.trim_end_matches("_missing"))
            .unwrap()
            .clone();
        g.bench_function(*name, |b| {
            b.iter(|| ev.evaluate(black_box(&def), black_box(context)).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, schema_compile, queries, caveat);
criterion_main!(benches);
