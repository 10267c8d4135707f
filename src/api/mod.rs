//! The wire: thin tonic services for `authzed.api.v1`.
//!
//! Each service validates a request, converts it to model values (`convert`), calls the store
//! or engine, and converts back; errors become gRPC statuses in exactly one place (`status`).

mod backup;
mod convert;
mod error;
mod experimental;
mod permissions;
pub mod proto;
mod query;
mod reflect;
mod schema_service;
mod status;
mod stream;
mod validate;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use backup::{BackupApi, valid_backup_name};
pub use error::{ApiError, ApiResult, Reason};
pub use experimental::ExperimentalApi;
pub use permissions::PermissionsApi;
pub use schema_service::SchemaApi;
pub use watch::{WatchApi, init_metrics as init_watch_metrics};

/// The conversions and schema checks a client of the API (`pemba backup import`) applies to
/// relationships before sending them, the same the server applies on receipt.
pub mod client {
    pub use super::convert::{
        json_to_struct as struct_from_json, relationship as relationship_from_proto,
        relationship_out as relationship_to_proto, struct_to_json,
    };
    pub use super::validate::relationship_for_write;
}

use crate::consistency::MismatchedTokens;
use crate::engine::{Engine, EngineConfig};
use crate::model::Revision;
use crate::schema::CompiledSchema;
use crate::store::Datastore;

/// Request limits, SpiceDB's defaults unless configured.
#[derive(Debug, Clone)]
pub struct Limits {
    /// most updates in one WriteRelationships
    pub max_updates_per_write: usize,
    /// most preconditions in one write or delete
    pub max_preconditions: usize,
    /// highest `optional_limit` of ReadRelationships
    pub max_read_limit: u32,
    /// highest `optional_limit` of DeleteRelationships
    pub max_delete_limit: u32,
    /// highest `optional_limit` of LookupResources
    pub max_lookup_limit: u32,
    /// most items in one CheckBulkPermissions
    pub max_bulk_checks: usize,
    /// largest schema text, in bytes
    pub max_schema_bytes: usize,
    /// largest caveat context of a request (Check, lookups), encoded, in bytes
    pub max_caveat_context_bytes: usize,
    /// largest caveat context of a relationship, encoded, in bytes
    pub max_relationship_context_bytes: usize,
    /// highest `optional_limit` of ExportBulkRelationships, and its page size when unset
    pub max_export_limit: u32,
    /// relationships read from the store at a time by a streamed read or export
    pub max_datastore_read_page_size: usize,
    /// the deadline of a query whose client sent none, or a later one than this
    pub max_request_duration: Duration,
    /// how long a response stream may wait for its reader before it is given up on
    pub stream_stall_timeout: Duration,
    /// Watch: how often an idle stream that asked for checkpoints gets one
    pub watch_heartbeat: Duration,
    /// Watch: responses buffered for a client before it counts as falling behind
    pub watch_buffer_length: usize,
    /// Watch: how long the buffer may stay full before the client is disconnected
    /// (RESOURCE_EXHAUSTED)
    pub watch_buffer_write_timeout: Duration,
    /// Watch: the largest revision (its stored changes, in bytes) a stream sends
    pub watch_change_buffer_max_bytes: usize,
    /// what an `at_least_as_fresh` read does with another datastore's token
    pub mismatched_tokens: MismatchedTokens,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_updates_per_write: 1000,
            max_preconditions: 1000,
            max_read_limit: 1000,
            max_delete_limit: 1000,
            max_lookup_limit: 1000,
            max_bulk_checks: 10_000,
            max_schema_bytes: 4 * 1024 * 1024,
            max_caveat_context_bytes: 4096,
            max_relationship_context_bytes: 25_000,
            max_export_limit: 10_000,
            max_datastore_read_page_size: 1000,
            max_request_duration: Duration::from_secs(30),
            stream_stall_timeout: Duration::from_secs(30),
            watch_heartbeat: Duration::from_secs(1),
            watch_buffer_length: 128,
            watch_buffer_write_timeout: Duration::from_secs(1),
            watch_change_buffer_max_bytes: 128 * 1024 * 1024,
            mismatched_tokens: MismatchedTokens::default(),
        }
    }
}

/// The state every service shares: the store, the engine, the compiled-schema cache, the limits.
#[derive(Debug)]
pub struct Api {
    store: Arc<dyn Datastore>,
    engine: Engine,
    limits: Limits,
    /// the last schema compiled, keyed by the revision that wrote it
    schema_cache: Mutex<Option<(Revision, Arc<CompiledSchema>)>>,
    /// serialises schema writes against relationship writes, so a relationship validated
    /// against one schema can never land after a schema change that would orphan it
    write_gate: Mutex<()>,
    /// cancelled when the server starts shutting down: long-lived streams (Watch) end
    shutdown: tokio_util::sync::CancellationToken,
}

impl Api {
    /// Builds the shared state.
    pub fn new(store: Arc<dyn Datastore>, engine: EngineConfig, limits: Limits) -> Arc<Api> {
        Arc::new(Api {
            store,
            engine: Engine::new(engine),
            limits,
            schema_cache: Mutex::new(None),
            write_gate: Mutex::new(()),
            shutdown: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Tells long-lived streams (Watch) that the server is shutting down: they end with
    /// UNAVAILABLE, so the shutdown need not wait for them.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Holds off every other write (schema or relationships) until the guard is dropped.
    fn lock_writes(&self) -> ApiResult<std::sync::MutexGuard<'_, ()>> {
        self.write_gate
            .lock()
            .map_err(|_| ApiError::Internal("write gate poisoned".into()))
    }

    /// The compiled schema visible at `rev` (an empty schema if none was written).
    fn schema_at(&self, rev: Revision) -> ApiResult<Arc<CompiledSchema>> {
        let Some(stored) = self.store.read_schema(rev)? else {
            return Ok(Arc::new(CompiledSchema::empty()));
        };
        if let Ok(cache) = self.schema_cache.lock()
            && let Some((r, s)) = cache.as_ref()
            && *r == stored.revision
        {
            return Ok(Arc::clone(s));
        }
        let compiled = Arc::new(crate::schema::compile_stored(&stored.text)?);
        if let Ok(mut cache) = self.schema_cache.lock() {
            let newer = cache.as_ref().is_none_or(|(r, _)| *r < stored.revision);
            if newer {
                *cache = Some((stored.revision, Arc::clone(&compiled)));
            }
        }
        Ok(compiled)
    }
}

/// Runs blocking store or engine work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker task failed: {e}")))?
}
