//! The `pemba` binary: parse the command line, set up logging, run.

use clap::Parser as _;

/// mimalloc instead of glibc's malloc: the engine allocates many small, short-lived values per
/// request, and glibc spent a tenth of the server's CPU in `malloc_consolidate` and kept one
/// arena per thread (hundreds of MiB of resident memory) under concurrent load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PEMBA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = pemba::cli::Cli::parse();
    match pemba::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
