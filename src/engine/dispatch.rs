//! The dispatcher every sub-problem goes through: budgets, cancellation, reads, parallelism.
//!
//! It holds the depth budget (and the stack budget behind it), cancellation and deadline
//! polling, reading and paging through the datastore, and spreading independent work over the
//! cores. It knows nothing of the rewrite rules or of what an answer is: it uses only the
//! engine's error type, its metrics and the request-wide `Engine` and `Snapshot` (see the import
//! order in `engine/mod.rs`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::engine::error::{EngineError, EngineResult};
use crate::engine::{Engine, Snapshot};
use crate::model::{Relationship, RelationshipFilter, SubjectFilter};

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

/// The filter for the relationships of `resource_type:resource_id#relation`, optionally
/// restricted to `subject`.
pub(crate) fn resource_filter(
    resource_type: &str,
    resource_id: &str,
    relation: &str,
    subject: Option<SubjectFilter>,
) -> RelationshipFilter {
    RelationshipFilter {
        resource_type: Some(resource_type.to_string()),
        resource_id: Some(resource_id.to_string()),
        resource_id_prefix: None,
        relation: Some(relation.to_string()),
        subject,
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
/// split. A chunk whose thread cannot be started runs on the calling thread; a chunk whose
/// thread dies (a panic: a bug) is an [`EngineError::Internal`].
pub(crate) fn parallel_chunks<T: Sync, R: Send>(
    items: &[T],
    weight: impl Fn(&T) -> usize,
    min_weight: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> EngineResult<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_THREADS);
    let total: usize = items.iter().map(&weight).sum();
    if threads <= 1 || total < min_weight || items.len() < 2 {
        return Ok(vec![work(items)]);
    }
    let per_chunk = total.div_ceil(threads);
    let mut chunks: Vec<&[T]> = Vec::with_capacity(threads);
    let mut rest = items;
    let (mut len, mut acc) = (0usize, 0usize);
    for item in items {
        acc += weight(item);
        len += 1;
        if acc >= per_chunk {
            // INVARIANT: `len` counts the items of `rest` seen so far, so it is at most
            // `rest.len()`.
            #[allow(clippy::expect_used, reason = "len <= rest.len(), see INVARIANT")]
            let (chunk, tail) = rest
                .split_at_checked(len)
                .expect("a chunk ends within the items not yet chunked");
            chunks.push(chunk);
            rest = tail;
            (len, acc) = (0, 0);
        }
    }
    if !rest.is_empty() {
        chunks.push(rest);
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
                Ok(done) => Ok(done),
                Err(handle) => handle
                    .join()
                    .map_err(|_| EngineError::internal("a worker thread of the request panicked")),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_chunks_cover_the_items_in_order() {
        let items: Vec<usize> = (1..=1000).collect();
        for min_weight in [0, 10, 1_000_000] {
            let chunks = parallel_chunks(&items, |x| x % 7, min_weight, <[usize]>::to_vec).unwrap();
            assert!(chunks.iter().all(|c| !c.is_empty()));
            assert_eq!(chunks.concat(), items, "min_weight {min_weight}");
        }
        // below the minimum weight: one chunk, on the calling thread
        let one = parallel_chunks(&items, |_| 1, 1001, |c| c.len()).unwrap();
        assert_eq!(one, [1000]);
    }

    #[test]
    fn a_dead_worker_is_an_internal_error() {
        if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
            // one core: every chunk runs on the calling thread, where a panic is not caught
            return;
        }
        let items: Vec<u32> = (0..100).collect();
        let result = parallel_chunks(
            &items,
            |_| 1,
            0,
            |chunk| {
                assert!(!chunk.contains(&99), "the last chunk's worker dies");
                chunk.len()
            },
        );
        assert!(
            matches!(result, Err(EngineError::Internal(_))),
            "{result:?}"
        );
    }
}
