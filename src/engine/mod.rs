//! Graph evaluation: Check, CheckBulk, Expand, LookupResources and LookupSubjects.
//!
//! Answered over one snapshot (a store read at one revision, and the schema there), with
//! SpiceDB's semantics. Transport-free: the API layer converts protos to these types and back.
//!
//! Layout, after SpiceDB's `internal/graph` + `internal/dispatch` split, in import order (a
//! module uses only modules above it, as listed; every module may use this root's request and
//! result types; `import_order.rs` checks it):
//! - `error`, `metrics` — the engine's error type and its Prometheus metrics;
//! - `caveats` (error) — caveat conditions (`Cond`, `CaveatExpr`) and the pluggable evaluator;
//!   `cel` (caveats, error) — the CEL evaluator; `validate` (error) — request checks against
//!   the schema;
//! - `dispatch` (error, metrics) — what every sub-problem goes through: depth and stack
//!   budget, cancellation and deadline, store reads and paging, work spread over the cores;
//!   it knows nothing of rewrite rules or answers;
//! - `rules` — Check's rewrite rules, written once (`check_direct`, `check_computed_userset`,
//!   `check_tuple_to_userset`, `check_intersection_tuple_to_userset`, union / intersection /
//!   exclusion), generic over a walker: where relationships come from and what an answer is;
//! - `outcome` (caveats, rules) — a check sub-problem's three-valued answer and how the rules
//!   combine it; `memo` (outcome) — the checker's memo of solved sub-problems; `subject_set`
//!   (caveats) — the subject-set algebra of LookupSubjects (wildcards with exclusions,
//!   caveats);
//! - `fast` (metrics, rules) — the rules run over the store's in-memory graph to plain
//!   answers, giving up where that could differ from the general checker;
//! - `check` (caveats, dispatch, error, fast, memo, metrics, outcome, rules, validate) — the
//!   rules run over store reads to outcomes, with the memo and the trace; Check and CheckBulk;
//! - `expand` (caveats, dispatch, error); `lookup_resources` (check and what it uses) — reverse
//!   walk from the subject, then checks where intersections, exclusions or caveats require
//!   them, a window of candidates at a time; `lookup_cache` (lookup_resources) — the walks
//!   kept for cursors; `lookup_subjects` (caveats, dispatch, error, subject_set, validate) —
//!   forward walk;
//! - this root: the public types and the `Engine` methods, which may use everything.
//!
//! Semantics where SpiceDB's behaviour is timing-dependent or unspecified (checked against the
//! reference SpiceDB through `tests/cases/*.yaml` and the differential test):
//! - A data cycle is followed by SpiceDB until its depth budget runs out, racing the other
//!   branches. Here, a check whose answer cannot be decided without going around a cycle (or
//!   without exceeding the depth budget) fails with [`EngineError::MaxDepthExceeded`]; a check
//!   decided on another path (a member found elsewhere, a non-member by an intersection)
//!   answers normally. Whenever SpiceDB answers, it answers the same; where it sometimes fails,
//!   we answer. LookupResources, LookupSubjects and Expand fail with `MaxDepthExceeded` when
//!   their walk meets a cycle.
//! - CheckBulk groups items as SpiceDB dispatches them (same resource type, permission,
//!   subject and context, up to 100 resources): a group of several resources evaluates every
//!   branch and fails as a whole if any of it meets a cycle or runs out of depth; a caveat of
//!   any of its resources failing on the context (wrong type, evaluation error) fails the
//!   whole group too, whatever its size.
//! - A permission that only names another (`permission view = viewer`) is checked as that one
//!   without spending depth, as SpiceDB's dispatcher does (unless the subject has the
//!   resource's type).
//! - A subject set (`group:eng#member`) checked as the subject is a member of anything that
//!   reaches that subject set, and of itself. As in SpiceDB's Check, a wildcard `group:*`
//!   matches it too; as in SpiceDB's lookups, the walks of LookupResources and LookupSubjects
//!   do not apply wildcards to subject sets.
//! - Depth is also bounded by a stack budget (1 MiB, a few hundred nested dispatches), so a
//!   large configured `max_depth` never overflows a thread's stack.

mod caveats;
mod cel;
mod check;
mod dispatch;
mod error;
mod expand;
mod fast;
mod lookup_cache;
mod lookup_resources;
mod lookup_subjects;
mod memo;
mod metrics;
mod outcome;
mod rules;
mod subject_set;
mod validate;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub use caveats::{
    CaveatError, CaveatEvaluator, CaveatExpr, CaveatOutcome, DefaultCaveatEvaluator,
};
pub use cel::{CelCaveatEvaluator, check_context_types};
pub use check::{CheckTrace, PermissionType};
pub use error::{EngineError, EngineResult};
pub use expand::{ExpandTree, SetOperation};
pub use lookup_resources::ResourceLookup;
pub use metrics::init_metrics;

use crate::model::{Context, ObjectRef, Revision, SubjectRef, Timestamp};
use crate::schema::CompiledSchema;
use crate::store::Datastore;

/// The default depth budget, as SpiceDB's `--dispatch-max-depth`.
pub const DEFAULT_MAX_DEPTH: u32 = 50;

/// Engine configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// How many nested dispatches one request may make (SpiceDB's `--dispatch-max-depth`).
    pub max_depth: u32,
    /// Answer checks over the store's in-memory graph where that gives the same answer (a
    /// plain subject, no tracing, no caveat or expiration on the way; see `engine::fast`).
    /// On by default; off, every check takes the general path (for tests that compare them).
    pub fast_path: bool,
    /// How many bytes of LookupResources candidates may be kept for cursors (see
    /// `engine::lookup_cache`); 0 keeps none.
    pub lookup_cache_bytes: usize,
}

/// The default of [`EngineConfig::lookup_cache_bytes`]: 256 MiB, about four walks of a million
/// candidates.
pub const DEFAULT_LOOKUP_CACHE_BYTES: usize = 256 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_depth: DEFAULT_MAX_DEPTH,
            fast_path: true,
            lookup_cache_bytes: DEFAULT_LOOKUP_CACHE_BYTES,
        }
    }
}

/// The query engine: stateless between requests apart from its configuration and the
/// LookupResources walks it keeps for cursors, so one instance serves every request
/// concurrently (clones share the kept walks).
#[derive(Debug, Clone)]
pub struct Engine {
    /// the configuration
    pub(crate) config: EngineConfig,
    /// decides caveats at the end of a request
    pub(crate) caveats: Arc<dyn CaveatEvaluator>,
    /// LookupResources walks kept for their cursors
    lookups: Arc<lookup_cache::LookupCache>,
}

/// What a request reads: the store at one revision, the schema at that revision, and the time
/// used to hide expired relationships. Optionally a deadline and a cancellation flag, polled
/// as the traversal goes.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// the relationships
    pub store: &'a dyn Datastore,
    /// the schema at `revision`
    pub schema: &'a CompiledSchema,
    /// the revision read
    pub revision: Revision,
    /// relationships expiring at or before this instant are invisible
    pub now: Timestamp,
    /// stop with [`EngineError::DeadlineExceeded`] once this instant has passed
    pub deadline: Option<Instant>,
    /// stop with [`EngineError::Cancelled`] once this flag is set
    pub cancelled: Option<&'a AtomicBool>,
}

impl<'a> Snapshot<'a> {
    /// A snapshot without deadline or cancellation.
    pub fn new(
        store: &'a dyn Datastore,
        schema: &'a CompiledSchema,
        revision: Revision,
        now: Timestamp,
    ) -> Snapshot<'a> {
        Snapshot {
            store,
            schema,
            revision,
            now,
            deadline: None,
            cancelled: None,
        }
    }

    /// The same snapshot, stopping at `deadline`.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Snapshot<'a> {
        self.deadline = Some(deadline);
        self
    }

    /// The same snapshot, stopping once `flag` is set.
    #[must_use]
    pub fn with_cancel_flag(mut self, flag: &'a AtomicBool) -> Snapshot<'a> {
        self.cancelled = Some(flag);
        self
    }
}

/// One permission check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRequest {
    /// the resource
    pub resource: ObjectRef,
    /// the permission or relation checked
    pub permission: String,
    /// the subject (an object, or a subject set such as `group:eng#member`)
    pub subject: SubjectRef,
    /// caveat context of the request
    pub context: Context,
    /// build a [`CheckTrace`]
    pub with_tracing: bool,
}

/// The answer to a check (or one lookup result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permissionship {
    /// the subject does not have it
    NoPermission,
    /// the subject has it
    HasPermission,
    /// the subject has it if caveats hold, and the context lacks what is needed to decide
    ConditionalPermission,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// the answer
    pub permissionship: Permissionship,
    /// for a conditional answer: the caveat parameters missing from the context, sorted
    pub missing_context: Vec<String>,
    /// for a positive answer: the earliest expiry among the relationships it used
    pub expires_at: Option<Timestamp>,
    /// the trace, if requested
    pub trace: Option<CheckTrace>,
}

/// One resource found by LookupResources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResult {
    /// the resource id
    pub resource_id: String,
    /// `HasPermission` or `ConditionalPermission`
    pub permissionship: Permissionship,
    /// for a conditional result: the caveat parameters missing from the context
    pub missing_context: Vec<String>,
}

/// One subject found by LookupSubjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSubject {
    /// the subject id; `*` is the wildcard (every subject of the type but the excluded ones)
    pub subject_id: String,
    /// `HasPermission` or `ConditionalPermission`
    pub permissionship: Permissionship,
    /// for a conditional result: the caveat parameters missing from the context
    pub missing_context: Vec<String>,
    /// for the wildcard: the subjects it does not cover (`HasPermission`: excluded for sure;
    /// `ConditionalPermission`: excluded when a caveat holds)
    pub excluded_subjects: Vec<ResolvedSubject>,
}

impl Engine {
    /// An engine with `config` and the [`CelCaveatEvaluator`].
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            lookups: Arc::new(lookup_cache::LookupCache::new(config.lookup_cache_bytes)),
            config,
            caveats: Arc::new(CelCaveatEvaluator::new()),
        }
    }

    /// The same engine deciding caveats with `evaluator`.
    #[must_use]
    pub fn with_caveat_evaluator(mut self, evaluator: Arc<dyn CaveatEvaluator>) -> Engine {
        self.caveats = evaluator;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Does `req.subject` have `req.permission` on `req.resource`?
    pub fn check(&self, snap: &Snapshot<'_>, req: &CheckRequest) -> EngineResult<CheckResult> {
        let mut memo = memo::CheckMemo::new(memo::EvalMode::CHECK);
        let result = check::run_check(self, snap, &mut memo, req);
        if let (Ok(r), Some(m)) = (&result, metrics::get()) {
            m.check.count(r.permissionship);
        }
        result
    }

    /// Many checks at one snapshot, answered in request order with one error per failed item,
    /// spread over the cores. Sub-problems shared between items on one thread are solved once. As in SpiceDB, items with the same
    /// resource type, permission, subject and context are evaluated together in chunks of up to
    /// 100 resources, and a chunk of several resources fails as a whole when any of it runs
    /// into a data cycle or out of depth; a chunk fails as a whole, too, when a caveat of one of
    /// its resources fails on the context.
    pub fn check_bulk(
        &self,
        snap: &Snapshot<'_>,
        reqs: &[CheckRequest],
    ) -> Vec<EngineResult<CheckResult>> {
        let results = check::run_check_bulk(self, snap, reqs);
        if let Some(m) = metrics::get() {
            m.check_bulk
                .count_all(results.iter().flatten().map(|r| r.permissionship));
        }
        results
    }

    /// The expansion tree of `resource#permission`, one level deep.
    pub fn expand(
        &self,
        snap: &Snapshot<'_>,
        resource: &ObjectRef,
        permission: &str,
    ) -> EngineResult<ExpandTree> {
        validate::resource_member(snap.schema, &resource.object_type, permission)?;
        let mut d = dispatch::Dispatcher::new(self, snap);
        let depth = d.max_depth();
        expand::Expander::new(&mut d).expand(
            &resource.object_type,
            &resource.object_id,
            permission,
            depth,
        )
    }

    /// Every resource of `resource_type` on which `subject` has `permission`, sorted by id,
    /// each once.
    pub fn lookup_resources(
        &self,
        snap: &Snapshot<'_>,
        resource_type: &str,
        permission: &str,
        subject: &SubjectRef,
        context: &Context,
    ) -> EngineResult<Vec<LookupResult>> {
        self.lookup_resources_page(
            snap,
            resource_type,
            permission,
            subject,
            context,
            None,
            usize::MAX,
        )
    }

    /// One page of [`Engine::lookup_resources`]: the results whose id sorts after `after`, at
    /// most `limit` of them. Only about a page of candidates is checked.
    #[allow(clippy::too_many_arguments, reason = "the request's parts, named")]
    pub fn lookup_resources_page(
        &self,
        snap: &Snapshot<'_>,
        resource_type: &str,
        permission: &str,
        subject: &SubjectRef,
        context: &Context,
        after: Option<&str>,
        limit: usize,
    ) -> EngineResult<Vec<LookupResult>> {
        let lookup =
            self.start_lookup_resources(snap, resource_type, permission, subject, context, false)?;
        let from = lookup.position_after(after);
        let (mut results, _) = self.resolve_lookup_resources(snap, &lookup, from, limit)?;
        results.truncate(limit);
        Ok(results)
    }

    /// The first half of LookupResources: the walk from the subject, which finds every
    /// candidate (sorted by id) before any can be resolved. With `resume` (the request came
    /// with a cursor), a walk kept by [`Engine::keep_lookup`] for the same request at the
    /// snapshot's revision is taken up instead of walking again; it keeps the clock it ran at,
    /// so that every page of one answer hides the same expired relationships.
    pub fn start_lookup_resources(
        &self,
        snap: &Snapshot<'_>,
        resource_type: &str,
        permission: &str,
        subject: &SubjectRef,
        context: &Context,
        resume: bool,
    ) -> EngineResult<Arc<ResourceLookup>> {
        if resume {
            let key = lookup_resources::LookupKey::new(
                snap.revision,
                resource_type,
                permission,
                subject,
                context,
            );
            let kept = self.lookups.get(&key);
            if let Some(m) = metrics::get() {
                m.lookup_resume(kept.is_some());
            }
            if let Some(kept) = kept {
                return Ok(kept);
            }
        }
        let lookup =
            lookup_resources::walk(self, snap, resource_type, permission, subject, context)?;
        Ok(Arc::new(lookup))
    }

    /// The second half of LookupResources: resolves the candidates from position `from` (see
    /// [`ResourceLookup::position_after`]), a window at a time, until at least `want` results
    /// are found or the candidates end. Returns the results, sorted by id (there may be more
    /// than `want`), and the position to go on from. `snap` must be at the lookup's revision.
    pub fn resolve_lookup_resources(
        &self,
        snap: &Snapshot<'_>,
        lookup: &ResourceLookup,
        from: usize,
        want: usize,
    ) -> EngineResult<(Vec<LookupResult>, usize)> {
        lookup_resources::resolve(self, snap, lookup, from, want)
    }

    /// Keeps a walk whose answer was cut short by a page's limit, so that the cursor of the
    /// next page resumes it (bounded: see `engine::lookup_cache`).
    pub fn keep_lookup(&self, lookup: Arc<ResourceLookup>) {
        self.lookups.keep(lookup);
    }

    /// Every subject of `subject_type` (with `subject_relation`, if given) that has
    /// `permission` on `resource`, sorted by id; a `*` result carries its exclusions.
    pub fn lookup_subjects(
        &self,
        snap: &Snapshot<'_>,
        resource: &ObjectRef,
        permission: &str,
        subject_type: &str,
        subject_relation: Option<&str>,
        context: &Context,
    ) -> EngineResult<Vec<ResolvedSubject>> {
        lookup_subjects::lookup_subjects(
            self,
            snap,
            resource,
            permission,
            subject_type,
            subject_relation,
            context,
        )
    }
}

#[cfg(test)]
mod import_order;
#[cfg(test)]
mod tests;
