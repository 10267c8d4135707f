//! A check sub-problem's answer before caveats are evaluated, and how the rules combine it.
//!
//! Not a member, a member under a caveat condition, or unresolved (it hinges on a data cycle or
//! on more depth than the budget). Shared by the checker, its memo and LookupResources; the
//! rewrite rules (`rules.rs`) combine outcomes through the accumulators here.

use crate::engine::Permissionship;
use crate::engine::caveats::Cond;
use crate::engine::rules::{Accumulator, Answer};
use crate::model::Timestamp;

/// Why an outcome is unresolved, and what it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unresolved {
    /// the depth budget ran out somewhere below
    pub(crate) depth_limited: bool,
    /// the lowest dispatch-stack index of an in-progress sub-problem it reached (a cycle)
    pub(crate) min_ref: Option<usize>,
}

impl Unresolved {
    pub(crate) fn merge(a: Option<Unresolved>, b: Unresolved) -> Unresolved {
        match a {
            None => b,
            Some(a) => Unresolved {
                depth_limited: a.depth_limited || b.depth_limited,
                min_ref: match (a.min_ref, b.min_ref) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, None) => x,
                    (None, y) => y,
                },
            },
        }
    }
}

/// The answer to one check sub-problem, before caveats are evaluated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// not a member
    No,
    /// a member when `cond` holds (`Cond::True`: unconditionally; never `Cond::False`)
    Member {
        /// the caveat condition
        cond: Cond,
        /// the earliest expiry among the relationships used
        expires_at: Option<Timestamp>,
    },
    /// cannot be decided within the depth budget / without going around a data cycle
    Unresolved(Unresolved),
}

impl Outcome {
    pub(crate) fn yes(expires_at: Option<Timestamp>) -> Outcome {
        Outcome::Member {
            cond: Cond::True,
            expires_at,
        }
    }

    pub(crate) fn member(cond: Cond, expires_at: Option<Timestamp>) -> Outcome {
        if cond.is_false() {
            Outcome::No
        } else {
            Outcome::Member { cond, expires_at }
        }
    }

    /// The permissionship a trace shows for this outcome.
    pub(crate) fn permissionship(&self) -> Permissionship {
        match self {
            Outcome::Member { cond, .. } if cond.is_true() => Permissionship::HasPermission,
            Outcome::Member { .. } => Permissionship::ConditionalPermission,
            Outcome::No | Outcome::Unresolved(_) => Permissionship::NoPermission,
        }
    }
}

impl Answer for Outcome {
    type Union = UnionOfOutcomes;
    type Intersection = IntersectionOfOutcomes;

    fn no() -> Outcome {
        Outcome::No
    }

    fn yes() -> Outcome {
        Outcome::yes(None)
    }

    fn is_unconditional(&self) -> bool {
        matches!(self, Outcome::Member { cond, .. } if cond.is_true())
    }

    fn may_be_member(&self) -> bool {
        matches!(self, Outcome::Member { .. })
    }

    fn union(require_all: bool) -> UnionOfOutcomes {
        UnionOfOutcomes::new(require_all)
    }

    fn intersection() -> IntersectionOfOutcomes {
        IntersectionOfOutcomes::new()
    }

    /// A member of the base unless a member of the subtracted: under the base's condition and
    /// not the subtracted's; an unresolved subtracted leaves it unresolved.
    fn exclude(base: Outcome, subtracted: Outcome) -> Outcome {
        let Outcome::Member { cond, expires_at } = base else {
            return base;
        };
        match subtracted {
            Outcome::No => Outcome::member(cond, expires_at),
            Outcome::Member { cond: sub, .. } => Outcome::member(cond.and(sub.not()), expires_at),
            u @ Outcome::Unresolved(_) => u,
        }
    }
}

/// The earlier of two optional expiries (`None` is "never").
pub(crate) fn min_time(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Accumulates a union: stops at the first unconditional member, unless every branch must be
/// evaluated (`require_all`).
pub(crate) struct UnionOfOutcomes {
    yes: Option<Option<Timestamp>>,
    cond: Cond,
    cond_expiry: Option<Timestamp>,
    unresolved: Option<Unresolved>,
    require_all: bool,
}

impl UnionOfOutcomes {
    pub(crate) fn new(require_all: bool) -> UnionOfOutcomes {
        UnionOfOutcomes {
            yes: None,
            cond: Cond::False,
            cond_expiry: None,
            unresolved: None,
            require_all,
        }
    }
}

impl Accumulator<Outcome> for UnionOfOutcomes {
    /// Adds one branch; true once the union is decided (an unconditional member).
    fn add(&mut self, o: Outcome) -> bool {
        match o {
            Outcome::No => false,
            Outcome::Member { cond, expires_at } if cond.is_true() => {
                if self.yes.is_none() {
                    self.yes = Some(expires_at);
                }
                !self.require_all
            }
            Outcome::Member { cond, expires_at } => {
                let prev = std::mem::replace(&mut self.cond, Cond::False);
                self.cond = prev.or(cond);
                self.cond_expiry = min_time(self.cond_expiry, expires_at);
                false
            }
            Outcome::Unresolved(u) => {
                self.unresolved = Some(Unresolved::merge(self.unresolved, u));
                false
            }
        }
    }

    fn finish(self) -> Outcome {
        if let (Some(u), true) = (self.unresolved, self.require_all) {
            return Outcome::Unresolved(u);
        }
        if let Some(expires_at) = self.yes {
            return Outcome::yes(expires_at);
        }
        if let Some(u) = self.unresolved {
            return Outcome::Unresolved(u);
        }
        Outcome::member(self.cond, self.cond_expiry)
    }
}

/// Accumulates an intersection: stops at the first non-member.
pub(crate) struct IntersectionOfOutcomes {
    no: bool,
    any: bool,
    cond: Cond,
    expiry: Option<Timestamp>,
    unresolved: Option<Unresolved>,
}

impl IntersectionOfOutcomes {
    pub(crate) fn new() -> IntersectionOfOutcomes {
        IntersectionOfOutcomes {
            no: false,
            any: false,
            cond: Cond::True,
            expiry: None,
            unresolved: None,
        }
    }
}

impl Accumulator<Outcome> for IntersectionOfOutcomes {
    /// Adds one branch; true once the intersection is decided (a non-member).
    fn add(&mut self, o: Outcome) -> bool {
        self.any = true;
        match o {
            Outcome::No => {
                self.no = true;
                true
            }
            Outcome::Member { cond, expires_at } => {
                let prev = std::mem::replace(&mut self.cond, Cond::True);
                self.cond = prev.and(cond);
                self.expiry = min_time(self.expiry, expires_at);
                false
            }
            Outcome::Unresolved(u) => {
                self.unresolved = Some(Unresolved::merge(self.unresolved, u));
                false
            }
        }
    }

    fn finish(self) -> Outcome {
        if self.no || !self.any {
            return Outcome::No;
        }
        if let Some(u) = self.unresolved {
            return Outcome::Unresolved(u);
        }
        Outcome::member(self.cond, self.expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_prefers_unconditional_and_intersection_stops_at_no() {
        let mut u = UnionOfOutcomes::new(false);
        assert!(!u.add(Outcome::No));
        assert!(!u.add(Outcome::Unresolved(Unresolved {
            depth_limited: false,
            min_ref: Some(0)
        })));
        assert!(u.add(Outcome::yes(None)));
        assert_eq!(u.finish(), Outcome::yes(None));

        let mut i = IntersectionOfOutcomes::new();
        assert!(!i.add(Outcome::yes(None)));
        assert!(!i.add(Outcome::Unresolved(Unresolved {
            depth_limited: true,
            min_ref: None
        })));
        assert!(i.add(Outcome::No));
        assert_eq!(i.finish(), Outcome::No);
        assert_eq!(IntersectionOfOutcomes::new().finish(), Outcome::No);
    }

    #[test]
    fn unresolved_union_stays_unresolved() {
        let mut u = UnionOfOutcomes::new(false);
        u.add(Outcome::Unresolved(Unresolved {
            depth_limited: false,
            min_ref: Some(3),
        }));
        u.add(Outcome::Unresolved(Unresolved {
            depth_limited: true,
            min_ref: Some(1),
        }));
        assert_eq!(
            u.finish(),
            Outcome::Unresolved(Unresolved {
                depth_limited: true,
                min_ref: Some(1)
            })
        );
    }
}
