//! The checker's memo: the check sub-problems one request has solved, and its evaluation mode.
//!
//! The sub-problems one request (or one group of a bulk request) has solved, keyed by (resource
//! type, resource id, relation, interned subject), with the entries that make cycles safe to
//! memoize (in progress, final, tentative). Also the evaluation mode a memo belongs to.

use std::borrow::Borrow;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use rustc_hash::FxHasher;

use crate::engine::outcome::Outcome;
use crate::model::SubjectRef;

/// A hash map with the fast, non-cryptographic hasher (keys are not attacker-chosen in a way
/// that matters: a memo lives for one request).
type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The parts of a memo key: resource type, resource id, relation, interned subject.
pub(crate) trait KeyParts {
    fn parts(&self) -> (&str, &str, &str, u32);
}

/// An owned memo key.
#[derive(Debug, Clone)]
pub(crate) struct MemoKey {
    resource_type: String,
    resource_id: String,
    relation: String,
    subject: u32,
}

impl KeyParts for MemoKey {
    fn parts(&self) -> (&str, &str, &str, u32) {
        (
            &self.resource_type,
            &self.resource_id,
            &self.relation,
            self.subject,
        )
    }
}

impl KeyParts for (&str, &str, &str, u32) {
    fn parts(&self) -> (&str, &str, &str, u32) {
        *self
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl Hash for MemoKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for MemoKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for MemoKey {}

impl<'a> Borrow<dyn KeyParts + 'a> for MemoKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

/// What the memo knows about one sub-problem.
#[derive(Debug, Clone)]
pub(crate) enum MemoEntry {
    /// being solved right now, at this index of the dispatch stack: reaching it again is a
    /// cycle in the data
    InProgress { index: usize },
    /// solved for good, needing `height` nested dispatches (reused only where that much
    /// depth budget remains, so memoized answers never hide a depth error)
    Final { outcome: Outcome, height: u32 },
    /// unresolved, and only valid while the stack entry that was its parent is still active
    /// (it assumed the sub-problems on the stack above it were unresolved) and, if it ran out
    /// of depth, only where no more depth remains than it had
    Tentative {
        outcome: Outcome,
        height: u32,
        /// (stack index, activation id) of the parent when it was solved
        parent: Option<(usize, u64)>,
        /// the depth budget it had, if running out of depth made it unresolved
        depth: Option<u32>,
    },
}

/// How checks are evaluated; answers differ between modes, so each memo has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EvalMode {
    /// Evaluate every branch of a union, as SpiceDB does when one dispatch carries several
    /// resource ids (CheckBulk): a branch that cannot be decided then makes the whole answer
    /// undecided even where another branch found a member.
    pub(crate) require_all: bool,
}

impl EvalMode {
    /// Check, CheckBulk items answered one by one, and LookupResources' checks.
    pub(crate) const CHECK: EvalMode = EvalMode { require_all: false };
    /// CheckBulk items dispatched together with other resource ids.
    pub(crate) const BATCH: EvalMode = EvalMode { require_all: true };
}

/// Solved check sub-problems of one request (or one bulk request), in one evaluation mode.
#[derive(Debug)]
pub(crate) struct CheckMemo {
    /// how the sub-problems were solved
    pub(crate) mode: EvalMode,
    entries: HashMap<MemoKey, MemoEntry>,
    subjects: HashMap<SubjectRef, u32>,
    next_activation: u64,
}

impl CheckMemo {
    /// An empty memo for `mode`.
    pub(crate) fn new(mode: EvalMode) -> CheckMemo {
        CheckMemo {
            mode,
            entries: HashMap::default(),
            subjects: HashMap::default(),
            next_activation: 0,
        }
    }

    /// The interned id of `subject`.
    pub(crate) fn subject_id(&mut self, subject: &SubjectRef) -> u32 {
        if let Some(id) = self.subjects.get(subject) {
            return *id;
        }
        // INVARIANT: a memo interns the subject of each check of one request (and is cleared
        // between subjects of a bulk request), far fewer than 2^32; a saturated id would alias
        // the answers of two subjects.
        #[allow(
            clippy::expect_used,
            reason = "fewer than 2^32 subjects, see INVARIANT"
        )]
        let id = u32::try_from(self.subjects.len()).expect("fewer than 2^32 subjects per memo");
        self.subjects.insert(subject.clone(), id);
        id
    }

    /// A fresh activation id for a stack entry.
    pub(crate) fn activation(&mut self) -> u64 {
        self.next_activation = self.next_activation.wrapping_add(1);
        self.next_activation
    }

    pub(crate) fn get(&self, key: (&str, &str, &str, u32)) -> Option<&MemoEntry> {
        self.entries.get(&key as &dyn KeyParts)
    }

    pub(crate) fn insert(&mut self, key: (&str, &str, &str, u32), entry: MemoEntry) {
        if let Some(slot) = self.entries.get_mut(&key as &dyn KeyParts) {
            *slot = entry;
            return;
        }
        let (t, i, r, s) = key;
        self.entries.insert(
            MemoKey {
                resource_type: t.to_string(),
                resource_id: i.to_string(),
                relation: r.to_string(),
                subject: s,
            },
            entry,
        );
    }

    /// Forgets every sub-problem, keeping the allocated capacity (for a run of checks of
    /// another subject, whose sub-problems never meet the previous ones).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.subjects.clear();
    }

    pub(crate) fn remove(&mut self, key: (&str, &str, &str, u32)) {
        self.entries.remove(&key as &dyn KeyParts);
    }
}
