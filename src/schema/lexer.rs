//! The schema lexer: schema text to tokens.
//!
//! The token set is SpiceDB's (`pkg/schemadsl/lexer`): the schema punctuation, plus the CEL
//! punctuation and string literals that caveat bodies use. Two things happen here that the
//! parser relies on:
//! - a newline after an identifier, keyword, `}`, `)`, `*` or `...` becomes a synthetic `;`
//!   (Go-style), so newlines end statements. (`...` is our addition to SpiceDB's list, so that
//!   `relation r: group#...` may end a line);
//! - comments are not tokens: each token carries the comments written between it and the
//!   previous token, which is how doc comments reach the item that follows them.
//!
//! Only the reserved words `definition caveat relation permission nil with` are keywords here;
//! the contextual ones (`expiration`, `and`, `self`, ...) depend on `use` flags, which the parser
//! tracks.

use super::error::{Position, SchemaError};

/// The reserved words, keywords whatever the `use` flags.
pub const KEYWORDS: [&str; 6] = [
    "definition",
    "caveat",
    "relation",
    "permission",
    "nil",
    "with",
];

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// a name (letters, digits, `_`); numbers lex as identifiers too, as in SpiceDB
    Ident,
    /// one of [`KEYWORDS`]
    Keyword,
    /// a string literal (CEL): `"…"`, `'…'`, `"""…"""`, `'''…'''`, optionally `r`/`b` prefixed
    Str,
    /// `{`
    LBrace,
    /// `}`
    RBrace,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `|`
    Pipe,
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `&`
    Amp,
    /// `/`
    Slash,
    /// `=`
    Equals,
    /// `:`
    Colon,
    /// `;` as written
    Semicolon,
    /// a newline that ends a statement
    SyntheticSemicolon,
    /// `->`
    Arrow,
    /// `#`
    Hash,
    /// `...`
    Ellipsis,
    /// `*`
    Star,
    /// `?`
    Question,
    /// `||`
    OrOr,
    /// `&&`
    AndAnd,
    /// `!`
    Bang,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `.`
    Period,
    /// `,`
    Comma,
    /// `%`
    Percent,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
    /// `==`
    EqEq,
    /// `!=`
    NotEq,
    /// end of input (always the last token)
    Eof,
}

/// One token and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// what it is
    pub kind: TokenKind,
    /// where it starts
    pub pos: Position,
    /// byte offset just past its end
    pub end: usize,
    /// the comments (with their delimiters) between the previous token and this one, in order
    pub comments: Vec<String>,
}

impl Token {
    /// The token's text in `source`.
    pub fn text<'s>(&self, source: &'s str) -> &'s str {
        source.get(self.pos.offset..self.end).unwrap_or_default()
    }
}

/// Does this token end a statement when a newline follows it?
fn ends_statement(kind: TokenKind) -> bool {
    matches!(
        kind,
        TokenKind::Ident
            | TokenKind::Keyword
            | TokenKind::RBrace
            | TokenKind::RParen
            | TokenKind::Star
            | TokenKind::Ellipsis
    )
}

/// Characters that may appear in identifiers (SpiceDB: `_`, letters, digits).
fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Identifiers that prefix a CEL string literal when a quote follows at once (`r"…"`, `b'…'`).
fn is_string_prefix(s: &str) -> bool {
    matches!(
        s,
        "r" | "R" | "b" | "B" | "rb" | "rB" | "Rb" | "RB" | "br" | "bR" | "Br" | "BR"
    )
}

struct Lexer<'s> {
    src: &'s str,
    /// byte offset of the next character
    offset: usize,
    line: usize,
    column: usize,
    tokens: Vec<Token>,
    pending_comments: Vec<String>,
}

impl<'s> Lexer<'s> {
    fn here(&self) -> Position {
        Position {
            offset: self.offset,
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src.get(self.offset..).and_then(|r| r.chars().next())
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.src.get(self.offset..).and_then(|r| r.chars().nth(n))
    }

    fn starts_with(&self, s: &str) -> bool {
        self.src
            .get(self.offset..)
            .is_some_and(|r| r.starts_with(s))
    }

    /// Consumes one character, keeping line and column up to date.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.offset += c.len_utf8();
        // `\r\n` counts as one line break: the `\r` is a column, the `\n` breaks the line.
        if c == '\n' {
            self.line += 1;
            self.column = 0;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    fn last_kind(&self) -> Option<TokenKind> {
        self.tokens.last().map(|t| t.kind)
    }

    fn push(&mut self, kind: TokenKind, pos: Position) {
        let comments = std::mem::take(&mut self.pending_comments);
        self.tokens.push(Token {
            kind,
            pos,
            end: self.offset,
            comments,
        });
    }

    fn run(mut self) -> Result<Vec<Token>, SchemaError> {
        while let Some(c) = self.peek() {
            let start = self.here();
            match c {
                '\n' | '\r' => {
                    self.bump();
                    if self.last_kind().is_some_and(ends_statement) {
                        self.push(TokenKind::SyntheticSemicolon, start);
                    }
                }
                // A byte-order mark is whitespace too: editors on some systems write one.
                ' ' | '\t' | '\u{feff}' => {
                    self.bump();
                }
                '/' if self.starts_with("//") => {
                    while let Some(c) = self.peek() {
                        if c == '\n' || c == '\r' {
                            break;
                        }
                        self.bump();
                    }
                    let text = self.src.get(start.offset..self.offset).unwrap_or_default();
                    self.pending_comments.push(text.to_string());
                }
                '/' if self.starts_with("/*") => {
                    self.bump_n(2);
                    loop {
                        if self.starts_with("*/") {
                            self.bump_n(2);
                            break;
                        }
                        if self.bump().is_none() {
                            return Err(SchemaError::parse(
                                "unterminated multiline comment",
                                start,
                            ));
                        }
                    }
                    let text = self.src.get(start.offset..self.offset).unwrap_or_default();
                    self.pending_comments.push(text.to_string());
                }
                '"' | '\'' => {
                    self.string(start, false)?;
                }
                c if is_ident_char(c) => {
                    while self.peek().is_some_and(is_ident_char) {
                        self.bump();
                    }
                    let text = self.src.get(start.offset..self.offset).unwrap_or_default();
                    if is_string_prefix(text) && matches!(self.peek(), Some('"' | '\'')) {
                        let raw = text.contains(['r', 'R']);
                        self.string(start, raw)?;
                    } else if KEYWORDS.contains(&text) {
                        self.push(TokenKind::Keyword, start);
                    } else {
                        self.push(TokenKind::Ident, start);
                    }
                }
                _ => {
                    let (kind, len) = self.punctuation(c).ok_or_else(|| {
                        SchemaError::parse(
                            format!(
                                "unrecognized character at this location: `{}`",
                                c.escape_debug()
                            ),
                            start,
                        )
                    })?;
                    self.bump_n(len);
                    self.push(kind, start);
                }
            }
        }
        let end = self.here();
        self.push(TokenKind::Eof, end);
        Ok(self.tokens)
    }

    /// The punctuation token starting with `c`, and its length in characters.
    fn punctuation(&self, c: char) -> Option<(TokenKind, usize)> {
        let next = self.peek_at(1);
        let two = |kind| Some((kind, 2));
        let one = |kind| Some((kind, 1));
        match (c, next) {
            ('-', Some('>')) => two(TokenKind::Arrow),
            ('|', Some('|')) => two(TokenKind::OrOr),
            ('&', Some('&')) => two(TokenKind::AndAnd),
            ('!', Some('=')) => two(TokenKind::NotEq),
            ('=', Some('=')) => two(TokenKind::EqEq),
            ('<', Some('=')) => two(TokenKind::Le),
            ('>', Some('=')) => two(TokenKind::Ge),
            ('.', Some('.')) if self.peek_at(2) == Some('.') => Some((TokenKind::Ellipsis, 3)),
            ('{', _) => one(TokenKind::LBrace),
            ('}', _) => one(TokenKind::RBrace),
            ('(', _) => one(TokenKind::LParen),
            (')', _) => one(TokenKind::RParen),
            ('|', _) => one(TokenKind::Pipe),
            ('+', _) => one(TokenKind::Plus),
            ('-', _) => one(TokenKind::Minus),
            ('&', _) => one(TokenKind::Amp),
            ('/', _) => one(TokenKind::Slash),
            ('=', _) => one(TokenKind::Equals),
            (':', _) => one(TokenKind::Colon),
            (';', _) => one(TokenKind::Semicolon),
            ('#', _) => one(TokenKind::Hash),
            ('*', _) => one(TokenKind::Star),
            ('?', _) => one(TokenKind::Question),
            ('!', _) => one(TokenKind::Bang),
            ('[', _) => one(TokenKind::LBracket),
            (']', _) => one(TokenKind::RBracket),
            ('.', _) => one(TokenKind::Period),
            (',', _) => one(TokenKind::Comma),
            ('%', _) => one(TokenKind::Percent),
            ('<', _) => one(TokenKind::Lt),
            ('>', _) => one(TokenKind::Gt),
            _ => None,
        }
    }

    /// Lexes a string literal whose quote is the next character; `start` includes any prefix.
    /// Backslash escapes are skipped over unless the literal is raw; triple-quoted literals may
    /// span lines, the others may not.
    fn string(&mut self, start: Position, raw: bool) -> Result<(), SchemaError> {
        let quote = self.peek().unwrap_or('"');
        let triple: String = std::iter::repeat_n(quote, 3).collect();
        let terminator = if self.starts_with(&triple) {
            self.bump_n(3);
            triple
        } else {
            self.bump();
            quote.to_string()
        };
        let multiline = terminator.len() == 3;
        loop {
            if self.starts_with(&terminator) {
                self.bump_n(terminator.chars().count());
                self.push(TokenKind::Str, start);
                return Ok(());
            }
            match self.bump() {
                None => return Err(SchemaError::parse("unterminated string", start)),
                Some('\n' | '\r') if !multiline => {
                    return Err(SchemaError::parse("unterminated string", start));
                }
                Some('\\') if !raw => {
                    if self
                        .peek()
                        .is_some_and(|c| multiline || (c != '\n' && c != '\r'))
                    {
                        self.bump();
                    }
                }
                Some(_) => {}
            }
        }
    }
}

/// Splits `source` into tokens, ending with [`TokenKind::Eof`].
pub fn tokenize(source: &str) -> Result<Vec<Token>, SchemaError> {
    Lexer {
        src: source,
        offset: 0,
        line: 0,
        column: 0,
        tokens: Vec::new(),
        pending_comments: Vec::new(),
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<TokenKind> {
        tokenize(s).unwrap().into_iter().map(|t| t.kind).collect()
    }

    fn texts(s: &str) -> Vec<String> {
        tokenize(s)
            .unwrap()
            .iter()
            .map(|t| t.text(s).to_string())
            .collect()
    }

    use TokenKind as K;

    #[test]
    fn punctuation_and_keywords() {
        assert_eq!(
            kinds("definition a/b { relation r: x#y | z:* | w#... }"),
            vec![
                K::Keyword,
                K::Ident,
                K::Slash,
                K::Ident,
                K::LBrace,
                K::Keyword,
                K::Ident,
                K::Colon,
                K::Ident,
                K::Hash,
                K::Ident,
                K::Pipe,
                K::Ident,
                K::Colon,
                K::Star,
                K::Pipe,
                K::Ident,
                K::Hash,
                K::Ellipsis,
                K::RBrace,
                K::Eof
            ]
        );
        assert_eq!(
            kinds("a->b - c + d & e .all(f)"),
            vec![
                K::Ident,
                K::Arrow,
                K::Ident,
                K::Minus,
                K::Ident,
                K::Plus,
                K::Ident,
                K::Amp,
                K::Ident,
                K::Period,
                K::Ident,
                K::LParen,
                K::Ident,
                K::RParen,
                K::Eof
            ]
        );
        assert_eq!(
            kinds("|| && != == <= >= < > ! ? [ ] % ,"),
            vec![
                K::OrOr,
                K::AndAnd,
                K::NotEq,
                K::EqEq,
                K::Le,
                K::Ge,
                K::Lt,
                K::Gt,
                K::Bang,
                K::Question,
                K::LBracket,
                K::RBracket,
                K::Percent,
                K::Comma,
                K::Eof
            ]
        );
    }

    #[test]
    fn synthetic_semicolons_follow_go_rules() {
        assert_eq!(
            kinds("a\nb"),
            vec![K::Ident, K::SyntheticSemicolon, K::Ident, K::Eof]
        );
        assert_eq!(kinds("a +\nb"), vec![K::Ident, K::Plus, K::Ident, K::Eof]);
        assert_eq!(kinds("{\n}"), vec![K::LBrace, K::RBrace, K::Eof]);
        assert_eq!(
            kinds("}\n\n)\n*\nwith\n"),
            vec![
                K::RBrace,
                K::SyntheticSemicolon,
                K::RParen,
                K::SyntheticSemicolon,
                K::Star,
                K::SyntheticSemicolon,
                K::Keyword,
                K::SyntheticSemicolon,
                K::Eof
            ]
        );
        // A comment does not hide the identifier before it.
        assert_eq!(
            kinds("a // note\nb"),
            vec![K::Ident, K::SyntheticSemicolon, K::Ident, K::Eof]
        );
        assert_eq!(
            kinds("g#...\nh"),
            vec![
                K::Ident,
                K::Hash,
                K::Ellipsis,
                K::SyntheticSemicolon,
                K::Ident,
                K::Eof
            ]
        );
        // `\r\n` gives one semicolon.
        assert_eq!(
            kinds("a\r\nb"),
            vec![K::Ident, K::SyntheticSemicolon, K::Ident, K::Eof]
        );
    }

    #[test]
    fn comments_attach_to_the_next_token() {
        let src = "a\n/** doc */\n// line\nb /* x */ c";
        let toks = tokenize(src).unwrap();
        let b = toks.iter().find(|t| t.text(src) == "b").unwrap();
        assert_eq!(b.comments, vec!["/** doc */", "// line"]);
        let c = toks.iter().find(|t| t.text(src) == "c").unwrap();
        assert_eq!(c.comments, vec!["/* x */"]);
    }

    #[test]
    fn strings() {
        assert_eq!(texts(r#"x == "a}b""#), vec!["x", "==", r#""a}b""#, ""]);
        assert_eq!(texts(r#"'it\'s'"#), vec![r#"'it\'s'"#, ""]);
        assert_eq!(texts("'''a\n'b'\n'''"), vec!["'''a\n'b'\n'''", ""]);
        assert_eq!(texts("\"\"\"x\"\"\""), vec!["\"\"\"x\"\"\"", ""]);
        assert_eq!(texts(r#"r"\" b'\x'"#), vec![r#"r"\""#, r"b'\x'", ""]);
        assert_eq!(texts("\"\""), vec!["\"\"", ""]);
        let e = tokenize("\"abc").unwrap_err();
        assert_eq!(e.message(), "unterminated string");
        let e = tokenize("'ab\nc'").unwrap_err();
        assert_eq!(e.message(), "unterminated string");
        let e = tokenize("  \"ab\\").unwrap_err();
        assert_eq!((e.line(), e.column()), (1, 3));
    }

    #[test]
    fn errors_carry_positions() {
        let e = tokenize("definition a {\n  relation b: c ^ d\n}").unwrap_err();
        assert_eq!(e.message(), "unrecognized character at this location: `^`");
        assert_eq!((e.line(), e.column()), (2, 17));
        let e = tokenize("a\n  /* never closed").unwrap_err();
        assert_eq!(e.message(), "unterminated multiline comment");
        assert_eq!((e.line(), e.column()), (2, 3));
        let e = tokenize("a\n\n  `b`").unwrap_err();
        assert!(e.to_string().contains("line 3, column 3"), "{e}");
    }

    #[test]
    fn columns_count_characters() {
        let src = "définition é";
        let toks = tokenize(src).unwrap();
        assert_eq!(toks[1].pos.column, 11);
        assert_eq!(toks[1].text(src), "é");
    }

    #[test]
    fn byte_order_mark_is_whitespace() {
        assert_eq!(kinds("\u{feff}definition"), vec![K::Keyword, K::Eof]);
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "", "\u{0}", "/", "/*", "*/", "'", "\"\"\"", "r'", "-", ".", "..", "\\",
        ] {
            let _ = tokenize(s);
        }
    }
}
