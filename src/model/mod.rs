//! The vocabulary: object references, subjects, relationships, filters and revisions.
//!
//! Every later layer (schema, store, engine, consistency, api) speaks it.

pub mod ids;
pub mod metadata;
pub mod revision;
pub mod tuple;

pub use ids::{IdError, validate_object_id, validate_relation, validate_type_name};
pub use metadata::TransactionMetadata;
pub use revision::Revision;
pub use tuple::{
    Caveat, CaveatMatch, Context, ObjectRef, OrphanCheck, ParseRelationshipError, Relationship,
    RelationshipFilter, RelationshipKey, SubjectFilter, SubjectRef, SubjectRelationFilter,
    Timestamp, parse_relationship, parse_rfc3339,
};
