//! `pemba-bench`'s load generator for any `authzed.api.v1` endpoint on this machine.
//!
//! It writes the document-sharing workload of [`crate::workload`] through the public gRPC API,
//! then measures Check (concurrency 1 and N), CheckBulk, LookupResources and LookupSubjects with
//! `at_least_as_fresh` reads of the last write, and prints a table and a JSON line. Every request loop is bounded in count and in time, and only
//! the given loopback (or unix-socket) endpoint is contacted.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use futures::StreamExt as _;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::workload;
use pb::permissions_service_client::PermissionsServiceClient;
use pb::schema_service_client::SchemaServiceClient;
use pb::watch_service_client::WatchServiceClient;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::model::{ObjectRef, Relationship, SubjectRef};

/// One measured part of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// write the schema and the relationships (WriteRelationships, TOUCH, 1000 a request)
    Load,
    /// CheckPermission `document#view`, one request at a time
    Check,
    /// CheckPermission `document#view`, `--concurrency` requests in flight
    Check64,
    /// CheckBulkPermissions, `--bulk-size` items a request
    Bulk,
    /// LookupResources `document#view` for a random user
    Lr,
    /// LookupSubjects `document#view` (users) for a random document
    Ls,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Check => "check",
            Phase::Check64 => "check64",
            Phase::Bulk => "bulk",
            Phase::Lr => "lr",
            Phase::Ls => "ls",
        }
    }
}

/// Flags of `pemba-bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// the server: `http://HOST:PORT` on a loopback address, or `unix:/path/to/socket`
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// sent as `authorization: Bearer KEY`
    #[arg(long, env = "PEMBA_GRPC_PRESHARED_KEY", hide_env_values = true)]
    pub preshared_key: Option<String>,
    /// workload scale S (about 33,000·S relationships)
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// seed of the data set and of the queries
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// time limit of each query phase, in seconds (10 by default; 300 when `--checks` is given)
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// requests per query phase (checks for `bulk`); the phase also stops at its time limit
    #[arg(long)]
    pub checks: Option<u64>,
    /// the data is already loaded (same `--scale` and `--seed`): skip schema and writes
    #[arg(long)]
    pub skip_load: bool,
    /// do not write the schema (the endpoint already has it, e.g. SpiceDB through its C API)
    #[arg(long)]
    pub skip_schema: bool,
    /// phases to run, in order
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "load,check,check64,bulk,lr,ls"
    )]
    pub phases: Vec<Phase>,
    /// the server's process id: report its peak memory (VmHWM) and CPU time per phase
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// requests in flight in the `check64` phase
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the concurrent phases spread their requests over
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// items per CheckBulkPermissions request
    #[arg(long, default_value_t = 1000)]
    pub bulk_size: usize,
    /// CheckBulkPermissions requests in flight
    #[arg(long, default_value_t = 1)]
    pub bulk_concurrency: usize,
    /// WriteRelationships requests in flight in the `load` phase (each batch is still
    /// acknowledged only once durable; the server commits them one at a time)
    #[arg(long, default_value_t = 1)]
    pub load_concurrency: usize,
    /// deadline of each request, in seconds
    #[arg(long, default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// threads of the load generator's async runtime (default: one per core). With 1 it runs
    /// on the calling thread: about 5% lower Check latency at concurrency 1, but the
    /// concurrent phases then keep neither side busy (half the throughput at concurrency 64)
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// run a Watch stream during the `load` phase and report the relationship updates it
    /// received per second and its largest lag behind the writes' acknowledgements
    #[arg(long)]
    pub watch: bool,
    /// with `--watch`: watch this server instead of `--endpoint` (another node on the same
    /// database: the lag is then how far that node follows behind the writes)
    #[arg(long)]
    pub watch_endpoint: Option<String>,
    /// name of the target in the report (e.g. `pemba-rocksdb`, `spicedb-memdb`)
    #[arg(long, default_value = "")]
    pub label: String,
    /// print the workload's schema and exit
    #[arg(long)]
    pub print_schema: bool,
    /// print the workload's relationships (at `--scale`, `--seed`), one a line, and exit
    #[arg(long)]
    pub print_relationships: bool,
    /// print N check queries `document:D#view@user:U` (at `--scale`, `--seed`) and exit
    #[arg(long, value_name = "N")]
    pub print_checks: Option<usize>,
}

/// Most requests of one query phase when only a duration bounds it.
const DEFAULT_MAX_REQUESTS: u64 = 10_000_000;
/// Relationships per WriteRelationships request.
const WRITE_BATCH: usize = 1000;
/// How many distinct query ids each phase cycles through.
const QUERY_IDS: usize = 100_000;

/// Runs `pemba-bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.print_schema {
        print!("{}", workload::schema());
        return Ok(());
    }
    if args.print_relationships || args.print_checks.is_some() {
        return print_workload(&args);
    }
    if args.concurrency == 0 || args.connections == 0 || args.bulk_concurrency == 0 {
        bail!("--concurrency, --connections and --bulk-concurrency must be at least 1");
    }
    if args.bulk_size == 0 {
        bail!("--bulk-size must be at least 1");
    }
    let runtime = match args.client_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(bench(args))
}

/// `--print-relationships` / `--print-checks`: the workload as text, for other tools.
fn print_workload(args: &BenchArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.print_relationships {
        for r in workload::relationships(args.scale, args.seed) {
            writeln!(out, "{r}")?;
        }
    }
    if let Some(n) = args.print_checks {
        for (resource, subject) in workload::check_pairs(args.scale, args.seed, n) {
            writeln!(out, "{resource}#view@{subject}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// What a phase measured.
#[derive(Debug, Clone, Serialize)]
struct PhaseReport {
    phase: &'static str,
    /// requests completed (successfully or not)
    requests: u64,
    /// failed requests
    errors: u64,
    /// relationships written, checks answered, or results streamed
    items: u64,
    /// checks answered HAS_PERMISSION (check phases only)
    allowed: u64,
    elapsed_s: f64,
    requests_per_s: f64,
    items_per_s: f64,
    /// per-request latency, microseconds
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
    /// server CPU time (user + system) during the phase, seconds, if `--server-pid`
    server_cpu_s: Option<f64>,
    /// client (this process) CPU time during the phase, seconds
    client_cpu_s: Option<f64>,
    /// server VmHWM after the phase, KiB, if `--server-pid`
    server_vm_hwm_kib: Option<u64>,
    /// the first error seen
    first_error: Option<String>,
}

/// The whole run, printed as the JSON line.
#[derive(Debug, Serialize)]
struct Report {
    label: String,
    endpoint: String,
    scale: u32,
    seed: u64,
    relationships: usize,
    skip_load: bool,
    concurrency: usize,
    connections: usize,
    bulk_size: usize,
    phases: Vec<PhaseReport>,
    /// the watcher of the load phase, with `--watch`
    watch: Option<WatchReport>,
    server_vm_hwm_kib: Option<u64>,
    server_vm_rss_kib: Option<u64>,
}

/// What the watcher of the load phase saw.
#[derive(Debug, Clone, Serialize)]
struct WatchReport {
    /// relationship updates received
    updates: u64,
    /// messages received
    messages: u64,
    /// from the watch's start to the last update expected
    elapsed_s: f64,
    updates_per_s: f64,
    /// the largest delay between a write's acknowledgement and its revision's arrival on the
    /// watch, milliseconds (0 when the watch got it first)
    max_lag_ms: f64,
    /// the mean of that delay over the writes, milliseconds
    mean_lag_ms: f64,
    /// updates per second of a second watch started after the load from the schema write's
    /// token: how fast the change log is streamed when nothing else runs
    replay_updates_per_s: Option<f64>,
}

/// When each write was acknowledged, by its token.
type Acks = Arc<std::sync::Mutex<HashMap<String, Instant>>>;

/// Opens a Watch stream after `from` (at the head without it) and follows it on a task until
/// `expected` updates came.
async fn start_watcher(
    target: &Target,
    acks: Acks,
    expected: u64,
    from: Option<pb::ZedToken>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<WatchReport>>> {
    let mut stream = target
        .watch
        .clone()
        .watch(target.request(pb::WatchRequest {
            optional_start_cursor: from,
            ..Default::default()
        }))
        .await
        .context("Watch failed")?
        .into_inner();
    let start = Instant::now();
    Ok(tokio::spawn(async move {
        let (mut updates, mut messages) = (0u64, 0u64);
        let (mut max_lag, mut lag_sum, mut lags) = (Duration::ZERO, Duration::ZERO, 0u32);
        while updates < expected {
            let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("no watch message for 30 s ({updates} of {expected} updates)")
                })?
                .context("the watch stream failed")?
                .context("the watch stream ended")?;
            let now = Instant::now();
            updates += m.updates.len() as u64;
            messages += 1;
            let acked = m.changes_through.and_then(|t| {
                acks.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&t.token)
            });
            let lag = acked.map_or(Duration::ZERO, |a| now.saturating_duration_since(a));
            max_lag = max_lag.max(lag);
            lag_sum += lag;
            lags += 1;
        }
        let elapsed = start.elapsed();
        Ok(WatchReport {
            updates,
            messages,
            elapsed_s: elapsed.as_secs_f64(),
            updates_per_s: updates as f64 / elapsed.as_secs_f64().max(1e-9),
            max_lag_ms: max_lag.as_secs_f64() * 1e3,
            mean_lag_ms: (lag_sum / lags.max(1)).as_secs_f64() * 1e3,
            replay_updates_per_s: None,
        })
    }))
}

/// The clients and what every request carries.
#[derive(Clone)]
struct Target {
    permissions: Vec<PermissionsServiceClient<Channel>>,
    schema: SchemaServiceClient<Channel>,
    watch: WatchServiceClient<Channel>,
    auth: Option<MetadataValue<Ascii>>,
}

impl Target {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(a) = &self.auth {
            req.metadata_mut().insert("authorization", a.clone());
        }
        req
    }

    fn client(&self, worker: usize) -> PermissionsServiceClient<Channel> {
        // `connections` is at least 1 (checked in `run`), so the index is in range
        self.permissions[worker % self.permissions.len()].clone()
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let target = connect(&args).await?;
    let rels = workload::relationships(args.scale, args.seed);
    println!(
        "pemba bench: {} {}, scale {}, seed {}, {} relationships{}",
        if args.label.is_empty() {
            "target"
        } else {
            &args.label
        },
        args.endpoint,
        args.scale,
        args.seed,
        rels.len(),
        if args.skip_load { " (not loaded)" } else { "" },
    );

    let duration = Duration::from_secs(args.duration_secs.unwrap_or(if args.checks.is_some() {
        300
    } else {
        10
    }));
    let max_requests = args.checks.unwrap_or(DEFAULT_MAX_REQUESTS);
    let pid = args.server_pid;

    let mut reports = Vec::new();
    let mut watch_report = None;
    let mut token: Option<pb::ZedToken> = None;
    let pairs = Arc::new(workload::check_pairs(args.scale, args.seed, QUERY_IDS));

    for &phase in &args.phases {
        let before = Usage::read(pid);
        let outcome = match phase {
            Phase::Load if args.skip_load => continue,
            Phase::Load => {
                let acks: Acks = Arc::default();
                let watched = match &args.watch_endpoint {
                    Some(e) => connect_to(&args, e, 1).await?,
                    None => target.clone(),
                };
                let watcher = match args.watch {
                    true => Some(
                        start_watcher(&watched, Arc::clone(&acks), rels.len() as u64, None).await?,
                    ),
                    false => None,
                };
                let (outcome, written, schema_written) = load(&target, &args, &rels, &acks).await?;
                token = written.or(token);
                if let Some(w) = watcher {
                    let mut w = w.await.context("the watcher failed")??;
                    // The same changes again, read back from the log as fast as they come.
                    if let Some(from) = schema_written {
                        let replay =
                            start_watcher(&watched, Arc::default(), rels.len() as u64, Some(from))
                                .await?
                                .await
                                .context("the replaying watcher failed")??;
                        w.replay_updates_per_s = Some(replay.updates_per_s);
                    }
                    eprintln!(
                        "  watch    done: {} updates in {:.2}s, {:.0} updates/s, lag max {:.1} ms, mean {:.1} ms",
                        w.updates, w.elapsed_s, w.updates_per_s, w.max_lag_ms, w.mean_lag_ms
                    );
                    if let Some(r) = w.replay_updates_per_s {
                        eprintln!(
                            "  watch    replayed from the log after the load: {r:.0} updates/s"
                        );
                    }
                    watch_report = Some(w);
                }
                outcome
            }
            _ => {
                if token.is_none() {
                    token = Some(fresh_token(&target).await?);
                }
                let consistency = Some(pb::Consistency {
                    requirement: token
                        .clone()
                        .map(pb::consistency::Requirement::AtLeastAsFresh),
                });
                match phase {
                    Phase::Check => {
                        check_phase(&target, &pairs, consistency, 1, max_requests, duration).await
                    }
                    Phase::Check64 => {
                        check_phase(
                            &target,
                            &pairs,
                            consistency,
                            args.concurrency,
                            max_requests,
                            duration,
                        )
                        .await
                    }
                    Phase::Bulk => {
                        let requests = match args.checks {
                            Some(n) => n.div_ceil(args.bulk_size as u64),
                            None => DEFAULT_MAX_REQUESTS,
                        };
                        bulk_phase(&target, &pairs, consistency, &args, requests, duration).await
                    }
                    Phase::Lr => {
                        let users = workload::lookup_resources_users(
                            args.scale,
                            args.seed,
                            QUERY_IDS.min(usize::try_from(max_requests).unwrap_or(QUERY_IDS)),
                        );
                        lr_phase(&target, users, consistency, max_requests, duration).await
                    }
                    Phase::Ls => {
                        let docs = workload::lookup_subjects_documents(
                            args.scale,
                            args.seed,
                            QUERY_IDS.min(usize::try_from(max_requests).unwrap_or(QUERY_IDS)),
                        );
                        ls_phase(&target, docs, consistency, max_requests, duration).await
                    }
                    Phase::Load => continue,
                }
            }
        };
        let after = Usage::read(pid);
        let report = outcome.report(phase, &before, &after);
        eprintln!(
            "  {:<8} done: {} requests, {:.0} items/s",
            report.phase, report.requests, report.items_per_s
        );
        reports.push(report);
    }

    let end = Usage::read(pid);
    let report = Report {
        label: args.label.clone(),
        endpoint: args.endpoint.clone(),
        scale: args.scale,
        seed: args.seed,
        relationships: rels.len(),
        skip_load: args.skip_load,
        concurrency: args.concurrency,
        connections: args.connections,
        bulk_size: args.bulk_size,
        phases: reports,
        watch: watch_report,
        server_vm_hwm_kib: end.hwm_kib,
        server_vm_rss_kib: end.rss_kib,
    };
    print_table(&report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Connects `--connections` channels to the endpoint, refusing anything but loopback addresses
/// and unix sockets.
async fn connect(args: &BenchArgs) -> anyhow::Result<Target> {
    connect_to(args, &args.endpoint, args.connections).await
}

async fn connect_to(
    args: &BenchArgs,
    endpoint: &str,
    connections: usize,
) -> anyhow::Result<Target> {
    let timeout = Duration::from_secs(args.request_timeout_secs.max(1));
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = if let Some(path) = endpoint.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            // the URI is not used to connect: the connector below opens the socket
            Endpoint::from_static("http://[::1]:50051")
                .timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
        } else {
            let url = endpoint;
            let endpoint = Endpoint::from_shared(url.to_string())
                .with_context(|| format!("bad endpoint `{url}`"))?;
            let host = endpoint.uri().host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                bail!("refusing to load-test `{url}`: only loopback addresses and unix sockets");
            }
            endpoint.timeout(timeout).connect().await
        }
        .with_context(|| format!("cannot connect to {endpoint}"))?;
        channels.push(channel);
    }
    let auth = match args.preshared_key.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => Some(
            format!("Bearer {k}")
                .parse::<MetadataValue<Ascii>>()
                .context("the preshared key is not a valid header value")?,
        ),
        None => None,
    };
    let permissions = channels
        .iter()
        .map(|c| PermissionsServiceClient::new(c.clone()).max_decoding_message_size(64 << 20))
        .collect();
    let schema = SchemaServiceClient::new(channels[0].clone());
    let last = channels.last().context("no connection")?.clone();
    let watch = WatchServiceClient::new(last).max_decoding_message_size(256 << 20);
    Ok(Target {
        permissions,
        schema,
        watch,
        auth,
    })
}

/// A token for the data already there: the `read_at` of a fully consistent read of one
/// relationship (ReadRelationships is streaming, so even SpiceDB's embedded socket serves it).
async fn fresh_token(target: &Target) -> anyhow::Result<pb::ZedToken> {
    let mut stream = target
        .client(0)
        .read_relationships(target.request(pb::ReadRelationshipsRequest {
            consistency: Some(pb::Consistency {
                requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
            }),
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: "document".into(),
                ..Default::default()
            }),
            optional_limit: 1,
            optional_cursor: None,
        }))
        .await
        .context("a fully consistent read to get a token failed")?
        .into_inner();
    let first = stream
        .next()
        .await
        .context("no document relationships: is the data loaded?")?
        .context("a fully consistent read to get a token failed")?;
    first.read_at.context("the read response carries no token")
}

/// Writes the schema (unless skipped) and the relationships in batches, `--load-concurrency`
/// requests in flight.
async fn load(
    target: &Target,
    args: &BenchArgs,
    rels: &[Relationship],
    acks: &Acks,
) -> anyhow::Result<(Outcome, Option<pb::ZedToken>, Option<pb::ZedToken>)> {
    let mut schema_written = None;
    if !args.skip_schema {
        schema_written = target
            .schema
            .clone()
            .write_schema(target.request(pb::WriteSchemaRequest {
                schema: workload::schema().to_string(),
            }))
            .await
            .context(
                "WriteSchema failed (use --skip-schema if the endpoint has no schema service)",
            )?
            .into_inner()
            .written_at;
    }
    let batches: Vec<Vec<pb::RelationshipUpdate>> = rels
        .chunks(WRITE_BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|r| pb::RelationshipUpdate {
                    operation: pb::relationship_update::Operation::Touch as i32,
                    relationship: Some(relationship(r)),
                })
                .collect()
        })
        .collect();
    let mut outcome = Outcome::default();
    let mut token = None;
    let start = Instant::now();
    let concurrency = args.load_concurrency.max(1);
    let mut writes = futures::stream::iter(batches.into_iter().enumerate().map(|(i, updates)| {
        let mut client = target.client(i);
        async move {
            let n = updates.len() as u64;
            let t = Instant::now();
            let resp = client
                .write_relationships(target.request(pb::WriteRelationshipsRequest {
                    updates,
                    ..Default::default()
                }))
                .await
                .context("WriteRelationships failed")?;
            anyhow::Ok((n, t.elapsed(), resp.into_inner().written_at))
        }
    }))
    .buffer_unordered(concurrency);
    while let Some(done) = writes.next().await {
        let (n, latency, written_at) = done?;
        if let Some(t) = &written_at {
            acks.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(t.token.clone(), Instant::now());
        }
        outcome.latencies.push(latency);
        outcome.items += n;
        token = written_at.or(token);
    }
    outcome.elapsed = start.elapsed();
    if concurrency > 1 {
        // Which write committed last is unknown: read a token after all of them.
        token = Some(fresh_token(target).await?);
    }
    Ok((outcome, token, schema_written))
}

async fn check_phase(
    target: &Target,
    pairs: &Arc<Vec<(ObjectRef, SubjectRef)>>,
    consistency: Option<pb::Consistency>,
    workers: usize,
    max_requests: u64,
    duration: Duration,
) -> Outcome {
    let target = target.clone();
    let pairs = Arc::clone(pairs);
    drive(workers, max_requests, duration, move |i, w| {
        let (resource, subject) = &pairs[(i as usize) % pairs.len()];
        let req = target.request(pb::CheckPermissionRequest {
            consistency: consistency.clone(),
            resource: Some(object(resource)),
            permission: "view".into(),
            subject: Some(subject_ref(subject)),
            ..Default::default()
        });
        let mut client = target.client(w);
        async move {
            let resp = client.check_permission(req).await?.into_inner();
            let allowed = resp.permissionship
                == pb::check_permission_response::Permissionship::HasPermission as i32;
            Ok((1, u64::from(allowed)))
        }
    })
    .await
}

async fn bulk_phase(
    target: &Target,
    pairs: &Arc<Vec<(ObjectRef, SubjectRef)>>,
    consistency: Option<pb::Consistency>,
    args: &BenchArgs,
    max_requests: u64,
    duration: Duration,
) -> Outcome {
    let target = target.clone();
    let pairs = Arc::clone(pairs);
    let size = args.bulk_size;
    drive(
        args.bulk_concurrency,
        max_requests,
        duration,
        move |i, w| {
            let items = (0..size)
                .map(|k| {
                    let (resource, subject) = &pairs[((i as usize) * size + k) % pairs.len()];
                    pb::CheckBulkPermissionsRequestItem {
                        resource: Some(object(resource)),
                        permission: "view".into(),
                        subject: Some(subject_ref(subject)),
                        context: None,
                    }
                })
                .collect();
            let req = target.request(pb::CheckBulkPermissionsRequest {
                consistency: consistency.clone(),
                items,
                with_tracing: false,
            });
            let mut client = target.client(w);
            async move {
                let resp = client.check_bulk_permissions(req).await?.into_inner();
                let mut allowed = 0;
                for pair in &resp.pairs {
                    match &pair.response {
                        Some(pb::check_bulk_permissions_pair::Response::Item(item)) => {
                            if item.permissionship
                                == pb::check_permission_response::Permissionship::HasPermission
                                    as i32
                            {
                                allowed += 1;
                            }
                        }
                        Some(pb::check_bulk_permissions_pair::Response::Error(e)) => {
                            bail!("a bulk item failed: {}", e.message)
                        }
                        None => bail!("a bulk pair has no response"),
                    }
                }
                Ok((resp.pairs.len() as u64, allowed))
            }
        },
    )
    .await
}

async fn lr_phase(
    target: &Target,
    users: Vec<SubjectRef>,
    consistency: Option<pb::Consistency>,
    max_requests: u64,
    duration: Duration,
) -> Outcome {
    let target = target.clone();
    drive(1, max_requests, duration, move |i, w| {
        let subject = &users[(i as usize) % users.len()];
        let req = target.request(pb::LookupResourcesRequest {
            consistency: consistency.clone(),
            resource_object_type: "document".into(),
            permission: "view".into(),
            subject: Some(subject_ref(subject)),
            ..Default::default()
        });
        let mut client = target.client(w);
        async move {
            let mut stream = client.lookup_resources(req).await?.into_inner();
            let mut n = 0;
            while let Some(item) = stream.next().await {
                item?;
                n += 1;
            }
            Ok((n, 0))
        }
    })
    .await
}

async fn ls_phase(
    target: &Target,
    docs: Vec<ObjectRef>,
    consistency: Option<pb::Consistency>,
    max_requests: u64,
    duration: Duration,
) -> Outcome {
    let target = target.clone();
    drive(1, max_requests, duration, move |i, w| {
        let resource = &docs[(i as usize) % docs.len()];
        let req = target.request(pb::LookupSubjectsRequest {
            consistency: consistency.clone(),
            resource: Some(object(resource)),
            permission: "view".into(),
            subject_object_type: "user".into(),
            ..Default::default()
        });
        let mut client = target.client(w);
        async move {
            let mut stream = client.lookup_subjects(req).await?.into_inner();
            let mut n = 0;
            while let Some(item) = stream.next().await {
                item?;
                n += 1;
            }
            Ok((n, 0))
        }
    })
    .await
}

/// What a request loop saw.
#[derive(Debug, Default)]
struct Outcome {
    latencies: Vec<Duration>,
    errors: u64,
    items: u64,
    allowed: u64,
    elapsed: Duration,
    first_error: Option<String>,
}

impl Outcome {
    fn report(mut self, phase: Phase, before: &Usage, after: &Usage) -> PhaseReport {
        self.latencies.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let pct = |p: f64| -> f64 {
            if self.latencies.is_empty() {
                return 0.0;
            }
            // nearest rank
            let n = self.latencies.len();
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            us(self.latencies[rank.clamp(1, n) - 1])
        };
        let requests = self.latencies.len() as u64 + self.errors;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let total: Duration = self.latencies.iter().sum();
        PhaseReport {
            phase: phase.name(),
            requests,
            errors: self.errors,
            items: self.items,
            allowed: self.allowed,
            elapsed_s: self.elapsed.as_secs_f64(),
            requests_per_s: requests as f64 / secs,
            items_per_s: self.items as f64 / secs,
            p50_us: pct(50.0),
            p99_us: pct(99.0),
            mean_us: if self.latencies.is_empty() {
                0.0
            } else {
                us(total) / self.latencies.len() as f64
            },
            max_us: self.latencies.last().map_or(0.0, |d| us(*d)),
            server_cpu_s: after.cpu_s.zip(before.cpu_s).map(|(a, b)| a - b),
            client_cpu_s: after.self_cpu_s.zip(before.self_cpu_s).map(|(a, b)| a - b),
            server_vm_hwm_kib: after.hwm_kib,
            first_error: self.first_error,
        }
    }
}

/// Runs `op(i, worker)` for i = 0, 1, … on `workers` concurrent tasks until `max_requests`
/// were started or `duration` has passed. `op` returns (items, allowed).
async fn drive<F, Fut>(workers: usize, max_requests: u64, duration: Duration, op: F) -> Outcome
where
    F: Fn(u64, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(u64, u64)>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let op = Arc::clone(&op);
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut out = Outcome::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_requests {
                    break;
                }
                let t = Instant::now();
                match op(i, w).await {
                    Ok((items, allowed)) => {
                        out.latencies.push(t.elapsed());
                        out.items += items;
                        out.allowed += allowed;
                    }
                    Err(e) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(format!("{e:#}"));
                        }
                    }
                }
            }
            out
        });
    }
    let mut total = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(out) => {
                total.latencies.extend(out.latencies);
                total.items += out.items;
                total.allowed += out.allowed;
                total.errors += out.errors;
                total.first_error = total.first_error.or(out.first_error);
            }
            Err(e) => {
                total.errors += 1;
                total.first_error = total.first_error.or(Some(format!("worker failed: {e}")));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Resource usage read from /proc.
#[derive(Debug, Default)]
struct Usage {
    /// server CPU seconds (user + system)
    cpu_s: Option<f64>,
    /// server peak resident set, KiB
    hwm_kib: Option<u64>,
    /// server resident set, KiB
    rss_kib: Option<u64>,
    /// this process's CPU seconds
    self_cpu_s: Option<f64>,
}

impl Usage {
    fn read(pid: Option<u32>) -> Usage {
        let self_cpu_s = cpu_seconds("self");
        let Some(pid) = pid else {
            return Usage {
                self_cpu_s,
                ..Usage::default()
            };
        };
        let pid = pid.to_string();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        };
        Usage {
            cpu_s: cpu_seconds(&pid),
            hwm_kib: field("VmHWM:"),
            rss_kib: field("VmRSS:"),
            self_cpu_s,
        }
    }
}

/// utime + stime of `/proc/{pid}/stat`, assuming the usual 100 clock ticks a second.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the parenthesised command name: state is the first, utime the 12th
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn print_table(report: &Report) {
    println!(
        "{:<8} {:>9} {:>9} {:>8} {:>12} {:>10} {:>10} {:>10} {:>11} {:>6}",
        "phase",
        "requests",
        "items",
        "secs",
        "items/s",
        "p50",
        "p99",
        "mean",
        "srv-cpu/it",
        "errors"
    );
    for p in &report.phases {
        let cpu_per_item = p
            .server_cpu_s
            .filter(|_| p.items > 0)
            .map_or_else(|| "-".to_string(), |c| fmt_us(c * 1e6 / p.items as f64));
        println!(
            "{:<8} {:>9} {:>9} {:>8.2} {:>12.0} {:>10} {:>10} {:>10} {:>11} {:>6}",
            p.phase,
            p.requests,
            p.items,
            p.elapsed_s,
            p.items_per_s,
            fmt_us(p.p50_us),
            fmt_us(p.p99_us),
            fmt_us(p.mean_us),
            cpu_per_item,
            p.errors
        );
        if let Some(e) = &p.first_error {
            println!("         first error: {e}");
        }
        if p.phase.starts_with("check") || p.phase == "bulk" {
            println!(
                "         allowed {} of {} checks",
                p.allowed,
                p.items.max(p.allowed)
            );
        }
    }
    if let Some(w) = &report.watch {
        println!(
            "watch    {} updates in {} messages, {:.2}s, {:.0} updates/s, lag max {:.1} ms, mean {:.1} ms",
            w.updates, w.messages, w.elapsed_s, w.updates_per_s, w.max_lag_ms, w.mean_lag_ms
        );
        if let Some(r) = w.replay_updates_per_s {
            println!("watch    replayed from the log after the load: {r:.0} updates/s");
        }
    }
    match (report.server_vm_hwm_kib, report.server_vm_rss_kib) {
        (Some(hwm), Some(rss)) => println!(
            "server memory: peak (VmHWM) {:.1} MiB, now (VmRSS) {:.1} MiB",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        ),
        _ => println!("server memory: not read (pass --server-pid)"),
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.0}µs")
    }
}

fn object(o: &ObjectRef) -> pb::ObjectReference {
    pb::ObjectReference {
        object_type: o.object_type.clone(),
        object_id: o.object_id.clone(),
    }
}

fn subject_ref(s: &SubjectRef) -> pb::SubjectReference {
    pb::SubjectReference {
        object: Some(object(&s.object)),
        optional_relation: s.relation.clone().unwrap_or_default(),
    }
}

fn relationship(r: &Relationship) -> pb::Relationship {
    pb::Relationship {
        resource: Some(object(&r.resource)),
        relation: r.relation.clone(),
        subject: Some(subject_ref(&r.subject)),
        optional_caveat: None,
        optional_expires_at: None,
    }
}
