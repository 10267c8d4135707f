//! The `pemba-bench` binary: a load generator for any `authzed.api.v1` endpoint.
//!
//! Kept out of the `pemba` server binary and out of the library: the server never needs the
//! workload or the load generator. The criterion benches include [`workload`] by path.

mod bench;
mod workload;

use clap::Parser as _;

/// Same allocator as the `pemba` binary, so the client side's costs match those measured before
/// the load generator moved out of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load the benchmark workload into a server and measure it.
#[derive(Debug, clap::Parser)]
#[command(name = "pemba-bench", version)]
struct Cli {
    #[command(flatten)]
    args: bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEMBA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
    match bench::run(cli.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
