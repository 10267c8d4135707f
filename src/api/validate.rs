//! Request checks against the schema: may this relationship be written?
//!
//! A relationship may only be written if its resource type and relation exist, the relation is
//! not a permission, and the schema allows its subject type, subject relation, wildcard, caveat
//! and expiration.

use std::collections::HashSet;

use super::error::{ApiError, ApiResult, Metadata, Reason, meta};
use crate::model::{Relationship, RelationshipFilter, RelationshipKey, SubjectRelationFilter};
use crate::schema::{AllowedKind, CompiledSchema, Definition};

fn definition<'a>(schema: &'a CompiledSchema, name: &str) -> ApiResult<&'a Definition> {
    schema.definition(name).ok_or_else(|| {
        ApiError::precondition(
            Reason::UnknownDefinition,
            format!("object definition `{name}` not found"),
            meta([("definition_name", name)]),
        )
    })
}

fn unknown_relation(def: &str, rel: &str) -> ApiError {
    ApiError::precondition(
        Reason::UnknownRelationOrPermission,
        format!("relation/permission `{rel}` not found under definition `{def}`"),
        meta([
            ("definition_name", def),
            ("relation_or_permission_name", rel),
        ]),
    )
}

/// Checks that `def#rel` names a relation or permission.
pub fn relation_or_permission_exists(
    schema: &CompiledSchema,
    def: &str,
    rel: &str,
) -> ApiResult<()> {
    let d = definition(schema, def)?;
    if d.relation(rel).is_some() || d.permission(rel).is_some() {
        Ok(())
    } else {
        Err(unknown_relation(def, rel))
    }
}

/// Checks a filter's types and relations against the schema.
pub fn filter(schema: &CompiledSchema, f: &RelationshipFilter) -> ApiResult<()> {
    if let Some(t) = &f.resource_type {
        definition(schema, t)?;
        if let Some(r) = &f.relation {
            relation_or_permission_exists(schema, t, r)?;
        }
    }
    if let Some(s) = &f.subject {
        definition(schema, &s.subject_type)?;
        if let SubjectRelationFilter::Relation(r) = &s.relation {
            relation_or_permission_exists(schema, &s.subject_type, r)?;
        }
    }
    Ok(())
}

/// Checks one relationship to be written (CREATE or TOUCH) against the schema.
pub fn relationship_for_write(schema: &CompiledSchema, rel: &Relationship) -> ApiResult<()> {
    let res_type = &rel.resource.object_type;
    let def = definition(schema, res_type)?;
    let Some(relation) = def.relation(&rel.relation) else {
        if def.permission(&rel.relation).is_some() {
            return Err(ApiError::invalid(
                Reason::CannotUpdatePermission,
                format!(
                    "cannot write a relationship to permission `{}` under definition `{res_type}`",
                    rel.relation
                ),
                meta([
                    ("definition_name", res_type),
                    ("relationship", &rel.to_string()),
                ]),
            ));
        }
        return Err(unknown_relation(res_type, &rel.relation));
    };
    let subj_type = &rel.subject.object.object_type;
    let subj_def = definition(schema, subj_type)?;
    if let Some(sr) = &rel.subject.relation
        && subj_def.relation(sr).is_none()
        && subj_def.permission(sr).is_none()
    {
        return Err(unknown_relation(subj_type, sr));
    }
    if let Some(c) = &rel.caveat {
        let Some(def) = schema.caveat(&c.name) else {
            return Err(ApiError::precondition(
                Reason::UnknownCaveat,
                format!("caveat `{}` not found", c.name),
                meta([("caveat_name", &c.name)]),
            ));
        };
        if let Err(e) = crate::engine::check_context_types(def, &c.context) {
            return Err(ApiError::invalid(
                Reason::CaveatParameterTypeError,
                e,
                meta([("caveat_name", &c.name)]),
            ));
        }
    }
    let wildcard = rel.subject.is_wildcard();
    let caveat = rel.caveat.as_ref().map(|c| c.name.as_str());
    let expiring = rel.expires_at.is_some();
    let allowed = relation.allowed.iter().any(|a| {
        a.type_name == *subj_type
            && match (&a.kind, &rel.subject.relation) {
                (AllowedKind::Direct, None) => !wildcard,
                (AllowedKind::Wildcard, None) => wildcard,
                (AllowedKind::SubjectRelation(r), Some(sr)) => r == sr && !wildcard,
                _ => false,
            }
            && a.caveat.as_deref() == caveat
            && a.expiration == expiring
    });
    if allowed {
        return Ok(());
    }
    let mut subject_type = match (&rel.subject.relation, wildcard) {
        (_, true) => format!("{subj_type}:*"),
        (Some(r), false) => format!("{subj_type}#{r}"),
        (None, false) => subj_type.clone(),
    };
    match (caveat, expiring) {
        (Some(c), true) => subject_type.push_str(&format!(" with {c} and expiration")),
        (Some(c), false) => subject_type.push_str(&format!(" with {c}")),
        (None, true) => subject_type.push_str(" with expiration"),
        (None, false) => {}
    }
    Err(ApiError::invalid(
        Reason::InvalidSubjectType,
        format!(
            "subjects of type `{subject_type}` are not allowed on relation `{res_type}#{}`",
            rel.relation
        ),
        meta([
            ("definition_name", res_type),
            ("relation_name", &rel.relation),
            ("subject_type", &subject_type),
        ]),
    ))
}

/// Refuses two updates of the same relationship in one request.
pub fn unique_updates<'a>(keys: impl Iterator<Item = RelationshipKey> + 'a) -> ApiResult<()> {
    let mut seen = HashSet::new();
    for k in keys {
        let text = k.to_string();
        if !seen.insert(k) {
            return Err(ApiError::invalid(
                Reason::UpdatesOnSameRelationship,
                format!(
                    "found more than one update with relationship `{text}` in this request; a relationship can only be specified in an update once per overall WriteRelationships request"
                ),
                meta([("relationship", &text)]),
            ));
        }
    }
    Ok(())
}

/// Metadata-free INVALID_ARGUMENT for a limit above the server's maximum.
pub fn limit(value: u32, max: u32, what: &str) -> ApiResult<()> {
    if value > max {
        return Err(ApiError::invalid(
            Reason::ExceedsMaximumAllowableLimit,
            format!("provided limit {value} is greater than maximum allowed of {max} for {what}"),
            Metadata::new(),
        ));
    }
    Ok(())
}
