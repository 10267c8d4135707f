//! Step 1, the schema language: SpiceDB's schema text compiled into the form the engine and
//! the API layer consume.
//!
//! The pipeline, one module per step:
//! 1. [`lexer`]: text to tokens (synthetic semicolons at line ends, comments kept for docs);
//! 2. [`parser`]: tokens to the parse tree ([`ast`]);
//! 3. [`typecheck`]: the parse tree checked the way WriteSchema checks it, and resolved;
//! 4. [`compiled`]: the result, [`CompiledSchema`], plus what a schema change must verify
//!    against stored data ([`orphan_checks`], [`incompatible_caveat_changes`]).
//!
//! [`compile`] runs all of it. Errors are one type, [`SchemaError`], with a position.

pub mod ast;
mod celtype;
pub mod compiled;
pub mod error;
pub mod lexer;
pub mod parser;
pub mod typecheck;

pub use compiled::{
    AllowedKind, AllowedType, ArrowKind, CaveatDef, CaveatMatch, CaveatParam, CaveatType,
    CompiledSchema, Definition, Expr, Member, OrphanCheck, Permission, Relation,
    incompatible_caveat_changes, orphan_checks,
};
pub use error::{Position, SchemaError};

/// Compiles schema text: lexer, parser, type checker. An empty text (or one with only comments)
/// is the empty schema, as WriteSchema allows.
pub fn compile(text: &str) -> Result<CompiledSchema, SchemaError> {
    let tokens = lexer::tokenize(text)?;
    let file = parser::parse(text, &tokens)?;
    typecheck::typecheck(&file, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_empty_schema() {
        let s = compile("").unwrap();
        assert!(s.is_empty());
        assert_eq!(s, CompiledSchema::empty());
        let s = compile("// nothing here\n/* nor here */\n").unwrap();
        assert!(s.is_empty());
        assert_eq!(s.source, "// nothing here\n/* nor here */\n");
    }

    #[test]
    fn caveats_without_definitions() {
        let s = compile("caveat only(a int) { a > 1 }").unwrap();
        assert!(s.definitions.is_empty());
        assert!(s.caveat("only").is_some());
    }

    /// A schema touching most of the language, for mutation fuzzing.
    const SEED: &str = "use expiration\n\
        caveat cav(a int, b list<string>) { a > 1 && b.size() > 0 }\n\
        definition user {}\n\
        definition group { relation member: user | group#member | user with cav and expiration }\n\
        definition folder {\n relation parent: folder\n relation viewer: user | user:* | group#member\n permission view = viewer + parent->view\n}\n\
        definition document {\n relation parent: folder\n relation banned: user with expiration\n\
        permission view = (parent.all(view) & parent.any(view)) - banned + nil\n}\n";

    #[test]
    fn seed_compiles() {
        let s = compile(SEED).unwrap();
        assert_eq!(s.definitions.len(), 4);
    }

    proptest::proptest! {
        /// Random edits of a valid schema: the whole pipeline answers, and never panics.
        #[test]
        fn mutated_schemas_never_panic(
            edits in proptest::collection::vec(
                (0usize..400, proptest::sample::select(vec![
                    "", "(", ")", "{", "}", "->", ".", "-", "+", "&", "|", "#", ":*", "\n", ";",
                    "viewer", "view", "parent", "user", "nil", "self", "with", "expiration",
                    "and", "\"", "/*", "*/", "//", "<", ">", "...",
                ])),
                1..8,
            )
        ) {
            let mut text = SEED.to_string();
            for (at, insert) in edits {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                if insert.is_empty() {
                    let end = (at + 3).min(text.len());
                    if text.is_char_boundary(end) {
                        text.replace_range(at..end, "");
                    }
                } else {
                    text.insert_str(at, insert);
                }
            }
            let _ = compile(&text);
        }
    }
}
