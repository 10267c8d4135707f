//! The one place where errors become `tonic::Status`.
//!
//! Every error of every layer maps to the gRPC code and `ErrorInfo` reason SpiceDB uses, with no
//! catch-all arm. Internal failures are logged here and sent as a generic message, so engine
//! internals never reach a client.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use super::error::{ApiError, Metadata, Reason, meta};
use crate::consistency::ConsistencyError;
use crate::engine::EngineError;
use crate::schema::SchemaError;
use crate::store::{StoreError, WriteFailure};

/// The `ErrorInfo.domain` SpiceDB uses.
const DOMAIN: &str = "authzed.com";

fn with_reason(code: Code, message: String, reason: &str, metadata: Metadata) -> tonic::Status {
    let md: HashMap<String, String> = metadata.into_iter().collect();
    tonic::Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, md),
    )
}

fn plain(code: Code, message: String) -> tonic::Status {
    tonic::Status::new(code, message)
}

fn internal(what: &str, err: &dyn std::fmt::Display) -> tonic::Status {
    tracing::error!(error = %err, "{what}");
    plain(
        Code::Internal,
        format!("internal error: {what}; see the server log"),
    )
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> tonic::Status {
        match err {
            ApiError::Invalid {
                message,
                reason,
                metadata,
            } => match reason {
                Some(r) => with_reason(Code::InvalidArgument, message, r.as_str(), metadata),
                None => plain(Code::InvalidArgument, message),
            },
            ApiError::Precondition {
                message,
                reason,
                metadata,
            } => with_reason(Code::FailedPrecondition, message, reason.as_str(), metadata),
            ApiError::NotFound(m) => plain(Code::NotFound, m),
            ApiError::Unimplemented(m) => plain(Code::Unimplemented, m),
            e @ (ApiError::ReaderStalled(_) | ApiError::SenderStalled(_)) => {
                plain(Code::DeadlineExceeded, e.to_string())
            }
            e @ ApiError::WatchFellBehind => plain(Code::ResourceExhausted, e.to_string()),
            e @ ApiError::ShuttingDown => plain(Code::Unavailable, e.to_string()),
            ApiError::Stream(status) => status,
            ApiError::Aborted(m) => plain(Code::Aborted, m),
            e @ ApiError::ServiceReadOnly => with_reason(
                Code::Unavailable,
                e.to_string(),
                "ERROR_REASON_SERVICE_READ_ONLY",
                Metadata::new(),
            ),
            ApiError::Internal(m) => internal("request failed", &m),
            ApiError::Schema(e) => schema_status(e),
            ApiError::Store(e) => store_status(&e),
            ApiError::Engine(e) => engine_status(e),
            ApiError::Consistency(e) => consistency_status(e),
        }
    }
}

fn schema_status(err: SchemaError) -> tonic::Status {
    let message = err.to_string();
    let (line, column) = (err.line(), err.column());
    let position = || {
        meta([
            ("start_line_number", &line.saturating_sub(1).to_string()),
            (
                "start_column_position",
                &column.saturating_sub(1).to_string(),
            ),
            ("end_line_number", &line.saturating_sub(1).to_string()),
            ("end_column_position", &column.saturating_sub(1).to_string()),
        ])
    };
    match err {
        SchemaError::Parse { .. } => with_reason(
            Code::InvalidArgument,
            message,
            "ERROR_REASON_SCHEMA_PARSE_ERROR",
            position(),
        ),
        SchemaError::Type { .. } => with_reason(
            Code::FailedPrecondition,
            message,
            "ERROR_REASON_SCHEMA_TYPE_ERROR",
            position(),
        ),
        SchemaError::UnknownDefinition(name) => with_reason(
            Code::FailedPrecondition,
            message,
            Reason::UnknownDefinition.as_str(),
            meta([("definition_name", &name)]),
        ),
        SchemaError::UnknownRelation {
            definition,
            relation,
        } => with_reason(
            Code::FailedPrecondition,
            message,
            Reason::UnknownRelationOrPermission.as_str(),
            meta([
                ("definition_name", &definition),
                ("relation_or_permission_name", &relation),
            ]),
        ),
        // SpiceDB: INVALID_ARGUMENT, reason UNKNOWN_RELATION_OR_PERMISSION
        SchemaError::NotAPermission {
            definition,
            relation,
        } => with_reason(
            Code::InvalidArgument,
            message,
            Reason::UnknownRelationOrPermission.as_str(),
            meta([
                ("definition_name", &definition),
                ("relation_or_permission_name", &relation),
            ]),
        ),
    }
}

fn store_status(err: &StoreError) -> tonic::Status {
    let message = err.to_string();
    match err {
        StoreError::AlreadyExists(key) => {
            let subject_relation = key.subject.relation.clone().unwrap_or_default();
            with_reason(
                Code::AlreadyExists,
                message,
                "ERROR_REASON_ATTEMPT_TO_RECREATE_RELATIONSHIP",
                meta([
                    ("relationship", &key.to_string()),
                    ("resource_type", &key.resource.object_type),
                    ("resource_object_id", &key.resource.object_id),
                    ("resource_relation", &key.relation),
                    ("subject_type", &key.subject.object.object_type),
                    ("subject_object_id", &key.subject.object.object_id),
                    ("subject_relation", &subject_relation),
                ]),
            )
        }
        StoreError::PreconditionFailed(p) => {
            let f = &p.filter;
            let op = match p.op {
                crate::store::PreconditionOp::MustMatch => "MUST_MATCH",
                crate::store::PreconditionOp::MustNotMatch => "MUST_NOT_MATCH",
            };
            let subject = f.subject.as_ref();
            let subject_relation = subject.map(|s| match &s.relation {
                crate::model::SubjectRelationFilter::Any => String::new(),
                crate::model::SubjectRelationFilter::Ellipsis => "...".to_string(),
                crate::model::SubjectRelationFilter::Relation(r) => r.clone(),
            });
            with_reason(
                Code::FailedPrecondition,
                format!(
                    "unable to satisfy write precondition `{}`",
                    describe_filter(f)
                ),
                "ERROR_REASON_WRITE_OR_DELETE_PRECONDITION_FAILURE",
                meta([
                    ("precondition_operation", op),
                    (
                        "precondition_resource_type",
                        f.resource_type.as_deref().unwrap_or(""),
                    ),
                    (
                        "precondition_resource_id",
                        f.resource_id.as_deref().unwrap_or(""),
                    ),
                    ("precondition_relation", f.relation.as_deref().unwrap_or("")),
                    (
                        "precondition_subject_type",
                        subject.map(|s| s.subject_type.as_str()).unwrap_or(""),
                    ),
                    (
                        "precondition_subject_id",
                        subject.and_then(|s| s.subject_id.as_deref()).unwrap_or(""),
                    ),
                    (
                        "precondition_subject_relation",
                        subject_relation.as_deref().unwrap_or(""),
                    ),
                ]),
            )
        }
        &StoreError::TooManyToDelete { limit } => with_reason(
            Code::InvalidArgument,
            message,
            "ERROR_REASON_TOO_MANY_RELATIONSHIPS_FOR_TRANSACTIONAL_DELETE",
            meta([("limit", &limit.to_string())]),
        ),
        &StoreError::ScanBudgetExceeded(budget) => with_reason(
            Code::InvalidArgument,
            message,
            "ERROR_REASON_INVALID_FILTER",
            meta([("maximum_scanned_relationships", &budget.to_string())]),
        ),
        StoreError::SchemaOrphans { .. } => with_reason(
            Code::InvalidArgument,
            message,
            "ERROR_REASON_SCHEMA_TYPE_ERROR",
            Metadata::new(),
        ),
        StoreError::RevisionTooOld { .. } | StoreError::RevisionInFuture { .. } => {
            plain(Code::OutOfRange, format!("invalid revision: {message}"))
        }
        StoreError::ChangesUnavailable { .. } => {
            plain(Code::OutOfRange, format!("invalid zedtoken: {message}"))
        }
        StoreError::ChangesTooLarge { .. } => plain(Code::ResourceExhausted, message),
        StoreError::Locked { .. } => plain(Code::Unavailable, message),
        StoreError::Corrupt(_) => {
            tracing::error!(error = %message, "corrupt data");
            plain(
                Code::DataLoss,
                "stored data could not be decoded; see the server log".into(),
            )
        }
        StoreError::Unsupported(_) => with_reason(
            Code::FailedPrecondition,
            message,
            "PEMBA_ERROR_REASON_UNSUPPORTED_BY_DATASTORE",
            Metadata::new(),
        ),
        StoreError::TargetExists(_) => plain(Code::AlreadyExists, message),
        StoreError::Unwritable { cause, detail } => {
            // Transient and server-side, like SpiceDB's datastore errors: retry later or on
            // another server (health is NOT_SERVING meanwhile). The engine's words, which
            // name files, stay in the log.
            tracing::warn!(cause = cause.as_str(), error = %detail, "the datastore cannot write");
            let what = match cause {
                WriteFailure::DiskFull => "the disk is full",
                WriteFailure::Io => "the disk failed to write",
                WriteFailure::NeedsRepair => {
                    "a failed write could not be rolled back and the server needs a restart"
                }
            };
            with_reason(
                Code::Unavailable,
                format!("the datastore cannot write: {what}; reads still work"),
                "PEMBA_ERROR_REASON_DATASTORE_UNWRITABLE",
                meta([("cause", cause.as_str())]),
            )
        }
        StoreError::Unavailable(detail) => {
            tracing::warn!(error = %detail, "the datastore is unavailable");
            with_reason(
                Code::Unavailable,
                "the datastore is unavailable; retry later".to_string(),
                "PEMBA_ERROR_REASON_DATASTORE_UNAVAILABLE",
                Metadata::new(),
            )
        }
        StoreError::Engine(_) => internal("datastore failure", &message),
    }
}

/// A filter in the relationship text form, for messages.
pub fn describe_filter(f: &crate::model::RelationshipFilter) -> String {
    let mut s = f.resource_type.clone().unwrap_or_default();
    if let Some(id) = &f.resource_id {
        s.push(':');
        s.push_str(id);
    } else if let Some(p) = &f.resource_id_prefix {
        s.push(':');
        s.push_str(p);
        s.push('*');
    }
    if let Some(r) = &f.relation {
        s.push('#');
        s.push_str(r);
    }
    if let Some(sub) = &f.subject {
        s.push('@');
        s.push_str(&sub.subject_type);
        if let Some(id) = &sub.subject_id {
            s.push(':');
            s.push_str(id);
        }
        match &sub.relation {
            crate::model::SubjectRelationFilter::Any => {}
            crate::model::SubjectRelationFilter::Ellipsis => s.push_str("#..."),
            crate::model::SubjectRelationFilter::Relation(r) => {
                s.push('#');
                s.push_str(r);
            }
        }
    }
    s
}

fn engine_status(err: EngineError) -> tonic::Status {
    let message = err.to_string();
    match err {
        EngineError::UnknownDefinition(name) => with_reason(
            Code::FailedPrecondition,
            message,
            Reason::UnknownDefinition.as_str(),
            meta([("definition_name", &name)]),
        ),
        EngineError::UnknownRelationOrPermission {
            definition,
            relation,
        } => with_reason(
            Code::FailedPrecondition,
            message,
            Reason::UnknownRelationOrPermission.as_str(),
            meta([
                ("definition_name", &definition),
                ("relation_or_permission_name", &relation),
            ]),
        ),
        EngineError::WildcardSubjectNotAllowed => with_reason(
            Code::InvalidArgument,
            message,
            Reason::WildcardNotAllowed.as_str(),
            Metadata::new(),
        ),
        EngineError::MaxDepthExceeded { .. } => with_reason(
            Code::FailedPrecondition,
            message,
            "ERROR_REASON_MAXIMUM_DEPTH_EXCEEDED",
            Metadata::new(),
        ),
        EngineError::Cancelled => plain(Code::Cancelled, message),
        EngineError::DeadlineExceeded => plain(Code::DeadlineExceeded, message),
        EngineError::CaveatEvaluation(_) => with_reason(
            Code::InvalidArgument,
            message,
            "ERROR_REASON_CAVEAT_EVALUATION_ERROR",
            Metadata::new(),
        ),
        EngineError::CaveatParameterType(_) => with_reason(
            Code::InvalidArgument,
            message,
            "ERROR_REASON_CAVEAT_PARAMETER_TYPE_ERROR",
            Metadata::new(),
        ),
        EngineError::Store(e) => store_status(&e),
        // already logged where it was found
        EngineError::Internal(_) => plain(
            Code::Internal,
            "internal error: engine invariant broken; see the server log".into(),
        ),
    }
}

fn consistency_status(err: ConsistencyError) -> tonic::Status {
    let message = err.to_string();
    match err {
        ConsistencyError::MalformedToken(_) | ConsistencyError::ForeignToken => {
            plain(Code::InvalidArgument, message)
        }
        ConsistencyError::TokenInFuture { .. } => plain(Code::OutOfRange, message),
        // SpiceDB answers INTERNAL here, an artefact of its middleware; the client's token,
        // not the server, is what is wrong, and nothing is logged as broken.
        ConsistencyError::MismatchedToken => plain(Code::FailedPrecondition, message),
        ConsistencyError::InvalidCursor(_) => with_reason(
            Code::FailedPrecondition,
            message,
            Reason::InvalidCursor.as_str(),
            Metadata::new(),
        ),
        ConsistencyError::Store(e) => store_status(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_codes_and_an_internal_one_is_internal() {
        let internal = tonic::Status::from(ApiError::Engine(EngineError::Internal(
            "secret detail".into(),
        )));
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("secret detail"));
        let store = tonic::Status::from(ApiError::Engine(EngineError::from(
            StoreError::TooManyToDelete { limit: 3 },
        )));
        assert_eq!(store.code(), Code::InvalidArgument);
        let depth =
            tonic::Status::from(ApiError::Engine(EngineError::MaxDepthExceeded { depth: 5 }));
        assert_eq!(depth.code(), Code::FailedPrecondition);
    }
}
