//! Errors of the consistency layer.

use thiserror::Error;

use crate::model::Revision;
use crate::store::StoreError;

/// A token, cursor or revision that cannot be used.
#[derive(Debug, Error)]
pub enum ConsistencyError {
    /// The token is not one Pemba issued.
    #[error("error decoding zedtoken: {0}")]
    MalformedToken(String),
    /// The token names a revision this store has not reached.
    #[error("invalid zedtoken: revision {revision} is newer than the head revision {head}")]
    TokenInFuture {
        /// the token's revision
        revision: Revision,
        /// the store's head
        head: Revision,
    },
    /// An exact snapshot was asked for with a token from another store.
    #[error(
        "invalid zedtoken: it was issued by another datastore, so its exact snapshot cannot be read here"
    )]
    ForeignToken,
    /// An `at_least_as_fresh` token from another datastore, with the server set to refuse them.
    #[error(
        "ZedToken specified references a different datastore instance and the server is configured to raise an error in this scenario (--mismatch-zed-token-behavior=error)"
    )]
    MismatchedToken,
    /// The cursor is not one Pemba issued, or belongs to another request or store.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// The store refused the revision (too old, in the future) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
