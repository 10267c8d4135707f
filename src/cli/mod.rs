//! Step seven, the command line: `pemba serve` and its flags (with `PEMBA_*` environment
//! equivalents), turned into a running server; `pemba bench`, a load generator for any
//! `authzed.api.v1` endpoint, over the reusable benchmark [`workload`].

pub mod bench;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::api::{Api, Limits};
use crate::engine::EngineConfig;
use crate::server::{self, ServerOptions};
use crate::store::{Datastore, MemoryStore, RocksStore};

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
pub enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Load the benchmark workload into a server and measure it.
    Bench(bench::BenchArgs),
}

/// Which datastore to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatastoreKind {
    /// durable, embedded RocksDB in `--data-dir`
    Rocksdb,
    /// in memory, lost on exit (for tests and trials)
    Memory,
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
    /// preshared key clients must send as `authorization: Bearer KEY`
    #[arg(long, env = "PEMBA_GRPC_PRESHARED_KEY", hide_env_values = true)]
    pub grpc_preshared_key: Option<String>,
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
}

/// Parses a duration as Go writes them (`30s`, `1m30s`, `500ms`, `2h`); a bare number is
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration `{text}` (expected e.g. `30s`, `500ms`, `1m30s`)");
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let part = Duration::try_from_secs_f64(value * scale).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "ms10", "1e400s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => bench::run(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let key = args.grpc_preshared_key.filter(|k| !k.is_empty());
    if key.is_none() && !args.grpc_addr.ip().is_loopback() {
        bail!(
            "refusing to listen on non-loopback address {} without --grpc-preshared-key",
            args.grpc_addr
        );
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
    };
    tracing::info!(
        datastore = ?args.datastore,
        data_dir = %args.data_dir.display(),
        store_id = store.unique_id(),
        "datastore open"
    );
    let api = Api::new(
        Arc::clone(&store),
        EngineConfig {
            max_depth: args.dispatch_max_depth,
            ..EngineConfig::default()
        },
        Limits {
            max_request_duration: args.request_timeout,
            stream_stall_timeout: args.streaming_api_response_delay_timeout,
            ..Limits::default()
        },
    );
    let options = ServerOptions {
        preshared_key: key,
        gc_window: Duration::from_secs(args.gc_window_secs),
        gc_interval: Duration::from_secs(args.gc_interval_secs.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.grpc_addr))?;
        server::run(listener, api, store, options, server::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
