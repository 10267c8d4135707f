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
    /// The underlying engine failed (I/O, RocksDB).
    #[error("storage engine error: {0}")]
    Engine(String),
}
