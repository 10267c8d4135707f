//! The parse tree of a schema: close to the text, with positions, no name resolved yet.
//!
//! The parser's output; the type checker turns it into the compiled form.

use super::error::Position;

/// A name as written, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// the text (for type paths, segments joined with `/`)
    pub text: String,
    /// where it starts
    pub pos: Position,
}

/// A whole schema file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaFile {
    /// the `use` flags, in order
    pub flags: Vec<Name>,
    /// definitions, caveats and partials, in order
    pub items: Vec<Item>,
}

impl SchemaFile {
    /// Was `use <flag>` written?
    pub fn uses(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.text == flag)
    }
}

/// A top-level item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `definition name { ... }`
    Definition(DefinitionAst),
    /// `caveat name(params) { expression }`
    Caveat(CaveatAst),
    /// `partial name { ... }` (needs `use partial`)
    Partial(DefinitionAst),
}

/// A definition or a partial: a named list of members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionAst {
    /// the type name, e.g. `tenant/document`
    pub name: Name,
    /// the comments before the item, normalized (see [`normalize_comments`])
    pub comment: String,
    /// relations, permissions and partial references, in order
    pub members: Vec<MemberAst>,
}

/// One member of a definition or partial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberAst {
    /// `relation name: types`
    Relation(RelationAst),
    /// `permission name = expr`
    Permission(PermissionAst),
    /// `...partial_name`
    PartialRef(Name),
}

/// `relation name: a | b#c | d:* | e with cav and expiration`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationAst {
    /// the relation name
    pub name: Name,
    /// the comments before the member
    pub comment: String,
    /// the allowed subject types, in order (empty only if the text had none)
    pub allowed: Vec<TypeRefAst>,
}

/// How an allowed type names its subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeRefKind {
    /// `user`
    Direct,
    /// `user#...`, the same as `user`
    Ellipsis,
    /// `user:*`
    Wildcard,
    /// `group#member`
    Relation(Name),
}

/// One allowed subject type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRefAst {
    /// the subject type
    pub type_name: Name,
    /// plain, wildcard or subject relation
    pub kind: TypeRefKind,
    /// `with caveat_name`
    pub caveat: Option<Name>,
    /// `with expiration` (needs `use expiration`)
    pub expiration: bool,
}

/// `permission name[: types] = expr`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionAst {
    /// the permission name
    pub name: Name,
    /// the comments before the member
    pub comment: String,
    /// the optional type annotation `permission p: user | group = ...`
    pub annotation: Vec<Name>,
    /// the expression
    pub expr: ExprAst,
}

/// Which arrow was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrowFn {
    /// `->`
    Arrow,
    /// `.any(...)`
    Any,
    /// `.all(...)`
    All,
}

/// A permission expression as written. Unions and intersections are n-ary (a chain of the same
/// operator), exclusion is binary and left-associative; parentheses leave no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExprAst {
    /// `nil`
    Nil(Position),
    /// `self` (needs `use self`)
    SelfRef(Position),
    /// a relation or permission of the same definition
    Ident(Name),
    /// `tupleset->computed`, `tupleset.any(computed)`, `tupleset.all(computed)`
    Arrow {
        /// the relation walked
        tupleset: Name,
        /// the relation or permission evaluated on each object reached
        computed: Name,
        /// which form
        function: ArrowFn,
    },
    /// `a + b + ...`
    Union(Vec<ExprAst>),
    /// `a & b & ...`
    Intersection(Vec<ExprAst>),
    /// `a - b`
    Exclusion(Box<ExprAst>, Box<ExprAst>),
}

impl ExprAst {
    /// Where the expression starts.
    pub fn pos(&self) -> Position {
        match self {
            ExprAst::Nil(p) | ExprAst::SelfRef(p) => *p,
            ExprAst::Ident(n) => n.pos,
            ExprAst::Arrow { tupleset, .. } => tupleset.pos,
            ExprAst::Union(v) | ExprAst::Intersection(v) => {
                v.first().map(ExprAst::pos).unwrap_or_default()
            }
            ExprAst::Exclusion(l, _) => l.pos(),
        }
    }
}

/// `caveat name(p1 type, ...) { expression }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaveatAst {
    /// the caveat name
    pub name: Name,
    /// the comments before the item
    pub comment: String,
    /// the parameters, in order
    pub params: Vec<CaveatParamAst>,
    /// the CEL expression, exactly as written between the braces (trimmed of the outer
    /// whitespace the way SpiceDB does: from its first token to its last)
    pub expression: String,
    /// where the expression starts
    pub expression_pos: Position,
    /// the identifiers used in the expression, outside strings and member selections (`a.b`
    /// uses `a` only)
    pub identifiers: Vec<String>,
}

/// One caveat parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaveatParamAst {
    /// the parameter name
    pub name: Name,
    /// its type as written
    pub type_: CaveatTypeAst,
}

/// A caveat parameter type as written: `int`, `list<string>`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaveatTypeAst {
    /// the type name
    pub name: Name,
    /// the type arguments between `<` and `>`
    pub args: Vec<CaveatTypeAst>,
}

/// Turns the comments before an item into the text ReflectSchema reports, as SpiceDB's compiler
/// does: every line of every comment trimmed, lines joined with `\n`, comments joined with `\n`.
pub fn normalize_comments(comments: &[String]) -> String {
    comments
        .iter()
        .map(|c| c.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_normalized_like_spicedb() {
        let c = vec![
            "/**\n   * the doc\n   */".to_string(),
            "// and a line  ".to_string(),
        ];
        assert_eq!(normalize_comments(&c), "/**\n* the doc\n*/\n// and a line");
        assert_eq!(normalize_comments(&[]), "");
    }

    #[test]
    fn expression_positions() {
        let p = Position {
            offset: 3,
            line: 1,
            column: 2,
        };
        let e = ExprAst::Exclusion(
            Box::new(ExprAst::Union(vec![ExprAst::Nil(p)])),
            Box::new(ExprAst::Nil(Position::default())),
        );
        assert_eq!(e.pos(), p);
        assert_eq!(ExprAst::Union(vec![]).pos(), Position::default());
    }
}
