//! LookupSubjects: which subjects of a type have a permission on one resource.
//!
//! A forward walk from the resource, as SpiceDB's `lookupsubjects.go`: stored subjects of the
//! wanted type (and relation), subject sets followed, arrows followed, and the set operations
//! applied to subject sets that may contain the wildcard `*` with exclusions (the algebra of
//! [`SubjectSet`]). The result lists every concrete subject whose caveat is not false, and the
//! wildcard with its exclusions (each decided by its own caveat).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::engine::caveats::{self, CaveatOutcome};
use crate::engine::dispatch::{Dispatcher, Pager, resource_filter};
use crate::engine::error::EngineResult;
use crate::engine::subject_set::{Cav, SubjectSet, caveat_of};
use crate::engine::validate;
use crate::engine::{Engine, Permissionship, ResolvedSubject, Snapshot};
use crate::model::{Context, ObjectRef};
use crate::schema::{ArrowKind, Expr, Member};

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
    for (id, caveat) in set.concrete() {
        if let Some((p, m)) = decide(d, caveat, context)? {
            out.push(resolved(id, p, m));
        }
    }
    if let Some((wildcard_caveat, wildcard_excluded)) = set.wildcard()
        && let Some((p, m)) = decide(d, wildcard_caveat, context)?
    {
        let mut excluded = Vec::new();
        for (id, caveat) in wildcard_excluded {
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
