//! The `pemba` binary: parse the command line, set up logging, run.

use clap::Parser as _;

/// mimalloc instead of glibc's malloc: the engine allocates many small, short-lived values per
/// request, and glibc spent a tenth of the server's CPU in `malloc_consolidate` and kept one
/// arena per thread (hundreds of MiB of resident memory) under concurrent load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let cli = match pemba::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors
            return if e.use_stderr() {
                std::process::ExitCode::from(pemba::cli::EXIT_USAGE)
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEMBA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otel")]
    let _otel_guard = match cli.otel_options() {
        Some(options) => match pemba::cli::otel::layer(&options) {
            Ok((layer, guard)) => {
                // Only this crate's spans (the RPC spans) whatever PEMBA_LOG says; never the
                // exporter's own tonic and h2 spans.
                let only_pemba = tracing_subscriber::filter::Targets::new()
                    .with_target("pemba", tracing::Level::INFO);
                registry.with(layer.with_filter(only_pemba)).init();
                Some(guard)
            }
            Err(e) => {
                eprintln!("error: cannot set up OpenTelemetry export: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => {
            registry.init();
            None
        }
    };
    #[cfg(not(feature = "otel"))]
    registry.init();
    match pemba::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(pemba::cli::EXIT_ERROR)
        }
    }
}
