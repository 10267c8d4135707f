//! Figures of a real `pemba serve` (RocksDB) under background work and misuse.
//!
//! Check latency while garbage collection sweeps, while a LookupResources walks a million
//! candidates beside a writer, and while 1000 response streams are stalled, and the server's
//! memory through an ImportBulk of two million relationships, and the cost of paging through a
//! LookupResources of a million results (`paging`). `cargo bench --bench overload`;
//! the workload's scale is `PEMBA_OVERLOAD_SCALE` (10 by default), the checkers in flight
//! `PEMBA_OVERLOAD_CONCURRENCY` (8 by default), the lookup's candidates
//! `PEMBA_OVERLOAD_CANDIDATES` (1,000,000 by default).
//!
//! It prints figures and asserts nothing about time: the timing figures of the issues and of
//! docs/performance.md come from here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "benchmark harness: a failed setup should abort loudly, and figures are printed"
)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../src/bin/pemba-bench/workload.rs"]
mod workload;

use std::io::{Read as _, Write as _};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::{free_port, obj, rel, serve_command, subj, touch, wait_listening};
use futures::StreamExt as _;
use pb::permissions_service_client::PermissionsServiceClient;
use pemba::api::proto::authzed::api::v1 as pb;
use tonic::transport::Channel;

const SEED: u64 = 42;

/// A `pemba serve` child on a fresh data directory, killed on drop.
struct Server {
    child: Child,
    port: u16,
    metrics_port: u16,
    /// `None` only while a restart moves it to the next server
    dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Stops this server and starts a new one on its data.
    fn restart(mut self) -> Server {
        let dir = self.dir.take().unwrap();
        drop(self);
        Server::start_in(dir, &[])
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let (port, metrics_port) = (free_port(), free_port());
        let mut command = serve_command(port);
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env("PEMBA_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"));
        let mut child = command.spawn().unwrap();
        wait_listening(&mut child, port, Duration::from_secs(600));
        Server {
            child,
            port,
            metrics_port,
            dir: Some(dir),
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A line of `/proc/PID/status` in MiB (`VmRSS`, `VmHWM`).
    fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// The sum of a Prometheus metric's samples (all label sets).
    fn metric(&self, name: &str) -> f64 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn disk_mib(&self) -> f64 {
        fn size(p: &std::path::Path) -> u64 {
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                return 0;
            };
            if meta.is_dir() {
                std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| size(&e.unwrap().path()))
                    .sum()
            } else {
                meta.len()
            }
        }
        size(&self.dir.as_ref().unwrap().path().join("data")) as f64 / (1024.0 * 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fully_consistent() -> Option<pb::Consistency> {
    common::fully_consistent()
}

/// Streams `n` relationships made by `make` through one ImportBulkRelationships call, in
/// messages of 1000.
async fn import(channel: &Channel, n: usize, make: impl Fn(usize) -> String + Send + 'static) {
    let messages = futures::stream::iter((0..n).step_by(1000).map(move |start| {
        pb::ImportBulkRelationshipsRequest {
            relationships: (start..(start + 1000).min(n))
                .map(|i| rel(&make(i)))
                .collect(),
        }
    }));
    PermissionsServiceClient::new(channel.clone())
        .import_bulk_relationships(messages)
        .await
        .unwrap();
}

async fn load_workload(channel: &Channel, scale: u32) -> usize {
    let mut schema = pb::schema_service_client::SchemaServiceClient::new(channel.clone());
    schema
        .write_schema(pb::WriteSchemaRequest {
            schema: workload::schema().to_string(),
        })
        .await
        .unwrap();
    let rels: Arc<Vec<String>> = Arc::new(
        workload::relationships(scale, SEED)
            .iter()
            .map(ToString::to_string)
            .collect(),
    );
    let n = rels.len();
    import(channel, n, move |i| rels[i].clone()).await;
    n
}

fn check_request(
    pair: &(pemba::model::ObjectRef, pemba::model::SubjectRef),
) -> pb::CheckPermissionRequest {
    pb::CheckPermissionRequest {
        consistency: Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::MinimizeLatency(true)),
        }),
        resource: Some(obj(&pair.0.object_type, &pair.0.object_id)),
        permission: "view".into(),
        subject: Some(subj(
            &pair.1.object.object_type,
            &pair.1.object.object_id,
            "",
        )),
        ..Default::default()
    }
}

/// Latencies of Checks sent by `concurrency` loops until `stop`, sorted into the phase that was
/// current when each was sent.
struct Checkers {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u8, Duration)>>>,
}

impl Checkers {
    fn start(channel: &Channel, scale: u32, concurrency: usize) -> Checkers {
        let pairs = Arc::new(workload::check_pairs(scale, SEED, 10_000));
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(0));
        let tasks = (0..concurrency)
            .map(|t| {
                let (pairs, stop, phase) = (pairs.clone(), stop.clone(), phase.clone());
                let mut client = PermissionsServiceClient::new(channel.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let request = check_request(&pairs[i % pairs.len()]);
                        let p = phase.load(Ordering::Relaxed);
                        let start = Instant::now();
                        client.check_permission(request).await.unwrap();
                        out.push((p, start.elapsed()));
                        i += concurrency;
                    }
                    out
                })
            })
            .collect();
        Checkers { stop, phase, tasks }
    }

    fn phase(&self, p: u8) {
        self.phase.store(p, Ordering::Relaxed);
    }

    async fn finish(self) -> Vec<(u8, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

fn summary(label: &str, samples: impl IntoIterator<Item = Duration>) {
    let mut v: Vec<Duration> = samples.into_iter().collect();
    if v.is_empty() {
        println!("  {label:<44} no samples");
        return;
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {label:<44} n={:<7} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    );
}

fn phase_samples(all: &[(u8, Duration)], p: u8) -> impl Iterator<Item = Duration> + '_ {
    all.iter().filter(move |(q, _)| *q == p).map(|(_, d)| *d)
}

/// Check latency with no GC and no writes, and while GC passes remove every `document`
/// version that a delete and a re-import made garbage, over a few rounds. The GC metrics move
/// only at the end of a pass, so "while GC sweeps" runs from the moment the garbage becomes
/// due (the delete plus the GC window) until it is all collected.
async fn during_gc(scale: u32, concurrency: usize) {
    const ROUNDS: usize = 3;
    const QUIET: u8 = 2;
    let window = 5;
    let server = Server::start(&[
        "--gc-window-secs",
        &window.to_string(),
        "--gc-interval-secs",
        "1",
    ]);
    let channel = server.channel().await;
    load_workload(&channel, scale).await;
    let documents: Arc<Vec<String>> = Arc::new(
        workload::relationships(scale, SEED)
            .iter()
            .filter(|r| r.resource.object_type == "document")
            .map(ToString::to_string)
            .collect(),
    );
    let garbage = documents.len();
    let collected = "spicedb_datastore_gc_relationships_total";
    let passes = "spicedb_datastore_gc_duration_seconds_sum";
    let checkers = Checkers::start(&channel, scale, concurrency);
    // Let the load settle, then measure a quiet baseline.
    tokio::time::sleep(Duration::from_secs(window + 5)).await;
    checkers.phase(QUIET);
    tokio::time::sleep(Duration::from_secs(10)).await;
    checkers.phase(0);
    let mut swept = Vec::new();
    for _ in 0..ROUNDS {
        let before = server.metric(collected);
        let pass_time = server.metric(passes);
        let deleted_at = Instant::now();
        PermissionsServiceClient::new(channel.clone())
            .delete_relationships(pb::DeleteRelationshipsRequest {
                relationship_filter: Some(pb::RelationshipFilter {
                    resource_type: "document".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let again = documents.clone();
        import(&channel, garbage, move |i| again[i].clone()).await;
        let due = deleted_at + Duration::from_secs(window);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        checkers.phase(1);
        let deadline = Instant::now() + Duration::from_secs(window + 60);
        while server.metric(collected) < before + garbage as f64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        checkers.phase(0);
        swept.push(Duration::from_secs_f64(server.metric(passes) - pass_time));
    }
    let all = checkers.finish().await;
    println!(
        "GC: {ROUNDS} rounds of {garbage} garbage versions ({scale}x workload), GC pass time per round {swept:.1?}"
    );
    summary("Check, no GC and no writes", phase_samples(&all, QUIET));
    summary("Check during delete and re-import", phase_samples(&all, 0));
    summary("Check while GC sweeps", phase_samples(&all, 1));
}

/// Check latency while one LookupResources walks a million candidates, and a writer writes
/// beside it (the mix that made a writer-preferring lock convoy).
async fn during_big_lookup(scale: u32, concurrency: usize) {
    let candidates = env_or("PEMBA_OVERLOAD_CANDIDATES", 1_000_000);
    let server = Server::start(&["--request-timeout", "10m"]);
    let channel = server.channel().await;
    load_workload(&channel, scale).await;
    import(&channel, candidates, |i| {
        format!("document:big{i}#viewer@group:everyone#member")
    })
    .await;
    import(&channel, 1, |_| {
        "group:everyone#member@user:bigreader".into()
    })
    .await;

    let (found, took) = lookup(&server, "bigreader").await;
    println!("LookupResources over {candidates} candidates, alone: {found} found in {took:.1?}");
    let checkers = Checkers::start(&channel, scale, concurrency);
    tokio::time::sleep(Duration::from_secs(5)).await;
    checkers.phase(1);
    let stop_writer = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let writer = {
        let stop = stop_writer.clone();
        let mut client = PermissionsServiceClient::new(channel.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let at = start.duration_since(origin);
                client
                    .write_relationships(pb::WriteRelationshipsRequest {
                        updates: vec![touch(&format!("document:w{i}#viewer@user:writer"))],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                out.push((at, start.elapsed()));
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out
        })
    };
    let (found, took, first) = lookup_timed(&server, "bigreader").await;
    stop_writer.store(true, Ordering::Relaxed);
    let timed_writes = writer.await.unwrap();
    let all = checkers.finish().await;
    println!(
        "LookupResources over {candidates} candidates, beside checks and writes: {found} found in {took:.1?} (first result after {first:.1?})"
    );
    // When the slowest writes started, from the lookup's start: tells a stall in the walk
    // from one at the end of it (results built and streamed).
    let mut slowest = timed_writes.clone();
    slowest.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
    for (at, took) in slowest.iter().take(3) {
        println!("  a write started at {at:.2?} took {took:.1?}");
    }
    let writes: Vec<Duration> = timed_writes.into_iter().map(|(_, took)| took).collect();
    summary("Check without the lookup", phase_samples(&all, 0));
    summary("Check during the lookup and writes", phase_samples(&all, 1));
    summary("Write during the lookup", writes);
}

/// Runs LookupResources `document#view` for `user`; returns how many it found and the time.
async fn lookup(server: &Server, user: &str) -> (usize, Duration) {
    let (found, took, _) = lookup_timed(server, user).await;
    (found, took)
}

/// A LookupResources call: results, total time, and the time to its first result (the end
/// of the server's walk and checks: results are streamed once all are known).
async fn lookup_timed(server: &Server, user: &str) -> (usize, Duration, Duration) {
    let started = Instant::now();
    let first = std::sync::Mutex::new(None);
    let found = PermissionsServiceClient::new(server.channel().await)
        .lookup_resources(pb::LookupResourcesRequest {
            consistency: fully_consistent(),
            resource_object_type: "document".into(),
            permission: "view".into(),
            subject: Some(subj("user", user, "")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .fold(0usize, |n, r| {
            if n == 0
                && let Ok(mut first) = first.lock()
            {
                *first = Some(started.elapsed());
            }
            async move {
                r.unwrap();
                n + 1
            }
        })
        .await;
    let first = first.into_inner().ok().flatten().unwrap_or_default();
    (found, started.elapsed(), first)
}

/// Pages through a LookupResources of a million results with `optional_limit` 1000, each page
/// resuming from the last one's cursor: the time to the first result, per page, and in all
/// (`PEMBA_OVERLOAD_PAGES` pages at most, 1000 by default: all of them), and the server's
/// peak resident memory.
async fn paging_a_million() {
    let candidates = env_or("PEMBA_OVERLOAD_CANDIDATES", 1_000_000);
    let max_pages = env_or("PEMBA_OVERLOAD_PAGES", 1000);
    let server = Server::start(&["--request-timeout", "10m"]);
    let channel = server.channel().await;
    load_workload(&channel, 1).await;
    import(&channel, candidates, |i| {
        format!("document:big{i:07}#viewer@group:everyone#member")
    })
    .await;
    import(&channel, 1, |_| {
        "group:everyone#member@user:bigreader".into()
    })
    .await;
    let before = server.memory_mib("VmRSS");
    let mut client = PermissionsServiceClient::new(channel.clone());
    let started = Instant::now();
    let mut cursor: Option<pb::Cursor> = None;
    let (mut pages, mut found) = (0usize, 0usize);
    let mut first_result = None;
    let mut slowest = Duration::ZERO;
    while pages < max_pages {
        let page_started = Instant::now();
        let mut stream = client
            .lookup_resources(pb::LookupResourcesRequest {
                consistency: fully_consistent(),
                resource_object_type: "document".into(),
                permission: "view".into(),
                subject: Some(subj("user", "bigreader", "")),
                optional_limit: 1000,
                optional_cursor: cursor.take(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut in_page = 0;
        while let Some(r) = stream.message().await.unwrap() {
            first_result.get_or_insert_with(|| started.elapsed());
            cursor = r.after_result_cursor;
            in_page += 1;
        }
        slowest = slowest.max(page_started.elapsed());
        pages += 1;
        found += in_page;
        if in_page < 1000 {
            break;
        }
    }
    let took = started.elapsed();
    println!(
        "LookupResources over {candidates} results in pages of 1000: {found} results in {pages} pages, {took:.1?} ({:.1?} a page, slowest {slowest:.1?}); first result after {:.1?}; server resident memory {before:.0} MiB before, peak {:.0} MiB",
        took / u32::try_from(pages.max(1)).unwrap(),
        first_result.unwrap_or_default(),
        server.memory_mib("VmHWM"),
    );
}

/// Write and Check latency while 1000 ReadRelationships streams are stalled by their readers.
async fn with_stalled_streams(scale: u32, concurrency: usize) {
    let server = Server::start(&[]);
    let channel = server.channel().await;
    let n = load_workload(&channel, scale).await;
    let write = |i: usize| {
        let mut client = PermissionsServiceClient::new(channel.clone());
        async move {
            let start = Instant::now();
            client
                .write_relationships(pb::WriteRelationshipsRequest {
                    updates: vec![touch(&format!("document:s{i}#viewer@user:writer"))],
                    ..Default::default()
                })
                .await
                .unwrap();
            start.elapsed()
        }
    };
    let mut quiet = Vec::new();
    for i in 0..50 {
        quiet.push(write(i).await);
    }
    let mut held = Vec::new();
    for _ in 0..10 {
        let stalled = server.channel().await;
        for _ in 0..100 {
            held.push(
                PermissionsServiceClient::new(stalled.clone())
                    .read_relationships(pb::ReadRelationshipsRequest {
                        consistency: fully_consistent(),
                        relationship_filter: Some(pb::RelationshipFilter {
                            resource_type: "document".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stalled = Vec::new();
    for i in 50..100 {
        stalled.push(write(i).await);
    }
    let checkers = Checkers::start(&channel, scale, concurrency);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = checkers.finish().await;
    println!(
        "1000 stalled ReadRelationships streams over {n} relationships (resident memory {:.0} MiB)",
        server.memory_mib("VmRSS:")
    );
    drop(held);
    summary("Write, no stalled stream", quiet);
    summary("Write, 1000 streams stalled", stalled);
    summary("Check, 1000 streams stalled", phase_samples(&all, 0));
}

/// The server's memory across one ImportBulk call of two million relationships.
async fn import_memory() {
    const N: usize = 2_000_000;
    let server = Server::start(&[]);
    let channel = server.channel().await;
    pb::schema_service_client::SchemaServiceClient::new(channel.clone())
        .write_schema(pb::WriteSchemaRequest {
            schema: "definition user {}\ndefinition document {\n    relation viewer: user\n}"
                .into(),
        })
        .await
        .unwrap();
    let (rss, hwm) = (server.memory_mib("VmRSS:"), server.memory_mib("VmHWM:"));
    let started = Instant::now();
    import(&channel, N, |i| {
        format!("document:imported{i}#viewer@user:u{}", i % 10_000)
    })
    .await;
    let took = started.elapsed();
    println!(
        "ImportBulk of {N} relationships in {took:.1?}: resident {rss:.0} -> {:.0} MiB, peak {hwm:.0} -> {:.0} MiB; data on disk {:.0} MiB",
        server.memory_mib("VmRSS:"),
        server.memory_mib("VmHWM:"),
        server.disk_mib()
    );
    // What the in-memory graph of those relationships costs by itself.
    let started = Instant::now();
    let server = server.restart();
    println!(
        "  the same data after a restart: listening in {:.1?}, resident {:.0} MiB",
        started.elapsed(),
        server.memory_mib("VmRSS:")
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks scenarios by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let scale = env_or("PEMBA_OVERLOAD_SCALE", 10);
    let concurrency = env_or("PEMBA_OVERLOAD_CONCURRENCY", 8);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        if wanted("gc") {
            during_gc(scale, concurrency).await;
        }
        if wanted("lookup") {
            during_big_lookup(scale, concurrency).await;
        }
        if wanted("stalled") {
            with_stalled_streams(scale, concurrency).await;
        }
        if wanted("import") {
            import_memory().await;
        }
        if wanted("paging") {
            paging_a_million().await;
        }
    });
}
