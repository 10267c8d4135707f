//! `pemba serve-testing`: in-memory stores, one per bearer token, for application test suites.
//!
//! As `spicedb serve-testing` behaves: the bearer token is not checked, it picks a store. The
//! first call with a new token creates an empty in-memory store (schema and relationships) that
//! only calls with the same token see; calls without a token, or whose `authorization` header is
//! not a bearer token, share one default store. Stores are never freed, as SpiceDB's are not: a
//! test suite's process is short-lived. A second, read-only listener serves the same stores and
//! refuses every write with UNAVAILABLE `ERROR_REASON_SERVICE_READ_ONLY`. With `--load-configs`,
//! every new store starts with the schema and relationships of those validation files.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::api::{Api, ApiError, ExperimentalApi, Limits, PermissionsApi, SchemaApi, WatchApi};
use crate::engine::EngineConfig;
use crate::model::{Relationship, Timestamp};
use crate::store::{Datastore, MemoryStore, RelationshipUpdate, UpdateOp};

/// What every new store starts with (`--load-configs`): a schema (already compiled once, so
/// known to be valid) and relationships (checked against it).
#[derive(Debug, Clone, Default)]
pub struct Seed {
    /// the schema text (empty: none)
    pub schema: String,
    /// the relationships
    pub relationships: Vec<Relationship>,
}

/// Relationships a seed writes per transaction (as SpiceDB loads them).
const SEED_BATCH: usize = 500;

impl Seed {
    /// Writes the seed into a new, empty store.
    fn plant(&self, store: &MemoryStore) -> crate::store::StoreResult<()> {
        let now = Timestamp::now();
        if !self.schema.is_empty() {
            store.write_schema(&self.schema, &[], now)?;
        }
        for chunk in self.relationships.chunks(SEED_BATCH) {
            let updates: Vec<RelationshipUpdate> = chunk
                .iter()
                .map(|r| RelationshipUpdate {
                    op: UpdateOp::Touch,
                    relationship: r.clone(),
                })
                .collect();
            store.write_relationships(&[], &updates, now)?;
        }
        Ok(())
    }
}

/// The stores of a testing server, by bearer token.
#[derive(Debug)]
pub struct Tenants {
    apis: Mutex<HashMap<String, Arc<Api>>>,
    engine: EngineConfig,
    limits: Limits,
    seed: Seed,
}

impl Tenants {
    /// No stores yet; each is made, with these settings, on its token's first call.
    pub fn new(engine: EngineConfig, limits: Limits) -> Arc<Tenants> {
        Tenants::seeded(engine, limits, Seed::default())
    }

    /// As [`Tenants::new`], each new store starting with `seed`.
    pub fn seeded(engine: EngineConfig, limits: Limits, seed: Seed) -> Arc<Tenants> {
        Arc::new(Tenants {
            apis: Mutex::new(HashMap::new()),
            engine,
            limits,
            seed,
        })
    }

    /// The store of `token` (`""`: the default store), made on first use: empty, or with the
    /// seed.
    pub fn api(&self, token: &str) -> Arc<Api> {
        let mut apis = self.apis.lock().unwrap_or_else(PoisonError::into_inner);
        let api = apis.entry(token.to_string()).or_insert_with(|| {
            tracing::debug!("a new in-memory store for a new token");
            let store = MemoryStore::new();
            if let Err(e) = self.seed.plant(&store) {
                // The seed was checked at start; a memory store does not fail to write.
                tracing::error!(error = %e, "cannot load --load-configs into a new store");
            }
            Api::new(Arc::new(store), self.engine.clone(), self.limits.clone())
        });
        Arc::clone(api)
    }

    /// Tells every store's long-lived streams (Watch) that the server is shutting down.
    pub fn begin_shutdown(&self) {
        for api in self
            .apis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            api.begin_shutdown();
        }
    }

    /// How many stores have been made.
    pub fn len(&self) -> usize {
        self.apis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no store has been made yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The token of `authorization: Bearer <token>`; `""` when there is none or it is not a bearer
/// token (SpiceDB sends such calls to the shared default store too).
fn token_of(headers: &http::HeaderMap) -> &str {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim())
}

/// The methods that write: refused on the read-only listener.
const WRITES: [&str; 7] = [
    "/authzed.api.v1.PermissionsService/WriteRelationships",
    "/authzed.api.v1.PermissionsService/DeleteRelationships",
    "/authzed.api.v1.PermissionsService/ImportBulkRelationships",
    "/authzed.api.v1.SchemaService/WriteSchema",
    "/authzed.api.v1.ExperimentalService/BulkImportRelationships",
    "/authzed.api.v1.ExperimentalService/ExperimentalRegisterRelationshipCounter",
    "/authzed.api.v1.ExperimentalService/ExperimentalUnregisterRelationshipCounter",
];

/// One gRPC service (`S`, made by `make` for a store's API) served from the store of each
/// call's token.
pub(crate) struct PerToken<S> {
    tenants: Arc<Tenants>,
    make: fn(Arc<Api>, usize) -> S,
    max_message_size: usize,
    read_only: bool,
}

impl<S> Clone for PerToken<S> {
    fn clone(&self) -> Self {
        PerToken {
            tenants: Arc::clone(&self.tenants),
            make: self.make,
            max_message_size: self.max_message_size,
            read_only: self.read_only,
        }
    }
}

impl<S: NamedService> NamedService for PerToken<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for PerToken<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call makes its own service for its store: nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if self.read_only && WRITES.contains(&request.uri().path()) {
            let refused = tonic::Status::from(ApiError::ServiceReadOnly).into_http();
            return Box::pin(async move { Ok(refused) });
        }
        let api = self.tenants.api(token_of(request.headers()));
        let mut service = (self.make)(api, self.max_message_size);
        Box::pin(async move { service.call(request).await })
    }
}

/// The API services of a testing server over `tenants`; `read_only` refuses every write.
pub(crate) fn routes(
    tenants: &Arc<Tenants>,
    max_message_size: usize,
    read_only: bool,
) -> tonic::service::Routes {
    fn per_token<S>(
        tenants: &Arc<Tenants>,
        max_message_size: usize,
        read_only: bool,
        make: fn(Arc<Api>, usize) -> S,
    ) -> PerToken<S> {
        PerToken {
            tenants: Arc::clone(tenants),
            make,
            max_message_size,
            read_only,
        }
    }
    tonic::service::Routes::new(per_token(
        tenants,
        max_message_size,
        read_only,
        |api, size| {
            PermissionsApi(api)
                .into_server()
                .max_decoding_message_size(size)
        },
    ))
    .add_service(per_token(
        tenants,
        max_message_size,
        read_only,
        |api, size| SchemaApi(api).into_server().max_decoding_message_size(size),
    ))
    .add_service(per_token(
        tenants,
        max_message_size,
        read_only,
        |api, size| {
            ExperimentalApi(api)
                .into_server()
                .max_decoding_message_size(size)
        },
    ))
    .add_service(per_token(
        tenants,
        max_message_size,
        read_only,
        |api, size| WatchApi(api).into_server().max_decoding_message_size(size),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pick_stores() {
        let mut h = http::HeaderMap::new();
        assert_eq!(token_of(&h), "");
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(token_of(&h), "abc");
        h.insert(http::header::AUTHORIZATION, "bearer xyz".parse().unwrap());
        assert_eq!(token_of(&h), "xyz");
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(token_of(&h), "");
        h.insert(http::header::AUTHORIZATION, "garbage".parse().unwrap());
        assert_eq!(token_of(&h), "");

        let tenants = Tenants::new(EngineConfig::default(), Limits::default());
        let a = tenants.api("a");
        assert!(Arc::ptr_eq(&a, &tenants.api("a")));
        assert!(!Arc::ptr_eq(&a, &tenants.api("b")));
        assert!(!Arc::ptr_eq(&a, &tenants.api("")));
        assert_eq!(tenants.len(), 3);
    }
}
