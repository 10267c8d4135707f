//! Request validation against the schema, as SpiceDB does it before dispatching.
//!
//! The resource type and its relation or permission must exist, and so must the subject's type
//! and subject relation; a check's subject may not be a wildcard.

use crate::engine::error::{EngineError, EngineResult};
use crate::model::SubjectRef;
use crate::schema::{CompiledSchema, Definition, Member};

/// The definition called `type_name`.
pub(crate) fn definition<'a>(
    schema: &'a CompiledSchema,
    type_name: &str,
) -> EngineResult<&'a Definition> {
    schema
        .definition(type_name)
        .ok_or_else(|| EngineError::UnknownDefinition(type_name.to_string()))
}

/// `type_name#relation` must exist (a relation or a permission).
pub(crate) fn resource_member<'a>(
    schema: &'a CompiledSchema,
    type_name: &str,
    relation: &str,
) -> EngineResult<Member<'a>> {
    definition(schema, type_name)?
        .member(relation)
        .ok_or_else(|| EngineError::UnknownRelationOrPermission {
            definition: type_name.to_string(),
            relation: relation.to_string(),
        })
}

/// A subject type (and subject relation, if any) must exist.
pub(crate) fn subject_type(
    schema: &CompiledSchema,
    type_name: &str,
    relation: Option<&str>,
) -> EngineResult<()> {
    let def = definition(schema, type_name)?;
    if let Some(r) = relation
        && def.member(r).is_none()
    {
        return Err(EngineError::UnknownRelationOrPermission {
            definition: type_name.to_string(),
            relation: r.to_string(),
        });
    }
    Ok(())
}

/// The subject of a check or a lookup of resources: not a wildcard, and of a known type.
pub(crate) fn check_subject(schema: &CompiledSchema, subject: &SubjectRef) -> EngineResult<()> {
    if subject.is_wildcard() {
        return Err(EngineError::WildcardSubjectNotAllowed);
    }
    subject_type(
        schema,
        &subject.object.object_type,
        subject.relation.as_deref(),
    )
}
