//! Step three, graph evaluation — LookupSubjects: which subjects of a type have a permission on
//! one resource. A forward walk from the resource, as SpiceDB's `lookupsubjects.go`: stored
//! subjects of the wanted type (and relation), subject sets followed, arrows followed, and the
//! set operations applied to subject sets that may contain the wildcard `*` with exclusions.
//!
//! Subject sets are kept pointwise: a condition per mentioned subject id plus one condition for
//! every subject not mentioned (the wildcard's), so union, intersection and exclusion are exact,
//! caveats included. The result lists the wildcard (with the subjects it does not cover) and
//! the concrete subjects whose answer is not already the wildcard's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use crate::engine::caveats::{self, CaveatOutcome, Cond};
use crate::engine::check::resource_filter;
use crate::engine::dispatch::{Dispatcher, Pager};
use crate::engine::error::EngineResult;
use crate::engine::validate;
use crate::engine::{Engine, Permissionship, ResolvedSubject, Snapshot};
use crate::model::{Context, ObjectRef};
use crate::schema::{ArrowKind, Expr, Member};

/// One mentioned subject: the condition under which it is in the set, and whether it was named
/// directly (not only as an exclusion).
#[derive(Debug, Clone)]
struct Entry {
    cond: Cond,
    concrete: bool,
}

/// A set of subject ids of one type (and relation), possibly with the wildcard.
#[derive(Debug, Clone)]
pub(crate) struct SubjectSet {
    /// conditions of the subjects mentioned anywhere
    explicit: BTreeMap<String, Entry>,
    /// the condition of every subject not mentioned (`False`: no wildcard)
    other: Cond,
}

impl SubjectSet {
    fn empty() -> SubjectSet {
        SubjectSet {
            explicit: BTreeMap::new(),
            other: Cond::False,
        }
    }

    /// The condition of subject `id`.
    fn at(&self, id: &str) -> Cond {
        match self.explicit.get(id) {
            Some(e) => e.cond.clone(),
            None => self.other.clone(),
        }
    }

    fn concrete(&self, id: &str) -> bool {
        self.explicit.get(id).is_some_and(|e| e.concrete)
    }

    /// Adds subject `id` (or every subject, for `*`) under `cond`.
    fn add(&mut self, id: &str, cond: Cond) {
        if id == "*" {
            let other = std::mem::replace(&mut self.other, Cond::False);
            self.other = other.or(cond.clone());
            for e in self.explicit.values_mut() {
                let c = std::mem::replace(&mut e.cond, Cond::False);
                e.cond = c.or(cond.clone());
            }
            return;
        }
        let c = self.at(id).or(cond);
        self.explicit.insert(
            id.to_string(),
            Entry {
                cond: c,
                concrete: true,
            },
        );
    }

    /// Every condition `&& cond` (the set reached through a caveated relationship).
    fn with_cond(&self, cond: &Cond) -> SubjectSet {
        if cond.is_true() {
            return self.clone();
        }
        SubjectSet {
            explicit: self
                .explicit
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        Entry {
                            cond: e.cond.clone().and(cond.clone()),
                            concrete: e.concrete,
                        },
                    )
                })
                .collect(),
            other: self.other.clone().and(cond.clone()),
        }
    }

    /// Pointwise combination of two sets.
    fn combine(
        a: &SubjectSet,
        b: &SubjectSet,
        op: impl Fn(Cond, Cond) -> Cond,
        concrete: impl Fn(bool, bool) -> bool,
    ) -> SubjectSet {
        let mut explicit = BTreeMap::new();
        for id in a.explicit.keys().chain(b.explicit.keys()) {
            if explicit.contains_key(id) {
                continue;
            }
            explicit.insert(
                id.clone(),
                Entry {
                    cond: op(a.at(id), b.at(id)),
                    concrete: concrete(a.concrete(id), b.concrete(id)),
                },
            );
        }
        let mut s = SubjectSet {
            explicit,
            other: op(a.other.clone(), b.other.clone()),
        };
        s.normalize();
        s
    }

    fn union(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
        if a.explicit.is_empty() && a.other.is_false() {
            return b.clone();
        }
        if b.explicit.is_empty() && b.other.is_false() {
            return a.clone();
        }
        SubjectSet::combine(a, b, Cond::or, |x, y| x || y)
    }

    fn intersection(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
        SubjectSet::combine(a, b, Cond::and, |x, y| x || y)
    }

    fn exclusion(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
        SubjectSet::combine(a, b, |x, y| x.and(y.not()), |x, _| x)
    }

    /// Drops entries that say nothing: absent from a set without wildcard, or equal to the
    /// wildcard's condition without being named directly.
    fn normalize(&mut self) {
        let other = &self.other;
        self.explicit.retain(|_, e| {
            if e.cond.is_false() && other.is_false() {
                return false;
            }
            e.concrete || e.cond != *other
        });
    }
}

/// Walks forward from the resource, memoizing each `type:id#relation` solved.
struct SubjectLookup<'d, 's> {
    d: &'d mut Dispatcher<'s>,
    subject_type: &'d str,
    subject_relation: Option<&'d str>,
    memo: HashMap<(String, String, String), Rc<SubjectSet>>,
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
            found.add(resource_id, Cond::True);
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
                let cond = Cond::of_caveat(rel.caveat.as_ref());
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
                    set = SubjectSet::union(&set, &sub.with_cond(&cond));
                }
            }
        }
        Ok(set)
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
                    s.add(resource_id, Cond::True);
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
                .with_cond(&Cond::of_caveat(rel.caveat.as_ref()))
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

/// A permissionship and missing context for a condition; `None` for "not a member".
fn decide(
    d: &Dispatcher<'_>,
    cond: &Cond,
    context: &Context,
) -> EngineResult<Option<(Permissionship, Vec<String>)>> {
    Ok(match cond {
        Cond::False => None,
        Cond::True => Some((Permissionship::HasPermission, Vec::new())),
        Cond::Expr(e) => {
            match caveats::evaluate(e, context, d.snap.schema, d.engine.caveats.as_ref())? {
                CaveatOutcome::True => Some((Permissionship::HasPermission, Vec::new())),
                CaveatOutcome::False => None,
                CaveatOutcome::Missing(m) => Some((Permissionship::ConditionalPermission, m)),
            }
        }
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
            in_progress: HashSet::new(),
        };
        walk.lookup(
            &resource.object_type,
            &resource.object_id,
            permission,
            depth,
        )?
    };

    let wildcard = decide(&d, &set.other, context)?;
    let mut out = Vec::new();
    let mut excluded = Vec::new();
    for (id, entry) in &set.explicit {
        let decided = decide(&d, &entry.cond, context)?;
        if let Some((wp, _)) = &wildcard {
            match &decided {
                None => excluded.push(resolved(id, Permissionship::HasPermission, Vec::new())),
                Some((Permissionship::ConditionalPermission, m))
                    if *wp == Permissionship::HasPermission =>
                {
                    excluded.push(resolved(
                        id,
                        Permissionship::ConditionalPermission,
                        m.clone(),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some((p, m)) = decided {
            let same_as_wildcard = wildcard.as_ref().is_some_and(|(wp, _)| *wp == p);
            if entry.concrete || !same_as_wildcard {
                out.push(resolved(id, p, m));
            }
        }
    }
    if let Some((p, m)) = wildcard {
        let mut w = resolved("*", p, m);
        w.excluded_subjects = excluded;
        out.push(w);
    }
    out.sort_by(|a, b| a.subject_id.cmp(&b.subject_id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> SubjectSet {
        let mut s = SubjectSet::empty();
        for id in ids {
            s.add(id, Cond::True);
        }
        s
    }

    fn members(s: &SubjectSet, universe: &[&str]) -> Vec<String> {
        universe
            .iter()
            .filter(|id| s.at(id).is_true())
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
        assert!(back.other.is_false());
        let both = SubjectSet::intersection(&all_but_b, &set(&["a", "b"]));
        assert_eq!(members(&both, &u), ["a"]);
        let un = SubjectSet::union(&all_but_b, &set(&["b"]));
        assert_eq!(members(&un, &u), ["a", "b", "c", "zz"]);
        let nothing = SubjectSet::exclusion(&set(&["a"]), &set(&["*"]));
        assert_eq!(members(&nothing, &u), Vec::<String>::new());
    }
}
