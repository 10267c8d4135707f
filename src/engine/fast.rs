//! The fast path of Check: the rewrite rules run over the in-memory graph, to plain answers.
//!
//! The rules of `rules.rs` run over the store's in-memory graph by interned names ([`GraphView`]),
//! with no filters built and no relationships copied, for the common case: a plain subject, no
//! tracing, and only plain relationships (no caveat, no expiration) on the way.
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

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::engine::rules::{self, Accumulator, Answer, TupleOf, Walk};
use crate::engine::{CheckRequest, Snapshot};
use crate::schema::{CompiledSchema, Definition, Member, Relation};
use crate::store::{EMPTY, Edge, GraphView, Sym};

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

/// Solved sub-problems of one subject at one revision, kept across graph views (a
/// LookupResources checks many candidates, one view at a time).
#[derive(Debug, Default)]
pub(crate) struct FastMemo {
    /// (member's address, resource id) -> entry; the member fixes the resource type
    entries: FxHashMap<(usize, Sym), FastMemoEntry>,
    /// entries added under the last graph view, which [`FastMemo::make_room`] keeps room for
    last_added: usize,
    /// how many times the table grew while a graph view was held (what `make_room` avoids)
    pub(crate) grown_under_view: u32,
}

/// Room [`FastMemo::make_room`] keeps at least, in entries.
const MEMO_MIN_ROOM: usize = 1024;

impl FastMemo {
    /// How many sub-problems are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Grows the table, if the next graph view could fill it, before the view is taken. A
    /// table of millions of entries (a lookup over a million candidates) takes a good part of
    /// a second to grow: it allocates its next size and moves every entry. Grown under the
    /// graph's read lock while a writer waits, that stalls the writer and every Check queued
    /// behind it; grown here, with no lock held, it stalls nobody. The room kept is twice what
    /// the last view added, so a view grows the table itself only if it adds more than that.
    fn make_room(&mut self) {
        let want = self.last_added.saturating_mul(2).max(MEMO_MIN_ROOM);
        if self.entries.capacity() - self.entries.len() < want {
            self.entries.reserve(want);
        }
    }
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
    /// the last relation whose name was looked up, by address, and its symbol
    last_relation: (usize, Option<Sym>),
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
            last_relation: (0, None),
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
        let object = FastObject {
            t: self.view.sym(&def.name),
            id,
        };
        self.dispatch(def, object, permission, self.max_depth)
            .map(|a| a.yes)
    }

    /// The symbol of `relation`'s name; remembered for the last relation, which
    /// [`rules::check_direct`] asks for again at once.
    fn relation_sym(&mut self, relation: &Relation) -> Option<Sym> {
        let addr = std::ptr::from_ref(relation) as usize;
        if self.last_relation.0 != addr {
            self.last_relation = (addr, self.view.sym(&relation.name));
        }
        self.last_relation.1
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
}

/// An object as the fast path names it: its type's symbol (`None` if no relationship ever
/// named the type) and its id's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastObject {
    t: Option<Sym>,
    id: Sym,
}

/// The fast path runs the rewrite rules over the graph's interned symbols, to plain answers,
/// and gives up ([`Bail`]) where they are not enough.
impl<'a> Walk<'a> for FastChecker<'a, '_> {
    type Id<'e> = FastObject;
    type Edge = Edge;
    type Answer = PlainAnswer;
    type Error = Bail;

    fn schema(&self) -> &'a CompiledSchema {
        self.schema
    }

    fn require_all(&self) -> bool {
        self.require_all
    }

    fn subject_type(&self) -> &str {
        self.subject_type_name
    }

    fn subject_relation(&self) -> Option<&str> {
        None
    }

    fn is_subject(&self, def: &Definition, id: FastObject) -> bool {
        def.name == self.subject_type_name && self.subject_id == Some(id.id)
    }

    /// One sub-problem, memoized by the member it names; a cycle (a sub-problem met again while
    /// being solved) or an exhausted depth budget gives up.
    fn dispatch(
        &mut self,
        def: &'a Definition,
        id: FastObject,
        name: &str,
        depth: u32,
    ) -> Result<PlainAnswer, Bail> {
        self.poll()?;
        if depth == 0 {
            return Err(Bail);
        }
        let Some(member) = def.member(name) else {
            return Ok(PlainAnswer::no());
        };
        let addr = match member {
            Member::Relation(r) => std::ptr::from_ref(r) as usize,
            Member::Permission(p) => std::ptr::from_ref(p) as usize,
        };
        let key = (addr, id.id);
        match self.memo.entries.get(&key) {
            Some(FastMemoEntry::InProgress) => return Err(Bail),
            Some(FastMemoEntry::Done { yes, height }) if *height <= depth => {
                return Ok(PlainAnswer {
                    yes: *yes,
                    height: *height,
                });
            }
            _ => {}
        }
        self.memo.entries.insert(key, FastMemoEntry::InProgress);
        match rules::solve(self, def, id, member, depth) {
            Ok(below) => {
                let height = below.height.saturating_add(1);
                let yes = below.yes;
                self.memo
                    .entries
                    .insert(key, FastMemoEntry::Done { yes, height });
                Ok(PlainAnswer { yes, height })
            }
            Err(Bail) => {
                self.memo.entries.remove(&key);
                Err(Bail)
            }
        }
    }

    /// The subject's tuple or its type's wildcard; a caveated or expiring one gives up.
    fn find_tuple(
        &mut self,
        _def: &'a Definition,
        id: FastObject,
        relation: &'a Relation,
        which: TupleOf,
    ) -> Result<Option<PlainAnswer>, Bail> {
        let subject_id = match which {
            TupleOf::Subject => self.subject_id,
            TupleOf::Wildcard => self.wildcard,
        };
        let (Some(t), Some(rel), Some(st), Some(sid)) = (
            id.t,
            self.relation_sym(relation),
            self.subject_type,
            subject_id,
        ) else {
            return Ok(None);
        };
        match self.view.tuple([t, id.id, rel, st, sid, EMPTY]) {
            None => Ok(None),
            Some(true) => Ok(Some(PlainAnswer::yes())),
            Some(false) => Err(Bail),
        }
    }

    /// A caveated or expiring subject set gives up.
    fn each_subject_set<F>(
        &mut self,
        _def: &'a Definition,
        id: FastObject,
        relation: &'a Relation,
        set_type: &'a Definition,
        set_relation: &str,
        mut f: F,
    ) -> Result<(), Bail>
    where
        F: FnMut(&mut Self, &Edge) -> Result<ControlFlow<()>, Bail>,
    {
        let view: &'a GraphView<'a> = self.view;
        let (Some(t), Some(rel), Some(st), Some(sr)) = (
            id.t,
            self.relation_sym(relation),
            view.sym(&set_type.name),
            view.sym(set_relation),
        ) else {
            return Ok(());
        };
        for e in view.subject_sets(t, id.id, rel) {
            if e.subject_type != st || e.subject_relation != sr {
                continue;
            }
            if !e.plain {
                return Err(Bail);
            }
            if f(self, &e)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// A caveated or expiring tupleset relationship gives up.
    fn each_tupleset<F>(
        &mut self,
        _def: &'a Definition,
        id: FastObject,
        tupleset: &str,
        mut f: F,
    ) -> Result<(), Bail>
    where
        F: FnMut(&mut Self, &Edge) -> Result<ControlFlow<()>, Bail>,
    {
        let view: &'a GraphView<'a> = self.view;
        let (Some(t), Some(ts)) = (id.t, view.sym(tupleset)) else {
            return Ok(());
        };
        for e in view.subjects(t, id.id, ts) {
            if !e.plain {
                return Err(Bail);
            }
            if f(self, &e)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn edge_subject(&self, edge: &Edge) -> FastObject {
        FastObject {
            t: Some(edge.subject_type),
            id: edge.subject_id,
        }
    }

    fn edge_subject_definition(&self, edge: &Edge) -> Option<&'a Definition> {
        self.schema.definition(self.view.name(edge.subject_type))
    }

    /// Only plain relationships are walked: nothing applies.
    fn through(_edge: &Edge, sub: PlainAnswer) -> PlainAnswer {
        sub
    }
}

/// A plain answer, and how many nested levels finding it took (a memo entry is reused only
/// where at least that much depth remains, so the fast path never completes a walk the general
/// checker would find too deep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlainAnswer {
    yes: bool,
    height: u32,
}

impl Answer for PlainAnswer {
    type Union = UnionOfAnswers;
    type Intersection = IntersectionOfAnswers;

    fn no() -> PlainAnswer {
        PlainAnswer {
            yes: false,
            height: 0,
        }
    }

    fn yes() -> PlainAnswer {
        PlainAnswer {
            yes: true,
            height: 0,
        }
    }

    fn is_unconditional(&self) -> bool {
        self.yes
    }

    fn may_be_member(&self) -> bool {
        self.yes
    }

    fn union(require_all: bool) -> UnionOfAnswers {
        UnionOfAnswers {
            yes: false,
            height: 0,
            require_all,
        }
    }

    fn intersection() -> IntersectionOfAnswers {
        IntersectionOfAnswers {
            any: false,
            no: false,
            height: 0,
        }
    }

    fn exclude(base: PlainAnswer, subtracted: PlainAnswer) -> PlainAnswer {
        PlainAnswer {
            yes: base.yes && !subtracted.yes,
            height: base.height.max(subtracted.height),
        }
    }
}

/// A union's plain answer so far: decided at the first member unless every branch must be
/// evaluated.
pub(crate) struct UnionOfAnswers {
    yes: bool,
    height: u32,
    require_all: bool,
}

impl Accumulator<PlainAnswer> for UnionOfAnswers {
    fn add(&mut self, branch: PlainAnswer) -> bool {
        self.height = self.height.max(branch.height);
        self.yes |= branch.yes;
        branch.yes && !self.require_all
    }

    fn finish(self) -> PlainAnswer {
        PlainAnswer {
            yes: self.yes,
            height: self.height,
        }
    }
}

/// An intersection's plain answer so far: decided at the first non-member; no branch at all
/// is no member.
pub(crate) struct IntersectionOfAnswers {
    any: bool,
    no: bool,
    height: u32,
}

impl Accumulator<PlainAnswer> for IntersectionOfAnswers {
    fn add(&mut self, branch: PlainAnswer) -> bool {
        self.any = true;
        self.height = self.height.max(branch.height);
        self.no |= !branch.yes;
        !branch.yes
    }

    fn finish(self) -> PlainAnswer {
        PlainAnswer {
            yes: self.any && !self.no,
            height: self.height,
        }
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
        memo.make_room();
        let (before, capacity) = (memo.entries.len(), memo.entries.capacity());
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
        memo.last_added = memo.entries.len().saturating_sub(before);
        if memo.entries.capacity() != capacity {
            memo.grown_under_view += 1;
        }
        // Pulled with no lock held: the next chunk's first id.
        if ids.peek().is_none() {
            return Some(out);
        }
    }
}
