//! `WatchService`: the store's committed changes as a stream, one message per revision.
//!
//! A call is validated and its start checked (and its first changes read) before the
//! response starts, so a bad request or an unusable start token fails the call itself. Then a
//! producer task follows the store's change log: it reads whole revisions (on a blocking
//! thread, holding no lock afterwards), filters them, and hands messages to a bounded buffer
//! ([`stream::channel_with`]); when the log is read up to the head it waits for the next head,
//! sending heartbeat checkpoints if asked. A client whose buffer stays full past the write
//! timeout is disconnected with RESOURCE_EXHAUSTED and its buffer freed; writers never wait
//! for a watcher. Semantics follow SpiceDB (`internal/services/v1/watch.go`).

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntGauge};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{ApiError, ApiResult, Metadata};
use super::permissions::ResponseStream;
use super::proto::authzed::api::v1 as pb;
use super::stream::{self, Outlet};
use super::{Api, blocking, validate};
use crate::consistency;
use crate::model::{RelationshipFilter, Revision};
use crate::store::{ChangeOp, RevisionChanges};

/// Changes read from the log at a time (whole revisions: one huge revision is read whole,
/// bounded by the change-buffer limit instead).
const READ_CHANGES: usize = 10_000;

/// The shortest heartbeat (a configured 0 means this, as SpiceDB's "datastore minimum").
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// Buckets of `pemba_watch_lag_revisions`.
const LAG_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 100000.0,
];

/// The Watch metrics.
struct WatchMetrics {
    /// `pemba_watch_subscribers`
    subscribers: IntGauge,
    /// `pemba_watch_lag_revisions`
    lag: Histogram,
}

fn build_metrics() -> Result<WatchMetrics, prometheus::Error> {
    let m = WatchMetrics {
        subscribers: IntGauge::new("pemba_watch_subscribers", "Watch streams open now.")?,
        lag: Histogram::with_opts(
            HistogramOpts::new(
                "pemba_watch_lag_revisions",
                "For each revision a Watch stream sends, how many revisions the head was ahead \
                 of it when it was read.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )?,
    };
    prometheus::register(Box::new(m.subscribers.clone()))?;
    prometheus::register(Box::new(m.lag.clone()))?;
    Ok(m)
}

static METRICS: LazyLock<Option<WatchMetrics>> = LazyLock::new(|| match build_metrics() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "cannot register the watch metrics");
        None
    }
});

/// Registers the Watch metrics (so a scrape shows them before the first watch). True if
/// registered.
pub fn init_metrics() -> bool {
    METRICS.is_some()
}

/// Counts one open Watch stream while it lives.
struct Subscriber;

impl Subscriber {
    fn new() -> Subscriber {
        if let Some(m) = METRICS.as_ref() {
            m.subscribers.inc();
        }
        Subscriber
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(m) = METRICS.as_ref() {
            m.subscribers.dec();
        }
    }
}

/// The tonic `WatchService`.
#[derive(Debug, Clone)]
pub struct WatchApi(pub Arc<Api>);

impl WatchApi {
    /// Wraps it for tonic's router.
    pub fn into_server(self) -> pb::watch_service_server::WatchServiceServer<WatchApi> {
        pb::watch_service_server::WatchServiceServer::new(self)
    }
}

/// Which relationship updates a stream sends.
#[derive(Debug)]
enum UpdateFilter {
    /// every update
    All,
    /// updates whose resource type is one of these
    Types(HashSet<String>),
    /// updates matching any one of these filters
    Filters(Vec<RelationshipFilter>),
}

impl UpdateFilter {
    fn keeps(&self, r: &crate::model::Relationship) -> bool {
        match self {
            UpdateFilter::All => true,
            UpdateFilter::Types(types) => types.contains(&r.resource.object_type),
            UpdateFilter::Filters(filters) => filters.iter().any(|f| f.matches_relationship(r)),
        }
    }
}

/// A validated Watch request and where it starts.
#[derive(Debug)]
struct Plan {
    /// the stream sends what came strictly after this revision
    start: Revision,
    /// which updates to send
    filter: UpdateFilter,
    /// send `schema_updated` messages
    schema: bool,
    /// send `is_checkpoint` messages
    checkpoints: bool,
    /// the changes after `start` already read (the first read also checks the start)
    first: Vec<RevisionChanges>,
}

/// Validates the request against the schema at the head and decides the start.
fn plan(api: &Api, req: &pb::WatchRequest) -> ApiResult<Plan> {
    let kinds = &req.optional_update_kinds;
    let (mut schema, mut checkpoints, mut relationships) = (false, false, kinds.is_empty());
    for k in kinds {
        match pb::WatchKind::try_from(*k) {
            Ok(pb::WatchKind::Unspecified | pb::WatchKind::IncludeRelationshipUpdates) => {
                relationships = true;
            }
            Ok(pb::WatchKind::IncludeSchemaUpdates) => schema = true,
            Ok(pb::WatchKind::IncludeCheckpoints) => checkpoints = true,
            Err(_) => {
                return Err(ApiError::field(
                    "optional_update_kinds",
                    "value must be one of the defined enum values",
                ));
            }
        }
    }
    // As SpiceDB: checked only when relationship updates are asked for explicitly (or by
    // default); relationship updates are sent whatever the kinds say.
    if relationships
        && !req.optional_object_types.is_empty()
        && !req.optional_relationship_filters.is_empty()
    {
        return Err(ApiError::Invalid {
            message: "cannot specify both object types and relationship filters".to_string(),
            reason: None,
            metadata: Metadata::new(),
        });
    }
    let mut types = HashSet::new();
    for (i, t) in req.optional_object_types.iter().enumerate() {
        types.insert(convert::type_name(
            t,
            &format!("optional_object_types[{i}]"),
        )?);
    }
    let mut filters = Vec::with_capacity(req.optional_relationship_filters.len());
    for (i, f) in req.optional_relationship_filters.iter().enumerate() {
        filters.push(convert::relationship_filter(
            Some(f),
            &format!("optional_relationship_filters[{i}]"),
        )?);
    }
    let head = api.store.head_revision()?;
    if !filters.is_empty() {
        let schema = api.schema_at(head)?;
        for f in &filters {
            validate::filter(&schema, f)?;
        }
    }
    let start = match &req.optional_start_cursor {
        None => head,
        Some(token) => start_revision(api, token)?,
    };
    let first = api.store.read_changes(
        start,
        READ_CHANGES,
        api.limits.watch_change_buffer_max_bytes,
    )?;
    let filter = if !filters.is_empty() {
        UpdateFilter::Filters(filters)
    } else if !types.is_empty() {
        UpdateFilter::Types(types)
    } else {
        UpdateFilter::All
    };
    Ok(Plan {
        start,
        filter,
        schema,
        checkpoints,
        first,
    })
}

/// The revision a start cursor names, with SpiceDB's errors.
fn start_revision(api: &Api, token: &pb::ZedToken) -> ApiResult<Revision> {
    if token.token.is_empty() {
        return Err(ApiError::field(
            "optional_start_cursor.token",
            "value length must be at least 1 bytes",
        ));
    }
    let invalid = |message: String| ApiError::Invalid {
        message,
        reason: None,
        metadata: Metadata::new(),
    };
    match consistency::decode_token(&token.token, api.store.unique_id()) {
        Ok(Some(rev)) => {
            // A revision another node committed (shared datastores): wait for this node to
            // have it, so the watch resumes from it rather than failing as in the future.
            api.store.refresh(Some(rev))?;
            Ok(rev)
        }
        Ok(None) => Err(invalid(
            "start revision was generated by a different datastore instance".to_string(),
        )),
        Err(e) => Err(invalid(format!(
            "failed to decode start revision: error decoding zedtoken: {e}"
        ))),
    }
}

/// The messages of one revision, in SpiceDB's order: data, schema, checkpoint.
fn messages(api: &Api, plan: &Plan, r: RevisionChanges) -> Vec<pb::WatchResponse> {
    let mut out = Vec::with_capacity(3);
    let through = || Some(convert::zed_token_out(r.revision, api.store.unique_id()));
    let updates: Vec<pb::RelationshipUpdate> = r
        .changes
        .iter()
        .filter(|c| plan.filter.keeps(&c.relationship))
        .map(|c| pb::RelationshipUpdate {
            operation: match c.op {
                ChangeOp::Touch => pb::relationship_update::Operation::Touch,
                ChangeOp::Delete => pb::relationship_update::Operation::Delete,
            } as i32,
            relationship: Some(convert::relationship_out(&c.relationship)),
        })
        .collect();
    if !updates.is_empty() {
        let metadata = r.metadata.as_ref().map(|m| convert::json_to_struct(&m.0));
        out.push(pb::WatchResponse {
            updates,
            changes_through: through(),
            full_revision_metadata: metadata.iter().cloned().collect(),
            optional_transaction_metadata: metadata,
            ..Default::default()
        });
    }
    if plan.schema && r.schema_changed {
        out.push(pb::WatchResponse {
            schema_updated: true,
            changes_through: through(),
            ..Default::default()
        });
    }
    if plan.checkpoints {
        out.push(checkpoint(api, r.revision));
    }
    out
}

fn checkpoint(api: &Api, rev: Revision) -> pb::WatchResponse {
    pb::WatchResponse {
        is_checkpoint: true,
        changes_through: Some(convert::zed_token_out(rev, api.store.unique_id())),
        ..Default::default()
    }
}

/// Sends the messages of `revisions`; false if the stream is over.
async fn send_revisions(
    api: &Api,
    plan: &Plan,
    out: &Outlet<pb::WatchResponse>,
    revisions: Vec<RevisionChanges>,
) -> bool {
    let head = api.store.head_revision().map(|h| h.0).unwrap_or(0);
    for r in revisions {
        if let Some(m) = METRICS.as_ref() {
            m.lag.observe(head.saturating_sub(r.revision.0) as f64);
        }
        for msg in messages(api, plan, r) {
            if out.send(Ok(msg)).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// Follows the change log after the plan's start until the client goes, falls behind, an
/// error happens or the server shuts down.
async fn produce(api: Arc<Api>, mut plan: Plan, out: Outlet<pb::WatchResponse>) {
    let _subscriber = Subscriber::new();
    let mut heads = match api.store.subscribe_head() {
        Ok(rx) => rx,
        Err(e) => return out.fail(e.into()).await,
    };
    let heartbeat = api.limits.watch_heartbeat.max(MIN_HEARTBEAT);
    let mut cursor = plan.start;
    let mut next_heartbeat = Instant::now() + heartbeat;
    let mut batch = std::mem::take(&mut plan.first);
    // Whether `batch` was read after the last new head was marked seen: only then may an
    // empty batch wait for the next one (the first batch was read before subscribing).
    let mut read_after_mark = false;
    loop {
        if let Some(last) = batch.last() {
            let last = last.revision;
            if !send_revisions(&api, &plan, &out, batch).await {
                return;
            }
            cursor = last;
            next_heartbeat = Instant::now() + heartbeat;
        } else if read_after_mark {
            // Idle: wait for a new head, the next heartbeat, shutdown or the client leaving.
            // A head published after the mark below wakes `changed`, so none is missed.
            tokio::select! {
                changed = heads.changed() => {
                    if changed.is_err() {
                        return out.fail(ApiError::ShuttingDown).await;
                    }
                }
                () = tokio::time::sleep_until(next_heartbeat), if plan.checkpoints => {
                    if out.send(Ok(checkpoint(&api, cursor))).await.is_err() {
                        return;
                    }
                    next_heartbeat = Instant::now() + heartbeat;
                }
                () = api.shutdown.cancelled() => {
                    return out.fail(ApiError::ShuttingDown).await;
                }
                () = out.closed() => return,
            }
        }
        if api.shutdown.is_cancelled() {
            return out.fail(ApiError::ShuttingDown).await;
        }
        heads.mark_unchanged();
        read_after_mark = true;
        let read = blocking({
            let api = Arc::clone(&api);
            move || {
                Ok(api.store.read_changes(
                    cursor,
                    READ_CHANGES,
                    api.limits.watch_change_buffer_max_bytes,
                )?)
            }
        })
        .await;
        batch = match read {
            Ok(b) => b,
            Err(e) => return out.fail(e).await,
        };
    }
}

#[tonic::async_trait]
impl pb::watch_service_server::WatchService for WatchApi {
    type WatchStream = ResponseStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        let plan = blocking({
            let api = Arc::clone(&api);
            move || plan(&api, &req)
        })
        .await?;
        let (outlet, feed) = stream::channel_with(
            api.limits.watch_buffer_length,
            api.limits.watch_buffer_write_timeout,
            |_| ApiError::WatchFellBehind,
        );
        tokio::spawn(produce(api, plan, outlet));
        Ok(Response::new(Box::pin(feed)))
    }
}
