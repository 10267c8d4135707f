//! Step three, graph evaluation — the dispatcher: the one place every sub-problem goes through.
//! It owns the depth budget, cancellation and deadline polling, paging through the datastore,
//! and (for checks) the per-request memo of solved sub-problems keyed by
//! (resource, relation, subject), shared by every item of a bulk check.

use std::borrow::Borrow;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::time::Instant;

use rustc_hash::FxHasher;

use crate::engine::check::Outcome;
use crate::engine::error::{EngineError, EngineResult};
use crate::engine::{Engine, Snapshot};
use crate::model::{Relationship, RelationshipFilter, SubjectRef};

/// A hash map with the fast, non-cryptographic hasher (keys are not attacker-chosen in a way
/// that matters: a memo lives for one request).
type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// How many polls between two reads of the clock for the deadline.
const DEADLINE_POLL_INTERVAL: u32 = 16;

/// How much thread stack one request's recursion may use. Nested dispatches take a few KiB
/// each, and a server's blocking threads usually have 2 MiB: past this budget a request fails
/// with `MaxDepthExceeded` instead of overflowing the stack, whatever `max_depth` says.
const STACK_BUDGET: usize = 1024 * 1024;

/// An address in the current stack frame.
fn stack_position() -> usize {
    let probe = 0u8;
    std::hint::black_box(&probe) as *const u8 as usize
}

/// The request-wide state every traversal step shares: the snapshot, the engine's
/// configuration, and cancellation.
pub(crate) struct Dispatcher<'s> {
    /// what is read
    pub(crate) snap: &'s Snapshot<'s>,
    /// configuration and the caveat evaluator
    pub(crate) engine: &'s Engine,
    /// polls since the clock was last read
    polls: u32,
    /// where the stack was when the request started
    stack_base: usize,
    /// sub-problems dispatched so far (counted in the metrics when dropped)
    dispatched: u64,
}

impl Drop for Dispatcher<'_> {
    fn drop(&mut self) {
        if let Some(m) = crate::engine::metrics::get() {
            m.evaluation(self.dispatched);
        }
    }
}

impl<'s> Dispatcher<'s> {
    pub(crate) fn new(engine: &'s Engine, snap: &'s Snapshot<'s>) -> Self {
        Dispatcher {
            snap,
            engine,
            polls: 0,
            stack_base: stack_position(),
            dispatched: 0,
        }
    }

    /// Has the recursion used up its stack budget?
    pub(crate) fn stack_exhausted(&self) -> bool {
        stack_position().abs_diff(self.stack_base) > STACK_BUDGET
    }

    /// The depth budget of a top-level request.
    pub(crate) fn max_depth(&self) -> u32 {
        self.engine.config.max_depth
    }

    /// The error for an exhausted depth budget.
    pub(crate) fn depth_error(&self) -> EngineError {
        EngineError::MaxDepthExceeded {
            depth: self.max_depth(),
        }
    }

    /// Called at every sub-problem: counts it, and stops the request if it was cancelled or its
    /// deadline passed.
    pub(crate) fn poll(&mut self) -> EngineResult<()> {
        self.dispatched += 1;
        self.poll_only()
    }

    /// Stops the request if it was cancelled or its deadline passed. Cheap: an atomic load, and
    /// a clock read every few calls.
    fn poll_only(&mut self) -> EngineResult<()> {
        if let Some(flag) = self.snap.cancelled
            && flag.load(Ordering::Relaxed)
        {
            return Err(EngineError::Cancelled);
        }
        if let Some(deadline) = self.snap.deadline {
            self.polls = self.polls.wrapping_add(1);
            if self.polls % DEADLINE_POLL_INTERVAL == 1 && Instant::now() >= deadline {
                return Err(EngineError::DeadlineExceeded);
            }
        }
        Ok(())
    }

    /// Every relationship matching `filter`, in no particular order.
    pub(crate) fn all(&mut self, filter: &RelationshipFilter) -> EngineResult<Vec<Relationship>> {
        self.poll_only()?;
        let mut out = Vec::new();
        self.snap
            .store
            .query_all(self.snap.revision, filter, self.snap.now, &mut out)?;
        Ok(out)
    }

    /// The first relationship matching `filter`, if any (for exact-tuple lookups).
    pub(crate) fn first(
        &mut self,
        filter: &RelationshipFilter,
    ) -> EngineResult<Option<Relationship>> {
        Ok(self.all(filter)?.into_iter().next())
    }
}

/// The relationships matching a filter, handed out as pages so a caller can stop early (a
/// check stops at the first unconditional member). The store answers the engine's filters
/// from memory in one go, so today there is a single page.
pub(crate) struct Pager {
    filter: RelationshipFilter,
    done: bool,
}

impl Pager {
    pub(crate) fn new(filter: RelationshipFilter) -> Pager {
        Pager {
            filter,
            done: false,
        }
    }

    /// The next page, or `None` when all were read.
    pub(crate) fn next_page(
        &mut self,
        d: &mut Dispatcher<'_>,
    ) -> EngineResult<Option<Vec<Relationship>>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let page = d.all(&self.filter)?;
        Ok((!page.is_empty()).then_some(page))
    }
}

// ---- spreading independent work over the cores ----

/// How many threads one request may use at most.
const MAX_THREADS: usize = 8;

/// Runs `work` over contiguous chunks of `items` on up to one thread per core, and returns
/// the chunks' results in order. Chunks get about equal total `weight`; with less than
/// `min_weight` in all (or one core) everything runs on the calling thread, in one chunk.
/// Each chunk builds its own dispatcher and memo inside `work`: answers do not depend on the
/// split. A chunk whose thread cannot be started runs on the calling thread; if a chunk's
/// thread dies, the result is `None`.
pub(crate) fn parallel_chunks<T: Sync, R: Send>(
    items: &[T],
    weight: impl Fn(&T) -> usize,
    min_weight: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Option<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_THREADS);
    let total: usize = items.iter().map(&weight).sum();
    if threads <= 1 || total < min_weight || items.len() < 2 {
        return Some(vec![work(items)]);
    }
    let per_chunk = total.div_ceil(threads);
    let mut chunks: Vec<&[T]> = Vec::with_capacity(threads);
    let (mut start, mut acc) = (0usize, 0usize);
    for (i, item) in items.iter().enumerate() {
        acc += weight(item);
        if acc >= per_chunk {
            chunks.push(items.get(start..=i).unwrap_or_default());
            start = i + 1;
            acc = 0;
        }
    }
    if start < items.len() {
        chunks.push(items.get(start..).unwrap_or_default());
    }
    let work = &work;
    std::thread::scope(|scope| {
        let mut pending = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let spawned = std::thread::Builder::new()
                .name("pemba-query".to_string())
                .spawn_scoped(scope, move || work(chunk));
            pending.push(match spawned {
                Ok(handle) => Err(handle),
                Err(_) => Ok(work(chunk)),
            });
        }
        pending
            .into_iter()
            .map(|p| match p {
                Ok(done) => Some(done),
                Err(handle) => handle.join().ok(),
            })
            .collect()
    })
}

// ---- the check memo ----

/// The parts of a memo key: resource type, resource id, relation, interned subject.
pub(crate) trait KeyParts {
    fn parts(&self) -> (&str, &str, &str, u32);
}

/// An owned memo key.
#[derive(Debug, Clone)]
pub(crate) struct MemoKey {
    resource_type: String,
    resource_id: String,
    relation: String,
    subject: u32,
}

impl KeyParts for MemoKey {
    fn parts(&self) -> (&str, &str, &str, u32) {
        (
            &self.resource_type,
            &self.resource_id,
            &self.relation,
            self.subject,
        )
    }
}

impl KeyParts for (&str, &str, &str, u32) {
    fn parts(&self) -> (&str, &str, &str, u32) {
        *self
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl Hash for MemoKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for MemoKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for MemoKey {}

impl<'a> Borrow<dyn KeyParts + 'a> for MemoKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

/// What the memo knows about one sub-problem.
#[derive(Debug, Clone)]
pub(crate) enum MemoEntry {
    /// being solved right now, at this index of the dispatch stack: reaching it again is a
    /// cycle in the data
    InProgress { index: usize },
    /// solved for good, needing `height` nested dispatches (reused only where that much
    /// depth budget remains, so memoized answers never hide a depth error)
    Final { outcome: Outcome, height: u32 },
    /// unresolved, and only valid while the stack entry that was its parent is still active
    /// (it assumed the sub-problems on the stack above it were unresolved) and, if it ran out
    /// of depth, only where no more depth remains than it had
    Tentative {
        outcome: Outcome,
        height: u32,
        /// (stack index, activation id) of the parent when it was solved
        parent: Option<(usize, u64)>,
        /// the depth budget it had, if running out of depth made it unresolved
        depth: Option<u32>,
    },
}

/// How checks are evaluated; answers differ between modes, so each memo has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EvalMode {
    /// Evaluate every branch of a union, as SpiceDB does when one dispatch carries several
    /// resource ids (CheckBulk): a branch that cannot be decided then makes the whole answer
    /// undecided even where another branch found a member.
    pub(crate) require_all: bool,
}

impl EvalMode {
    /// Check, CheckBulk items answered one by one, and LookupResources' checks.
    pub(crate) const CHECK: EvalMode = EvalMode { require_all: false };
    /// CheckBulk items dispatched together with other resource ids.
    pub(crate) const BATCH: EvalMode = EvalMode { require_all: true };
}

/// Solved check sub-problems of one request (or one bulk request), in one evaluation mode.
#[derive(Debug)]
pub(crate) struct CheckMemo {
    /// how the sub-problems were solved
    pub(crate) mode: EvalMode,
    entries: HashMap<MemoKey, MemoEntry>,
    subjects: HashMap<SubjectRef, u32>,
    next_activation: u64,
}

impl CheckMemo {
    /// An empty memo for `mode`.
    pub(crate) fn new(mode: EvalMode) -> CheckMemo {
        CheckMemo {
            mode,
            entries: HashMap::default(),
            subjects: HashMap::default(),
            next_activation: 0,
        }
    }

    /// The interned id of `subject`.
    pub(crate) fn subject_id(&mut self, subject: &SubjectRef) -> u32 {
        if let Some(id) = self.subjects.get(subject) {
            return *id;
        }
        let id = u32::try_from(self.subjects.len()).unwrap_or(u32::MAX);
        self.subjects.insert(subject.clone(), id);
        id
    }

    /// A fresh activation id for a stack entry.
    pub(crate) fn activation(&mut self) -> u64 {
        self.next_activation = self.next_activation.wrapping_add(1);
        self.next_activation
    }

    pub(crate) fn get(&self, key: (&str, &str, &str, u32)) -> Option<&MemoEntry> {
        self.entries.get(&key as &dyn KeyParts)
    }

    pub(crate) fn insert(&mut self, key: (&str, &str, &str, u32), entry: MemoEntry) {
        if let Some(slot) = self.entries.get_mut(&key as &dyn KeyParts) {
            *slot = entry;
            return;
        }
        let (t, i, r, s) = key;
        self.entries.insert(
            MemoKey {
                resource_type: t.to_string(),
                resource_id: i.to_string(),
                relation: r.to_string(),
                subject: s,
            },
            entry,
        );
    }

    /// Forgets every sub-problem, keeping the allocated capacity (for a run of checks of
    /// another subject, whose sub-problems never meet the previous ones).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.subjects.clear();
    }

    pub(crate) fn remove(&mut self, key: (&str, &str, &str, u32)) {
        self.entries.remove(&key as &dyn KeyParts);
    }
}
