//! Reachability over a compiled schema: which relations and permissions a subject can affect
//! ([`computable_permissions`]) and which ones a permission reads ([`dependent_relations`]).
//!
//! Both answer as SpiceDB's reachability graph does (`pkg/schema/reachabilitygraph*.go`). Every
//! relation and permission ("node") has entrypoints: the subjects it names directly.
//! - A relation names each of its allowed types: `user` (the subject `user#...`), `group#member`,
//!   and `user:*` (any subject of type `user`).
//! - A permission names each relation or permission of its definition it uses (`viewer`), and
//!   for an arrow `parent->view`, `view` on each allowed type of `parent` that has a `view`; the
//!   arrow also touches `parent` itself. `nil` and `self` name nothing; as in SpiceDB, a `nil`
//!   ends its operation: the operands after it (`nil + viewer`) name nothing either.
//!
//! What a subject can affect is the closure of "names": every node that names the subject, every
//! node that names one of those, and so on. What a permission reads is found walking the other
//! way, depth first in SpiceDB's order, and keeps SpiceDB's quirk that a relation first touched
//! as an arrow's left side is not walked into.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use super::compiled::{AllowedKind, CompiledSchema, Definition, Expr, Member};
use super::error::SchemaError;

/// The relation of a plain subject (`user` is `user#...`).
const ELLIPSIS: &str = "...";

/// A relation or permission, as ComputablePermissions and DependentRelations list them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationRef {
    /// its definition
    pub definition: String,
    /// its name
    pub relation: String,
    /// is it a permission (rather than a relation)?
    pub is_permission: bool,
}

/// A node: a relation or permission of a definition.
type Node<'s> = (&'s str, &'s str);

/// What an entrypoint names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'s> {
    /// any subject of this type (an allowed wildcard)
    Type(&'s str),
    /// subjects `type#relation` (`...` for plain objects)
    Subject(&'s str, &'s str),
}

/// One entrypoint of a node: what it names, and the arrow's left side if it comes from one.
#[derive(Debug, Clone, Copy)]
struct Entry<'s> {
    key: Key<'s>,
    tupleset: Option<&'s str>,
}

/// The entrypoints of `name` in `def`, in source order (empty if there is no such member).
fn entries<'s>(schema: &'s CompiledSchema, def: &'s Definition, name: &str) -> Vec<Entry<'s>> {
    let mut out = Vec::new();
    match def.member(name) {
        None => {}
        Some(Member::Relation(r)) => {
            for a in &r.allowed {
                let key = match &a.kind {
                    AllowedKind::Direct => Key::Subject(&a.type_name, ELLIPSIS),
                    AllowedKind::Wildcard => Key::Type(&a.type_name),
                    AllowedKind::SubjectRelation(sub) => Key::Subject(&a.type_name, sub),
                };
                out.push(Entry {
                    key,
                    tupleset: None,
                });
            }
        }
        Some(Member::Permission(p)) => {
            expression_entries(schema, def, std::slice::from_ref(&p.expr), &mut out);
        }
    }
    out
}

/// The entrypoints of the operands of one operation, stopping at a `nil` operand as SpiceDB's
/// graph builder does. Recursion depth is bounded by the parser's nesting limit.
fn expression_entries<'s>(
    schema: &'s CompiledSchema,
    def: &'s Definition,
    operands: &'s [Expr],
    out: &mut Vec<Entry<'s>>,
) {
    for e in operands {
        match e {
            Expr::Nil => return,
            Expr::Self_ => {}
            Expr::Computed(name) => out.push(Entry {
                key: Key::Subject(&def.name, name),
                tupleset: None,
            }),
            Expr::Arrow {
                tupleset, computed, ..
            } => {
                let allowed = def
                    .relation(tupleset)
                    .map(|r| r.allowed.as_slice())
                    .unwrap_or_default();
                for a in allowed {
                    let Some(target) = schema.definition(&a.type_name) else {
                        continue;
                    };
                    if let Some(m) = target.member(computed) {
                        out.push(Entry {
                            key: Key::Subject(&target.name, m.name()),
                            tupleset: Some(tupleset.as_str()),
                        });
                    }
                }
            }
            Expr::Union(items) | Expr::Intersection(items) => {
                expression_entries(schema, def, items, out);
            }
            Expr::Exclusion(l, r) => {
                expression_entries(schema, def, std::slice::from_ref(&**l), out);
                // a `nil` left operand ends the exclusion's operands
                if !matches!(**l, Expr::Nil) {
                    expression_entries(schema, def, std::slice::from_ref(&**r), out);
                }
            }
        }
    }
}

fn definition<'s>(schema: &'s CompiledSchema, name: &str) -> Result<&'s Definition, SchemaError> {
    schema
        .definition(name)
        .ok_or_else(|| SchemaError::UnknownDefinition(name.to_string()))
}

fn reference(schema: &CompiledSchema, (def, name): Node<'_>) -> RelationRef {
    RelationRef {
        definition: def.to_string(),
        relation: name.to_string(),
        is_permission: schema
            .definition(def)
            .and_then(|d| d.permission(name))
            .is_some(),
    }
}

/// Every relation and permission, in any definition whose name starts with `definition_prefix`,
/// that depends on relationships whose subject is `definition#relation` (`relation` `None`: the
/// plain subject `definition`, i.e. `definition#...`): ComputablePermissions. The named
/// relation itself is left out; the answer is sorted by definition, then name.
pub fn computable_permissions(
    schema: &CompiledSchema,
    definition_name: &str,
    relation: Option<&str>,
    definition_prefix: &str,
) -> Result<Vec<RelationRef>, SchemaError> {
    let def = definition(schema, definition_name)?;
    let start_relation = match relation {
        None => ELLIPSIS,
        Some(r) => def
            .member(r)
            .map(|m| m.name())
            .ok_or_else(|| SchemaError::UnknownRelation {
                definition: definition_name.to_string(),
                relation: r.to_string(),
            })?,
    };
    // who names each key
    let mut named_by: HashMap<Key<'_>, Vec<Node<'_>>> = HashMap::new();
    for d in schema.definitions.values() {
        let names = d
            .relations
            .iter()
            .map(|r| r.name.as_str())
            .chain(d.permissions.iter().map(|p| p.name.as_str()));
        for name in names {
            for e in entries(schema, d, name) {
                named_by
                    .entry(e.key)
                    .or_default()
                    .push((d.name.as_str(), name));
            }
        }
    }
    let start: Node<'_> = (def.name.as_str(), start_relation);
    let mut found: HashSet<Node<'_>> = HashSet::new();
    let mut queue: VecDeque<Node<'_>> = VecDeque::from([start]);
    while let Some(subject) = queue.pop_front() {
        let by_subject = named_by.get(&Key::Subject(subject.0, subject.1));
        // a wildcard entrypoint takes any subject of its type, whatever its relation
        let by_type = named_by.get(&Key::Type(subject.0));
        for &node in by_subject.into_iter().chain(by_type).flatten() {
            if node != subject && found.insert(node) {
                queue.push_back(node);
            }
        }
    }
    let mut out: Vec<RelationRef> = found
        .into_iter()
        .filter(|&n| n != start && n.0.starts_with(definition_prefix))
        .map(|n| reference(schema, n))
        .collect();
    out.sort();
    Ok(out)
}

/// Every relation and permission `definition#permission` reads, across definitions, through
/// arrows and subject relations: DependentRelations. The permission itself is left out; the
/// answer is sorted by definition, then name. Naming a relation is
/// [`SchemaError::NotAPermission`].
pub fn dependent_relations(
    schema: &CompiledSchema,
    definition_name: &str,
    permission: &str,
) -> Result<Vec<RelationRef>, SchemaError> {
    let def = definition(schema, definition_name)?;
    let start: Node<'_> = match def.member(permission) {
        None => {
            return Err(SchemaError::UnknownRelation {
                definition: definition_name.to_string(),
                relation: permission.to_string(),
            });
        }
        Some(Member::Relation(_)) => {
            return Err(SchemaError::NotAPermission {
                definition: definition_name.to_string(),
                relation: permission.to_string(),
            });
        }
        Some(Member::Permission(p)) => (def.name.as_str(), p.name.as_str()),
    };
    // SpiceDB's collectEntrypoints, depth first: a node is marked when first reached (or when
    // it is the left side of an arrow of a node walked), and only a node reached unmarked is
    // walked into, its subject relations in the order of their `type#relation` spelling.
    let mut encountered: BTreeSet<Node<'_>> = BTreeSet::new();
    let mut stack: Vec<std::vec::IntoIter<Node<'_>>> = Vec::new();
    let mut next = Some(start);
    loop {
        if let Some(node) = next.take()
            && encountered.insert(node)
        {
            let Some(d) = schema.definition(node.0) else {
                continue;
            };
            let es = entries(schema, d, node.1);
            for e in &es {
                if let Some(t) = e.tupleset {
                    encountered.insert((d.name.as_str(), t));
                }
            }
            let mut children: Vec<Node<'_>> = es
                .iter()
                .filter_map(|e| match e.key {
                    Key::Subject(t, r) if r != ELLIPSIS => Some((t, r)),
                    Key::Subject(..) | Key::Type(_) => None,
                })
                .collect();
            children.sort_by_key(|(t, r)| format!("{t}#{r}"));
            children.dedup();
            stack.push(children.into_iter());
        }
        let Some(top) = stack.last_mut() else {
            break;
        };
        match top.next() {
            Some(child) => next = Some(child),
            None => {
                stack.pop();
            }
        }
    }
    Ok(encountered
        .into_iter()
        .filter(|&n| n != start)
        .map(|n| reference(schema, n))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::compile;
    use super::*;

    fn refs(list: &[RelationRef]) -> Vec<String> {
        list.iter()
            .map(|r| {
                format!(
                    "{}#{}{}",
                    r.definition,
                    r.relation,
                    if r.is_permission { " (permission)" } else { "" }
                )
            })
            .collect()
    }

    const DOC: &str = "definition user {}\ndefinition document {\n relation unused: user\n relation editor: user\n relation viewer: user\n permission view = viewer + editor\n permission another = unused\n}";

    #[test]
    fn computable_permissions_of_the_documented_example() {
        let s = compile(DOC).unwrap();
        assert_eq!(
            refs(&computable_permissions(&s, "user", None, "").unwrap()),
            vec![
                "document#another (permission)",
                "document#editor",
                "document#unused",
                "document#view (permission)",
                "document#viewer",
            ]
        );
        assert_eq!(
            refs(&computable_permissions(&s, "document", Some("viewer"), "").unwrap()),
            vec!["document#view (permission)"]
        );
        // a permission can be asked about too; nothing uses `view`
        assert!(
            computable_permissions(&s, "document", Some("view"), "")
                .unwrap()
                .is_empty()
        );
        // the filter is a prefix of the definition name
        assert!(
            computable_permissions(&s, "user", None, "doz")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            computable_permissions(&s, "user", None, "doc")
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn computable_permissions_follow_arrows_subject_sets_and_wildcards() {
        let s = compile(
            "definition user {}\n\
             definition group {\n relation member: user | group#member\n}\n\
             definition folder {\n relation reader: group#member | user:*\n permission read = reader\n}\n\
             definition doc {\n relation parent: folder\n relation owner: user\n permission read = parent->read - owner\n}",
        )
        .unwrap();
        assert_eq!(
            refs(&computable_permissions(&s, "user", None, "").unwrap()),
            vec![
                "doc#owner",
                "doc#read (permission)",
                "folder#read (permission)",
                "folder#reader",
                "group#member",
            ]
        );
        // the start is left out even where it names itself
        assert_eq!(
            refs(&computable_permissions(&s, "group", Some("member"), "").unwrap()),
            vec![
                "doc#read (permission)",
                "folder#read (permission)",
                "folder#reader",
            ]
        );
        // a folder as a subject reaches `doc#parent` only: the arrow reads `folder#read`
        assert_eq!(
            refs(&computable_permissions(&s, "folder", None, "").unwrap()),
            vec!["doc#parent"]
        );
    }

    #[test]
    fn dependent_relations_of_the_documented_example() {
        let s = compile(
            "definition user {}\n\
             definition folder {\n relation viewer: user\n permission view = viewer\n}\n\
             definition document {\n relation parent: folder\n relation viewer: user\n permission view = viewer + parent->view\n}",
        )
        .unwrap();
        assert_eq!(
            refs(&dependent_relations(&s, "document", "view").unwrap()),
            vec![
                "document#parent",
                "document#viewer",
                "folder#view (permission)",
                "folder#viewer",
            ]
        );
        let s = compile("definition doc { permission empty = nil }").unwrap();
        assert!(dependent_relations(&s, "doc", "empty").unwrap().is_empty());
    }

    #[test]
    fn dependent_relations_follow_subject_relations_and_stop_at_nil() {
        let s = compile(
            "definition user {}\n\
             definition group {\n relation member: user | group#member\n relation admin: user\n permission manage = admin\n}\n\
             definition doc {\n relation viewer: group#member | group#manage\n relation banned: user\n\
              permission view = viewer - banned\n permission odd = nil + banned\n permission odd2 = banned + nil\n}",
        )
        .unwrap();
        assert_eq!(
            refs(&dependent_relations(&s, "doc", "view").unwrap()),
            vec![
                "doc#banned",
                "doc#viewer",
                "group#admin",
                "group#manage (permission)",
                "group#member",
            ]
        );
        assert!(dependent_relations(&s, "doc", "odd").unwrap().is_empty());
        assert_eq!(
            refs(&dependent_relations(&s, "doc", "odd2").unwrap()),
            vec!["doc#banned"]
        );
    }

    #[test]
    fn a_tupleset_touched_first_is_not_walked_into() {
        // SpiceDB marks `doc#parent` when it meets `parent->view`, before it would walk
        // `parent` as a name, so `team#admin` behind it is not reached.
        let s = compile(
            "definition user {}\n\
             definition team {\n relation admin: user\n relation member: user\n permission view = member\n}\n\
             definition doc {\n relation parent: team#admin | team\n permission read = parent->view + parent\n}",
        )
        .unwrap();
        assert_eq!(
            refs(&dependent_relations(&s, "doc", "read").unwrap()),
            vec!["doc#parent", "team#member", "team#view (permission)"]
        );
    }

    #[test]
    fn lookups_name_what_is_missing() {
        let s = compile(DOC).unwrap();
        assert_eq!(
            computable_permissions(&s, "nope", None, "").unwrap_err(),
            SchemaError::UnknownDefinition("nope".into())
        );
        assert_eq!(
            computable_permissions(&s, "document", Some("nope"), "").unwrap_err(),
            SchemaError::UnknownRelation {
                definition: "document".into(),
                relation: "nope".into()
            }
        );
        assert_eq!(
            dependent_relations(&s, "document", "viewer").unwrap_err(),
            SchemaError::NotAPermission {
                definition: "document".into(),
                relation: "viewer".into()
            }
        );
        assert_eq!(
            dependent_relations(&s, "document", "nope")
                .unwrap_err()
                .to_string(),
            "relation/permission `nope` not found under definition `document`"
        );
        assert_eq!(
            dependent_relations(&s, "nope", "view")
                .unwrap_err()
                .to_string(),
            "object definition `nope` not found"
        );
    }
}
