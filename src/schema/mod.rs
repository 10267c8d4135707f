//! The schema language: SpiceDB's schema text compiled for the engine and the API layer.
//!
//! The pipeline, one module per step:
//! 1. [`lexer`]: text to tokens (synthetic semicolons at line ends, comments kept for docs);
//! 2. [`parser`]: tokens to the parse tree ([`ast`]);
//! 3. [`typecheck`]: the parse tree checked the way WriteSchema checks it, and resolved;
//! 4. [`compiled`]: the result, [`CompiledSchema`], plus what a schema change must verify
//!    against stored data ([`orphan_checks`], [`incompatible_caveat_changes`]).
//!
//! Questions about a compiled schema: [`diff`] (what changed between two schemas, for
//! DiffSchema) and [`reachability`] (which relations and permissions a relation can affect, and
//! which a permission reads, for ComputablePermissions and DependentRelations).
//!
//! [`compile`] runs all of it. Errors are one type, [`SchemaError`], with a position (but for
//! the questions' lookups, which have none). What no
//! step accepts, however well-formed (too long, too deep, too long a chain), is in [`limits`].

pub mod ast;
mod celtype;
pub mod compiled;
pub mod diff;
pub mod error;
pub mod lexer;
pub mod limits;
pub mod parser;
pub mod reachability;
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

/// Compiles schema text a store already holds, which WriteSchema accepted when it was written:
/// as [`compile`], but without the checks added since that do not change evaluation (an
/// annotated permission reaching a type its annotation lacks, under `use typechecking`), so a
/// stored schema keeps compiling after an upgrade.
pub fn compile_stored(text: &str) -> Result<CompiledSchema, SchemaError> {
    let tokens = lexer::tokenize(text)?;
    let file = parser::parse(text, &tokens)?;
    typecheck::typecheck_stored(&file, text)
}

/// Compiles schema text as SpiceDB's compiler alone does, without its type system: a schema
/// naming types, relations or caveats it lacks still compiles (only [`SchemaError::Parse`] and
/// duplicate member names fail). DiffSchema compares the stored schema with text compiled this
/// way; a schema to be stored or evaluated goes through [`compile`].
pub fn compile_without_type_checks(text: &str) -> Result<CompiledSchema, SchemaError> {
    let tokens = lexer::tokenize(text)?;
    let file = parser::parse(text, &tokens)?;
    typecheck::compile_only(&file, text)
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

    fn caveat_schema(expression: &str) -> String {
        format!(
            "caveat c(x int, b bool, m map<any>, l list<int>) {{ x == 0 && b && m == m && l == l && ({expression}) }}"
        )
    }

    fn refused_as_too_deep(text: &str) -> String {
        let e = compile(text).unwrap_err();
        assert!(e.is_parse(), "{e}");
        assert!(
            e.message().contains("limit"),
            "{}",
            e.message().chars().take(300).collect::<String>()
        );
        e.message().to_string()
    }

    /// Each of these overflowed the stack (or took unbounded time) before the limits.
    #[test]
    fn caveat_expressions_past_the_limits_are_parse_errors() {
        // 50,000 terms: too long, and too deep
        let terms = format!("x{} > 0", " + 1".repeat(50_000));
        refused_as_too_deep(&caveat_schema(&terms));
        let terms = format!("x{} > 0", "+1".repeat(20_000));
        let m = refused_as_too_deep(&caveat_schema(&terms));
        assert!(m.contains("recursion limit"), "{m}");
        let parens = format!("{}x{} > 0", "(".repeat(10_000), ")".repeat(10_000));
        let m = refused_as_too_deep(&caveat_schema(&parens));
        assert!(m.contains("nested more than"), "{m}");
        for expression in [
            format!("{}b{}", "b && (".repeat(10_000), ")".repeat(10_000)),
            format!("{}b{}", "b || (".repeat(10_000), ")".repeat(10_000)),
            format!("{}b", "!".repeat(20_000)),
            format!("{}x > 0", "-".repeat(20_000)),
            format!("{}b{}", "!(".repeat(10_000), ")".repeat(10_000)),
            format!("m{} == 1", ".a".repeat(20_000)),
            format!("m{} == 1", "[0]".repeat(20_000)),
            format!("dyn(m){} == 1", ".f()".repeat(10_000)),
            format!("{}x{} > 0", "int(".repeat(10_000), ")".repeat(10_000)),
            format!("size({}x{}) > 0", "[".repeat(10_000), "]".repeat(10_000)),
            format!("size({}x{}) > 0", "{1: ".repeat(10_000), "}".repeat(10_000)),
            format!("{}true{}", "l.all(a, ".repeat(10_000), ")".repeat(10_000)),
            format!("{}b", "b ? false : ".repeat(10_000)),
            "(".repeat(50_000),
        ] {
            refused_as_too_deep(&caveat_schema(&expression));
        }
        // long `&&` / `||` chains are balanced trees: accepted
        let chain = vec!["x > 1"; 5_000].join(" && ");
        assert!(compile(&caveat_schema(&chain)).is_ok());
        let chain = vec!["x > 1"; 5_000].join(" || ");
        assert!(compile(&caveat_schema(&chain)).is_ok());
    }

    #[test]
    fn nested_permission_expressions_are_parse_errors() {
        for n in [10_000, 100_000] {
            let text = format!(
                "definition user {{}}\ndefinition doc {{\n relation reader: user\n permission perm = {}reader{}\n}}",
                "(".repeat(n),
                ")".repeat(n)
            );
            refused_as_too_deep(&text);
        }
    }

    fn chained(n: usize) -> String {
        let mut text =
            String::from("definition user {}\ndefinition doc {\n relation reader: user\n");
        for i in 0..n {
            text.push_str(&format!(" permission perm{i} = perm{}\n", i + 1));
        }
        text.push_str(&format!(" permission perm{n} = reader\n}}\n"));
        text
    }

    #[test]
    fn long_chains_of_permissions_are_parse_errors() {
        let m = refused_as_too_deep(&chained(200_000));
        assert!(m.contains("chain of"), "{m}");
        // the chain counts the relation at its end
        assert!(compile(&chained(limits::MAX_PERMISSION_CHAIN - 2)).is_ok());
        assert!(compile(&chained(limits::MAX_PERMISSION_CHAIN - 1)).is_err());
    }

    #[test]
    fn chains_follow_arrows_and_subject_relations_across_definitions() {
        // definition tt{i} has `relation sub: tt{i+1}#see` and `permission see = next->see +
        // sub + own`: each definition adds two steps (the permission, then the relation)
        let build = |n: usize| {
            let mut text = String::from("definition user {}\n");
            for i in 0..n {
                text.push_str(&format!(
                    "definition tt{i} {{\n relation own: user\n relation next: tt{}\n relation sub: tt{}#see\n permission see = next->see + sub + own\n}}\n",
                    i + 1,
                    i + 1
                ));
            }
            text.push_str(&format!(
                "definition tt{n} {{\n relation own: user\n permission see = own\n}}\n"
            ));
            text
        };
        let max = limits::MAX_PERMISSION_CHAIN;
        assert!(compile(&build(max / 2 - 1)).is_ok());
        let m = refused_as_too_deep(&build(max / 2 + 1));
        assert!(m.contains("chain of"), "{m}");
        // recursion (a cycle through an arrow) counts its members once
        let recursive = "definition user {}\ndefinition folder {\n relation parent: folder\n relation viewer: user\n permission view = viewer + parent->view\n}\n";
        assert!(compile(recursive).is_ok());
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
