//! The in-memory backend of the key-value contract: a `BTreeMap` behind an `RwLock`.
//!
//! The reference implementation that tests and embedded uses run the shared MVCC layer on.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock};

use crate::store::StoreResult;
use crate::store::kv::{Batch, BatchOp, Kv, ScanFn};
use crate::store::mvcc::Mvcc;

/// The in-memory key-value map.
#[derive(Debug, Default)]
pub(crate) struct MemoryKv {
    /// every key and value; scans hold the read lock, commits the write lock
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKv {
    /// A map holding exactly what `batch` writes.
    fn with_batch(batch: Batch) -> MemoryKv {
        let kv = MemoryKv::default();
        apply(
            &mut kv.map.write().unwrap_or_else(PoisonError::into_inner),
            batch,
        );
        kv
    }
}

fn apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, batch: Batch) {
    for op in batch.ops {
        match op {
            BatchOp::Put(k, v) => {
                map.insert(k, v);
            }
            BatchOp::Delete(k) => {
                map.remove(&k);
            }
        }
    }
}

impl Kv for MemoryKv {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        // A poisoned lock only means a panic elsewhere while holding it; commits apply whole
        // batches without calling out, so the map itself is consistent.
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        Ok(map.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, f: &mut ScanFn<'_>) -> StoreResult<()> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        let upper = match end {
            Some(e) if e <= start => return Ok(()),
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        for (k, v) in map.range::<[u8], _>((Bound::Included(start), upper)) {
            if !f(k, v)? {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, batch: Batch) -> StoreResult<()> {
        apply(
            &mut self.map.write().unwrap_or_else(PoisonError::into_inner),
            batch,
        );
        Ok(())
    }
}

/// A [`Datastore`](crate::store::Datastore) held entirely in memory: nothing survives the
/// process. Same semantics as [`RocksStore`](crate::store::RocksStore).
#[derive(Debug)]
pub struct MemoryStore {
    /// the shared MVCC layer over the map
    pub(crate) inner: Mvcc<MemoryKv>,
}

impl MemoryStore {
    /// An empty store with a fresh unique id, at revision 0.
    pub fn new() -> MemoryStore {
        MemoryStore {
            inner: Mvcc::fresh(MemoryKv::with_batch),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

crate::store::mvcc::delegate_datastore!(MemoryStore);
