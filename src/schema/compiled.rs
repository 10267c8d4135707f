//! The compiled schema: the form the engine and the API layer consume.
//!
//! Everything here has been type checked; names resolve.
//!
//! Also here: [`orphan_checks`] and [`incompatible_caveat_changes`], what WriteSchema must verify
//! against stored relationships (or refuse outright) before replacing one schema with another.

use std::collections::BTreeMap;
use std::fmt;

pub use crate::model::{CaveatMatch, OrphanCheck};
use crate::model::{RelationshipFilter, SubjectFilter, SubjectRelationFilter};

/// A compiled, type-checked schema.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSchema {
    /// the text as written
    pub source: String,
    /// object definitions by name
    pub definitions: BTreeMap<String, Definition>,
    /// caveats by name
    pub caveats: BTreeMap<String, CaveatDef>,
    /// was `use expiration` written?
    pub use_expiration: bool,
}

impl CompiledSchema {
    /// The schema with nothing in it (what a store starts with).
    pub fn empty() -> CompiledSchema {
        CompiledSchema {
            source: String::new(),
            definitions: BTreeMap::new(),
            caveats: BTreeMap::new(),
            use_expiration: false,
        }
    }

    /// The definition called `name`.
    pub fn definition(&self, name: &str) -> Option<&Definition> {
        self.definitions.get(name)
    }

    /// The caveat called `name`.
    pub fn caveat(&self, name: &str) -> Option<&CaveatDef> {
        self.caveats.get(name)
    }

    /// For the engine: `type#relation_or_permission`, if it exists.
    pub fn member(&self, type_name: &str, name: &str) -> Option<Member<'_>> {
        self.definition(type_name)?.member(name)
    }

    /// For the engine: does `type#relation_or_permission` exist?
    pub fn has_member(&self, type_name: &str, name: &str) -> bool {
        self.member(type_name, name).is_some()
    }

    /// Has the schema no definitions and no caveats?
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty() && self.caveats.is_empty()
    }
}

impl Default for CompiledSchema {
    fn default() -> Self {
        CompiledSchema::empty()
    }
}

/// Where a member sits in its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberIndex {
    Relation(usize),
    Permission(usize),
}

/// An object definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// the type name, e.g. `document` or `tenant/document`
    pub name: String,
    /// the comments before it, as ReflectSchema reports them (empty if none)
    pub comment: String,
    /// its relations, in source order
    pub relations: Vec<Relation>,
    /// its permissions, in source order
    pub permissions: Vec<Permission>,
    /// member name -> position in `relations` or `permissions`
    index: BTreeMap<String, MemberIndex>,
}

impl Definition {
    /// Builds a definition and its name index. Names must be unique across relations and
    /// permissions (the type checker guarantees it; on a clash the first one wins).
    pub fn new(
        name: impl Into<String>,
        comment: impl Into<String>,
        relations: Vec<Relation>,
        permissions: Vec<Permission>,
    ) -> Definition {
        let mut index = BTreeMap::new();
        for (i, r) in relations.iter().enumerate() {
            index
                .entry(r.name.clone())
                .or_insert(MemberIndex::Relation(i));
        }
        for (i, p) in permissions.iter().enumerate() {
            index
                .entry(p.name.clone())
                .or_insert(MemberIndex::Permission(i));
        }
        Definition {
            name: name.into(),
            comment: comment.into(),
            relations,
            permissions,
            index,
        }
    }

    /// The relation called `name` (not a permission).
    pub fn relation(&self, name: &str) -> Option<&Relation> {
        match self.index.get(name)? {
            MemberIndex::Relation(i) => self.relations.get(*i),
            MemberIndex::Permission(_) => None,
        }
    }

    /// The permission called `name` (not a relation).
    pub fn permission(&self, name: &str) -> Option<&Permission> {
        match self.index.get(name)? {
            MemberIndex::Permission(i) => self.permissions.get(*i),
            MemberIndex::Relation(_) => None,
        }
    }

    /// The relation or permission called `name`.
    pub fn member(&self, name: &str) -> Option<Member<'_>> {
        match self.index.get(name)? {
            MemberIndex::Relation(i) => self.relations.get(*i).map(Member::Relation),
            MemberIndex::Permission(i) => self.permissions.get(*i).map(Member::Permission),
        }
    }
}

/// A relation or a permission of a definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Member<'a> {
    /// a relation (stored relationships)
    Relation(&'a Relation),
    /// a permission (computed)
    Permission(&'a Permission),
}

impl<'a> Member<'a> {
    /// The member's name.
    pub fn name(&self) -> &'a str {
        match self {
            Member::Relation(r) => &r.name,
            Member::Permission(p) => &p.name,
        }
    }

    /// The member's comment.
    pub fn comment(&self) -> &str {
        match self {
            Member::Relation(r) => &r.comment,
            Member::Permission(p) => &p.comment,
        }
    }
}

/// A relation: the subject types its relationships may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// the relation name
    pub name: String,
    /// the comments before it (empty if none)
    pub comment: String,
    /// the allowed subject types, in source order (never empty)
    pub allowed: Vec<AllowedType>,
}

impl Relation {
    /// May a relationship on this relation have this subject? Matching is exact, as SpiceDB's
    /// write validation is: the subject type, its kind (plain, wildcard `*` id, or subject
    /// relation), the caveat name (or none) and the presence of an expiration must all equal
    /// one allowed type. `subject_relation` is `None` for a plain subject (`...`).
    pub fn allows(
        &self,
        subject_type: &str,
        subject_relation: Option<&str>,
        wildcard: bool,
        caveat: Option<&str>,
        expiration: bool,
    ) -> bool {
        self.allowed.iter().any(|a| {
            a.type_name == subject_type
                && a.caveat.as_deref() == caveat
                && a.expiration == expiration
                && match (&a.kind, subject_relation) {
                    (AllowedKind::Direct, None) => !wildcard,
                    (AllowedKind::Wildcard, None) => wildcard,
                    (AllowedKind::SubjectRelation(r), Some(s)) => !wildcard && r == s,
                    _ => false,
                }
        })
    }

    /// The distinct subject sets (`type#relation`) the relation allows, in declaration order:
    /// what a check follows from it (an allowed subject set may repeat with another caveat or
    /// with expiration).
    pub fn subject_sets(&self) -> Vec<(&str, &str)> {
        let mut sets: Vec<(&str, &str)> = Vec::new();
        for a in &self.allowed {
            if let AllowedKind::SubjectRelation(r) = &a.kind {
                let pair = (a.type_name.as_str(), r.as_str());
                if !sets.contains(&pair) {
                    sets.push(pair);
                }
            }
        }
        sets
    }

    /// Does any allowed type carry a wildcard?
    pub fn has_wildcard(&self) -> bool {
        self.allowed.iter().any(|a| a.kind == AllowedKind::Wildcard)
    }
}

/// One allowed subject type of a relation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowedType {
    /// the subject's definition
    pub type_name: String,
    /// plain, wildcard or subject relation
    pub kind: AllowedKind,
    /// the caveat relationships of this type must carry (`with cav`)
    pub caveat: Option<String>,
    /// must relationships of this type carry an expiration (`with expiration`)?
    pub expiration: bool,
}

impl fmt::Display for AllowedType {
    /// SpiceDB's spelling: `user`, `user:*`, `group#member`, `user with cav`,
    /// `user with expiration`, `user with cav and expiration`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.type_name)?;
        match &self.kind {
            AllowedKind::Direct => {}
            AllowedKind::Wildcard => write!(f, ":*")?,
            AllowedKind::SubjectRelation(r) => write!(f, "#{r}")?,
        }
        match (&self.caveat, self.expiration) {
            (Some(c), true) => write!(f, " with {c} and expiration"),
            (Some(c), false) => write!(f, " with {c}"),
            (None, true) => write!(f, " with expiration"),
            (None, false) => Ok(()),
        }
    }
}

/// How an allowed type names its subjects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllowedKind {
    /// plain objects `user:ann` (`user` and `user#...` both compile to this)
    Direct,
    /// the public wildcard `user:*`
    Wildcard,
    /// subject sets `group:eng#member`
    SubjectRelation(String),
}

/// A permission: a name for an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// the permission name
    pub name: String,
    /// the comments before it (empty if none)
    pub comment: String,
    /// what it computes
    pub expr: Expr,
}

/// Which objects an arrow's right side must hold on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArrowKind {
    /// `->` and `.any(...)`: on at least one object reached
    Any,
    /// `.all(...)`: on every object reached
    All,
}

/// A permission expression (a Zanzibar userset rewrite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `nil`: nobody
    Nil,
    /// `self`: the resource itself, as a subject
    Self_,
    /// a relation or permission of the same definition
    Computed(String),
    /// `tupleset->computed`: follow `tupleset` to objects and evaluate `computed` there
    Arrow {
        /// a relation of the same definition
        tupleset: String,
        /// a relation or permission of the objects reached
        computed: String,
        /// any or all of them
        kind: ArrowKind,
    },
    /// `a + b + ...` (flattened: no child is itself a union)
    Union(Vec<Expr>),
    /// `a & b & ...` (flattened: no child is itself an intersection)
    Intersection(Vec<Expr>),
    /// `a - b`
    Exclusion(Box<Expr>, Box<Expr>),
}

impl Expr {
    fn fmt_nested(&self, f: &mut fmt::Formatter<'_>, nested: bool) -> fmt::Result {
        match self {
            Expr::Nil => write!(f, "nil"),
            Expr::Self_ => write!(f, "self"),
            Expr::Computed(n) => write!(f, "{n}"),
            Expr::Arrow {
                tupleset,
                computed,
                kind: ArrowKind::Any,
            } => write!(f, "{tupleset}->{computed}"),
            Expr::Arrow {
                tupleset,
                computed,
                kind: ArrowKind::All,
            } => write!(f, "{tupleset}.all({computed})"),
            Expr::Union(items) => write_operation(f, items.iter(), "+", nested),
            Expr::Intersection(items) => write_operation(f, items.iter(), "&", nested),
            Expr::Exclusion(l, r) => write_operation(f, [&**l, &**r].into_iter(), "-", nested),
        }
    }
}

fn write_operation<'e>(
    f: &mut fmt::Formatter<'_>,
    items: impl Iterator<Item = &'e Expr>,
    op: &str,
    nested: bool,
) -> fmt::Result {
    if nested {
        write!(f, "(")?;
    }
    for (i, e) in items.enumerate() {
        if i > 0 {
            write!(f, " {op} ")?;
        }
        e.fmt_nested(f, true)?;
    }
    if nested {
        write!(f, ")")?;
    }
    Ok(())
}

impl fmt::Display for Expr {
    /// Schema syntax with every nested operation in parentheses, so precedence never matters:
    /// `(viewer + edit + parent->view) - banned` prints as `(viewer + edit + parent->view) - banned`
    /// and `a - b + c` as `a - (b + c)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_nested(f, false)
    }
}

/// A caveat definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaveatDef {
    /// the caveat name
    pub name: String,
    /// the comments before it (empty if none)
    pub comment: String,
    /// its parameters, in source order
    pub parameters: Vec<CaveatParam>,
    /// the CEL expression exactly as written (not evaluated by this layer)
    pub expression: String,
}

impl CaveatDef {
    /// The parameter called `name`.
    pub fn parameter(&self, name: &str) -> Option<&CaveatParam> {
        self.parameters.iter().find(|p| p.name == name)
    }
}

/// One caveat parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaveatParam {
    /// its name
    pub name: String,
    /// its type
    pub type_: CaveatType,
}

/// A caveat parameter type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaveatType {
    /// `any`
    Any,
    /// `bool`
    Bool,
    /// `string`
    String,
    /// `int` (64-bit signed)
    Int,
    /// `uint` (64-bit unsigned)
    Uint,
    /// `double`
    Double,
    /// `bytes`
    Bytes,
    /// `duration`
    Duration,
    /// `timestamp`
    Timestamp,
    /// `ipaddress`
    IpAddress,
    /// `list<T>`
    List(Box<CaveatType>),
    /// `map<T>` (keys are strings)
    Map(Box<CaveatType>),
}

impl CaveatType {
    /// The scalar type called `name` (not `list` or `map`).
    pub fn scalar(name: &str) -> Option<CaveatType> {
        Some(match name {
            "any" => CaveatType::Any,
            "bool" => CaveatType::Bool,
            "string" => CaveatType::String,
            "int" => CaveatType::Int,
            "uint" => CaveatType::Uint,
            "double" => CaveatType::Double,
            "bytes" => CaveatType::Bytes,
            "duration" => CaveatType::Duration,
            "timestamp" => CaveatType::Timestamp,
            "ipaddress" => CaveatType::IpAddress,
            _ => return None,
        })
    }
}

impl fmt::Display for CaveatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaveatType::Any => write!(f, "any"),
            CaveatType::Bool => write!(f, "bool"),
            CaveatType::String => write!(f, "string"),
            CaveatType::Int => write!(f, "int"),
            CaveatType::Uint => write!(f, "uint"),
            CaveatType::Double => write!(f, "double"),
            CaveatType::Bytes => write!(f, "bytes"),
            CaveatType::Duration => write!(f, "duration"),
            CaveatType::Timestamp => write!(f, "timestamp"),
            CaveatType::IpAddress => write!(f, "ipaddress"),
            CaveatType::List(t) => write!(f, "list<{t}>"),
            CaveatType::Map(t) => write!(f, "map<{t}>"),
        }
    }
}

// ---- schema changes ----

/// What replacing `old` with `new` would orphan: one check per definition, relation or allowed
/// subject type that `old` has and `new` lacks, each of which must find no stored relationship.
///
/// - A deleted definition: no relationship under it, and none with it as subject type.
/// - A deleted relation (including one turned into a permission): none under it, and none
///   using it as a subject relation (`type:id#relation`).
/// - A removed allowed type: none with that subject type and kind (plain `user`, wildcard
///   `user:*`, or subject set `group#member`), narrowed by caveat to the variants that are gone:
///   `user with cav` removed while plain `user` stays checks only relationships carrying `cav`;
///   plain `user` removed while `user with cav` stays checks only uncaveated ones; if every
///   variant of the type and kind is gone, any caveat counts.
///
/// Not checked: the expiration trait (`user with expiration` becoming `user`, or the reverse),
/// which changes what may be written, not what stored data means. Like SpiceDB's query, the
/// check for a removed plain `user` also counts `user:*` relationships (the filter has no
/// "any id but `*`").
///
/// Checks come in a stable order (by definition name, then source order).
pub fn orphan_checks(old: &CompiledSchema, new: &CompiledSchema) -> Vec<OrphanCheck> {
    let mut checks = Vec::new();
    for (name, old_def) in &old.definitions {
        let Some(new_def) = new.definition(name) else {
            checks.push(OrphanCheck {
                filter: RelationshipFilter {
                    resource_type: Some(name.clone()),
                    ..RelationshipFilter::default()
                },
                caveat: CaveatMatch::Any,
                description: format!(
                    "cannot delete object definition `{name}`, as at least one relationship exists under it"
                ),
            });
            checks.push(OrphanCheck {
                filter: RelationshipFilter {
                    subject: Some(SubjectFilter {
                        subject_type: name.clone(),
                        subject_id: None,
                        relation: SubjectRelationFilter::Any,
                    }),
                    ..RelationshipFilter::default()
                },
                caveat: CaveatMatch::Any,
                description: format!(
                    "cannot delete object definition `{name}`, as at least one relationship references it as part of a subject"
                ),
            });
            continue;
        };
        for old_rel in &old_def.relations {
            match new_def.relation(&old_rel.name) {
                None => relation_deleted(&mut checks, name, &old_rel.name),
                Some(new_rel) => allowed_types_removed(&mut checks, name, old_rel, new_rel),
            }
        }
    }
    checks
}

fn relation_deleted(checks: &mut Vec<OrphanCheck>, def: &str, rel: &str) {
    checks.push(OrphanCheck {
        filter: RelationshipFilter {
            resource_type: Some(def.to_string()),
            relation: Some(rel.to_string()),
            ..RelationshipFilter::default()
        },
        caveat: CaveatMatch::Any,
        description: format!(
            "cannot delete relation `{rel}` in object definition `{def}`, as at least one relationship exists under it"
        ),
    });
    checks.push(OrphanCheck {
        filter: RelationshipFilter {
            subject: Some(SubjectFilter {
                subject_type: def.to_string(),
                subject_id: None,
                relation: SubjectRelationFilter::Relation(rel.to_string()),
            }),
            ..RelationshipFilter::default()
        },
        caveat: CaveatMatch::Any,
        description: format!(
            "cannot delete relation `{rel}` in object definition `{def}`, as at least one relationship references it as part of a subject"
        ),
    });
}

fn allowed_types_removed(
    checks: &mut Vec<OrphanCheck>,
    def: &str,
    old_rel: &Relation,
    new_rel: &Relation,
) {
    // Group the old allowed types by (type, kind), keeping source order.
    let mut groups: Vec<(&str, &AllowedKind)> = Vec::new();
    for a in &old_rel.allowed {
        let key = (a.type_name.as_str(), &a.kind);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (type_name, kind) in groups {
        let in_group = |a: &&AllowedType| a.type_name == type_name && a.kind == *kind;
        let kept_caveats: Vec<&Option<String>> = new_rel
            .allowed
            .iter()
            .filter(in_group)
            .map(|a| &a.caveat)
            .collect();
        let (subject_id, relation) = match kind {
            AllowedKind::Direct => (None, SubjectRelationFilter::Ellipsis),
            AllowedKind::Wildcard => (Some("*".to_string()), SubjectRelationFilter::Ellipsis),
            AllowedKind::SubjectRelation(r) => (None, SubjectRelationFilter::Relation(r.clone())),
        };
        let filter = RelationshipFilter {
            resource_type: Some(def.to_string()),
            relation: Some(old_rel.name.clone()),
            subject: Some(SubjectFilter {
                subject_type: type_name.to_string(),
                subject_id,
                relation,
            }),
            ..RelationshipFilter::default()
        };
        let describe = |shown: &AllowedType| {
            format!(
                "cannot remove allowed type `{shown}` from relation `{}` in object definition `{def}`, as a relationship exists with it",
                old_rel.name
            )
        };
        if kept_caveats.is_empty() {
            let shown = AllowedType {
                type_name: type_name.to_string(),
                kind: kind.clone(),
                caveat: None,
                expiration: false,
            };
            checks.push(OrphanCheck {
                filter,
                caveat: CaveatMatch::Any,
                description: describe(&shown),
            });
            continue;
        }
        let mut reported: Vec<&Option<String>> = Vec::new();
        for gone in old_rel.allowed.iter().filter(in_group) {
            if kept_caveats.contains(&&gone.caveat) || reported.contains(&&gone.caveat) {
                continue;
            }
            reported.push(&gone.caveat);
            checks.push(OrphanCheck {
                filter: filter.clone(),
                caveat: match &gone.caveat {
                    Some(c) => CaveatMatch::Named(c.clone()),
                    None => CaveatMatch::Uncaveated,
                },
                description: describe(gone),
            });
        }
    }
}

/// Caveat changes WriteSchema refuses whatever is stored (SpiceDB's `sanityCheckCaveatChanges`):
/// removing a parameter, or changing its type, on a caveat both schemas have. Stored
/// relationships may carry context typed by the old parameter. Returns the messages, in order.
pub fn incompatible_caveat_changes(old: &CompiledSchema, new: &CompiledSchema) -> Vec<String> {
    let mut out = Vec::new();
    for (name, old_cav) in &old.caveats {
        let Some(new_cav) = new.caveat(name) else {
            continue;
        };
        for p in &old_cav.parameters {
            match new_cav.parameter(&p.name) {
                None => out.push(format!(
                    "cannot remove parameter `{}` on caveat `{name}`",
                    p.name
                )),
                Some(np) if np.type_ != p.type_ => out.push(format!(
                    "cannot change the type of parameter `{}` on caveat `{name}`",
                    p.name
                )),
                Some(_) => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Relationship, parse_relationship};

    /// Would `rel` make `check` fail? (What the store evaluates.)
    fn hits(check: &OrphanCheck, rel: &str) -> bool {
        let rel: Relationship = parse_relationship(rel).unwrap();
        check.filter.matches_relationship(&rel) && check.caveat.matches(&rel)
    }

    fn rel(name: &str, allowed: Vec<AllowedType>) -> Relation {
        Relation {
            name: name.into(),
            comment: String::new(),
            allowed,
        }
    }

    fn at(
        type_name: &str,
        kind: AllowedKind,
        caveat: Option<&str>,
        expiration: bool,
    ) -> AllowedType {
        AllowedType {
            type_name: type_name.into(),
            kind,
            caveat: caveat.map(str::to_string),
            expiration,
        }
    }

    fn schema(defs: Vec<Definition>) -> CompiledSchema {
        let mut s = CompiledSchema::empty();
        for d in defs {
            s.definitions.insert(d.name.clone(), d);
        }
        s
    }

    #[test]
    fn definition_index() {
        let d = Definition::new(
            "doc",
            "",
            vec![rel(
                "viewer",
                vec![at("user", AllowedKind::Direct, None, false)],
            )],
            vec![Permission {
                name: "view".into(),
                comment: String::new(),
                expr: Expr::Computed("viewer".into()),
            }],
        );
        assert!(d.relation("viewer").is_some());
        assert!(d.relation("view").is_none());
        assert!(d.permission("view").is_some());
        assert!(d.permission("viewer").is_none());
        assert!(matches!(d.member("view"), Some(Member::Permission(_))));
        assert_eq!(
            d.member("viewer").map(|m| m.name().to_string()),
            Some("viewer".into())
        );
        assert!(d.member("nope").is_none());
        let s = schema(vec![d]);
        assert!(s.has_member("doc", "view"));
        assert!(!s.has_member("doc", "edit"));
        assert!(!s.has_member("folder", "view"));
    }

    #[test]
    fn displays() {
        assert_eq!(
            at("user", AllowedKind::Wildcard, None, false).to_string(),
            "user:*"
        );
        assert_eq!(
            at(
                "group",
                AllowedKind::SubjectRelation("member".into()),
                Some("c"),
                true
            )
            .to_string(),
            "group#member with c and expiration"
        );
        assert_eq!(
            at("user", AllowedKind::Direct, None, true).to_string(),
            "user with expiration"
        );
        assert_eq!(
            CaveatType::Map(Box::new(CaveatType::List(Box::new(CaveatType::IpAddress))))
                .to_string(),
            "map<list<ipaddress>>"
        );
        let e = Expr::Exclusion(
            Box::new(Expr::Computed("a".into())),
            Box::new(Expr::Union(vec![
                Expr::Computed("b".into()),
                Expr::Arrow {
                    tupleset: "p".into(),
                    computed: "v".into(),
                    kind: ArrowKind::All,
                },
                Expr::Intersection(vec![Expr::Nil, Expr::Self_]),
            ])),
        );
        assert_eq!(e.to_string(), "a - (b + p.all(v) + (nil & self))");
    }

    #[test]
    fn allows_is_exact() {
        let r = rel(
            "viewer",
            vec![
                at("user", AllowedKind::Direct, None, false),
                at("user", AllowedKind::Wildcard, None, false),
                at(
                    "group",
                    AllowedKind::SubjectRelation("member".into()),
                    Some("c"),
                    false,
                ),
                at("team", AllowedKind::Direct, None, true),
            ],
        );
        assert!(r.allows("user", None, false, None, false));
        assert!(r.allows("user", None, true, None, false));
        assert!(!r.allows("user", None, false, Some("c"), false));
        assert!(!r.allows("user", Some("member"), false, None, false));
        assert!(r.allows("group", Some("member"), false, Some("c"), false));
        assert!(!r.allows("group", Some("member"), false, None, false));
        assert!(!r.allows("group", None, false, Some("c"), false));
        assert!(r.allows("team", None, false, None, true));
        assert!(!r.allows("team", None, false, None, false));
        assert_eq!(r.subject_sets(), [("group", "member")]);
        assert!(r.has_wildcard());
    }

    #[test]
    fn orphans_of_deleted_definitions_and_relations() {
        let old = schema(vec![
            Definition::new("user", "", vec![], vec![]),
            Definition::new(
                "doc",
                "",
                vec![
                    rel("viewer", vec![at("user", AllowedKind::Direct, None, false)]),
                    rel("owner", vec![at("user", AllowedKind::Direct, None, false)]),
                ],
                vec![],
            ),
        ]);
        let new = schema(vec![Definition::new(
            "doc",
            "",
            vec![rel(
                "viewer",
                vec![at("user", AllowedKind::Direct, None, false)],
            )],
            vec![],
        )]);
        let checks = orphan_checks(&old, &new);
        let descs: Vec<_> = checks.iter().map(|c| c.description.as_str()).collect();
        assert_eq!(
            descs,
            vec![
                "cannot delete relation `owner` in object definition `doc`, as at least one relationship exists under it",
                "cannot delete relation `owner` in object definition `doc`, as at least one relationship references it as part of a subject",
                "cannot delete object definition `user`, as at least one relationship exists under it",
                "cannot delete object definition `user`, as at least one relationship references it as part of a subject",
            ]
        );
        let r = "doc:1#owner@user:ann";
        assert!(hits(&checks[0], r));
        assert!(!hits(&checks[1], r));
        assert!(hits(&checks[3], r));
        assert!(orphan_checks(&old, &old).is_empty());
    }

    #[test]
    fn orphans_of_removed_allowed_types() {
        let both = vec![
            at("user", AllowedKind::Direct, None, false),
            at("user", AllowedKind::Direct, Some("cav"), false),
            at("user", AllowedKind::Wildcard, None, false),
            at(
                "group",
                AllowedKind::SubjectRelation("member".into()),
                None,
                false,
            ),
        ];
        let old = schema(vec![Definition::new(
            "doc",
            "",
            vec![rel("viewer", both.clone())],
            vec![],
        )]);

        // `user with cav` removed, plain `user` kept: only relationships carrying `cav`.
        let mut kept = both.clone();
        kept.remove(1);
        let new = schema(vec![Definition::new(
            "doc",
            "",
            vec![rel("viewer", kept)],
            vec![],
        )]);
        let checks = orphan_checks(&old, &new);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].caveat, CaveatMatch::Named("cav".into()));
        assert_eq!(
            checks[0].description,
            "cannot remove allowed type `user with cav` from relation `viewer` in object definition `doc`, as a relationship exists with it"
        );
        assert!(hits(&checks[0], "doc:1#viewer@user:ann[cav]"));
        assert!(!hits(&checks[0], "doc:1#viewer@user:ann"));

        // plain `user` removed, `user with cav` kept: only uncaveated relationships, and not `user:*`.
        let mut kept = both.clone();
        kept.remove(0);
        let new = schema(vec![Definition::new(
            "doc",
            "",
            vec![rel("viewer", kept)],
            vec![],
        )]);
        let checks = orphan_checks(&old, &new);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].caveat, CaveatMatch::Uncaveated);
        assert!(hits(&checks[0], "doc:1#viewer@user:ann"));
        // Like SpiceDB's query, a removed plain `user` also counts `user:*` relationships.
        assert!(hits(&checks[0], "doc:1#viewer@user:*"));
        assert!(!hits(&checks[0], "doc:1#viewer@user:ann[cav]"));

        // every `user` variant, the wildcard and the subject relation removed.
        let new = schema(vec![Definition::new(
            "doc",
            "",
            vec![rel(
                "viewer",
                vec![at("team", AllowedKind::Direct, None, false)],
            )],
            vec![],
        )]);
        let checks = orphan_checks(&old, &new);
        let descs: Vec<_> = checks.iter().map(|c| c.description.as_str()).collect();
        assert_eq!(
            descs,
            vec![
                "cannot remove allowed type `user` from relation `viewer` in object definition `doc`, as a relationship exists with it",
                "cannot remove allowed type `user:*` from relation `viewer` in object definition `doc`, as a relationship exists with it",
                "cannot remove allowed type `group#member` from relation `viewer` in object definition `doc`, as a relationship exists with it",
            ]
        );
        assert!(checks.iter().all(|c| c.caveat == CaveatMatch::Any));
        assert!(hits(&checks[0], "doc:1#viewer@user:ann[cav]"));
        assert!(hits(&checks[1], "doc:1#viewer@user:*"));
        assert!(hits(&checks[2], "doc:1#viewer@group:g#member"));
        assert!(!hits(&checks[2], "doc:1#viewer@group:g"));
    }

    #[test]
    fn expiration_changes_are_not_checked() {
        let with = |exp: bool| {
            schema(vec![Definition::new(
                "doc",
                "",
                vec![rel(
                    "viewer",
                    vec![at("user", AllowedKind::Direct, None, exp)],
                )],
                vec![],
            )])
        };
        assert!(orphan_checks(&with(true), &with(false)).is_empty());
        assert!(orphan_checks(&with(false), &with(true)).is_empty());
        // A caveat variant is one check, however many expiration variants it had.
        let old = schema(vec![Definition::new(
            "doc",
            "",
            vec![rel(
                "viewer",
                vec![
                    at("user", AllowedKind::Direct, Some("cav"), false),
                    at("user", AllowedKind::Direct, Some("cav"), true),
                    at("user", AllowedKind::Direct, None, false),
                ],
            )],
            vec![],
        )]);
        let checks = orphan_checks(&old, &with(false));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].caveat, CaveatMatch::Named("cav".into()));
    }

    #[test]
    fn caveat_parameter_changes() {
        let cav = |params: Vec<(&str, CaveatType)>| CaveatDef {
            name: "c".into(),
            comment: String::new(),
            parameters: params
                .into_iter()
                .map(|(n, t)| CaveatParam {
                    name: n.into(),
                    type_: t,
                })
                .collect(),
            expression: "a".into(),
        };
        let mut old = CompiledSchema::empty();
        old.caveats.insert(
            "c".into(),
            cav(vec![("a", CaveatType::Int), ("b", CaveatType::String)]),
        );
        let mut new = CompiledSchema::empty();
        new.caveats.insert(
            "c".into(),
            cav(vec![("a", CaveatType::Uint), ("z", CaveatType::Bool)]),
        );
        assert_eq!(
            incompatible_caveat_changes(&old, &new),
            vec![
                "cannot change the type of parameter `a` on caveat `c`",
                "cannot remove parameter `b` on caveat `c`",
            ]
        );
        assert!(incompatible_caveat_changes(&old, &old).is_empty());
        assert!(incompatible_caveat_changes(&old, &CompiledSchema::empty()).is_empty());
    }
}
