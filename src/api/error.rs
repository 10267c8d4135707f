//! Errors of the API layer: request validation failures, and lower layers' errors carried up.
//!
//! Every lower layer's error is carried up unchanged so that `status.rs` can map each one to
//! exactly one gRPC status.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::consistency::ConsistencyError;
use crate::engine::EngineError;
use crate::schema::SchemaError;
use crate::store::StoreError;

/// The machine-readable reasons of `authzed.api.v1.ErrorReason` that Pemba sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// a definition (type) the schema does not have
    UnknownDefinition,
    /// a relation or permission the definition does not have
    UnknownRelationOrPermission,
    /// a caveat the schema does not have
    UnknownCaveat,
    /// more updates than a write allows
    TooManyUpdatesInRequest,
    /// more preconditions than a write allows
    TooManyPreconditionsInRequest,
    /// the subject type, relation, wildcard or caveat is not allowed on the relation
    InvalidSubjectType,
    /// a relationship was written to a permission
    CannotUpdatePermission,
    /// two updates in one write touch the same relationship
    UpdatesOnSameRelationship,
    /// relationship context above the size limit
    MaxRelationshipContextSize,
    /// a cursor that cannot be used
    InvalidCursor,
    /// a limit above the server's maximum
    ExceedsMaximumAllowableLimit,
    /// a filter that constrains nothing
    InvalidFilter,
    /// a precondition without a filter
    EmptyPrecondition,
    /// a wildcard where a concrete subject is required
    WildcardNotAllowed,
    /// transaction metadata above the size limit
    TransactionMetadataTooLarge,
    /// more checks than CheckBulk allows
    TooManyChecksInRequest,
    /// request context over the size limit (SpiceDB sends no specific reason)
    Unspecified,
    /// a schema change refused by the type system (e.g. a caveat parameter removed)
    SchemaTypeError,
    /// an expiration on a relation that does not allow one (SpiceDB reports the subject type)
    CaveatParameterTypeError,
    /// a relationship counter registered twice
    CounterAlreadyRegistered,
    /// a relationship counter never registered
    CounterNotRegistered,
}

impl Reason {
    /// The `ErrorInfo.reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownDefinition => "ERROR_REASON_UNKNOWN_DEFINITION",
            Reason::UnknownRelationOrPermission => "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION",
            Reason::UnknownCaveat => "ERROR_REASON_UNKNOWN_CAVEAT",
            Reason::TooManyUpdatesInRequest => "ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST",
            Reason::TooManyPreconditionsInRequest => {
                "ERROR_REASON_TOO_MANY_PRECONDITIONS_IN_REQUEST"
            }
            Reason::InvalidSubjectType => "ERROR_REASON_INVALID_SUBJECT_TYPE",
            Reason::CannotUpdatePermission => "ERROR_REASON_CANNOT_UPDATE_PERMISSION",
            Reason::UpdatesOnSameRelationship => "ERROR_REASON_UPDATES_ON_SAME_RELATIONSHIP",
            Reason::MaxRelationshipContextSize => "ERROR_REASON_MAX_RELATIONSHIP_CONTEXT_SIZE",
            Reason::InvalidCursor => "ERROR_REASON_INVALID_CURSOR",
            Reason::ExceedsMaximumAllowableLimit => "ERROR_REASON_EXCEEDS_MAXIMUM_ALLOWABLE_LIMIT",
            Reason::InvalidFilter => "ERROR_REASON_INVALID_FILTER",
            Reason::EmptyPrecondition => "ERROR_REASON_EMPTY_PRECONDITION",
            Reason::WildcardNotAllowed => "ERROR_REASON_WILDCARD_NOT_ALLOWED",
            Reason::TransactionMetadataTooLarge => "ERROR_REASON_TRANSACTION_METADATA_TOO_LARGE",
            Reason::TooManyChecksInRequest => "ERROR_REASON_TOO_MANY_CHECKS_IN_REQUEST",
            Reason::Unspecified => "ERROR_REASON_UNSPECIFIED",
            Reason::SchemaTypeError => "ERROR_REASON_SCHEMA_TYPE_ERROR",
            Reason::CaveatParameterTypeError => "ERROR_REASON_CAVEAT_PARAMETER_TYPE_ERROR",
            Reason::CounterAlreadyRegistered => "ERROR_REASON_COUNTER_ALREADY_REGISTERED",
            Reason::CounterNotRegistered => "ERROR_REASON_COUNTER_NOT_REGISTERED",
        }
    }
}

/// Metadata attached to an `ErrorInfo`.
pub type Metadata = BTreeMap<String, String>;

/// Everything a request can fail with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The request is malformed (INVALID_ARGUMENT).
    #[error("{message}")]
    Invalid {
        /// what is wrong, for a person
        message: String,
        /// the machine-readable reason, if SpiceDB sends one
        reason: Option<Reason>,
        /// the reason's metadata
        metadata: Metadata,
    },
    /// The request is well-formed but names something the schema lacks (FAILED_PRECONDITION).
    #[error("{message}")]
    Precondition {
        /// what is missing, for a person
        message: String,
        /// the machine-readable reason
        reason: Reason,
        /// the reason's metadata
        metadata: Metadata,
    },
    /// Nothing to return (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The server does not implement this (UNIMPLEMENTED).
    #[error("{0}")]
    Unimplemented(String),
    /// The client left a response stream unread for longer than the stall timeout
    /// (DEADLINE_EXCEEDED); the stream was given up on.
    #[error(
        "the client read nothing from this stream for {0:?}; the stream was cancelled \
         (--streaming-api-response-delay-timeout)"
    )]
    ReaderStalled(std::time::Duration),
    /// A Watch stream's client read too slowly: its buffer stayed full past the write
    /// timeout, and it was disconnected (RESOURCE_EXHAUSTED, SpiceDB's message).
    #[error(
        "watch disconnected: watch fell too far behind and was disconnected; consider \
         increasing watch buffer size via the flag --datastore-watch-buffer-length"
    )]
    WatchFellBehind,
    /// The server is shutting down: a long-lived stream ends (UNAVAILABLE; retry elsewhere or
    /// later).
    #[error("the server is shutting down; reconnect and resume")]
    ShuttingDown,
    /// The client sent nothing on a request stream for longer than the stall timeout
    /// (DEADLINE_EXCEEDED).
    #[error(
        "the client sent nothing on this stream for {0:?}; the call was cancelled \
         (--streaming-api-response-delay-timeout)"
    )]
    SenderStalled(std::time::Duration),
    /// The client's request stream failed (its own status is passed on).
    #[error("{0}")]
    Stream(tonic::Status),
    /// A conflicting change happened meanwhile; the client may retry (ABORTED).
    #[error("{0}")]
    Aborted(String),
    /// A write sent to a read-only listener (UNAVAILABLE, `ERROR_REASON_SERVICE_READ_ONLY`).
    #[error("service read-only")]
    ServiceReadOnly,
    /// A background task failed (INTERNAL; logged, not sent in detail).
    #[error("internal error: {0}")]
    Internal(String),
    /// The schema text was refused.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The datastore refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The query engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The consistency requirement or cursor could not be met.
    #[error(transparent)]
    Consistency(#[from] ConsistencyError),
}

impl ApiError {
    /// A plain validation error, in protovalidate's wording: `validation error: field: why`.
    pub fn field(path: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError::Invalid {
            message: format!("validation error: {path}: {why}"),
            reason: None,
            metadata: Metadata::new(),
        }
    }

    /// An INVALID_ARGUMENT with a reason.
    pub fn invalid(reason: Reason, message: impl Into<String>, metadata: Metadata) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            reason: Some(reason),
            metadata,
        }
    }

    /// A FAILED_PRECONDITION with a reason.
    pub fn precondition(
        reason: Reason,
        message: impl Into<String>,
        metadata: Metadata,
    ) -> ApiError {
        ApiError::Precondition {
            message: message.into(),
            reason,
            metadata,
        }
    }
}

/// Result alias for the API layer.
pub type ApiResult<T> = Result<T, ApiError>;

/// Builds metadata from pairs.
pub fn meta<const N: usize>(pairs: [(&str, &str); N]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}
