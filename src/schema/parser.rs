//! The schema parser: tokens to the parse tree ([`super::ast`]).
//!
//! A hand-written recursive-descent parser for SpiceDB's schema language. It stops at the first
//! error. Choices worth knowing:
//! - Operator precedence follows SpiceDB's table, not arithmetic: `+` binds tightest, then `&`,
//!   then `-`; all are left-associative, so `a - b + c` is `a - (b + c)` and `a + b - c` is
//!   `(a + b) - c`. Arrows bind tighter than all three.
//! - The left side of an arrow is a single relation name and arrows do not chain: SpiceDB's
//!   parser accepts `a->b->c` but its compiler refuses it ("Nested arrows not yet supported"),
//!   so here `a->b->c` and `a.any(b)->c` are parse errors ("chained arrows are not supported").
//! - Nesting is bounded (parentheses, expression depth, caveat type arguments, all at
//!   [`MAX_NESTING`]) so no input can overflow the stack, here or in the passes after.
//! - `use` flags turn identifiers into keywords for the rest of the file: `expiration` and `and`
//!   (`use expiration`), `self` (`use self`), `partial` (`use partial`); `use typechecking` is
//!   accepted and changes nothing. `use import` and `import` statements are refused: WriteSchema
//!   takes a single resolved file.

use super::ast::{
    ArrowFn, CaveatAst, CaveatParamAst, CaveatTypeAst, DefinitionAst, ExprAst, Item, MemberAst,
    Name, PermissionAst, RelationAst, SchemaFile, TypeRefAst, TypeRefKind, normalize_comments,
};
use super::error::{Position, SchemaError};
use super::lexer::{Token, TokenKind};
use crate::model::ids::{validate_caveat_name, validate_relation, validate_type_name};

/// The deepest nesting accepted: parentheses, expression tree depth, caveat type arguments and
/// partial references.
pub const MAX_NESTING: usize = 100;

/// The `use` flags SpiceDB knows.
const USE_FLAGS: [&str; 5] = ["expiration", "import", "partial", "self", "typechecking"];

/// The message for `import`, which WriteSchema cannot honour.
const IMPORT_REFUSED: &str = "import is not supported by WriteSchema; resolve imports first";

static EOF_TOKEN: Token = Token {
    kind: TokenKind::Eof,
    pos: Position {
        offset: 0,
        line: 0,
        column: 0,
    },
    end: 0,
    comments: Vec::new(),
};

/// Parses the tokens of `source` (from [`super::lexer::tokenize`]) into a [`SchemaFile`].
pub fn parse(source: &str, tokens: &[Token]) -> Result<SchemaFile, SchemaError> {
    let mut p = Parser {
        src: source,
        toks: tokens,
        at: 0,
        flags: Vec::new(),
    };
    p.file()
}

struct Parser<'a> {
    src: &'a str,
    toks: &'a [Token],
    /// index of the next token
    at: usize,
    /// the `use` flags seen so far
    flags: Vec<String>,
}

impl<'a> Parser<'a> {
    // ---- token access ----

    fn peek(&self) -> &'a Token {
        let toks: &'a [Token] = self.toks;
        toks.get(self.at)
            .or_else(|| toks.last())
            .unwrap_or(&EOF_TOKEN)
    }

    fn bump(&mut self) -> &'a Token {
        let t = self.peek();
        if self.at < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn text(&self, t: &Token) -> &'a str {
        let src: &'a str = self.src;
        src.get(t.pos.offset..t.end).unwrap_or_default()
    }

    fn is(&self, kind: TokenKind) -> bool {
        self.peek().kind == kind
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// Is `word` a keyword right now (reserved, or made one by a `use` flag)?
    fn is_contextual_keyword(&self, word: &str) -> bool {
        match word {
            "expiration" | "and" => self.flag("expiration"),
            "self" => self.flag("self"),
            "typechecking" => self.flag("typechecking"),
            "partial" => self.flag("partial"),
            _ => false,
        }
    }

    /// Is the next token the keyword `word`?
    fn is_kw(&self, word: &str) -> bool {
        let t = self.peek();
        match t.kind {
            TokenKind::Keyword => self.text(t) == word,
            TokenKind::Ident => self.text(t) == word && self.is_contextual_keyword(word),
            _ => false,
        }
    }

    fn describe(&self, t: &Token) -> String {
        match t.kind {
            TokenKind::Eof => "end of input".to_string(),
            TokenKind::SyntheticSemicolon => "end of line".to_string(),
            TokenKind::Keyword => format!("keyword `{}`", self.text(t)),
            TokenKind::Ident if self.is_contextual_keyword(self.text(t)) => {
                format!("keyword `{}`", self.text(t))
            }
            _ => format!("`{}`", self.text(t)),
        }
    }

    fn unexpected(&self, expected: &str) -> SchemaError {
        let t = self.peek();
        SchemaError::parse(
            format!("expected {expected}, found {}", self.describe(t)),
            t.pos,
        )
    }

    fn expect(&mut self, kind: TokenKind, what: &str) -> Result<&'a Token, SchemaError> {
        if self.is(kind) {
            Ok(self.bump())
        } else {
            Err(self.unexpected(what))
        }
    }

    /// An identifier that is not a keyword.
    fn ident(&mut self, what: &str) -> Result<Name, SchemaError> {
        let t = self.peek();
        if t.kind == TokenKind::Ident && !self.is_contextual_keyword(self.text(t)) {
            self.bump();
            Ok(Name {
                text: self.text(t).to_string(),
                pos: t.pos,
            })
        } else {
            Err(self.unexpected(what))
        }
    }

    /// `ident { "/" ident }`
    fn type_path(&mut self, what: &str) -> Result<Name, SchemaError> {
        let mut name = self.ident(what)?;
        while self.is(TokenKind::Slash) {
            self.bump();
            let next = self.ident(what)?;
            name.text.push('/');
            name.text.push_str(&next.text);
        }
        Ok(name)
    }

    fn at_terminator(&self) -> bool {
        matches!(
            self.peek().kind,
            TokenKind::Semicolon | TokenKind::SyntheticSemicolon
        )
    }

    // ---- top level ----

    fn file(&mut self) -> Result<SchemaFile, SchemaError> {
        let mut file = SchemaFile::default();
        let mut seen_item = false;
        loop {
            while self.at_terminator() {
                self.bump();
            }
            let t = self.peek();
            let word = self.text(t);
            match t.kind {
                TokenKind::Eof => break,
                TokenKind::Keyword if word == "definition" => {
                    seen_item = true;
                    let def = self.definition_body("definition")?;
                    file.items.push(Item::Definition(def));
                }
                TokenKind::Keyword if word == "caveat" => {
                    seen_item = true;
                    file.items.push(Item::Caveat(self.caveat()?));
                }
                TokenKind::Ident if word == "use" => {
                    let flag = self.use_flag(seen_item)?;
                    self.flags.push(flag.text.clone());
                    file.flags.push(flag);
                }
                TokenKind::Ident if word == "partial" && self.flag("partial") => {
                    let partial = self.definition_body("partial")?;
                    file.items.push(Item::Partial(partial));
                }
                TokenKind::Ident if word == "import" => {
                    return Err(SchemaError::parse(IMPORT_REFUSED, t.pos));
                }
                _ => {
                    return Err(SchemaError::parse(
                        format!(
                            "unexpected {} at the top level; expected `definition`, `caveat` or `use`",
                            self.describe(t)
                        ),
                        t.pos,
                    ));
                }
            }
        }
        Ok(file)
    }

    /// `use flag`
    fn use_flag(&mut self, after_item: bool) -> Result<Name, SchemaError> {
        self.bump(); // `use`
        let t = self.peek();
        if !matches!(t.kind, TokenKind::Ident | TokenKind::Keyword) {
            return Err(self.unexpected("a flag name after `use`"));
        }
        self.bump();
        let name = Name {
            text: self.text(t).to_string(),
            pos: t.pos,
        };
        if name.text == "import" {
            return Err(SchemaError::parse(IMPORT_REFUSED, name.pos));
        }
        if !USE_FLAGS.contains(&name.text.as_str()) {
            return Err(SchemaError::parse(
                format!(
                    "unknown use flag `{}`; options are: {}",
                    name.text,
                    USE_FLAGS.join(", ")
                ),
                name.pos,
            ));
        }
        if after_item {
            return Err(SchemaError::parse(
                "`use` expressions must be declared before any definition",
                name.pos,
            ));
        }
        if self.flag(&name.text) {
            return Err(SchemaError::parse(
                format!("found duplicate use flag `{}`", name.text),
                name.pos,
            ));
        }
        Ok(name)
    }

    // ---- definitions and partials ----

    /// `definition name { members }` or `partial name { members }`
    fn definition_body(&mut self, keyword: &str) -> Result<DefinitionAst, SchemaError> {
        let comment = normalize_comments(&self.bump().comments);
        let name = self.type_path(&format!("a name after `{keyword}`"))?;
        if keyword == "definition" {
            validate_type_name(&name.text).map_err(|e| {
                SchemaError::parse(format!("invalid definition name: {e}"), name.pos)
            })?;
        }
        self.expect(TokenKind::LBrace, "`{`")?;
        let mut members = Vec::new();
        loop {
            let t = self.peek();
            match t.kind {
                TokenKind::RBrace => {
                    self.bump();
                    break;
                }
                TokenKind::Semicolon | TokenKind::SyntheticSemicolon => {
                    self.bump();
                    continue;
                }
                TokenKind::Eof => return Err(self.unexpected("`}`")),
                TokenKind::Ellipsis if self.flag("partial") => {
                    self.bump();
                    members.push(MemberAst::PartialRef(
                        self.ident("a partial name after `...`")?,
                    ));
                }
                _ if self.is_kw("relation") => members.push(MemberAst::Relation(self.relation()?)),
                _ if self.is_kw("permission") => {
                    members.push(MemberAst::Permission(self.permission()?));
                }
                _ => return Err(self.unexpected("`relation`, `permission` or `}`")),
            }
            if self.at_terminator() {
                self.bump();
            } else if !self.is(TokenKind::RBrace) {
                return Err(self.unexpected("end of statement"));
            }
        }
        Ok(DefinitionAst {
            name,
            comment,
            members,
        })
    }

    /// `relation name: type_ref { "|" type_ref }`
    fn relation(&mut self) -> Result<RelationAst, SchemaError> {
        let comment = normalize_comments(&self.bump().comments);
        let name = self.ident("a relation name")?;
        validate_relation(&name.text)
            .map_err(|e| SchemaError::parse(format!("invalid relation name: {e}"), name.pos))?;
        self.expect(TokenKind::Colon, "`:`")?;
        let mut allowed = Vec::new();
        // `relation r:` with nothing after parses, so the type checker can say what is missing.
        if !(self.at_terminator() || self.is(TokenKind::RBrace) || self.is(TokenKind::Eof)) {
            loop {
                allowed.push(self.type_ref()?);
                if self.is(TokenKind::Pipe) {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        Ok(RelationAst {
            name,
            comment,
            allowed,
        })
    }

    /// `type [":" "*" | "#" (ident | "...")] ["with" (caveat ["and" "expiration"] | "expiration")]`
    fn type_ref(&mut self) -> Result<TypeRefAst, SchemaError> {
        let type_name = self.type_path("a type name")?;
        let kind = if self.is(TokenKind::Colon) {
            self.bump();
            self.expect(TokenKind::Star, "`*` after `:`")?;
            TypeRefKind::Wildcard
        } else if self.is(TokenKind::Hash) {
            self.bump();
            if self.is(TokenKind::Ellipsis) {
                self.bump();
                TypeRefKind::Ellipsis
            } else {
                TypeRefKind::Relation(self.ident("a relation name or `...` after `#`")?)
            }
        } else {
            TypeRefKind::Direct
        };
        let mut caveat = None;
        let mut expiration = false;
        if self.is_kw("with") {
            self.bump();
            if self.is_kw("expiration") {
                self.bump();
                expiration = true;
            } else {
                caveat = Some(self.type_path("a caveat name after `with`")?);
                if self.is_kw("and") {
                    self.bump();
                    if !self.is_kw("expiration") {
                        return Err(self.unexpected("`expiration` after `and`"));
                    }
                    self.bump();
                    expiration = true;
                }
            }
        }
        Ok(TypeRefAst {
            type_name,
            kind,
            caveat,
            expiration,
        })
    }

    /// `permission name [":" type { "|" type }] "=" expr`
    fn permission(&mut self) -> Result<PermissionAst, SchemaError> {
        let comment = normalize_comments(&self.bump().comments);
        let name = self.ident("a permission name")?;
        validate_relation(&name.text)
            .map_err(|e| SchemaError::parse(format!("invalid permission name: {e}"), name.pos))?;
        let mut annotation = Vec::new();
        if self.is(TokenKind::Colon) {
            self.bump();
            loop {
                annotation.push(self.type_path("a type name")?);
                if self.is(TokenKind::Pipe) {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.expect(TokenKind::Equals, "`=`")?;
        let (expr, _) = self.expr(0)?;
        Ok(PermissionAst {
            name,
            comment,
            annotation,
            expr,
        })
    }

    // ---- expressions; each returns the node and the depth of the tree under it ----

    fn check_depth(&self, depth: usize, pos: Position) -> Result<(), SchemaError> {
        if depth > MAX_NESTING {
            Err(SchemaError::parse(
                format!(
                    "permission expression is nested too deeply (the limit is {MAX_NESTING} levels)"
                ),
                pos,
            ))
        } else {
            Ok(())
        }
    }

    /// `intersection { "-" intersection }`, loosest and left-associative.
    fn expr(&mut self, parens: usize) -> Result<(ExprAst, usize), SchemaError> {
        let (mut left, mut depth) = self.intersection(parens)?;
        while self.is(TokenKind::Minus) {
            let op = self.bump();
            let (right, rdepth) = self.intersection(parens)?;
            depth = depth.max(rdepth).saturating_add(1);
            self.check_depth(depth, op.pos)?;
            left = ExprAst::Exclusion(Box::new(left), Box::new(right));
        }
        Ok((left, depth))
    }

    /// `union { "&" union }`
    fn intersection(&mut self, parens: usize) -> Result<(ExprAst, usize), SchemaError> {
        let (first, mut depth) = self.union(parens)?;
        if !self.is(TokenKind::Amp) {
            return Ok((first, depth));
        }
        let mut items = vec![first];
        while self.is(TokenKind::Amp) {
            self.bump();
            let (next, d) = self.union(parens)?;
            depth = depth.max(d);
            items.push(next);
        }
        let depth = depth.saturating_add(1);
        self.check_depth(depth, items.first().map(ExprAst::pos).unwrap_or_default())?;
        Ok((ExprAst::Intersection(items), depth))
    }

    /// `operand { "+" operand }`, tightest.
    fn union(&mut self, parens: usize) -> Result<(ExprAst, usize), SchemaError> {
        let (first, mut depth) = self.operand(parens)?;
        if !self.is(TokenKind::Plus) {
            return Ok((first, depth));
        }
        let mut items = vec![first];
        while self.is(TokenKind::Plus) {
            self.bump();
            let (next, d) = self.operand(parens)?;
            depth = depth.max(d);
            items.push(next);
        }
        let depth = depth.saturating_add(1);
        self.check_depth(depth, items.first().map(ExprAst::pos).unwrap_or_default())?;
        Ok((ExprAst::Union(items), depth))
    }

    /// `"(" expr ")" | "nil" | "self" | ident [arrow]`
    fn operand(&mut self, parens: usize) -> Result<(ExprAst, usize), SchemaError> {
        let t = self.peek();
        let result = if t.kind == TokenKind::LParen {
            if parens >= MAX_NESTING {
                return Err(SchemaError::parse(
                    format!(
                        "parentheses are nested too deeply (the limit is {MAX_NESTING} levels)"
                    ),
                    t.pos,
                ));
            }
            self.bump();
            let inner = self.expr(parens.saturating_add(1))?;
            self.expect(TokenKind::RParen, "`)`")?;
            inner
        } else if self.is_kw("nil") {
            self.bump();
            (ExprAst::Nil(t.pos), 1)
        } else if self.is_kw("self") {
            self.bump();
            (ExprAst::SelfRef(t.pos), 1)
        } else if t.kind == TokenKind::Ident && !self.is_contextual_keyword(self.text(t)) {
            let name = self.ident("a relation or permission name")?;
            if self.is(TokenKind::Arrow) {
                self.bump();
                let computed = self.ident("a relation or permission name after `->`")?;
                self.no_chained_arrow()?;
                return Ok((
                    ExprAst::Arrow {
                        tupleset: name,
                        computed,
                        function: ArrowFn::Arrow,
                    },
                    1,
                ));
            }
            if self.is(TokenKind::Period) {
                self.bump();
                let f = self.peek();
                let function = match (f.kind, self.text(f)) {
                    (TokenKind::Ident, "any") => ArrowFn::Any,
                    (TokenKind::Ident, "all") => ArrowFn::All,
                    _ => return Err(self.unexpected("`any` or `all` after `.`")),
                };
                self.bump();
                self.expect(TokenKind::LParen, "`(`")?;
                let computed = self.ident("a relation or permission name")?;
                self.expect(TokenKind::RParen, "`)`")?;
                self.no_chained_arrow()?;
                return Ok((
                    ExprAst::Arrow {
                        tupleset: name,
                        computed,
                        function,
                    },
                    1,
                ));
            }
            (ExprAst::Ident(name), 1)
        } else {
            return Err(self.unexpected("a relation or permission name, `nil` or `(`"));
        };
        if self.is(TokenKind::Arrow) || self.is(TokenKind::Period) {
            let t = self.peek();
            return Err(SchemaError::parse(
                "the left side of an arrow must be a relation name",
                t.pos,
            ));
        }
        Ok(result)
    }

    fn no_chained_arrow(&self) -> Result<(), SchemaError> {
        if self.is(TokenKind::Arrow) || self.is(TokenKind::Period) {
            Err(SchemaError::parse(
                "chained arrows are not supported",
                self.peek().pos,
            ))
        } else {
            Ok(())
        }
    }

    // ---- caveats ----

    /// `caveat name "(" [param { "," param }] ")" "{" cel "}"`
    fn caveat(&mut self) -> Result<CaveatAst, SchemaError> {
        let comment = normalize_comments(&self.bump().comments);
        let name = self.type_path("a caveat name")?;
        validate_caveat_name(&name.text)
            .map_err(|e| SchemaError::parse(format!("invalid caveat name: {e}"), name.pos))?;
        self.expect(TokenKind::LParen, "`(`")?;
        let mut params = Vec::new();
        if !self.is(TokenKind::RParen) {
            loop {
                let pname = self.ident("a parameter name")?;
                let type_ = self.caveat_type(0)?;
                params.push(CaveatParamAst { name: pname, type_ });
                if self.is(TokenKind::Comma) {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.expect(TokenKind::RParen, "`)` or `,`")?;
        let open = self.expect(TokenKind::LBrace, "`{`")?;
        let mut depth = 1usize;
        let first = self.at;
        loop {
            let t = self.peek();
            match t.kind {
                TokenKind::LBrace => depth += 1,
                TokenKind::RBrace => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                TokenKind::Eof => {
                    return Err(SchemaError::parse(
                        format!(
                            "expected `}}` to close the expression of caveat `{}`, found end of input",
                            name.text
                        ),
                        t.pos,
                    ));
                }
                _ => {}
            }
            self.bump();
        }
        let close = self.bump();
        let body: &'a [Token] = self
            .toks
            .get(first..self.at.saturating_sub(1))
            .unwrap_or_default();
        let (Some(first_tok), Some(last_tok)) = (
            body.iter()
                .find(|t| t.kind != TokenKind::SyntheticSemicolon),
            body.iter()
                .rev()
                .find(|t| t.kind != TokenKind::SyntheticSemicolon),
        ) else {
            return Err(SchemaError::parse("missing caveat expression", close.pos));
        };
        let expression = self
            .src
            .get(first_tok.pos.offset..last_tok.end)
            .unwrap_or_default()
            .to_string();
        let mut identifiers = Vec::new();
        let mut prev = open.kind;
        for t in body {
            let text = self.text(t);
            if t.kind == TokenKind::Ident
                && prev != TokenKind::Period
                && !text.starts_with(|c: char| c.is_ascii_digit())
            {
                identifiers.push(text.to_string());
            }
            prev = t.kind;
        }
        Ok(CaveatAst {
            name,
            comment,
            params,
            expression,
            expression_pos: first_tok.pos,
            identifiers,
        })
    }

    /// `name ["<" type { "," type } ">"]`
    fn caveat_type(&mut self, depth: usize) -> Result<CaveatTypeAst, SchemaError> {
        let t = self.peek();
        if depth > MAX_NESTING {
            return Err(SchemaError::parse(
                format!(
                    "caveat parameter type is nested too deeply (the limit is {MAX_NESTING} levels)"
                ),
                t.pos,
            ));
        }
        let name = self.ident("a parameter type")?;
        let mut args = Vec::new();
        if self.is(TokenKind::Lt) {
            self.bump();
            loop {
                args.push(self.caveat_type(depth.saturating_add(1))?);
                if self.is(TokenKind::Comma) {
                    self.bump();
                } else {
                    break;
                }
            }
            self.expect(TokenKind::Gt, "`>` or `,`")?;
        }
        Ok(CaveatTypeAst { name, args })
    }
}

#[cfg(test)]
mod tests {
    use super::super::lexer::tokenize;
    use super::*;

    fn parse_str(s: &str) -> Result<SchemaFile, SchemaError> {
        let toks = tokenize(s)?;
        parse(s, &toks)
    }

    fn perm_expr(body: &str) -> ExprAst {
        let src = format!("definition doc {{\n permission perm = {body}\n}}");
        let file = parse_str(&src).unwrap();
        let Some(Item::Definition(d)) = file.items.first() else {
            panic!("no definition")
        };
        let Some(MemberAst::Permission(p)) = d.members.first() else {
            panic!("no permission")
        };
        p.expr.clone()
    }

    /// Renders an expression tree with explicit structure.
    fn show(e: &ExprAst) -> String {
        match e {
            ExprAst::Nil(_) => "nil".into(),
            ExprAst::SelfRef(_) => "self".into(),
            ExprAst::Ident(n) => n.text.clone(),
            ExprAst::Arrow {
                tupleset,
                computed,
                function,
            } => format!("{}{:?}{}", tupleset.text, function, computed.text),
            ExprAst::Union(v) => format!("U({})", v.iter().map(show).collect::<Vec<_>>().join(",")),
            ExprAst::Intersection(v) => {
                format!("I({})", v.iter().map(show).collect::<Vec<_>>().join(","))
            }
            ExprAst::Exclusion(l, r) => format!("X({},{})", show(l), show(r)),
        }
    }

    fn err(s: &str) -> SchemaError {
        parse_str(s).unwrap_err()
    }

    #[test]
    fn precedence_matches_spicedb() {
        assert_eq!(show(&perm_expr("a - b + c")), "X(a,U(b,c))");
        assert_eq!(show(&perm_expr("a + b - c")), "X(U(a,b),c)");
        assert_eq!(show(&perm_expr("a & b + c")), "I(a,U(b,c))");
        assert_eq!(show(&perm_expr("a + b & c")), "I(U(a,b),c)");
        assert_eq!(show(&perm_expr("a - b - c")), "X(X(a,b),c)");
        assert_eq!(show(&perm_expr("a - b & c")), "X(a,I(b,c))");
        assert_eq!(show(&perm_expr("(a - b) + c")), "U(X(a,b),c)");
        assert_eq!(show(&perm_expr("a + (b + c)")), "U(a,U(b,c))");
        assert_eq!(show(&perm_expr("((a))")), "a");
    }

    #[test]
    fn arrows() {
        assert_eq!(show(&perm_expr("p->v + q.any(w)")), "U(pArrowv,qAnyw)");
        assert_eq!(show(&perm_expr("p.all(v) - b")), "X(pAllv,b)");
        assert_eq!(show(&perm_expr("nil + x")), "U(nil,x)");
        let e = err("definition doc {\n permission perm = a->b->c\n}");
        assert_eq!(e.message(), "chained arrows are not supported");
        assert_eq!((e.line(), e.column()), (2, 24));
        let e = err("definition doc { permission perm = a.any(b).all(c) }");
        assert_eq!(e.message(), "chained arrows are not supported");
        let e = err("definition doc { permission perm = (a + b)->c }");
        assert_eq!(
            e.message(),
            "the left side of an arrow must be a relation name"
        );
        let e = err("definition doc { permission perm = a.some(b) }");
        assert_eq!(
            e.message(),
            "expected `any` or `all` after `.`, found `some`"
        );
    }

    #[test]
    fn self_needs_the_flag() {
        let f = parse_str("use self\ndefinition doc { permission perm = self + a }").unwrap();
        let Some(Item::Definition(d)) = f.items.first() else {
            panic!()
        };
        let Some(MemberAst::Permission(p)) = d.members.first() else {
            panic!()
        };
        assert_eq!(show(&p.expr), "U(self,a)");
        // Without the flag `self` is an identifier.
        assert_eq!(show(&perm_expr("self")), "self");
        assert!(matches!(perm_expr("self"), ExprAst::Ident(_)));
        let e = err("use self\ndefinition doc { relation self: user }");
        assert_eq!(
            e.message(),
            "expected a relation name, found keyword `self`"
        );
    }

    #[test]
    fn type_refs() {
        let f = parse_str(
            "use expiration\ndefinition ddd {\n relation rel: a | b#c | b#... | c:* | t/x with cav | u with expiration | v with cav and expiration\n}",
        )
        .unwrap();
        let Some(Item::Definition(d)) = f.items.first() else {
            panic!()
        };
        let Some(MemberAst::Relation(r)) = d.members.first() else {
            panic!()
        };
        let got: Vec<_> = r
            .allowed
            .iter()
            .map(|t| {
                (
                    t.type_name.text.as_str(),
                    t.kind.clone(),
                    t.caveat.as_ref().map(|c| c.text.clone()),
                    t.expiration,
                )
            })
            .collect();
        assert_eq!(got.len(), 7);
        assert_eq!(got[0], ("a", TypeRefKind::Direct, None, false));
        assert!(matches!(&got[1].1, TypeRefKind::Relation(n) if n.text == "c"));
        assert_eq!(got[2].1, TypeRefKind::Ellipsis);
        assert_eq!(got[3].1, TypeRefKind::Wildcard);
        assert_eq!(
            got[4],
            ("t/x", TypeRefKind::Direct, Some("cav".into()), false)
        );
        assert_eq!(got[5], ("u", TypeRefKind::Direct, None, true));
        assert_eq!(got[6], ("v", TypeRefKind::Direct, Some("cav".into()), true));
    }

    #[test]
    fn expiration_is_an_identifier_without_the_flag() {
        let f = parse_str("definition ddd { relation rel: u with expiration }").unwrap();
        let Some(Item::Definition(d)) = f.items.first() else {
            panic!()
        };
        let Some(MemberAst::Relation(r)) = d.members.first() else {
            panic!()
        };
        assert_eq!(r.allowed[0].caveat.as_ref().unwrap().text, "expiration");
        assert!(!r.allowed[0].expiration);
        let e = err("definition ddd { relation rel: u with cav and expiration }");
        assert_eq!(e.message(), "expected end of statement, found `and`");
        let e = err("use expiration\ndefinition ddd { relation rel: u with cav and foo }");
        assert_eq!(
            e.message(),
            "expected `expiration` after `and`, found `foo`"
        );
    }

    #[test]
    fn statements_and_terminators() {
        assert!(parse_str("definition abc { relation rel: u; permission perm = rel }").is_ok());
        assert!(parse_str("definition abc {}; definition def {} caveat c(a int) { a }").is_ok());
        assert!(parse_str("definition abc {\n\n;;\n relation rel: u\n\n}\n\n").is_ok());
        assert!(parse_str("").unwrap().items.is_empty());
        assert!(parse_str("  // only a comment\n").unwrap().items.is_empty());
        let e = err("definition abc { relation rel: u permission perm = rel }");
        assert_eq!(
            e.message(),
            "expected end of statement, found keyword `permission`"
        );
        let e = err("definition abc {\n relation rel: u\n");
        assert_eq!(e.message(), "expected `}`, found end of input");
        assert_eq!((e.line(), e.column()), (3, 1));
        let e = err("definition abc {\n permission perm = a\n + b\n}");
        assert_eq!(
            e.message(),
            "expected `relation`, `permission` or `}`, found `+`"
        );
        let e = err("relation r: user");
        assert_eq!(
            e.message(),
            "unexpected keyword `relation` at the top level; expected `definition`, `caveat` or `use`"
        );
    }

    #[test]
    fn empty_relation_parses_for_the_type_checker() {
        let f = parse_str("definition abc { relation rel: }").unwrap();
        let Some(Item::Definition(d)) = f.items.first() else {
            panic!()
        };
        assert!(matches!(d.members.first(), Some(MemberAst::Relation(r)) if r.allowed.is_empty()));
    }

    #[test]
    fn use_flags() {
        let f = parse_str("use expiration\nuse typechecking\ndefinition abc {}").unwrap();
        assert!(f.uses("expiration") && f.uses("typechecking") && !f.uses("self"));
        assert_eq!(
            err("use import\n").message(),
            "import is not supported by WriteSchema; resolve imports first"
        );
        assert_eq!(
            err("import \"other.zed\"\n").message(),
            "import is not supported by WriteSchema; resolve imports first"
        );
        assert_eq!(
            err("use foo").message(),
            "unknown use flag `foo`; options are: expiration, import, partial, self, typechecking"
        );
        assert_eq!(
            err("definition abc {}\nuse expiration").message(),
            "`use` expressions must be declared before any definition"
        );
        assert_eq!(
            err("use self\nuse self").message(),
            "found duplicate use flag `self`"
        );
    }

    #[test]
    fn names_are_validated() {
        let e = err("definition Doc {}");
        assert!(
            e.message().starts_with("invalid definition name: `Doc`"),
            "{e}"
        );
        let e = err("definition doc { relation r: user }");
        assert!(e.message().starts_with("invalid relation name: `r`"), "{e}");
        assert_eq!((e.line(), e.column()), (1, 27));
        let e = err("definition doc { permission View = a }");
        assert!(e.message().starts_with("invalid permission name"), "{e}");
        let e = err("caveat -x(a int) { a }");
        assert_eq!(e.message(), "expected a caveat name, found `-`");
        assert!(parse_str("definition tenant/doc {}").is_ok());
        assert!(parse_str("definition org/tenant/doc {}").is_ok());
    }

    #[test]
    fn caveats() {
        let src = "/** doc */\ncaveat ip_ok(ip ipaddress, cidrs list<string>, m map<list<int>>) {\n  cidrs.exists(c, ip.in_cidr(c)) && m[\"}\"] != {} // trailing\n}";
        let f = parse_str(src).unwrap();
        let Some(Item::Caveat(c)) = f.items.first() else {
            panic!()
        };
        assert_eq!(c.comment, "/** doc */");
        // Like SpiceDB, the expression runs from its first token to its last: a trailing
        // comment is not part of it.
        assert_eq!(
            c.expression,
            "cidrs.exists(c, ip.in_cidr(c)) && m[\"}\"] != {}"
        );
        assert_eq!((c.expression_pos.line, c.expression_pos.column), (2, 2));
        assert_eq!(c.identifiers, vec!["cidrs", "c", "ip", "c", "m"]);
        assert_eq!(c.params.len(), 3);
        assert_eq!(c.params[2].type_.args[0].args[0].name.text, "int");
        let e = err("caveat c(a int) {  }");
        assert_eq!(e.message(), "missing caveat expression");
        let e = err("caveat c(a int) { a == 1 ");
        assert_eq!(
            e.message(),
            "expected `}` to close the expression of caveat `c`, found end of input"
        );
        let e = err("caveat c(a list<int) { a }");
        assert_eq!(e.message(), "expected `>` or `,`, found `)`");
        assert!(parse_str("caveat c() { true }").is_ok());
        let triple = "caveat c(a string) { a == '''}\n''' }";
        let f = parse_str(triple).unwrap();
        let Some(Item::Caveat(c)) = f.items.first() else {
            panic!()
        };
        assert_eq!(c.expression, "a == '''}\n'''");
    }

    #[test]
    fn comments_attach_to_members() {
        let src = "/** the doc */\n// more\ndefinition doc {\n  /** rel doc */\n  relation viewer: user // trailing\n\n  /*\n   * perm doc\n   */\n  permission view = viewer\n}";
        let f = parse_str(src).unwrap();
        let Some(Item::Definition(d)) = f.items.first() else {
            panic!()
        };
        assert_eq!(d.comment, "/** the doc */\n// more");
        let Some(MemberAst::Relation(r)) = d.members.first() else {
            panic!()
        };
        assert_eq!(r.comment, "/** rel doc */");
        let Some(MemberAst::Permission(p)) = d.members.get(1) else {
            panic!()
        };
        assert_eq!(p.comment, "/*\n* perm doc\n*/");
    }

    #[test]
    fn partials() {
        let src = "use partial\npartial common {\n relation owner: user\n}\ndefinition doc {\n ...common\n permission perm = owner\n}";
        let f = parse_str(src).unwrap();
        assert!(matches!(f.items.first(), Some(Item::Partial(_))));
        let Some(Item::Definition(d)) = f.items.get(1) else {
            panic!()
        };
        assert!(matches!(d.members.first(), Some(MemberAst::PartialRef(n)) if n.text == "common"));
        // Without the flag, neither form parses.
        assert!(parse_str("partial common {}").is_err());
        assert!(parse_str("definition doc { ...common }").is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            "definition doc {{ permission perm = {}a{} }}",
            "(".repeat(100),
            ")".repeat(100)
        );
        assert!(parse_str(&deep).is_ok());
        let deeper = format!(
            "definition doc {{ permission perm = {}a{} }}",
            "(".repeat(101),
            ")".repeat(101)
        );
        assert!(
            err(&deeper)
                .message()
                .starts_with("parentheses are nested too deeply")
        );
        let huge = format!(
            "definition doc {{ permission perm = {} }}",
            "(".repeat(100_000)
        );
        assert!(parse_str(&huge).is_err());
        let chain = format!(
            "definition doc {{ permission perm = a{} }}",
            " - a".repeat(101)
        );
        assert!(
            err(&chain)
                .message()
                .starts_with("permission expression is nested too deeply")
        );
        let wide = format!(
            "definition doc {{ permission perm = a{} }}",
            " + a".repeat(50_000)
        );
        assert!(parse_str(&wide).is_ok());
        let nested_unions: String =
            (0..150).map(|_| "a + (").collect::<String>() + "a" + &")".repeat(150);
        let src = format!("definition doc {{ permission perm = {nested_unions} }}");
        assert!(parse_str(&src).is_err());
        let types = format!(
            "caveat c(a {}int{}) {{ a }}",
            "list<".repeat(200),
            ">".repeat(200)
        );
        assert!(
            err(&types)
                .message()
                .starts_with("caveat parameter type is nested too deeply")
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator (no RNG crate needed) over schema-ish fragments.
        let pieces = [
            "definition",
            "caveat",
            "relation",
            "permission",
            "use",
            "self",
            "expiration",
            "and",
            "with",
            "nil",
            "partial",
            "import",
            "doc",
            "user",
            "a",
            "{",
            "}",
            "(",
            ")",
            "<",
            ">",
            ":",
            ";",
            "\n",
            "|",
            "#",
            "...",
            "*",
            "+",
            "-",
            "&",
            "->",
            ".",
            "any",
            "all",
            "=",
            "/",
            "//c\n",
            "/*",
            "*/",
            "\"",
            "'",
            ",",
            " ",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(state % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push_str(pieces[(state % pieces.len() as u64) as usize]);
                s.push(' ');
            }
            let _ = parse_str(&s);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = parse_str(&s);
        }

        #[test]
        fn schema_alphabet_never_panics(s in "[a-z(){}<>:;|#*+&./=\\-\n \"',]{0,300}") {
            let _ = parse_str(&s);
        }
    }
}
