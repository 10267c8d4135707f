//! `PermissionsService`: relationship writes, deletes, reads, bulk import/export, and queries.
//!
//! The queries are check, bulk check, expand and the lookups; each call is validated and
//! converted here and answered by the store or the engine.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, now};
use super::error::{ApiError, ApiResult, Metadata, Reason, meta};
use super::proto::authzed::api::v1 as pb;
use super::{Api, blocking, query, stream, validate};
use crate::consistency::{self, Cursor, Requirement, choose_revision};
use crate::model::{ObjectRef, RelationshipFilter, RelationshipKey, Revision, SubjectRef};
use crate::store::{Precondition, RelationshipUpdate, UpdateOp};

/// A boxed response stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Relationships ReadRelationships reads from the store at a time: what one stream holds
/// besides the transport's buffers (each response carries a token and a cursor, several
/// hundred bytes in all), so that a thousand stalled readers hold megabytes, not gigabytes.
const READ_PAGE_SIZE: usize = 128;

/// The tonic `PermissionsService`.
#[derive(Debug, Clone)]
pub struct PermissionsApi(pub Arc<Api>);

impl PermissionsApi {
    /// Wraps it for tonic's router.
    pub fn into_server(
        self,
    ) -> pb::permissions_service_server::PermissionsServiceServer<PermissionsApi> {
        pb::permissions_service_server::PermissionsServiceServer::new(self)
    }
}

/// Encodes a relationship key as a cursor position.
pub(super) fn key_position(k: &RelationshipKey) -> Vec<u8> {
    let parts = [
        k.resource.object_type.as_str(),
        k.resource.object_id.as_str(),
        k.relation.as_str(),
        k.subject.object.object_type.as_str(),
        k.subject.object.object_id.as_str(),
        k.subject.relation.as_deref().unwrap_or(""),
    ];
    parts.join("\0").into_bytes()
}

/// Decodes a cursor position back into a relationship key.
pub(super) fn position_key(p: &[u8]) -> ApiResult<RelationshipKey> {
    let bad = || {
        ApiError::Consistency(consistency::ConsistencyError::InvalidCursor(
            "bad position".into(),
        ))
    };
    let s = std::str::from_utf8(p).map_err(|_| bad())?;
    let parts: Vec<&str> = s.split('\0').collect();
    let [rt, ri, rel, st, si, sr] = parts.as_slice() else {
        return Err(bad());
    };
    Ok(RelationshipKey {
        resource: ObjectRef::new(*rt, *ri),
        relation: (*rel).to_string(),
        subject: SubjectRef {
            object: ObjectRef::new(*st, *si),
            relation: if sr.is_empty() {
                None
            } else {
                Some((*sr).to_string())
            },
        },
    })
}

fn filter_hash(f: &RelationshipFilter) -> u64 {
    consistency::hash_request(&[b"read", format!("{f:?}").as_bytes()])
}

fn check_preconditions_count(api: &Api, n: usize) -> ApiResult<()> {
    if n > api.limits.max_preconditions {
        return Err(ApiError::invalid(
            Reason::TooManyPreconditionsInRequest,
            format!(
                "precondition count of {n} is greater than maximum allowed of {}",
                api.limits.max_preconditions
            ),
            meta([
                ("precondition_count", &n.to_string()),
                (
                    "maximum_preconditions_allowed",
                    &api.limits.max_preconditions.to_string(),
                ),
            ]),
        ));
    }
    Ok(())
}

/// Checks the size of a write's transaction metadata and converts it for the change log.
fn transaction_metadata(
    m: Option<&prost_types::Struct>,
) -> ApiResult<Option<crate::model::TransactionMetadata>> {
    use prost::Message as _;
    if let Some(m) = m {
        let len = m.encoded_len();
        if len > convert::MAX_TRANSACTION_METADATA_BYTES {
            return Err(ApiError::invalid(
                Reason::TransactionMetadataTooLarge,
                format!(
                    "transaction metadata size of {len} bytes exceeds the maximum of {} bytes",
                    convert::MAX_TRANSACTION_METADATA_BYTES
                ),
                Metadata::new(),
            ));
        }
    }
    m.map(|m| convert::struct_to_json(m, "optional_transaction_metadata"))
        .transpose()
        .map(|m| m.map(crate::model::TransactionMetadata))
}

fn convert_preconditions(ps: &[pb::Precondition], path: &str) -> ApiResult<Vec<Precondition>> {
    ps.iter()
        .enumerate()
        .map(|(i, p)| convert::precondition(p, &format!("{path}[{i}]")))
        .collect()
}

fn write_relationships(api: &Api, req: pb::WriteRelationshipsRequest) -> ApiResult<Revision> {
    let n = req.updates.len();
    if n > api.limits.max_updates_per_write {
        return Err(ApiError::invalid(
            Reason::TooManyUpdatesInRequest,
            format!(
                "update count of {n} is greater than maximum allowed of {}",
                api.limits.max_updates_per_write
            ),
            meta([
                ("update_count", &n.to_string()),
                (
                    "maximum_updates_allowed",
                    &api.limits.max_updates_per_write.to_string(),
                ),
            ]),
        ));
    }
    check_preconditions_count(api, req.optional_preconditions.len())?;
    let metadata = transaction_metadata(req.optional_transaction_metadata.as_ref())?;
    let mut updates = Vec::with_capacity(n);
    for (i, u) in req.updates.iter().enumerate() {
        let path = format!("updates[{i}]");
        let op = match pb::relationship_update::Operation::try_from(u.operation) {
            Ok(pb::relationship_update::Operation::Create) => UpdateOp::Create,
            Ok(pb::relationship_update::Operation::Touch) => UpdateOp::Touch,
            Ok(pb::relationship_update::Operation::Delete) => UpdateOp::Delete,
            _ => {
                return Err(ApiError::field(
                    &format!("{path}.operation"),
                    "value must be one of the defined enum values and not unspecified",
                ));
            }
        };
        let relationship = convert::relationship(
            u.relationship.as_ref(),
            &format!("{path}.relationship"),
            api.limits.max_relationship_context_bytes,
        )?;
        updates.push(RelationshipUpdate { op, relationship });
    }
    let preconditions =
        convert_preconditions(&req.optional_preconditions, "optional_preconditions")?;
    validate::unique_updates(updates.iter().map(|u| u.relationship.key()))?;

    let _gate = api.lock_writes()?;
    let schema = api.schema_at(api.store.head_revision()?)?;
    for u in &updates {
        match u.op {
            UpdateOp::Create | UpdateOp::Touch => {
                validate::relationship_for_write(&schema, &u.relationship)?;
            }
            UpdateOp::Delete => {
                let r = &u.relationship;
                validate::relation_or_permission_exists(
                    &schema,
                    &r.resource.object_type,
                    &r.relation,
                )?;
            }
        }
    }
    for p in &preconditions {
        validate::filter(&schema, &p.filter)?;
    }
    Ok(api.store.write_relationships_with_metadata(
        &preconditions,
        &updates,
        now(),
        metadata.as_ref(),
    )?)
}

fn delete_relationships(
    api: &Api,
    req: pb::DeleteRelationshipsRequest,
) -> ApiResult<pb::DeleteRelationshipsResponse> {
    let filter =
        convert::relationship_filter(req.relationship_filter.as_ref(), "relationship_filter")?;
    check_preconditions_count(api, req.optional_preconditions.len())?;
    let metadata = transaction_metadata(req.optional_transaction_metadata.as_ref())?;
    let preconditions =
        convert_preconditions(&req.optional_preconditions, "optional_preconditions")?;
    validate::limit(
        req.optional_limit,
        api.limits.max_delete_limit,
        "deleting relationships",
    )?;
    let _gate = api.lock_writes()?;
    let schema = api.schema_at(api.store.head_revision()?)?;
    validate::filter(&schema, &filter)?;
    for p in &preconditions {
        validate::filter(&schema, &p.filter)?;
    }
    let limit = (req.optional_limit > 0).then_some(u64::from(req.optional_limit));
    let outcome = api.store.delete_relationships_with_metadata(
        &filter,
        &preconditions,
        limit,
        req.optional_allow_partial_deletions,
        now(),
        metadata.as_ref(),
    )?;
    Ok(pb::DeleteRelationshipsResponse {
        deleted_at: Some(convert::zed_token_out(
            outcome.revision,
            api.store.unique_id(),
        )),
        deletion_progress: if outcome.partial {
            pb::delete_relationships_response::DeletionProgress::Partial as i32
        } else {
            pb::delete_relationships_response::DeletionProgress::Complete as i32
        },
        relationships_deleted_count: outcome.deleted,
    })
}

/// Where a paged read starts: the revision and the key to resume after.
struct ReadStart {
    revision: Revision,
    after: Option<RelationshipKey>,
}

fn read_start(
    api: &Api,
    consistency_req: Option<&pb::Consistency>,
    cursor: Option<&pb::Cursor>,
    hash: u64,
) -> ApiResult<ReadStart> {
    match convert::cursor_token(cursor, "optional_cursor")? {
        Some(token) => {
            let c = consistency::decode_cursor(&token, api.store.unique_id(), hash)?;
            consistency::reach(api.store.as_ref(), c.revision)?;
            Ok(ReadStart {
                revision: c.revision,
                after: Some(position_key(&c.position)?),
            })
        }
        None => {
            let requirement: Requirement = convert::consistency(consistency_req)?;
            Ok(ReadStart {
                revision: choose_revision(
                    api.store.as_ref(),
                    &requirement,
                    api.limits.mismatched_tokens,
                )?,
                after: None,
            })
        }
    }
}

/// Streams matching relationships page by page: each page is read on the blocking pool, and
/// `emit` turns it into responses, which an async task hands to the transport. No thread is
/// held while the client reads; a client that stops reading is given up on (see `stream`).
fn stream_relationships<T: Send + 'static>(
    api: Arc<Api>,
    filter: RelationshipFilter,
    start: ReadStart,
    limit: Option<usize>,
    page_size: usize,
    hash: u64,
    emit: impl Fn(&Api, Vec<crate::model::Relationship>, Revision, u64) -> Vec<T> + Send + 'static,
) -> ResponseStream<T> {
    let (outlet, feed) = stream::channel::<T>(api.limits.stream_stall_timeout);
    tokio::spawn(async move {
        let ReadStart {
            revision,
            mut after,
        } = start;
        let filter = Arc::new(filter);
        let mut remaining = limit.unwrap_or(usize::MAX);
        let now = now();
        while remaining > 0 {
            let page = blocking({
                let (api, filter, after) = (Arc::clone(&api), Arc::clone(&filter), after.clone());
                let n = remaining.min(page_size);
                move || Ok(api.store.query(revision, &filter, after.as_ref(), n, now)?)
            })
            .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => return outlet.fail(e).await,
            };
            remaining = remaining.saturating_sub(page.relationships.len());
            let done = page.next.is_none();
            after = page.next;
            for item in emit(&api, page.relationships, revision, hash) {
                if outlet.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            if done {
                break;
            }
        }
    });
    Box::pin(feed)
}

/// Streams computed results, each turned into its response only as it goes out (so the
/// answer is not held twice), giving up on a reader that stops reading.
fn stream_items<S: Send + 'static, T: Send + 'static>(
    api: &Api,
    items: Vec<S>,
    out: impl Fn(S) -> T + Send + 'static,
) -> ResponseStream<T> {
    let (outlet, feed) = stream::channel::<T>(api.limits.stream_stall_timeout);
    tokio::spawn(async move {
        for item in items {
            if outlet.send(Ok(out(item))).await.is_err() {
                return;
            }
        }
    });
    Box::pin(feed)
}

/// Streams a LookupResources answer a batch of results at a time, as they are resolved: each
/// batch on the blocking pool, handed to the transport by an async task, so no thread is held
/// while the client reads. A client that goes away while a batch is resolved cancels it.
fn stream_lookup_resources(
    api: Arc<Api>,
    control: query::Control,
    start: query::LookupStart,
) -> ResponseStream<pb::LookupResourcesResponse> {
    let (outlet, feed) = stream::channel(api.limits.stream_stall_timeout);
    tokio::spawn(async move {
        let start = Arc::new(start);
        let (mut from, mut remaining) = (start.from, start.limit);
        while remaining > 0 && from < start.lookup.len() {
            let batch = blocking({
                let (api, start, control) = (Arc::clone(&api), Arc::clone(&start), control.clone());
                move || query::lookup_resources_batch(&api, &start, from, remaining, &control)
            });
            // Dropped on return while the batch runs: marks it cancelled.
            let guard = control.guard();
            let batch = tokio::select! {
                batch = batch => batch,
                () = outlet.closed() => return,
            };
            guard.finish();
            let (items, next) = match batch {
                Ok(b) => b,
                Err(e) => return outlet.fail(e).await,
            };
            from = next;
            remaining = remaining.saturating_sub(items.len());
            for item in items {
                if outlet.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        }
    });
    Box::pin(feed)
}

fn cursor_after(api: &Api, rev: Revision, key: &RelationshipKey, hash: u64) -> pb::Cursor {
    pb::Cursor {
        token: consistency::encode_cursor(
            &Cursor {
                revision: rev,
                position: key_position(key),
            },
            api.store.unique_id(),
            hash,
        ),
    }
}

/// Runs a query on the executor thread itself, with the request's deadline. For Check: it
/// reads only memory (the store's relationship graph and its newest schema), takes tens of
/// microseconds, and stops at its deadline, so a hop to the blocking pool and back would cost
/// more than the check (two thread wake-ups per call).
fn run_inline<R, T>(
    api: &Arc<Api>,
    request: Request<R>,
    query: fn(&Api, R, &query::Control) -> ApiResult<T>,
) -> Result<T, Status> {
    let control = query::Control::for_request(request.metadata(), api.limits.max_request_duration);
    Ok(query(api, request.into_inner(), &control)?)
}

/// Runs a query off the executor with the request's deadline; if the client goes away first,
/// the query is told to stop.
async fn run_query<R: Send + 'static, T: Send + 'static>(
    api: &Arc<Api>,
    request: Request<R>,
    query: fn(&Api, R, &query::Control) -> ApiResult<T>,
) -> Result<T, Status> {
    let control = query::Control::for_request(request.metadata(), api.limits.max_request_duration);
    run_query_with(api, control, request.into_inner(), query).await
}

/// [`run_query`] with the control already made (a streaming query goes on using it).
async fn run_query_with<R: Send + 'static, T: Send + 'static>(
    api: &Arc<Api>,
    control: query::Control,
    req: R,
    query: fn(&Api, R, &query::Control) -> ApiResult<T>,
) -> Result<T, Status> {
    let api = Arc::clone(api);
    let guard = control.guard();
    let out = blocking(move || query(&api, req, &control)).await;
    guard.finish();
    Ok(out?)
}

/// Forgets a staged import unless it was committed: on every error, and when tonic drops
/// the handler because the client went away.
struct StagedImport {
    store: Arc<dyn crate::store::Datastore>,
    id: u64,
    committed: bool,
}

impl Drop for StagedImport {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let (store, id) = (Arc::clone(&self.store), self.id);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.abort_import(id) {
                tracing::warn!(error = %e, "cannot forget an aborted import");
            }
        });
    }
}

/// ImportBulkRelationships: each message is validated against the schema and staged in the
/// store as it arrives (memory: one message), then everything is created at one revision.
/// The client is never waited on while a lock is held: staging takes none, and the commit
/// starts only once the stream has ended. A client that sends nothing for the stall timeout
/// loses the import.
pub(super) async fn import_bulk(
    api: Arc<Api>,
    mut stream: impl Stream<Item = Result<Vec<pb::Relationship>, Status>> + Unpin,
) -> ApiResult<pb::ImportBulkRelationshipsResponse> {
    let (id, schema_revision, schema) = blocking({
        let api = Arc::clone(&api);
        move || {
            let head = api.store.head_revision()?;
            let schema_revision = api.store.read_schema(head)?.map(|s| s.revision);
            Ok((
                api.store.begin_import()?,
                schema_revision,
                api.schema_at(head)?,
            ))
        }
    })
    .await?;
    let mut staged = StagedImport {
        store: Arc::clone(&api.store),
        id,
        committed: false,
    };
    let stall = api.limits.stream_stall_timeout;
    loop {
        let msg = match tokio::time::timeout(stall, stream.next()).await {
            Err(_) => return Err(ApiError::SenderStalled(stall)),
            Ok(Some(Err(status))) => return Err(ApiError::Stream(status)),
            Ok(None) => break,
            Ok(Some(Ok(msg))) => msg,
        };
        let mut rels = Vec::with_capacity(msg.len());
        for (i, r) in msg.iter().enumerate() {
            let relationship = convert::relationship(
                Some(r),
                &format!("relationships[{i}]"),
                api.limits.max_relationship_context_bytes,
            )?;
            validate::relationship_for_write(&schema, &relationship)?;
            rels.push(relationship);
        }
        let api = Arc::clone(&api);
        blocking(move || Ok(api.store.stage_import(id, &rels)?)).await?;
    }
    let (_, loaded) = blocking({
        let api = Arc::clone(&api);
        move || {
            let _gate = api.lock_writes()?;
            // Validated against the schema of the start; a schema written since could have
            // removed what the relationships use.
            let now_schema = api
                .store
                .read_schema(api.store.head_revision()?)?
                .map(|s| s.revision);
            if now_schema != schema_revision {
                return Err(ApiError::Aborted(
                    "the schema changed while the import was streaming; retry the import".into(),
                ));
            }
            Ok(api.store.commit_import(id, now())?)
        }
    })
    .await?;
    staged.committed = true;
    let store = Arc::clone(&api.store);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.abort_import(id) {
            tracing::warn!(error = %e, "cannot remove a committed import's staged copy");
        }
    });
    Ok(pb::ImportBulkRelationshipsResponse { num_loaded: loaded })
}

#[tonic::async_trait]
impl pb::permissions_service_server::PermissionsService for PermissionsApi {
    type ReadRelationshipsStream = ResponseStream<pb::ReadRelationshipsResponse>;
    type LookupResourcesStream = ResponseStream<pb::LookupResourcesResponse>;
    type LookupSubjectsStream = ResponseStream<pb::LookupSubjectsResponse>;
    type ExportBulkRelationshipsStream = ResponseStream<pb::ExportBulkRelationshipsResponse>;

    async fn read_relationships(
        &self,
        request: Request<pb::ReadRelationshipsRequest>,
    ) -> Result<Response<Self::ReadRelationshipsStream>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        let filter =
            convert::relationship_filter(req.relationship_filter.as_ref(), "relationship_filter")?;
        validate::limit(
            req.optional_limit,
            api.limits.max_read_limit,
            "reading relationships",
        )?;
        let hash = filter_hash(&filter);
        let (start, filter) = blocking({
            let api = Arc::clone(&api);
            move || {
                let start = read_start(
                    &api,
                    req.consistency.as_ref(),
                    req.optional_cursor.as_ref(),
                    hash,
                )?;
                validate::filter(&*api.schema_at(start.revision)?, &filter)?;
                Ok((start, filter))
            }
        })
        .await?;
        let limit = (req.optional_limit > 0).then_some(req.optional_limit as usize);
        let read_page = READ_PAGE_SIZE.min(api.limits.max_datastore_read_page_size);
        Ok(Response::new(stream_relationships(
            api,
            filter,
            start,
            limit,
            read_page,
            hash,
            |api, rels, rev, hash| {
                let token = convert::zed_token_out(rev, api.store.unique_id());
                rels.iter()
                    .map(|r| pb::ReadRelationshipsResponse {
                        read_at: Some(token.clone()),
                        relationship: Some(convert::relationship_out(r)),
                        after_result_cursor: Some(cursor_after(api, rev, &r.key(), hash)),
                    })
                    .collect()
            },
        )))
    }

    async fn write_relationships(
        &self,
        request: Request<pb::WriteRelationshipsRequest>,
    ) -> Result<Response<pb::WriteRelationshipsResponse>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        let rev = blocking({
            let api = Arc::clone(&api);
            move || write_relationships(&api, req)
        })
        .await?;
        Ok(Response::new(pb::WriteRelationshipsResponse {
            written_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
        }))
    }

    async fn delete_relationships(
        &self,
        request: Request<pb::DeleteRelationshipsRequest>,
    ) -> Result<Response<pb::DeleteRelationshipsResponse>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        Ok(Response::new(
            blocking(move || delete_relationships(&api, req)).await?,
        ))
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        // A check whose revision must first come from another node (a shared datastore)
        // may wait for it: that waits on the blocking pool, not on an executor thread.
        let waits = self.0.store.shared()
            && convert::consistency(request.get_ref().consistency.as_ref())
                .is_ok_and(|r| consistency::may_wait(self.0.store.as_ref(), &r));
        if waits {
            return Ok(Response::new(
                run_query(&self.0, request, query::check).await?,
            ));
        }
        Ok(Response::new(run_inline(&self.0, request, query::check)?))
    }

    async fn check_bulk_permissions(
        &self,
        request: Request<pb::CheckBulkPermissionsRequest>,
    ) -> Result<Response<pb::CheckBulkPermissionsResponse>, Status> {
        Ok(Response::new(
            run_query(&self.0, request, query::check_bulk).await?,
        ))
    }

    async fn expand_permission_tree(
        &self,
        request: Request<pb::ExpandPermissionTreeRequest>,
    ) -> Result<Response<pb::ExpandPermissionTreeResponse>, Status> {
        Ok(Response::new(
            run_query(&self.0, request, query::expand).await?,
        ))
    }

    async fn lookup_resources(
        &self,
        request: Request<pb::LookupResourcesRequest>,
    ) -> Result<Response<Self::LookupResourcesStream>, Status> {
        let api = Arc::clone(&self.0);
        let control =
            query::Control::for_request(request.metadata(), api.limits.max_request_duration);
        let req = request.into_inner();
        let start =
            run_query_with(&api, control.clone(), req, query::start_lookup_resources).await?;
        Ok(Response::new(stream_lookup_resources(api, control, start)))
    }

    async fn lookup_subjects(
        &self,
        request: Request<pb::LookupSubjectsRequest>,
    ) -> Result<Response<Self::LookupSubjectsStream>, Status> {
        let answer = run_query(&self.0, request, query::lookup_subjects).await?;
        let (token, subjects) = (answer.token, answer.subjects);
        Ok(Response::new(stream_items(&self.0, subjects, move |s| {
            query::lookup_subjects_response(&token, &s)
        })))
    }

    async fn import_bulk_relationships(
        &self,
        request: Request<Streaming<pb::ImportBulkRelationshipsRequest>>,
    ) -> Result<Response<pb::ImportBulkRelationshipsResponse>, Status> {
        let api = Arc::clone(&self.0);
        let stream = request.into_inner().map(|m| m.map(|m| m.relationships));
        Ok(Response::new(import_bulk(api, stream).await?))
    }

    async fn export_bulk_relationships(
        &self,
        request: Request<pb::ExportBulkRelationshipsRequest>,
    ) -> Result<Response<Self::ExportBulkRelationshipsStream>, Status> {
        let api = Arc::clone(&self.0);
        Ok(Response::new(
            export_bulk(
                Arc::clone(&api),
                request.into_inner(),
                api.limits.max_export_limit,
            )
            .await?,
        ))
    }
}

/// ExportBulkRelationships (and the Experimental service's BulkExportRelationships, whose
/// maximum page is `max`): every matching relationship at one revision, in pages, each with
/// the cursor that resumes after it.
pub(super) async fn export_bulk(
    api: Arc<Api>,
    req: pb::ExportBulkRelationshipsRequest,
    max: u32,
) -> ApiResult<ResponseStream<pb::ExportBulkRelationshipsResponse>> {
    validate::limit(req.optional_limit, max, "exporting relationships")?;
    let filter = match req.optional_relationship_filter.as_ref() {
        Some(f) => convert::relationship_filter(Some(f), "optional_relationship_filter")?,
        None => RelationshipFilter::default(),
    };
    let hash = consistency::hash_request(&[b"export", format!("{filter:?}").as_bytes()]);
    let page = if req.optional_limit == 0 {
        max as usize
    } else {
        req.optional_limit as usize
    };
    let (start, filter) = blocking({
        let api = Arc::clone(&api);
        move || {
            let start = read_start(
                &api,
                req.consistency.as_ref(),
                req.optional_cursor.as_ref(),
                hash,
            )?;
            Ok((start, filter))
        }
    })
    .await?;
    let read_page = api.limits.max_datastore_read_page_size;
    Ok(stream_relationships(
        api,
        filter,
        start,
        None,
        read_page,
        hash,
        move |api, rels, rev, hash| {
            rels.chunks(page)
                .filter_map(|chunk| {
                    let last = chunk.last()?;
                    Some(pb::ExportBulkRelationshipsResponse {
                        after_result_cursor: Some(cursor_after(api, rev, &last.key(), hash)),
                        relationships: chunk.iter().map(convert::relationship_out).collect(),
                    })
                })
                .collect()
        },
    ))
}
