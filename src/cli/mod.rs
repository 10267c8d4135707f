//! The `pemba` command line: the servers, the client verbs, validation and contexts.
//!
//! `pemba serve` and its flags (with `PEMBA_*` environment equivalents), turned into a running
//! server; `pemba backup` in [`backup`]; the client verbs (`schema`, `relationship`,
//! `permission`, `watch`, `import`, `export`) in [`verbs`]; `pemba validate` in [`validate`];
//! `pemba context` in [`context`].

pub mod backup;
pub mod backup_file;
pub mod client;
pub mod context;
#[cfg(feature = "otel")]
pub mod otel;
pub mod output;
pub mod reference;
pub mod validate;
pub mod verbs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::api::{Api, Limits};
use crate::consistency::MismatchedTokens;
use crate::engine::EngineConfig;
use crate::server::{self, ServerOptions};
use crate::store::{
    Datastore, MemoryStore, PostgresOptions, PostgresStore, PostgresTls, RocksStore,
};

/// Pemba: a Zanzibar-style permissions database speaking SpiceDB's API.
#[derive(Debug, Parser)]
#[command(name = "pemba", version, about)]
pub struct Cli {
    /// what to do
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start and consumed; boxing would save nothing"
)]
pub enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Run an in-memory server for application tests: each bearer token gets its own empty
    /// store, as with `spicedb serve-testing`.
    ServeTesting(ServeTestingArgs),
    /// Back up a running server, or restore a backup into a data dir.
    Backup(backup::BackupArgs),
    /// Read, write, check or diff a schema.
    Schema(verbs::schema::SchemaArgs),
    /// Create, touch, delete and read relationships (SpiceDB's text form).
    #[command(alias = "rel")]
    Relationship(verbs::relationship::RelationshipArgs),
    /// Ask permission questions: check, bulk, expand, lookup-resources, lookup-subjects.
    #[command(alias = "perm")]
    Permission(verbs::permission::PermissionArgs),
    /// Print relationship changes as they are committed.
    Watch(verbs::transfer::WatchArgs),
    /// Write a validation file's schema and relationships (or a relationship text file) to a
    /// server.
    Import(verbs::transfer::ImportArgs),
    /// Print a server's schema and relationships as a validation file (or as text).
    Export(verbs::transfer::ExportArgs),
    /// Check validation files (schema, relationships, assertions, expected relations)
    /// in-process, with no server.
    Validate(validate::ValidateArgs),
    /// Save, list and switch named connections (endpoint, token, CA certificate).
    #[command(subcommand)]
    Context(context::ContextCommand),
    /// Manage a datastore: `pemba datastore migrate` creates or upgrades PostgreSQL's tables.
    #[command(subcommand)]
    Datastore(DatastoreCommand),
    /// Print a shell completion script: `pemba completions bash > /etc/bash_completion.d/pemba`.
    Completions {
        /// the shell
        shell: clap_complete::Shell,
    },
}

/// Request limits, with SpiceDB's flag names and defaults (shared by `serve` and
/// `serve-testing`).
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// most updates in one WriteRelationships
    #[arg(
        long,
        env = "PEMBA_WRITE_RELATIONSHIPS_MAX_UPDATES_PER_CALL",
        default_value_t = 1000,
        value_parser = parse_nonzero_usize
    )]
    pub write_relationships_max_updates_per_call: usize,
    /// most preconditions in one WriteRelationships or DeleteRelationships
    #[arg(
        long,
        env = "PEMBA_UPDATE_RELATIONSHIPS_MAX_PRECONDITIONS_PER_CALL",
        default_value_t = 1000
    )]
    pub update_relationships_max_preconditions_per_call: usize,
    /// highest `optional_limit` of ReadRelationships
    #[arg(
        long,
        env = "PEMBA_MAX_READ_RELATIONSHIPS_LIMIT",
        default_value_t = 1000
    )]
    pub max_read_relationships_limit: u32,
    /// highest `optional_limit` of DeleteRelationships
    #[arg(
        long,
        env = "PEMBA_MAX_DELETE_RELATIONSHIPS_LIMIT",
        default_value_t = 1000
    )]
    pub max_delete_relationships_limit: u32,
    /// highest `optional_limit` of LookupResources
    #[arg(long, env = "PEMBA_MAX_LOOKUP_RESOURCES_LIMIT", default_value_t = 1000)]
    pub max_lookup_resources_limit: u32,
    /// highest `optional_limit` of ExportBulkRelationships, and its page size when unset
    #[arg(
        long,
        env = "PEMBA_MAX_BULK_EXPORT_RELATIONSHIPS_LIMIT",
        default_value_t = 10_000
    )]
    pub max_bulk_export_relationships_limit: u32,
    /// largest caveat context of a request, encoded, in bytes; `0` is the default, a negative
    /// value removes the limit (as SpiceDB reads this flag)
    #[arg(
        long,
        env = "PEMBA_MAX_CAVEAT_CONTEXT_SIZE",
        default_value_t = 4096,
        allow_negative_numbers = true
    )]
    pub max_caveat_context_size: i64,
    /// largest caveat context of a relationship, encoded, in bytes
    #[arg(
        long,
        env = "PEMBA_MAX_RELATIONSHIP_CONTEXT_SIZE",
        default_value_t = 25_000
    )]
    pub max_relationship_context_size: usize,
    /// relationships a streamed read or export reads from the store at a time
    #[arg(
        long,
        env = "PEMBA_MAX_DATASTORE_READ_PAGE_SIZE",
        default_value_t = 1000,
        value_parser = parse_nonzero_usize
    )]
    pub max_datastore_read_page_size: usize,
}

impl LimitArgs {
    /// The limits these flags set, over `base`.
    pub fn apply(&self, base: Limits) -> Limits {
        let caveat_context = match self.max_caveat_context_size {
            n if n < 0 => usize::MAX,
            0 => 4096,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Limits {
            max_updates_per_write: self.write_relationships_max_updates_per_call,
            max_preconditions: self.update_relationships_max_preconditions_per_call,
            max_read_limit: self.max_read_relationships_limit,
            max_delete_limit: self.max_delete_relationships_limit,
            max_lookup_limit: self.max_lookup_resources_limit,
            max_export_limit: self.max_bulk_export_relationships_limit,
            max_caveat_context_bytes: caveat_context,
            max_relationship_context_bytes: self.max_relationship_context_size,
            max_datastore_read_page_size: self.max_datastore_read_page_size,
            ..base
        }
    }
}

/// Flags of `pemba serve-testing` (SpiceDB's names).
#[derive(Debug, clap::Args)]
pub struct ServeTestingArgs {
    /// address to listen on for gRPC (read and write)
    #[arg(long, env = "PEMBA_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// address of the read-only gRPC listener, over the same stores
    #[arg(
        long,
        env = "PEMBA_READONLY_GRPC_ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub readonly_grpc_addr: SocketAddr,
    /// serve the read-only listener (`--readonly-grpc-enabled=false`: do not)
    #[arg(
        long,
        env = "PEMBA_READONLY_GRPC_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub readonly_grpc_enabled: bool,
    /// how long in-flight calls may finish after SIGTERM (`0` = no limit)
    #[arg(
        long,
        env = "PEMBA_GRPC_SHUTDOWN_GRACE_PERIOD",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub grpc_shutdown_grace_period: Duration,
    /// largest request message, in bytes
    #[arg(long, env = "PEMBA_GRPC_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024)]
    pub grpc_max_message_size: usize,
    /// validation files (YAML) whose schema and relationships every new store starts with
    /// (comma-separated or repeated); their assertions and expected relations are not run
    #[arg(long, env = "PEMBA_LOAD_CONFIGS", value_delimiter = ',')]
    pub load_configs: Vec<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Which datastore to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatastoreKind {
    /// durable, embedded RocksDB in `--data-dir`
    Rocksdb,
    /// in memory, lost on exit (for tests and trials)
    Memory,
    /// a PostgreSQL database (`--datastore-conn-uri`), migrated with `pemba datastore migrate`
    Postgres,
}

/// `pemba datastore` subcommands.
#[derive(Debug, Subcommand)]
pub enum DatastoreCommand {
    /// Create or upgrade the tables of a PostgreSQL datastore (safe to run again).
    Migrate {
        /// the database: `postgres://user:password@host:port/dbname`
        #[arg(long, env = "PEMBA_DATASTORE_CONN_URI", hide_env_values = true)]
        datastore_conn_uri: String,
        /// connect over TLS, verifying the database's certificate (and host) against the CA
        /// certificates in this PEM file
        #[arg(long, env = "PEMBA_DATASTORE_TLS_CA_CERT")]
        datastore_tls_ca_cert: Option<PathBuf>,
    },
}

/// Flags of `pemba serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// address to listen on for gRPC
    #[arg(long, env = "PEMBA_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// directory of the RocksDB datastore
    #[arg(long, env = "PEMBA_DATA_DIR", default_value = "./pemba-data")]
    pub data_dir: PathBuf,
    /// datastore engine
    #[arg(long, env = "PEMBA_DATASTORE", value_enum, default_value = "rocksdb")]
    pub datastore: DatastoreKind,
    /// the PostgreSQL database of `--datastore postgres`:
    /// `postgres://user:password@host:port/dbname`
    #[arg(long, env = "PEMBA_DATASTORE_CONN_URI", hide_env_values = true)]
    pub datastore_conn_uri: Option<String>,
    /// with `--datastore postgres`: connect over TLS, verifying the database's certificate
    /// (and host) against the CA certificates in this PEM file
    #[arg(long, env = "PEMBA_DATASTORE_TLS_CA_CERT")]
    pub datastore_tls_ca_cert: Option<PathBuf>,
    /// with `--datastore postgres`: how often, in milliseconds, this node looks for the
    /// revisions other nodes on the same database committed (a read that needs one asks at
    /// once)
    #[arg(
        long,
        env = "PEMBA_DATASTORE_FOLLOW_INTERVAL_MS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub datastore_follow_interval_ms: u64,
    /// with `--datastore postgres`: how long, in milliseconds, a read with a token (or a
    /// cursor, or `fully_consistent`) waits for this node to catch up with a revision another
    /// node committed, before it fails with UNAVAILABLE
    #[arg(
        long,
        env = "PEMBA_DATASTORE_REVISION_WAIT_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1..=600_000)
    )]
    pub datastore_revision_wait_ms: u64,
    /// preshared key clients must send as `authorization: Bearer KEY`; repeat the flag or
    /// separate keys with commas to accept several (any listed key works, for rotation)
    #[arg(
        long,
        env = "PEMBA_GRPC_PRESHARED_KEY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub grpc_preshared_key: Vec<String>,
    /// PEM certificate chain for TLS on the gRPC listener (with --grpc-tls-key-path); reloaded
    /// when the file changes
    #[arg(long, env = "PEMBA_GRPC_TLS_CERT_PATH", requires = "grpc_tls_key_path")]
    pub grpc_tls_cert_path: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC listener (with --grpc-tls-cert-path)
    #[arg(long, env = "PEMBA_GRPC_TLS_KEY_PATH", requires = "grpc_tls_cert_path")]
    pub grpc_tls_key_path: Option<PathBuf>,
    /// a client that has not finished its TLS handshake by then is disconnected
    #[arg(long, env = "PEMBA_GRPC_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub grpc_tls_handshake_timeout: Duration,
    /// how long in-flight calls may finish after SIGTERM/SIGINT before the server stops anyway
    /// (0 = no limit)
    #[arg(long, env = "PEMBA_GRPC_SHUTDOWN_GRACE_PERIOD", default_value = "5s", value_parser = parse_duration)]
    pub grpc_shutdown_grace_period: Duration,
    /// calls in flight across all connections before new ones get RESOURCE_EXHAUSTED
    /// (health checks excepted; 0 = no limit)
    #[arg(long, env = "PEMBA_GRPC_CONCURRENCY_LIMIT", default_value_t = 4096)]
    pub grpc_concurrency_limit: usize,
    /// HTTP/2 concurrent streams (calls) per connection
    #[arg(long, env = "PEMBA_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_concurrent_streams: u32,
    /// interval of HTTP/2 keepalive pings on idle connections (0 = no pings)
    #[arg(long, env = "PEMBA_GRPC_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// how long a keepalive ping may go unanswered before the connection is closed
    #[arg(long, env = "PEMBA_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// largest HTTP/2 header list a request may carry, in bytes
    #[arg(long, env = "PEMBA_GRPC_MAX_HEADER_LIST_SIZE", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_header_list_size: u32,
    /// largest request message accepted, in bytes (RESOURCE_EXHAUSTED above)
    #[arg(long, env = "PEMBA_GRPC_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024, value_parser = parse_nonzero_usize)]
    pub grpc_max_message_size: usize,
    /// maximum depth of recursive evaluation
    #[arg(long, env = "PEMBA_DISPATCH_MAX_DEPTH", default_value_t = 50)]
    pub dispatch_max_depth: u32,
    /// how long old revisions stay readable, in seconds
    #[arg(long, env = "PEMBA_GC_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub gc_window_secs: u64,
    /// how often garbage collection runs, in seconds
    #[arg(long, env = "PEMBA_GC_INTERVAL_SECS", default_value_t = 180)]
    pub gc_interval_secs: u64,
    /// the longest a query may run (e.g. `30s`, `500ms`): the deadline of a request that sets
    /// none, and the cap of one that sets a later one
    #[arg(long, env = "PEMBA_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// how long a response stream may wait for a client that stopped reading before it is
    /// cancelled with DEADLINE_EXCEEDED and its buffers freed
    #[arg(
        long,
        env = "PEMBA_STREAMING_API_RESPONSE_DELAY_TIMEOUT",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub streaming_api_response_delay_timeout: Duration,
    /// how often a Watch stream that asked for checkpoints gets one while nothing changes
    /// (0 = the shortest, 100ms)
    #[arg(long, env = "PEMBA_WATCH_API_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub watch_api_heartbeat: Duration,
    /// Watch responses buffered per stream for a slow client
    #[arg(long, env = "PEMBA_DATASTORE_WATCH_BUFFER_LENGTH", default_value_t = 128, value_parser = parse_nonzero_usize)]
    pub datastore_watch_buffer_length: usize,
    /// how long a Watch stream's buffer may stay full before its client is disconnected with
    /// RESOURCE_EXHAUSTED
    #[arg(long, env = "PEMBA_DATASTORE_WATCH_BUFFER_WRITE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub datastore_watch_buffer_write_timeout: Duration,
    /// the largest revision a Watch stream sends, in bytes of stored changes (a larger one
    /// ends the stream with RESOURCE_EXHAUSTED)
    #[arg(long, env = "PEMBA_DATASTORE_WATCH_CHANGE_BUFFER_MAXIMUM_SIZE", default_value_t = 128 * 1024 * 1024, value_parser = parse_nonzero_usize)]
    pub datastore_watch_change_buffer_maximum_size: usize,
    /// what a read asking `at_least_as_fresh` a token from another datastore (another Pemba
    /// store, or SpiceDB) does: `full-consistency` reads the head, `min-latency` reads what a
    /// `minimize_latency` read would (also the head here), `error` refuses it
    /// (FAILED_PRECONDITION); an `at_exact_snapshot` read of such a token is always refused
    #[arg(
        long,
        env = "PEMBA_MISMATCH_ZED_TOKEN_BEHAVIOR",
        default_value = "full-consistency"
    )]
    pub mismatch_zed_token_behavior: MismatchedTokens,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// serve Prometheus metrics at `http://<metrics-addr>/metrics` (`--metrics-enabled=false`
    /// turns it off)
    #[arg(
        long,
        env = "PEMBA_METRICS_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub metrics_enabled: bool,
    /// directory `pemba backup create` writes checkpoints under (the server writes nowhere else)
    #[arg(long, env = "PEMBA_BACKUP_DIR", default_value = "./pemba-backups")]
    pub backup_dir: PathBuf,
    /// address of the Prometheus metrics endpoint
    #[arg(long, env = "PEMBA_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,
    /// PEM certificate chain for HTTPS on the metrics endpoint (with --metrics-tls-key-path);
    /// reloaded when the file changes
    #[arg(long, env = "PEMBA_METRICS_TLS_CERT_PATH")]
    pub metrics_tls_cert_path: Option<PathBuf>,
    /// PEM private key for HTTPS on the metrics endpoint (with --metrics-tls-cert-path)
    #[arg(long, env = "PEMBA_METRICS_TLS_KEY_PATH")]
    pub metrics_tls_key_path: Option<PathBuf>,
    /// serve the HTTP/JSON gateway (SpiceDB's REST routes) on --http-addr
    #[arg(long, env = "PEMBA_HTTP_ENABLED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub http_enabled: bool,
    /// address of the HTTP/JSON gateway; setting it turns the gateway on (default
    /// 127.0.0.1:8443 with --http-enabled)
    #[arg(long, env = "PEMBA_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// PEM certificate chain for HTTPS on the gateway (with --http-tls-key-path); reloaded
    /// when the file changes
    #[arg(long, env = "PEMBA_HTTP_TLS_CERT_PATH")]
    pub http_tls_cert_path: Option<PathBuf>,
    /// PEM private key for HTTPS on the gateway (with --http-tls-cert-path)
    #[arg(long, env = "PEMBA_HTTP_TLS_KEY_PATH")]
    pub http_tls_key_path: Option<PathBuf>,
    /// OTLP/gRPC collector to send traces to, e.g. `http://127.0.0.1:4317` (none: no traces
    /// are exported; needs the `otel` cargo feature, on by default)
    #[arg(long, env = "PEMBA_OTEL_ENDPOINT")]
    pub otel_endpoint: Option<String>,
    /// the `service.name` of the exported traces
    #[arg(long, env = "PEMBA_OTEL_SERVICE_NAME", default_value = "pemba")]
    pub otel_service_name: String,
    /// fraction of RPCs whose span is exported, 0 to 1
    #[arg(long, env = "PEMBA_OTEL_SAMPLE_RATIO", default_value_t = 0.01)]
    pub otel_sample_ratio: f64,
}

impl Cli {
    /// The trace export asked for, if any.
    #[cfg(feature = "otel")]
    pub fn otel_options(&self) -> Option<otel::OtelOptions> {
        match &self.command {
            Command::Serve(args) => args
                .otel_endpoint
                .as_ref()
                .map(|endpoint| otel::OtelOptions {
                    endpoint: endpoint.clone(),
                    service_name: args.otel_service_name.clone(),
                    sample_ratio: args.otel_sample_ratio,
                }),
            _ => None,
        }
    }
}

/// The exit code of a command that failed (a connection, a call, a file, an argument).
/// 1 and 2 are answers: "no" (a check, a validation that failed) and "conditional".
pub const EXIT_ERROR: u8 = 3;

/// The exit code of a command line clap refused (sysexits' `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Runs the parsed command line; the exit code is the command's answer (see
/// [`verbs`]), or success.
pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Serve(args) => done(serve(args)),
        Command::ServeTesting(args) => done(serve_testing(args)),
        Command::Backup(args) => done(backup::run(args)),
        Command::Schema(args) => verbs::schema::run(args),
        Command::Relationship(args) => verbs::relationship::run(args),
        Command::Permission(args) => verbs::permission::run(args),
        Command::Watch(args) => verbs::transfer::watch(args),
        Command::Import(args) => verbs::transfer::import(args),
        Command::Export(args) => verbs::transfer::export(args),
        Command::Validate(args) => Ok(if validate::run(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(verbs::EXIT_NO)
        }),
        Command::Context(command) => done(context::run(&command)),
        Command::Datastore(DatastoreCommand::Migrate {
            datastore_conn_uri,
            datastore_tls_ca_cert,
        }) => {
            let tls = PostgresTls {
                ca_cert: datastore_tls_ca_cert,
            };
            let (before, after) = crate::store::migrate_postgres(&datastore_conn_uri, &tls)
                .context("cannot migrate the PostgreSQL datastore")?;
            if before == after {
                println!("the datastore is at schema version {after}: nothing to do");
            } else {
                println!("migrated the datastore from schema version {before} to {after}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "pemba", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if cfg!(not(feature = "otel")) && args.otel_endpoint.is_some() {
        bail!("--otel-endpoint: this build has no OpenTelemetry support (cargo feature `otel`)");
    }
    let keys = args.grpc_preshared_key;
    if keys.iter().any(String::is_empty) {
        bail!("--grpc-preshared-key: empty keys are refused");
    }
    let tls = match (args.grpc_tls_cert_path, args.grpc_tls_key_path) {
        (Some(cert_path), Some(key_path)) => Some(server::TlsFiles {
            cert_path,
            key_path,
        }),
        (None, None) => None,
        _ => bail!("--grpc-tls-cert-path and --grpc-tls-key-path go together"),
    };
    let http_tls = match (args.http_tls_cert_path, args.http_tls_key_path) {
        (Some(cert_path), Some(key_path)) => {
            let files = server::TlsFiles {
                cert_path,
                key_path,
            };
            let config = server::tls::server_config(&files, &[b"http/1.1"])
                .context("cannot set up TLS for the HTTP gateway")?;
            Some(config)
        }
        (None, None) => None,
        _ => bail!("--http-tls-cert-path and --http-tls-key-path go together"),
    };
    let http_addr = match (args.http_enabled, args.http_addr) {
        (_, Some(addr)) => Some(addr),
        (true, None) => Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
        (false, None) => None,
    };
    if let Some(addr) = http_addr
        && !addr.ip().is_loopback()
    {
        if keys.is_empty() {
            bail!(
                "refusing to serve the HTTP gateway on non-loopback address {addr} without --grpc-preshared-key"
            );
        }
        if http_tls.is_none() {
            tracing::warn!(
                %addr,
                "the HTTP gateway listens on a non-loopback address without TLS: the preshared \
                 key crosses the network in clear text (set --http-tls-cert-path and --http-tls-key-path)"
            );
        }
    }
    let metrics_tls = match (args.metrics_tls_cert_path, args.metrics_tls_key_path) {
        (Some(cert_path), Some(key_path)) => {
            let files = server::TlsFiles {
                cert_path,
                key_path,
            };
            let config = server::tls::server_config(&files, server::metrics::ALPN)
                .context("cannot set up TLS for the metrics endpoint")?;
            Some(config)
        }
        (None, None) => None,
        _ => bail!("--metrics-tls-cert-path and --metrics-tls-key-path go together"),
    };
    if !args.grpc_addr.ip().is_loopback() {
        if keys.is_empty() {
            bail!(
                "refusing to listen on non-loopback address {} without --grpc-preshared-key",
                args.grpc_addr
            );
        }
        if tls.is_none() {
            tracing::warn!(
                addr = %args.grpc_addr,
                "listening on a non-loopback address without TLS: the preshared key crosses the \
                 network in clear text (set --grpc-tls-cert-path and --grpc-tls-key-path)"
            );
        }
    }
    if args.request_timeout.is_zero() || args.streaming_api_response_delay_timeout.is_zero() {
        bail!("--request-timeout and --streaming-api-response-delay-timeout must be positive");
    }
    if args.dispatch_max_depth == 0 {
        bail!("--dispatch-max-depth must be at least 1");
    }
    let store: Arc<dyn Datastore> = match args.datastore {
        DatastoreKind::Rocksdb => Arc::new(
            RocksStore::open(&args.data_dir)
                .with_context(|| format!("cannot open data dir `{}`", args.data_dir.display()))?,
        ),
        DatastoreKind::Memory => Arc::new(MemoryStore::new()),
        DatastoreKind::Postgres => {
            let Some(uri) = &args.datastore_conn_uri else {
                bail!("--datastore postgres needs --datastore-conn-uri postgres://...");
            };
            let options = PostgresOptions {
                follow_interval: Duration::from_millis(args.datastore_follow_interval_ms),
                revision_wait: Duration::from_millis(args.datastore_revision_wait_ms),
                tls: PostgresTls {
                    ca_cert: args.datastore_tls_ca_cert.clone(),
                },
            };
            Arc::new(
                PostgresStore::open_with(uri, options)
                    .context("cannot open the PostgreSQL datastore")?,
            )
        }
    };
    let location = match args.datastore {
        DatastoreKind::Rocksdb => args.data_dir.display().to_string(),
        DatastoreKind::Memory => "memory".to_string(),
        // (the URI may hold a password: not logged)
        DatastoreKind::Postgres => "the --datastore-conn-uri database".to_string(),
    };
    tracing::info!(
        datastore = ?args.datastore,
        location,
        store_id = store.unique_id(),
        "datastore open"
    );
    let api = Api::new(
        Arc::clone(&store),
        EngineConfig {
            max_depth: args.dispatch_max_depth,
            ..EngineConfig::default()
        },
        args.limits.apply(Limits {
            max_request_duration: args.request_timeout,
            stream_stall_timeout: args.streaming_api_response_delay_timeout,
            watch_heartbeat: args.watch_api_heartbeat,
            watch_buffer_length: args.datastore_watch_buffer_length,
            watch_buffer_write_timeout: args.datastore_watch_buffer_write_timeout,
            watch_change_buffer_max_bytes: args.datastore_watch_change_buffer_maximum_size,
            mismatched_tokens: args.mismatch_zed_token_behavior,
            ..Limits::default()
        }),
    );
    let options = ServerOptions {
        preshared_keys: keys,
        tls,
        tls_handshake_timeout: args.grpc_tls_handshake_timeout,
        shutdown_grace_period: args.grpc_shutdown_grace_period,
        max_concurrent_streams: args.grpc_max_concurrent_streams,
        keepalive_interval: args.grpc_keepalive_interval,
        keepalive_timeout: args.grpc_keepalive_timeout,
        max_header_list_size: args.grpc_max_header_list_size,
        max_message_size: args.grpc_max_message_size,
        concurrency_limit: args.grpc_concurrency_limit,
        gc_window: Duration::from_secs(args.gc_window_secs),
        gc_interval: Duration::from_secs(args.gc_interval_secs.max(1)),
        backup_dir: args.backup_dir.clone(),
        ..ServerOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.grpc_addr))?;
        let metrics = match args.metrics_enabled {
            true => {
                let listener = tokio::net::TcpListener::bind(args.metrics_addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let stopped = async {
                    let _ = stopped.await;
                };
                let task = match metrics_tls {
                    Some(tls) => tokio::spawn(server::metrics::serve_tls(
                        listener,
                        tls,
                        args.grpc_tls_handshake_timeout,
                        stopped,
                    )),
                    None => tokio::spawn(server::metrics::serve_tcp(listener, stopped)),
                };
                Some((stop, task))
            }
            false => None,
        };
        let gateway = match http_addr {
            Some(addr) => Some(server::GatewayListener {
                listener: tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
                tls: http_tls,
            }),
            None => None,
        };
        let served = server::run_with_gateway(
            listener,
            gateway,
            api,
            store,
            options,
            server::shutdown_signal(),
        )
        .await;
        if let Some((stop, task)) = metrics {
            let _ = stop.send(());
            let _ = task.await;
        }
        served?;
        anyhow::Ok(())
    });
    // A call cut off by the grace period may still be running on a blocking thread: do not
    // wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn serve_testing(args: ServeTestingArgs) -> anyhow::Result<()> {
    if args.grpc_max_message_size == 0 {
        bail!("--grpc-max-message-size must be at least 1");
    }
    for addr in [args.grpc_addr, args.readonly_grpc_addr] {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "serve-testing accepts any token and keeps everything in memory: it is for tests, \
                 never for real data"
            );
        }
    }
    let seed = if args.load_configs.is_empty() {
        server::testing::Seed::default()
    } else {
        let (schema, relationships) =
            validate::load_configs(&args.load_configs).map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(
            files = args.load_configs.len(),
            relationships = relationships.len(),
            "every new store starts with the --load-configs files"
        );
        server::testing::Seed {
            schema,
            relationships,
        }
    };
    let tenants = server::testing::Tenants::seeded(
        EngineConfig::default(),
        args.limits.apply(Limits::default()),
        seed,
    );
    let options = ServerOptions {
        shutdown_grace_period: args.grpc_shutdown_grace_period,
        max_message_size: args.grpc_max_message_size,
        ..ServerOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.grpc_addr))?;
        let readonly = match args.readonly_grpc_enabled {
            true => Some(
                tokio::net::TcpListener::bind(args.readonly_grpc_addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.readonly_grpc_addr))?,
            ),
            false => None,
        };
        tracing::info!(
            addr = %args.grpc_addr,
            readonly = ?readonly.as_ref().map(|_| args.readonly_grpc_addr),
            "serving in-memory test stores, one per bearer token"
        );
        server::run_testing(
            listener,
            readonly,
            tenants,
            options,
            server::shutdown_signal(),
        )
        .await?;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Parses a duration as `0`, or numbers with units `ms`, `s`, `m`, `h` (e.g. `5s`, `1m30s`,
/// `250ms`), like SpiceDB's flags.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration `{text}`: expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "invalid duration `{text}`: missing unit (ms, s, m, h)"
                ));
            }
            u => return Err(format!("invalid duration `{text}`: unknown unit `{u}`")),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(part);
    }
    Ok(total)
}

fn parse_nonzero_usize(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn durations_parse_like_spicedb_flags() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn several_preshared_keys_from_repeats_and_commas() {
        let cli = Cli::try_parse_from([
            "pemba",
            "serve",
            "--grpc-preshared-key",
            "k1,k2",
            "--grpc-preshared-key",
            "k3",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.grpc_preshared_key, ["k1", "k2", "k3"]);
        assert!(
            Cli::try_parse_from(["pemba", "serve", "--grpc-tls-cert-path", "c.pem"]).is_err(),
            "a certificate without a key is refused"
        );
    }

    #[test]
    fn metrics_certificate_without_key_is_a_start_error() {
        for flag in ["--metrics-tls-cert-path", "--metrics-tls-key-path"] {
            let cli = Cli::try_parse_from(["pemba", "serve", flag, "x.pem"]).unwrap();
            let Command::Serve(args) = cli.command else {
                unreachable!()
            };
            let err = serve(args).unwrap_err().to_string();
            assert!(err.contains("go together"), "{err}");
        }
    }

    #[test]
    fn limit_flags_set_the_api_limits() {
        let limits = |extra: &[&str]| {
            let cli = Cli::try_parse_from(["pemba", "serve"].iter().chain(extra).copied()).unwrap();
            let Command::Serve(args) = cli.command else {
                unreachable!()
            };
            args.limits.apply(Limits::default())
        };
        let defaults = limits(&[]);
        let spicedb = Limits::default();
        assert_eq!(
            defaults.max_updates_per_write,
            spicedb.max_updates_per_write
        );
        assert_eq!(defaults.max_caveat_context_bytes, 4096);
        assert_eq!(defaults.max_relationship_context_bytes, 25_000);
        assert_eq!(defaults.max_export_limit, 10_000);
        let set = limits(&[
            "--write-relationships-max-updates-per-call",
            "7",
            "--update-relationships-max-preconditions-per-call",
            "8",
            "--max-read-relationships-limit",
            "9",
            "--max-delete-relationships-limit",
            "10",
            "--max-lookup-resources-limit",
            "11",
            "--max-bulk-export-relationships-limit",
            "12",
            "--max-caveat-context-size",
            "13",
            "--max-relationship-context-size",
            "14",
            "--max-datastore-read-page-size",
            "15",
        ]);
        assert_eq!(
            (
                set.max_updates_per_write,
                set.max_preconditions,
                set.max_read_limit,
                set.max_delete_limit,
                set.max_lookup_limit,
                set.max_export_limit,
                set.max_caveat_context_bytes,
                set.max_relationship_context_bytes,
                set.max_datastore_read_page_size,
            ),
            (7, 8, 9, 10, 11, 12, 13, 14, 15)
        );
        // SpiceDB's reading of the caveat context flag: 0 is the default, negative no limit.
        let zero = limits(&["--max-caveat-context-size", "0"]);
        assert_eq!(zero.max_caveat_context_bytes, 4096);
        let none = limits(&["--max-caveat-context-size", "-1"]);
        assert_eq!(none.max_caveat_context_bytes, usize::MAX);
        assert!(
            Cli::try_parse_from(["pemba", "serve", "--max-datastore-read-page-size", "0"]).is_err()
        );
    }
}
