//! LookupResources: every resource of a type on which a subject has a permission.
//!
//! As SpiceDB does it: first reachability, walking REVERSE from the subject with
//! subject-anchored queries (served by the store's by-subject index) through the schema's
//! relations, permissions and arrows, restricted to what can lead to the wanted permission;
//! then a check of the candidates whose path went through an intersection, an exclusion, a
//! `.all()` arrow or a caveated relationship. Candidates reached through unions and uncaveated
//! relationships only are members without a check.
//!
//! As in SpiceDB, the caveat of every caveated relationship the walk follows is evaluated with
//! the request context when SpiceDB's walk would go on from there towards the target (it walks
//! unions, exclusion bases, arrows and the first operand of an intersection, and checks the
//! other operands), also on paths that end in no result or beside an uncaveated path: a context
//! failing on one of them fails the call. The tupleset relationship of an arrow counts before
//! the check of the entry it leads to, whether the check keeps it or not; of two arrows over one
//! tupleset only the walked one counts. An entry checked with the request context off that walk
//! (Pemba's walk keeps more atoms than SpiceDB's) does not. A relationship whose caveat is false
//! with the request context ends its path: the walk does not go on from there.
//!
//! A data cycle on the way (groups in each other, folders that are each other's parent) is
//! [`MaxDepthExceeded`](crate::engine::EngineError::MaxDepthExceeded), as SpiceDB reports
//! after following it until its depth budget runs out.

use std::collections::{BTreeMap, VecDeque};

// The walk hashes short names many times per result: FxHash rather than SipHash.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::engine::caveats::{self, CaveatExpr, CaveatOutcome, Cond};
use crate::engine::check;
use crate::engine::dispatch::{Dispatcher, Pager, parallel_chunks};
use crate::engine::error::{EngineError, EngineResult};
use crate::engine::memo::{CheckMemo, EvalMode};
use crate::engine::outcome::Outcome;
use crate::engine::{Engine, LookupResult, Permissionship, Snapshot};
use crate::engine::{fast, validate};
use crate::model::{
    Caveat, Context, ObjectRef, RelationshipFilter, Revision, SubjectFilter, SubjectRef,
    SubjectRelationFilter, Timestamp,
};
use crate::schema::{AllowedKind, ArrowKind, CompiledSchema, Expr};

/// A schema node: `type#relation`, or a plain object type (`relation` `None`).
type Node<'s> = (&'s str, Option<&'s str>);

/// An arrow `tupleset->relation` of permission `permission` on `resource_type`, and whether
/// it is reached by unions only (an `.any` arrow outside intersections and exclusion bases).
type ArrowIn<'s> = (&'s str, &'s str, &'s str, bool);

/// The schema read backwards: for each kind of subject, where it can appear.
#[derive(Default)]
struct ReverseIndex<'s> {
    /// (subject type, subject relation) -> relations `type#relation` allowing it as subject
    direct: HashMap<Node<'s>, Vec<(&'s str, &'s str)>>,
    /// subject type -> relations allowing its wildcard
    wildcard: HashMap<&'s str, Vec<(&'s str, &'s str)>>,
    /// `type#relation` -> permissions of `type` naming it, with "reached by unions only"
    computed: HashMap<(&'s str, &'s str), Vec<(&'s str, bool)>>,
    /// `type#relation` -> arrows that reach it through a tupleset relation allowing `type`
    arrows: HashMap<(&'s str, &'s str), Vec<ArrowIn<'s>>>,
    /// type -> permissions of it using `self`, with "reached by unions only"
    selfs: HashMap<&'s str, Vec<(&'s str, bool)>>,
    /// the uses above that SpiceDB's reverse walk follows (all but the operands of an
    /// intersection after the first, which it checks instead): `(type, relation, permission)`;
    /// a `self` use has relation `None`
    walked: HashSet<(&'s str, Option<&'s str>, &'s str)>,
    /// the same for arrows: `(type, tupleset relation, computed relation, permission)` (two
    /// arrows over one tupleset, such as `owner.all(parent) & owner->owner`, may differ)
    walked_arrows: HashSet<(&'s str, &'s str, &'s str, &'s str)>,
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Adds `(item, exact)`, keeping one entry per item with "exact" if any path is.
fn push_exact<T: PartialEq>(v: &mut Vec<(T, bool)>, item: T, exact: bool) {
    match v.iter_mut().find(|(i, _)| *i == item) {
        Some((_, e)) => *e = *e || exact,
        None => v.push((item, exact)),
    }
}

impl<'s> ReverseIndex<'s> {
    fn build(schema: &'s CompiledSchema) -> ReverseIndex<'s> {
        let mut ix = ReverseIndex::default();
        for def in schema.definitions.values() {
            let t = def.name.as_str();
            for rel in &def.relations {
                for a in &rel.allowed {
                    let target = (t, rel.name.as_str());
                    match &a.kind {
                        AllowedKind::Direct => push_unique(
                            ix.direct.entry((a.type_name.as_str(), None)).or_default(),
                            target,
                        ),
                        AllowedKind::SubjectRelation(r) => push_unique(
                            ix.direct
                                .entry((a.type_name.as_str(), Some(r.as_str())))
                                .or_default(),
                            target,
                        ),
                        AllowedKind::Wildcard => push_unique(
                            ix.wildcard.entry(a.type_name.as_str()).or_default(),
                            target,
                        ),
                    }
                }
            }
            for perm in &def.permissions {
                ix.walk(schema, t, &perm.name, &perm.expr, true, true);
            }
        }
        ix
    }

    /// Records where permission `perm` of `t` uses relations, arrows and `self`; `exact` is
    /// false below an intersection or the base of an exclusion (the subtracted side leads to
    /// no member at all); `walked` is false where SpiceDB's walk does not go: the operands of an
    /// intersection but the first.
    fn walk(
        &mut self,
        schema: &'s CompiledSchema,
        t: &'s str,
        perm: &'s str,
        e: &'s Expr,
        exact: bool,
        walked: bool,
    ) {
        match e {
            Expr::Nil => {}
            Expr::Self_ => {
                if walked {
                    self.walked.insert((t, None, perm));
                }
                push_exact(self.selfs.entry(t).or_default(), perm, exact)
            }
            Expr::Computed(r) => {
                if walked {
                    self.walked.insert((t, Some(r.as_str()), perm));
                }
                push_exact(
                    self.computed.entry((t, r.as_str())).or_default(),
                    perm,
                    exact,
                );
            }
            Expr::Arrow {
                tupleset,
                computed,
                kind,
            } => {
                let Some(ts) = schema.definition(t).and_then(|d| d.relation(tupleset)) else {
                    return;
                };
                let mut types: Vec<&'s str> = Vec::new();
                for a in &ts.allowed {
                    push_unique(&mut types, a.type_name.as_str());
                }
                for x in types {
                    if !schema.has_member(x, computed) {
                        continue;
                    }
                    if walked {
                        self.walked_arrows
                            .insert((t, tupleset.as_str(), computed.as_str(), perm));
                    }
                    let v = self.arrows.entry((x, computed.as_str())).or_default();
                    let item = (t, tupleset.as_str(), perm);
                    let e = exact && *kind == ArrowKind::Any;
                    match v.iter_mut().find(|(a, b, c, _)| (*a, *b, *c) == item) {
                        Some(found) => found.3 = found.3 || e,
                        None => v.push((t, tupleset.as_str(), perm, e)),
                    }
                }
            }
            Expr::Union(items) => {
                for i in items {
                    self.walk(schema, t, perm, i, exact, walked);
                }
            }
            // SpiceDB walks the first operand of an intersection and checks the others.
            Expr::Intersection(items) => {
                for (k, i) in items.iter().enumerate() {
                    self.walk(schema, t, perm, i, false, walked && k == 0);
                }
            }
            Expr::Exclusion(base, _) => self.walk(schema, t, perm, base, false, walked),
        }
    }

    /// The nodes from which `target` can be reached, the subject's own node included if it can;
    /// with `walked_only`, along the uses SpiceDB's walk follows only.
    fn relevant(
        &self,
        target: Node<'s>,
        subject_type: &'s str,
        walked_only: bool,
    ) -> HashSet<Node<'s>> {
        let mut edges: Vec<(Node<'s>, Node<'s>)> = Vec::new();
        for (from, tos) in &self.direct {
            for (t, r) in tos {
                edges.push((*from, (*t, Some(*r))));
            }
        }
        for (t, rs) in &self.wildcard {
            for (rt, r) in rs {
                if *t == subject_type {
                    edges.push(((subject_type, None), (*rt, Some(*r))));
                }
            }
        }
        for ((x, r), ps) in &self.computed {
            for (p, _) in ps {
                if !walked_only || self.walked.contains(&(*x, Some(*r), *p)) {
                    edges.push(((*x, Some(*r)), (*x, Some(*p))));
                }
            }
        }
        for ((x, r), arrows) in &self.arrows {
            for (t, ts, p, _) in arrows {
                if !walked_only || self.walked_arrows.contains(&(*t, *ts, *r, *p)) {
                    edges.push(((*x, Some(*r)), (*t, Some(*p))));
                }
            }
        }
        for (t, ps) in &self.selfs {
            for (p, _) in ps {
                if !walked_only || self.walked.contains(&(*t, None, *p)) {
                    edges.push(((*t, None), (*t, Some(*p))));
                }
            }
        }
        let mut relevant: HashSet<Node<'s>> = std::iter::once(target).collect();
        loop {
            let before = relevant.len();
            for (from, to) in &edges {
                if relevant.contains(to) {
                    relevant.insert(*from);
                }
            }
            if relevant.len() == before {
                return relevant;
            }
        }
    }
}

/// "The subject is in `object_type:object_id#relation`" (`relation` `None`: the subject is
/// that plain object).
/// The type and relation are the schema's names, only the id is the walk's own.
type Atom<'s> = (&'s str, String, Option<&'s str>);

/// How the walk reached an atom.
#[derive(Debug, Clone, Copy)]
enum ReachedBy {
    /// through unions only; `exact` if also through uncaveated relationships from an exact atom
    Direct { exact: bool },
    /// through an intersection, an exclusion or an `.all()` arrow: keep it only if a check passes
    Checked,
}

impl ReachedBy {
    fn new(unions_only: bool, exact: bool) -> ReachedBy {
        if unions_only {
            ReachedBy::Direct { exact }
        } else {
            ReachedBy::Checked
        }
    }
}

/// Checks atoms for the subject, sharing one memo over the whole lookup.
struct AtomChecker<'c, 's> {
    d: &'c mut Dispatcher<'s>,
    memo: CheckMemo,
    /// the fast path's memo, when it is on
    fast: Option<fast::FastMemo>,
    subject: &'c SubjectRef,
}

impl AtomChecker<'_, '_> {
    /// Is the subject in the atom's `type:id#permission`, with `depth` budget?
    fn check(&mut self, atom: &Atom<'_>, depth: u32) -> EngineResult<Outcome> {
        let Some(permission) = atom.2 else {
            return Ok(Outcome::No);
        };
        if let Some(memo) = &mut self.fast
            && let Some(&[Some(yes)]) = fast::check_ids(
                self.d.snap,
                memo,
                depth,
                self.subject,
                atom.0,
                permission,
                std::iter::once(atom.1.as_str()),
            )
            .as_deref()
        {
            return Ok(if yes { Outcome::yes(None) } else { Outcome::No });
        }
        let resource = ObjectRef::new(atom.0, atom.1.as_str());
        let (outcome, _) = check::check_outcome_at(
            self.d,
            &mut self.memo,
            &resource,
            permission,
            self.subject,
            depth,
        )?;
        Ok(outcome)
    }
}

/// The reverse walk: atoms reached (a graph, to find cycles), and the work queue.
struct ReverseWalk<'s> {
    ix: ReverseIndex<'s>,
    relevant: HashSet<Node<'s>>,
    /// the nodes from which the target can be reached along what SpiceDB's walk follows
    walk_relevant: HashSet<Node<'s>>,
    /// atom -> its index in `atoms`
    index: HashMap<Atom<'s>, usize>,
    /// atoms reached, and whether through unions and uncaveated relationships only
    atoms: Vec<(Atom<'s>, bool)>,
    /// for each atom, the atoms it led to
    edges: Vec<Vec<usize>>,
    /// (atom index, exact, level)
    queue: VecDeque<(usize, bool, u32)>,
    /// the wanted `resource_type#permission`
    target: Node<'s>,
    /// the subject's node: its type, and its relation for a subject set
    start: Node<'s>,
    /// target atoms reached through an intersection, an exclusion or an `.all()` arrow, whose
    /// check is left to phase 4 (atom index -> depth budget left for it)
    deferred: HashMap<usize, u32>,
    /// the caveats met on the way: of caveated relationships followed (keyed by name and
    /// context, each once), and the conditions of conditional entry checks
    met: BTreeMap<String, CaveatExpr>,
    /// caveated relationships followed where SpiceDB's walk goes: (type, relation of the atom
    /// they lead to, caveat)
    pending: Vec<(&'s str, Option<&'s str>, Caveat)>,
    max_depth: u32,
}

impl<'s> ReverseWalk<'s> {
    fn is_relevant(&self, t: &str, r: Option<&str>) -> bool {
        self.relevant.contains(&(t, r))
    }

    /// Records an atom reached from atom `from` (if it can lead to the target), and queues it to
    /// be walked from. An atom entered through an intersection, an exclusion or an `.all()`
    /// arrow is kept only if a check of it passes (SpiceDB shears the walk there the same
    /// way). An atom already known is re-queued when it becomes exact.
    fn offer(
        &mut self,
        checker: &mut AtomChecker<'_, '_>,
        from: usize,
        atom: Atom<'s>,
        entry: ReachedBy,
        via: Option<&Caveat>,
        level: u32,
    ) -> EngineResult<()> {
        if !self.is_relevant(atom.0, atom.2) {
            return Ok(());
        }
        // The relationship's caveat, where SpiceDB evaluates it: also for an entry it checks
        // (through an intersection, an exclusion or an `.all()` arrow), before the check and
        // whether or not the check keeps the atom (probed).
        if let Some(c) = via {
            self.pending.push((atom.0, atom.2, c.clone()));
        }
        let exact_entry = matches!(entry, ReachedBy::Direct { exact: true });
        let (i, requeue, exact) = match self.index.get(&atom) {
            Some(i) => {
                let i = *i;
                if matches!(entry, ReachedBy::Direct { .. }) {
                    // a path of unions reaches it: checked with the whole budget, if at all
                    self.deferred.remove(&i);
                }
                match self.atoms.get_mut(i) {
                    Some((_, prev)) if !*prev && exact_entry => {
                        *prev = true;
                        (i, true, true)
                    }
                    _ => (i, false, false),
                }
            }
            None => {
                let mut defer = None;
                let exact = match entry {
                    ReachedBy::Direct { exact } => exact,
                    // The target itself, leading nowhere else: its check waits for phase 4,
                    // which checks a page's window of candidates, not every candidate first.
                    ReachedBy::Checked
                        if (atom.0, atom.2) == self.target
                            && !self.leads_further(atom.0, atom.2) =>
                    {
                        defer = Some(self.max_depth.saturating_sub(level));
                        false
                    }
                    ReachedBy::Checked => {
                        match checker.check(&atom, self.max_depth.saturating_sub(level))? {
                            Outcome::No => return Ok(()),
                            Outcome::Member {
                                cond: Cond::Expr(e),
                                ..
                            } => {
                                // SpiceDB checks (with the context) only where its walk goes
                                // on to the target; Pemba also keeps atoms off that walk.
                                if self.walked_to_target(atom.0, atom.2) {
                                    self.met.insert(format!("check {}", self.met.len()), e);
                                }
                                false
                            }
                            Outcome::Member { cond, .. } => cond.is_true(),
                            Outcome::Unresolved(_) => return Err(checker.d.depth_error()),
                        }
                    }
                };
                let i = self.atoms.len();
                if let Some(depth) = defer {
                    self.deferred.insert(i, depth);
                }
                self.index.insert(atom.clone(), i);
                self.atoms.push((atom, exact));
                self.edges.push(Vec::new());
                (i, true, exact)
            }
        };
        // Edges only feed the cycle search, where a repeated edge costs a step and changes
        // nothing; a search for it would cost a scan of `from`'s edges per offer, quadratic
        // on an atom reaching a million others (one group sharing a million documents).
        if let Some(edges) = self.edges.get_mut(from)
            && edges.last() != Some(&i)
        {
            edges.push(i);
        }
        if requeue {
            self.queue.push_back((i, exact, level));
        }
        Ok(())
    }

    /// Records a caveated relationship followed.
    fn meet(&mut self, c: &Caveat) {
        let key = format!("{}{}", c.name, serde_json::Value::Object(c.context.clone()));
        if !self.met.contains_key(&key)
            && let Cond::Expr(leaf) = Cond::of_caveat(Some(c))
        {
            self.met.insert(key, leaf);
        }
    }

    /// Does SpiceDB's walk go on from an atom of node `x#rel` to the target (or is it the
    /// target)?
    fn walked_to_target(&self, x: &str, rel: Option<&str>) -> bool {
        self.walk_relevant.contains(&(x, rel))
    }

    /// Can an atom of node `x#rel` lead to another relevant atom?
    fn leads_further(&self, x: &str, rel: Option<&str>) -> bool {
        let direct = self
            .ix
            .direct
            .get(&(x, rel))
            .is_some_and(|v| v.iter().any(|(t, r)| self.is_relevant(t, Some(r))));
        let onward =
            match rel {
                Some(r) => {
                    self.ix
                        .computed
                        .get(&(x, r))
                        .is_some_and(|v| v.iter().any(|(p, _)| self.is_relevant(x, Some(p))))
                        || self.ix.arrows.get(&(x, r)).is_some_and(|v| {
                            v.iter().any(|(t, _, p, _)| self.is_relevant(t, Some(p)))
                        })
                }
                None => self
                    .ix
                    .selfs
                    .get(x)
                    .is_some_and(|v| v.iter().any(|(p, _)| self.is_relevant(x, Some(p)))),
            };
        direct || onward
    }

    /// Does the graph of atoms reached contain a cycle? (SpiceDB follows one until its depth
    /// budget runs out.) Iterative depth-first search with three colours.
    fn has_cycle(&self) -> bool {
        // 0: unvisited, 1: on the current path, 2: done
        let mut colour = vec![0u8; self.atoms.len()];
        for root in 0..self.atoms.len() {
            if colour.get(root) != Some(&0) {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            if let Some(c) = colour.get_mut(root) {
                *c = 1;
            }
            while let Some((node, next)) = stack.last_mut() {
                let node = *node;
                match self.edges.get(node).and_then(|e| e.get(*next)) {
                    Some(&child) => {
                        *next += 1;
                        match colour.get(child) {
                            Some(1) => return true,
                            Some(0) => {
                                if let Some(c) = colour.get_mut(child) {
                                    *c = 1;
                                }
                                stack.push((child, 0));
                            }
                            _ => {}
                        }
                    }
                    None => {
                        if let Some(c) = colour.get_mut(node) {
                            *c = 2;
                        }
                        stack.pop();
                    }
                }
            }
        }
        false
    }
}

fn by_subject(
    resource_type: &str,
    relation: &str,
    subject_type: &str,
    subject_id: &str,
    subject_relation: SubjectRelationFilter,
) -> RelationshipFilter {
    RelationshipFilter {
        resource_type: Some(resource_type.to_string()),
        resource_id: None,
        resource_id_prefix: None,
        relation: Some(relation.to_string()),
        subject: Some(SubjectFilter {
            subject_type: subject_type.to_string(),
            subject_id: Some(subject_id.to_string()),
            relation: subject_relation,
        }),
    }
}

/// A candidate of a walk: its id, and `None` if it is a member as it is, or the depth budget to
/// check it with.
pub(crate) type Candidate = (String, Option<u32>);

/// The candidates of one LookupResources walk, pinned to the revision and the clock it ran
/// at: the resources of the wanted type and permission the walk reached, sorted by id, each
/// exact (a member as it is) or to be checked. Results are resolved from it a window at a
/// time ([`resolve`]), so a caller streams them and a cursor resumes in it without walking
/// again.
pub struct ResourceLookup {
    pub(crate) key: LookupKey,
    pub(crate) subject: SubjectRef,
    pub(crate) context: Context,
    /// the clock of the walk: the windows are checked at the same instant
    pub(crate) now: Timestamp,
    pub(crate) candidates: Vec<Candidate>,
}

impl std::fmt::Debug for ResourceLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceLookup")
            .field("key", &self.key)
            .field("candidates", &self.candidates.len())
            .finish_non_exhaustive()
    }
}

/// What identifies a LookupResources walk: the request's parts and the revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LookupKey {
    pub(crate) revision: Revision,
    pub(crate) resource_type: String,
    pub(crate) permission: String,
    /// the subject as text
    pub(crate) subject: String,
    /// the request context as JSON
    pub(crate) context: String,
}

impl LookupKey {
    pub(crate) fn new(
        revision: Revision,
        resource_type: &str,
        permission: &str,
        subject: &SubjectRef,
        context: &Context,
    ) -> LookupKey {
        LookupKey {
            revision,
            resource_type: resource_type.to_string(),
            permission: permission.to_string(),
            subject: subject.to_string(),
            context: serde_json::Value::Object(context.clone()).to_string(),
        }
    }
}

impl ResourceLookup {
    /// The revision the walk read.
    pub fn revision(&self) -> Revision {
        self.key.revision
    }

    /// How many candidates the walk found (an upper bound on the results).
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether the walk found no candidate.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The position of the first candidate whose id sorts after `after` (0 for `None`).
    pub fn position_after(&self, after: Option<&str>) -> usize {
        after.map_or(0, |a| {
            self.candidates.partition_point(|(id, _)| id.as_str() <= a)
        })
    }

    /// Memory held by the candidates, roughly.
    pub(crate) fn bytes(&self) -> usize {
        let per = std::mem::size_of::<Candidate>();
        self.candidates
            .iter()
            .map(|(id, _)| id.len() + per)
            .sum::<usize>()
            + std::mem::size_of::<ResourceLookup>()
    }
}

/// Phases 1 to 3 and the first half of phase 4: walks from the subject and returns the
/// candidates, pinned to the snapshot's revision and clock.
pub(crate) fn walk(
    engine: &Engine,
    snap: &Snapshot<'_>,
    resource_type: &str,
    permission: &str,
    subject: &SubjectRef,
    context: &Context,
) -> EngineResult<ResourceLookup> {
    let schema = snap.schema;
    validate::resource_member(schema, resource_type, permission)?;
    validate::check_subject(schema, subject)?;
    let key = LookupKey::new(snap.revision, resource_type, permission, subject, context);
    let lookup = |candidates| ResourceLookup {
        key,
        subject: subject.clone(),
        context: context.clone(),
        now: snap.now,
        candidates,
    };
    let mut d = Dispatcher::new(engine, snap);
    // Phase 1: what of the schema can lead from the subject to the wanted permission.
    let Some(mut walk) = plan(schema, resource_type, permission, subject, d.max_depth()) else {
        return Ok(lookup(Vec::new()));
    };
    let mut checker = AtomChecker {
        d: &mut d,
        memo: CheckMemo::new(EvalMode::CHECK),
        fast: engine.config.fast_path.then(fast::FastMemo::default),
        subject,
    };
    let mut probe = CaveatProbe {
        context,
        schema,
        engine,
        false_caveats: HashMap::default(),
    };
    // Phase 2: the walk from the subject.
    walk_from_subject(&mut walk, &mut checker, &mut probe, subject)?;
    // Phase 3: the caveats met on the way to the target.
    evaluate_met_caveats(&mut walk, engine, schema, context)?;
    // Phase 4, first half: the candidates of the wanted type and permission.
    Ok(lookup(candidates(walk, resource_type, permission)))
}

/// Phase 4, second half, from position `from` of the lookup's candidates: resolves a window
/// of candidates at a time until at least `want` results are found or the candidates end,
/// and returns the results (sorted by id, possibly more than `want`) and the position after
/// the last candidate resolved. The snapshot must be at the lookup's revision; the lookup's
/// clock is used.
pub(crate) fn resolve(
    engine: &Engine,
    snap: &Snapshot<'_>,
    lookup: &ResourceLookup,
    from: usize,
    want: usize,
) -> EngineResult<(Vec<LookupResult>, usize)> {
    if snap.revision != lookup.key.revision {
        return Err(EngineError::internal(format!(
            "a lookup walked at revision {} resolved at revision {}",
            lookup.key.revision.0, snap.revision.0
        )));
    }
    let snap = Snapshot {
        now: lookup.now,
        ..*snap
    };
    let mut rest = lookup.candidates.get(from..).unwrap_or_default();
    let mut at = from;
    let mut out = Vec::new();
    let mut window = want.clamp(RESOLVE_WINDOW_MIN, RESOLVE_WINDOW_MAX);
    while out.len() < want && !rest.is_empty() {
        let (now, later) = rest.split_at(window.min(rest.len()));
        out.extend(resolve_all(engine, &snap, lookup, now)?);
        at += now.len();
        rest = later;
        // Few candidates were results: look further ahead at once next time.
        window = window.saturating_mul(2).min(RESOLVE_WINDOW_MAX);
    }
    Ok((out, at))
}

/// The fewest candidates LookupResources resolves at once (enough to spread over the cores).
const RESOLVE_WINDOW_MIN: usize = 256;

/// The most candidates LookupResources resolves at once.
const RESOLVE_WINDOW_MAX: usize = 65_536;

/// Phase 1: the reverse index of the schema, restricted to what can lead from the subject's
/// type to `resource_type#permission`; `None` if a name does not resolve (validated before,
/// so never).
fn plan<'s>(
    schema: &'s CompiledSchema,
    resource_type: &str,
    permission: &str,
    subject: &SubjectRef,
    max_depth: u32,
) -> Option<ReverseWalk<'s>> {
    let ix = ReverseIndex::build(schema);
    let target_def = schema.definition(resource_type)?;
    let target_member = target_def.member(permission)?;
    let subject_def = schema.definition(&subject.object.object_type)?;
    let target: Node<'s> = (target_def.name.as_str(), Some(target_member.name()));
    let relevant = ix.relevant(target, subject_def.name.as_str(), false);
    let walk_relevant = ix.relevant(target, subject_def.name.as_str(), true);
    let start_relation = match &subject.relation {
        None => None,
        Some(r) => Some(subject_def.member(r)?.name()),
    };
    Some(ReverseWalk {
        ix,
        relevant,
        walk_relevant,
        index: HashMap::default(),
        atoms: Vec::new(),
        edges: Vec::new(),
        queue: VecDeque::new(),
        target,
        start: (subject_def.name.as_str(), start_relation),
        deferred: HashMap::default(),
        met: BTreeMap::new(),
        pending: Vec::new(),
        max_depth,
    })
}

/// Which caveats are false with the request context, as the walk meets them.
///
/// SpiceDB evaluates the caveat of a relationship its walk follows at that step and does not
/// walk on from there when it is false with the request context, so the caveats beyond are
/// not evaluated (probed); such a path leads to no result either. An evaluation error is left
/// to the end (phase 3), where it counts only if the walk goes on to the target.
struct CaveatProbe<'r> {
    context: &'r Context,
    schema: &'r CompiledSchema,
    engine: &'r Engine,
    /// caveat name and context (as JSON) -> false with the request context
    false_caveats: HashMap<String, bool>,
}

impl CaveatProbe<'_> {
    /// Whether the relationship's caveat (if any) is false with the request context.
    fn is_false(&mut self, c: Option<&Caveat>) -> bool {
        let Some(c) = c else { return false };
        let key = format!("{}{}", c.name, serde_json::Value::Object(c.context.clone()));
        let (context, schema, engine) = (self.context, self.schema, self.engine);
        *self
            .false_caveats
            .entry(key)
            .or_insert_with(|| match Cond::of_caveat(Some(c)) {
                Cond::Expr(leaf) => matches!(
                    caveats::evaluate_every_path(&leaf, context, schema, engine.caveats.as_ref()),
                    Ok(CaveatOutcome::False)
                ),
                _ => false,
            })
    }
}

/// Phase 2: a breadth-first walk from the subject (and its type's wildcard) through
/// by-subject reads, collecting every atom `type:id#relation` that can lead to the target.
/// Going past the depth budget or meeting a cycle is `MaxDepthExceeded`.
fn walk_from_subject(
    walk: &mut ReverseWalk<'_>,
    checker: &mut AtomChecker<'_, '_>,
    probe: &mut CaveatProbe<'_>,
    subject: &SubjectRef,
) -> EngineResult<()> {
    // The subject itself (a subject set is in itself).
    let start: Atom<'_> = (walk.start.0, subject.object.object_id.clone(), walk.start.1);
    walk.index.insert(start.clone(), 0);
    walk.atoms.push((start, true));
    walk.edges.push(Vec::new());
    walk.queue.push_back((0, true, 0));

    // Wildcards of the subject's type. (SpiceDB's Check also lets them match a subject set,
    // its LookupResources does not.)
    let wildcard_targets = match subject.relation {
        None => walk
            .ix
            .wildcard
            .get(subject.object.object_type.as_str())
            .cloned()
            // no relation allows the wildcard of this type: nothing to walk
            .unwrap_or_default(),
        Some(_) => Vec::new(),
    };
    for (t, r) in wildcard_targets {
        if !walk.is_relevant(t, Some(r)) {
            continue;
        }
        let mut pager = Pager::new(by_subject(
            t,
            r,
            &subject.object.object_type,
            "*",
            SubjectRelationFilter::Ellipsis,
        ));
        while let Some(page) = pager.next_page(checker.d)? {
            for rel in page {
                let exact = rel.caveat.is_none();
                let atom = (t, rel.resource.object_id, Some(r));
                let via = rel.caveat.as_ref();
                if probe.is_false(via) {
                    continue;
                }
                walk.offer(checker, 0, atom, ReachedBy::Direct { exact }, via, 1)?;
            }
        }
    }

    while let Some((i, exact, level)) = walk.queue.pop_front() {
        checker.d.poll()?;
        let Some(((x, id, rel), _)) = walk.atoms.get(i).cloned() else {
            continue;
        };
        // Going further from here is a dispatch: with no depth budget left, SpiceDB fails.
        if level >= walk.max_depth && walk.leads_further(x, rel) {
            return Err(checker.d.depth_error());
        }
        // Relations holding this object or subject set as a subject.
        let direct = walk
            .ix
            .direct
            .get(&(x, rel))
            .cloned()
            // (this and the index lookups below are legitimate defaults: the reverse index
            // has no entry where no relation, permission or arrow uses the node)
            .unwrap_or_default();
        for (t, r) in direct {
            if !walk.is_relevant(t, Some(r)) {
                continue;
            }
            let subject_relation = match rel {
                None => SubjectRelationFilter::Ellipsis,
                Some(sr) => SubjectRelationFilter::Relation(sr.to_string()),
            };
            let mut pager = Pager::new(by_subject(t, r, x, &id, subject_relation));
            while let Some(page) = pager.next_page(checker.d)? {
                for found in page {
                    let entry = ReachedBy::Direct {
                        exact: exact && found.caveat.is_none(),
                    };
                    let atom = (t, found.resource.object_id, Some(r));
                    let via = found.caveat.as_ref();
                    if probe.is_false(via) {
                        continue;
                    }
                    walk.offer(checker, i, atom, entry, via, level + 1)?;
                }
            }
        }
        match rel {
            Some(r) => {
                // Permissions of the same object naming this relation or permission.
                let computed = walk.ix.computed.get(&(x, r)).cloned().unwrap_or_default();
                for (p, unions_only) in computed {
                    let atom = (x, id.clone(), Some(p));
                    let entry = ReachedBy::new(unions_only, exact);
                    walk.offer(checker, i, atom, entry, None, level + 1)?;
                }
                // Arrows whose tupleset points at this object.
                let arrows = walk.ix.arrows.get(&(x, r)).cloned().unwrap_or_default();
                for (t, tupleset, p, unions_only) in arrows {
                    if !walk.is_relevant(t, Some(p)) {
                        continue;
                    }
                    let mut pager =
                        Pager::new(by_subject(t, tupleset, x, &id, SubjectRelationFilter::Any));
                    while let Some(page) = pager.next_page(checker.d)? {
                        for found in page {
                            let entry =
                                ReachedBy::new(unions_only, exact && found.caveat.is_none());
                            let atom = (t, found.resource.object_id, Some(p));
                            let via = found
                                .caveat
                                .as_ref()
                                .filter(|_| walk.ix.walked_arrows.contains(&(t, tupleset, r, p)));
                            if probe.is_false(via) {
                                continue;
                            }
                            walk.offer(checker, i, atom, entry, via, level + 1)?;
                        }
                    }
                }
            }
            None => {
                let selfs = walk.ix.selfs.get(x).cloned().unwrap_or_default();
                for (p, unions_only) in selfs {
                    let atom = (x, id.clone(), Some(p));
                    let entry = ReachedBy::new(unions_only, exact);
                    walk.offer(checker, i, atom, entry, None, level + 1)?;
                }
            }
        }
    }
    if walk.has_cycle() {
        return Err(checker.d.depth_error());
    }
    Ok(())
}

/// Phase 3: SpiceDB evaluates the caveat of a relationship its walk follows when the walk can
/// go on from there to the target (not only through intersection operands it checks rather
/// than walks), whether or not the path ends in a result or another path makes the result
/// certain (probed): a context failing on one of them (a value of the wrong type, an
/// evaluation error) fails the call. So do the conditions of conditional entry checks.
fn evaluate_met_caveats(
    walk: &mut ReverseWalk<'_>,
    engine: &Engine,
    schema: &CompiledSchema,
    context: &Context,
) -> EngineResult<()> {
    for (t, r, c) in std::mem::take(&mut walk.pending) {
        if walk.walked_to_target(t, r) {
            walk.meet(&c);
        }
    }
    for e in walk.met.values() {
        caveats::evaluate_every_path(e, context, schema, engine.caveats.as_ref())?;
    }
    Ok(())
}

/// Phase 4, first half: the atoms of the wanted type and permission, sorted by id, each with
/// whether it is exact (a member as it is) or went through caveats (to be checked).
fn candidates(walk: ReverseWalk<'_>, resource_type: &str, permission: &str) -> Vec<Candidate> {
    let mut candidates: BTreeMap<String, Option<u32>> = BTreeMap::new();
    for (i, ((t, id, r), exact)) in walk.atoms.into_iter().enumerate() {
        if t == resource_type && r == Some(permission) {
            let check = (!exact).then(|| walk.deferred.get(&i).copied().unwrap_or(walk.max_depth));
            candidates.insert(id, check);
        }
    }
    candidates.into_iter().collect()
}

/// Phase 4, second half, for one window: exact candidates are members; the others are
/// checked for their permissionship and missing context, on the calling thread or, when there
/// are many, spread over the cores, each chunk with its own dispatcher and memo (chunks are
/// contiguous, so the results stay sorted by id).
fn resolve_all(
    engine: &Engine,
    snap: &Snapshot<'_>,
    lookup: &ResourceLookup,
    candidates: &[Candidate],
) -> EngineResult<Vec<LookupResult>> {
    let needs_check = |(_, check): &Candidate| usize::from(check.is_some());
    let chunks = parallel_chunks(candidates, needs_check, PARALLEL_CHECKS_MIN, |chunk| {
        let mut d = Dispatcher::new(engine, snap);
        let mut memo = CheckMemo::new(EvalMode::CHECK);
        resolve_candidates(&mut d, &mut memo, lookup, chunk)
    })?;
    let mut out = Vec::with_capacity(candidates.len());
    for chunk in chunks {
        out.extend(chunk?);
    }
    Ok(out)
}

/// Below this many candidates to check, LookupResources checks them on the calling thread.
const PARALLEL_CHECKS_MIN: usize = 64;

/// The results among `candidates` (sorted by id): exact ones as they are, the others checked.
fn resolve_candidates(
    d: &mut Dispatcher<'_>,
    memo: &mut CheckMemo,
    lookup: &ResourceLookup,
    candidates: &[Candidate],
) -> EngineResult<Vec<LookupResult>> {
    let (resource_type, permission) = (&lookup.key.resource_type, &lookup.key.permission);
    let (subject, context) = (&lookup.subject, &lookup.context);
    // The fast path's answers first, for every candidate to check, by depth budget (its graph
    // view is dropped before any general check reads the store). `None`: the general checker
    // decides, as when the fast path is off or cannot run at all (a subject set, no graph).
    let mut fast: Vec<Option<bool>> = vec![None; candidates.len()];
    if d.engine.config.fast_path {
        let mut depths: Vec<u32> = candidates.iter().filter_map(|(_, c)| *c).collect();
        depths.sort_unstable();
        depths.dedup();
        for depth in depths {
            let group = || {
                candidates
                    .iter()
                    .enumerate()
                    .filter(move |(_, (_, c))| *c == Some(depth))
            };
            let answers = fast::check_ids(
                d.snap,
                &mut fast::FastMemo::default(),
                depth,
                subject,
                resource_type,
                permission,
                group().map(|(_, (id, _))| id.as_str()),
            )
            .unwrap_or_default();
            for ((k, _), answer) in group().zip(answers) {
                if let Some(slot) = fast.get_mut(k) {
                    *slot = answer;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(candidates.len());
    for (k, (id, check)) in candidates.iter().enumerate() {
        let plain = match check {
            None => Some(true),
            Some(_) => fast.get(k).copied().flatten(),
        };
        match plain {
            Some(true) => {
                out.push(LookupResult {
                    resource_id: id.clone(),
                    permissionship: Permissionship::HasPermission,
                    missing_context: Vec::new(),
                });
                continue;
            }
            Some(false) => continue,
            None => {}
        }
        let resource = ObjectRef::new(resource_type.as_str(), id.as_str());
        let depth = check.unwrap_or(d.max_depth());
        let (outcome, _) = check::check_outcome_at(d, memo, &resource, permission, subject, depth)?;
        if outcome == Outcome::No {
            continue;
        }
        // SpiceDB evaluates the caveats of every path to the resource, so a context that fails
        // on any of them fails the call (see `caveats::evaluate_every_path`).
        if let Outcome::Member {
            cond: Cond::Expr(e),
            ..
        } = &outcome
        {
            caveats::evaluate_every_path(e, context, d.snap.schema, d.engine.caveats.as_ref())?;
        }
        let (permissionship, missing_context, _) = check::finish(d, outcome, context)?;
        if permissionship != Permissionship::NoPermission {
            out.push(LookupResult {
                resource_id: id.clone(),
                permissionship,
                missing_context,
            });
        }
    }
    Ok(out)
}
