//! The answer to one check sub-problem before caveats are evaluated.
//!
//! Not a member, a member under a caveat condition, or unresolved (it hinges on a data cycle or
//! on more depth than the budget). Shared by the checker, its memo and LookupResources; see
//! `check` for how the rewrite rules combine outcomes.

use crate::engine::Permissionship;
use crate::engine::caveats::Cond;
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

/// The earlier of two optional expiries (`None` is "never").
pub(crate) fn min_time(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
