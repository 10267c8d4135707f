//! Check's rewrite rules, each written once, generic over where relationships come from.
//!
//! Named as in SpiceDB's `internal/graph/check.go`: [`check_direct`] (a relation's stored
//! relationships: the subject's own tuple, its type's wildcard, subject sets),
//! [`check_computed_userset`], [`check_tuple_to_userset`] (`tupleset->computed`, `.any`),
//! [`check_intersection_tuple_to_userset`] (`.all`), and the set operations [`union`],
//! [`intersection`] and [`exclusion`].
//!
//! The rules are generic over a [`Walk`]: where a relation's relationships come from, and what
//! an answer is. Two walkers run them:
//! - the general checker (`check.rs`) reads filtered relationships from the store and answers
//!   with three-valued, caveated outcomes (`outcome.rs`), with a memo
//!   that resolves cycles and a trace;
//! - the fast path (`fast.rs`) reads the graph's interned symbols and answers plain yes or no,
//!   giving up (its `Error`) wherever a plain answer is not enough.
//!
//! A walker owns what happens at a sub-problem, [`Walk::dispatch`] (memo, depth budget,
//! polling, tracing); the rules own everything between two dispatches. Where the rules spend
//! depth is the same for both walkers: one unit per nested sub-problem, none for an alias (see
//! [`solve`]).

use std::ops::ControlFlow;

use crate::schema::{AllowedKind, ArrowKind, CompiledSchema, Definition, Expr, Member, Relation};

/// What an answer to a check sub-problem is, and how branches combine.
pub(crate) trait Answer: Sized {
    /// A union's answer so far.
    type Union: Accumulator<Self>;
    /// An intersection's answer so far.
    type Intersection: Accumulator<Self>;

    /// Not a member.
    fn no() -> Self;
    /// A member, unconditionally and for ever.
    fn yes() -> Self;
    /// A member whatever the caveat context: decides a union.
    fn is_unconditional(&self) -> bool;
    /// Possibly a member: an exclusion whose base is not goes no further.
    fn may_be_member(&self) -> bool;
    /// An empty union; `require_all` evaluates every branch even once decided (CheckBulk's
    /// chunks of several resources).
    fn union(require_all: bool) -> Self::Union;
    /// An empty intersection (no member until a branch is added).
    fn intersection() -> Self::Intersection;
    /// `base - subtracted`, for a base that may be a member.
    fn exclude(base: Self, subtracted: Self) -> Self;
}

/// Branches of a union or an intersection, added one at a time.
pub(crate) trait Accumulator<A> {
    /// Adds one branch; true once the result is decided and no more branches are needed.
    fn add(&mut self, branch: A) -> bool;
    /// The result.
    fn finish(self) -> A;
}

/// Which stored tuple of the subject [`Walk::find_tuple`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TupleOf {
    /// the subject's own: `resource#relation@subject`
    Subject,
    /// its type's wildcard: `resource#relation@type:*`
    Wildcard,
}

/// Where a check's relationships come from and what its answers are: what the rules need from
/// a walker. `'s` is the schema's lifetime.
pub(crate) trait Walk<'s> {
    /// An object of a known type, as the walker names it (a string, or interned symbols).
    type Id<'e>: Copy;
    /// A relationship read from a resource's relation.
    type Edge;
    /// An answer.
    type Answer: Answer;
    /// Why the walk stops: an engine error, or the fast path giving up.
    type Error;

    /// The schema checked against.
    fn schema(&self) -> &'s CompiledSchema;
    /// Whether every branch of a union is evaluated (see [`Answer::union`]).
    fn require_all(&self) -> bool;
    /// The subject's type.
    fn subject_type(&self) -> &str;
    /// The subject's relation, for a subject set.
    fn subject_relation(&self) -> Option<&str>;
    /// Whether `def:id` is the subject itself (a plain subject, no relation).
    fn is_subject(&self, def: &Definition, id: Self::Id<'_>) -> bool;

    /// A nested sub-problem, `def:id#name`, with `depth` levels of budget left.
    fn dispatch(
        &mut self,
        def: &'s Definition,
        id: Self::Id<'_>,
        name: &str,
        depth: u32,
    ) -> Result<Self::Answer, Self::Error>;

    /// The answer given by the subject's own tuple (or its type's wildcard) on `def:id`'s
    /// `relation`, if stored; only asked where the relation allows it.
    fn find_tuple(
        &mut self,
        def: &'s Definition,
        id: Self::Id<'_>,
        relation: &'s Relation,
        which: TupleOf,
    ) -> Result<Option<Self::Answer>, Self::Error>;

    /// Calls `f` for each relationship of `def:id#relation` whose subject is a
    /// `set_type#set_relation` subject set, until it breaks.
    fn each_subject_set<F>(
        &mut self,
        def: &'s Definition,
        id: Self::Id<'_>,
        relation: &'s Relation,
        set_type: &'s Definition,
        set_relation: &str,
        f: F,
    ) -> Result<(), Self::Error>
    where
        F: FnMut(&mut Self, &Self::Edge) -> Result<ControlFlow<()>, Self::Error>;

    /// Calls `f` for each relationship of `def:id#tupleset`, until it breaks.
    fn each_tupleset<F>(
        &mut self,
        def: &'s Definition,
        id: Self::Id<'_>,
        tupleset: &str,
        f: F,
    ) -> Result<(), Self::Error>
    where
        F: FnMut(&mut Self, &Self::Edge) -> Result<ControlFlow<()>, Self::Error>;

    /// The object a relationship's subject names.
    fn edge_subject<'e>(&self, edge: &'e Self::Edge) -> Self::Id<'e>;
    /// The definition of a relationship's subject type, if the schema has it.
    fn edge_subject_definition(&self, edge: &Self::Edge) -> Option<&'s Definition>;
    /// `sub`, reached through `edge`: the edge's caveat and expiry apply to it.
    fn through(edge: &Self::Edge, sub: Self::Answer) -> Self::Answer;
}

/// Solves `def:id#member` by the relation's stored relationships or the permission's rewrite.
///
/// As SpiceDB's dispatcher: a permission that only names another relation or permission is
/// solved as that one, without spending depth, unless the subject has the resource's type
/// (then the permission itself may be the subject).
pub(crate) fn solve<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    member: Member<'s>,
    depth: u32,
) -> Result<W::Answer, W::Error> {
    let member = if w.subject_type() == def.name {
        Some(member)
    } else {
        alias_target(def, member)
    };
    match member {
        Some(Member::Relation(r)) => check_direct(w, def, id, r, depth),
        Some(Member::Permission(p)) => check_rewrite(w, def, id, &p.expr, depth),
        None => Ok(W::Answer::no()),
    }
}

/// What `member` aliases: for a permission whose whole expression is another relation or
/// permission (`permission view = viewer`), that one, followed through further aliases;
/// otherwise `member` itself. `None` if an alias names nothing (the type checker refuses that).
fn alias_target<'d>(def: &'d Definition, member: Member<'d>) -> Option<Member<'d>> {
    let mut current = member;
    // INVARIANT: the type checker refuses alias cycles; the bound only guards against a
    // schema built some other way.
    for _ in 0..=def.permissions.len() {
        let Member::Permission(p) = current else {
            return Some(current);
        };
        let target = match &p.expr {
            Expr::Computed(t) => t,
            Expr::Union(items) | Expr::Intersection(items) => match items.as_slice() {
                [Expr::Computed(t)] => t,
                _ => return Some(current),
            },
            _ => return Some(current),
        };
        current = def.member(target)?;
    }
    Some(current)
}

/// A relation's stored relationships: first the subject's own tuple (if the relation allows
/// the subject's type), then its type's wildcard (if allowed), then every subject set the
/// relation holds, each dispatched as a sub-problem.
pub(crate) fn check_direct<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    relation: &'s Relation,
    depth: u32,
) -> Result<W::Answer, W::Error> {
    let mut acc = W::Answer::union(w.require_all());
    let subject_type = w.subject_type();
    let own_allowed = relation.allowed.iter().any(|a| {
        a.type_name == subject_type
            && match (&a.kind, w.subject_relation()) {
                (AllowedKind::Direct, None) => true,
                (AllowedKind::SubjectRelation(r), Some(s)) => r == s,
                _ => false,
            }
    });
    // As in SpiceDB, a wildcard of the subject's type matches whatever the subject's relation.
    let wildcard_allowed = relation
        .allowed
        .iter()
        .any(|a| a.type_name == subject_type && a.kind == AllowedKind::Wildcard);

    // A conditional own tuple joins the union after a conditional wildcard: SpiceDB reads both
    // in one query, sorted by subject id, and `*` sorts first (the order decides which caveat
    // is evaluated first, so which error a context failing on both gives, or whether one
    // failing on the wildcard's caveat fails a check the other caveat decides).
    let mut own_conditional = None;
    if own_allowed && let Some(found) = w.find_tuple(def, id, relation, TupleOf::Subject)? {
        // Found for this resource: no further dispatch for it, in any mode.
        if found.is_unconditional() {
            return Ok(found);
        }
        own_conditional = Some(found);
    }
    if wildcard_allowed && let Some(found) = w.find_tuple(def, id, relation, TupleOf::Wildcard)? {
        if found.is_unconditional() {
            return Ok(found);
        }
        acc.add(found);
    }
    if let Some(found) = own_conditional {
        acc.add(found);
    }

    for (set_type, set_relation) in relation.subject_sets() {
        // The type checker refuses a subject set of an undefined type; none can be stored.
        let Some(set_def) = w.schema().definition(set_type) else {
            continue;
        };
        let mut decided = false;
        w.each_subject_set(def, id, relation, set_def, set_relation, |w, edge| {
            let sub = w.dispatch(
                set_def,
                w.edge_subject(edge),
                set_relation,
                depth.saturating_sub(1),
            )?;
            decided = acc.add(W::through(edge, sub));
            Ok(stop_if(decided))
        })?;
        if decided {
            break;
        }
    }
    Ok(acc.finish())
}

/// A permission's expression.
pub(crate) fn check_rewrite<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    expr: &'s Expr,
    depth: u32,
) -> Result<W::Answer, W::Error> {
    match expr {
        Expr::Nil => Ok(W::Answer::no()),
        Expr::Self_ => Ok(if w.is_subject(def, id) {
            W::Answer::yes()
        } else {
            W::Answer::no()
        }),
        Expr::Computed(name) => check_computed_userset(w, def, id, name, depth),
        Expr::Arrow {
            tupleset,
            computed,
            kind: ArrowKind::Any,
        } => check_tuple_to_userset(w, def, id, tupleset, computed, depth),
        Expr::Arrow {
            tupleset,
            computed,
            kind: ArrowKind::All,
        } => check_intersection_tuple_to_userset(w, def, id, tupleset, computed, depth),
        Expr::Union(items) => union(w, def, id, items, depth),
        Expr::Intersection(items) => intersection(w, def, id, items, depth),
        Expr::Exclusion(base, subtracted) => exclusion(w, def, id, base, subtracted, depth),
    }
}

/// Another relation or permission of the same object: a dispatched sub-problem.
pub(crate) fn check_computed_userset<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    name: &str,
    depth: u32,
) -> Result<W::Answer, W::Error> {
    w.dispatch(def, id, name, depth.saturating_sub(1))
}

/// `tupleset->computed`: a member of `computed` on any object the tupleset relation points to
/// (the subject's relation, if any, is ignored, as SpiceDB does; objects whose type has no
/// `computed` contribute nothing).
pub(crate) fn check_tuple_to_userset<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    tupleset: &str,
    computed: &str,
    depth: u32,
) -> Result<W::Answer, W::Error> {
    let mut acc = W::Answer::union(w.require_all());
    w.each_tupleset(def, id, tupleset, |w, edge| {
        Ok(match arrow_target(w, edge, computed, depth)? {
            Some(branch) => stop_if(acc.add(branch)),
            None => ControlFlow::Continue(()),
        })
    })?;
    Ok(acc.finish())
}

/// `tupleset.all(computed)`: a member of `computed` on every object the tupleset relation
/// points to; not a member if it points nowhere, or to an object whose type lacks `computed`.
pub(crate) fn check_intersection_tuple_to_userset<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    tupleset: &str,
    computed: &str,
    depth: u32,
) -> Result<W::Answer, W::Error> {
    let mut acc = W::Answer::intersection();
    w.each_tupleset(def, id, tupleset, |w, edge| {
        let branch = arrow_target(w, edge, computed, depth)?.unwrap_or_else(W::Answer::no);
        Ok(stop_if(acc.add(branch)))
    })?;
    Ok(acc.finish())
}

/// One arrow branch: `computed` on the object a tupleset relationship points to, dispatched
/// and seen through that relationship; `None` if the object's type has no `computed`.
fn arrow_target<'s, W: Walk<'s>>(
    w: &mut W,
    edge: &W::Edge,
    computed: &str,
    depth: u32,
) -> Result<Option<W::Answer>, W::Error> {
    let Some(target) = w
        .edge_subject_definition(edge)
        .filter(|t| t.member(computed).is_some())
    else {
        return Ok(None);
    };
    let sub = w.dispatch(
        target,
        w.edge_subject(edge),
        computed,
        depth.saturating_sub(1),
    )?;
    Ok(Some(W::through(edge, sub)))
}

/// Stops an edge walk once the accumulated answer is decided.
fn stop_if(decided: bool) -> ControlFlow<()> {
    if decided {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// `a + b + ...`: stops at the first unconditional member.
pub(crate) fn union<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    items: &'s [Expr],
    depth: u32,
) -> Result<W::Answer, W::Error> {
    let mut acc = W::Answer::union(w.require_all());
    for e in items {
        if acc.add(check_rewrite(w, def, id, e, depth)?) {
            break;
        }
    }
    Ok(acc.finish())
}

/// `a & b & ...`: stops at the first non-member.
pub(crate) fn intersection<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    items: &'s [Expr],
    depth: u32,
) -> Result<W::Answer, W::Error> {
    let mut acc = W::Answer::intersection();
    for e in items {
        if acc.add(check_rewrite(w, def, id, e, depth)?) {
            break;
        }
    }
    Ok(acc.finish())
}

/// `base - subtracted`. Like SpiceDB, the base is decided first: a base that is not possibly a
/// member (no, or unresolved) is the answer.
pub(crate) fn exclusion<'s, W: Walk<'s>>(
    w: &mut W,
    def: &'s Definition,
    id: W::Id<'_>,
    base: &'s Expr,
    subtracted: &'s Expr,
    depth: u32,
) -> Result<W::Answer, W::Error> {
    let base = check_rewrite(w, def, id, base, depth)?;
    if !base.may_be_member() {
        return Ok(base);
    }
    let subtracted = check_rewrite(w, def, id, subtracted, depth)?;
    Ok(W::Answer::exclude(base, subtracted))
}
