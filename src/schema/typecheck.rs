//! The type checker: the parse tree checked and resolved into the [`super::compiled`] schema.
//!
//! The checks are those WriteSchema runs (SpiceDB's compiler and `pkg/schema` type system), each
//! reported at the offending item. What SpiceDB's compiler refuses is a [`SchemaError::Parse`]
//! (duplicate top-level names, malformed caveat declarations, unknown partials); what its type
//! system refuses is a [`SchemaError::Type`]. Checks run in a fixed order — caveats, then
//! duplicate member names, then each definition's members in source order, then permission
//! cycles, then the length of reference chains — so the same schema always reports the same
//! first error.
//!
//! One check goes beyond SpiceDB's WriteSchema: a chain of references (names, arrows, subject
//! relations) longer than [`MAX_PERMISSION_CHAIN`] is refused as a parse error, so that no schema
//! makes the engine's walks over it unbounded. An arrow `t->c` whose right side `c` exists on
//! none of the types `t` allows is accepted, as SpiceDB accepts it (its tools only warn).
//!
//! Where SpiceDB's checks are narrower than they might be, these are too: a subject relation of
//! the relation's own definition (`relation lead: team#member`) is only checked to exist, not for
//! the wildcards it includes; and permission type annotations are checked only under
//! `use typechecking` (SpiceDB drops them unchecked otherwise). Under it, an annotated
//! permission must name every subject type it can reach (`permission view: user = viewer` with
//! `relation viewer: user | team` is refused).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use super::ast::{
    ArrowFn, CaveatAst, CaveatTypeAst, DefinitionAst, ExprAst, Item, MemberAst, Name,
    PermissionAst, RelationAst, SchemaFile, TypeRefKind,
};
use super::celtype;
use super::compiled::{
    AllowedKind, AllowedType, ArrowKind, CaveatDef, CaveatParam, CaveatType, CompiledSchema,
    Definition, Expr, Permission, Relation,
};
use super::error::{Position, SchemaError};
use super::limits::MAX_PERMISSION_CHAIN;
use super::parser::MAX_NESTING;

/// Which checks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// every check WriteSchema runs (plus the chain limit)
    All,
    /// every check, but the completeness of type annotations: for text a store already holds,
    /// which an earlier version may have accepted without it (it changes no evaluation)
    Stored,
    /// only what SpiceDB's compiler refuses, as DiffSchema compiles its comparison schema: no
    /// name resolution, no wildcard, cycle, unused-parameter or chain checks
    CompilerOnly,
}

/// Checks `file` (parsed from `source`) and compiles it.
pub fn typecheck(file: &SchemaFile, source: &str) -> Result<CompiledSchema, SchemaError> {
    check(file, source, Checks::All)
}

/// Checks and compiles `file` (parsed from `source`), text a store already holds: as
/// [`typecheck`], but an annotated permission may reach types its annotation lacks.
pub fn typecheck_stored(file: &SchemaFile, source: &str) -> Result<CompiledSchema, SchemaError> {
    check(file, source, Checks::Stored)
}

/// Compiles `file` (parsed from `source`) with only the checks of SpiceDB's compiler: names
/// need not resolve. What DiffSchema compares a stored schema with; never for storing.
pub fn compile_only(file: &SchemaFile, source: &str) -> Result<CompiledSchema, SchemaError> {
    check(file, source, Checks::CompilerOnly)
}

fn check(file: &SchemaFile, source: &str, checks: Checks) -> Result<CompiledSchema, SchemaError> {
    check_top_level_names(file)?;
    let caveats = check_caveats(file, checks)?;
    let mut checker = Checker::new(file)?;
    checker.annotations_complete = checks == Checks::All;
    if checks != Checks::CompilerOnly {
        for name in &checker.order {
            checker.check_definition(name)?;
        }
        for name in &checker.order {
            checker.check_cycles(name)?;
        }
        checker.check_chains()?;
    }
    let mut definitions = BTreeMap::new();
    for name in &checker.order {
        if let Some(table) = checker.defs.get(name) {
            definitions.insert(name.to_string(), table.lower());
        }
    }
    Ok(CompiledSchema {
        source: source.to_string(),
        definitions,
        caveats,
        use_expiration: file.uses("expiration"),
    })
}

/// Definitions and caveats share one namespace; partials have their own.
fn check_top_level_names(file: &SchemaFile) -> Result<(), SchemaError> {
    let mut names = HashSet::new();
    let mut partials = HashSet::new();
    for item in &file.items {
        let (name, is_partial) = match item {
            Item::Definition(d) => (&d.name, false),
            Item::Caveat(c) => (&c.name, false),
            Item::Partial(p) => (&p.name, true),
        };
        if is_partial {
            if !partials.insert(name.text.as_str()) {
                return Err(SchemaError::parse(
                    format!("found duplicate partial `{}`", name.text),
                    name.pos,
                ));
            }
        } else if !names.insert(name.text.as_str()) {
            return Err(SchemaError::parse(
                format!(
                    "found name reused between multiple definitions and/or caveats: `{}`",
                    name.text
                ),
                name.pos,
            ));
        }
    }
    Ok(())
}

// ---- caveats ----

fn check_caveats(
    file: &SchemaFile,
    checks: Checks,
) -> Result<BTreeMap<String, CaveatDef>, SchemaError> {
    let mut out = BTreeMap::new();
    for item in &file.items {
        if let Item::Caveat(c) = item {
            out.insert(c.name.text.clone(), check_caveat(c, checks)?);
        }
    }
    Ok(out)
}

fn check_caveat(c: &CaveatAst, checks: Checks) -> Result<CaveatDef, SchemaError> {
    let name = &c.name.text;
    if c.params.is_empty() {
        return Err(SchemaError::parse(
            format!("caveat `{name}` must have at least one parameter defined"),
            c.name.pos,
        ));
    }
    let mut parameters: Vec<CaveatParam> = Vec::with_capacity(c.params.len());
    for p in &c.params {
        if parameters.iter().any(|q| q.name == p.name.text) {
            return Err(SchemaError::parse(
                format!(
                    "duplicate parameter `{}` defined on caveat `{name}`",
                    p.name.text
                ),
                p.name.pos,
            ));
        }
        let type_ = caveat_type(&p.type_).map_err(|(msg, pos)| {
            SchemaError::parse(
                format!(
                    "invalid type for caveat parameter `{}` on caveat `{name}`: {msg}",
                    p.name.text
                ),
                pos,
            )
        })?;
        parameters.push(CaveatParam {
            name: p.name.text.clone(),
            type_,
        });
    }
    // As SpiceDB, the expression must type-check over the parameters and give a bool (this
    // is its compiler's check, before the type system's unused parameters).
    if let Err(e) = celtype::check_expression(&c.expression, &parameters) {
        let message = match e.offset {
            Some(offset) => {
                let (line, column) = position_in(&c.expression, c.expression_pos, offset);
                format!(
                    "invalid expression for caveat `{name}`: ERROR: {name}:{line}:{column}: {}",
                    e.message
                )
            }
            None => format!("invalid expression for caveat `{name}`: {}", e.message),
        };
        return Err(SchemaError::parse(message, c.expression_pos));
    }
    for p in c.params.iter().filter(|_| checks != Checks::CompilerOnly) {
        if !c.identifiers.contains(&p.name.text) {
            return Err(SchemaError::type_error(
                format!("parameter `{}` for caveat `{name}` is unused", p.name.text),
                p.name.pos,
            ));
        }
    }
    Ok(CaveatDef {
        name: name.clone(),
        comment: c.comment.clone(),
        parameters,
        expression: c.expression.clone(),
    })
}

/// The 1-based line and column, in the schema, of byte `offset` of a caveat expression that
/// starts at `start` (as cel-go's messages in SpiceDB count them).
fn position_in(expression: &str, start: Position, offset: usize) -> (usize, usize) {
    let before = expression.get(..offset).unwrap_or(expression);
    match before.rfind('\n') {
        None => (start.line + 1, start.column + 1 + before.chars().count()),
        Some(nl) => (
            start.line + 1 + before.matches('\n').count(),
            before.get(nl + 1..).map_or(0, |l| l.chars().count()) + 1,
        ),
    }
}

/// Resolves a parameter type (depth bounded by the parser).
fn caveat_type(t: &CaveatTypeAst) -> Result<CaveatType, (String, Position)> {
    let name = t.name.text.as_str();
    let generic = |wrap: fn(Box<CaveatType>) -> CaveatType| match t.args.as_slice() {
        [arg] => Ok(wrap(Box::new(caveat_type(arg)?))),
        args => Err((
            format!(
                "type `{name}` takes exactly 1 type argument, found {}",
                args.len()
            ),
            t.name.pos,
        )),
    };
    match name {
        "list" => generic(CaveatType::List),
        "map" => generic(CaveatType::Map),
        _ => match CaveatType::scalar(name) {
            Some(s) if t.args.is_empty() => Ok(s),
            Some(_) => Err((
                format!("type `{name}` does not take type arguments"),
                t.name.pos,
            )),
            None => Err((format!("unknown type `{name}`"), t.name.pos)),
        },
    }
}

// ---- definitions ----

/// A member of a definition after partials are spliced in.
#[derive(Clone, Copy)]
enum MemberRef<'f> {
    Relation(&'f RelationAst),
    Permission(&'f PermissionAst),
}

impl<'f> MemberRef<'f> {
    fn name(&self) -> &'f Name {
        match self {
            MemberRef::Relation(r) => &r.name,
            MemberRef::Permission(p) => &p.name,
        }
    }
}

/// One definition's members, resolved.
struct DefTable<'f> {
    ast: &'f DefinitionAst,
    members: Vec<MemberRef<'f>>,
    by_name: HashMap<&'f str, MemberRef<'f>>,
}

impl<'f> DefTable<'f> {
    fn relation(&self, name: &str) -> Option<&'f RelationAst> {
        match self.by_name.get(name)? {
            MemberRef::Relation(r) => Some(r),
            MemberRef::Permission(_) => None,
        }
    }

    fn lower(&self) -> Definition {
        let mut relations = Vec::new();
        let mut permissions = Vec::new();
        for m in &self.members {
            match m {
                MemberRef::Relation(r) => relations.push(Relation {
                    name: r.name.text.clone(),
                    comment: r.comment.clone(),
                    allowed: r
                        .allowed
                        .iter()
                        .map(|t| AllowedType {
                            type_name: t.type_name.text.clone(),
                            kind: match &t.kind {
                                TypeRefKind::Direct | TypeRefKind::Ellipsis => AllowedKind::Direct,
                                TypeRefKind::Wildcard => AllowedKind::Wildcard,
                                TypeRefKind::Relation(n) => {
                                    AllowedKind::SubjectRelation(n.text.clone())
                                }
                            },
                            caveat: t.caveat.as_ref().map(|c| c.text.clone()),
                            expiration: t.expiration,
                        })
                        .collect(),
                }),
                MemberRef::Permission(p) => permissions.push(Permission {
                    name: p.name.text.clone(),
                    comment: p.comment.clone(),
                    expr: lower_expr(&p.expr),
                }),
            }
        }
        Definition::new(
            self.ast.name.text.clone(),
            self.ast.comment.clone(),
            relations,
            permissions,
        )
    }
}

/// Compiles an expression, flattening nested unions and intersections.
fn lower_expr(e: &ExprAst) -> Expr {
    fn flatten(items: &[ExprAst], union: bool) -> Vec<Expr> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match (lower_expr(item), union) {
                (Expr::Union(inner), true) | (Expr::Intersection(inner), false) => {
                    out.extend(inner);
                }
                (other, _) => out.push(other),
            }
        }
        out
    }
    match e {
        ExprAst::Nil(_) => Expr::Nil,
        ExprAst::SelfRef(_) => Expr::Self_,
        ExprAst::Ident(n) => Expr::Computed(n.text.clone()),
        ExprAst::Arrow {
            tupleset,
            computed,
            function,
        } => Expr::Arrow {
            tupleset: tupleset.text.clone(),
            computed: computed.text.clone(),
            kind: match function {
                ArrowFn::Arrow | ArrowFn::Any => ArrowKind::Any,
                ArrowFn::All => ArrowKind::All,
            },
        },
        ExprAst::Union(items) => Expr::Union(flatten(items, true)),
        ExprAst::Intersection(items) => Expr::Intersection(flatten(items, false)),
        ExprAst::Exclusion(l, r) => {
            Expr::Exclusion(Box::new(lower_expr(l)), Box::new(lower_expr(r)))
        }
    }
}

/// How a relation comes to include a wildcard: the wildcard's type and the relation
/// (`type#relation`) that allows it.
#[derive(Clone)]
struct WildcardPath {
    wildcard_type: String,
    via: String,
}

struct Checker<'f> {
    defs: HashMap<&'f str, DefTable<'f>>,
    /// definition names in source order
    order: Vec<&'f str>,
    caveats: HashSet<&'f str>,
    /// `use typechecking` was written: permission type annotations are checked
    typechecking: bool,
    /// check that annotated permissions reach no type their annotation lacks
    annotations_complete: bool,
    /// definition -> relation -> how it comes to include a wildcard, for every relation that
    /// does (see [`wildcard_paths`])
    wildcards: HashMap<&'f str, HashMap<&'f str, WildcardPath>>,
}

impl<'f> Checker<'f> {
    /// Splices partials into definitions and indexes every definition's members.
    fn new(file: &'f SchemaFile) -> Result<Checker<'f>, SchemaError> {
        let mut partials = HashMap::new();
        let mut caveats = HashSet::new();
        for item in &file.items {
            match item {
                Item::Partial(p) => {
                    partials.insert(p.name.text.as_str(), p);
                }
                Item::Caveat(c) => {
                    caveats.insert(c.name.text.as_str());
                }
                Item::Definition(_) => {}
            }
        }
        // Partials are checked even when unused, like definitions.
        for item in &file.items {
            if let Item::Partial(p) = item {
                let mut stack = vec![p.name.text.as_str()];
                splice(&p.members, &partials, &mut stack, &mut Vec::new())?;
            }
        }
        let mut defs = HashMap::new();
        let mut order = Vec::new();
        for item in &file.items {
            let Item::Definition(d) = item else { continue };
            let mut members = Vec::new();
            splice(&d.members, &partials, &mut Vec::new(), &mut members)?;
            let mut by_name = HashMap::new();
            for m in &members {
                let n = m.name();
                if by_name.insert(n.text.as_str(), *m).is_some() {
                    return Err(SchemaError::type_error(
                        format!(
                            "found duplicate relation/permission name `{}` under definition `{}`",
                            n.text, d.name.text
                        ),
                        n.pos,
                    ));
                }
            }
            order.push(d.name.text.as_str());
            defs.insert(
                d.name.text.as_str(),
                DefTable {
                    ast: d,
                    members,
                    by_name,
                },
            );
        }
        let wildcards = wildcard_paths(&defs, &order);
        Ok(Checker {
            defs,
            order,
            caveats,
            typechecking: file.uses("typechecking"),
            annotations_complete: true,
            wildcards,
        })
    }

    fn check_definition(&self, def_name: &str) -> Result<(), SchemaError> {
        let Some(table) = self.defs.get(def_name) else {
            return Ok(());
        };
        for m in &table.members {
            match m {
                MemberRef::Relation(r) => self.check_relation(table, r)?,
                MemberRef::Permission(p) => {
                    // Without `use typechecking` SpiceDB drops type annotations unchecked; with
                    // it, every annotated type must exist, and every type the permission can
                    // reach must be annotated (checked after the expression's names).
                    let annotations: &[Name] = if self.typechecking {
                        &p.annotation
                    } else {
                        &[]
                    };
                    for t in annotations {
                        if !self.defs.contains_key(t.text.as_str()) {
                            return Err(SchemaError::type_error(
                                format!(
                                    "could not lookup definition `{}` for permission `{}`: object definition `{}` not found",
                                    t.text, p.name.text, t.text
                                ),
                                t.pos,
                            ));
                        }
                    }
                    self.check_expr(table, p, &p.expr)?;
                    if self.annotations_complete && !annotations.is_empty() {
                        self.check_annotation(table, p)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses an annotated permission that can reach a subject type its annotation lacks, as
    /// SpiceDB's type system does under `use typechecking`.
    fn check_annotation(
        &self,
        table: &DefTable<'f>,
        p: &'f PermissionAst,
    ) -> Result<(), SchemaError> {
        let def_name = table.ast.name.text.as_str();
        let reachable = self.terminal_types(def_name, &p.name.text);
        let annotated: Vec<&str> = p.annotation.iter().map(|n| n.text.as_str()).collect();
        if let Some(missing) = reachable.iter().find(|t| !annotated.contains(t)) {
            let set: Vec<String> = annotated.iter().map(|t| format!("`{t}`")).collect();
            return Err(SchemaError::type_error(
                format!(
                    "incomplete type annotation on relation `{}` in definition `{def_name}`: `{missing}` found as reachable type, but not contained in provided set [{}]",
                    p.name.text,
                    set.join(", ")
                ),
                p.name.pos,
            ));
        }
        Ok(())
    }

    /// The subject types `def#name` can reach, as SpiceDB's `GetRecursiveTerminalTypesForRelation`
    /// finds them: a relation's plain and wildcard types, and what its subject relations reach; a
    /// permission's names and arrows followed (an arrow on every type its left side allows that
    /// has the right side), all operands of every operation alike. Each member is visited once;
    /// names that do not resolve reach nothing. Iterative, so long chains cannot overflow.
    fn terminal_types(&self, def: &'f str, name: &'f str) -> BTreeSet<&'f str> {
        let mut out = BTreeSet::new();
        let mut seen: HashSet<(&'f str, &'f str)> = HashSet::new();
        let mut pending: Vec<(&'f str, &'f str)> = vec![(def, name)];
        while let Some((def, name)) = pending.pop() {
            if !seen.insert((def, name)) {
                continue;
            }
            let Some(table) = self.defs.get(def) else {
                continue;
            };
            match table.by_name.get(name).copied() {
                None => {}
                Some(MemberRef::Relation(r)) => {
                    for t in &r.allowed {
                        match &t.kind {
                            TypeRefKind::Direct | TypeRefKind::Ellipsis | TypeRefKind::Wildcard => {
                                out.insert(t.type_name.text.as_str());
                            }
                            TypeRefKind::Relation(sub) => {
                                pending.push((t.type_name.text.as_str(), sub.text.as_str()));
                            }
                        }
                    }
                }
                Some(MemberRef::Permission(p)) => {
                    let mut exprs = vec![&p.expr];
                    while let Some(e) = exprs.pop() {
                        match e {
                            ExprAst::Nil(_) | ExprAst::SelfRef(_) => {}
                            ExprAst::Ident(n) => pending.push((def, n.text.as_str())),
                            ExprAst::Arrow {
                                tupleset, computed, ..
                            } => {
                                for t in table
                                    .relation(&tupleset.text)
                                    .map(|r| r.allowed.as_slice())
                                    .unwrap_or_default()
                                {
                                    pending
                                        .push((t.type_name.text.as_str(), computed.text.as_str()));
                                }
                            }
                            ExprAst::Union(items) | ExprAst::Intersection(items) => {
                                exprs.extend(items);
                            }
                            ExprAst::Exclusion(l, r) => {
                                exprs.push(l);
                                exprs.push(r);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn check_relation(&self, table: &DefTable<'f>, r: &RelationAst) -> Result<(), SchemaError> {
        let def_name = &table.ast.name.text;
        let rel_name = &r.name.text;
        if r.allowed.is_empty() {
            return Err(SchemaError::type_error(
                format!(
                    "at least one allowed relation/permission is required to be defined for relation `{rel_name}`"
                ),
                r.name.pos,
            ));
        }
        let mut seen = HashSet::new();
        for t in &r.allowed {
            let type_name = &t.type_name.text;
            let shown = AllowedType {
                type_name: type_name.clone(),
                kind: match &t.kind {
                    TypeRefKind::Direct | TypeRefKind::Ellipsis => AllowedKind::Direct,
                    TypeRefKind::Wildcard => AllowedKind::Wildcard,
                    TypeRefKind::Relation(n) => AllowedKind::SubjectRelation(n.text.clone()),
                },
                caveat: t.caveat.as_ref().map(|c| c.text.clone()),
                expiration: t.expiration,
            }
            .to_string();
            if !seen.insert(shown.clone()) {
                return Err(SchemaError::type_error(
                    format!(
                        "found duplicate allowed subject type `{shown}` on relation `{rel_name}` under definition `{def_name}`"
                    ),
                    t.type_name.pos,
                ));
            }
            let Some(target) = self.defs.get(type_name.as_str()) else {
                return Err(SchemaError::type_error(
                    format!(
                        "could not lookup definition `{type_name}` for relation `{rel_name}`: object definition `{type_name}` not found"
                    ),
                    t.type_name.pos,
                ));
            };
            if let TypeRefKind::Relation(sub) = &t.kind {
                if !target.by_name.contains_key(sub.text.as_str()) {
                    return Err(SchemaError::type_error(
                        format!(
                            "relation/permission `{}` not found under definition `{type_name}`",
                            sub.text
                        ),
                        sub.pos,
                    ));
                }
                // As SpiceDB's type system: a subject relation of the relation's own definition
                // is only checked to exist; only other definitions' subject relations are
                // checked for wildcards they include (`pkg/schema/typesystem_validation.go`).
                if type_name != def_name
                    && let Some(w) = self.wildcard_path(type_name, &sub.text)
                {
                    return Err(SchemaError::type_error(
                        format!(
                            "for relation `{rel_name}`: relation/permission `{type_name}#{}` includes wildcard type `{}` via relation `{}`: wildcard relations cannot be transitively included",
                            sub.text, w.wildcard_type, w.via
                        ),
                        t.type_name.pos,
                    ));
                }
            }
            if let Some(c) = &t.caveat
                && !self.caveats.contains(c.text.as_str())
            {
                return Err(SchemaError::type_error(
                    format!(
                        "could not lookup caveat `{}` for relation `{rel_name}`: caveat `{}` not found",
                        c.text, c.text
                    ),
                    c.pos,
                ));
            }
        }
        Ok(())
    }

    /// Checks the names an expression uses (recursion depth bounded by the parser).
    fn check_expr(
        &self,
        table: &DefTable<'f>,
        perm: &PermissionAst,
        e: &ExprAst,
    ) -> Result<(), SchemaError> {
        let def_name = &table.ast.name.text;
        let not_found = |n: &Name| {
            SchemaError::type_error(
                format!(
                    "relation/permission `{}` not found under definition `{def_name}`",
                    n.text
                ),
                n.pos,
            )
        };
        match e {
            ExprAst::Nil(_) | ExprAst::SelfRef(_) => Ok(()),
            ExprAst::Ident(n) => {
                if table.by_name.contains_key(n.text.as_str()) {
                    Ok(())
                } else {
                    Err(not_found(n))
                }
            }
            ExprAst::Arrow { tupleset, .. } => {
                let Some(member) = table.by_name.get(tupleset.text.as_str()) else {
                    return Err(not_found(tupleset));
                };
                let MemberRef::Relation(_) = member else {
                    return Err(SchemaError::type_error(
                        format!(
                            "under permission `{}` under definition `{def_name}`: permissions cannot be used on the left hand side of an arrow (found `{}`)",
                            perm.name.text, tupleset.text
                        ),
                        tupleset.pos,
                    ));
                };
                if let Some(w) = self.wildcard_path(def_name, &tupleset.text) {
                    return Err(SchemaError::type_error(
                        format!(
                            "for arrow under permission `{}`: relation `{def_name}#{}` includes wildcard type `{}` via relation `{}`: wildcard relations cannot be used on the left side of arrows",
                            perm.name.text, tupleset.text, w.wildcard_type, w.via
                        ),
                        tupleset.pos,
                    ));
                }
                // The right side may exist on none of the left side's types: SpiceDB accepts
                // such an arrow (its development tools only warn) and it contributes nothing.
                Ok(())
            }
            ExprAst::Union(items) | ExprAst::Intersection(items) => items
                .iter()
                .try_for_each(|i| self.check_expr(table, perm, i)),
            ExprAst::Exclusion(l, r) => {
                self.check_expr(table, perm, l)?;
                self.check_expr(table, perm, r)
            }
        }
    }

    /// Does `def#relation` allow a wildcard, directly or through subject relations?
    fn wildcard_path(&self, def: &str, relation: &str) -> Option<&WildcardPath> {
        self.wildcards.get(def)?.get(relation)
    }

    /// Refuses permissions that reach themselves without going through an arrow.
    fn check_cycles(&self, def_name: &str) -> Result<(), SchemaError> {
        let Some(table) = self.defs.get(def_name) else {
            return Ok(());
        };
        // Edges: an alias (a permission that is exactly another permission's name) -> that
        // permission. SpiceDB refuses only alias cycles; a permission that names itself inside
        // a larger expression (`view = viewer + view`) is accepted, and recursion through the
        // data is bounded at query time by the depth budget.
        let perms: Vec<&PermissionAst> = table
            .members
            .iter()
            .filter_map(|m| match m {
                MemberRef::Permission(p) => Some(*p),
                MemberRef::Relation(_) => None,
            })
            .collect();
        let index: HashMap<&str, usize> = perms
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.text.as_str(), i))
            .collect();
        let edges: Vec<Vec<usize>> = perms
            .iter()
            .map(|p| {
                let mut names = Vec::new();
                if let ExprAst::Ident(name) = &p.expr {
                    names.push(name.text.as_str());
                }
                let mut out: Vec<usize> = Vec::new();
                for n in names {
                    if let Some(&j) = index.get(n)
                        && !out.contains(&j)
                    {
                        out.push(j);
                    }
                }
                out
            })
            .collect();
        // Iterative depth-first search: 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; perms.len()];
        for start in 0..perms.len() {
            if state.get(start) != Some(&0) {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            if let Some(s) = state.get_mut(start) {
                *s = 1;
            }
            while let Some(&mut (node, ref mut next_edge)) = stack.last_mut() {
                let succ = edges.get(node).and_then(|e| e.get(*next_edge)).copied();
                *next_edge += 1;
                match succ {
                    None => {
                        if let Some(s) = state.get_mut(node) {
                            *s = 2;
                        }
                        stack.pop();
                    }
                    Some(j) => match state.get(j) {
                        Some(0) => {
                            if let Some(s) = state.get_mut(j) {
                                *s = 1;
                            }
                            stack.push((j, 0));
                        }
                        Some(1) => {
                            let from = stack.iter().position(|&(n, _)| n == j).unwrap_or(0);
                            let mut cycle: Vec<String> = stack
                                .get(from..)
                                .unwrap_or_default()
                                .iter()
                                .filter_map(|&(n, _)| perms.get(n))
                                .map(|p| format!("`{}`", p.name.text))
                                .collect();
                            let first = perms.get(j).map(|p| p.name.clone());
                            if let Some(f) = &first {
                                cycle.push(format!("`{}`", f.text));
                            }
                            return Err(SchemaError::type_error(
                                format!(
                                    "under definition `{def_name}`, there exists a cycle in permissions: {}",
                                    cycle.join(" -> ")
                                ),
                                first.map(|f| f.pos).unwrap_or_default(),
                            ));
                        }
                        _ => {}
                    },
                }
            }
        }
        Ok(())
    }
}

impl Checker<'_> {
    /// Refuses a schema whose longest chain of references is longer than
    /// [`MAX_PERMISSION_CHAIN`]. The graph: every relation and permission is a node; a
    /// permission leads to each relation or permission it names, and an arrow `t->c` to `t` and
    /// to `c` on every type `t` allows; a relation leads to the subject relations it allows
    /// (`group#member`). Recursion (a cycle) is bounded by the data at query time, so a group of
    /// nodes that reach each other counts as all its members, once; the longest chain is then
    /// the heaviest path between groups. Iterative (Tarjan's algorithm with an explicit stack,
    /// groups weighed as they are found) and linear in the size of the graph.
    fn check_chains(&self) -> Result<(), SchemaError> {
        // nodes, in source order
        let mut nodes: Vec<(&str, &Name)> = Vec::new();
        let mut ids: HashMap<(&str, &str), usize> = HashMap::new();
        for def in &self.order {
            let Some(table) = self.defs.get(def) else {
                continue;
            };
            for m in &table.members {
                ids.insert((def, m.name().text.as_str()), nodes.len());
                nodes.push((def, m.name()));
            }
        }
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for def in &self.order {
            let Some(table) = self.defs.get(def) else {
                continue;
            };
            for m in &table.members {
                let Some(&from) = ids.get(&(*def, m.name().text.as_str())) else {
                    continue;
                };
                let mut out = Vec::new();
                match m {
                    MemberRef::Relation(r) => {
                        for t in &r.allowed {
                            if let TypeRefKind::Relation(sub) = &t.kind
                                && let Some(&to) =
                                    ids.get(&(t.type_name.text.as_str(), sub.text.as_str()))
                            {
                                out.push(to);
                            }
                        }
                    }
                    MemberRef::Permission(p) => {
                        let mut pending = vec![&p.expr];
                        while let Some(e) = pending.pop() {
                            match e {
                                ExprAst::Nil(_) | ExprAst::SelfRef(_) => {}
                                ExprAst::Ident(n) => {
                                    out.extend(ids.get(&(*def, n.text.as_str())));
                                }
                                ExprAst::Arrow {
                                    tupleset, computed, ..
                                } => {
                                    out.extend(ids.get(&(*def, tupleset.text.as_str())));
                                    for t in table
                                        .relation(&tupleset.text)
                                        .map(|r| r.allowed.as_slice())
                                        .unwrap_or_default()
                                    {
                                        out.extend(ids.get(&(
                                            t.type_name.text.as_str(),
                                            computed.text.as_str(),
                                        )));
                                    }
                                }
                                ExprAst::Union(items) | ExprAst::Intersection(items) => {
                                    pending.extend(items);
                                }
                                ExprAst::Exclusion(l, r) => {
                                    pending.push(l);
                                    pending.push(r);
                                }
                            }
                        }
                    }
                }
                out.sort_unstable();
                out.dedup();
                if let Some(slot) = edges.get_mut(from) {
                    *slot = out;
                }
            }
        }
        let n = nodes.len();
        const UNSEEN: usize = usize::MAX;
        let mut index = vec![UNSEEN; n];
        let mut low = vec![0usize; n];
        let mut on_stack = vec![false; n];
        let mut group = vec![UNSEEN; n];
        // the weight of the heaviest path starting in each group, by group number
        let mut longest: Vec<usize> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        let mut next = 0usize;
        for root in 0..n {
            if index[root] != UNSEEN {
                continue;
            }
            index[root] = next;
            low[root] = next;
            next += 1;
            stack.push(root);
            on_stack[root] = true;
            let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
            while let Some(&mut (v, ref mut edge)) = calls.last_mut() {
                if let Some(&w) = edges[v].get(*edge) {
                    *edge += 1;
                    if index[w] == UNSEEN {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(parent, _)) = calls.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] != index[v] {
                    continue;
                }
                // `v` closes a group: every group it leads to is already weighed
                let g = longest.len();
                let mut members = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    group[w] = g;
                    members.push(w);
                    if w == v {
                        break;
                    }
                }
                let mut heaviest_next = 0;
                for &m in &members {
                    for &w in &edges[m] {
                        if group[w] != g
                            && let Some(&l) = longest.get(group[w])
                        {
                            heaviest_next = heaviest_next.max(l);
                        }
                    }
                }
                let weight = members.len().saturating_add(heaviest_next);
                longest.push(weight);
                if weight > MAX_PERMISSION_CHAIN {
                    // reported at the first member (in source order) of the group that starts
                    // the chain
                    let first = members.iter().min().copied().unwrap_or(v);
                    let (def, name) = nodes[first];
                    return Err(SchemaError::parse(
                        format!(
                            "under definition `{def}`, `{}` starts a chain of {weight} relations and permissions that refer one to the next (through names, arrows and subject relations); the limit is {MAX_PERMISSION_CHAIN}",
                            name.text
                        ),
                        name.pos,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Every relation that includes a wildcard, directly (`user:*`) or through subject relations
/// (`group#member` where `group#member` does), with the wildcard it reaches. One breadth-first
/// walk backwards from the relations that allow a wildcard, so linear in the schema's size;
/// definitions and relations are visited in source order, so the answer is deterministic.
/// Permissions allow no subject types and so end every path.
fn wildcard_paths<'f>(
    defs: &HashMap<&'f str, DefTable<'f>>,
    order: &[&'f str],
) -> HashMap<&'f str, HashMap<&'f str, WildcardPath>> {
    let mut found: HashMap<(&'f str, &'f str), WildcardPath> = HashMap::new();
    let mut included_by: HashMap<(&'f str, &'f str), Vec<(&'f str, &'f str)>> = HashMap::new();
    let mut queue = VecDeque::new();
    for def_name in order {
        let Some(table) = defs.get(def_name) else {
            continue;
        };
        for m in &table.members {
            let MemberRef::Relation(rel) = m else {
                continue;
            };
            let node = (table.ast.name.text.as_str(), rel.name.text.as_str());
            for t in &rel.allowed {
                match &t.kind {
                    TypeRefKind::Wildcard => {
                        if let Entry::Vacant(slot) = found.entry(node) {
                            slot.insert(WildcardPath {
                                wildcard_type: t.type_name.text.clone(),
                                via: format!("{}#{}", node.0, node.1),
                            });
                            queue.push_back(node);
                        }
                    }
                    TypeRefKind::Relation(sub) => {
                        let target = defs.get(t.type_name.text.as_str()).and_then(|d| {
                            d.relation(&sub.text)
                                .map(|r| (d.ast.name.text.as_str(), r.name.text.as_str()))
                        });
                        if let Some(target) = target {
                            included_by.entry(target).or_default().push(node);
                        }
                    }
                    TypeRefKind::Direct | TypeRefKind::Ellipsis => {}
                }
            }
        }
    }
    while let Some(node) = queue.pop_front() {
        let Some(path) = found.get(&node).cloned() else {
            continue;
        };
        for &by in included_by
            .get(&node)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Entry::Vacant(slot) = found.entry(by) {
                slot.insert(path.clone());
                queue.push_back(by);
            }
        }
    }
    let mut by_definition: HashMap<&'f str, HashMap<&'f str, WildcardPath>> = HashMap::new();
    for ((def, rel), path) in found {
        by_definition.entry(def).or_default().insert(rel, path);
    }
    by_definition
}

/// Appends `members` to `out`, replacing each `...partial` by the partial's members. `stack`
/// holds the partials being expanded, to refuse cycles.
fn splice<'f>(
    members: &'f [MemberAst],
    partials: &HashMap<&str, &'f DefinitionAst>,
    stack: &mut Vec<&'f str>,
    out: &mut Vec<MemberRef<'f>>,
) -> Result<(), SchemaError> {
    for m in members {
        match m {
            MemberAst::Relation(r) => out.push(MemberRef::Relation(r)),
            MemberAst::Permission(p) => out.push(MemberRef::Permission(p)),
            MemberAst::PartialRef(n) => {
                let Some(partial) = partials.get(n.text.as_str()) else {
                    return Err(SchemaError::parse(
                        format!("partial `{}` not found", n.text),
                        n.pos,
                    ));
                };
                if stack.contains(&n.text.as_str()) {
                    let mut path: Vec<String> = stack.iter().map(|s| format!("`{s}`")).collect();
                    path.push(format!("`{}`", n.text));
                    return Err(SchemaError::parse(
                        format!("found a cycle in partial references: {}", path.join(" -> ")),
                        n.pos,
                    ));
                }
                if stack.len() >= MAX_NESTING {
                    return Err(SchemaError::parse(
                        format!(
                            "partial references are nested too deeply (the limit is {MAX_NESTING} levels)"
                        ),
                        n.pos,
                    ));
                }
                stack.push(partial.name.text.as_str());
                splice(&partial.members, partials, stack, out)?;
                stack.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::lexer::tokenize;
    use super::super::parser::parse;
    use super::*;

    fn compile(s: &str) -> Result<CompiledSchema, SchemaError> {
        let toks = tokenize(s)?;
        let file = parse(s, &toks)?;
        typecheck(&file, s)
    }

    fn type_err(s: &str) -> String {
        let e = compile(s).unwrap_err();
        assert!(!e.is_parse(), "expected a type error, got {e}");
        e.message().to_string()
    }

    fn parse_err(s: &str) -> String {
        let e = compile(s).unwrap_err();
        assert!(e.is_parse(), "expected a parse error, got {e}");
        e.message().to_string()
    }

    #[test]
    fn flattens_and_keeps_exclusion_binary() {
        let s = compile(
            "definition user {}\ndefinition doc {\n relation aaa: user\n relation bbb: user\n relation ccc: user\n permission perm = aaa + (bbb + (ccc + aaa)) - (aaa & (bbb & ccc))\n}",
        )
        .unwrap();
        let p = s.definition("doc").unwrap().permission("perm").unwrap();
        assert_eq!(
            p.expr.to_string(),
            "(aaa + bbb + ccc + aaa) - (aaa & bbb & ccc)"
        );
        match &p.expr {
            Expr::Exclusion(l, r) => {
                assert!(matches!(&**l, Expr::Union(v) if v.len() == 4));
                assert!(matches!(&**r, Expr::Intersection(v) if v.len() == 3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arrows_compile() {
        let s = compile(
            "definition folder { relation viewer: user\n permission view = viewer }\ndefinition user {}\ndefinition doc {\n relation parent: folder\n permission aaa = parent->view\n permission bbb = parent.any(viewer)\n permission ccc = parent.all(view)\n}",
        )
        .unwrap();
        let d = s.definition("doc").unwrap();
        assert_eq!(
            d.permission("aaa").unwrap().expr,
            Expr::Arrow {
                tupleset: "parent".into(),
                computed: "view".into(),
                kind: ArrowKind::Any
            }
        );
        assert_eq!(
            d.permission("bbb").unwrap().expr.to_string(),
            "parent->viewer"
        );
        assert_eq!(
            d.permission("ccc").unwrap().expr.to_string(),
            "parent.all(view)"
        );
    }

    #[test]
    fn arrow_checks() {
        let base = "definition user {}\ndefinition folder { relation viewer: user | user:* }\n";
        // An arrow that resolves on no allowed type is accepted, as SpiceDB does.
        assert!(
            compile(&format!(
                "{base}definition doc {{ relation parent: folder\n permission perm = parent->nope }}"
            ))
            .is_ok()
        );
        assert_eq!(
            type_err(&format!(
                "{base}definition doc {{ relation parent: folder\n permission other = parent\n permission perm = other->viewer }}"
            )),
            "under permission `perm` under definition `doc`: permissions cannot be used on the left hand side of an arrow (found `other`)"
        );
        assert_eq!(
            type_err(&format!(
                "{base}definition doc {{ relation parent: folder | folder:*\n permission perm = parent->viewer }}"
            )),
            "for arrow under permission `perm`: relation `doc#parent` includes wildcard type `folder` via relation `doc#parent`: wildcard relations cannot be used on the left side of arrows"
        );
        // At least one allowed type having the right side is enough.
        assert!(
            compile(&format!(
                "{base}definition doc {{ relation parent: folder | user\n permission perm = parent->viewer }}"
            ))
            .is_ok()
        );
        assert_eq!(
            type_err(&format!(
                "{base}definition doc {{ permission perm = nope->viewer }}"
            )),
            "relation/permission `nope` not found under definition `doc`"
        );
    }

    #[test]
    fn wildcards_are_not_transitive() {
        let src = "definition user {}\ndefinition group { relation member: user:* }\ndefinition team { relation lead: group#member }\ndefinition doc { relation viewer: team#lead }";
        let e = compile(src).unwrap_err();
        assert_eq!(
            e.message(),
            "for relation `lead`: relation/permission `group#member` includes wildcard type `user` via relation `group#member`: wildcard relations cannot be transitively included"
        );
        assert_eq!((e.line(), e.column()), (3, 34));
        // A subject relation of the same definition is only checked to exist, as SpiceDB does.
        let same = "definition user {}\ndefinition team {\n relation member: user | user:*\n relation lead: team#member | user\n}";
        assert!(compile(same).is_ok());
        // ... but another definition allowing it is refused, through the same-definition link.
        let e = compile(&format!(
            "{same}\ndefinition proj {{ relation owner: team#lead }}"
        ))
        .unwrap_err();
        assert_eq!(
            e.message(),
            "for relation `owner`: relation/permission `team#lead` includes wildcard type `user` via relation `team#member`: wildcard relations cannot be transitively included"
        );
        // A subject relation cycle without wildcards terminates.
        assert!(compile("definition group { relation member: group#member | group }").is_ok());
    }

    #[test]
    fn cycles() {
        let e = compile(
            "definition user {}\ndefinition doc {\n relation rel: user\n permission aaa = bbb\n permission bbb = ccc\n permission ccc = aaa\n}",
        )
        .unwrap_err();
        assert_eq!(
            e.message(),
            "under definition `doc`, there exists a cycle in permissions: `aaa` -> `bbb` -> `ccc` -> `aaa`"
        );
        assert_eq!((e.line(), e.column()), (4, 13));
        assert_eq!(
            type_err("definition doc { permission aaa = aaa }"),
            "under definition `doc`, there exists a cycle in permissions: `aaa` -> `aaa`"
        );
        // Only alias cycles are refused, as SpiceDB does: a permission reaching itself inside a
        // larger expression is recursion, bounded at query time.
        assert!(
            compile(
                "definition user {}\ndefinition doc {\n relation rel: user\n permission aaa = bbb + rel\n permission bbb = ccc\n permission ccc = aaa\n}"
            )
            .is_ok()
        );
        // Through an arrow it is recursion, which is fine.
        assert!(
            compile(
                "definition folder {\n relation parent: folder\n permission view = parent->view\n}"
            )
            .is_ok()
        );
        // A diamond is no cycle.
        assert!(
            compile(
                "definition user {}\ndefinition doc {\n relation rel: user\n permission aaa = bbb + ccc\n permission bbb = rel\n permission ccc = bbb\n}"
            )
            .is_ok()
        );
    }

    #[test]
    fn caveat_expression_type_errors() {
        // As SpiceDB's WriteSchema (INVALID_ARGUMENT, at the expression's start; cel-go's
        // position inside the message).
        let e = compile("caveat c(x int) {\n    x == \"a\"\n}\ndefinition user {}").unwrap_err();
        assert!(matches!(e, SchemaError::Parse { .. }), "{e:?}");
        assert_eq!((e.line(), e.column()), (2, 5));
        assert_eq!(
            e.message(),
            "invalid expression for caveat `c`: ERROR: c:2:7: found no matching overload for '_==_' applied to '(int, string)'"
        );
        let e = compile("caveat c(x int) { x + 1 }\ndefinition user {}").unwrap_err();
        assert_eq!(
            e.message(),
            "invalid expression for caveat `c`: caveat expression must result in a boolean value: found `int`"
        );
        // An unknown name is reported before the parameter it replaces is found unused.
        let e = compile("caveat c(x int) { y > 1 }\ndefinition user {}").unwrap_err();
        assert!(matches!(e, SchemaError::Parse { .. }), "{e:?}");
        assert!(
            e.message()
                .ends_with("undeclared reference to 'y' (in container '')")
        );
    }

    #[test]
    fn caveat_checks() {
        assert_eq!(
            parse_err("caveat c() { true }"),
            "caveat `c` must have at least one parameter defined"
        );
        assert_eq!(
            parse_err("caveat c(a int, a int) { a }"),
            "duplicate parameter `a` defined on caveat `c`"
        );
        assert_eq!(
            parse_err("caveat c(a integer) { a }"),
            "invalid type for caveat parameter `a` on caveat `c`: unknown type `integer`"
        );
        assert_eq!(
            parse_err("caveat c(a list) { a }"),
            "invalid type for caveat parameter `a` on caveat `c`: type `list` takes exactly 1 type argument, found 0"
        );
        assert_eq!(
            parse_err("caveat c(a map<string, int>) { a }"),
            "invalid type for caveat parameter `a` on caveat `c`: type `map` takes exactly 1 type argument, found 2"
        );
        assert_eq!(
            parse_err("caveat c(a int<int>) { a }"),
            "invalid type for caveat parameter `a` on caveat `c`: type `int` does not take type arguments"
        );
        assert_eq!(
            type_err("caveat c(a int, b int) { a == 1 && \"b\" == 'b' && x.b }"),
            "parameter `b` for caveat `c` is unused"
        );
        let s = compile("caveat c(a list<map<ipaddress>>, b any) { a.size() > 0 && b }").unwrap();
        let c = s.caveat("c").unwrap();
        assert_eq!(c.parameters[0].type_.to_string(), "list<map<ipaddress>>");
        assert_eq!(c.parameters[1].type_, CaveatType::Any);
        assert_eq!(c.expression, "a.size() > 0 && b");
    }

    #[test]
    fn names_and_references() {
        assert_eq!(
            parse_err("definition user {}\ncaveat user(a int) { a }"),
            "found name reused between multiple definitions and/or caveats: `user`"
        );
        assert_eq!(
            type_err(
                "definition user {}\ndefinition doc { relation aaa: user\n permission aaa = aaa }"
            ),
            "found duplicate relation/permission name `aaa` under definition `doc`"
        );
        assert_eq!(
            type_err("definition doc { relation aaa: user }"),
            "could not lookup definition `user` for relation `aaa`: object definition `user` not found"
        );
        assert_eq!(
            type_err("definition user {}\ndefinition doc { relation aaa: user#nope }"),
            "relation/permission `nope` not found under definition `user`"
        );
        assert_eq!(
            type_err("definition user {}\ndefinition doc { relation aaa: user | user#... }"),
            "found duplicate allowed subject type `user` on relation `aaa` under definition `doc`"
        );
        assert!(
            compile(
                "caveat c(x int) { x > 0 }\ndefinition user {}\ndefinition doc { relation aaa: user | user with c | user:* }"
            )
            .is_ok()
        );
        assert_eq!(
            type_err("definition user {}\ndefinition doc { relation aaa: }"),
            "at least one allowed relation/permission is required to be defined for relation `aaa`"
        );
        assert_eq!(
            type_err("definition user {}\ndefinition doc { relation aaa: user with nope }"),
            "could not lookup caveat `nope` for relation `aaa`: caveat `nope` not found"
        );
        assert_eq!(
            type_err(
                "use typechecking\ndefinition user {}\ndefinition doc { relation aaa: user\n permission perm: user | nope = aaa }"
            ),
            "could not lookup definition `nope` for permission `perm`: object definition `nope` not found"
        );
        // under `use typechecking`, every type the permission reaches must be annotated
        let typed = "use typechecking\ndefinition user {}\ndefinition team {}\ndefinition org { relation member: user | team }\ndefinition doc {\n relation org: org\n relation viewer: user | org#member\n";
        assert_eq!(
            type_err(&format!("{typed} permission view: user = viewer\n}}")),
            "incomplete type annotation on relation `view` in definition `doc`: `team` found as reachable type, but not contained in provided set [`user`]"
        );
        assert_eq!(
            type_err(&format!("{typed} permission view: user = org->member\n}}")),
            "incomplete type annotation on relation `view` in definition `doc`: `team` found as reachable type, but not contained in provided set [`user`]"
        );
        assert!(
            compile(&format!(
                "{typed} permission view: user | team = viewer - org->member\n}}"
            ))
            .is_ok()
        );
        assert!(
            compile(&format!(
                "{typed} permission view: team | user = viewer + view\n}}"
            ))
            .is_ok()
        );
        // an arrow reaches only the types that have its right side; nil reaches nothing
        assert!(compile(&format!("{typed} relation parent: user | org\n permission view: user | team = parent->member + nil\n}}")).is_ok());
        // a stored schema (accepted before this check existed) still compiles
        let incomplete = format!("{typed} permission view: user = viewer\n}}");
        let toks = tokenize(&incomplete).unwrap();
        let file = parse(&incomplete, &toks).unwrap();
        assert!(typecheck_stored(&file, &incomplete).is_ok());
        assert!(typecheck(&file, &incomplete).is_err());
        // without `use typechecking` the annotation is not checked, as SpiceDB strips it
        assert!(
            compile(
                "definition user {}\ndefinition doc { relation aaa: user\n permission perm: user | nope = aaa }"
            )
            .is_ok()
        );
    }

    #[test]
    fn partials_are_spliced() {
        let s = compile(
            "use partial\npartial owned {\n relation owner: user\n ...viewed\n}\npartial viewed { relation viewer: user }\ndefinition user {}\ndefinition doc {\n ...owned\n permission view = owner + viewer\n}",
        )
        .unwrap();
        let d = s.definition("doc").unwrap();
        let names: Vec<_> = d.relations.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["owner", "viewer"]);
        assert_eq!(
            parse_err("use partial\ndefinition doc { ...nope }"),
            "partial `nope` not found"
        );
        assert_eq!(
            parse_err("use partial\npartial aaa { ...bbb }\npartial bbb { ...aaa }"),
            "found a cycle in partial references: `aaa` -> `bbb` -> `aaa`"
        );
        assert_eq!(
            type_err(
                "use partial\npartial aaa { relation rel: doc }\ndefinition doc { ...aaa\n ...aaa }"
            ),
            "found duplicate relation/permission name `rel` under definition `doc`"
        );
        let mut chain = String::from("use partial\n");
        for i in 0..150 {
            chain.push_str(&format!("partial p{i} {{ ...p{} }}\n", i + 1));
        }
        chain.push_str("partial p150 {}\n");
        assert!(parse_err(&chain).starts_with("partial references are nested too deeply"));
    }

    #[test]
    fn flags_reach_the_compiled_form() {
        let s = compile(
            "use expiration\ndefinition user {}\ndefinition doc { relation aaa: user with expiration }",
        )
        .unwrap();
        assert!(s.use_expiration);
        let a = &s
            .definition("doc")
            .unwrap()
            .relation("aaa")
            .unwrap()
            .allowed[0];
        assert!(a.expiration && a.caveat.is_none());
        let s = compile(
            "use self\ndefinition user {}\ndefinition doc { relation aaa: user\n permission perm = self + aaa }",
        )
        .unwrap();
        assert!(!s.use_expiration);
        assert_eq!(
            s.definition("doc")
                .unwrap()
                .permission("perm")
                .unwrap()
                .expr,
            Expr::Union(vec![Expr::Self_, Expr::Computed("aaa".into())])
        );
        assert_eq!(
            type_err("definition doc { permission perm = self }"),
            "relation/permission `self` not found under definition `doc`"
        );
    }
}
