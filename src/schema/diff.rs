//! Schema diffs: what changed from one compiled schema to another, as SpiceDB's DiffSchema says.
//!
//! [`diff_schemas`] compares an existing schema with a comparison schema and lists the changes
//! ("added" means only the comparison has it). The kinds of change and their grouping follow
//! SpiceDB's `pkg/diff` (definitions, then caveats, then each changed definition, then each
//! changed caveat). Where SpiceDB's order comes from Go maps and sets (and so varies from call
//! to call), names are sorted here, so the same two schemas always give the same list.
//!
//! Relations and permissions are compared by name within their own kind: a relation that
//! becomes a permission is a relation removed and a permission added. A relation's allowed
//! types are compared by their SpiceDB spelling (`user`, `user:*`, `group#member`,
//! `user with cav and expiration`), so a type that gains a caveat is one type removed and one
//! added. A permission's expression is compared after compilation (unions and intersections
//! flattened), and a caveat's expression as written.

use super::compiled::{
    AllowedType, CaveatDef, CaveatParam, CaveatType, CompiledSchema, Definition, Permission,
    Relation,
};

/// One change from the existing schema to the comparison schema. Names are those of the
/// comparison schema for added and changed items, of the existing schema for removed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChange {
    /// a definition only the comparison has
    DefinitionAdded(String),
    /// a definition only the existing schema has
    DefinitionRemoved(String),
    /// a definition whose comment changed
    DefinitionCommentChanged(String),
    /// a relation only the comparison's definition has
    RelationAdded {
        /// the definition
        definition: String,
        /// the relation
        relation: String,
    },
    /// a relation only the existing definition has
    RelationRemoved {
        /// the definition
        definition: String,
        /// the relation
        relation: String,
    },
    /// a relation whose comment changed
    RelationCommentChanged {
        /// the definition
        definition: String,
        /// the relation
        relation: String,
    },
    /// an allowed subject type only the comparison's relation has
    RelationSubjectTypeAdded {
        /// the definition
        definition: String,
        /// the relation
        relation: String,
        /// the type added
        subject_type: AllowedType,
    },
    /// an allowed subject type only the existing relation has
    RelationSubjectTypeRemoved {
        /// the definition
        definition: String,
        /// the relation
        relation: String,
        /// the type removed
        subject_type: AllowedType,
    },
    /// a permission only the comparison's definition has
    PermissionAdded {
        /// the definition
        definition: String,
        /// the permission
        permission: String,
    },
    /// a permission only the existing definition has
    PermissionRemoved {
        /// the definition
        definition: String,
        /// the permission
        permission: String,
    },
    /// a permission whose comment changed
    PermissionCommentChanged {
        /// the definition
        definition: String,
        /// the permission
        permission: String,
    },
    /// a permission whose expression changed
    PermissionExprChanged {
        /// the definition
        definition: String,
        /// the permission
        permission: String,
    },
    /// a caveat only the comparison has
    CaveatAdded(String),
    /// a caveat only the existing schema has
    CaveatRemoved(String),
    /// a caveat whose comment changed
    CaveatCommentChanged(String),
    /// a caveat whose expression changed
    CaveatExprChanged(String),
    /// a parameter only the comparison's caveat has
    CaveatParameterAdded {
        /// the caveat
        caveat: String,
        /// the parameter
        parameter: String,
    },
    /// a parameter only the existing caveat has
    CaveatParameterRemoved {
        /// the caveat
        caveat: String,
        /// the parameter
        parameter: String,
    },
    /// a parameter whose type changed
    CaveatParameterTypeChanged {
        /// the caveat
        caveat: String,
        /// the parameter
        parameter: String,
        /// its type in the existing schema
        previous: CaveatType,
    },
}

impl std::fmt::Display for SchemaChange {
    /// One line, in the words `zed schema diff` uses: `added relation document#viewer`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use SchemaChange as C;
        match self {
            C::DefinitionAdded(d) => write!(f, "added definition {d}"),
            C::DefinitionRemoved(d) => write!(f, "removed definition {d}"),
            C::DefinitionCommentChanged(d) => write!(f, "changed comment of definition {d}"),
            C::RelationAdded {
                definition,
                relation,
            } => write!(f, "added relation {definition}#{relation}"),
            C::RelationRemoved {
                definition,
                relation,
            } => write!(f, "removed relation {definition}#{relation}"),
            C::RelationCommentChanged {
                definition,
                relation,
            } => write!(f, "changed comment of relation {definition}#{relation}"),
            C::RelationSubjectTypeAdded {
                definition,
                relation,
                subject_type,
            } => write!(
                f,
                "added subject type {subject_type} to relation {definition}#{relation}"
            ),
            C::RelationSubjectTypeRemoved {
                definition,
                relation,
                subject_type,
            } => write!(
                f,
                "removed subject type {subject_type} from relation {definition}#{relation}"
            ),
            C::PermissionAdded {
                definition,
                permission,
            } => write!(f, "added permission {definition}#{permission}"),
            C::PermissionRemoved {
                definition,
                permission,
            } => write!(f, "removed permission {definition}#{permission}"),
            C::PermissionCommentChanged {
                definition,
                permission,
            } => write!(f, "changed comment of permission {definition}#{permission}"),
            C::PermissionExprChanged {
                definition,
                permission,
            } => write!(
                f,
                "changed expression of permission {definition}#{permission}"
            ),
            C::CaveatAdded(c) => write!(f, "added caveat {c}"),
            C::CaveatRemoved(c) => write!(f, "removed caveat {c}"),
            C::CaveatCommentChanged(c) => write!(f, "changed comment of caveat {c}"),
            C::CaveatExprChanged(c) => write!(f, "changed expression of caveat {c}"),
            C::CaveatParameterAdded { caveat, parameter } => {
                write!(f, "added parameter {parameter} to caveat {caveat}")
            }
            C::CaveatParameterRemoved { caveat, parameter } => {
                write!(f, "removed parameter {parameter} from caveat {caveat}")
            }
            C::CaveatParameterTypeChanged {
                caveat,
                parameter,
                previous,
            } => write!(
                f,
                "changed type of parameter {parameter} of caveat {caveat} (was {previous})"
            ),
        }
    }
}

/// Every change from `existing` to `comparison`, in this order: definitions added, definitions
/// removed, caveats added, caveats removed, then each definition both have (by name), then each
/// caveat both have (by name). Within a definition: its comment, relations removed, relations
/// added, permissions removed, permissions added, then each permission both have (expression,
/// then comment), then each relation both have (comment, types removed, types added). Within a
/// caveat: its comment, parameters removed, added, retyped, then its expression.
pub fn diff_schemas(existing: &CompiledSchema, comparison: &CompiledSchema) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    // BTreeMaps: names come sorted
    for name in comparison.definitions.keys() {
        if !existing.definitions.contains_key(name) {
            out.push(SchemaChange::DefinitionAdded(name.clone()));
        }
    }
    for name in existing.definitions.keys() {
        if !comparison.definitions.contains_key(name) {
            out.push(SchemaChange::DefinitionRemoved(name.clone()));
        }
    }
    for name in comparison.caveats.keys() {
        if !existing.caveats.contains_key(name) {
            out.push(SchemaChange::CaveatAdded(name.clone()));
        }
    }
    for name in existing.caveats.keys() {
        if !comparison.caveats.contains_key(name) {
            out.push(SchemaChange::CaveatRemoved(name.clone()));
        }
    }
    for (name, old) in &existing.definitions {
        if let Some(new) = comparison.definitions.get(name) {
            diff_definition(old, new, &mut out);
        }
    }
    for (name, old) in &existing.caveats {
        if let Some(new) = comparison.caveats.get(name) {
            diff_caveat(old, new, &mut out);
        }
    }
    out
}

/// Names in `a` but not in `b`, sorted.
fn missing_from<'a>(a: &'a [String], b: &[String]) -> Vec<&'a String> {
    let mut names: Vec<&String> = a.iter().filter(|n| !b.contains(*n)).collect();
    names.sort();
    names
}

fn relation_names(d: &Definition) -> Vec<String> {
    d.relations.iter().map(|r| r.name.clone()).collect()
}

fn permission_names(d: &Definition) -> Vec<String> {
    d.permissions.iter().map(|p| p.name.clone()).collect()
}

fn diff_definition(old: &Definition, new: &Definition, out: &mut Vec<SchemaChange>) {
    let def = || new.name.clone();
    if old.comment != new.comment {
        out.push(SchemaChange::DefinitionCommentChanged(def()));
    }
    let (old_rels, new_rels) = (relation_names(old), relation_names(new));
    let (old_perms, new_perms) = (permission_names(old), permission_names(new));
    for relation in missing_from(&old_rels, &new_rels) {
        out.push(SchemaChange::RelationRemoved {
            definition: def(),
            relation: relation.clone(),
        });
    }
    for relation in missing_from(&new_rels, &old_rels) {
        out.push(SchemaChange::RelationAdded {
            definition: def(),
            relation: relation.clone(),
        });
    }
    for permission in missing_from(&old_perms, &new_perms) {
        out.push(SchemaChange::PermissionRemoved {
            definition: def(),
            permission: permission.clone(),
        });
    }
    for permission in missing_from(&new_perms, &old_perms) {
        out.push(SchemaChange::PermissionAdded {
            definition: def(),
            permission: permission.clone(),
        });
    }
    let mut shared_perms: Vec<(&Permission, &Permission)> = old
        .permissions
        .iter()
        .filter_map(|p| new.permission(&p.name).map(|q| (p, q)))
        .collect();
    shared_perms.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (p, q) in shared_perms {
        if p.expr != q.expr {
            out.push(SchemaChange::PermissionExprChanged {
                definition: def(),
                permission: q.name.clone(),
            });
        }
        if p.comment != q.comment {
            out.push(SchemaChange::PermissionCommentChanged {
                definition: def(),
                permission: q.name.clone(),
            });
        }
    }
    let mut shared_rels: Vec<(&Relation, &Relation)> = old
        .relations
        .iter()
        .filter_map(|r| new.relation(&r.name).map(|s| (r, s)))
        .collect();
    shared_rels.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (r, s) in shared_rels {
        if r.comment != s.comment {
            out.push(SchemaChange::RelationCommentChanged {
                definition: def(),
                relation: s.name.clone(),
            });
        }
        for t in types_missing_from(&r.allowed, &s.allowed) {
            out.push(SchemaChange::RelationSubjectTypeRemoved {
                definition: def(),
                relation: s.name.clone(),
                subject_type: t.clone(),
            });
        }
        for t in types_missing_from(&s.allowed, &r.allowed) {
            out.push(SchemaChange::RelationSubjectTypeAdded {
                definition: def(),
                relation: s.name.clone(),
                subject_type: t.clone(),
            });
        }
    }
}

/// The allowed types of `a` that `b` lacks (compared by their spelling), sorted by it.
fn types_missing_from<'a>(a: &'a [AllowedType], b: &[AllowedType]) -> Vec<&'a AllowedType> {
    let spelled: Vec<String> = b.iter().map(ToString::to_string).collect();
    let mut missing: Vec<(String, &AllowedType)> = Vec::new();
    for t in a {
        let s = t.to_string();
        if !spelled.contains(&s) && !missing.iter().any(|(m, _)| *m == s) {
            missing.push((s, t));
        }
    }
    missing.sort_by(|x, y| x.0.cmp(&y.0));
    missing.into_iter().map(|(_, t)| t).collect()
}

fn param_names(c: &CaveatDef) -> Vec<String> {
    c.parameters.iter().map(|p| p.name.clone()).collect()
}

fn diff_caveat(old: &CaveatDef, new: &CaveatDef, out: &mut Vec<SchemaChange>) {
    let cav = || new.name.clone();
    if old.comment != new.comment {
        out.push(SchemaChange::CaveatCommentChanged(cav()));
    }
    let (old_params, new_params) = (param_names(old), param_names(new));
    for parameter in missing_from(&old_params, &new_params) {
        out.push(SchemaChange::CaveatParameterRemoved {
            caveat: cav(),
            parameter: parameter.clone(),
        });
    }
    for parameter in missing_from(&new_params, &old_params) {
        out.push(SchemaChange::CaveatParameterAdded {
            caveat: cav(),
            parameter: parameter.clone(),
        });
    }
    let mut shared: Vec<(&CaveatParam, &CaveatParam)> = old
        .parameters
        .iter()
        .filter_map(|p| new.parameter(&p.name).map(|q| (p, q)))
        .collect();
    shared.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (p, q) in shared {
        if p.type_ != q.type_ {
            out.push(SchemaChange::CaveatParameterTypeChanged {
                caveat: cav(),
                parameter: q.name.clone(),
                previous: p.type_.clone(),
            });
        }
    }
    if old.expression != new.expression {
        out.push(SchemaChange::CaveatExprChanged(cav()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{compile, compile_without_type_checks};
    use super::*;
    use crate::schema::AllowedKind;

    fn diff(a: &str, b: &str) -> Vec<SchemaChange> {
        diff_schemas(&compile(a).unwrap(), &compile(b).unwrap())
    }

    fn d(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn identical_schemas_have_no_changes() {
        let s = "caveat c(a int) { a > 1 }\ndefinition user {}\ndefinition doc {\n relation viewer: user with c\n permission view = viewer\n}";
        assert!(diff(s, s).is_empty());
        assert!(diff("", "").is_empty());
        // only whitespace and order of items differ
        let t = "definition doc {\n    relation viewer: user with c\n    permission view = viewer\n}\n\ndefinition user {}\ncaveat c(a int) { a > 1 }";
        assert!(diff(s, t).is_empty());
    }

    #[test]
    fn the_documented_example() {
        let stored = "definition user {}\ndefinition document {\n relation viewer: user\n permission view = viewer\n}";
        let comparison = "definition user {}\ndefinition group { relation member: user }\ndefinition document {\n relation viewer: user | group#member\n relation editor: user\n permission view = viewer + editor\n}";
        assert_eq!(
            diff(stored, comparison),
            vec![
                SchemaChange::DefinitionAdded(d("group")),
                SchemaChange::RelationAdded {
                    definition: d("document"),
                    relation: d("editor")
                },
                SchemaChange::PermissionExprChanged {
                    definition: d("document"),
                    permission: d("view")
                },
                SchemaChange::RelationSubjectTypeAdded {
                    definition: d("document"),
                    relation: d("viewer"),
                    subject_type: AllowedType {
                        type_name: d("group"),
                        kind: AllowedKind::SubjectRelation(d("member")),
                        caveat: None,
                        expiration: false,
                    }
                },
            ]
        );
    }

    #[test]
    fn every_kind_of_change_in_order() {
        let old = "caveat gone(a int) { a > 1 }\n\
            /** same */ caveat kept(a int, b string, c int) { a > 1 && b == '' && c > 0 }\n\
            definition user {}\n\
            definition old {}\n\
            /** doc */ definition doc {\n\
              relation zrel: user\n\
              /** r */ relation arel: user | user:*\n\
              relation flip: user\n\
              permission zperm = arel\n\
              /** p */ permission aperm = arel\n\
            }";
        let new = "use expiration\n\
            caveat added(a int) { a > 1 }\n\
            /** changed */ caveat kept(a string, c int, d int) { a == '' && c > 0 && d > 0 }\n\
            definition user {}\n\
            definition fresh {}\n\
            /** doc 2 */ definition doc {\n\
              relation brel: user\n\
              /** r2 */ relation arel: user:* | user with expiration\n\
              permission flip = arel\n\
              permission bperm = arel\n\
              /** p2 */ permission aperm = arel + brel\n\
            }";
        let changes = diff(old, new);
        let rel = |k: &str, r: &str| (k.to_string(), r.to_string());
        let summary: Vec<(String, String)> = changes
            .iter()
            .map(|c| match c {
                SchemaChange::DefinitionAdded(n) => rel("def+", n),
                SchemaChange::DefinitionRemoved(n) => rel("def-", n),
                SchemaChange::DefinitionCommentChanged(n) => rel("def~", n),
                SchemaChange::RelationAdded { relation, .. } => rel("rel+", relation),
                SchemaChange::RelationRemoved { relation, .. } => rel("rel-", relation),
                SchemaChange::RelationCommentChanged { relation, .. } => rel("rel~", relation),
                SchemaChange::RelationSubjectTypeAdded { subject_type, .. } => {
                    rel("type+", &subject_type.to_string())
                }
                SchemaChange::RelationSubjectTypeRemoved { subject_type, .. } => {
                    rel("type-", &subject_type.to_string())
                }
                SchemaChange::PermissionAdded { permission, .. } => rel("perm+", permission),
                SchemaChange::PermissionRemoved { permission, .. } => rel("perm-", permission),
                SchemaChange::PermissionCommentChanged { permission, .. } => {
                    rel("perm~doc", permission)
                }
                SchemaChange::PermissionExprChanged { permission, .. } => {
                    rel("perm~expr", permission)
                }
                SchemaChange::CaveatAdded(n) => rel("cav+", n),
                SchemaChange::CaveatRemoved(n) => rel("cav-", n),
                SchemaChange::CaveatCommentChanged(n) => rel("cav~doc", n),
                SchemaChange::CaveatExprChanged(n) => rel("cav~expr", n),
                SchemaChange::CaveatParameterAdded { parameter, .. } => rel("param+", parameter),
                SchemaChange::CaveatParameterRemoved { parameter, .. } => rel("param-", parameter),
                SchemaChange::CaveatParameterTypeChanged {
                    parameter,
                    previous,
                    ..
                } => rel("param~", &format!("{parameter} was {previous}")),
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("def+", "fresh"),
            ("def-", "old"),
            ("cav+", "added"),
            ("cav-", "gone"),
            ("def~", "doc"),
            ("rel-", "flip"),
            ("rel-", "zrel"),
            ("rel+", "brel"),
            ("perm-", "zperm"),
            ("perm+", "bperm"),
            ("perm+", "flip"),
            ("perm~expr", "aperm"),
            ("perm~doc", "aperm"),
            ("rel~", "arel"),
            ("type-", "user"),
            ("type+", "user with expiration"),
            ("cav~doc", "kept"),
            ("param-", "b"),
            ("param+", "d"),
            ("param~", "a was int"),
            ("cav~expr", "kept"),
        ]
        .iter()
        .map(|(a, b)| rel(a, b))
        .collect();
        assert_eq!(summary, want);
    }

    #[test]
    fn the_comparison_need_not_type_check() {
        let stored = compile("definition user {}").unwrap();
        let comparison =
            compile_without_type_checks("definition doc { relation viewer: nosuchtype#rel }")
                .unwrap();
        assert_eq!(
            diff_schemas(&stored, &comparison),
            vec![
                SchemaChange::DefinitionAdded(d("doc")),
                SchemaChange::DefinitionRemoved(d("user")),
            ]
        );
        // what the compiler refuses is still refused
        assert!(compile_without_type_checks("definition doc {").is_err());
        assert!(compile_without_type_checks("caveat c(a int) { a + 1 }").is_err());
        // an unused caveat parameter is the type system's complaint, not the compiler's
        assert!(compile_without_type_checks("caveat c(a int, b int) { a > 1 }").is_ok());
    }

    #[test]
    fn a_type_gaining_a_caveat_is_removed_and_added() {
        let changes = diff(
            "caveat c(a int) { a > 1 }\ndefinition user {}\ndefinition doc { relation viewer: user }",
            "caveat c(a int) { a > 1 }\ndefinition user {}\ndefinition doc { relation viewer: user with c }",
        );
        let spelled: Vec<String> = changes
            .iter()
            .map(|c| match c {
                SchemaChange::RelationSubjectTypeRemoved { subject_type, .. } => {
                    format!("-{subject_type}")
                }
                SchemaChange::RelationSubjectTypeAdded { subject_type, .. } => {
                    format!("+{subject_type}")
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(spelled, vec!["-user", "+user with c"]);
    }
}
