//! The bottom of the store: a tiny ordered key-value contract.
//!
//! Point get, ordered range scan and atomic batch commit: the MVCC layer is written against it
//! once, and `rocks.rs` and `memory.rs` implement it.

use std::path::Path;

use crate::store::{StoreError, StoreResult};

/// One change in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchOp {
    /// set `key` to `value`
    Put(Vec<u8>, Vec<u8>),
    /// remove `key` (absent keys are fine)
    Delete(Vec<u8>),
}

/// Puts and deletes applied atomically, in order, by [`Kv::commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// the changes, applied in this order
    pub(crate) ops: Vec<BatchOp>,
}

impl Batch {
    /// Sets `key` to `value`.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp::Put(key, value));
    }

    /// Removes `key`.
    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(BatchOp::Delete(key));
    }

    /// How many changes are queued.
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// Is nothing queued?
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The visitor of [`Kv::scan`]: gets each key and value, returns `Ok(true)` to go on.
pub(crate) type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> StoreResult<bool> + 'a;

/// An ordered byte-string map with atomic, durable batch writes.
pub(crate) trait Kv: Send + Sync {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;

    /// Calls `f` on every entry with `start <= key < end` (`end = None`: no upper bound) in
    /// ascending key order, until `f` returns `Ok(false)` or an error. One scan sees one
    /// consistent state. `f` must not call back into the store (the memory store holds its read
    /// lock during the scan).
    fn scan(&self, start: &[u8], end: Option<&[u8]>, f: &mut ScanFn<'_>) -> StoreResult<()>;

    /// Applies `batch` atomically; when it returns `Ok`, the batch is durable.
    fn commit(&self, batch: Batch) -> StoreResult<()>;

    /// Applies `batch` atomically without waiting for it to be durable: it becomes durable
    /// with the next [`Kv::commit`] (batches reach the disk in commit order), or is lost in a
    /// crash before that. For data that means nothing until a later commit says so.
    fn commit_unsynced(&self, batch: Batch) -> StoreResult<()> {
        self.commit(batch)
    }

    /// Is the map shared with other processes (other Pemba nodes) that write to it too? Then
    /// the MVCC layer takes [`Kv::lock_writers`] around each write and replays what the other
    /// nodes committed. A map of one process is not (the default).
    fn shared(&self) -> bool {
        false
    }

    /// Waits until this process alone may write to a shared map, and holds that right until
    /// [`Kv::unlock_writers`]; while held, commits go through the session that holds it, so a
    /// node that lost the right (its session dropped) cannot commit. Fails with
    /// [`StoreError::Unavailable`] when the map cannot be reached, or the right was not had in
    /// time. A map of one process has nothing to do (the default).
    fn lock_writers(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Gives up the right [`Kv::lock_writers`] took.
    fn unlock_writers(&self) {}

    /// Writes a consistent copy of the whole map into the new directory `dir` (which must not
    /// exist). The default refuses: only a durable backend can.
    fn checkpoint(&self, _dir: &Path) -> StoreResult<()> {
        Err(StoreError::Unsupported(
            "this datastore cannot write a checkpoint".to_string(),
        ))
    }
}
