//! ReflectSchema: the compiled schema as `Reflection*` messages, filtered by name prefixes.

use super::proto::authzed::api::v1 as pb;
use crate::schema::{AllowedKind, CompiledSchema};

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
            .map(|r| pb::ReflectionRelation {
                name: r.name.clone(),
                comment: r.comment.clone(),
                parent_definition_name: def.name.clone(),
                subject_types: r
                    .allowed
                    .iter()
                    .map(|a| pb::ReflectionTypeReference {
                        subject_definition_name: a.type_name.clone(),
                        optional_caveat_name: a.caveat.clone().unwrap_or_default(),
                        typeref: Some(match &a.kind {
                            AllowedKind::Direct => {
                                pb::reflection_type_reference::Typeref::IsTerminalSubject(true)
                            }
                            AllowedKind::Wildcard => {
                                pb::reflection_type_reference::Typeref::IsPublicWildcard(true)
                            }
                            AllowedKind::SubjectRelation(rel) => {
                                pb::reflection_type_reference::Typeref::OptionalRelationName(
                                    rel.clone(),
                                )
                            }
                        }),
                    })
                    .collect(),
            })
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
            .map(|p| pb::ReflectionPermission {
                name: p.name.clone(),
                comment: p.comment.clone(),
                parent_definition_name: def.name.clone(),
            })
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
        .map(|c| pb::ReflectionCaveat {
            name: c.name.clone(),
            comment: c.comment.clone(),
            parameters: c
                .parameters
                .iter()
                .map(|p| pb::ReflectionCaveatParameter {
                    name: p.name.clone(),
                    r#type: p.type_.to_string(),
                    parent_caveat_name: c.name.clone(),
                })
                .collect(),
            expression: c.expression.clone(),
        })
        .collect();
    (definitions, caveats)
}
