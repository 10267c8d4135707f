//! Errors of the storage layer.

use thiserror::Error;

use crate::model::{Relationship, RelationshipKey, Revision};
use crate::store::Precondition;

/// Result alias for the storage layer.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything a datastore can refuse or fail with.
#[derive(Debug, Error)]
pub enum StoreError {
    /// `Create` of a relationship that is already live.
    #[error("could not CREATE relationship `{0}`, as it already existed")]
    AlreadyExists(Box<RelationshipKey>),
    /// A precondition of a write or delete did not hold.
    #[error("unable to satisfy write precondition `{0:?}`")]
    PreconditionFailed(Box<Precondition>),
    /// A delete matched more relationships than its limit and partial deletion was not allowed.
    #[error(
        "found more than {limit} relationships to be deleted and partial deletion was not requested"
    )]
    TooManyToDelete {
        /// the request's limit
        limit: u64,
    },
    /// A schema write would orphan stored relationships.
    #[error("{description}: {relationship}")]
    SchemaOrphans {
        /// what the schema change removes (SpiceDB's wording)
        description: String,
        /// one live relationship that still depends on it
        relationship: Box<Relationship>,
    },
    /// A precondition's filter would make the write scan more stored versions than allowed
    /// while every other writer waits.
    #[error(
        "the preconditions' filters would scan more than {0} stored relationships; \
         give each filter a resource type and id (or id prefix) and relation, or a subject id"
    )]
    ScanBudgetExceeded(usize),
    /// The revision is older than the garbage-collection horizon.
    #[error(
        "revision {requested} is no longer available: the oldest readable revision is {oldest}"
    )]
    RevisionTooOld {
        /// the revision asked for
        requested: Revision,
        /// the oldest revision still readable
        oldest: Revision,
    },
    /// The revision has not been committed yet.
    #[error("revision {requested} is newer than the newest committed revision {head}")]
    RevisionInFuture {
        /// the revision asked for
        requested: Revision,
        /// the newest committed revision
        head: Revision,
    },
    /// The changes after a revision are no longer kept (collected with the history older than
    /// the GC window) or were never kept (before the change log started).
    #[error(
        "the changes after revision {requested} are no longer available: the change log \
         starts after revision {oldest} (older changes were garbage-collected, or predate the \
         change log)"
    )]
    ChangesUnavailable {
        /// the revision after which changes were asked for
        requested: Revision,
        /// the oldest revision after which changes can be read
        oldest: Revision,
    },
    /// One revision's changes are larger than a reader accepts.
    #[error(
        "maximum changes byte size of {limit} exceeded by revision {revision}; adjust \
         --datastore-watch-change-buffer-maximum-size accordingly"
    )]
    ChangesTooLarge {
        /// the revision
        revision: Revision,
        /// the reader's limit, in bytes
        limit: usize,
    },
    /// The data dir is locked by another process.
    #[error("the data directory `{path}` is locked by another process")]
    Locked {
        /// the data directory
        path: String,
    },
    /// Stored bytes could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The datastore cannot do this (e.g. a checkpoint of the in-memory store).
    #[error("unsupported by this datastore: {0}")]
    Unsupported(String),
    /// A checkpoint's target directory already exists.
    #[error("the backup target `{0}` already exists")]
    TargetExists(String),
    /// The store cannot write now; reads go on. Writes are refused (or tried and failed)
    /// until the cause goes away: free space, a working disk, or a restart that repairs.
    #[error("the datastore cannot write: {detail}")]
    Unwritable {
        /// why
        cause: WriteFailure,
        /// what the engine said (for the log: it may name files)
        detail: String,
    },
    /// The database server (PostgreSQL) cannot be reached: retry later.
    #[error("the datastore is unavailable: {0}")]
    Unavailable(String),
    /// The underlying engine failed (I/O, RocksDB).
    #[error("storage engine error: {0}")]
    Engine(String),
}

/// Why a store cannot write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// the disk (or file system) is full
    DiskFull,
    /// any other failure to write (an I/O error)
    Io,
    /// the versions of a failed import or delete could not be rolled back: writes wait for a
    /// restart, whose open repairs the store
    NeedsRepair,
}

impl WriteFailure {
    /// The failure an engine error reports (the text is all RocksDB exposes of ENOSPC).
    pub(crate) fn of(detail: &str) -> WriteFailure {
        let d = detail.to_ascii_lowercase();
        if d.contains("no space left") || d.contains("nospace") || d.contains("disk full") {
            WriteFailure::DiskFull
        } else {
            WriteFailure::Io
        }
    }

    /// The name used in errors' metadata and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteFailure::DiskFull => "disk_full",
            WriteFailure::Io => "io_error",
            WriteFailure::NeedsRepair => "needs_repair",
        }
    }
}
