//! The LookupResources walks kept for their cursors, so that the next page resumes in O(page).
//!
//! A LookupResources walk gathers and sorts every candidate before the first result can be
//! sent in id order; for a subject that reaches a million resources that is seconds of work.
//! A client reading such an answer in pages of a thousand would pay it a thousand times. So a
//! walk that stopped at its page's limit with candidates left is kept here, keyed by the
//! request and the revision (which a cursor pins), and the next page's request takes it up
//! where the cursor points.
//!
//! Bounded twice: by the memory the kept candidates hold (the least recently used are dropped
//! to make room; a walk larger than the whole budget is not kept), and by time (a walk not
//! used for [`IDLE`] is dropped). A missing walk only costs time: the page walks again, at the
//! cursor's revision, and gives the same answer. The lock is held for map operations only,
//! never while walking or while a client reads.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use crate::engine::lookup_resources::{LookupKey, ResourceLookup};

/// A kept walk unused for this long is dropped (a client paging through an answer asks for
/// the next page well within it).
pub(crate) const IDLE: Duration = Duration::from_secs(300);

/// The walks kept for cursors.
pub(crate) struct LookupCache {
    /// how many bytes of candidates may be kept in all
    budget: usize,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    walks: HashMap<LookupKey, (Arc<ResourceLookup>, Instant)>,
    bytes: usize,
}

impl Kept {
    fn remove(&mut self, key: &LookupKey) {
        if let Some((walk, _)) = self.walks.remove(key) {
            self.bytes = self.bytes.saturating_sub(walk.bytes());
        }
    }

    /// Drops the walks unused since before `cutoff`.
    fn drop_idle(&mut self, cutoff: Instant) {
        let idle: Vec<LookupKey> = self
            .walks
            .iter()
            .filter(|(_, (_, used))| *used < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            self.remove(&key);
        }
    }

    /// The least recently used walk.
    fn oldest(&self) -> Option<LookupKey> {
        self.walks
            .iter()
            .min_by_key(|(_, (_, used))| *used)
            .map(|(k, _)| k.clone())
    }
}

impl std::fmt::Debug for LookupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.lock();
        f.debug_struct("LookupCache")
            .field("budget", &self.budget)
            .field("walks", &kept.walks.len())
            .field("bytes", &kept.bytes)
            .finish()
    }
}

impl LookupCache {
    /// A cache keeping at most `budget` bytes of candidates.
    pub(crate) fn new(budget: usize) -> LookupCache {
        LookupCache {
            budget,
            kept: Mutex::new(Kept::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic elsewhere while holding the lock leaves the map consistent (every change
        // is one insert or remove): keep using it.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The walk kept for `key`, if any (and not idle for too long).
    pub(crate) fn get(&self, key: &LookupKey) -> Option<Arc<ResourceLookup>> {
        let now = Instant::now();
        let mut kept = self.lock();
        let (walk, used) = kept.walks.get_mut(key)?;
        if now.duration_since(*used) > IDLE {
            kept.remove(key);
            return None;
        }
        *used = now;
        Some(Arc::clone(walk))
    }

    /// Keeps `walk`, dropping idle walks and then the least recently used until it fits; a
    /// walk larger than the whole budget is not kept.
    pub(crate) fn keep(&self, walk: Arc<ResourceLookup>) {
        let size = walk.bytes();
        if size > self.budget {
            return;
        }
        let now = Instant::now();
        let mut kept = self.lock();
        kept.remove(&walk.key);
        if let Some(cutoff) = now.checked_sub(IDLE) {
            kept.drop_idle(cutoff);
        }
        while kept.bytes + size > self.budget {
            let Some(oldest) = kept.oldest() else { break };
            kept.remove(&oldest);
        }
        kept.bytes += size;
        kept.walks.insert(walk.key.clone(), (walk, now));
    }

    /// How many walks are kept, and their bytes.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.walks.len(), kept.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Context, Revision, SubjectRef, Timestamp};

    fn walk(rev: u64, n: usize) -> Arc<ResourceLookup> {
        let subject = SubjectRef::object("user", "ann");
        let context = Context::new();
        Arc::new(ResourceLookup {
            key: LookupKey::new(Revision(rev), "doc", "view", &subject, &context),
            subject,
            context,
            now: Timestamp::now(),
            candidates: (0..n).map(|i| (format!("d{i:06}"), None)).collect(),
        })
    }

    #[test]
    fn a_kept_walk_is_found_by_its_key_and_revision() {
        let cache = LookupCache::new(1 << 20);
        let w = walk(7, 100);
        cache.keep(Arc::clone(&w));
        let got = cache.get(&w.key).unwrap();
        assert!(Arc::ptr_eq(&got, &w));
        assert!(cache.get(&walk(8, 100).key).is_none());
        assert_eq!(cache.usage(), (1, w.bytes()));
    }

    #[test]
    fn the_budget_drops_the_least_recently_used_and_refuses_the_oversized() {
        let one = walk(1, 1000);
        let budget = one.bytes() * 2 + one.bytes() / 2;
        let cache = LookupCache::new(budget);
        let (two, three) = (walk(2, 1000), walk(3, 1000));
        cache.keep(Arc::clone(&one));
        cache.keep(Arc::clone(&two));
        // `one` used last: `two` is the one to go when `three` needs room
        assert!(cache.get(&one.key).is_some());
        cache.keep(Arc::clone(&three));
        assert!(cache.get(&one.key).is_some());
        assert!(cache.get(&two.key).is_none());
        assert!(cache.get(&three.key).is_some());
        let (walks, bytes) = cache.usage();
        assert_eq!(walks, 2);
        assert!(bytes <= budget);

        cache.keep(walk(4, 10_000));
        assert_eq!(cache.usage().0, 2, "a walk over the budget is not kept");
    }

    #[test]
    fn keeping_the_same_walk_twice_counts_it_once() {
        let cache = LookupCache::new(1 << 20);
        let w = walk(5, 10);
        cache.keep(Arc::clone(&w));
        cache.keep(Arc::clone(&w));
        assert_eq!(cache.usage(), (1, w.bytes()));
    }
}
