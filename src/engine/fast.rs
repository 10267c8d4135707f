//! Step three, graph evaluation — the fast path of Check: the same rewrite rules as `check`,
//! walked over the store's in-memory graph by interned names ([`GraphView`]), with no filters
//! built and no relationships copied, for the common case: a plain subject, no tracing, and
//! only plain relationships (no caveat, no expiration) on the way.
//!
//! It answers only where the general checker would give the same answer, and gives up
//! ([`Bail`]) everywhere else, for the general checker to answer:
//! - a caveated or expiring relationship on the way (the answer may be conditional, carry an
//!   expiry, or fail on the context);
//! - a cycle (a sub-problem met again while being solved) or a walk deeper than its depth
//!   budget, which it spends at every nested sub-problem, never less than the general checker
//!   does, so a walk it completes is one the general checker completes too;
//! - a deadline passed or a cancelled request;
//! - in `require_all` mode (CheckBulk items dispatched together), it evaluates every branch the
//!   general checker evaluates in that mode, so a cycle or depth limit that fails the general
//!   checker's chunk makes it give up too.
//!
//! Where it completes, every branch it visited was decided by plain relationships, so its
//! answer is the set-semantics answer the general checker reaches. The YAML cases and a
//! randomised test run both and compare.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::engine::{CheckRequest, Snapshot};
use crate::schema::{AllowedKind, ArrowKind, CompiledSchema, Definition, Expr, Member, Relation};
use crate::store::{EMPTY, GraphView, Sym};

/// The fast path cannot answer: the general checker must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bail;

/// How deep the fast path walks at most, whatever the configured budget: the general checker
/// also stops at its stack budget, a few hundred nested sub-problems deep.
const FAST_MAX_DEPTH: u32 = 64;

/// How many sub-problems between two looks at the deadline and the cancel flag.
const POLL_EVERY: u32 = 256;

/// A solved sub-problem: the answer, and how many nested levels solving it took (so it is
/// reused only where at least that much depth remains).
#[derive(Debug, Clone, Copy)]
enum FastMemoEntry {
    InProgress,
    Done { yes: bool, height: u32 },
}

/// An answer and the height of the walk that found it.
type Answer = Result<(bool, u32), Bail>;

/// Solved sub-problems of one subject at one revision, kept across graph views (a
/// LookupResources checks many candidates, one view at a time).
#[derive(Debug, Default)]
pub(crate) struct FastMemo {
    /// (member's address, resource id) -> entry; the member fixes the resource type
    entries: FxHashMap<(usize, Sym), FastMemoEntry>,
}

/// Solves checks of one plain subject over one graph view.
pub(crate) struct FastChecker<'a, 'm> {
    view: &'a GraphView<'a>,
    schema: &'a CompiledSchema,
    snap: &'a Snapshot<'a>,
    subject_type_name: &'a str,
    subject_type: Option<Sym>,
    subject_id: Option<Sym>,
    wildcard: Option<Sym>,
    require_all: bool,
    max_depth: u32,
    memo: &'m mut FastMemo,
    polls: u32,
}

impl<'a, 'm> FastChecker<'a, 'm> {
    /// A checker for plain subject `subject_type:subject_id`.
    pub(crate) fn new(
        view: &'a GraphView<'a>,
        snap: &'a Snapshot<'a>,
        subject_type_name: &'a str,
        subject_id: &str,
        require_all: bool,
        max_depth: u32,
        memo: &'m mut FastMemo,
    ) -> FastChecker<'a, 'm> {
        FastChecker {
            view,
            schema: snap.schema,
            snap,
            subject_type_name,
            subject_type: view.sym(subject_type_name),
            subject_id: view.sym(subject_id),
            wildcard: view.sym("*"),
            require_all,
            max_depth: max_depth.min(FAST_MAX_DEPTH),
            memo,
            polls: 0,
        }
    }

    /// Is the subject a member of `resource_type:resource_id#permission`?
    pub(crate) fn check(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        permission: &str,
    ) -> Result<bool, Bail> {
        let def = self.schema.definition(resource_type).ok_or(Bail)?;
        // An object no relationship names can still be reached through `self` or a
        // wildcard; the general checker answers those.
        let id = self.view.sym(resource_id).ok_or(Bail)?;
        let tsym = self.view.sym(&def.name);
        self.dispatch(def, tsym, id, permission, self.max_depth)
            .map(|(yes, _)| yes)
    }

    /// Adds the sub-problems dispatched so far (one poll each) to the metrics.
    fn count_dispatches(&self) {
        if let Some(m) = crate::engine::metrics::get() {
            m.evaluation(u64::from(self.polls));
        }
    }

    /// Looks at the deadline and the cancel flag at the first sub-problem and every
    /// [`POLL_EVERY`] after it.
    fn poll(&mut self) -> Result<(), Bail> {
        let due = self.polls.is_multiple_of(POLL_EVERY);
        self.polls = self.polls.wrapping_add(1);
        if !due {
            return Ok(());
        }
        let cancelled = self
            .snap
            .cancelled
            .is_some_and(|f| f.load(Ordering::Relaxed));
        let late = self.snap.deadline.is_some_and(|d| Instant::now() >= d);
        if cancelled || late { Err(Bail) } else { Ok(()) }
    }

    /// One sub-problem, `def:id#name`, with `depth` levels of budget; memoized.
    fn dispatch(
        &mut self,
        def: &'a Definition,
        tsym: Option<Sym>,
        id: Sym,
        name: &str,
        depth: u32,
    ) -> Answer {
        self.poll()?;
        if depth == 0 {
            return Err(Bail);
        }
        let Some(member) = def.member(name) else {
            return Ok((false, 0));
        };
        let addr = match member {
            Member::Relation(r) => std::ptr::from_ref(r) as usize,
            Member::Permission(p) => std::ptr::from_ref(p) as usize,
        };
        let key = (addr, id);
        match self.memo.entries.get(&key) {
            Some(FastMemoEntry::InProgress) => return Err(Bail),
            Some(FastMemoEntry::Done { yes, height }) if *height <= depth => {
                return Ok((*yes, *height));
            }
            _ => {}
        }
        self.memo.entries.insert(key, FastMemoEntry::InProgress);
        let solved = match member {
            Member::Relation(r) => self.direct(tsym, id, r, depth),
            Member::Permission(p) => self.rewrite(def, tsym, id, &p.expr, depth),
        };
        match solved {
            Ok((yes, below)) => {
                let height = below.saturating_add(1);
                self.memo
                    .entries
                    .insert(key, FastMemoEntry::Done { yes, height });
                Ok((yes, height))
            }
            Err(Bail) => {
                self.memo.entries.remove(&key);
                Err(Bail)
            }
        }
    }

    /// A relation's stored relationships: the exact tuple, the wildcard, then the subject
    /// sets, as `Checker::check_direct`.
    fn direct(&mut self, tsym: Option<Sym>, id: Sym, relation: &'a Relation, depth: u32) -> Answer {
        let view = self.view;
        let (Some(t), Some(rel)) = (tsym, view.sym(&relation.name)) else {
            return Ok((false, 0));
        };
        // The subject's own tuple, then its type's wildcard, where the relation allows them.
        let st_name = self.subject_type_name;
        for (kind, subject_id) in [
            (AllowedKind::Direct, self.subject_id),
            (AllowedKind::Wildcard, self.wildcard),
        ] {
            if let (Some(st), Some(sid)) = (self.subject_type, subject_id)
                && relation
                    .allowed
                    .iter()
                    .any(|a| a.type_name == st_name && a.kind == kind)
                && let Some(plain) = view.tuple([t, id, rel, st, sid, EMPTY])
            {
                return if plain { Ok((true, 0)) } else { Err(Bail) };
            }
        }
        let mut acc = UnionOfAnswers::new(self.require_all);
        for (set_type_name, subject_relation) in relation.subject_sets() {
            let (Some(set_type), Some(set_rel)) =
                (view.sym(set_type_name), view.sym(subject_relation))
            else {
                continue;
            };
            let Some(set_def) = self.schema.definition(set_type_name) else {
                continue;
            };
            for e in view.subject_sets(t, id, rel) {
                if e.subject_type != set_type || e.subject_relation != set_rel {
                    continue;
                }
                if !e.plain {
                    return Err(Bail);
                }
                let sub = self.dispatch(
                    set_def,
                    Some(set_type),
                    e.subject_id,
                    subject_relation,
                    depth.saturating_sub(1),
                )?;
                if acc.add(sub) {
                    return Ok(acc.finish());
                }
            }
        }
        Ok(acc.finish())
    }

    /// A permission's expression, as `Checker::check_rewrite`.
    fn rewrite(
        &mut self,
        def: &'a Definition,
        tsym: Option<Sym>,
        id: Sym,
        expr: &'a Expr,
        depth: u32,
    ) -> Answer {
        match expr {
            Expr::Nil => Ok((false, 0)),
            Expr::Self_ => Ok((
                def.name == self.subject_type_name && self.subject_id == Some(id),
                0,
            )),
            Expr::Computed(name) => self.dispatch(def, tsym, id, name, depth.saturating_sub(1)),
            Expr::Arrow {
                tupleset,
                computed,
                kind: ArrowKind::Any,
            } => self.arrow_any(tsym, id, tupleset, computed, depth),
            Expr::Arrow {
                tupleset,
                computed,
                kind: ArrowKind::All,
            } => self.arrow_all(tsym, id, tupleset, computed, depth),
            Expr::Union(items) => {
                let mut acc = UnionOfAnswers::new(self.require_all);
                for e in items {
                    let o = self.rewrite(def, tsym, id, e, depth)?;
                    if acc.add(o) {
                        break;
                    }
                }
                Ok(acc.finish())
            }
            Expr::Intersection(items) => {
                let mut height = 0;
                for e in items {
                    let (yes, h) = self.rewrite(def, tsym, id, e, depth)?;
                    height = height.max(h);
                    if !yes {
                        return Ok((false, height));
                    }
                }
                Ok((!items.is_empty(), height))
            }
            Expr::Exclusion(base, subtracted) => {
                let (yes, h) = self.rewrite(def, tsym, id, base, depth)?;
                if !yes {
                    return Ok((false, h));
                }
                let (sub, h2) = self.rewrite(def, tsym, id, subtracted, depth)?;
                Ok((!sub, h.max(h2)))
            }
        }
    }

    /// The object a tupleset relationship points to, if its type has `computed`.
    fn target(&self, e: &crate::store::Edge, computed: &str) -> Option<&'a Definition> {
        let def = self.schema.definition(self.view.name(e.subject_type))?;
        def.member(computed).is_some().then_some(def)
    }

    /// The visible relationships of the object's `tupleset` relation (none if the names were
    /// never written).
    fn tupleset_edges(
        &self,
        tsym: Option<Sym>,
        id: Sym,
        tupleset: &str,
    ) -> impl Iterator<Item = crate::store::Edge> + use<'a, 'm> {
        let view: &'a GraphView<'a> = self.view;
        let key = tsym.zip(view.sym(tupleset));
        key.into_iter()
            .flat_map(move |(t, ts)| view.subjects(t, id, ts))
    }

    /// `tupleset->computed`, as `Checker::check_tuple_to_userset`.
    fn arrow_any(
        &mut self,
        tsym: Option<Sym>,
        id: Sym,
        tupleset: &str,
        computed: &str,
        depth: u32,
    ) -> Answer {
        let mut acc = UnionOfAnswers::new(self.require_all);
        for e in self.tupleset_edges(tsym, id, tupleset) {
            if !e.plain {
                return Err(Bail);
            }
            let Some(target) = self.target(&e, computed) else {
                continue;
            };
            let sub = self.dispatch(
                target,
                Some(e.subject_type),
                e.subject_id,
                computed,
                depth.saturating_sub(1),
            )?;
            if acc.add(sub) {
                break;
            }
        }
        Ok(acc.finish())
    }

    /// `tupleset.all(computed)`, as `Checker::check_intersection_tuple_to_userset`.
    fn arrow_all(
        &mut self,
        tsym: Option<Sym>,
        id: Sym,
        tupleset: &str,
        computed: &str,
        depth: u32,
    ) -> Answer {
        let mut height = 0;
        let mut any = false;
        for e in self.tupleset_edges(tsym, id, tupleset) {
            if !e.plain {
                return Err(Bail);
            }
            let Some(target) = self.target(&e, computed) else {
                return Ok((false, height));
            };
            any = true;
            let (yes, h) = self.dispatch(
                target,
                Some(e.subject_type),
                e.subject_id,
                computed,
                depth.saturating_sub(1),
            )?;
            height = height.max(h);
            if !yes {
                return Ok((false, height));
            }
        }
        Ok((any, height))
    }
}

/// A union's answer so far: decided at the first member unless every branch must be
/// evaluated.
struct UnionOfAnswers {
    yes: bool,
    height: u32,
    require_all: bool,
}

impl UnionOfAnswers {
    fn new(require_all: bool) -> UnionOfAnswers {
        UnionOfAnswers {
            yes: false,
            height: 0,
            require_all,
        }
    }

    /// Adds a branch; true once the union is decided and no more branches are needed.
    fn add(&mut self, (yes, height): (bool, u32)) -> bool {
        self.height = self.height.max(height);
        self.yes |= yes;
        yes && !self.require_all
    }

    fn finish(&self) -> (bool, u32) {
        (self.yes, self.height)
    }
}

/// Check through the fast path: `Some(answer)` where it can answer, `None` where the general
/// checker must (see the module docs). `require_all` as CheckBulk's chunks of several resources.
pub(crate) fn try_check(
    snap: &Snapshot<'_>,
    max_depth: u32,
    requests: &[&CheckRequest],
    require_all: bool,
) -> Option<Vec<bool>> {
    let subject = &requests.first()?.subject;
    if subject.relation.is_some() {
        return None;
    }
    // A store error or no graph: the fast path gives up, and the general checker reads the
    // store itself (and reports its error).
    let view = snap.store.graph_view(snap.revision, snap.now).ok()??;
    let mut memo = FastMemo::default();
    let mut checker = FastChecker::new(
        &view,
        snap,
        &subject.object.object_type,
        &subject.object.object_id,
        require_all,
        max_depth,
        &mut memo,
    );
    let answers = requests
        .iter()
        .map(|r| {
            if r.with_tracing || r.subject != *subject {
                return Err(Bail);
            }
            checker.check(
                &r.resource.object_type,
                &r.resource.object_id,
                &r.permission,
            )
        })
        .collect::<Result<Vec<bool>, Bail>>()
        // `Bail`: the fast path gives up (see the module docs), not an error
        .ok();
    checker.count_dispatches();
    answers
}

/// How many candidate checks run at most under one hold of the graph's read lock. A hold also
/// ends early, after the current candidate, when a writer is waiting for the lock, so a
/// lookup over a million candidates keeps a writer, and the Checks queued behind it, waiting
/// for one candidate check, not for the lookup.
pub(crate) const IDS_PER_VIEW: usize = 256;

/// The fast path's answers for `subject` on `resource_type:id#permission` for each of `ids`
/// (a LookupResources candidate check): `Some(answer)` where it can answer, `None` where the
/// general checker must. `None` for all if it cannot run at all (a subject set, no graph).
/// `memo` must only ever be used for this subject and snapshot. The graph's read lock is
/// taken afresh after at most [`IDS_PER_VIEW`] ids: the snapshot's revision is fixed, so what the
/// memo learnt under one hold stays true under the next.
pub(crate) fn check_ids<'i>(
    snap: &Snapshot<'_>,
    memo: &mut FastMemo,
    max_depth: u32,
    subject: &crate::model::SubjectRef,
    resource_type: &str,
    permission: &str,
    ids: impl Iterator<Item = &'i str>,
) -> Option<Vec<Option<bool>>> {
    if subject.relation.is_some() {
        return None;
    }
    let mut ids = ids.peekable();
    let mut out = Vec::new();
    loop {
        // a store error: give up, the general checker reports it
        let view = snap.store.graph_view(snap.revision, snap.now).ok()??;
        let mut checker = FastChecker::new(
            &view,
            snap,
            &subject.object.object_type,
            &subject.object.object_id,
            false,
            max_depth,
            memo,
        );
        // At most a chunk per hold, and less when a writer is waiting: then it gets the lock
        // after this one candidate, instead of after the chunk, and so do the Checks queued
        // behind it.
        for _ in 0..IDS_PER_VIEW {
            let Some(id) = ids.next() else { break };
            // `Bail` is `None`: this id goes to the general checker
            out.push(checker.check(resource_type, id, permission).ok());
            if view.writer_waiting() {
                break;
            }
        }
        checker.count_dispatches();
        drop(view);
        // Pulled with no lock held: the next chunk's first id.
        if ids.peek().is_none() {
            return Some(out);
        }
    }
}
