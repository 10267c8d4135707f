//! The client verbs: `pemba schema`, `relationship`, `permission`, `watch`, `import`, `export`.
//!
//! Each talks to any `authzed.api.v1` server (Pemba or SpiceDB) over gRPC, with the
//! connection flags of [`ClientArgs`](super::client::ClientArgs) or the current named context.
//! Output is text for people (colours on a terminal) or, with `--json`, JSON for scripts. The
//! exit code of `permission check` is the answer: 0 has, 1 has not, 2 conditional.

pub mod permission;
pub mod relationship;
pub mod schema;
pub mod transfer;

use std::process::ExitCode;

use super::client::{Client, ClientArgs, call_failed, runtime};

/// The exit code of a `permission check` that answered "no".
pub const EXIT_NO: u8 = 1;
/// The exit code of a `permission check` that answered "only if the missing context allows".
pub const EXIT_CONDITIONAL: u8 = 2;

/// Connects, runs `f` on a current-thread runtime, and returns its exit code.
fn with_client<F, Fut>(args: &ClientArgs, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    runtime()?.block_on(async {
        let client = Client::connect(args).await?;
        f(client).await
    })
}

/// A failed call as an error naming it, with the server's `ErrorInfo` reason if any.
fn failed(call: &str, status: &tonic::Status) -> anyhow::Error {
    call_failed(call, status)
}
