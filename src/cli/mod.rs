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
    /// address of the Prometheus metrics endpoint
    #[arg(long, env = "PEMBA_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,
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
        Limits::default(),
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
        let metrics = match args.metrics_enabled {
            true => {
                let listener = tokio::net::TcpListener::bind(args.metrics_addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(server::metrics::serve_tcp(listener, async {
                    let _ = stopped.await;
                }));
                Some((stop, task))
            }
            false => None,
        };
        let served = server::run(listener, api, store, options, server::shutdown_signal()).await;
        if let Some((stop, task)) = metrics {
            let _ = stop.send(());
            let _ = task.await;
        }
        served?;
        anyhow::Ok(())
    })?;
    Ok(())
}
