//! The engine's errors: what a check, expand or lookup can refuse or fail with.
//!
//! The API layer maps each variant to a gRPC status (FAILED_PRECONDITION with the `UNKNOWN_*` /
//! `MAXIMUM_DEPTH_EXCEEDED` reasons, INVALID_ARGUMENT for wildcard subjects and caveat errors,
//! CANCELLED / DEADLINE_EXCEEDED, INTERNAL for a broken invariant). `Clone`, so that one
//! failure can be reported for every item of a CheckBulk chunk.

use std::sync::Arc;

use thiserror::Error;

use crate::store::StoreError;

/// Result alias for the engine.
pub type EngineResult<T> = Result<T, EngineError>;

/// Everything the engine can refuse or fail with.
#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// The request names an object type the schema does not define
    /// (FAILED_PRECONDITION, `ERROR_REASON_UNKNOWN_DEFINITION`).
    #[error("object definition `{0}` not found")]
    UnknownDefinition(String),
    /// The request names a relation or permission its type does not have
    /// (FAILED_PRECONDITION, `ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION`).
    #[error("relation/permission `{relation}` not found under definition `{definition}`")]
    UnknownRelationOrPermission {
        /// the object type
        definition: String,
        /// the missing relation or permission
        relation: String,
    },
    /// A check (or a lookup of resources) was asked for the public wildcard `type:*` as the
    /// subject (INVALID_ARGUMENT, `ERROR_REASON_WILDCARD_NOT_ALLOWED`).
    #[error("cannot perform check on wildcard subject")]
    WildcardSubjectNotAllowed,
    /// Answering needs more nested dispatches than the depth budget allows, or depends on a
    /// cycle in the data (FAILED_PRECONDITION, `ERROR_REASON_MAXIMUM_DEPTH_EXCEEDED`).
    #[error(
        "max depth exceeded: this usually indicates a recursive or too deep data dependency (depth limit {depth})"
    )]
    MaxDepthExceeded {
        /// the configured depth budget
        depth: u32,
    },
    /// The caller cancelled the request (CANCELLED).
    #[error("request cancelled")]
    Cancelled,
    /// The request's deadline passed (DEADLINE_EXCEEDED).
    #[error("request deadline exceeded")]
    DeadlineExceeded,
    /// A caveat could not be evaluated (INVALID_ARGUMENT, `ERROR_REASON_CAVEAT_EVALUATION_ERROR`).
    #[error("caveat evaluation error: {0}")]
    CaveatEvaluation(String),
    /// A context value does not convert to its caveat parameter's type (INVALID_ARGUMENT,
    /// `ERROR_REASON_CAVEAT_PARAMETER_TYPE_ERROR`).
    #[error("caveat parameter type error: {0}")]
    CaveatParameterType(String),
    /// The datastore failed (behind an `Arc`: the error is large, results travel up every
    /// level of the traversal, and a bulk request reports one failure for several items).
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// A state the engine's own invariants rule out (a bug, never an answer): logged where it
    /// is found (INTERNAL).
    #[error("internal engine error: {0}")]
    Internal(String),
}

impl EngineError {
    /// An [`EngineError::Internal`] for the broken invariant `what`, logged at error level.
    pub(crate) fn internal(what: impl Into<String>) -> EngineError {
        let what = what.into();
        tracing::error!(invariant = %what, "engine invariant broken");
        EngineError::Internal(what)
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(Arc::new(e))
    }
}
