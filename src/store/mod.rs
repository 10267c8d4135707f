//! Durable state: the `Datastore` contract, with RocksDB and in-memory implementations.
//!
//! Versioned relationships and schema, read at a revision, written in atomic transactions; the
//! two implementations share one MVCC layer and one conformance suite.

#[cfg(test)]
mod conformance;
mod encoding;
mod error;
mod graph;
mod kv;
mod memory;
mod metrics;
mod mvcc;
mod postgres;
mod postgres_tls;
mod rocks;

pub use error::{StoreError, StoreResult, WriteFailure};
pub use graph::{EMPTY, Edge, GraphView, Sym};
pub use memory::MemoryStore;
pub use metrics::init_metrics;
pub use postgres::{
    PostgresOptions, PostgresStore, SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION, Tls as PostgresTls,
    migrate as migrate_postgres, test_schema_uri as postgres_test_schema_uri,
};
pub use rocks::RocksStore;

use crate::model::{
    OrphanCheck, Relationship, RelationshipFilter, RelationshipKey, Revision, Timestamp,
    TransactionMetadata,
};

/// What a write does to one relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOp {
    /// insert; fails with [`StoreError::AlreadyExists`] if the tuple is live
    Create,
    /// insert or overwrite (caveat and expiration are replaced)
    Touch,
    /// remove; a missing tuple is not an error
    Delete,
}

/// One relationship change in a write.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationshipUpdate {
    /// the change
    pub op: UpdateOp,
    /// the relationship (for `Delete` only its key matters)
    pub relationship: Relationship,
}

/// Whether a precondition's filter must or must not match a live relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreconditionOp {
    /// at least one live relationship must match
    MustMatch,
    /// no live relationship may match
    MustNotMatch,
}

/// A condition checked atomically with a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Precondition {
    /// must or must-not match
    pub op: PreconditionOp,
    /// the relationships it looks at
    pub filter: RelationshipFilter,
}

/// The schema as stored: its source text and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    /// the schema text as written
    pub text: String,
    /// the revision of the write that stored it
    pub revision: Revision,
}

/// The outcome of a delete by filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// the revision of the write (the head revision if nothing matched)
    pub revision: Revision,
    /// how many relationships were deleted
    pub deleted: u64,
    /// true if more matched than the limit allowed and only `deleted` were removed
    pub partial: bool,
}

/// What a garbage-collection pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcStats {
    /// relationship versions removed (deleted or expired before the horizon)
    pub relationships: u64,
    /// superseded schema versions removed
    pub schemas: u64,
    /// the oldest revision still readable after the pass
    pub horizon: Revision,
}

/// What a revision did to one relationship, as the change log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// created, or replaced with a new caveat or expiration (a CREATE, a TOUCH that changed
    /// something, an imported relationship)
    Touch,
    /// deleted (by a DELETE or a delete by filter); expiry is not a deletion
    Delete,
}

/// One relationship change of a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// what happened
    pub op: ChangeOp,
    /// the relationship with its new (for `Touch`) or last (for `Delete`) caveat and expiration
    pub relationship: Relationship,
}

/// Everything one committed revision changed, from the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionChanges {
    /// the revision
    pub revision: Revision,
    /// the revision wrote the schema
    pub schema_changed: bool,
    /// what the writer attached to the write, if anything
    pub metadata: Option<TransactionMetadata>,
    /// the relationships it changed, each once, in no particular order
    pub changes: Vec<Change>,
}

/// A page of relationships in index order, and where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// the relationships, in the store's order for the filter
    pub relationships: Vec<Relationship>,
    /// `Some(key)` if there may be more: pass it back as `after` to resume
    pub next: Option<RelationshipKey>,
}

/// A versioned relationship store. Every write is one atomic transaction that gets the next
/// revision; every read names a revision and sees exactly the state committed at it (MVCC).
/// Relationships whose `expires_at` is at or before `now` are invisible to reads.
///
/// Implementations are synchronous (callers on async runtimes use `spawn_blocking` or accept the
/// short blocking time of an in-process store) and safe to share between threads.
pub trait Datastore: Send + Sync + std::fmt::Debug {
    /// A stable random id, created when the store was first initialised; tokens carry it.
    fn unique_id(&self) -> &str;

    /// The newest committed revision.
    fn head_revision(&self) -> StoreResult<Revision>;

    /// Can `rev` be read? Errors with [`StoreError::RevisionTooOld`] below the GC horizon and
    /// [`StoreError::RevisionInFuture`] above the head.
    fn check_revision(&self, rev: Revision) -> StoreResult<()>;

    /// Is the datastore shared with other nodes, whose writes reach this one a moment later
    /// (see [`Datastore::refresh`])? The default: no.
    fn shared(&self) -> bool {
        false
    }

    /// Brings this node up to revision `at_least` (`None`: the datastore's head, read now)
    /// and answers its head. For a datastore several nodes share, where a revision another
    /// node committed reaches this one a moment later: waits at most the configured revision
    /// wait, then fails with [`StoreError::Unavailable`]; a revision past the datastore's head
    /// is not waited for (the answer is then below it). A store of one process holds every
    /// revision it issued, and answers its head at once (the default).
    fn refresh(&self, at_least: Option<Revision>) -> StoreResult<Revision> {
        let _ = at_least;
        self.head_revision()
    }

    /// Writes a consistent online copy of the whole store into the new directory `dir` (which
    /// must not exist: [`StoreError::TargetExists`]) and answers the revision the copy holds.
    /// A store that cannot answers [`StoreError::Unsupported`] (the default).
    fn checkpoint(&self, dir: &std::path::Path) -> StoreResult<Revision> {
        let _ = dir;
        Err(StoreError::Unsupported(
            "this datastore cannot write a checkpoint".to_string(),
        ))
    }

    /// The schema visible at `rev`, if any was written at or before it. Errors like
    /// [`Datastore::check_revision`] for an unreadable `rev`.
    fn read_schema(&self, rev: Revision) -> StoreResult<Option<StoredSchema>>;

    /// Live relationships at `rev` matching `filter`, in a deterministic order chosen from the
    /// filter's shape, starting strictly after `after`, at most `limit` of them.
    ///
    /// The order is that of the index whose fixed key prefix the filter pins down furthest:
    /// by resource (type, id, relation, subject type, subject id, subject relation) or by
    /// subject (subject type, id, relation, resource type, relation, resource id); by resource
    /// on a tie. So `document:x#viewer@…` reads by resource, while `document:*#viewer@user:ann`
    /// (no resource id, exact subject) reads by subject. Each query is one seek plus a scan of
    /// the matching key range. Errors like [`Datastore::check_revision`] for an unreadable
    /// `rev`. `limit = 0` returns an empty page whose `next` is `after`.
    fn query(
        &self,
        rev: Revision,
        filter: &RelationshipFilter,
        after: Option<&RelationshipKey>,
        limit: usize,
        now: Timestamp,
    ) -> StoreResult<Page>;

    /// Every live relationship at `rev` matching `filter`, in no particular order, appended to
    /// `out`: the engine's access path, where order does not matter and a filter usually pins
    /// one object's relation, one subject or one tuple. Errors like
    /// [`Datastore::check_revision`]. The default pages through [`Datastore::query`].
    fn query_all(
        &self,
        rev: Revision,
        filter: &RelationshipFilter,
        now: Timestamp,
        out: &mut Vec<Relationship>,
    ) -> StoreResult<()> {
        let mut after: Option<RelationshipKey> = None;
        loop {
            let page = self.query(rev, filter, after.as_ref(), 1000, now)?;
            out.extend(page.relationships);
            match page.next {
                Some(k) => after = Some(k),
                None => return Ok(()),
            }
        }
    }

    /// The in-memory relationship graph at `rev` (relationships expiring at or before `now`
    /// hidden), if this store keeps one: the engine's fast path reads it by interned names.
    /// The view holds a read lock until dropped; do not call the store again while holding
    /// it. Errors like [`Datastore::check_revision`]. The default keeps no graph.
    fn graph_view(&self, rev: Revision, _now: Timestamp) -> StoreResult<Option<GraphView<'_>>> {
        self.check_revision(rev)?;
        Ok(None)
    }

    /// Atomically: check every precondition against the head, apply every update, commit.
    /// Returns the new revision. `Create` of a live tuple fails with `AlreadyExists`;
    /// a failed precondition with `PreconditionFailed`; nothing is written on error.
    fn write_relationships(
        &self,
        preconditions: &[Precondition],
        updates: &[RelationshipUpdate],
        now: Timestamp,
    ) -> StoreResult<Revision>;

    /// [`Datastore::write_relationships`], keeping `metadata` with the revision in the change
    /// log. The default drops the metadata.
    fn write_relationships_with_metadata(
        &self,
        preconditions: &[Precondition],
        updates: &[RelationshipUpdate],
        now: Timestamp,
        metadata: Option<&TransactionMetadata>,
    ) -> StoreResult<Revision> {
        let _ = metadata;
        self.write_relationships(preconditions, updates, now)
    }

    /// Atomically: check the preconditions, then delete live relationships matching `filter`.
    /// With `limit = Some(n)` and more than `n` matches: if `allow_partial` delete the first `n`
    /// and report `partial`, else fail with `TooManyToDelete` and delete nothing.
    fn delete_relationships(
        &self,
        filter: &RelationshipFilter,
        preconditions: &[Precondition],
        limit: Option<u64>,
        allow_partial: bool,
        now: Timestamp,
    ) -> StoreResult<DeleteOutcome>;

    /// [`Datastore::delete_relationships`], keeping `metadata` with the revision in the change
    /// log. The default drops the metadata.
    fn delete_relationships_with_metadata(
        &self,
        filter: &RelationshipFilter,
        preconditions: &[Precondition],
        limit: Option<u64>,
        allow_partial: bool,
        now: Timestamp,
        metadata: Option<&TransactionMetadata>,
    ) -> StoreResult<DeleteOutcome> {
        let _ = metadata;
        self.delete_relationships(filter, preconditions, limit, allow_partial, now)
    }

    /// A receiver that sees every new head revision as it is published (it may skip
    /// intermediate ones: read them with [`Datastore::read_changes`]). A store without a
    /// change log answers [`StoreError::Unsupported`] (the default).
    fn subscribe_head(&self) -> StoreResult<tokio::sync::watch::Receiver<Revision>> {
        Err(StoreError::Unsupported(
            "this datastore keeps no change log".to_string(),
        ))
    }

    /// The change log after `after`, up to the head: every revision in order (with no
    /// relationship changes too), each whole. Stops after the revision that brings the
    /// count (changes, and at least one per revision) to `max_changes`. Fails with
    /// [`StoreError::ChangesTooLarge`] for a revision whose log exceeds `max_revision_bytes`,
    /// [`StoreError::ChangesUnavailable`] when the changes right after `after` are no longer
    /// (or were never) kept, and [`StoreError::RevisionInFuture`] past the head. A store
    /// without a change log answers [`StoreError::Unsupported`] (the default).
    fn read_changes(
        &self,
        after: Revision,
        max_changes: usize,
        max_revision_bytes: usize,
    ) -> StoreResult<Vec<RevisionChanges>> {
        let _ = (after, max_changes, max_revision_bytes);
        Err(StoreError::Unsupported(
            "this datastore keeps no change log".to_string(),
        ))
    }

    /// Starts a bulk import, whose relationships are staged with [`Datastore::stage_import`]
    /// and created together, at one revision, by [`Datastore::commit_import`]. An import
    /// neither committed nor aborted is forgotten when the store next opens.
    fn begin_import(&self) -> StoreResult<u64>;

    /// Stages relationships for import `import`, outside any lock (other writes go on), so an
    /// import of any size needs only one batch of memory. Fails with
    /// [`StoreError::AlreadyExists`] for a tuple the import already holds.
    fn stage_import(&self, import: u64, relationships: &[Relationship]) -> StoreResult<()>;

    /// Atomically creates every relationship staged in `import` at one new revision: fails
    /// with [`StoreError::AlreadyExists`], creating nothing, if one of them is live. Returns
    /// the revision and how many were created. Readers never wait for it for long.
    fn commit_import(&self, import: u64, now: Timestamp) -> StoreResult<(Revision, u64)>;

    /// Forgets what `import` staged (after a commit, or instead of one).
    fn abort_import(&self, import: u64) -> StoreResult<()>;

    /// Atomically: verify that no live relationship matches any of `orphan_checks` (else fail with
    /// `SchemaOrphans`, naming the check and one offending relationship), then store `text` as the
    /// schema at the new revision.
    fn write_schema(
        &self,
        text: &str,
        orphan_checks: &[OrphanCheck],
        now: Timestamp,
    ) -> StoreResult<Revision>;

    /// Removes history no longer readable: versions deleted (or expired) before the horizon
    /// revision, which is the newest revision committed at or before `now - window`.
    fn gc(&self, now: Timestamp, window: std::time::Duration) -> StoreResult<GcStats>;

    /// Can the store write? Meant to be cheap enough to poll every second for health: `Ok`
    /// while the last commit succeeded; after a failed commit (disk full, I/O error) the store
    /// tries one tiny synced write and answers with its outcome, so the answer recovers on its
    /// own once the disk does; while a failed import or delete awaits the repair of a restart,
    /// [`StoreError::Unwritable`] with [`WriteFailure::NeedsRepair`], as every write gets.
    /// The default always answers `Ok`.
    fn check_writable(&self) -> StoreResult<()> {
        Ok(())
    }

    /// The relationship counters registered (the Experimental service's), in name order: each
    /// name with the value the API stored for it (its encoding of the counter's filter). The
    /// default keeps none.
    fn relationship_counters(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// Stores counter `name` with `value`, or with `None` removes it; durable once it returns.
    /// Counters are not versioned: they describe what to count, not data. The default refuses
    /// with [`StoreError::Unsupported`].
    fn set_relationship_counter(&self, name: &str, value: Option<&[u8]>) -> StoreResult<()> {
        let _ = (name, value);
        Err(StoreError::Unsupported(
            "this datastore keeps no relationship counters".to_string(),
        ))
    }
}
