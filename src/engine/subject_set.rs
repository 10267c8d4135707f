//! Sets of subjects with SpiceDB's algebra: union, intersection, exclusion, wildcards, caveats.
//!
//! Subject sets follow SpiceDB's `BaseSubjectSet`: concrete subjects (each with its caveat) and
//! the wildcard (with its caveat and its excluded subjects, each with a caveat) are kept apart,
//! and union, intersection and exclusion combine them by SpiceDB's rules, so the answers match
//! SpiceDB's, caveats included. Where those rules are not pointwise-exact, SpiceDB's are kept:
//! a concrete subject reached under a caveat is listed CONDITIONAL next to an unconditional
//! wildcard; `{*[c]} ∪ {* - {tom}}` is an unconditional wildcard; `{*[c]} - {* - {tom}}` keeps
//! the wildcard `*[c]`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::caveats::CaveatExpr;
use crate::model::Caveat;

/// A caveat on a found subject, as SpiceDB's `CaveatExpression`: `None` is unconditional.
pub(super) type Cav = Option<CaveatExpr>;

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
    pub(super) fn empty() -> SubjectSet {
        SubjectSet::default()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.concrete.is_empty() && self.wildcard.is_none()
    }

    /// The concrete subjects, each with its caveat, in id order.
    pub(super) fn concrete(&self) -> &BTreeMap<String, Cav> {
        &self.concrete
    }

    /// The wildcard, if the set has it: its caveat, and its excluded subjects (each with its
    /// caveat), in id order.
    pub(super) fn wildcard(&self) -> Option<(&Cav, &BTreeMap<String, Cav>)> {
        self.wildcard.as_ref().map(|w| (&w.caveat, &w.excluded))
    }

    /// Adds subject `id` (or the wildcard, for `*`) under `caveat`: SpiceDB's `Add`.
    pub(super) fn add(&mut self, id: &str, caveat: Cav) {
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
    pub(super) fn with_parent_caveat(&self, parent: &Cav) -> SubjectSet {
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
    pub(super) fn union_with(&mut self, other: &SubjectSet) {
        for (id, c) in &other.concrete {
            self.add_concrete(id, c.clone());
        }
        if let Some(w) = &other.wildcard {
            self.add_wildcard(w.clone());
        }
    }

    pub(super) fn union(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
        if a.is_empty() {
            return b.clone();
        }
        let mut out = a.clone();
        out.union_with(b);
        out
    }

    /// `a ∩ b`: SpiceDB's `IntersectionDifference`.
    pub(super) fn intersection(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
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
    pub(super) fn exclusion(a: &SubjectSet, b: &SubjectSet) -> SubjectSet {
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

/// The caveat of a relationship as a found subject's caveat.
pub(super) fn caveat_of(caveat: Option<&Caveat>) -> Cav {
    caveat.map(|c| CaveatExpr::Leaf(Arc::new(c.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Context;

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
