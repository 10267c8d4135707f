//! The shared MVCC layer, written once over any [`Kv`] and used by both stores.
//!
//! Revision allocation, version visibility, preconditions, the write path, query planning and
//! garbage collection, for both the RocksDB and the in-memory store.
//!
//! Every relationship version carries `[created, deleted)`; it is visible at revision `R` iff
//! `created <= R < deleted` and it has not expired at the reader's `now`. A write never changes
//! what an older revision sees: it only sets `deleted` (from `LIVE` to the new revision) on the
//! current version and adds versions created at the new revision. Writes are serialized by one
//! mutex; reads take no lock beyond one consistent KV scan. The head revision is published only
//! after its batch is durable.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::model::{
    OrphanCheck, Relationship, RelationshipFilter, RelationshipKey, Revision, Timestamp,
    TransactionMetadata,
};
use crate::store::encoding::{
    self, BY_RESOURCE, CHANGE_CLOSE, CHANGE_DELETE, CHANGE_TOUCH, CHANGES, ChangeHeader,
    ChangeRecord, FORMAT_VERSION, Index, LIVE, META_FORMAT, META_HEAD, META_HORIZON, META_ID,
    META_LOG_START, META_PENDING, META_PROBE, REV_TIME, SCHEMA, STAGED, VersionValue,
};
use crate::store::graph::{Graph, GraphChange};
use crate::store::kv::{Batch, Kv};
use crate::store::metrics::{self, signed};
use crate::store::{
    Change, ChangeOp, DeleteOutcome, GcStats, Page, Precondition, PreconditionOp,
    RelationshipUpdate, RevisionChanges, StoreError, StoreResult, StoredSchema, UpdateOp,
    WriteFailure,
};

/// The visitor of a GC range: queues the deletions for one entry.
type GcVisit<'a> = dyn FnMut(&[u8], &[u8], &mut Batch) -> StoreResult<()> + 'a;

/// How many stored versions the preconditions of one write may visit in scans of the
/// stored indexes (filters the in-memory graph answers cost nothing against it): about 50 ms
/// of the write lock, so that a precondition over a broad filter cannot stall every writer.
pub(crate) const PRECONDITION_SCAN_BUDGET: usize = 100_000;

/// How many staged relationships an import commit writes per batch (and per hold of the
/// graph's write lock).
const IMPORT_CHUNK: usize = 2_000;

/// How many relationships a delete by filter closes per batch (and per hold of the graph's
/// write lock).
const DELETE_CHUNK: usize = 2_000;

/// How many change-log records one step of a catch-up reads and replays.
const REPLAY_CHUNK: usize = 2_000;

/// How long a read waits, by default, for this node to catch up with a revision another node
/// committed (shared datastores).
pub(crate) const DEFAULT_REVISION_WAIT: Duration = Duration::from_secs(5);

/// How many keys one GC commit deletes at most.
const GC_BATCH: usize = 10_000;
/// `gc-due` entries handled per commit and per hold of the graph's write lock.
const GC_SWEEP_CHUNK: usize = 2_000;

/// One visible relationship version found by a scan.
struct Found {
    /// the relationship as stored
    rel: Relationship,
    /// the version's stored value
    value: VersionValue,
}

/// The MVCC store over a key-value backend.
pub(crate) struct Mvcc<K: Kv> {
    /// the ordered map everything lives in
    kv: K,
    /// the store's random id, fixed at initialisation
    unique_id: String,
    /// the newest durable revision; published after its commit
    head: AtomicU64,
    /// the oldest readable revision (raised by GC)
    horizon: AtomicU64,
    /// the first revision after which the change log is complete (see `META_LOG_START`)
    log_start: AtomicU64,
    /// tells Watch streams about each new head
    head_tx: tokio::sync::watch::Sender<Revision>,
    /// serializes this process's writers: read head → check → commit → publish (on a shared
    /// datastore, [`Kv::lock_writers`] then serializes them with the other nodes')
    write_lock: Mutex<()>,
    /// serializes moving the head: a catch-up's replay, and a writer's commit and publish
    catch_up_lock: Mutex<()>,
    /// woken (with its mutex held) each time the head moves: readers waiting for a revision
    head_moved: (Mutex<()>, Condvar),
    /// asks the follower of a shared datastore to catch up now (see [`Mvcc::follow`])
    follow_now: (Mutex<bool>, Condvar),
    /// how long a read waits for this node to reach a revision another node committed
    revision_wait: Duration,
    /// when this node last caught up with a shared datastore (or opened it)
    caught_up_at: Mutex<Instant>,
    /// serializes GC passes
    gc_lock: Mutex<()>,
    /// every stored relationship version, in memory, for the engine's queries
    graph: Graph,
    /// the newest stored schema, so reads at or after its revision need no scan
    latest_schema: RwLock<Option<StoredSchema>>,
    /// the id of the next bulk import
    next_import: AtomicU64,
    /// whether the store can write: what writers and the health service both go by
    write_state: WriteStateCell,
    /// relationships stored at the head (this store's share of the metrics gauge)
    live: AtomicI64,
}

impl<K: Kv> Drop for Mvcc<K> {
    fn drop(&mut self) {
        if let Some(m) = metrics::get() {
            m.relationships.sub(self.live.load(Ordering::Relaxed));
        }
    }
}

impl<K: Kv> std::fmt::Debug for Mvcc<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc")
            .field("unique_id", &self.unique_id)
            .field("head", &self.head.load(Ordering::Relaxed))
            .field("horizon", &self.horizon.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The right to write: this process's write lock and, on a shared datastore, the datastore's
/// own ([`Kv::lock_writers`]), taken after catching up with what the other nodes wrote.
/// Dropping it gives both up.
struct WriteSection<'a, K: Kv> {
    kv: &'a K,
    _local: MutexGuard<'a, ()>,
}

impl<K: Kv> Drop for WriteSection<'_, K> {
    fn drop(&mut self) {
        if self.kv.shared() {
            self.kv.unlock_writers();
        }
    }
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The guarded data is `()`: a panic while holding the lock leaves nothing inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a store can write. One state, read before every write ([`Mvcc::writable`]) and by
/// the health service ([`Mvcc::check_writable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteState {
    /// the last commit succeeded
    Writable,
    /// the last commit failed, for this reason (a full disk or another I/O error): writes are
    /// still tried, and the first that succeeds makes the store writable again
    Failing(WriteFailure),
    /// the versions of a failed import or delete could not be rolled back, so the next write's
    /// revision would make them visible: every write is refused until a restart, whose open
    /// repairs them (see [`Mvcc::load_graph`]). Never left while running.
    NeedsRepair,
}

/// A [`WriteState`] shared between threads, in one atomic byte.
#[derive(Debug, Default)]
struct WriteStateCell(AtomicU8);

impl WriteStateCell {
    const WRITABLE: u8 = 0;
    const DISK_FULL: u8 = 1;
    const IO: u8 = 2;
    const NEEDS_REPAIR: u8 = 3;

    fn get(&self) -> WriteState {
        match self.0.load(Ordering::Acquire) {
            Self::WRITABLE => WriteState::Writable,
            Self::DISK_FULL => WriteState::Failing(WriteFailure::DiskFull),
            Self::IO => WriteState::Failing(WriteFailure::Io),
            _ => WriteState::NeedsRepair,
        }
    }

    /// Moves to `to` unless the store needs repair, which stays.
    fn set(&self, to: u8) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now != Self::NEEDS_REPAIR && now != to).then_some(to)
            });
    }

    /// Remembers a commit's outcome: a failure makes the store failing; a success (of a
    /// synced commit, `durable`) makes it writable.
    fn record(&self, result: &StoreResult<()>, durable: bool) {
        match result {
            Ok(()) if durable => self.set(Self::WRITABLE),
            Ok(()) => {}
            Err(StoreError::Unwritable { cause, .. }) => self.set(match cause {
                WriteFailure::DiskFull => Self::DISK_FULL,
                WriteFailure::Io | WriteFailure::NeedsRepair => Self::IO,
            }),
            Err(_) => self.set(Self::IO),
        }
    }

    fn set_needs_repair(&self) {
        self.0.store(Self::NEEDS_REPAIR, Ordering::Release);
    }
}

/// The error of a write refused in [`WriteState::NeedsRepair`].
fn needs_repair() -> StoreError {
    StoreError::Unwritable {
        cause: WriteFailure::NeedsRepair,
        detail: "a failed import or delete could not be rolled back; restart the server to \
                 repair the store"
            .to_string(),
    }
}

/// A failed commit as the error writers see: the store cannot write.
fn unwritable(e: StoreError) -> StoreError {
    match e {
        StoreError::Engine(detail) => StoreError::Unwritable {
            cause: WriteFailure::of(&detail),
            detail,
        },
        other => other,
    }
}

fn new_unique_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The batch that initialises an empty store with id `id`.
fn init_batch(id: &str) -> Batch {
    let mut b = Batch::default();
    b.put(
        encoding::meta_key(META_FORMAT),
        FORMAT_VERSION.to_be_bytes().to_vec(),
    );
    b.put(encoding::meta_key(META_ID), id.as_bytes().to_vec());
    b.put(encoding::meta_key(META_HEAD), 0u64.to_be_bytes().to_vec());
    b.put(
        encoding::meta_key(META_HORIZON),
        0u64.to_be_bytes().to_vec(),
    );
    b.put(
        encoding::meta_key(META_LOG_START),
        0u64.to_be_bytes().to_vec(),
    );
    b
}

/// Puts the change-log entry of `key` at `rev`: `op` with the version's caveat and expiration.
fn put_change(
    batch: &mut Batch,
    rev: u64,
    key: &RelationshipKey,
    op: u8,
    value: &VersionValue,
) -> StoreResult<()> {
    batch.put(
        encoding::change_entry_key(rev, key),
        encoding::encode_change_entry(op, value)?,
    );
    Ok(())
}

/// `t - d`, saturating.
fn time_minus(t: Timestamp, d: Duration) -> Timestamp {
    const NANOS: i128 = 1_000_000_000;
    let total = i128::from(t.seconds) * NANOS + i128::from(t.nanos)
        - i128::try_from(d.as_nanos()).unwrap_or(i128::MAX / 2);
    let seconds = i64::try_from(total.div_euclid(NANOS)).unwrap_or(i64::MIN);
    let nanos = u32::try_from(total.rem_euclid(NANOS)).unwrap_or(0);
    Timestamp { seconds, nanos }
}

impl<K: Kv> Mvcc<K> {
    /// A brand-new store: `make` builds the backend holding the initialisation batch.
    pub(crate) fn fresh(make: impl FnOnce(Batch) -> K) -> Mvcc<K> {
        let id = new_unique_id();
        let kv = make(init_batch(&id));
        Mvcc::from_parts(kv, id, 0, 0, 0)
    }

    fn from_parts(kv: K, unique_id: String, head: u64, horizon: u64, log_start: u64) -> Mvcc<K> {
        if let Some(m) = metrics::get() {
            m.head_revision.set(signed(head));
        }
        Mvcc {
            kv,
            unique_id,
            head: AtomicU64::new(head),
            horizon: AtomicU64::new(horizon),
            log_start: AtomicU64::new(log_start),
            head_tx: tokio::sync::watch::Sender::new(Revision(head)),
            write_lock: Mutex::new(()),
            catch_up_lock: Mutex::new(()),
            head_moved: (Mutex::new(()), Condvar::new()),
            follow_now: (Mutex::new(false), Condvar::new()),
            revision_wait: DEFAULT_REVISION_WAIT,
            caught_up_at: Mutex::new(Instant::now()),
            gc_lock: Mutex::new(()),
            graph: Graph::new(),
            latest_schema: RwLock::new(None),
            // Random, so that nodes sharing a datastore stage their imports apart.
            next_import: AtomicU64::new(rand::random::<u64>() >> 1),
            write_state: WriteStateCell::default(),
            live: AtomicI64::new(0),
        }
    }

    /// Adds `delta` to the relationships stored at the head.
    fn count_live(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        self.live.fetch_add(delta, Ordering::Relaxed);
        if let Some(m) = metrics::get() {
            m.relationships.add(delta);
        }
    }

    /// Commits `batch`, remembering whether the backend could write.
    fn commit(&self, batch: Batch) -> StoreResult<()> {
        let result = self.kv.commit(batch).map_err(unwritable);
        self.write_state.record(&result, true);
        result
    }

    /// What the health service asks: `Ok` while the store is [`WriteState::Writable`]; while
    /// it is [`WriteState::Failing`], one tiny probe commit (the delete of an unused key,
    /// synced like any write) decides, and a success makes it writable again; in
    /// [`WriteState::NeedsRepair`] never `Ok` (only a restart repairs).
    pub(crate) fn check_writable(&self) -> StoreResult<()> {
        if self.kv.shared() {
            // A node that cannot follow the others serves ever staler answers: not serving.
            let behind = self
                .caught_up_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed();
            if behind > self.revision_wait {
                return Err(StoreError::Unavailable(format!(
                    "this node has not caught up with the datastore for {} s",
                    behind.as_secs()
                )));
            }
        }
        match self.write_state.get() {
            WriteState::Writable => Ok(()),
            WriteState::NeedsRepair => Err(needs_repair()),
            WriteState::Failing(cause) => {
                tracing::debug!(
                    cause = cause.as_str(),
                    "probing whether the datastore can write again"
                );
                let mut probe = Batch::default();
                probe.delete(encoding::meta_key(META_PROBE));
                self.commit(probe)
            }
        }
    }

    /// Loads every stored relationship version into the in-memory graph, and the newest
    /// schema; with `upgrade`, also writes the `gc-due` entries a version-1 store lacks; with
    /// `start_log`, starts the change log (which a version-1 or -2 store lacks) at the head.
    fn load_graph(self, upgrade: bool, start_log: bool) -> StoreResult<Mvcc<K>> {
        let started = std::time::Instant::now();
        let newest = self.scan_schema(self.head())?;
        *self
            .latest_schema
            .write()
            .unwrap_or_else(PoisonError::into_inner) = newest;
        let mut live = 0u64;
        // A bulk import and a delete by filter commit in several batches before they publish
        // their revision: a crash in between leaves versions created after the head (dropped
        // here) and versions closed after it (opened again here). Their `gc-due` entries of
        // deletions after the head are removed below; left alone they would be harmless
        // anyway, as GC reads each version's own `deleted` before removing it.
        let head = self.head();
        let mut repairs: Vec<(RelationshipKey, VersionValue)> = Vec::new();
        let mut due = Batch::default();
        self.graph.load(|add| {
            self.kv
                .scan(&[BY_RESOURCE], Some(&[BY_RESOURCE + 1]), &mut |k, v| {
                    let (names, created) = encoding::version_key_parts(Index::ByResource, k)?;
                    let mut value = VersionValue::decode(v)?;
                    if created > head || (value.deleted != LIVE && value.deleted > head) {
                        let (key, _) = encoding::decode_version_key(Index::ByResource, k)?;
                        repairs.push((key, value.clone()));
                        if created > head {
                            return Ok(true);
                        }
                        value.deleted = LIVE;
                    }
                    if value.deleted == LIVE {
                        live += 1;
                    }
                    if upgrade {
                        Self::put_due(&mut due, k, &value);
                    }
                    add(names, &value);
                    Ok(true)
                })
        })?;
        tracing::info!(
            versions_live = live,
            elapsed_ms = started.elapsed().as_millis(),
            "loaded the relationship graph"
        );
        if self.kv.shared() {
            // What lies past the head may be another node's import or delete, still being
            // written: the graph has left it out (as it leaves out what a dead writer left,
            // which the next writer rolls back: see `repair_pending`). Nothing is repaired or
            // cleared here, and the catch-up replays what committed during the load.
            let _moving = lock(&self.catch_up_lock);
            self.catch_up_locked()?;
        } else {
            if !repairs.is_empty() {
                tracing::warn!(
                    versions = repairs.len(),
                    "rolling back the versions of an import or a delete interrupted before it \
                     committed"
                );
            }
            self.roll_back_past(head, &repairs)?;
            self.clear_staged(&[STAGED], Some(&[STAGED + 1]))?;
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis(),
            "store open: repairs done"
        );
        if upgrade {
            // One batch: the entries of the garbage and of expiring versions only, written
            // once, when a store made by an older build is first opened.
            due.put(
                encoding::meta_key(META_FORMAT),
                FORMAT_VERSION.to_be_bytes().to_vec(),
            );
            self.kv.commit(due)?;
        }
        if start_log {
            let mut b = Batch::default();
            b.put(
                encoding::meta_key(META_LOG_START),
                head.to_be_bytes().to_vec(),
            );
            b.put(
                encoding::meta_key(META_FORMAT),
                FORMAT_VERSION.to_be_bytes().to_vec(),
            );
            self.kv.commit(b)?;
            self.log_start.store(head, Ordering::Release);
            tracing::info!(
                log_start = head,
                "upgraded the data directory to storage format {FORMAT_VERSION}: the change log \
                 (Watch) starts at the head"
            );
        }
        self.count_live(signed(live));
        Ok(self)
    }

    /// Deletes the versions in `repairs` created past `head` and opens again those closed past
    /// it, then removes the `gc-due` and change-log entries of revisions past `head`: what an
    /// import or a delete by filter that never committed left behind.
    fn roll_back_past(
        &self,
        head: u64,
        repairs: &[(RelationshipKey, VersionValue)],
    ) -> StoreResult<()> {
        for chunk in repairs.chunks(GC_BATCH) {
            let mut batch = Batch::default();
            for (key, value) in chunk {
                if value.created > head {
                    batch.delete(encoding::version_key(Index::ByResource, key, value.created));
                    batch.delete(encoding::version_key(Index::BySubject, key, value.created));
                } else {
                    let mut open = value.clone();
                    open.deleted = LIVE;
                    Self::put_version(&mut batch, key, &open)?;
                }
            }
            self.kv.commit(batch)?;
        }
        if !repairs.is_empty() {
            let start = encoding::due_deleted_from(head.saturating_add(1));
            self.clear_range(&start, Some(&encoding::due_deleted_from(LIVE)), true)?;
        }
        self.clear_range(
            &encoding::changes_from(head.saturating_add(1)),
            Some(&[CHANGES + 1]),
            true,
        )
    }

    /// Takes the right to write (see [`WriteSection`]), refusing while the store needs repair.
    /// On a shared datastore it waits for the other nodes' writers, catches up with what they
    /// committed, and rolls back what a writer that died mid-write left.
    fn begin_write(&self) -> StoreResult<WriteSection<'_, K>> {
        let local = lock(&self.write_lock);
        self.writable()?;
        if !self.kv.shared() {
            return Ok(WriteSection {
                kv: &self.kv,
                _local: local,
            });
        }
        self.kv.lock_writers()?;
        let section = WriteSection {
            kv: &self.kv,
            _local: local,
        };
        {
            let _moving = lock(&self.catch_up_lock);
            self.catch_up_locked()?;
        }
        self.repair_pending()?;
        Ok(section)
    }

    /// A meta value stored as a u64.
    fn stored_u64(&self, name: &str) -> StoreResult<u64> {
        let v = self
            .kv
            .get(&encoding::meta_key(name))?
            .ok_or_else(|| StoreError::Corrupt(format!("missing meta key `{name}`")))?;
        encoding::decode_u64(&v)
    }

    /// Replays on the graph, the schema and the head what other nodes committed to a shared
    /// datastore after this node's head, up to the datastore's head, which it answers. The
    /// caller holds `catch_up_lock`. A revision's changes are applied a chunk at a time above
    /// the head, where no reader looks, and the head moves once the revision is whole, so
    /// readers see each revision whole, as on the node that wrote it.
    fn catch_up_locked(&self) -> StoreResult<u64> {
        let stored_head = self.stored_u64(META_HEAD)?;
        let stored_horizon = self.stored_u64(META_HORIZON)?;
        self.horizon.fetch_max(stored_horizon, Ordering::AcqRel);
        let head = self.head();
        if stored_head < head {
            return Err(StoreError::Corrupt(format!(
                "the datastore's head revision {stored_head} is behind this node's {head} (was \
                 the database restored from a backup?); restart the node"
            )));
        }
        if stored_head == head {
            self.caught_up();
            return Ok(head);
        }
        if head < stored_horizon {
            return Err(StoreError::Engine(format!(
                "this node's revision {head} is behind the datastore's garbage-collection \
                 horizon {stored_horizon}, so the changes it missed are gone; restart the node \
                 to load the datastore afresh"
            )));
        }
        let started = Instant::now();
        if let Err(e) = self.replay(head, stored_head) {
            // A revision replayed in part (the datastore failed between its chunks) must not
            // stay in the graph: the next catch-up replays it whole.
            self.graph.roll_back_past(self.head());
            return Err(e);
        }
        if let Some(m) = metrics::get() {
            m.catch_up_seconds.observe(started.elapsed().as_secs_f64());
            m.replayed_revisions.inc_by(stored_head - head);
        }
        tracing::debug!(
            from = head,
            to = stored_head,
            elapsed_us = started.elapsed().as_micros(),
            "caught up with the datastore"
        );
        self.caught_up();
        Ok(stored_head)
    }

    /// The replay of [`Mvcc::catch_up_locked`]: the change log `(head, stored_head]`, onto
    /// the graph, the schema and the head.
    fn replay(&self, head: u64, stored_head: u64) -> StoreResult<()> {
        let corrupt = |what: String| StoreError::Corrupt(format!("the change log {what}"));
        let mut from = encoding::changes_from(head.saturating_add(1));
        let end = encoding::changes_from(stored_head.saturating_add(1));
        // The revision being replayed, and whether it wrote the schema.
        let mut current: Option<(u64, bool)> = None;
        let mut live = 0i64;
        loop {
            let mut records = Vec::with_capacity(REPLAY_CHUNK);
            let mut last: Option<Vec<u8>> = None;
            self.kv.scan(&from, Some(&end), &mut |k, v| {
                records.push(encoding::decode_change(k, v)?);
                last = Some(k.to_vec());
                Ok(records.len() < REPLAY_CHUNK)
            })?;
            let whole = records.len() < REPLAY_CHUNK;
            let mut changes = Vec::with_capacity(records.len());
            for (rev, record) in records {
                match record {
                    ChangeRecord::Header(h) => {
                        if let Some((done, schema)) = current.take() {
                            self.graph.apply(&changes);
                            changes.clear();
                            self.finish_replayed(done, schema, &mut live)?;
                        }
                        if rev != self.head().saturating_add(1) {
                            return Err(corrupt(format!(
                                "has no header for revision {}",
                                self.head() + 1
                            )));
                        }
                        current = Some((rev, h.schema));
                    }
                    ChangeRecord::Entry(op, key, value) => {
                        if current.map(|c| c.0) != Some(rev) {
                            return Err(corrupt(format!(
                                "has an entry of revision {rev} without its header"
                            )));
                        }
                        // Every change ends the live version; a touch starts a new one. (A
                        // revision holds one entry per tuple, so the graph, without this
                        // chunk's changes yet, has the tuple as it was before `rev`.)
                        if let Some(old) = self
                            .graph
                            .newest_version(&key)
                            .filter(|v| v.deleted == LIVE)
                        {
                            changes.push(GraphChange::Close {
                                key: key.clone(),
                                created: old.created,
                                rev,
                            });
                            live -= 1;
                        }
                        if op == CHANGE_TOUCH {
                            changes.push(GraphChange::Add {
                                key,
                                value: VersionValue {
                                    created: rev,
                                    deleted: LIVE,
                                    caveat: value.caveat,
                                    expires_at: value.expires_at,
                                },
                            });
                            live += 1;
                        }
                    }
                }
            }
            self.graph.apply(&changes);
            if whole {
                if let Some((done, schema)) = current.take() {
                    self.finish_replayed(done, schema, &mut live)?;
                }
                break;
            }
            let Some(mut next) = last else { break };
            next.push(0);
            from = next;
        }
        if self.head() != stored_head {
            return Err(corrupt(format!(
                "ends at revision {}, before the head {stored_head}",
                self.head()
            )));
        }
        Ok(())
    }

    /// Remembers that this node has just caught up (see [`Mvcc::check_writable`]).
    fn caught_up(&self) {
        *self
            .caught_up_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Ends the replay of revision `rev`: its schema, if it wrote one, and the change it made
    /// to the relationships stored (`live`, taken), then the head.
    fn finish_replayed(&self, rev: u64, schema: bool, live: &mut i64) -> StoreResult<()> {
        self.count_live(std::mem::take(live));
        if schema {
            let stored = self.scan_schema(rev)?;
            if stored.as_ref().map(|s| s.revision.0) != Some(rev) {
                return Err(StoreError::Corrupt(format!(
                    "revision {rev} wrote the schema, which the datastore does not hold"
                )));
            }
            *self
                .latest_schema
                .write()
                .unwrap_or_else(PoisonError::into_inner) = stored;
        }
        self.publish_head(rev);
        Ok(())
    }

    /// On a shared datastore, in a write section after the catch-up: rolls back the versions a
    /// writer that died between the chunks of an import or a delete left past the head (its
    /// `META_PENDING` mark says so), before a write at the next revision would make them
    /// visible. This node's graph never had them: the rollback is in the datastore only.
    fn repair_pending(&self) -> StoreResult<()> {
        let Some(mark) = self.kv.get(&encoding::meta_key(META_PENDING))? else {
            return Ok(());
        };
        let pending = encoding::decode_u64(&mark)?;
        let head = self.head();
        if pending > head {
            tracing::warn!(
                revision = pending,
                "rolling back the versions of an import or a delete another node left \
                 unfinished"
            );
            let mut repairs = Vec::new();
            self.kv
                .scan(&[BY_RESOURCE], Some(&[BY_RESOURCE + 1]), &mut |k, v| {
                    let deleted = encoding::peek_deleted(v)?;
                    if encoding::created_of(k)? > head || (deleted != LIVE && deleted > head) {
                        let (key, _) = encoding::decode_version_key(Index::ByResource, k)?;
                        repairs.push((key, VersionValue::decode(v)?));
                    }
                    Ok(true)
                })?;
            self.roll_back_past(head, &repairs)?;
        }
        let mut done = Batch::default();
        done.delete(encoding::meta_key(META_PENDING));
        self.commit(done)
    }

    /// Is the datastore shared with other nodes?
    pub(crate) fn shared(&self) -> bool {
        self.kv.shared()
    }

    /// How long reads wait for this node to reach a revision another node committed.
    pub(crate) fn set_revision_wait(&mut self, wait: Duration) {
        self.revision_wait = wait;
    }

    /// See [`Datastore::refresh`](crate::store::Datastore::refresh): on a shared datastore,
    /// waits until this node's head reaches `at_least` (`None`: the datastore's head, read
    /// now), asking the follower to catch up at once.
    pub(crate) fn refresh(&self, at_least: Option<Revision>) -> StoreResult<Revision> {
        let head = self.head();
        if !self.kv.shared() || at_least.is_some_and(|r| r.0 <= head) {
            return Ok(Revision(head));
        }
        let stored = self.stored_u64(META_HEAD)?;
        // A revision past the datastore's head is not waited for: the caller says so.
        let target = at_least.map_or(stored, |r| r.0);
        if target <= head || target > stored {
            return Ok(Revision(head));
        }
        {
            let (asked, cv) = &self.follow_now;
            *asked.lock().unwrap_or_else(PoisonError::into_inner) = true;
            cv.notify_one();
        }
        let deadline = Instant::now() + self.revision_wait;
        let (m, cv) = &self.head_moved;
        let mut g = lock(m);
        loop {
            let head = self.head();
            if head >= target {
                return Ok(Revision(head));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "this node has not caught up with revision {target} within {:?} (it is at \
                     {head})",
                    self.revision_wait
                )));
            }
            g = cv
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The follower of a shared datastore, run on a thread of its own until the store is
    /// dropped: catches up every `interval`, or at once when a read asks ([`Mvcc::refresh`]).
    pub(crate) fn follow(store: &std::sync::Weak<Self>, interval: Duration) {
        let mut failing = false;
        while let Some(mvcc) = store.upgrade() {
            let caught_up = {
                let _moving = lock(&mvcc.catch_up_lock);
                mvcc.catch_up_locked()
            };
            match caught_up {
                Ok(_) if failing => {
                    tracing::info!("caught up with the datastore again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot catch up with the datastore; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            let (asked, cv) = &mvcc.follow_now;
            let mut now = asked.lock().unwrap_or_else(PoisonError::into_inner);
            if !*now {
                now = cv
                    .wait_timeout(now, interval)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            *now = false;
        }
    }

    /// Opens a store on `kv`, initialising it if it is empty.
    pub(crate) fn open(kv: K) -> StoreResult<Mvcc<K>> {
        match kv.get(&encoding::meta_key(META_FORMAT))? {
            None if kv.shared() => {
                // Nodes starting together on a new database: the first to write initialises
                // it, the others open what it wrote.
                kv.lock_writers()?;
                let initialised = kv.get(&encoding::meta_key(META_FORMAT)).and_then(|f| {
                    if f.is_none() {
                        kv.commit(init_batch(&new_unique_id()))?;
                    }
                    Ok(())
                });
                kv.unlock_writers();
                initialised?;
                Mvcc::open(kv)
            }
            None => {
                let mut any = false;
                kv.scan(&[], None, &mut |_, _| {
                    any = true;
                    Ok(false)
                })?;
                if any {
                    return Err(StoreError::Corrupt(
                        "the data directory holds data without a format version".to_string(),
                    ));
                }
                let id = new_unique_id();
                kv.commit(init_batch(&id))?;
                Ok(Mvcc::from_parts(kv, id, 0, 0, 0))
            }
            Some(v) => {
                let version = encoding::decode_u32(&v)?;
                let upgrade = version == encoding::FORMAT_VERSION_NO_GC_DUE;
                let start_log = upgrade || version == encoding::FORMAT_VERSION_NO_CHANGES;
                if version != FORMAT_VERSION && !start_log {
                    return Err(StoreError::Corrupt(format!(
                        "unsupported storage format version {version} (this build reads {FORMAT_VERSION})"
                    )));
                }
                let get = |name: &str| {
                    kv.get(&encoding::meta_key(name))?
                        .ok_or_else(|| StoreError::Corrupt(format!("missing meta key `{name}`")))
                };
                let id = String::from_utf8(get(META_ID)?)
                    .map_err(|_| StoreError::Corrupt("non-UTF-8 store id".to_string()))?;
                let head = encoding::decode_u64(&get(META_HEAD)?)?;
                let horizon = encoding::decode_u64(&get(META_HORIZON)?)?;
                let log_start = if start_log {
                    head
                } else {
                    encoding::decode_u64(&get(META_LOG_START)?)?
                };
                Mvcc::from_parts(kv, id, head, horizon, log_start).load_graph(upgrade, start_log)
            }
        }
    }

    pub(crate) fn unique_id(&self) -> &str {
        &self.unique_id
    }

    fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Writes a consistent copy of the store into the new directory `dir`, taken while no write
    /// can commit, and answers the revision it holds.
    pub(crate) fn checkpoint(&self, dir: &std::path::Path) -> StoreResult<Revision> {
        let _guard = lock(&self.write_lock);
        self.kv.checkpoint(dir)?;
        Ok(Revision(self.head()))
    }

    pub(crate) fn head_revision(&self) -> StoreResult<Revision> {
        Ok(Revision(self.head()))
    }

    pub(crate) fn check_revision(&self, rev: Revision) -> StoreResult<()> {
        let head = self.head();
        if rev.0 > head {
            return Err(StoreError::RevisionInFuture {
                requested: rev,
                head: Revision(head),
            });
        }
        let oldest = self.horizon.load(Ordering::Acquire);
        if rev.0 < oldest {
            return Err(StoreError::RevisionTooOld {
                requested: rev,
                oldest: Revision(oldest),
            });
        }
        Ok(())
    }

    pub(crate) fn read_schema(&self, rev: Revision) -> StoreResult<Option<StoredSchema>> {
        self.check_revision(rev)?;
        // The newest schema answers every read at or after its revision; `None` stored means
        // no schema was ever written, which holds at every revision.
        {
            let latest = self
                .latest_schema
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match latest.as_ref() {
                None => return Ok(None),
                Some(s) if s.revision <= rev => return Ok(Some(s.clone())),
                Some(_) => {}
            }
        }
        self.scan_schema(rev.0)
    }

    /// The schema visible at `rev`, read from the key-value store.
    fn scan_schema(&self, rev: u64) -> StoreResult<Option<StoredSchema>> {
        let mut found = None;
        self.kv.scan(
            &encoding::schema_key(rev),
            Some(&[SCHEMA + 1]),
            &mut |k, v| {
                let revision = Revision(encoding::decode_schema_key(k)?);
                let text = String::from_utf8(v.to_vec())
                    .map_err(|_| StoreError::Corrupt("non-UTF-8 schema".to_string()))?;
                found = Some(StoredSchema { text, revision });
                Ok(false)
            },
        )?;
        Ok(found)
    }

    /// Visits the relationships visible at `rev` (and not expired at `now`) that match `filter`,
    /// in the order of the index chosen for it, strictly after `after`, until `f` returns
    /// `Ok(false)`.
    fn scan_visible(
        &self,
        rev: u64,
        filter: &RelationshipFilter,
        after: Option<&RelationshipKey>,
        now: Timestamp,
        f: &mut dyn FnMut(Found) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        self.scan_visible_within(rev, filter, after, now, None, f)
    }

    /// [`Mvcc::scan_visible`], but visiting at most `budget` stored versions (matching or
    /// not, visible or not): past that it fails with [`StoreError::ScanBudgetExceeded`].
    fn scan_visible_within(
        &self,
        rev: u64,
        filter: &RelationshipFilter,
        after: Option<&RelationshipKey>,
        now: Timestamp,
        mut budget: Option<&mut usize>,
        f: &mut dyn FnMut(Found) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        let plan = encoding::plan(filter);
        let end = encoding::prefix_end(&plan.prefix);
        let start = match after {
            Some(a) => {
                let resume = encoding::after_tuple(plan.index, a);
                if resume > plan.prefix {
                    resume
                } else {
                    plan.prefix.clone()
                }
            }
            None => plan.prefix.clone(),
        };
        // The tuple part of the last version passed to `f`: versions of one tuple are adjacent,
        // and at most one of them is visible, but guard against emitting a tuple twice.
        let mut last_tuple: Vec<u8> = Vec::new();
        self.kv.scan(&start, end.as_deref(), &mut |k, v| {
            if let Some(left) = budget.as_deref_mut() {
                *left = left
                    .checked_sub(1)
                    .ok_or(StoreError::ScanBudgetExceeded(PRECONDITION_SCAN_BUDGET))?;
            }
            let created = encoding::created_of(k)?;
            if created > rev {
                return Ok(true);
            }
            if encoding::peek_deleted(v)? <= rev {
                return Ok(true);
            }
            if encoding::peek_expires(v)?.is_some_and(|e| e <= now) {
                return Ok(true);
            }
            let tuple = encoding::tuple_part(k);
            if tuple == last_tuple.as_slice() {
                return Ok(true);
            }
            let (key, _) = encoding::decode_version_key(plan.index, k)?;
            if !filter.matches(&key) {
                return Ok(true);
            }
            last_tuple.clear();
            last_tuple.extend_from_slice(tuple);
            let value = VersionValue::decode(v)?;
            let rel = Relationship {
                resource: key.resource,
                relation: key.relation,
                subject: key.subject,
                caveat: value.caveat.clone(),
                expires_at: value.expires_at,
            };
            f(Found { rel, value })
        })
    }

    pub(crate) fn query(
        &self,
        rev: Revision,
        filter: &RelationshipFilter,
        after: Option<&RelationshipKey>,
        limit: usize,
        now: Timestamp,
    ) -> StoreResult<Page> {
        self.check_revision(rev)?;
        if limit == 0 {
            return Ok(Page {
                relationships: Vec::new(),
                next: after.cloned(),
            });
        }
        let mut out = Vec::new();
        self.scan_visible(rev.0, filter, after, now, &mut |found| {
            out.push(found.rel);
            Ok(out.len() < limit)
        })?;
        let next = if out.len() >= limit {
            out.last().map(Relationship::key)
        } else {
            None
        };
        Ok(Page {
            relationships: out,
            next,
        })
    }

    /// The newest stored version of `key` (whatever its `deleted`), if any, from the graph,
    /// which holds every version the key-value store does (writers hold the write lock, so it
    /// is current).
    fn newest_version(&self, key: &RelationshipKey) -> Option<VersionValue> {
        self.graph.newest_version(key)
    }

    /// Every relationship visible at `rev` (and not expired at `now`) matching `filter`, in no
    /// particular order: from the in-memory graph when the filter pins an object's relation or
    /// a subject object, else by a key-value scan.
    pub(crate) fn query_all(
        &self,
        rev: Revision,
        filter: &RelationshipFilter,
        now: Timestamp,
        out: &mut Vec<Relationship>,
    ) -> StoreResult<()> {
        self.check_revision(rev)?;
        if self.graph.query(rev.0, filter, now, out) {
            return Ok(());
        }
        self.scan_visible(rev.0, filter, None, now, &mut |found| {
            out.push(found.rel);
            Ok(true)
        })
    }

    /// The graph at `rev`, for the engine's fast path.
    pub(crate) fn graph_view(
        &self,
        rev: Revision,
        now: Timestamp,
    ) -> StoreResult<Option<crate::store::GraphView<'_>>> {
        self.check_revision(rev)?;
        Ok(Some(self.graph.view(rev.0, now)))
    }

    /// Writes `value` (a version of `key`) into both indexes.
    /// Puts the `gc-due` entries of `value` (stored under `by_resource`): when it was
    /// deleted, when it expires. Putting them again is harmless.
    fn put_due(batch: &mut Batch, by_resource: &[u8], value: &VersionValue) {
        if value.deleted != LIVE {
            batch.put(
                encoding::due_deleted_key(value.deleted, by_resource),
                Vec::new(),
            );
        }
        if let Some(at) = value.expires_at {
            batch.put(encoding::due_expired_key(at, by_resource), Vec::new());
        }
    }

    fn put_version(
        batch: &mut Batch,
        key: &RelationshipKey,
        value: &VersionValue,
    ) -> StoreResult<()> {
        let enc = value.encode()?;
        let by_resource = encoding::version_key(Index::ByResource, key, value.created);
        Self::put_due(batch, &by_resource, value);
        batch.put(by_resource, enc.clone());
        batch.put(
            encoding::version_key(Index::BySubject, key, value.created),
            enc,
        );
        Ok(())
    }

    /// Fails with the first precondition that does not hold at `head`. Runs under the write
    /// lock, so its work is bounded: a filter the graph's indexes answer (one object's
    /// relation, or one subject) costs a hash probe and a walk of that list; any other filter
    /// is a scan of the stored index, and all such scans of one write together may visit at
    /// most [`PRECONDITION_SCAN_BUDGET`] stored versions.
    fn check_preconditions(
        &self,
        head: u64,
        preconditions: &[Precondition],
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut budget = PRECONDITION_SCAN_BUDGET;
        for p in preconditions {
            let found = match self.graph.any_visible(head, &p.filter, now) {
                Some(found) => found,
                None => {
                    let mut found = false;
                    self.scan_visible_within(
                        head,
                        &p.filter,
                        None,
                        now,
                        Some(&mut budget),
                        &mut |_| {
                            found = true;
                            Ok(false)
                        },
                    )?;
                    found
                }
            };
            let holds = match p.op {
                PreconditionOp::MustMatch => found,
                PreconditionOp::MustNotMatch => !found,
            };
            if !holds {
                return Err(StoreError::PreconditionFailed(Box::new(p.clone())));
            }
        }
        Ok(())
    }

    /// Moves the head to `rev`: readers, Watch streams and reads waiting for a revision see
    /// it. The caller holds `catch_up_lock`, after applying the revision's changes.
    fn publish_head(&self, rev: u64) {
        self.head.store(rev, Ordering::Release);
        self.head_tx.send_replace(Revision(rev));
        let (m, cv) = &self.head_moved;
        // Taking the mutex orders this after a waiter's check of the head (see `refresh`).
        drop(lock(m));
        cv.notify_all();
        if let Some(m) = metrics::get() {
            m.head_revision.set(signed(rev));
        }
    }

    /// Adds the new head revision, its commit time and its change-log header, commits,
    /// replays `changes` on the graph (and `schema`, if the revision wrote one), then
    /// publishes the head.
    fn commit_revision(
        &self,
        mut batch: Batch,
        rev: u64,
        now: Timestamp,
        changes: &[GraphChange],
        header: &ChangeHeader,
        schema: Option<&str>,
    ) -> StoreResult<Revision> {
        let started = Instant::now();
        Self::seal(&mut batch, rev, now, header)?;
        let _moving = lock(&self.catch_up_lock);
        self.commit(batch)?;
        if let Some(text) = schema {
            // Before the head: a reader of `rev` finds its schema here; a reader of an older
            // revision sees a newer schema here and reads its own from the store.
            *self
                .latest_schema
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(StoredSchema {
                text: text.to_string(),
                revision: Revision(rev),
            });
        }
        self.graph.apply(changes);
        self.publish_head(rev);
        // Every `Close` ends a version live at the head, every `Add` starts one.
        let delta = changes.iter().fold(0i64, |n, c| match c {
            GraphChange::Close { .. } => n - 1,
            GraphChange::Add { .. } => n + 1,
            // only a rolled-back import removes versions, and it never reaches a commit
            GraphChange::Remove { .. } => n,
        });
        self.count_live(delta);
        if let Some(m) = metrics::get() {
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        Ok(Revision(rev))
    }

    /// Adds to the last batch of revision `rev` what makes it committed: its commit time, the
    /// head, its change-log header, and the end of its `pending` mark.
    fn seal(batch: &mut Batch, rev: u64, now: Timestamp, header: &ChangeHeader) -> StoreResult<()> {
        batch.put(encoding::rev_time_key(rev), encoding::encode_time(now));
        batch.put(encoding::meta_key(META_HEAD), rev.to_be_bytes().to_vec());
        batch.put(encoding::change_header_key(rev), header.encode()?);
        batch.delete(encoding::meta_key(META_PENDING));
        Ok(())
    }

    /// Commits the last batch of a revision written in chunks (an import, a large delete) on
    /// a shared datastore, then replays the revision from the change log, as the other nodes
    /// do. Such a write keeps its chunks out of this node's graph: should it fail midway, or
    /// the node lose its session, the graph holds nothing of it (the next writer rolls the
    /// chunks back in the datastore), and a final commit whose acknowledgement was lost is
    /// replayed by the next catch-up.
    fn commit_replayed(
        &self,
        mut batch: Batch,
        rev: u64,
        now: Timestamp,
        header: &ChangeHeader,
    ) -> StoreResult<Revision> {
        let started = Instant::now();
        Self::seal(&mut batch, rev, now, header)?;
        let _moving = lock(&self.catch_up_lock);
        self.commit(batch)?;
        let head = self.catch_up_locked()?;
        if head != rev {
            tracing::error!(
                revision = rev,
                head,
                "the datastore's head after this node's commit is not its revision"
            );
            return Err(StoreError::Engine(format!(
                "the datastore's head after committing revision {rev} is {head}"
            )));
        }
        if let Some(m) = metrics::get() {
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        Ok(Revision(rev))
    }

    /// What a chunk of a write committed in chunks does to this node's graph: applied at once
    /// on a datastore of its own, replayed at the end on a shared one (see
    /// [`Mvcc::commit_replayed`]).
    fn apply_chunk(&self, changes: &[GraphChange]) {
        if !self.kv.shared() {
            self.graph.apply(changes);
        }
    }

    /// A chunked write failed and `undo` rolls its chunks back. If the rollback fails too, a
    /// store of its own refuses writes until a restart repairs it; a shared one goes on (its
    /// graph never had the chunks, and the next writer on any node rolls them back, told by
    /// the `pending` mark).
    fn roll_back_chunks(&self, what: &str, undo: StoreResult<()>) {
        let Err(e) = undo else { return };
        if self.kv.shared() {
            tracing::warn!(error = %e, "cannot roll back a failed {what}; the next write will");
        } else {
            self.write_state.set_needs_repair();
            tracing::error!(
                error = %e,
                "cannot roll back a failed {what}; writes are refused until a restart"
            );
        }
    }

    fn next_revision(head: u64) -> StoreResult<u64> {
        head.checked_add(1)
            .filter(|r| *r < LIVE)
            .ok_or_else(|| StoreError::Engine("revision space exhausted".to_string()))
    }

    pub(crate) fn write_relationships(
        &self,
        preconditions: &[Precondition],
        updates: &[RelationshipUpdate],
        now: Timestamp,
    ) -> StoreResult<Revision> {
        self.write_relationships_with_metadata(preconditions, updates, now, None)
    }

    /// Writes `updates` (after checking `preconditions`) at a new revision whose change-log
    /// header keeps `metadata`.
    pub(crate) fn write_relationships_with_metadata(
        &self,
        preconditions: &[Precondition],
        updates: &[RelationshipUpdate],
        now: Timestamp,
        metadata: Option<&TransactionMetadata>,
    ) -> StoreResult<Revision> {
        let _section = self.begin_write()?;
        let head = self.head();
        self.check_preconditions(head, preconditions, now)?;
        let rev = Self::next_revision(head)?;

        // Per tuple: its newest stored version before this write, and what the updates so far
        // leave of it (updates apply in order: a later update of a tuple sees an earlier one).
        struct Pending<'a> {
            stored: Option<VersionValue>,
            result: Option<&'a Relationship>,
        }
        let mut pending: BTreeMap<RelationshipKey, Pending<'_>> = BTreeMap::new();
        for u in updates {
            let key = u.relationship.key();
            let (live, entry) = match pending.entry(key.clone()) {
                Entry::Occupied(o) => {
                    let p = o.into_mut();
                    (p.result.is_some_and(|r| !r.is_expired_at(now)), p)
                }
                Entry::Vacant(v) => {
                    let stored = self.newest_version(&key);
                    let live = stored
                        .as_ref()
                        .is_some_and(|s| s.deleted == LIVE && s.expires_at.is_none_or(|e| e > now));
                    let p = v.insert(Pending {
                        stored,
                        result: None,
                    });
                    (live, p)
                }
            };
            entry.result = match u.op {
                UpdateOp::Create if live => return Err(StoreError::AlreadyExists(Box::new(key))),
                UpdateOp::Create | UpdateOp::Touch => Some(&u.relationship),
                UpdateOp::Delete => None,
            };
        }

        let mut batch = Batch::default();
        let mut changes = Vec::with_capacity(pending.len());
        for (key, p) in pending {
            // A TOUCH that leaves a live relationship as it is writes no new version: a client
            // re-asserting its relationships must not grow the store (or its graph) by a
            // version per call until GC.
            if let (Some(stored), Some(r)) = (&p.stored, p.result)
                && stored.deleted == LIVE
                && stored.expires_at.is_none_or(|e| e > now)
                && stored.caveat == r.caveat
                && stored.expires_at == r.expires_at
            {
                continue;
            }
            if let Some(stored) = p.stored
                && stored.deleted == LIVE
            {
                let created = stored.created;
                let visible = stored.expires_at.is_none_or(|e| e > now);
                let mut old = stored;
                old.deleted = rev;
                Self::put_version(&mut batch, &key, &old)?;
                // The change log records a deletion of what readers saw: an expired
                // relationship was already gone for them (its version just ends).
                if p.result.is_none() {
                    let op = if visible { CHANGE_DELETE } else { CHANGE_CLOSE };
                    put_change(&mut batch, rev, &key, op, &old)?;
                }
                changes.push(GraphChange::Close {
                    key: key.clone(),
                    created,
                    rev,
                });
            }
            if let Some(r) = p.result {
                let new = VersionValue {
                    created: rev,
                    deleted: LIVE,
                    caveat: r.caveat.clone(),
                    expires_at: r.expires_at,
                };
                Self::put_version(&mut batch, &key, &new)?;
                put_change(&mut batch, rev, &key, CHANGE_TOUCH, &new)?;
                changes.push(GraphChange::Add { key, value: new });
            }
        }
        let header = ChangeHeader {
            schema: false,
            metadata: metadata.map(|m| m.0.clone()),
        };
        self.commit_revision(batch, rev, now, &changes, &header, None)
    }

    /// Deletes the live relationships matching `filter`, all at one new revision, in chunks of
    /// [`DELETE_CHUNK`]: each chunk is one unsynced commit and one short hold of the graph's
    /// write lock, so memory stays one chunk whatever the number of matches. The versions a
    /// chunk closes get `deleted = rev` above the head, which readers of the head still see as
    /// live; the head moves to `rev` only after the last chunk, in the one synced commit, so
    /// no reader sees part of the delete. The scan of matches reads at the head and resumes
    /// strictly after the last key it returned, so what the chunks write cannot disturb it. A
    /// chunk that fails to commit makes the chunks before it roll back; a crash in between is
    /// rolled back at the next open (see [`Mvcc::load_graph`]).
    pub(crate) fn delete_relationships(
        &self,
        filter: &RelationshipFilter,
        preconditions: &[Precondition],
        limit: Option<u64>,
        allow_partial: bool,
        now: Timestamp,
    ) -> StoreResult<DeleteOutcome> {
        self.delete_relationships_with_metadata(
            filter,
            preconditions,
            limit,
            allow_partial,
            now,
            None,
        )
    }

    /// [`Mvcc::delete_relationships`] at a revision whose change-log header keeps `metadata`.
    pub(crate) fn delete_relationships_with_metadata(
        &self,
        filter: &RelationshipFilter,
        preconditions: &[Precondition],
        limit: Option<u64>,
        allow_partial: bool,
        now: Timestamp,
        metadata: Option<&TransactionMetadata>,
    ) -> StoreResult<DeleteOutcome> {
        let _section = self.begin_write()?;
        let head = self.head();
        self.check_preconditions(head, preconditions, now)?;
        let max = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
        if let (Some(l), Some(m), false) = (limit, max, allow_partial) {
            // All or nothing: counted before anything is written.
            let mut seen = 0usize;
            self.scan_visible(head, filter, None, now, &mut |_| {
                seen += 1;
                Ok(seen <= m)
            })?;
            if seen > m {
                return Err(StoreError::TooManyToDelete { limit: l });
            }
        }
        let mut deleted = 0usize;
        let mut partial = false;
        let mut wrote = false;
        let result = (|| -> StoreResult<Option<Revision>> {
            let mut after: Option<RelationshipKey> = None;
            loop {
                let room = max.map_or(usize::MAX, |m| m.saturating_sub(deleted));
                let want = room.min(DELETE_CHUNK);
                let mut chunk: Vec<Found> = Vec::new();
                if want > 0 {
                    self.scan_visible(head, filter, after.as_ref(), now, &mut |found| {
                        chunk.push(found);
                        Ok(chunk.len() < want)
                    })?;
                }
                if let Some(f) = chunk.last() {
                    after = Some(f.rel.key());
                }
                let mut last = chunk.len() < want;
                if !last && chunk.len() == room {
                    // The limit is reached: anything left makes the delete partial.
                    last = true;
                    self.scan_visible(head, filter, after.as_ref(), now, &mut |_| {
                        partial = true;
                        Ok(false)
                    })?;
                }
                if chunk.is_empty() && !wrote {
                    return Ok(None);
                }
                let rev = Self::next_revision(head)?;
                let mut batch = Batch::default();
                let mut changes = Vec::with_capacity(chunk.len());
                for m in chunk {
                    let mut old = m.value;
                    let created = old.created;
                    old.deleted = rev;
                    let key = m.rel.key();
                    Self::put_version(&mut batch, &key, &old)?;
                    put_change(&mut batch, rev, &key, CHANGE_DELETE, &old)?;
                    changes.push(GraphChange::Close { key, created, rev });
                }
                deleted += changes.len();
                if last {
                    let earlier = deleted - changes.len();
                    let header = ChangeHeader {
                        schema: false,
                        metadata: metadata.map(|m| m.0.clone()),
                    };
                    if wrote && self.kv.shared() {
                        return self.commit_replayed(batch, rev, now, &header).map(Some);
                    }
                    let revision =
                        self.commit_revision(batch, rev, now, &changes, &header, None)?;
                    self.count_live(-signed(u64::try_from(earlier).unwrap_or(u64::MAX)));
                    return Ok(Some(revision));
                }
                if !wrote {
                    batch.put(encoding::meta_key(META_PENDING), rev.to_be_bytes().to_vec());
                }
                wrote = true;
                self.commit_unsynced(batch)?;
                self.apply_chunk(&changes);
            }
        })();
        match result {
            Ok(revision) => Ok(DeleteOutcome {
                revision: revision.unwrap_or(Revision(head)),
                deleted: u64::try_from(deleted).unwrap_or(u64::MAX),
                partial,
            }),
            Err(e) => {
                if wrote && let Ok(rev) = Self::next_revision(head) {
                    self.roll_back_chunks("delete", self.undo_delete(rev));
                }
                Err(e)
            }
        }
    }

    /// Opens again the versions a failed [`Mvcc::delete_relationships`] closed at `rev` (not
    /// published), found through their `gc-due` entries, which it removes.
    fn undo_delete(&self, rev: u64) -> StoreResult<()> {
        let mut from = encoding::due_deleted_from(rev);
        let end = encoding::due_deleted_from(rev.saturating_add(1));
        loop {
            let mut entries: Vec<Vec<u8>> = Vec::new();
            self.kv.scan(&from, Some(&end), &mut |k, _| {
                entries.push(k.to_vec());
                Ok(entries.len() < DELETE_CHUNK)
            })?;
            // The next chunk starts after this one, not over its tombstones (see clear_range).
            let Some(last) = entries.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            let mut batch = Batch::default();
            let mut changes = Vec::with_capacity(entries.len());
            for entry in entries {
                let version = encoding::due_version_key(&entry)?;
                if let Some(v) = self.kv.get(version)? {
                    let mut value = VersionValue::decode(&v)?;
                    if value.deleted == rev {
                        let (key, created) =
                            encoding::decode_version_key(Index::ByResource, version)?;
                        value.deleted = LIVE;
                        Self::put_version(&mut batch, &key, &value)?;
                        changes.push(GraphChange::Close {
                            key,
                            created,
                            rev: LIVE,
                        });
                    }
                }
                batch.delete(entry);
            }
            self.commit_unsynced(batch)?;
            self.apply_chunk(&changes);
        }
        self.clear_changes_at(rev)?;
        // Durable before any later write reuses `rev`.
        let mut done = Batch::default();
        done.delete(encoding::meta_key(META_PENDING));
        self.commit(done)
    }

    /// Removes the change-log entries written at `rev` by an import or delete that failed
    /// before it committed (unsynced: the caller's next synced commit makes it durable).
    fn clear_changes_at(&self, rev: u64) -> StoreResult<()> {
        self.clear_range(
            &encoding::changes_from(rev),
            Some(&encoding::changes_from(rev.saturating_add(1))),
            false,
        )
    }

    /// [`Kv::commit_unsynced`], remembering a failure (a success proves nothing durable).
    fn commit_unsynced(&self, batch: Batch) -> StoreResult<()> {
        let result = self.kv.commit_unsynced(batch).map_err(unwritable);
        self.write_state.record(&result, false);
        result
    }

    /// Starts a bulk import; its id names it to the calls below.
    pub(crate) fn begin_import(&self) -> StoreResult<u64> {
        Ok(self.next_import.fetch_add(1, Ordering::Relaxed))
    }

    /// Adds relationships to import `import`, on disk and outside any lock: other writes go
    /// on meanwhile, and the import's memory stays one batch. Fails with
    /// [`StoreError::AlreadyExists`] for a tuple the import already holds.
    pub(crate) fn stage_import(&self, import: u64, rels: &[Relationship]) -> StoreResult<()> {
        let mut batch = Batch::default();
        let mut keys = std::collections::BTreeSet::new();
        for r in rels {
            let key = r.key();
            let staged = encoding::staged_key(import, &key);
            if self.kv.get(&staged)?.is_some() || !keys.insert(staged.clone()) {
                return Err(StoreError::AlreadyExists(Box::new(key)));
            }
            let value = VersionValue {
                created: 0,
                deleted: LIVE,
                caveat: r.caveat.clone(),
                expires_at: r.expires_at,
            };
            batch.put(staged, value.encode()?);
        }
        self.commit_unsynced(batch)
    }

    /// Forgets import `import`'s staged relationships.
    pub(crate) fn abort_import(&self, import: u64) -> StoreResult<()> {
        let start = encoding::staged_prefix(import);
        let end = encoding::prefix_end(&start);
        self.clear_staged(&start, end.as_deref())
    }

    /// Deletes the staged keys in `[start, end)`, a bounded batch at a time.
    fn clear_staged(&self, start: &[u8], end: Option<&[u8]>) -> StoreResult<()> {
        self.clear_range(start, end, false)
    }

    /// Deletes the keys in `[start, end)`, a bounded batch at a time; with `sync`, durably.
    ///
    /// Each batch's scan starts after the last key the previous one deleted: starting
    /// again from `start` would step over every tombstone written so far, which makes a
    /// large range quadratic (RocksDB keeps the tombstones until compaction).
    fn clear_range(&self, start: &[u8], end: Option<&[u8]>, sync: bool) -> StoreResult<()> {
        let mut from = start.to_vec();
        loop {
            let mut batch = Batch::default();
            let mut last: Option<Vec<u8>> = None;
            self.kv.scan(&from, end, &mut |k, _| {
                batch.delete(k.to_vec());
                last = Some(k.to_vec());
                Ok(batch.len() < GC_BATCH)
            })?;
            let Some(mut next) = last else {
                return if sync {
                    self.kv.commit(Batch::default())
                } else {
                    Ok(())
                };
            };
            self.kv.commit_unsynced(batch)?;
            next.push(0);
            from = next;
        }
    }

    /// Calls `f` with import `import`'s staged relationships, [`IMPORT_CHUNK`] at a time, in
    /// key order. `f` may use the store (no scan is open while it runs).
    fn for_each_staged(
        &self,
        import: u64,
        f: &mut dyn FnMut(Vec<(RelationshipKey, VersionValue)>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let prefix = encoding::staged_prefix(import);
        let end = encoding::prefix_end(&prefix);
        let mut from = prefix;
        loop {
            let mut chunk = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            self.kv.scan(&from, end.as_deref(), &mut |k, v| {
                chunk.push((encoding::decode_staged_key(k)?, VersionValue::decode(v)?));
                last = Some(k.to_vec());
                Ok(chunk.len() < IMPORT_CHUNK)
            })?;
            let Some(mut next) = last else {
                return Ok(());
            };
            f(chunk)?;
            next.push(0);
            from = next;
        }
    }

    /// Creates every relationship staged in import `import` at one new revision, all or
    /// nothing: fails with [`StoreError::AlreadyExists`] (writing nothing) if one is live at
    /// the head. Returns the revision and how many were created.
    ///
    /// Writers wait for it, but readers do not: the versions are written a chunk at a time,
    /// each chunk replayed on the graph under a short hold of its lock, and none is visible
    /// before the head moves to the new revision at the end. If a chunk fails to commit, the
    /// chunks before it are rolled back; a crash in between is rolled back at the next open.
    pub(crate) fn commit_import(
        &self,
        import: u64,
        now: Timestamp,
    ) -> StoreResult<(Revision, u64)> {
        let _section = self.begin_write()?;
        let head = self.head();
        let rev = Self::next_revision(head)?;
        self.for_each_staged(import, &mut |chunk| {
            for (key, _) in chunk {
                if let Some(stored) = self.graph.newest_version(&key)
                    && stored.deleted == LIVE
                    && stored.expires_at.is_none_or(|e| e > now)
                {
                    return Err(StoreError::AlreadyExists(Box::new(key)));
                }
            }
            Ok(())
        })?;
        let mut created = 0u64;
        let mut closed = 0u64;
        let written = self
            .for_each_staged(import, &mut |chunk| {
                let mut batch = Batch::default();
                if created == 0 {
                    batch.put(encoding::meta_key(META_PENDING), rev.to_be_bytes().to_vec());
                }
                let mut changes = Vec::with_capacity(chunk.len());
                for (key, mut value) in chunk {
                    // A live version here has expired (checked above): it ends at `rev`.
                    if let Some(mut old) = self.graph.newest_version(&key)
                        && old.deleted == LIVE
                    {
                        old.deleted = rev;
                        Self::put_version(&mut batch, &key, &old)?;
                        closed += 1;
                        changes.push(GraphChange::Close {
                            key: key.clone(),
                            created: old.created,
                            rev,
                        });
                    }
                    value.created = rev;
                    Self::put_version(&mut batch, &key, &value)?;
                    put_change(&mut batch, rev, &key, CHANGE_TOUCH, &value)?;
                    changes.push(GraphChange::Add { key, value });
                    created += 1;
                }
                self.commit_unsynced(batch)?;
                self.apply_chunk(&changes);
                Ok(())
            })
            .and_then(|()| {
                if self.kv.shared() {
                    return self.commit_replayed(
                        Batch::default(),
                        rev,
                        now,
                        &ChangeHeader::default(),
                    );
                }
                let revision = self.commit_revision(
                    Batch::default(),
                    rev,
                    now,
                    &[],
                    &ChangeHeader::default(),
                    None,
                )?;
                self.count_live(signed(created) - signed(closed));
                Ok(revision)
            });
        match written {
            Ok(revision) => Ok((revision, created)),
            Err(e) => {
                self.roll_back_chunks("import", self.undo_import(import, rev));
                Err(e)
            }
        }
    }

    /// Removes what a failed [`Mvcc::commit_import`] wrote at `rev` (not published).
    fn undo_import(&self, import: u64, rev: u64) -> StoreResult<()> {
        self.for_each_staged(import, &mut |chunk| {
            let mut batch = Batch::default();
            let mut changes = Vec::with_capacity(chunk.len());
            for (key, _) in chunk {
                batch.delete(encoding::version_key(Index::ByResource, &key, rev));
                batch.delete(encoding::version_key(Index::BySubject, &key, rev));
                changes.push(GraphChange::Remove {
                    key: key.clone(),
                    created: rev,
                });
                if let Some(mut closed) = self.graph.newest_version_before(&key, rev)
                    && closed.deleted == rev
                {
                    closed.deleted = LIVE;
                    Self::put_version(&mut batch, &key, &closed)?;
                    changes.push(GraphChange::Close {
                        key,
                        created: closed.created,
                        rev: LIVE,
                    });
                }
            }
            self.commit_unsynced(batch)?;
            self.apply_chunk(&changes);
            Ok(())
        })?;
        self.clear_changes_at(rev)?;
        // Durable before any later write reuses `rev`.
        let mut done = Batch::default();
        done.delete(encoding::meta_key(META_PENDING));
        self.commit(done)
    }

    /// Refuses writes while versions of a failed import or delete may be left past the head
    /// ([`WriteState::NeedsRepair`]). A store whose last commit failed still tries: the write
    /// either fails the same way or finds the disk working again.
    fn writable(&self) -> StoreResult<()> {
        match self.write_state.get() {
            WriteState::NeedsRepair => Err(needs_repair()),
            WriteState::Writable | WriteState::Failing(_) => Ok(()),
        }
    }

    pub(crate) fn write_schema(
        &self,
        text: &str,
        orphan_checks: &[OrphanCheck],
        now: Timestamp,
    ) -> StoreResult<Revision> {
        let _section = self.begin_write()?;
        let head = self.head();
        for check in orphan_checks {
            let mut hit = None;
            self.scan_visible(head, &check.filter, None, now, &mut |found| {
                if check.caveat.matches(&found.rel) {
                    hit = Some(found.rel);
                    return Ok(false);
                }
                Ok(true)
            })?;
            if let Some(rel) = hit {
                return Err(StoreError::SchemaOrphans {
                    description: check.description.clone(),
                    relationship: Box::new(rel),
                });
            }
        }
        let rev = Self::next_revision(head)?;
        let mut batch = Batch::default();
        batch.put(encoding::schema_key(rev), text.as_bytes().to_vec());
        let header = ChangeHeader {
            schema: true,
            metadata: None,
        };
        self.commit_revision(batch, rev, now, &[], &header, Some(text))
    }

    /// Scans `[start, end)` and lets `visit` queue deletions, committing every [`GC_BATCH`]
    /// keys so a large pass never builds one huge batch.
    fn gc_range(&self, start: &[u8], end: &[u8], visit: &mut GcVisit<'_>) -> StoreResult<()> {
        let mut cursor = start.to_vec();
        loop {
            let mut batch = Batch::default();
            let mut resume: Option<Vec<u8>> = None;
            self.kv.scan(&cursor, Some(end), &mut |k, v| {
                visit(k, v, &mut batch)?;
                if batch.len() >= GC_BATCH {
                    // Resume at the immediate successor of `k`.
                    let mut next = k.to_vec();
                    next.push(0);
                    resume = Some(next);
                    return Ok(false);
                }
                Ok(true)
            })?;
            if !batch.is_empty() {
                self.commit(batch)?;
            }
            match resume {
                Some(next) => cursor = next,
                None => return Ok(()),
            }
        }
    }

    /// Removes the versions whose `gc-due` entries lie in `[start, end)` and pass `due` (given
    /// the stored value), and the entries themselves, a chunk at a time: each chunk is one
    /// store commit and one short hold of the graph's write lock. Returns how many versions it
    /// removed, and how many of those were still live (expired, never deleted).
    fn sweep_due(
        &self,
        start: &[u8],
        end: &[u8],
        due: &mut dyn FnMut(&[u8]) -> StoreResult<bool>,
    ) -> StoreResult<(u64, u64)> {
        let (mut removed, mut live) = (0u64, 0u64);
        let mut cursor = start.to_vec();
        loop {
            // Collected first, read after: no store read runs inside a scan.
            let mut entries: Vec<Vec<u8>> = Vec::new();
            self.kv.scan(&cursor, Some(end), &mut |k, _| {
                entries.push(k.to_vec());
                Ok(entries.len() < GC_SWEEP_CHUNK)
            })?;
            let Some(last) = entries.last() else {
                return Ok((removed, live));
            };
            cursor = last.clone();
            cursor.push(0);
            let mut batch = Batch::default();
            let mut changes = Vec::new();
            for entry in entries {
                let version = encoding::due_version_key(&entry)?;
                if let Some(value) = self.kv.get(version)?
                    && due(&value)?
                {
                    let (key, created) = encoding::decode_version_key(Index::ByResource, version)?;
                    batch.delete(version.to_vec());
                    batch.delete(encoding::version_key(Index::BySubject, &key, created));
                    if encoding::peek_deleted(&value)? == LIVE {
                        live += 1;
                    }
                    removed += 1;
                    changes.push(GraphChange::Remove { key, created });
                }
                batch.delete(entry);
            }
            self.commit(batch)?;
            self.graph.apply(&changes);
        }
    }

    /// One garbage collection pass, counted in the metrics.
    pub(crate) fn gc(&self, now: Timestamp, window: Duration) -> StoreResult<GcStats> {
        let _guard = lock(&self.gc_lock);
        let started = Instant::now();
        let result = self.gc_pass(now, window);
        if let Some(m) = metrics::get() {
            m.gc_seconds.observe(started.elapsed().as_secs_f64());
            match &result {
                Ok(stats) => {
                    m.gc_relationships.inc_by(stats.relationships);
                    m.gc_schemas.inc_by(stats.schemas);
                }
                Err(_) => m.gc_failures.inc(),
            }
        }
        result
    }

    /// Garbage collection; the caller holds `gc_lock`.
    fn gc_pass(&self, now: Timestamp, window: Duration) -> StoreResult<GcStats> {
        // On a shared datastore the horizon moves in a write section (after the catch-up,
        // which takes the datastore's horizon if another node raised it), so that it only
        // ever rises.
        let section = if self.kv.shared() {
            Some(self.begin_write()?)
        } else {
            None
        };
        let head = self.head();
        let cutoff = time_minus(now, window);

        // 1. The new horizon: the newest revision committed at or before the cutoff.
        let old = self.horizon.load(Ordering::Acquire);
        let mut horizon = old;
        self.kv.scan(
            &encoding::rev_time_key(old.saturating_add(1)),
            Some(&[REV_TIME + 1]),
            &mut |k, v| {
                let rev = encoding::decode_rev_time_key(k)?;
                if rev > head || encoding::decode_time(v)? > cutoff {
                    return Ok(false);
                }
                horizon = rev;
                Ok(true)
            },
        )?;
        if horizon > old {
            // Publish the horizon before deleting anything, so no new read starts below it.
            let mut b = Batch::default();
            b.put(
                encoding::meta_key(META_HORIZON),
                horizon.to_be_bytes().to_vec(),
            );
            self.commit(b)?;
            self.horizon.store(horizon, Ordering::Release);
        }
        drop(section);

        // 2. Relationship versions deleted at or before the horizon, or expired at or before
        //    the cutoff (invisible to every reader from then on): found through their
        //    `gc-due` entries, removed from both indexes and from the graph.
        let mut relationships = 0u64;
        let mut expired_live = 0u64;
        let (start, end) = encoding::due_deleted_range(horizon);
        let swept = self
            .sweep_due(&start, &end, &mut |v| {
                Ok(encoding::peek_deleted(v)? <= horizon)
            })
            .and_then(|(n, _)| {
                relationships += n;
                let (start, end) = encoding::due_expired_range(cutoff);
                self.sweep_due(&start, &end, &mut |v| {
                    Ok(encoding::peek_expires(v)?.is_some_and(|e| e <= cutoff))
                })
            })
            .map(|(n, live)| {
                relationships += n;
                expired_live += live;
            });
        // Expired versions still live at the head leave the stored count.
        self.count_live(-signed(expired_live));
        swept?;
        if self.kv.shared() {
            // What other nodes' passes removed from the datastore leaves this node's graph.
            let (_, live) = self.graph.prune(horizon, cutoff);
            self.count_live(-signed(live));
        }

        // 3. Schema versions superseded at or before the horizon: keep the newest one there.
        let mut schemas = 0u64;
        let mut kept = false;
        self.gc_range(
            &encoding::schema_key(horizon),
            &[SCHEMA + 1],
            &mut |k, _, batch| {
                if kept {
                    batch.delete(k.to_vec());
                    schemas += 1;
                } else {
                    kept = true;
                }
                Ok(())
            },
        )?;

        // 4. Commit times of revisions below the horizon.
        let mut transactions = 0u64;
        self.gc_range(
            &[REV_TIME],
            &encoding::rev_time_key(horizon),
            &mut |k, _, batch| {
                batch.delete(k.to_vec());
                transactions += 1;
                Ok(())
            },
        )?;
        if let Some(m) = metrics::get() {
            m.gc_transactions.inc_by(transactions);
        }

        // 5. The change log of revisions at or below the horizon: a watch may resume after
        //    the horizon, never before it.
        self.gc_range(
            &[CHANGES],
            &encoding::changes_from(horizon.saturating_add(1)),
            &mut |k, _, batch| {
                batch.delete(k.to_vec());
                Ok(())
            },
        )?;

        Ok(GcStats {
            relationships,
            schemas,
            horizon: Revision(horizon),
        })
    }

    /// A receiver of every new head revision.
    pub(crate) fn subscribe_head(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.head_tx.subscribe()
    }

    /// Fails unless the change log holds every revision after `after`, up to `head`.
    fn check_changes_after(&self, after: u64, head: u64) -> StoreResult<()> {
        if after > head {
            return Err(StoreError::RevisionInFuture {
                requested: Revision(after),
                head: Revision(head),
            });
        }
        let oldest = self
            .horizon
            .load(Ordering::Acquire)
            .max(self.log_start.load(Ordering::Acquire));
        if after < oldest {
            return Err(StoreError::ChangesUnavailable {
                requested: Revision(after),
                oldest: Revision(oldest),
            });
        }
        Ok(())
    }

    /// The change log after `after`, up to the head, whole revisions only (see
    /// [`Datastore::read_changes`](crate::store::Datastore::read_changes)). Reads one KV scan
    /// and takes no lock a writer waits for (beyond the memory map's read lock for the scan).
    pub(crate) fn read_changes(
        &self,
        after: Revision,
        max_changes: usize,
        max_revision_bytes: usize,
    ) -> StoreResult<Vec<RevisionChanges>> {
        let head = self.head();
        self.check_changes_after(after.0, head)?;
        let mut out: Vec<RevisionChanges> = Vec::new();
        if after.0 >= head {
            return Ok(out);
        }
        let start = encoding::changes_from(after.0.saturating_add(1));
        let end = encoding::changes_from(head.saturating_add(1));
        let mut current: Option<RevisionChanges> = None;
        let mut bytes = 0usize;
        let mut count = 0usize;
        self.kv.scan(&start, Some(&end), &mut |k, v| {
            let (rev, record) = encoding::decode_change(k, v)?;
            match record {
                ChangeRecord::Header(h) => {
                    if let Some(done) = current.take() {
                        count = count.saturating_add(done.changes.len().max(1));
                        out.push(done);
                        if count >= max_changes {
                            return Ok(false);
                        }
                    }
                    bytes = 0;
                    current = Some(RevisionChanges {
                        revision: Revision(rev),
                        schema_changed: h.schema,
                        metadata: h.metadata.map(TransactionMetadata),
                        changes: Vec::new(),
                    });
                }
                ChangeRecord::Entry(op, key, value) => {
                    let Some(cur) = current.as_mut().filter(|c| c.revision.0 == rev) else {
                        return Err(StoreError::Corrupt(format!(
                            "change-log entry of revision {rev} without its header"
                        )));
                    };
                    if op == CHANGE_CLOSE {
                        // No reader saw it go: not a change for Watch.
                        return Ok(true);
                    }
                    bytes = bytes.saturating_add(k.len() + v.len());
                    if bytes > max_revision_bytes {
                        return Err(StoreError::ChangesTooLarge {
                            revision: Revision(rev),
                            limit: max_revision_bytes,
                        });
                    }
                    cur.changes.push(Change {
                        op: if op == CHANGE_DELETE {
                            ChangeOp::Delete
                        } else {
                            ChangeOp::Touch
                        },
                        relationship: Relationship {
                            resource: key.resource,
                            relation: key.relation,
                            subject: key.subject,
                            caveat: value.caveat,
                            expires_at: value.expires_at,
                        },
                    });
                }
            }
            Ok(true)
        })?;
        if let Some(done) = current.take() {
            out.push(done);
        }
        // GC publishes its horizon before it deletes: if it moved past `after` meanwhile, the
        // scan may have missed part of what it deleted.
        self.check_changes_after(after.0, head)?;
        // Every revision up to the last one read has a header: a gap means a lost record.
        let mut expect = after.0;
        for r in &out {
            expect = expect.saturating_add(1);
            if r.revision.0 != expect {
                return Err(StoreError::Corrupt(format!(
                    "the change log has no header for revision {expect}"
                )));
            }
        }
        Ok(out)
    }

    /// Every key and value (tests: inspect what GC left).
    #[cfg(test)]
    pub(crate) fn raw_count(&self, prefix: u8) -> StoreResult<usize> {
        let mut n = 0;
        self.kv.scan(&[prefix], Some(&[prefix + 1]), &mut |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }
}

/// The meta entries of relationship counters: `counter/NAME`.
const COUNTER_PREFIX: &str = "counter/";

impl<K: Kv> Mvcc<K> {
    /// See [`Datastore::relationship_counters`](crate::store::Datastore::relationship_counters).
    pub(crate) fn relationship_counters(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let start = encoding::meta_key(COUNTER_PREFIX);
        // The first key after every `counter/...`: '/' + 1 is '0'.
        let end = encoding::meta_key("counter0");
        let mut out = Vec::new();
        self.kv.scan(&start, Some(&end), &mut |key, value| {
            let name = key.get(start.len()..).unwrap_or_default();
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| StoreError::Corrupt("a counter name is not UTF-8".to_string()))?;
            out.push((name, value.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// See [`Datastore::set_relationship_counter`](crate::store::Datastore::set_relationship_counter).
    pub(crate) fn set_relationship_counter(
        &self,
        name: &str,
        value: Option<&[u8]>,
    ) -> StoreResult<()> {
        let _section = self.begin_write()?;
        let key = encoding::meta_key(&format!("{COUNTER_PREFIX}{name}"));
        let mut batch = Batch::default();
        match value {
            Some(v) => batch.put(key, v.to_vec()),
            None => batch.delete(key),
        }
        self.commit(batch)
    }
}

/// Implements [`Datastore`](crate::store::Datastore) for a newtype whose `inner` field is an
/// [`Mvcc`].
macro_rules! delegate_datastore {
    ($t:ty) => {
        impl $crate::store::Datastore for $t {
            fn unique_id(&self) -> &str {
                self.inner.unique_id()
            }

            fn head_revision(&self) -> $crate::store::StoreResult<$crate::model::Revision> {
                self.inner.head_revision()
            }

            fn checkpoint(
                &self,
                dir: &std::path::Path,
            ) -> $crate::store::StoreResult<$crate::model::Revision> {
                self.inner.checkpoint(dir)
            }

            fn shared(&self) -> bool {
                self.inner.shared()
            }

            fn refresh(
                &self,
                at_least: Option<$crate::model::Revision>,
            ) -> $crate::store::StoreResult<$crate::model::Revision> {
                self.inner.refresh(at_least)
            }

            fn check_revision(
                &self,
                rev: $crate::model::Revision,
            ) -> $crate::store::StoreResult<()> {
                self.inner.check_revision(rev)
            }

            fn read_schema(
                &self,
                rev: $crate::model::Revision,
            ) -> $crate::store::StoreResult<Option<$crate::store::StoredSchema>> {
                self.inner.read_schema(rev)
            }

            fn query(
                &self,
                rev: $crate::model::Revision,
                filter: &$crate::model::RelationshipFilter,
                after: Option<&$crate::model::RelationshipKey>,
                limit: usize,
                now: $crate::model::Timestamp,
            ) -> $crate::store::StoreResult<$crate::store::Page> {
                self.inner.query(rev, filter, after, limit, now)
            }

            fn query_all(
                &self,
                rev: $crate::model::Revision,
                filter: &$crate::model::RelationshipFilter,
                now: $crate::model::Timestamp,
                out: &mut Vec<$crate::model::Relationship>,
            ) -> $crate::store::StoreResult<()> {
                self.inner.query_all(rev, filter, now, out)
            }

            fn graph_view(
                &self,
                rev: $crate::model::Revision,
                now: $crate::model::Timestamp,
            ) -> $crate::store::StoreResult<Option<$crate::store::GraphView<'_>>> {
                self.inner.graph_view(rev, now)
            }

            fn write_relationships(
                &self,
                preconditions: &[$crate::store::Precondition],
                updates: &[$crate::store::RelationshipUpdate],
                now: $crate::model::Timestamp,
            ) -> $crate::store::StoreResult<$crate::model::Revision> {
                self.inner.write_relationships(preconditions, updates, now)
            }

            fn write_relationships_with_metadata(
                &self,
                preconditions: &[$crate::store::Precondition],
                updates: &[$crate::store::RelationshipUpdate],
                now: $crate::model::Timestamp,
                metadata: Option<&$crate::model::TransactionMetadata>,
            ) -> $crate::store::StoreResult<$crate::model::Revision> {
                self.inner
                    .write_relationships_with_metadata(preconditions, updates, now, metadata)
            }

            fn delete_relationships_with_metadata(
                &self,
                filter: &$crate::model::RelationshipFilter,
                preconditions: &[$crate::store::Precondition],
                limit: Option<u64>,
                allow_partial: bool,
                now: $crate::model::Timestamp,
                metadata: Option<&$crate::model::TransactionMetadata>,
            ) -> $crate::store::StoreResult<$crate::store::DeleteOutcome> {
                self.inner.delete_relationships_with_metadata(
                    filter,
                    preconditions,
                    limit,
                    allow_partial,
                    now,
                    metadata,
                )
            }

            fn subscribe_head(
                &self,
            ) -> $crate::store::StoreResult<tokio::sync::watch::Receiver<$crate::model::Revision>>
            {
                Ok(self.inner.subscribe_head())
            }

            fn read_changes(
                &self,
                after: $crate::model::Revision,
                max_changes: usize,
                max_revision_bytes: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::store::RevisionChanges>> {
                self.inner
                    .read_changes(after, max_changes, max_revision_bytes)
            }

            fn delete_relationships(
                &self,
                filter: &$crate::model::RelationshipFilter,
                preconditions: &[$crate::store::Precondition],
                limit: Option<u64>,
                allow_partial: bool,
                now: $crate::model::Timestamp,
            ) -> $crate::store::StoreResult<$crate::store::DeleteOutcome> {
                self.inner
                    .delete_relationships(filter, preconditions, limit, allow_partial, now)
            }

            fn begin_import(&self) -> $crate::store::StoreResult<u64> {
                self.inner.begin_import()
            }

            fn stage_import(
                &self,
                import: u64,
                relationships: &[$crate::model::Relationship],
            ) -> $crate::store::StoreResult<()> {
                self.inner.stage_import(import, relationships)
            }

            fn commit_import(
                &self,
                import: u64,
                now: $crate::model::Timestamp,
            ) -> $crate::store::StoreResult<($crate::model::Revision, u64)> {
                self.inner.commit_import(import, now)
            }

            fn abort_import(&self, import: u64) -> $crate::store::StoreResult<()> {
                self.inner.abort_import(import)
            }

            fn write_schema(
                &self,
                text: &str,
                orphan_checks: &[$crate::model::OrphanCheck],
                now: $crate::model::Timestamp,
            ) -> $crate::store::StoreResult<$crate::model::Revision> {
                self.inner.write_schema(text, orphan_checks, now)
            }

            fn gc(
                &self,
                now: $crate::model::Timestamp,
                window: std::time::Duration,
            ) -> $crate::store::StoreResult<$crate::store::GcStats> {
                self.inner.gc(now, window)
            }

            fn relationship_counters(&self) -> $crate::store::StoreResult<Vec<(String, Vec<u8>)>> {
                self.inner.relationship_counters()
            }

            fn set_relationship_counter(
                &self,
                name: &str,
                value: Option<&[u8]>,
            ) -> $crate::store::StoreResult<()> {
                self.inner.set_relationship_counter(name, value)
            }

            fn check_writable(&self) -> $crate::store::StoreResult<()> {
                self.inner.check_writable()
            }
        }
    };
}
pub(crate) use delegate_datastore;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_relationship;
    use crate::store::encoding::{BY_SUBJECT, GC_DUE, META};
    use crate::store::{MemoryStore, RocksStore};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    const NOW: Timestamp = Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };

    fn update(op: UpdateOp, s: &str) -> RelationshipUpdate {
        RelationshipUpdate {
            op,
            relationship: parse_relationship(s).unwrap(),
        }
    }

    #[test]
    fn both_indexes_hold_the_same_versions_and_gc_cleans_both() {
        let ds = MemoryStore::new();
        let m = &ds.inner;
        let (a, b) = (
            "document:a#viewer@user:ann",
            "document:b#viewer@group:eng#member",
        );
        m.write_relationships(
            &[],
            &[update(UpdateOp::Create, a), update(UpdateOp::Create, b)],
            NOW,
        )
        .unwrap();
        let b_expiring = format!("{b}[expiration:2100-01-01T00:00:00Z]");
        m.write_relationships(&[], &[update(UpdateOp::Touch, &b_expiring)], NOW)
            .unwrap();
        m.write_relationships(&[], &[update(UpdateOp::Delete, a)], NOW)
            .unwrap();
        m.write_schema("s1", &[], NOW).unwrap();
        m.write_schema("s2", &[], NOW).unwrap();
        assert_eq!(m.raw_count(BY_RESOURCE).unwrap(), 3);
        assert_eq!(m.raw_count(BY_SUBJECT).unwrap(), 3);
        assert_eq!(m.raw_count(REV_TIME).unwrap(), 5);
        assert_eq!(m.raw_count(SCHEMA).unwrap(), 2);
        // A `gc-due` entry per deleted version and per expiring one.
        assert_eq!(m.raw_count(GC_DUE).unwrap(), 3);
        let stats = m.gc(NOW, Duration::ZERO).unwrap();
        assert_eq!(
            (stats.relationships, stats.schemas, stats.horizon),
            (2, 1, Revision(5))
        );
        assert_eq!(m.raw_count(BY_RESOURCE).unwrap(), 1);
        assert_eq!(m.raw_count(BY_SUBJECT).unwrap(), 1);
        assert_eq!(m.raw_count(REV_TIME).unwrap(), 1);
        assert_eq!(m.raw_count(SCHEMA).unwrap(), 1);
        assert_eq!(m.raw_count(META).unwrap(), 5);
        // The expiration in 2100 is not due yet.
        assert_eq!(m.raw_count(GC_DUE).unwrap(), 1);
    }

    /// A store written before the `gc-due` keyspace existed gets it at its first open, and its
    /// old garbage is then collected.
    #[test]
    fn rocks_format_1_store_is_upgraded_and_its_garbage_collected() {
        let dir = tempfile::tempdir().unwrap();
        let a = "document:a#viewer@user:ann";
        {
            let ds = RocksStore::open(dir.path()).unwrap();
            let m = &ds.inner;
            m.write_relationships(&[], &[update(UpdateOp::Create, a)], NOW)
                .unwrap();
            m.write_relationships(&[], &[update(UpdateOp::Delete, a)], NOW)
                .unwrap();
            // Back to format 1: no `gc-due` entries.
            let mut batch = Batch::default();
            m.kv.scan(&[GC_DUE], Some(&[GC_DUE + 1]), &mut |k, _| {
                batch.delete(k.to_vec());
                Ok(true)
            })
            .unwrap();
            batch.put(
                encoding::meta_key(META_FORMAT),
                encoding::FORMAT_VERSION_NO_GC_DUE.to_be_bytes().to_vec(),
            );
            m.kv.commit(batch).unwrap();
            assert_eq!(m.raw_count(GC_DUE).unwrap(), 0);
        }
        let ds = RocksStore::open(dir.path()).unwrap();
        let m = &ds.inner;
        assert_eq!(
            m.kv.get(&encoding::meta_key(META_FORMAT)).unwrap(),
            Some(FORMAT_VERSION.to_be_bytes().to_vec())
        );
        assert_eq!(m.raw_count(GC_DUE).unwrap(), 1);
        let stats = m.gc(NOW, Duration::ZERO).unwrap();
        assert_eq!(stats.relationships, 1);
        assert_eq!(m.raw_count(BY_RESOURCE).unwrap(), 0);
        assert_eq!(m.raw_count(GC_DUE).unwrap(), 0);
    }

    /// A store written before the change log existed gets it at its first open: the log
    /// starts at the head, so a watch from before it is refused and one from the head works.
    #[test]
    fn rocks_format_2_store_starts_its_change_log_at_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let a = "document:a#viewer@user:ann";
        let head = {
            let ds = RocksStore::open(dir.path()).unwrap();
            let m = &ds.inner;
            m.write_relationships(&[], &[update(UpdateOp::Create, a)], NOW)
                .unwrap();
            // Back to format 2: no change log.
            let mut batch = Batch::default();
            m.kv.scan(&[CHANGES], Some(&[CHANGES + 1]), &mut |k, _| {
                batch.delete(k.to_vec());
                Ok(true)
            })
            .unwrap();
            batch.delete(encoding::meta_key(META_LOG_START));
            batch.put(
                encoding::meta_key(META_FORMAT),
                encoding::FORMAT_VERSION_NO_CHANGES.to_be_bytes().to_vec(),
            );
            m.kv.commit(batch).unwrap();
            m.head_revision().unwrap()
        };
        let ds = RocksStore::open(dir.path()).unwrap();
        let m = &ds.inner;
        assert_eq!(
            m.kv.get(&encoding::meta_key(META_FORMAT)).unwrap(),
            Some(FORMAT_VERSION.to_be_bytes().to_vec())
        );
        assert!(matches!(
            m.read_changes(Revision::ZERO, 10, usize::MAX),
            Err(StoreError::ChangesUnavailable { oldest, .. }) if oldest == head
        ));
        assert!(m.read_changes(head, 10, usize::MAX).unwrap().is_empty());
        let next = m
            .write_relationships(&[], &[update(UpdateOp::Delete, a)], NOW)
            .unwrap();
        let log = m.read_changes(head, 10, usize::MAX).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].revision, next);
        assert_eq!(log[0].changes.len(), 1);
        drop(ds);
        // The start is kept across opens.
        let ds = RocksStore::open(dir.path()).unwrap();
        assert!(
            ds.inner
                .read_changes(Revision::ZERO, 10, usize::MAX)
                .is_err()
        );
        assert_eq!(
            ds.inner.read_changes(head, 10, usize::MAX).unwrap().len(),
            1
        );
    }

    fn live_texts(ds: &crate::store::RocksStore, rev: Revision) -> Vec<String> {
        let all = RelationshipFilter {
            resource_type: Some("document".into()),
            ..RelationshipFilter::default()
        };
        let mut v: Vec<String> = ds
            .inner
            .query(rev, &all, None, 100, NOW)
            .unwrap()
            .relationships
            .iter()
            .map(ToString::to_string)
            .collect();
        v.sort();
        v
    }

    /// The gauge of stored relationships follows imports as it follows writes.
    #[test]
    fn imports_are_counted_as_stored_relationships() {
        let ds = MemoryStore::new();
        let m = &ds.inner;
        m.write_relationships(
            &[],
            &[update(UpdateOp::Create, "document:a#viewer@user:ann")],
            NOW,
        )
        .unwrap();
        let import = m.begin_import().unwrap();
        let rels: Vec<Relationship> = ["document:b#viewer@user:bob", "document:c#viewer@user:cid"]
            .iter()
            .map(|s| parse_relationship(s).unwrap())
            .collect();
        m.stage_import(import, &rels).unwrap();
        m.commit_import(import, NOW).unwrap();
        assert_eq!(m.live.load(Ordering::Relaxed), 3);
    }

    /// A crash in the middle of an import's commit leaves versions past the head on disk; the
    /// next open removes them, so the next write's revision does not make them visible.
    #[test]
    fn rocks_interrupted_import_is_rolled_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ds = RocksStore::open(dir.path()).unwrap();
            ds.inner
                .write_relationships(
                    &[],
                    &[update(UpdateOp::Create, "document:a#viewer@user:ann")],
                    NOW,
                )
                .unwrap();
            let head = ds.inner.head_revision().unwrap().0;
            // What a commit writes before it publishes: a new version past the head, and an
            // older live version closed past the head.
            let mut batch = Batch::default();
            let k = parse_relationship("document:b#viewer@user:bob")
                .unwrap()
                .key();
            let v = encoding::VersionValue {
                created: head + 1,
                deleted: encoding::LIVE,
                caveat: None,
                expires_at: None,
            };
            let enc = v.encode().unwrap();
            batch.put(
                encoding::version_key(Index::ByResource, &k, head + 1),
                enc.clone(),
            );
            batch.put(encoding::version_key(Index::BySubject, &k, head + 1), enc);
            let a = parse_relationship("document:a#viewer@user:ann")
                .unwrap()
                .key();
            let closed = encoding::VersionValue {
                created: head,
                deleted: head + 1,
                caveat: None,
                expires_at: None,
            };
            let enc = closed.encode().unwrap();
            batch.put(
                encoding::version_key(Index::ByResource, &a, head),
                enc.clone(),
            );
            batch.put(encoding::version_key(Index::BySubject, &a, head), enc);
            batch.put(encoding::staged_key(7, &k), v.encode().unwrap());
            // And its change-log entries, written with the chunks.
            put_change(&mut batch, head + 1, &k, CHANGE_TOUCH, &v).unwrap();
            put_change(&mut batch, head + 1, &a, CHANGE_DELETE, &closed).unwrap();
            ds.inner.kv.commit(batch).unwrap();
        }
        let ds = RocksStore::open(dir.path()).unwrap();
        let before = ds.inner.head_revision().unwrap();
        let next = ds
            .inner
            .write_relationships(
                &[],
                &[update(UpdateOp::Create, "document:c#viewer@user:cid")],
                NOW,
            )
            .unwrap();
        assert_eq!(
            live_texts(&ds, next),
            ["document:a#viewer@user:ann", "document:c#viewer@user:cid"]
        );
        // The metrics gauge counts what is live after the repair, not what was on disk.
        assert_eq!(ds.inner.live.load(Ordering::Relaxed), 2);
        let mut staged = 0;
        ds.inner
            .kv
            .scan(
                &[encoding::STAGED],
                Some(&[encoding::STAGED + 1]),
                &mut |_, _| {
                    staged += 1;
                    Ok(true)
                },
            )
            .unwrap();
        assert_eq!(staged, 0);
        // The change log of the next revision (which reuses the interrupted one's number)
        // holds only its own change.
        let log = ds.inner.read_changes(before, 10, usize::MAX).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].revision, next);
        let changed: Vec<String> = log[0]
            .changes
            .iter()
            .map(|c| format!("{:?} {}", c.op, c.relationship))
            .collect();
        assert_eq!(changed, ["Touch document:c#viewer@user:cid"]);
        drop(ds);
        // And the repair itself was durable.
        let ds = RocksStore::open(dir.path()).unwrap();
        assert_eq!(live_texts(&ds, next).len(), 2);
    }

    #[test]
    fn touching_an_unchanged_relationship_adds_no_version() {
        let ds = MemoryStore::new();
        let m = &ds.inner;
        let a = "document:a#viewer@user:ann";
        let first = m
            .write_relationships(&[], &[update(UpdateOp::Create, a)], NOW)
            .unwrap();
        for _ in 0..1000 {
            m.write_relationships(&[], &[update(UpdateOp::Touch, a)], NOW)
                .unwrap();
        }
        assert_eq!(m.raw_count(BY_RESOURCE).unwrap(), 1);
        assert_eq!(m.raw_count(BY_SUBJECT).unwrap(), 1);
        // Still one relationship, visible from its creation on.
        let all = RelationshipFilter {
            resource_type: Some("document".into()),
            ..RelationshipFilter::default()
        };
        for rev in [first, m.head_revision().unwrap()] {
            let page = m.query(rev, &all, None, 10, NOW).unwrap();
            assert_eq!(page.relationships.len(), 1);
        }
        // A TOUCH that changes something is a new version, as before.
        let changed = format!("{a}[expiration:2100-01-01T00:00:00Z]");
        m.write_relationships(&[], &[update(UpdateOp::Touch, &changed)], NOW)
            .unwrap();
        assert_eq!(m.raw_count(BY_RESOURCE).unwrap(), 2);
    }

    #[test]
    fn gc_commits_in_bounded_batches() {
        let ds = MemoryStore::new();
        let m = &ds.inner;
        let n = GC_BATCH + 7;
        let creates: Vec<RelationshipUpdate> = (0..n)
            .map(|i| update(UpdateOp::Create, &format!("document:d{i}#viewer@user:u{i}")))
            .collect();
        m.write_relationships(&[], &creates, NOW).unwrap();
        let deletes: Vec<RelationshipUpdate> = creates
            .iter()
            .map(|u| RelationshipUpdate {
                op: UpdateOp::Delete,
                relationship: u.relationship.clone(),
            })
            .collect();
        m.write_relationships(&[], &deletes, NOW).unwrap();
        let stats = m.gc(NOW, Duration::ZERO).unwrap();
        assert_eq!(stats.relationships, u64::try_from(n).unwrap());
        assert_eq!(m.raw_count(BY_RESOURCE).unwrap(), 0);
        assert_eq!(m.raw_count(BY_SUBJECT).unwrap(), 0);
    }

    #[test]
    fn time_minus_borrows_nanos_and_saturates() {
        let t = Timestamp {
            seconds: 10,
            nanos: 100,
        };
        assert_eq!(
            time_minus(t, Duration::from_nanos(200)),
            Timestamp {
                seconds: 9,
                nanos: 999_999_900
            }
        );
        assert_eq!(time_minus(t, Duration::ZERO), t);
        assert_eq!(time_minus(t, Duration::MAX).seconds, i64::MIN);
    }

    /// A map whose commits fail (as on a full disk) while `fail` is set, or from the
    /// `fail_from`-th commit on, or at the `fail_at`-th commit only (counted from 1).
    struct FlakyKv<K: Kv = crate::store::memory::MemoryKv> {
        inner: Arc<K>,
        fail: AtomicBool,
        fail_from: AtomicU64,
        fail_at: AtomicU64,
        commits: AtomicU64,
        /// reads fail too (as with the database away)
        fail_reads: AtomicBool,
        /// scans fail from the `fail_scans_from`-th on (counted in `scans`, from 1)
        fail_scans_from: AtomicU64,
        scans: AtomicU64,
        /// for maps shared by several nodes (as PostgreSQL nodes share a database): the one
        /// writer at a time across them
        writers: Option<Arc<(Mutex<bool>, Condvar)>>,
    }

    impl<K: Kv> FlakyKv<K> {
        fn new(inner: K) -> FlakyKv<K> {
            FlakyKv::with(Arc::new(inner), None)
        }

        fn with(inner: Arc<K>, writers: Option<Arc<(Mutex<bool>, Condvar)>>) -> FlakyKv<K> {
            FlakyKv {
                inner,
                fail: AtomicBool::new(false),
                fail_from: AtomicU64::new(u64::MAX),
                fail_at: AtomicU64::new(u64::MAX),
                commits: AtomicU64::new(0),
                fail_reads: AtomicBool::new(false),
                fail_scans_from: AtomicU64::new(u64::MAX),
                scans: AtomicU64::new(0),
                writers,
            }
        }

        /// Another node on the map `other` shares, with commits failing on their own.
        fn node_of(other: &FlakyKv<K>) -> FlakyKv<K> {
            FlakyKv::with(Arc::clone(&other.inner), other.writers.clone())
        }

        fn attempt(&self) -> StoreResult<()> {
            let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail.load(Ordering::SeqCst)
                || n >= self.fail_from.load(Ordering::SeqCst)
                || n == self.fail_at.load(Ordering::SeqCst)
            {
                return Err(StoreError::Engine("No space left on device".into()));
            }
            Ok(())
        }
    }

    impl Default for FlakyKv {
        fn default() -> Self {
            FlakyKv::new(crate::store::memory::MemoryKv::default())
        }
    }

    impl FlakyKv {
        /// The first node on a new map that several nodes share.
        fn shared() -> FlakyKv {
            FlakyKv::with(Arc::default(), Some(Arc::default()))
        }
    }

    impl<K: Kv> Kv for FlakyKv<K> {
        fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
            if self.fail_reads.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            self.inner.get(key)
        }

        fn scan(
            &self,
            start: &[u8],
            end: Option<&[u8]>,
            f: &mut crate::store::kv::ScanFn<'_>,
        ) -> StoreResult<()> {
            let n = self.scans.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.fail_scans_from.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            self.inner.scan(start, end, f)
        }

        fn commit(&self, batch: Batch) -> StoreResult<()> {
            self.attempt()?;
            self.inner.commit(batch)
        }

        fn commit_unsynced(&self, batch: Batch) -> StoreResult<()> {
            self.attempt()?;
            self.inner.commit_unsynced(batch)
        }

        fn shared(&self) -> bool {
            self.writers.is_some()
        }

        fn lock_writers(&self) -> StoreResult<()> {
            if let Some(w) = &self.writers {
                let (held, cv) = &**w;
                let mut held = held.lock().unwrap();
                while *held {
                    held = cv.wait(held).unwrap();
                }
                *held = true;
            }
            Ok(())
        }

        fn unlock_writers(&self) {
            if let Some(w) = &self.writers {
                let (held, cv) = &**w;
                *held.lock().unwrap() = false;
                cv.notify_all();
            }
        }
    }

    /// `n` relationships on one wide resource, `document:big#viewer`, written in a few
    /// transactions; returns the head after them.
    fn write_wide(m: &Mvcc<impl Kv>, n: usize) -> Revision {
        let creates: Vec<RelationshipUpdate> = (0..n)
            .map(|i| update(UpdateOp::Create, &format!("document:big#viewer@user:u{i}")))
            .collect();
        let mut head = Revision(0);
        for chunk in creates.chunks(1000) {
            head = m.write_relationships(&[], chunk, NOW).unwrap();
        }
        head
    }

    fn big() -> RelationshipFilter {
        RelationshipFilter {
            resource_type: Some("document".into()),
            resource_id: Some("big".into()),
            relation: Some("viewer".into()),
            ..RelationshipFilter::default()
        }
    }

    /// How many relationships `m` shows at `rev` on `document:big#viewer`, through the graph
    /// (the engine's path) and through the key-value indexes (checked to agree).
    fn visible_big(m: &Mvcc<impl Kv>, rev: Revision) -> usize {
        let mut from_graph = Vec::new();
        m.query_all(rev, &big(), NOW, &mut from_graph).unwrap();
        // A prefix is not answered by the graph: a scan of the by-resource index.
        let by_prefix = RelationshipFilter {
            resource_type: Some("document".into()),
            resource_id_prefix: Some("big".into()),
            ..RelationshipFilter::default()
        };
        let mut scanned = 0;
        m.scan_visible(rev.0, &by_prefix, None, NOW, &mut |_| {
            scanned += 1;
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            from_graph.len(),
            scanned,
            "graph and indexes differ at {rev:?}"
        );
        let view = m.graph_view(rev, NOW).unwrap().unwrap();
        let (t, id, rel) = (
            view.sym("document").unwrap(),
            view.sym("big").unwrap(),
            view.sym("viewer").unwrap(),
        );
        assert_eq!(view.subjects(t, id, rel).count(), scanned);
        scanned
    }

    /// A delete by filter of more than one chunk writes several batches (the old one-batch
    /// delete held every match in memory at once), and still deletes at one revision.
    #[test]
    fn a_large_delete_commits_in_several_batches_at_one_revision() {
        let m = Mvcc::fresh(|b| {
            let kv = FlakyKv::default();
            kv.inner.commit(b).unwrap();
            kv
        });
        let n = 2 * DELETE_CHUNK + 500;
        let before = write_wide(&m, n);
        let commits = m.kv.commits.load(Ordering::SeqCst);
        let out = m
            .delete_relationships(&big(), &[], None, false, NOW)
            .unwrap();
        let batches = m.kv.commits.load(Ordering::SeqCst) - commits;
        assert_eq!(
            batches, 3,
            "one batch per chunk, the last with the revision"
        );
        assert_eq!(out.revision, before.next());
        assert_eq!(out.deleted, u64::try_from(n).unwrap());
        assert_eq!(m.head_revision().unwrap(), out.revision);
        assert_eq!(visible_big(&m, before), n);
        assert_eq!(visible_big(&m, out.revision), 0);
        assert_eq!(m.live.load(Ordering::Relaxed), 0);
        // Every closed version is due for GC at the delete's revision.
        assert_eq!(m.raw_count(GC_DUE).unwrap(), n);
        let stats = m.gc(NOW, Duration::ZERO).unwrap();
        assert_eq!(stats.relationships, u64::try_from(n).unwrap());
        assert_eq!(m.raw_count(BY_RESOURCE).unwrap(), 0);
    }

    /// A chunk that fails to commit in the middle of a delete: the chunks before it are
    /// rolled back at once, nothing is deleted, and the store goes on writing.
    #[test]
    fn a_delete_failing_in_a_middle_chunk_is_rolled_back() {
        let m = Mvcc::fresh(|b| {
            let kv = FlakyKv::default();
            kv.inner.commit(b).unwrap();
            kv
        });
        let n = 3 * DELETE_CHUNK + 10;
        let before = write_wide(&m, n);
        let commits = m.kv.commits.load(Ordering::SeqCst);
        m.kv.fail_at.store(commits + 2, Ordering::SeqCst);
        assert!(
            m.delete_relationships(&big(), &[], None, false, NOW)
                .is_err()
        );
        assert_eq!(m.head_revision().unwrap(), before);
        assert_eq!(visible_big(&m, before), n);
        assert_eq!(m.raw_count(GC_DUE).unwrap(), 0, "no gc-due entry is left");
        assert_eq!(m.live.load(Ordering::Relaxed), signed(n as u64));
        m.check_writable().unwrap();
        // The revision is used by the next write, which sees everything still live.
        let out = m
            .delete_relationships(&big(), &[], None, false, NOW)
            .unwrap();
        assert_eq!(out.revision, before.next());
        assert_eq!(visible_big(&m, before), n);
        assert_eq!(visible_big(&m, out.revision), 0);
    }

    /// The process dies (here: every commit fails) between two chunks of a delete: the store
    /// shows readers of the head everything meanwhile, refuses writes, and the next open
    /// rolls the delete back entirely.
    #[test]
    fn rocks_delete_interrupted_between_chunks_is_rolled_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * DELETE_CHUNK + 10;
        let before = {
            let m = Mvcc::open(FlakyKv::new(
                crate::store::rocks::RocksKv::open(dir.path()).unwrap(),
            ))
            .unwrap();
            let before = write_wide(&m, n);
            let commits = m.kv.commits.load(Ordering::SeqCst);
            m.kv.fail_from.store(commits + 3, Ordering::SeqCst);
            assert!(
                m.delete_relationships(&big(), &[], None, false, NOW)
                    .is_err()
            );
            assert_eq!(m.head_revision().unwrap(), before);
            // Two chunks are on disk and in the graph, closed above the head: invisible.
            let mut closed = 0;
            m.kv.scan(&[BY_RESOURCE], Some(&[BY_RESOURCE + 1]), &mut |_, v| {
                if encoding::peek_deleted(v)? == before.0 + 1 {
                    closed += 1;
                }
                Ok(true)
            })
            .unwrap();
            assert_eq!(closed, 2 * DELETE_CHUNK);
            assert_eq!(visible_big(&m, before), n);
            assert!(
                m.write_relationships(
                    &[],
                    &[update(UpdateOp::Create, "document:x#viewer@user:x")],
                    NOW
                )
                .is_err()
            );
            before
        };
        let ds = RocksStore::open(dir.path()).unwrap();
        let m = &ds.inner;
        assert_eq!(m.head_revision().unwrap(), before);
        assert_eq!(visible_big(m, before), n);
        assert_eq!(
            m.raw_count(GC_DUE).unwrap(),
            0,
            "stale gc-due entries are gone"
        );
        assert_eq!(m.live.load(Ordering::Relaxed), signed(n as u64));
        let next = m
            .write_relationships(
                &[],
                &[update(UpdateOp::Create, "document:x#viewer@user:x")],
                NOW,
            )
            .unwrap();
        assert_eq!(next, before.next());
        assert_eq!(visible_big(m, next), n);
        let out = m
            .delete_relationships(&big(), &[], None, false, NOW)
            .unwrap();
        assert_eq!(visible_big(m, out.revision), 0);
        assert_eq!(visible_big(m, next), n);
    }

    /// A node on `kv`, with its follower thread (as `PostgresStore::open` starts one).
    fn shared_node(kv: FlakyKv) -> Arc<Mvcc<FlakyKv>> {
        let mut m = Mvcc::open(kv).unwrap();
        m.set_revision_wait(Duration::from_secs(10));
        let node = Arc::new(m);
        let weak = Arc::downgrade(&node);
        std::thread::spawn(move || Mvcc::follow(&weak, Duration::from_secs(3600)));
        node
    }

    fn texts(m: &Mvcc<impl Kv>, rev: Revision, now: Timestamp) -> Vec<String> {
        let mut out = Vec::new();
        let all = RelationshipFilter {
            resource_type: Some("document".into()),
            ..RelationshipFilter::default()
        };
        m.scan_visible(rev.0, &all, None, now, &mut |f| {
            out.push(f.rel.to_string());
            Ok(true)
        })
        .unwrap();
        // The graph (the engine's path) agrees with the stored indexes.
        for r in &out {
            let rel = parse_relationship(r).unwrap();
            let mut found = Vec::new();
            let one = RelationshipFilter {
                resource_type: Some(rel.resource.object_type.clone()),
                resource_id: Some(rel.resource.object_id.clone()),
                relation: Some(rel.relation.clone()),
                ..RelationshipFilter::default()
            };
            m.query_all(rev, &one, now, &mut found).unwrap();
            assert!(
                found.iter().any(|f| f.key() == rel.key()),
                "{r} not in the graph"
            );
        }
        let mut from_graph = 0;
        for id in ["a", "b", "c", "d", "big"] {
            let mut found = Vec::new();
            let f = RelationshipFilter {
                resource_type: Some("document".into()),
                resource_id: Some(id.into()),
                relation: Some("viewer".into()),
                ..RelationshipFilter::default()
            };
            m.query_all(rev, &f, now, &mut found).unwrap();
            from_graph += found.len();
        }
        assert_eq!(from_graph, out.len(), "graph and indexes differ at {rev:?}");
        out.sort();
        out
    }

    /// Two nodes on one shared map: each sees the other's writes once it has the revision
    /// (relationships, deletions, a silent close of an expired relationship, imports, deletes
    /// by filter, the schema); two creates of one tuple give one `AlreadyExists`; both serve
    /// the same change log.
    #[test]
    fn nodes_sharing_a_datastore_see_each_others_writes() {
        let first = FlakyKv::shared();
        let second = FlakyKv::node_of(&first);
        let a = shared_node(first);
        let b = shared_node(second);
        assert_eq!(a.unique_id(), b.unique_id());
        let r1 = a
            .write_relationships(
                &[],
                &[update(UpdateOp::Create, "document:a#viewer@user:ann")],
                NOW,
            )
            .unwrap();
        assert_eq!(b.head_revision().unwrap(), Revision(0), "no catch-up yet");
        assert_eq!(b.refresh(Some(r1)).unwrap(), r1);
        assert_eq!(texts(&b, r1, NOW), ["document:a#viewer@user:ann"]);

        // A write on b catches up first: it sees a's relationship.
        let dup = b.write_relationships(
            &[],
            &[update(UpdateOp::Create, "document:a#viewer@user:ann")],
            NOW,
        );
        assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");
        let s2 = b.write_schema("definition user {}", &[], NOW).unwrap();
        assert_eq!(a.refresh(None).unwrap(), s2);
        assert_eq!(
            a.read_schema(s2).unwrap().unwrap().text,
            "definition user {}"
        );
        assert_eq!(a.read_schema(r1).unwrap(), None);

        // Both create one tuple at once: one wins, the other finds it.
        let (ra, rb) = std::thread::scope(|s| {
            let x = s.spawn(|| {
                a.write_relationships(
                    &[],
                    &[update(UpdateOp::Create, "document:b#viewer@user:bob")],
                    NOW,
                )
            });
            let y = s.spawn(|| {
                b.write_relationships(
                    &[],
                    &[update(UpdateOp::Create, "document:b#viewer@user:bob")],
                    NOW,
                )
            });
            (x.join().unwrap(), y.join().unwrap())
        });
        assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
        assert!(matches!(
            ra.as_ref().err().or(rb.as_ref().err()),
            Some(StoreError::AlreadyExists(_))
        ));

        // An expired relationship deleted on a: its version ends on b too (read with a clock
        // from before it expired, it is gone after the delete).
        let earlier = Timestamp {
            seconds: NOW.seconds - 7200,
            nanos: 0,
        };
        let lapsed = "document:c#viewer@user:cid[expiration:2023-11-14T21:13:20Z]";
        let before = a
            .write_relationships(&[], &[update(UpdateOp::Touch, lapsed)], NOW)
            .unwrap();
        let gone = a
            .write_relationships(
                &[],
                &[update(UpdateOp::Delete, "document:c#viewer@user:cid")],
                NOW,
            )
            .unwrap();
        assert_eq!(b.refresh(Some(gone)).unwrap(), gone);
        for node in [&a, &b] {
            assert!(
                texts(node, before, earlier)
                    .iter()
                    .any(|t| t.starts_with("document:c#viewer@user:cid"))
            );
            assert!(
                !texts(node, gone, earlier)
                    .iter()
                    .any(|t| t.starts_with("document:c"))
            );
        }

        // An import on b, a delete by filter on a (more than one chunk each).
        let import = b.begin_import().unwrap();
        let rels: Vec<Relationship> = (0..DELETE_CHUNK + 10)
            .map(|i| parse_relationship(&format!("document:big#viewer@user:u{i}")).unwrap())
            .collect();
        b.stage_import(import, &rels).unwrap();
        let (imported, n) = b.commit_import(import, NOW).unwrap();
        assert_eq!(n, rels.len() as u64);
        assert_eq!(a.refresh(Some(imported)).unwrap(), imported);
        assert_eq!(visible_big(&a, imported), rels.len());
        let deleted = a
            .delete_relationships(&big(), &[], None, false, NOW)
            .unwrap();
        assert_eq!(deleted.deleted, rels.len() as u64);
        assert_eq!(b.refresh(Some(deleted.revision)).unwrap(), deleted.revision);
        assert_eq!(visible_big(&b, deleted.revision), 0);
        assert_eq!(visible_big(&b, imported), rels.len());

        // The same answers and the same change log on both, at every revision.
        let head = deleted.revision;
        for r in 1..=head.0 {
            assert_eq!(
                texts(&a, Revision(r), NOW),
                texts(&b, Revision(r), NOW),
                "at {r}"
            );
        }
        let log = |m: &Mvcc<FlakyKv>| m.read_changes(Revision(0), usize::MAX, usize::MAX).unwrap();
        assert_eq!(log(&a), log(&b));
        // The silent close is not a change Watch shows.
        let at_gone = log(&b).into_iter().find(|c| c.revision == gone).unwrap();
        assert!(at_gone.changes.is_empty(), "{at_gone:?}");
        assert_eq!(
            a.live.load(Ordering::Relaxed),
            b.live.load(Ordering::Relaxed)
        );

        // A token past the datastore's head is not waited for.
        assert_eq!(b.refresh(Some(Revision(head.0 + 5))).unwrap(), head);
        // GC on a removes versions from the map; b's own pass drops them from its graph.
        a.gc(NOW, Duration::ZERO).unwrap();
        b.gc(NOW, Duration::ZERO).unwrap();
        let key = parse_relationship("document:big#viewer@user:u0")
            .unwrap()
            .key();
        assert_eq!(a.graph.newest_version(&key), None);
        assert_eq!(b.graph.newest_version(&key), None);
        assert_eq!(
            b.horizon.load(Ordering::Relaxed),
            a.horizon.load(Ordering::Relaxed)
        );
    }

    /// A catch-up cut off between two chunks of one revision (the datastore failed) leaves
    /// nothing of it in the graph: the next one replays it whole, and counts it once.
    #[test]
    fn a_replay_cut_off_midway_is_replayed_whole() {
        let first = FlakyKv::shared();
        let second = FlakyKv::node_of(&first);
        let a = shared_node(first);
        let mut m = Mvcc::open(second).unwrap();
        m.set_revision_wait(Duration::from_millis(200));
        let b = Arc::new(m);
        let weak = Arc::downgrade(&b);
        std::thread::spawn(move || Mvcc::follow(&weak, Duration::from_secs(3600)));
        // One revision of more than one replay chunk.
        let n = REPLAY_CHUNK + 500;
        let import = a.begin_import().unwrap();
        let rels: Vec<Relationship> = (0..n)
            .map(|i| parse_relationship(&format!("document:big#viewer@user:u{i}")).unwrap())
            .collect();
        a.stage_import(import, &rels).unwrap();
        let (rev, _) = a.commit_import(import, NOW).unwrap();
        // b's first scan of the log succeeds, its second fails.
        let scans = b.kv.scans.load(Ordering::SeqCst);
        b.kv.fail_scans_from.store(scans + 2, Ordering::SeqCst);
        assert!(b.refresh(Some(rev)).is_err());
        assert_eq!(b.head_revision().unwrap(), Revision(0));
        b.kv.fail_scans_from.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(b.refresh(Some(rev)).unwrap(), rev);
        assert_eq!(visible_big(&*b, rev), n);
        assert_eq!(texts(&b, rev, NOW), texts(&a, rev, NOW));
        assert_eq!(
            a.live.load(Ordering::Relaxed),
            b.live.load(Ordering::Relaxed)
        );
        let key = parse_relationship("document:big#viewer@user:u0")
            .unwrap()
            .key();
        let newest = b.graph.newest_version(&key).unwrap();
        assert_eq!(b.graph.newest_version_before(&key, newest.created), None);
    }

    /// A node that cannot follow the datastore for longer than a read would wait says so to
    /// health checks, and serves again once it follows.
    #[test]
    fn a_node_that_cannot_follow_is_not_serving() {
        let mut m = Mvcc::open(FlakyKv::shared()).unwrap();
        m.set_revision_wait(Duration::from_millis(50));
        let node = Arc::new(m);
        let weak = Arc::downgrade(&node);
        std::thread::spawn(move || Mvcc::follow(&weak, Duration::from_millis(10)));
        let serving = |node: &Mvcc<FlakyKv>| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while node.check_writable().is_err() {
                assert!(Instant::now() < deadline, "never serving");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        serving(&node);
        node.kv.fail_reads.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        let refused = node.check_writable();
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        node.kv.fail_reads.store(false, Ordering::SeqCst);
        serving(&node);
    }

    /// A node that dies between the chunks of a delete (its connection lost) leaves versions
    /// closed past the head: the next writer, on another node, opens them again before its
    /// own revision could show them deleted.
    #[test]
    fn the_next_writer_rolls_back_what_a_dead_writer_left() {
        let first = FlakyKv::shared();
        let second = FlakyKv::node_of(&first);
        let a = shared_node(first);
        let n = DELETE_CHUNK + 10;
        let before = write_wide(&*a, n);
        // The first chunk commits; every commit after it fails, the rollback's too.
        let commits = a.kv.commits.load(Ordering::SeqCst);
        a.kv.fail_from.store(commits + 2, Ordering::SeqCst);
        assert!(
            a.delete_relationships(&big(), &[], None, false, NOW)
                .is_err()
        );
        assert!(
            a.kv.get(&encoding::meta_key(META_PENDING))
                .unwrap()
                .is_some()
        );
        // Its graph holds nothing of the chunk, so it need not wait for a restart.
        assert_ne!(a.write_state.get(), WriteState::NeedsRepair);
        assert_eq!(visible_big(&*a, before), n);

        let b = shared_node(second);
        assert_eq!(visible_big(&*b, before), n);
        let next = b
            .write_relationships(
                &[],
                &[update(UpdateOp::Create, "document:a#viewer@user:ann")],
                NOW,
            )
            .unwrap();
        assert_eq!(
            visible_big(&*b, next),
            n,
            "the dead writer's delete is rolled back"
        );
        assert!(
            b.kv.get(&encoding::meta_key(META_PENDING))
                .unwrap()
                .is_none()
        );
        // The node whose write failed replays the next revision and still sees every one.
        assert_eq!(a.refresh(Some(next)).unwrap(), next);
        assert_eq!(visible_big(&*a, next), n);
        // Its connection back, it writes again (a chunked delete, replayed from the log).
        a.kv.fail_from.store(u64::MAX, Ordering::SeqCst);
        let emptied = a
            .delete_relationships(&big(), &[], None, false, NOW)
            .unwrap();
        assert_eq!(emptied.deleted, n as u64);
        assert_eq!(visible_big(&*a, emptied.revision), 0);
        assert_eq!(visible_big(&*a, next), n);
        assert_eq!(b.refresh(Some(emptied.revision)).unwrap(), emptied.revision);
        assert_eq!(visible_big(&*b, emptied.revision), 0);
        assert_eq!(
            a.live.load(Ordering::Relaxed),
            b.live.load(Ordering::Relaxed)
        );
        // A node opened now agrees.
        let c = shared_node(FlakyKv::node_of(&b.kv));
        assert_eq!(visible_big(&*c, next), n);
        assert_eq!(texts(&c, next, NOW), texts(&b, next, NOW));
        assert_eq!(
            texts(&c, emptied.revision, NOW),
            texts(&a, emptied.revision, NOW)
        );
    }

    /// A delete whose rollback fails too leaves the store needing repair: writes are refused
    /// and health says so, even once the disk works again, until a restart.
    #[test]
    fn a_store_needing_repair_refuses_writes_and_fails_health_until_restart() {
        let m = Mvcc::fresh(|b| {
            let kv = FlakyKv::default();
            kv.inner.commit(b).unwrap();
            kv
        });
        let n = 2 * DELETE_CHUNK + 1;
        let before = write_wide(&m, n);
        assert_eq!(m.write_state.get(), WriteState::Writable);
        let commits = m.kv.commits.load(Ordering::SeqCst);
        m.kv.fail_from.store(commits + 2, Ordering::SeqCst);
        let err = m
            .delete_relationships(&big(), &[], None, false, NOW)
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Unwritable {
                    cause: WriteFailure::DiskFull,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(m.write_state.get(), WriteState::NeedsRepair);
        // The disk works again: still refused, and health still says so.
        m.kv.fail_from.store(u64::MAX, Ordering::SeqCst);
        let refused = |r: StoreResult<()>| {
            matches!(
                r,
                Err(StoreError::Unwritable {
                    cause: WriteFailure::NeedsRepair,
                    ..
                })
            )
        };
        assert!(refused(m.check_writable()));
        assert!(refused(
            m.write_relationships(
                &[],
                &[update(UpdateOp::Create, "document:x#viewer@user:x")],
                NOW
            )
            .map(|_| ())
        ));
        assert!(refused(m.write_schema("s", &[], NOW).map(|_| ())));
        assert_eq!(m.head_revision().unwrap(), before);
        assert_eq!(visible_big(&m, before), n);
    }

    #[test]
    fn a_failed_commit_marks_the_store_unwritable_until_a_probe_succeeds() {
        let m = Mvcc::fresh(|b| {
            let kv = FlakyKv::default();
            kv.inner.commit(b).unwrap();
            kv
        });
        let a = "document:a#viewer@user:ann";
        m.write_relationships(&[], &[update(UpdateOp::Create, a)], NOW)
            .unwrap();
        let before = m.kv.commits.load(Ordering::SeqCst);
        m.check_writable().unwrap();
        assert_eq!(
            m.kv.commits.load(Ordering::SeqCst),
            before,
            "a healthy store answers without writing"
        );

        m.kv.fail.store(true, Ordering::SeqCst);
        let b = "document:b#viewer@user:ann";
        assert!(
            m.write_relationships(&[], &[update(UpdateOp::Create, b)], NOW)
                .is_err()
        );
        assert!(m.check_writable().is_err(), "the failure is remembered");
        assert!(m.check_writable().is_err(), "the probe fails too");

        m.kv.fail.store(false, Ordering::SeqCst);
        m.check_writable().unwrap();
        let after_probe = m.kv.commits.load(Ordering::SeqCst);
        m.check_writable().unwrap();
        assert_eq!(m.kv.commits.load(Ordering::SeqCst), after_probe);
        assert_eq!(
            m.raw_count(crate::store::encoding::META).unwrap(),
            5,
            "the probe leaves nothing behind"
        );
    }
}
