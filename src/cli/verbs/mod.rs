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
use crate::api::proto::authzed::api::v1 as pb;
use crate::cli::output::token_text;

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

/// Relationships per WriteRelationships (SpiceDB's default limit).
const WRITE_BATCH: usize = 1000;

/// Writes `rels` with `op`, a WriteRelationships of at most 1,000 at a time (each its own
/// transaction); `progress` is told how many are written after each. Returns the last token.
async fn write_in_batches(
    c: &Client,
    rels: &[pb::Relationship],
    op: pb::relationship_update::Operation,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<String> {
    let mut client =
        pb::permissions_service_client::PermissionsServiceClient::new(c.channel.clone());
    let mut token = String::new();
    let mut done = 0;
    for chunk in rels.chunks(WRITE_BATCH) {
        let updates = chunk
            .iter()
            .map(|r| pb::RelationshipUpdate {
                operation: op as i32,
                relationship: Some(r.clone()),
            })
            .collect();
        let resp = client
            .write_relationships(c.request(pb::WriteRelationshipsRequest {
                updates,
                ..Default::default()
            }))
            .await
            .map_err(|s| failed("WriteRelationships", &s))?
            .into_inner();
        token = token_text(resp.written_at.as_ref()).to_string();
        done += chunk.len();
        progress(done);
    }
    Ok(token)
}
