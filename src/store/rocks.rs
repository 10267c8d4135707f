//! The RocksDB backend of the key-value contract.
//!
//! One keyspace (prefix bytes from `encoding.rs`), every commit a synced `WriteBatch` so an
//! acknowledged write survives kill -9 and power loss, scans through iterators (each reads from
//! an implicit snapshot).

use std::path::{Path, PathBuf};

use rocksdb::{DB, DBCompressionType, ErrorKind, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::store::kv::{Batch, BatchOp, Kv, ScanFn};
use crate::store::mvcc::Mvcc;
use crate::store::{StoreError, StoreResult};

/// The RocksDB key-value map.
pub(crate) struct RocksKv {
    /// the open database
    db: DB,
}

impl std::fmt::Debug for RocksKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKv")
            .field("path", &self.db.path())
            .finish()
    }
}

fn engine(e: rocksdb::Error) -> StoreError {
    StoreError::Engine(e.into_string())
}

impl RocksKv {
    pub(crate) fn open(path: &Path) -> StoreResult<RocksKv> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        match DB::open(&opts, path) {
            Ok(db) => Ok(RocksKv { db }),
            Err(e) if is_lock_error(&e) => Err(StoreError::Locked {
                path: path.display().to_string(),
            }),
            Err(e) => Err(engine(e)),
        }
    }
}

/// Did opening fail because another process (or another handle in this process) holds the
/// `LOCK` file? RocksDB reports both as I/O errors naming the lock file.
fn is_lock_error(e: &rocksdb::Error) -> bool {
    let msg = e.as_ref().to_ascii_lowercase();
    e.kind() == ErrorKind::IOError && msg.contains("lock")
}

impl Kv for RocksKv {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.db.get(key).map_err(engine)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, f: &mut ScanFn<'_>) -> StoreResult<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek(start);
        while let Some((k, v)) = it.item() {
            if !f(k, v)? {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(engine)
    }

    fn commit(&self, batch: Batch) -> StoreResult<()> {
        self.write(batch, true)
    }

    fn commit_unsynced(&self, batch: Batch) -> StoreResult<()> {
        self.write(batch, false)
    }

    fn checkpoint(&self, dir: &Path) -> StoreResult<()> {
        self.checkpoint_to(dir)
    }
}

impl RocksKv {
    /// A RocksDB checkpoint of the database in `dir`: hard links to the immutable table files
    /// where possible, copies otherwise, after flushing the memtable.
    fn checkpoint_to(&self, dir: &Path) -> StoreResult<()> {
        if dir.exists() {
            return Err(StoreError::TargetExists(dir.display().to_string()));
        }
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(engine)?;
        cp.create_checkpoint(dir).map_err(engine)
    }

    /// Writes `batch` as one `WriteBatch`; with `sync`, waits until the WAL (and with it every
    /// earlier batch) is on disk.
    fn write(&self, batch: Batch, sync: bool) -> StoreResult<()> {
        // In key order: the memtable's skip list then finds each insertion point next to the
        // previous one instead of searching from the top (a third of a bulk load's CPU went
        // into that search). A stable sort keeps the order of operations on one key, which is
        // all a batch's meaning depends on.
        let mut ops = batch.ops;
        ops.sort_by(|a, b| op_key(a).cmp(op_key(b)));
        let mut wb = WriteBatch::default();
        for op in ops {
            match op {
                BatchOp::Put(k, v) => wb.put(k, v),
                BatchOp::Delete(k) => wb.delete(k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(engine)
    }
}

/// The key an operation writes.
fn op_key(op: &BatchOp) -> &[u8] {
    match op {
        BatchOp::Put(k, _) | BatchOp::Delete(k) => k,
    }
}

/// A durable [`Datastore`](crate::store::Datastore) in a RocksDB directory. One process (and one
/// handle) at a time may open a directory.
#[derive(Debug)]
pub struct RocksStore {
    /// the shared MVCC layer over the database
    pub(crate) inner: Mvcc<RocksKv>,
    /// the data directory
    path: PathBuf,
}

impl RocksStore {
    /// Opens (creating if missing) the store in the directory `path`. Fails with
    /// [`StoreError::Locked`] if the directory is already open, [`StoreError::Corrupt`] if it
    /// holds data of an unknown format.
    pub fn open(path: &Path) -> StoreResult<RocksStore> {
        let kv = RocksKv::open(path)?;
        Ok(RocksStore {
            inner: Mvcc::open(kv)?,
            path: path.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

crate::store::mvcc::delegate_datastore!(RocksStore);
