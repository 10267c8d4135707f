//! Check and CheckBulk: the general checker, the rewrite rules run over filtered store reads.
//!
//! Is the subject a member of `resource#relation`? The general checker runs the rewrite rules of
//! `rules.rs` over filtered store reads. Every nested sub-problem goes through
//! [`Checker::dispatch_check`], which spends the depth budget, consults the memo and records the
//! trace. Also the entry points of Check and CheckBulk, which try the fast path (`fast.rs`) first.
//!
//! Results are three-valued plus caveats: `No`, `Member` (unconditional or under a caveat
//! condition), or `Unresolved` when the answer hinges on a cycle in the data or on a path
//! longer than the depth budget. An unresolved top-level answer is
//! [`EngineError::MaxDepthExceeded`], which is what SpiceDB returns after following such a
//! cycle until its depth budget runs out; a definite answer reached without going around the
//! cycle (a member found on another branch, a non-member by an intersection) is returned as
//! SpiceDB would.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::engine::caveats::{self, CaveatOutcome, Cond};
use crate::engine::dispatch::{Dispatcher, Pager, parallel_chunks, resource_filter};
use crate::engine::error::{EngineError, EngineResult};
use crate::engine::memo::{CheckMemo, EvalMode, MemoEntry};
use crate::engine::outcome::{Outcome, Unresolved, min_time};
use crate::engine::rules::{self, TupleOf, Walk};
use crate::engine::{CheckRequest, CheckResult, Engine, Permissionship, Snapshot};
use crate::engine::{fast, validate};
use crate::model::{
    ObjectRef, Relationship, RelationshipFilter, SubjectFilter, SubjectRef, SubjectRelationFilter,
    Timestamp,
};
use crate::schema::{CompiledSchema, Definition, Member, Relation};

/// Whether a traced sub-problem is a relation or a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionType {
    /// a relation (stored relationships)
    Relation,
    /// a permission (computed)
    Permission,
}

/// One solved sub-problem of a traced check, with the sub-problems it dispatched; the API turns
/// it into `CheckDebugTrace`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTrace {
    /// the resource checked
    pub resource: ObjectRef,
    /// the relation or permission checked
    pub permission: String,
    /// relation or permission
    pub permission_type: PermissionType,
    /// the subject
    pub subject: SubjectRef,
    /// the result (caveats not yet evaluated below the top: a caveated branch is conditional)
    pub result: Permissionship,
    /// true if the answer came from the request's memo of solved sub-problems
    pub cached: bool,
    /// time spent on this sub-problem
    pub duration: Duration,
    /// the sub-problems it dispatched, in order
    pub children: Vec<CheckTrace>,
}

/// `sub`, reached through relationship `rel`: `rel`'s caveat and expiry apply to it.
fn through(rel: &Relationship, sub: Outcome) -> Outcome {
    match sub {
        Outcome::Member { cond, expires_at } => Outcome::member(
            Cond::of_caveat(rel.caveat.as_ref()).and(cond),
            min_time(rel.expires_at, expires_at),
        ),
        other => other,
    }
}

/// A member through relationship `rel` itself.
fn member_by(rel: &Relationship) -> Outcome {
    Outcome::member(Cond::of_caveat(rel.caveat.as_ref()), rel.expires_at)
}

/// A trace node under construction.
struct TraceFrame {
    node: CheckTrace,
    started: Instant,
}

/// Solves check sub-problems for one subject, depth-first, through the memo.
pub(crate) struct Checker<'c, 's> {
    d: &'c mut Dispatcher<'s>,
    memo: &'c mut CheckMemo,
    subject: &'c SubjectRef,
    /// the subject's interned id in the memo
    sid: u32,
    /// activation ids of the sub-problems being solved, outermost first
    stack: Vec<u64>,
    /// for each of them, the largest height of a nested sub-problem so far
    heights: Vec<u32>,
    /// trace frames, if tracing
    trace: Option<Vec<TraceFrame>>,
    /// the finished top-level trace node
    root_trace: Option<CheckTrace>,
}

impl<'c, 's> Checker<'c, 's> {
    pub(crate) fn new(
        d: &'c mut Dispatcher<'s>,
        memo: &'c mut CheckMemo,
        subject: &'c SubjectRef,
        tracing: bool,
    ) -> Self {
        let sid = memo.subject_id(subject);
        Checker {
            d,
            memo,
            subject,
            sid,
            stack: Vec::new(),
            heights: Vec::new(),
            trace: tracing.then(Vec::new),
            root_trace: None,
        }
    }

    /// Calls `f` for each relationship matching `filter`, page by page, until it breaks.
    fn each_page<F>(&mut self, filter: RelationshipFilter, mut f: F) -> EngineResult<()>
    where
        F: FnMut(&mut Self, &Relationship) -> EngineResult<ControlFlow<()>>,
    {
        let mut pager = Pager::new(filter);
        while let Some(page) = pager.next_page(self.d)? {
            for rel in &page {
                if f(self, rel)?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The dispatcher: every nested check sub-problem goes through here. Spends one unit of
    /// depth budget, polls cancellation, recognises the subject itself
    /// (`group:eng#member` is a member of `group:eng#member`), and memoizes.
    pub(crate) fn dispatch_check(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
        depth: u32,
    ) -> EngineResult<Outcome> {
        self.d.poll()?;
        let s = self.subject;
        if s.relation.as_deref() == Some(relation)
            && s.object.object_type == resource_type
            && s.object.object_id == resource_id
        {
            let o = Outcome::yes(None);
            self.trace_leaf(resource_type, resource_id, relation, &o, false);
            return Ok(o);
        }
        if depth == 0 || self.d.stack_exhausted() {
            return Ok(Outcome::Unresolved(Unresolved {
                depth_limited: true,
                min_ref: None,
            }));
        }
        let key = (resource_type, resource_id, relation, self.sid);
        let mut shallower = None;
        match self.memo.get(key) {
            Some(MemoEntry::Final { outcome, height }) if *height <= depth => {
                let (o, h) = (outcome.clone(), *height);
                self.bump_height(h);
                self.trace_leaf(resource_type, resource_id, relation, &o, true);
                return Ok(o);
            }
            Some(e @ MemoEntry::Final { .. }) => shallower = Some(e.clone()),
            Some(MemoEntry::InProgress { index }) => {
                return Ok(Outcome::Unresolved(Unresolved {
                    depth_limited: false,
                    min_ref: Some(*index),
                }));
            }
            Some(MemoEntry::Tentative {
                outcome,
                height,
                parent,
                depth: limited_at,
            }) => {
                let parent_alive =
                    parent.is_none_or(|(i, act)| self.stack.get(i).is_some_and(|a| *a == act));
                let depth_ok = limited_at.is_none_or(|d| depth <= d);
                if parent_alive && depth_ok {
                    let (o, h) = (outcome.clone(), *height);
                    self.bump_height(h);
                    return Ok(o);
                }
            }
            None => {}
        }

        let index = self.stack.len();
        let activation = self.memo.activation();
        self.stack.push(activation);
        self.heights.push(0);
        self.memo.insert(key, MemoEntry::InProgress { index });
        self.trace_enter(resource_type, resource_id, relation);
        let solved = self.solve(resource_type, resource_id, relation, depth);
        self.stack.pop();
        // INVARIANT: pushed above with the stack entry; nested dispatches pop what they push.
        #[allow(clippy::expect_used, reason = "pushed above, see INVARIANT")]
        let height = self
            .heights
            .pop()
            .expect("the height of this sub-problem was pushed above")
            .saturating_add(1);
        self.bump_height(height);
        let outcome = match solved {
            Ok(o) => o,
            Err(e) => {
                match shallower {
                    Some(previous) => self.memo.insert(key, previous),
                    None => self.memo.remove(key),
                }
                if let Some(frames) = &mut self.trace {
                    frames.pop();
                }
                return Err(e);
            }
        };
        // A reference to this very sub-problem is resolved now that it is done.
        let outcome = match outcome {
            Outcome::Unresolved(u) => Outcome::Unresolved(Unresolved {
                depth_limited: u.depth_limited,
                min_ref: u.min_ref.filter(|m| *m < index),
            }),
            o => o,
        };
        let entry = match (&outcome, shallower) {
            (Outcome::Unresolved(u), shallower) if u.min_ref.is_some() || u.depth_limited => {
                match shallower {
                    // Solved before with more depth: keep that answer for where it applies.
                    Some(previous) => previous,
                    None => MemoEntry::Tentative {
                        outcome: outcome.clone(),
                        height,
                        parent: match u.min_ref {
                            Some(_) => index
                                .checked_sub(1)
                                .and_then(|p| self.stack.get(p).map(|a| (p, *a))),
                            None => None,
                        },
                        depth: u.depth_limited.then_some(depth),
                    },
                }
            }
            _ => MemoEntry::Final {
                outcome: outcome.clone(),
                height,
            },
        };
        self.memo.insert(key, entry);
        self.trace_exit(&outcome);
        Ok(outcome)
    }

    /// Records that the current sub-problem needed a nested one of `height`.
    fn bump_height(&mut self, height: u32) {
        if let Some(top) = self.heights.last_mut() {
            *top = (*top).max(height);
        }
    }

    /// Solves `resource#relation` by the rewrite rules (see `rules.rs`).
    fn solve(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
        depth: u32,
    ) -> EngineResult<Outcome> {
        match self.schema().definition(resource_type) {
            Some(def) => match def.member(relation) {
                Some(member) => rules::solve(self, def, resource_id, member, depth),
                None => Ok(Outcome::No),
            },
            None => Ok(Outcome::No),
        }
    }

    // ---- tracing ----

    fn permission_type(&self, resource_type: &str, relation: &str) -> PermissionType {
        match self.schema().member(resource_type, relation) {
            Some(Member::Relation(_)) | None => PermissionType::Relation,
            Some(Member::Permission(_)) => PermissionType::Permission,
        }
    }

    fn trace_node(&self, resource_type: &str, resource_id: &str, relation: &str) -> CheckTrace {
        CheckTrace {
            resource: ObjectRef::new(resource_type, resource_id),
            permission: relation.to_string(),
            permission_type: self.permission_type(resource_type, relation),
            subject: self.subject.clone(),
            result: Permissionship::NoPermission,
            cached: false,
            duration: Duration::ZERO,
            children: Vec::new(),
        }
    }

    fn attach(&mut self, node: CheckTrace) {
        if let Some(frames) = &mut self.trace {
            match frames.last_mut() {
                Some(parent) => parent.node.children.push(node),
                None => self.root_trace = Some(node),
            }
        }
    }

    fn trace_enter(&mut self, resource_type: &str, resource_id: &str, relation: &str) {
        if self.trace.is_none() {
            return;
        }
        let node = self.trace_node(resource_type, resource_id, relation);
        if let Some(frames) = &mut self.trace {
            frames.push(TraceFrame {
                node,
                started: Instant::now(),
            });
        }
    }

    fn trace_exit(&mut self, outcome: &Outcome) {
        let Some(frames) = &mut self.trace else {
            return;
        };
        if let Some(mut frame) = frames.pop() {
            frame.node.result = outcome.permissionship();
            frame.node.duration = frame.started.elapsed();
            self.attach(frame.node);
        }
    }

    fn trace_leaf(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
        outcome: &Outcome,
        cached: bool,
    ) {
        if self.trace.is_none() {
            return;
        }
        let mut node = self.trace_node(resource_type, resource_id, relation);
        node.result = outcome.permissionship();
        node.cached = cached;
        self.attach(node);
    }

    /// The finished top-level trace, if tracing.
    fn take_trace(&mut self) -> Option<CheckTrace> {
        self.root_trace.take()
    }
}

/// The general checker runs the rewrite rules over filtered store reads, to caveated,
/// three-valued outcomes.
impl<'s> Walk<'s> for Checker<'_, 's> {
    type Id<'e> = &'e str;
    type Edge = Relationship;
    type Answer = Outcome;
    type Error = EngineError;

    fn schema(&self) -> &'s CompiledSchema {
        self.d.snap.schema
    }

    fn require_all(&self) -> bool {
        self.memo.mode.require_all
    }

    fn subject_type(&self) -> &str {
        &self.subject.object.object_type
    }

    fn subject_relation(&self) -> Option<&str> {
        self.subject.relation.as_deref()
    }

    fn is_subject(&self, def: &Definition, id: &str) -> bool {
        let s = self.subject;
        s.relation.is_none() && s.object.object_type == def.name && s.object.object_id == id
    }

    fn dispatch(
        &mut self,
        def: &'s Definition,
        id: &str,
        name: &str,
        depth: u32,
    ) -> EngineResult<Outcome> {
        self.dispatch_check(&def.name, id, name, depth)
    }

    fn find_tuple(
        &mut self,
        def: &'s Definition,
        id: &str,
        relation: &'s Relation,
        which: TupleOf,
    ) -> EngineResult<Option<Outcome>> {
        let subject = self.subject;
        let subject_filter = match which {
            TupleOf::Subject => SubjectFilter {
                subject_type: subject.object.object_type.clone(),
                subject_id: Some(subject.object.object_id.clone()),
                relation: match &subject.relation {
                    None => SubjectRelationFilter::Ellipsis,
                    Some(r) => SubjectRelationFilter::Relation(r.clone()),
                },
            },
            TupleOf::Wildcard => SubjectFilter {
                subject_type: subject.object.object_type.clone(),
                subject_id: Some("*".to_string()),
                relation: SubjectRelationFilter::Ellipsis,
            },
        };
        let filter = resource_filter(&def.name, id, &relation.name, Some(subject_filter));
        Ok(self.d.first(&filter)?.as_ref().map(member_by))
    }

    fn each_subject_set<F>(
        &mut self,
        def: &'s Definition,
        id: &str,
        relation: &'s Relation,
        set_type: &'s Definition,
        set_relation: &str,
        f: F,
    ) -> EngineResult<()>
    where
        F: FnMut(&mut Self, &Relationship) -> EngineResult<ControlFlow<()>>,
    {
        let filter = resource_filter(
            &def.name,
            id,
            &relation.name,
            Some(SubjectFilter {
                subject_type: set_type.name.clone(),
                subject_id: None,
                relation: SubjectRelationFilter::Relation(set_relation.to_string()),
            }),
        );
        self.each_page(filter, f)
    }

    fn each_tupleset<F>(
        &mut self,
        def: &'s Definition,
        id: &str,
        tupleset: &str,
        f: F,
    ) -> EngineResult<()>
    where
        F: FnMut(&mut Self, &Relationship) -> EngineResult<ControlFlow<()>>,
    {
        self.each_page(resource_filter(&def.name, id, tupleset, None), f)
    }

    fn edge_subject<'e>(&self, edge: &'e Relationship) -> &'e str {
        &edge.subject.object.object_id
    }

    fn edge_subject_definition(&self, edge: &Relationship) -> Option<&'s Definition> {
        self.d
            .snap
            .schema
            .definition(&edge.subject.object.object_type)
    }

    fn through(edge: &Relationship, sub: Outcome) -> Outcome {
        through(edge, sub)
    }
}

/// Solves `resource#permission` for `subject` to an outcome (caveats not evaluated), with a
/// depth budget of `depth` and no trace.
pub(crate) fn check_outcome_at(
    d: &mut Dispatcher<'_>,
    memo: &mut CheckMemo,
    resource: &ObjectRef,
    permission: &str,
    subject: &SubjectRef,
    depth: u32,
) -> EngineResult<(Outcome, Option<CheckTrace>)> {
    solve(d, memo, resource, permission, subject, depth, false)
}

/// Solves one top-level check to an outcome (caveats not evaluated).
pub(crate) fn check_outcome(
    d: &mut Dispatcher<'_>,
    memo: &mut CheckMemo,
    resource: &ObjectRef,
    permission: &str,
    subject: &SubjectRef,
    tracing: bool,
) -> EngineResult<(Outcome, Option<CheckTrace>)> {
    let max_depth = d.max_depth();
    solve(d, memo, resource, permission, subject, max_depth, tracing)
}

/// Dispatches one check with `depth` budget left; the trace is kept only when `tracing`.
fn solve(
    d: &mut Dispatcher<'_>,
    memo: &mut CheckMemo,
    resource: &ObjectRef,
    permission: &str,
    subject: &SubjectRef,
    depth: u32,
    tracing: bool,
) -> EngineResult<(Outcome, Option<CheckTrace>)> {
    let mut checker = Checker::new(d, memo, subject, tracing);
    let outcome = checker.dispatch_check(
        &resource.object_type,
        &resource.object_id,
        permission,
        depth,
    )?;
    Ok((outcome, checker.take_trace()))
}

/// The final answer for an outcome: caveats evaluated with the request context; unresolved is
/// [`EngineError::MaxDepthExceeded`].
pub(crate) fn finish(
    d: &Dispatcher<'_>,
    outcome: Outcome,
    context: &crate::model::Context,
) -> EngineResult<(Permissionship, Vec<String>, Option<Timestamp>)> {
    match outcome {
        Outcome::No => Ok((Permissionship::NoPermission, Vec::new(), None)),
        Outcome::Member { cond, expires_at } => match cond {
            Cond::True => Ok((Permissionship::HasPermission, Vec::new(), expires_at)),
            Cond::False => Ok((Permissionship::NoPermission, Vec::new(), None)),
            Cond::Expr(e) => Ok(
                match caveats::evaluate(&e, context, d.snap.schema, d.engine.caveats.as_ref())? {
                    CaveatOutcome::True => (Permissionship::HasPermission, Vec::new(), expires_at),
                    CaveatOutcome::False => (Permissionship::NoPermission, Vec::new(), None),
                    CaveatOutcome::Missing(m) => {
                        (Permissionship::ConditionalPermission, m, expires_at)
                    }
                },
            ),
        },
        Outcome::Unresolved(_) => Err(d.depth_error()),
    }
}

/// One Check, with a memo that may be shared with other checks of the same request.
pub(crate) fn run_check(
    engine: &Engine,
    snap: &Snapshot<'_>,
    memo: &mut CheckMemo,
    req: &CheckRequest,
) -> EngineResult<CheckResult> {
    validate::resource_member(snap.schema, &req.resource.object_type, &req.permission)?;
    validate::check_subject(snap.schema, &req.subject)?;
    if let Some(&[yes]) = fast_answers(engine, snap, &[req], false).as_deref() {
        return Ok(plain_result(yes));
    }
    let mut d = Dispatcher::new(engine, snap);
    let (outcome, trace) = check_outcome(
        &mut d,
        memo,
        &req.resource,
        &req.permission,
        &req.subject,
        req.with_tracing,
    )?;
    let (permissionship, missing_context, expires_at) = finish(&d, outcome, &req.context)?;
    let trace = trace.map(|mut t| {
        t.result = permissionship;
        t
    });
    Ok(CheckResult {
        permissionship,
        missing_context,
        expires_at,
        trace,
    })
}

/// The fast path's answers to `requests` (see `engine::fast`), if it is on and can answer
/// them all.
fn fast_answers(
    engine: &Engine,
    snap: &Snapshot<'_>,
    requests: &[&CheckRequest],
    require_all: bool,
) -> Option<Vec<bool>> {
    if !engine.config.fast_path {
        return None;
    }
    let answers = fast::try_check(snap, engine.config.max_depth, requests, require_all);
    if let Some(m) = crate::engine::metrics::get() {
        // a usize always fits a u64 on the platforms built for; saturating is only a fallback
        let n = u64::try_from(requests.len()).unwrap_or(u64::MAX);
        match answers {
            Some(_) => m.fast_answered.inc_by(n),
            None => m.fast_gave_up.inc_by(n),
        }
    }
    answers
}

/// A check answered by plain relationships only: no caveat, no expiry, no trace.
fn plain_result(yes: bool) -> CheckResult {
    CheckResult {
        permissionship: if yes {
            Permissionship::HasPermission
        } else {
            Permissionship::NoPermission
        },
        missing_context: Vec::new(),
        expires_at: None,
        trace: None,
    }
}

/// CheckBulk as SpiceDB runs it: items with the same resource type, permission, subject and
/// context are dispatched together, up to [`BULK_CHUNK`] resource ids at a time. A chunk of one
/// resource is answered as a Check; a chunk of several evaluates every branch (SpiceDB's
/// "require all results"), and a failure anywhere in it (such as a data cycle, or a caveat of
/// one of its resources failing on the context) fails every item of the chunk. Groups are spread over the cores (see [`solve_bulk_groups_in_parallel`]);
/// sub-problems are shared between the items solved on one thread.
pub(crate) fn run_check_bulk(
    engine: &Engine,
    snap: &Snapshot<'_>,
    reqs: &[CheckRequest],
) -> Vec<EngineResult<CheckResult>> {
    let mut out: Vec<Option<EngineResult<CheckResult>>> = reqs.iter().map(|_| None).collect();
    let mut groups: Vec<(BulkKey<'_>, BulkGroup<'_>)> = Vec::new();
    let mut group_of: FxHashMap<BulkKey<'_>, usize> = FxHashMap::default();
    let mut resource_of: Vec<FxHashMap<&str, usize>> = Vec::new();
    for (i, req) in reqs.iter().enumerate() {
        let valid =
            validate::resource_member(snap.schema, &req.resource.object_type, &req.permission)
                .and_then(|_| validate::check_subject(snap.schema, &req.subject));
        if let Err(e) = valid {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(Err(e));
            }
            continue;
        }
        let context = if req.context.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(req.context.clone()).to_string()
        };
        let key = (
            req.resource.object_type.as_str(),
            req.permission.as_str(),
            &req.subject,
            context,
        );
        let g = *group_of.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            resource_of.push(FxHashMap::default());
            groups.len() - 1
        });
        let (Some((_, group)), Some(index)) = (groups.get_mut(g), resource_of.get_mut(g)) else {
            continue;
        };
        let id = req.resource.object_id.as_str();
        match index.get(id).and_then(|r| group.get_mut(*r)) {
            Some((_, items)) => items.push(i),
            None => {
                index.insert(id, group.len());
                group.push((id, vec![i]));
            }
        }
    }

    match solve_bulk_groups_in_parallel(engine, snap, reqs, &groups) {
        Ok(answers) => {
            for (i, result) in answers {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(result);
                }
            }
        }
        // a worker thread died: every item it would have answered fails with that error
        Err(e) => {
            for slot in out.iter_mut().filter(|s| s.is_none()) {
                *slot = Some(Err(e.clone()));
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(EngineError::internal(format!(
                    "CheckBulk item {i} was neither refused nor answered"
                )))
            })
        })
        .collect()
}

/// Below this many items a CheckBulk request runs on the calling thread alone.
const BULK_PARALLEL_MIN: usize = 64;

/// Solves CheckBulk groups on up to one thread per core: contiguous shards of groups with
/// about equal item counts, each with its own memos (groups of different subjects share no
/// sub-problems). Answers are the same as on one thread.
fn solve_bulk_groups_in_parallel(
    engine: &Engine,
    snap: &Snapshot<'_>,
    reqs: &[CheckRequest],
    groups: &[(BulkKey<'_>, BulkGroup<'_>)],
) -> EngineResult<Vec<(usize, EngineResult<CheckResult>)>> {
    let shards = parallel_chunks(
        groups,
        |(_, g)| g.len(),
        BULK_PARALLEL_MIN,
        |shard| solve_bulk_groups(engine, snap, reqs, shard),
    )?;
    Ok(shards.into_iter().flatten().collect())
}

/// Solves CheckBulk groups one after the other, sharing memos between them.
fn solve_bulk_groups(
    engine: &Engine,
    snap: &Snapshot<'_>,
    reqs: &[CheckRequest],
    groups: &[(BulkKey<'_>, BulkGroup<'_>)],
) -> Vec<(usize, EngineResult<CheckResult>)> {
    let mut out = Vec::new();
    let mut single = CheckMemo::new(EvalMode::CHECK);
    let mut batch = CheckMemo::new(EvalMode::BATCH);
    let mut last_subject: Option<&SubjectRef> = None;
    for ((_, _, subject, _), resources) in groups {
        // Every memo key names its subject: a new subject can reuse nothing, and clearing
        // keeps the memos small (no rehashing of thousands of dead entries).
        if last_subject.is_some_and(|s| s != *subject) {
            single.clear();
            batch.clear();
        }
        last_subject = Some(subject);
        for chunk in resources.chunks(BULK_CHUNK) {
            let first_items: Option<Vec<&CheckRequest>> = chunk
                .iter()
                .map(|(_, items)| items.first().and_then(|i| reqs.get(*i)))
                .collect();
            if let Some(answers) =
                first_items.and_then(|firsts| fast_answers(engine, snap, &firsts, chunk.len() > 1))
            {
                for ((_, items), yes) in chunk.iter().zip(answers) {
                    out.extend(items.iter().map(|i| (*i, Ok(plain_result(yes)))));
                }
                continue;
            }
            let memo = if chunk.len() == 1 {
                &mut single
            } else {
                &mut batch
            };
            let mut d = Dispatcher::new(engine, snap);
            let mut outcomes = Vec::with_capacity(chunk.len());
            let mut failure: Option<EngineError> = None;
            for (_, items) in chunk {
                let Some(req) = items.first().and_then(|i| reqs.get(*i)) else {
                    continue;
                };
                let solved = check_outcome(
                    &mut d,
                    memo,
                    &req.resource,
                    &req.permission,
                    &req.subject,
                    req.with_tracing,
                );
                match solved {
                    Ok((Outcome::Unresolved(_), _)) => failure = Some(d.depth_error()),
                    Ok(o) => outcomes.push((items, o)),
                    Err(e) => failure = Some(e),
                }
                if failure.is_some() {
                    break;
                }
            }
            if let Some(err) = failure {
                for (_, items) in chunk {
                    for i in items {
                        out.push((*i, Err(err.clone())));
                    }
                }
                continue;
            }
            // As SpiceDB's bulk checker: the caveats of every resource of the chunk are
            // evaluated, and one that fails (a context value of the wrong type, an evaluation
            // error) fails every item of the chunk, whatever their own answers.
            let mut answers = Vec::with_capacity(chunk.len());
            for (items, (outcome, trace)) in outcomes {
                for i in items {
                    let Some(req) = reqs.get(*i) else { continue };
                    match finish(&d, outcome.clone(), &req.context) {
                        Ok((permissionship, missing_context, expires_at)) => {
                            answers.push((
                                *i,
                                CheckResult {
                                    permissionship,
                                    missing_context,
                                    expires_at,
                                    trace: trace.clone().map(|mut t| {
                                        t.result = permissionship;
                                        t
                                    }),
                                },
                            ));
                        }
                        Err(e) => failure = Some(e),
                    }
                    if failure.is_some() {
                        break;
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
            match failure {
                Some(err) => {
                    for (_, items) in chunk {
                        for i in items {
                            out.push((*i, Err(err.clone())));
                        }
                    }
                }
                None => out.extend(answers.into_iter().map(|(i, r)| (i, Ok(r)))),
            }
        }
    }
    out
}

/// What CheckBulk items are grouped by: resource type, permission, subject and context (as
/// JSON).
type BulkKey<'r> = (&'r str, &'r str, &'r SubjectRef, String);

/// The distinct resource ids of a CheckBulk group, each with the indexes of its items.
type BulkGroup<'r> = Vec<(&'r str, Vec<usize>)>;

/// How many resource ids SpiceDB dispatches together (`--dispatch-chunk-size`).
const BULK_CHUNK: usize = 100;
