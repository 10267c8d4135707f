//! Step three, graph evaluation — LookupSubjects: which subjects of a type have a permission on
//! one resource. A forward walk from the resource, as SpiceDB's `lookupsubjects.go`: stored
//! subjects of the wanted type (and relation), subject sets followed, arrows followed, and the
//! set operations applied to subject sets that may contain the wildcard `*` with exclusions.
//!
//! Subject sets follow SpiceDB's `BaseSubjectSet`: concrete subjects (each with its caveat) and
//! the wildcard (with its caveat and its excluded subjects, each with a caveat) are kept apart,
//! and union, intersection and exclusion combine them by SpiceDB's rules, so the answers match
//! SpiceDB's, caveats included. Where those rules are not pointwise-exact, SpiceDB's are kept:
//! a concrete subject reached under a caveat is listed CONDITIONAL next to an unconditional
//! wildcard; `{*[c]} ∪ {* - {tom}}` is an unconditional wildcard; `{*[c]} - {* - {tom}}` keeps
//! the wildcard `*[c]`. The result lists every concrete subject whose caveat is not false, and
//! the wildcard with its exclusions (each decided by its own caveat).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use crate::engine::caveats::{self, CaveatExpr, CaveatOutcome};
use crate::engine::check::resource_filter;
use crate::engine::dispatch::{Dispatcher, Pager};
use crate::engine::error::EngineResult;
use crate::engine::validate;
use crate::engine::{Engine, Permissionship, ResolvedSubject, Snapshot};
use crate::model::{Caveat, Context, ObjectRef};
use crate::schema::{ArrowKind, Expr, Member};

/// A caveat on a found subject, as SpiceDB's `CaveatExpression`: `None` is unconditional.
type Cav = Option<CaveatExpr>;

/// SpiceDB's `caveats.And`: a missing side is ignored.
fn c_and(a: &Cav, b: &Cav) -> Cav {
    match (a, b) {
        (None, x) | (x, None) => x.clone(),
        (Some(a), Some(b)) => Some(a.clone().and(b.clone())),
    }
}

/// SpiceDB's `caveats.Or`: a missing side is ignored.
fn c_or(a: &Cav, b: &Cav) -> Cav {
    match (a, b) {
        (None, x) | (x, None) => x.clone(),
        (Some(a), Some(b)) => Some(a.clone().or(b.clone())),
    }
}

/// SpiceDB's `caveats.ShortcircuitedOr`: unconditional when either side is.
fn c_sc_or(a: &Cav, b: &Cav) -> Cav {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.clone().or(b.clone())),
        _ => None,
    }
}

/// SpiceDB's `caveats.Invert`: the inversion of nothing is nothing.
fn c_not(a: &Cav) -> Cav {
    a.clone().map(CaveatExpr::negate)
}

/// The wildcard of a subject set: every subject, under `caveat`, but the excluded ones (each
/// excluded under its own caveat).
#[derive(Debug, Clone, PartialEq)]
struct Wildcard {
    caveat: Cav,
    excluded: BTreeMap<String, Cav>,
}

/// A set of subject ids of one type (and relation), with SpiceDB's `BaseSubjectSet` algebra
/// (`internal/datasets/basesubjectset.go`), so that results match SpiceDB's exactly, caveats
/// included: concrete subjects and the wildcard are kept apart (a concrete subject keeps its
/// own caveat next to an unconditional wildcard), and the wildcard carries its exclusions.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SubjectSet {
    concrete: BTreeMap<String, Cav>,
    wildcard: Option<Wildcard>,
}

impl SubjectSet {
    fn empty() -> SubjectSet {
        SubjectSet::default()
    }

    fn is_empty(&self) -> bool {
        self.concrete.is_empty() && self.wildcard.is_none()
    }

    /// Adds subject `id` (or the wildcard, for `*`) under `caveat`: SpiceDB's `Add`.
    fn add(&mut self, id: &str, caveat: Cav) {
        if id == "*" {
            self.add_wildcard(Wildcard {
                caveat,
                excluded: BTreeMap::new(),
            });
        } else {
            self.add_concrete(id, caveat);
        }
    }

    fn add_concrete(&mut self, id: &str, caveat: Cav) {
        let updated = match self.concrete.get(id) {
            None => caveat.clone(),
            Some(existing) => c_sc_or(existing, &caveat),
        };
        self.concrete.insert(id.to_string(), updated);
        if let Some(w) = self.wildcard.take() {
            self.wildcard = Some(union_wildcard_with_concrete(w, id, &caveat));
        }
    }

    fn add_wildcard(&mut self, adding: Wildcard) {
        let mut w = match self.wildcard.take() {
            None => adding,
            Some(existing) => union_wildcard_with_wildcard(existing, adding),
        };
        for (id, caveat) in &self.concrete {
            w = union_wildcard_with_concrete(w, id, caveat);
        }
        self.wildcard = Some(w);
    }

    /// Every caveat `&& parent` (the set reached through a caveated relationship).
    fn with_parent_caveat(&self, parent: &Cav) -> SubjectSet {
        if parent.is_none() {
            return self.clone();
        }
        SubjectSet {
            concrete: self
                .concrete
                .iter()
                .map(|(k, c)| (k.clone(), c_and(parent, c)))
                .collect(),
            wildcard: self.wildcard.as_ref().map(|w| Wildcard {
                caveat: c_and(parent, &w.caveat),
                excluded: w.excluded.clone(),
            }),
        }
    }

    /// `self ∪ other`: SpiceDB's `UnionWithSet` (concrete subjects first, then the wildcard).
    fn union_with(&mut self, other: &SubjectSet) {
        for (id, c) in &other.concrete {
            self.add_concrete(id, c.clone());
        }
        if let Some(w) = &other.wildcard {
            self.add_wildcard(w.clone());
        }
    }

    fn union(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
        if a.is_empty() {
            return b.clone();
        }
        let mut out = a.clone();
        out.union_with(b);
        out
    }

    /// `a ∩ b`: SpiceDB's `IntersectionDifference`.
    fn intersection(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
        let wildcard = match (&a.wildcard, &b.wildcard) {
            (Some(x), Some(y)) => {
                let mut excluded = x.excluded.clone();
                for (id, c) in &y.excluded {
                    let merged = match excluded.get(id) {
                        None => c.clone(),
                        Some(existing) => c_sc_or(existing, c),
                    };
                    excluded.insert(id.clone(), merged);
                }
                Some(Wildcard {
                    caveat: c_and(&x.caveat, &y.caveat),
                    excluded,
                })
            }
            _ => None,
        };
        let mut concrete: BTreeMap<String, Cav> = BTreeMap::new();
        for (id, c) in &a.concrete {
            let both = b.concrete.get(id).map(|c2| c_and(c, c2));
            let via_wildcard = intersect_concrete_with_wildcard(id, c, b.wildcard.as_ref());
            if let Some(r) = union_concrete_options(both, via_wildcard) {
                concrete.insert(id.clone(), r);
            }
        }
        if let Some(aw) = &a.wildcard {
            for (id, c) in &b.concrete {
                let via_wildcard = intersect_concrete_with_wildcard(id, c, Some(aw));
                let existing = concrete.get(id).cloned();
                if let Some(r) = union_concrete_options(existing, via_wildcard) {
                    concrete.insert(id.clone(), r);
                }
            }
        }
        SubjectSet { concrete, wildcard }
    }

    /// `a - b`: SpiceDB's `SubtractAll` (b's concrete subjects first, then its wildcard).
    fn exclusion(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
        let mut out = a.clone();
        for (id, c) in &b.concrete {
            if let Some(existing) = out.concrete.get(id).cloned() {
                match c {
                    None => {
                        out.concrete.remove(id);
                    }
                    Some(_) => {
                        out.concrete.insert(id.clone(), c_and(&existing, &c_not(c)));
                    }
                }
            }
            if let Some(w) = out.wildcard.as_mut() {
                let merged = match w.excluded.get(id) {
                    Some(existing) => c_sc_or(existing, c),
                    None => c.clone(),
                };
                w.excluded.insert(id.clone(), merged);
            }
        }
        if let Some(bw) = &b.wildcard {
            let ids: Vec<String> = out.concrete.keys().cloned().collect();
            for id in ids {
                let Some(c) = out.concrete.get(&id).cloned() else {
                    continue;
                };
                match subtract_wildcard_from_concrete(&id, &c, bw) {
                    Some(updated) => {
                        out.concrete.insert(id, updated);
                    }
                    None => {
                        out.concrete.remove(&id);
                    }
                }
            }
            let (wildcard, to_add) = match out.wildcard.take() {
                None => (None, Vec::new()),
                Some(aw) => subtract_wildcard_from_wildcard(aw, bw),
            };
            out.wildcard = wildcard;
            for (id, c) in to_add {
                out.concrete.insert(id, c);
            }
        }
        out
    }
}

/// SpiceDB's `unionWildcardWithWildcard`: caveats or-ed (unconditional wins), exclusions
/// intersected.
fn union_wildcard_with_wildcard(existing: Wildcard, adding: Wildcard) -> Wildcard {
    let mut excluded = BTreeMap::new();
    for (id, c) in &existing.excluded {
        if let Some(c2) = adding.excluded.get(id) {
            excluded.insert(id.clone(), c_and(c, c2));
        }
    }
    Wildcard {
        caveat: c_sc_or(&existing.caveat, &adding.caveat),
        excluded,
    }
}

/// SpiceDB's `unionWildcardWithConcrete`: an exclusion of the added subject is dropped (the
/// subject is unconditional) or holds only when the subject's caveat does not.
fn union_wildcard_with_concrete(mut w: Wildcard, id: &str, caveat: &Cav) -> Wildcard {
    if let Some(excl) = w.excluded.get(id).cloned() {
        match caveat {
            None => {
                w.excluded.remove(id);
            }
            Some(_) => {
                w.excluded
                    .insert(id.to_string(), c_and(&excl, &c_not(caveat)));
            }
        }
    }
    w
}

/// SpiceDB's `unionConcreteWithConcrete` over optional subjects.
fn union_concrete_options(a: Option<Cav>, b: Option<Cav>) -> Option<Cav> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(c_sc_or(&a, &b)),
    }
}

/// SpiceDB's `intersectConcreteWithWildcard`: the concrete subject, if the wildcard covers it.
fn intersect_concrete_with_wildcard(id: &str, c: &Cav, w: Option<&Wildcard>) -> Option<Cav> {
    let w = w?;
    match w.excluded.get(id) {
        None => Some(c_and(c, &w.caveat)),
        Some(None) => None,
        Some(e) => Some(c_and(c, &c_and(&w.caveat, &c_not(e)))),
    }
}

/// SpiceDB's `subtractWildcardFromConcrete`: `None` when the subject is removed.
fn subtract_wildcard_from_concrete(id: &str, c: &Cav, w: &Wildcard) -> Option<Cav> {
    match w.excluded.get(id) {
        None => w.caveat.as_ref().map(|_| c_and(c, &c_not(&w.caveat))),
        Some(None) => Some(c.clone()),
        Some(e) => Some(c_and(c, &c_or(&c_not(&w.caveat), e))),
    }
}

/// SpiceDB's `subtractWildcardFromWildcard`: the remaining wildcard, and the subjects excluded
/// from the removed wildcard, which become concrete.
fn subtract_wildcard_from_wildcard(
    existing: Wildcard,
    to_remove: &Wildcard,
) -> (Option<Wildcard>, Vec<(String, Cav)>) {
    if to_remove.caveat.is_none() && to_remove.excluded.is_empty() {
        return (None, Vec::new());
    }
    let both = c_and(&existing.caveat, &to_remove.caveat);
    let mut concrete = Vec::new();
    for (id, excl) in &to_remove.excluded {
        match existing.excluded.get(id) {
            Some(None) => {}
            None => concrete.push((id.clone(), c_and(&both, excl))),
            Some(existing_excl) => {
                concrete.push((
                    id.clone(),
                    c_and(&c_and(&both, &c_not(existing_excl)), excl),
                ));
            }
        }
    }
    let combined = c_and(&existing.caveat, &c_not(&to_remove.caveat));
    let wildcard = combined.map(|caveat| Wildcard {
        caveat: Some(caveat),
        excluded: existing.excluded,
    });
    (wildcard, concrete)
}

/// Walks forward from the resource, memoizing each `type:id#relation` solved.
struct SubjectLookup<'d, 's> {
    d: &'d mut Dispatcher<'s>,
    subject_type: &'d str,
    subject_relation: Option<&'d str>,
    memo: HashMap<(String, String, String), Rc<SubjectSet>>,
    /// [`Self::relation_chunks`] of each `type:id#relation` solved
    chunk_memo: HashMap<(String, String, String), Rc<Vec<SubjectSet>>>,
    in_progress: HashSet<(String, String, String)>,
}

impl SubjectLookup<'_, '_> {
    /// The subjects of `resource_type:resource_id#relation`.
    fn lookup(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
        depth: u32,
    ) -> EngineResult<Rc<SubjectSet>> {
        self.d.poll()?;
        let key = (
            resource_type.to_string(),
            resource_id.to_string(),
            relation.to_string(),
        );
        if let Some(found) = self.memo.get(&key) {
            return Ok(Rc::clone(found));
        }
        // A cycle: SpiceDB follows it until the depth budget runs out.
        if depth == 0 || self.in_progress.contains(&key) || self.d.stack_exhausted() {
            return Err(self.d.depth_error());
        }
        self.in_progress.insert(key.clone());
        let schema = self.d.snap.schema;
        let found = match schema.member(resource_type, relation) {
            Some(Member::Relation(_)) => {
                self.lookup_direct_subjects(resource_type, resource_id, relation, depth)
            }
            Some(Member::Permission(p)) => {
                self.lookup_via_rewrite(resource_type, resource_id, &p.expr, depth)
            }
            None => Ok(SubjectSet::empty()),
        };
        self.in_progress.remove(&key);
        let mut found = found?;
        // The subject set itself is in itself.
        if resource_type == self.subject_type && self.subject_relation == Some(relation) {
            found.add(resource_id, None);
        }
        let found = Rc::new(found);
        self.memo.insert(key, Rc::clone(&found));
        Ok(found)
    }

    /// A relation's stored subjects of the wanted type and relation, plus the subjects of every
    /// subject set it holds.
    fn lookup_direct_subjects(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
        depth: u32,
    ) -> EngineResult<SubjectSet> {
        let mut set = SubjectSet::empty();
        let mut pager = Pager::new(resource_filter(resource_type, resource_id, relation, None));
        while let Some(page) = pager.next_page(self.d)? {
            for rel in page {
                let cond = caveat_of(rel.caveat.as_ref());
                if rel.subject.object.object_type == self.subject_type
                    && rel.subject.relation.as_deref() == self.subject_relation
                {
                    set.add(&rel.subject.object.object_id, cond.clone());
                }
                if let Some(subject_relation) = &rel.subject.relation {
                    let sub = self.lookup(
                        &rel.subject.object.object_type,
                        &rel.subject.object.object_id,
                        subject_relation,
                        depth.saturating_sub(1),
                    )?;
                    set.union_with(&sub.with_parent_caveat(&cond));
                }
            }
        }
        Ok(set)
    }

    /// The found subjects of a relation as SpiceDB's LookupSubjects streams them: the
    /// relation's own subjects in one result, then, for each subject set it holds, the results
    /// of that subject set (each under the relationship's caveat), which are again streamed
    /// separately for a relation and merged by the set operation for a permission. SpiceDB's
    /// API evaluates every subject of every result on its own; only a set operation merges
    /// results. Called after [`Self::lookup`] of the same relation succeeded, so no cycle is
    /// on the way.
    fn relation_chunks(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        relation: &str,
        depth: u32,
    ) -> EngineResult<Rc<Vec<SubjectSet>>> {
        self.d.poll()?;
        let key = (
            resource_type.to_string(),
            resource_id.to_string(),
            relation.to_string(),
        );
        if let Some(found) = self.chunk_memo.get(&key) {
            return Ok(Rc::clone(found));
        }
        if depth == 0 || self.d.stack_exhausted() {
            return Err(self.d.depth_error());
        }
        let schema = self.d.snap.schema;
        let mut direct = SubjectSet::empty();
        if resource_type == self.subject_type && self.subject_relation == Some(relation) {
            direct.add(resource_id, None);
        }
        let mut chunks = Vec::new();
        let mut pager = Pager::new(resource_filter(resource_type, resource_id, relation, None));
        while let Some(page) = pager.next_page(self.d)? {
            for rel in page {
                let cond = caveat_of(rel.caveat.as_ref());
                if rel.subject.object.object_type == self.subject_type
                    && rel.subject.relation.as_deref() == self.subject_relation
                {
                    direct.add(&rel.subject.object.object_id, cond.clone());
                }
                let Some(subject_relation) = &rel.subject.relation else {
                    continue;
                };
                let (sub_type, sub_id) = (
                    &rel.subject.object.object_type,
                    &rel.subject.object.object_id,
                );
                match schema.member(sub_type, subject_relation) {
                    Some(Member::Relation(_)) => {
                        let sub = self.relation_chunks(
                            sub_type,
                            sub_id,
                            subject_relation,
                            depth.saturating_sub(1),
                        )?;
                        chunks.extend(sub.iter().map(|c| c.with_parent_caveat(&cond)));
                    }
                    Some(Member::Permission(_)) => {
                        let sub = self.lookup(
                            sub_type,
                            sub_id,
                            subject_relation,
                            depth.saturating_sub(1),
                        )?;
                        chunks.push(sub.with_parent_caveat(&cond));
                    }
                    None => {}
                }
            }
        }
        chunks.insert(0, direct);
        chunks.retain(|c| !c.is_empty());
        let chunks = Rc::new(chunks);
        self.chunk_memo.insert(key, Rc::clone(&chunks));
        Ok(chunks)
    }

    /// A permission's expression.
    fn lookup_via_rewrite(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        expr: &Expr,
        depth: u32,
    ) -> EngineResult<SubjectSet> {
        Ok(match expr {
            Expr::Nil => SubjectSet::empty(),
            Expr::Self_ => {
                let mut s = SubjectSet::empty();
                if resource_type == self.subject_type && self.subject_relation.is_none() {
                    s.add(resource_id, None);
                }
                s
            }
            Expr::Computed(name) => {
                (*self.lookup(resource_type, resource_id, name, depth.saturating_sub(1))?).clone()
            }
            Expr::Arrow {
                tupleset,
                computed,
                kind,
            } => self.lookup_via_tuple_to_userset(
                resource_type,
                resource_id,
                tupleset,
                computed,
                *kind,
                depth,
            )?,
            Expr::Union(items) => {
                let mut acc = SubjectSet::empty();
                for e in items {
                    let s = self.lookup_via_rewrite(resource_type, resource_id, e, depth)?;
                    acc = SubjectSet::union(&acc, &s);
                }
                acc
            }
            Expr::Intersection(items) => {
                let mut acc: Option<SubjectSet> = None;
                for e in items {
                    let s = self.lookup_via_rewrite(resource_type, resource_id, e, depth)?;
                    acc = Some(match acc {
                        None => s,
                        Some(a) => SubjectSet::intersection(&a, &s),
                    });
                }
                acc.unwrap_or_else(SubjectSet::empty)
            }
            Expr::Exclusion(base, subtracted) => {
                // Both sides are walked even when the base is empty, as SpiceDB does (a cycle
                // on the subtracted side is reported).
                let a = self.lookup_via_rewrite(resource_type, resource_id, base, depth)?;
                let b = self.lookup_via_rewrite(resource_type, resource_id, subtracted, depth)?;
                SubjectSet::exclusion(&a, &b)
            }
        })
    }

    /// `tupleset->computed` (union over the objects reached) or `tupleset.all(computed)`
    /// (intersection over the objects reached whose type has `computed`; empty when there is
    /// none).
    fn lookup_via_tuple_to_userset(
        &mut self,
        resource_type: &str,
        resource_id: &str,
        tupleset: &str,
        computed: &str,
        kind: ArrowKind,
        depth: u32,
    ) -> EngineResult<SubjectSet> {
        let schema = self.d.snap.schema;
        let rels = self
            .d
            .all(&resource_filter(resource_type, resource_id, tupleset, None))?;
        let mut acc: Option<SubjectSet> = None;
        for rel in rels {
            let target = &rel.subject.object;
            // SpiceDB's LookupSubjects leaves out of an `.all()` the objects whose type lacks
            // the relation (its Check counts them as failing): follow it.
            if kind == ArrowKind::All && !schema.has_member(&target.object_type, computed) {
                continue;
            }
            let reached = if schema.has_member(&target.object_type, computed) {
                self.lookup(
                    &target.object_type,
                    &target.object_id,
                    computed,
                    depth.saturating_sub(1),
                )?
                .with_parent_caveat(&caveat_of(rel.caveat.as_ref()))
            } else {
                SubjectSet::empty()
            };
            acc = Some(match (acc, kind) {
                (None, _) => reached,
                (Some(a), ArrowKind::Any) => SubjectSet::union(&a, &reached),
                (Some(a), ArrowKind::All) => SubjectSet::intersection(&a, &reached),
            });
        }
        Ok(acc.unwrap_or_else(SubjectSet::empty))
    }
}

/// The caveat of a relationship as a found subject's caveat.
fn caveat_of(caveat: Option<&Caveat>) -> Cav {
    caveat.map(|c| CaveatExpr::Leaf(Arc::new(c.clone())))
}

/// A permissionship and missing context for a found subject's caveat; `None` when the caveat
/// is false (the subject is left out).
fn decide(
    d: &Dispatcher<'_>,
    caveat: &Cav,
    context: &Context,
) -> EngineResult<Option<(Permissionship, Vec<String>)>> {
    Ok(match caveat {
        None => Some((Permissionship::HasPermission, Vec::new())),
        Some(e) => match caveats::evaluate_every_path(
            e,
            context,
            d.snap.schema,
            d.engine.caveats.as_ref(),
        )? {
            CaveatOutcome::True => Some((Permissionship::HasPermission, Vec::new())),
            CaveatOutcome::False => None,
            CaveatOutcome::Missing(m) => Some((Permissionship::ConditionalPermission, m)),
        },
    })
}

fn resolved(id: &str, permissionship: Permissionship, missing: Vec<String>) -> ResolvedSubject {
    ResolvedSubject {
        subject_id: id.to_string(),
        permissionship,
        missing_context: missing,
        excluded_subjects: Vec::new(),
    }
}

/// Runs LookupSubjects.
pub(crate) fn lookup_subjects(
    engine: &Engine,
    snap: &Snapshot<'_>,
    resource: &ObjectRef,
    permission: &str,
    subject_type: &str,
    subject_relation: Option<&str>,
    context: &Context,
) -> EngineResult<Vec<ResolvedSubject>> {
    validate::resource_member(snap.schema, &resource.object_type, permission)?;
    validate::subject_type(snap.schema, subject_type, subject_relation)?;
    let mut d = Dispatcher::new(engine, snap);
    let depth = d.max_depth();
    let set = {
        let mut walk = SubjectLookup {
            d: &mut d,
            subject_type,
            subject_relation,
            memo: HashMap::new(),
            chunk_memo: HashMap::new(),
            in_progress: HashSet::new(),
        };
        let set = walk.lookup(
            &resource.object_type,
            &resource.object_id,
            permission,
            depth,
        )?;
        // On a relation, SpiceDB streams the results of its subject sets apart and evaluates
        // each found subject on its own: a context failing on one of them fails the call, even
        // where the merged set has the subject unconditionally (see `relation_chunks`).
        if !snap.schema.caveats.is_empty()
            && matches!(
                snap.schema.member(&resource.object_type, permission),
                Some(Member::Relation(_))
            )
        {
            let chunks = walk.relation_chunks(
                &resource.object_type,
                &resource.object_id,
                permission,
                depth,
            )?;
            for chunk in chunks.iter() {
                decide_all(walk.d, chunk, context)?;
            }
        }
        set
    };

    let mut out = decide_all(&d, &set, context)?;
    out.sort_by(|a, b| a.subject_id.cmp(&b.subject_id));
    Ok(out)
}

/// As SpiceDB's API: every found subject of `set` with its caveat decided, the wildcard with
/// its exclusions (each decided the same way; a false one is left out).
fn decide_all(
    d: &Dispatcher<'_>,
    set: &SubjectSet,
    context: &Context,
) -> EngineResult<Vec<ResolvedSubject>> {
    let mut out = Vec::new();
    for (id, caveat) in &set.concrete {
        if let Some((p, m)) = decide(d, caveat, context)? {
            out.push(resolved(id, p, m));
        }
    }
    if let Some(w) = &set.wildcard
        && let Some((p, m)) = decide(d, &w.caveat, context)?
    {
        let mut excluded = Vec::new();
        for (id, caveat) in &w.excluded {
            if let Some((ep, em)) = decide(d, caveat, context)? {
                excluded.push(resolved(id, ep, em));
            }
        }
        let mut r = resolved("*", p, m);
        r.excluded_subjects = excluded;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> SubjectSet {
        let mut s = SubjectSet::empty();
        for id in ids {
            s.add(id, None);
        }
        s
    }

    fn cav(name: &str) -> Cav {
        caveat_of(Some(&Caveat {
            name: name.to_string(),
            context: Context::new(),
        }))
    }

    /// The members of `s` among `universe`, if every caveat is false.
    fn members(s: &SubjectSet, universe: &[&str]) -> Vec<String> {
        let unconditional = |c: &Cav| c.is_none();
        universe
            .iter()
            .filter(|id| {
                s.concrete.get(**id).is_some_and(unconditional)
                    || s.wildcard
                        .as_ref()
                        .is_some_and(|w| unconditional(&w.caveat) && !w.excluded.contains_key(**id))
            })
            .map(|id| id.to_string())
            .collect()
    }

    #[test]
    fn wildcard_algebra() {
        let u = ["a", "b", "c", "zz"];
        let all_but_b = SubjectSet::exclusion(&set(&["*"]), &set(&["b"]));
        assert_eq!(members(&all_but_b, &u), ["a", "c", "zz"]);
        let back = SubjectSet::exclusion(&set(&["*"]), &all_but_b);
        assert_eq!(members(&back, &u), ["b"]);
        assert!(back.wildcard.is_none());
        let both = SubjectSet::intersection(&all_but_b, &set(&["a", "b"]));
        assert_eq!(members(&both, &u), ["a"]);
        let un = SubjectSet::union(&all_but_b, &set(&["b"]));
        assert_eq!(members(&un, &u), ["a", "b", "c", "zz"]);
        let nothing = SubjectSet::exclusion(&set(&["a"]), &set(&["*"]));
        assert_eq!(members(&nothing, &u), Vec::<String>::new());
    }

    #[test]
    fn caveats_follow_spicedb() {
        // a caveated concrete subject stays conditional next to an unconditional wildcard
        let mut s = set(&["*"]);
        s.add("tom", cav("c"));
        assert_eq!(s.concrete.get("tom"), Some(&cav("c")));
        assert!(s.wildcard.as_ref().is_some_and(|w| w.caveat.is_none()));
        // {* - tom} ∪ {tom[c]}: tom stays excluded unless c holds
        let mut s = SubjectSet::exclusion(&set(&["*"]), &set(&["tom"]));
        s.add("tom", cav("c"));
        let w = s.wildcard.clone().unwrap_or_else(|| panic!("no wildcard"));
        assert_eq!(w.excluded.get("tom"), Some(&c_not(&cav("c"))));
        // {*[c]} ∪ {* - tom}: unconditional, no exclusion (SpiceDB's rule)
        let mut a = SubjectSet::empty();
        a.add("*", cav("c"));
        let b = SubjectSet::exclusion(&set(&["*"]), &set(&["tom"]));
        let un = SubjectSet::union(&a, &b);
        assert_eq!(
            un.wildcard,
            Some(Wildcard {
                caveat: None,
                excluded: BTreeMap::new()
            })
        );
        // {tom[c1]} ∩ {* - tom[c2]} = {tom[c1 && !c2]}
        let mut a = SubjectSet::empty();
        a.add("tom", cav("c1"));
        let mut b = set(&["*"]);
        b = SubjectSet::exclusion(&b, &{
            let mut x = SubjectSet::empty();
            x.add("tom", cav("c2"));
            x
        });
        let i = SubjectSet::intersection(&a, &b);
        assert_eq!(
            i.concrete.get("tom"),
            Some(&c_and(&cav("c1"), &c_not(&cav("c2"))))
        );
        assert!(i.wildcard.is_none());
    }
}
