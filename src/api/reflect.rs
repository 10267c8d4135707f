//! The schema as `Reflection*` messages: ReflectSchema (filtered by name prefixes), DiffSchema's
//! changes, and the relation references of ComputablePermissions and DependentRelations.

use super::error::{ApiError, ApiResult};
use super::proto::authzed::api::v1 as pb;
use crate::schema::diff::SchemaChange;
use crate::schema::reachability::RelationRef;
use crate::schema::{
    AllowedKind, AllowedType, CaveatDef, CaveatParam, CompiledSchema, Definition, Permission,
    Relation,
};

fn passes(filter: &str, name: &str) -> bool {
    filter.is_empty() || name.starts_with(filter)
}

/// Definitions and caveats that pass any of `filters` (all, when there is none).
pub fn reflect(
    schema: &CompiledSchema,
    filters: &[pb::ReflectionSchemaFilter],
) -> (Vec<pb::ReflectionDefinition>, Vec<pb::ReflectionCaveat>) {
    let any_filter = |pred: &dyn Fn(&pb::ReflectionSchemaFilter) -> bool| {
        filters.is_empty() || filters.iter().any(pred)
    };
    let mut definitions = Vec::new();
    for def in schema.definitions.values() {
        let def_ok = any_filter(&|f| {
            f.optional_caveat_name_filter.is_empty()
                && passes(&f.optional_definition_name_filter, &def.name)
        });
        if !def_ok {
            continue;
        }
        let relations = def
            .relations
            .iter()
            .filter(|r| {
                any_filter(&|f| {
                    passes(&f.optional_definition_name_filter, &def.name)
                        && passes(&f.optional_relation_name_filter, &r.name)
                        && f.optional_permission_name_filter.is_empty()
                })
            })
            .map(|r| relation_out(&def.name, r))
            .collect();
        let permissions = def
            .permissions
            .iter()
            .filter(|p| {
                any_filter(&|f| {
                    passes(&f.optional_definition_name_filter, &def.name)
                        && passes(&f.optional_permission_name_filter, &p.name)
                        && f.optional_relation_name_filter.is_empty()
                })
            })
            .map(|p| permission_out(&def.name, p))
            .collect();
        definitions.push(pb::ReflectionDefinition {
            name: def.name.clone(),
            comment: def.comment.clone(),
            relations,
            permissions,
        });
    }
    let caveats = schema
        .caveats
        .values()
        .filter(|c| {
            any_filter(&|f| {
                f.optional_definition_name_filter.is_empty()
                    && passes(&f.optional_caveat_name_filter, &c.name)
            })
        })
        .map(caveat_out)
        .collect();
    (definitions, caveats)
}

/// A subject type as ReflectSchema reports it.
pub fn type_ref_out(a: &AllowedType) -> pb::ReflectionTypeReference {
    pb::ReflectionTypeReference {
        subject_definition_name: a.type_name.clone(),
        optional_caveat_name: a.caveat.clone().unwrap_or_default(),
        typeref: Some(match &a.kind {
            AllowedKind::Direct => pb::reflection_type_reference::Typeref::IsTerminalSubject(true),
            AllowedKind::Wildcard => pb::reflection_type_reference::Typeref::IsPublicWildcard(true),
            AllowedKind::SubjectRelation(rel) => {
                pb::reflection_type_reference::Typeref::OptionalRelationName(rel.clone())
            }
        }),
    }
}

/// A relation of definition `def`, with all its subject types.
pub fn relation_out(def: &str, r: &Relation) -> pb::ReflectionRelation {
    pb::ReflectionRelation {
        name: r.name.clone(),
        comment: r.comment.clone(),
        parent_definition_name: def.to_string(),
        subject_types: r.allowed.iter().map(type_ref_out).collect(),
    }
}

/// A permission of definition `def`.
pub fn permission_out(def: &str, p: &Permission) -> pb::ReflectionPermission {
    pb::ReflectionPermission {
        name: p.name.clone(),
        comment: p.comment.clone(),
        parent_definition_name: def.to_string(),
    }
}

/// A definition with all its relations and permissions.
pub fn definition_out(d: &Definition) -> pb::ReflectionDefinition {
    pb::ReflectionDefinition {
        name: d.name.clone(),
        comment: d.comment.clone(),
        relations: d
            .relations
            .iter()
            .map(|r| relation_out(&d.name, r))
            .collect(),
        permissions: d
            .permissions
            .iter()
            .map(|p| permission_out(&d.name, p))
            .collect(),
    }
}

/// A parameter of caveat `caveat`.
pub fn caveat_parameter_out(caveat: &str, p: &CaveatParam) -> pb::ReflectionCaveatParameter {
    pb::ReflectionCaveatParameter {
        name: p.name.clone(),
        r#type: p.type_.to_string(),
        parent_caveat_name: caveat.to_string(),
    }
}

/// A caveat with its parameters and expression.
pub fn caveat_out(c: &CaveatDef) -> pb::ReflectionCaveat {
    pb::ReflectionCaveat {
        name: c.name.clone(),
        comment: c.comment.clone(),
        parameters: c
            .parameters
            .iter()
            .map(|p| caveat_parameter_out(&c.name, p))
            .collect(),
        expression: c.expression.clone(),
    }
}

/// The relation references ComputablePermissions and DependentRelations answer with.
pub fn relation_references_out(refs: Vec<RelationRef>) -> Vec<pb::ReflectionRelationReference> {
    refs.into_iter()
        .map(|r| pb::ReflectionRelationReference {
            definition_name: r.definition,
            relation_name: r.relation,
            is_permission: r.is_permission,
        })
        .collect()
}

fn missing(what: &str, name: &str) -> ApiError {
    ApiError::Internal(format!(
        "schema diff names {what} `{name}`, which its schema lacks"
    ))
}

fn definition_in<'s>(schema: &'s CompiledSchema, name: &str) -> ApiResult<&'s Definition> {
    schema
        .definition(name)
        .ok_or_else(|| missing("definition", name))
}

fn relation_in(
    schema: &CompiledSchema,
    def: &str,
    name: &str,
) -> ApiResult<pb::ReflectionRelation> {
    definition_in(schema, def)?
        .relation(name)
        .map(|r| relation_out(def, r))
        .ok_or_else(|| missing("relation", &format!("{def}#{name}")))
}

fn permission_in(
    schema: &CompiledSchema,
    def: &str,
    name: &str,
) -> ApiResult<pb::ReflectionPermission> {
    definition_in(schema, def)?
        .permission(name)
        .map(|p| permission_out(def, p))
        .ok_or_else(|| missing("permission", &format!("{def}#{name}")))
}

fn caveat_in<'s>(schema: &'s CompiledSchema, name: &str) -> ApiResult<&'s CaveatDef> {
    schema.caveat(name).ok_or_else(|| missing("caveat", name))
}

fn parameter_in(
    schema: &CompiledSchema,
    caveat: &str,
    name: &str,
) -> ApiResult<pb::ReflectionCaveatParameter> {
    caveat_in(schema, caveat)?
        .parameter(name)
        .map(|p| caveat_parameter_out(caveat, p))
        .ok_or_else(|| missing("caveat parameter", &format!("{caveat}.{name}")))
}

/// DiffSchema's answer for `changes` from `existing` to `comparison`. As SpiceDB: removed items
/// are described from the existing schema, added and changed ones from the comparison (a
/// subject type change carries the comparison's relation and the type; an expression change,
/// the permission without its expression).
pub fn schema_diff_out(
    changes: &[SchemaChange],
    existing: &CompiledSchema,
    comparison: &CompiledSchema,
) -> ApiResult<Vec<pb::ReflectionSchemaDiff>> {
    use pb::reflection_schema_diff::Diff;
    let subject_type_change = |def: &str, rel: &str, t: &AllowedType| {
        Ok::<_, ApiError>(pb::ReflectionRelationSubjectTypeChange {
            relation: Some(relation_in(comparison, def, rel)?),
            changed_subject_type: Some(type_ref_out(t)),
        })
    };
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        let diff = match change {
            SchemaChange::DefinitionAdded(d) => {
                Diff::DefinitionAdded(definition_out(definition_in(comparison, d)?))
            }
            SchemaChange::DefinitionRemoved(d) => {
                Diff::DefinitionRemoved(definition_out(definition_in(existing, d)?))
            }
            SchemaChange::DefinitionCommentChanged(d) => {
                Diff::DefinitionDocCommentChanged(definition_out(definition_in(comparison, d)?))
            }
            SchemaChange::RelationAdded {
                definition,
                relation,
            } => Diff::RelationAdded(relation_in(comparison, definition, relation)?),
            SchemaChange::RelationRemoved {
                definition,
                relation,
            } => Diff::RelationRemoved(relation_in(existing, definition, relation)?),
            SchemaChange::RelationCommentChanged {
                definition,
                relation,
            } => Diff::RelationDocCommentChanged(relation_in(comparison, definition, relation)?),
            SchemaChange::RelationSubjectTypeAdded {
                definition,
                relation,
                subject_type,
            } => Diff::RelationSubjectTypeAdded(subject_type_change(
                definition,
                relation,
                subject_type,
            )?),
            SchemaChange::RelationSubjectTypeRemoved {
                definition,
                relation,
                subject_type,
            } => Diff::RelationSubjectTypeRemoved(subject_type_change(
                definition,
                relation,
                subject_type,
            )?),
            SchemaChange::PermissionAdded {
                definition,
                permission,
            } => Diff::PermissionAdded(permission_in(comparison, definition, permission)?),
            SchemaChange::PermissionRemoved {
                definition,
                permission,
            } => Diff::PermissionRemoved(permission_in(existing, definition, permission)?),
            SchemaChange::PermissionCommentChanged {
                definition,
                permission,
            } => Diff::PermissionDocCommentChanged(permission_in(
                comparison, definition, permission,
            )?),
            SchemaChange::PermissionExprChanged {
                definition,
                permission,
            } => Diff::PermissionExprChanged(permission_in(comparison, definition, permission)?),
            SchemaChange::CaveatAdded(c) => {
                Diff::CaveatAdded(caveat_out(caveat_in(comparison, c)?))
            }
            SchemaChange::CaveatRemoved(c) => {
                Diff::CaveatRemoved(caveat_out(caveat_in(existing, c)?))
            }
            SchemaChange::CaveatCommentChanged(c) => {
                Diff::CaveatDocCommentChanged(caveat_out(caveat_in(comparison, c)?))
            }
            SchemaChange::CaveatExprChanged(c) => {
                Diff::CaveatExprChanged(caveat_out(caveat_in(comparison, c)?))
            }
            SchemaChange::CaveatParameterAdded { caveat, parameter } => {
                Diff::CaveatParameterAdded(parameter_in(comparison, caveat, parameter)?)
            }
            SchemaChange::CaveatParameterRemoved { caveat, parameter } => {
                Diff::CaveatParameterRemoved(parameter_in(existing, caveat, parameter)?)
            }
            SchemaChange::CaveatParameterTypeChanged {
                caveat,
                parameter,
                previous,
            } => Diff::CaveatParameterTypeChanged(pb::ReflectionCaveatParameterTypeChange {
                parameter: Some(parameter_in(comparison, caveat, parameter)?),
                previous_type: previous.to_string(),
            }),
        };
        out.push(pb::ReflectionSchemaDiff { diff: Some(diff) });
    }
    Ok(out)
}
