//! Size and depth bounds on schemas, checked before anything recursive sees the input.
//!
//! Caveat expressions are scanned here, iteratively, before the `cel` crate's recursive parser
//! gets them; chains of permission references are checked by the type checker.
//!
//! Caveat expressions: cel-go, which SpiceDB uses, refuses an expression of more than 100,000
//! code points and one whose parse recurses more than 250 levels (each nested parenthesis,
//! call or index, and each operator of a chain like `x + 1 + 1`, is a level; `&&` and `||`
//! chains are balanced trees and cost only their logarithm). The `cel` crate parses, checks and
//! evaluates by recursion on the tree, so [`check_caveat_expression`] scans the text with an
//! explicit stack and computes an upper bound of the depth of the tree the crate will build,
//! refusing anything above [`MAX_CAVEAT_EXPRESSION_DEPTH`]. The bound counts every operator,
//! bracket and macro expansion on a path, so it is never below the real depth.

/// The longest caveat expression accepted, in code points (cel-go's default).
pub const MAX_CAVEAT_EXPRESSION_CODE_POINTS: usize = 100_000;

/// The deepest caveat expression accepted, as the upper bound computed by
/// [`check_caveat_expression`]. cel-go refuses at 250 levels; the `cel` crate spends more stack
/// per level (its ANTLR parser most), so this is lower, still far above any expression written
/// by hand. At this bound and [`MAX_CAVEAT_EXPRESSION_NESTING`], the deepest expression of
/// every shape is parsed, checked, evaluated and partially evaluated within 768 KiB of stack
/// in a release build (the test `the_deepest_accepted_expressions_fit_a_small_stack` in
/// `engine::cel` runs them on 2 MiB).
pub const MAX_CAVEAT_EXPRESSION_DEPTH: usize = 100;

/// The longest chain of permission references accepted in a schema: computed usersets,
/// arrows and subject relations followed from a relation or permission to the next, across
/// definitions, a recursive group of them counting as all its members. Every step of such a
/// chain that is not a plain alias spends one level of the dispatch depth budget (50 by
/// default), so a longer chain could never be answered to its end anyway; aliases are free in
/// the engine, hence the margin.
pub const MAX_PERMISSION_CHAIN: usize = 1_000;

/// The most brackets (and `?:` alternatives, whose `else` side nests the same way) open at once
/// in a caveat expression. The `cel` crate's parser refuses 96 levels with an obscure message;
/// this says it first, and plainly.
pub const MAX_CAVEAT_EXPRESSION_NESTING: usize = 90;

/// Added to a call of a comprehension macro (`all`, `exists`, `exists_one`, `map`, `filter`):
/// its expansion puts up to this many more nodes above the macro's arguments than a call does.
const MACRO_EXTRA_DEPTH: usize = 3;

/// Why an expression is refused: the message, and the byte offset in the expression it is
/// about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionLimitError {
    /// what is wrong, naming the limit
    pub message: String,
    /// byte offset in the expression
    pub offset: usize,
}

/// The depth bound of one bracketed part of the expression (or of the whole): the shape of
/// what has been read so far at this level.
#[derive(Debug, Default)]
struct Frame {
    /// byte offset of the opening bracket
    open: usize,
    /// `?` operators read at this level: each puts one conditional node above its operands
    conditionals: usize,
    /// the deepest of the finished pieces (separated by `?`, `:` or `,`)
    pieces: usize,
    /// `||` operands finished in the current piece, and the deepest of them
    or_terms: usize,
    or_max: usize,
    /// `&&` operands finished in the current `||` operand, and the deepest of them
    and_terms: usize,
    and_max: usize,
    /// operators and brackets read in the current `&&` operand: each is at most one node
    /// on a path down from it
    ops: usize,
    /// the deepest bracketed part read in the current `&&` operand
    child: usize,
}

/// `ceil(log2(n))`: the depth a balanced tree adds above `n` operands.
fn ceil_log2(n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as usize
    }
}

impl Frame {
    fn opened_at(open: usize) -> Frame {
        Frame {
            open,
            ..Frame::default()
        }
    }

    fn end_term(&mut self) -> usize {
        let d = self.ops.saturating_add(self.child.max(1));
        self.ops = 0;
        self.child = 0;
        d
    }

    /// `&&` read: the current operand is finished.
    fn and(&mut self) {
        let t = self.end_term();
        self.and_max = self.and_max.max(t);
        self.and_terms += 1;
    }

    fn end_and_chain(&mut self) -> usize {
        self.and();
        let d = self.and_max.saturating_add(ceil_log2(self.and_terms));
        self.and_terms = 0;
        self.and_max = 0;
        d
    }

    /// `||` read: the current operand is finished.
    fn or(&mut self) {
        let t = self.end_and_chain();
        self.or_max = self.or_max.max(t);
        self.or_terms += 1;
    }

    /// `?`, `:` or `,` read, or the end of the level: the current piece is finished.
    fn end_piece(&mut self) {
        self.or();
        let d = self.or_max.saturating_add(ceil_log2(self.or_terms));
        self.or_terms = 0;
        self.or_max = 0;
        self.pieces = self.pieces.max(d);
    }

    /// The depth bound of everything at this level.
    fn finish(mut self) -> usize {
        self.end_piece();
        self.pieces.saturating_add(self.conditionals)
    }
}

/// The comprehension macros of CEL's standard library.
fn is_macro(name: &str) -> bool {
    matches!(name, "all" | "exists" | "exists_one" | "map" | "filter")
}

/// Refuses a caveat expression longer than [`MAX_CAVEAT_EXPRESSION_CODE_POINTS`] or whose tree
/// may be deeper than [`MAX_CAVEAT_EXPRESSION_DEPTH`]. Linear in the text, no recursion.
/// Malformed text is left to the CEL parser; the bound holds for whatever it reads.
pub fn check_caveat_expression(expression: &str) -> Result<(), ExpressionLimitError> {
    let size = expression.chars().count();
    if size > MAX_CAVEAT_EXPRESSION_CODE_POINTS {
        return Err(ExpressionLimitError {
            message: format!(
                "expression code point size exceeds limit: size: {size}, limit {MAX_CAVEAT_EXPRESSION_CODE_POINTS}"
            ),
            offset: 0,
        });
    }
    let too_deep = |offset: usize| ExpressionLimitError {
        message: format!(
            "expression recursion limit exceeded: the expression is nested or chained more than {MAX_CAVEAT_EXPRESSION_DEPTH} levels deep"
        ),
        offset,
    };
    let too_nested = |offset: usize| ExpressionLimitError {
        message: format!(
            "expression recursion limit exceeded: brackets and conditionals are nested more than {MAX_CAVEAT_EXPRESSION_NESTING} levels deep"
        ),
        offset,
    };
    let bytes = expression.as_bytes();
    let mut stack: Vec<Frame> = vec![Frame::opened_at(0)];
    // open brackets, plus the `?` read in every open frame
    let mut nesting = 0usize;
    // the identifier just read, if the last token was one (a macro name before `(`)
    let mut last_ident: Option<&str> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let ident = last_ident.take();
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                i += 1;
                last_ident = ident;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                last_ident = ident;
            }
            b'"' | b'\'' => i = skip_string(bytes, i, false),
            b'r' | b'R' | b'b' | b'B' if starts_string(bytes, i) => {
                let mut raw = false;
                while matches!(bytes.get(i), Some(b'r' | b'R' | b'b' | b'B')) {
                    raw |= matches!(bytes[i], b'r' | b'R');
                    i += 1;
                }
                i = skip_string(bytes, i, raw);
            }
            b'0'..=b'9' => {
                // digits, letters (hex digits, exponents, the `u` suffix), exponent signs and
                // `.` followed by a digit; such a `.` counts as an operator, in case the parser
                // reads it as one
                i += 1;
                while i < bytes.len() {
                    let c = bytes[i];
                    let exponent_sign = matches!(c, b'+' | b'-')
                        && matches!(bytes[i - 1], b'e' | b'E')
                        && !expression
                            .get(start..i)
                            .is_some_and(|s| s.starts_with("0x") || s.starts_with("0X"));
                    if c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        if let Some(f) = stack.last_mut() {
                            f.ops += 1;
                        }
                        i += 1;
                    } else if c.is_ascii_alphanumeric() || c == b'_' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] >= 0x80)
                {
                    i += 1;
                }
                let word = expression.get(start..i).unwrap_or_default();
                if word == "in"
                    && let Some(f) = stack.last_mut()
                {
                    f.ops += 1;
                }
                last_ident = Some(word);
            }
            b'(' | b'[' | b'{' => {
                i += 1;
                if let Some(f) = stack.last_mut() {
                    f.ops += 1;
                    if b == b'(' && ident.is_some_and(is_macro) {
                        f.ops += MACRO_EXTRA_DEPTH;
                    }
                }
                stack.push(Frame::opened_at(start));
                nesting += 1;
                if nesting > MAX_CAVEAT_EXPRESSION_NESTING {
                    return Err(too_nested(start));
                }
            }
            b')' | b']' | b'}' => {
                i += 1;
                // an unbalanced closing bracket is the parser's to report
                if stack.len() > 1
                    && let Some(done) = stack.pop()
                {
                    nesting = nesting.saturating_sub(done.conditionals.saturating_add(1));
                    let depth = done.finish();
                    let Some(parent) = stack.last_mut() else {
                        break;
                    };
                    parent.child = parent.child.max(depth);
                }
            }
            b'&' | b'|' if bytes.get(i + 1) == Some(&b) => {
                i += 2;
                if let Some(f) = stack.last_mut() {
                    if b == b'&' {
                        f.and();
                    } else {
                        f.or();
                    }
                }
            }
            b'?' => {
                i += 1;
                if let Some(f) = stack.last_mut() {
                    f.conditionals += 1;
                    f.end_piece();
                }
                nesting += 1;
                if nesting > MAX_CAVEAT_EXPRESSION_NESTING {
                    return Err(too_nested(start));
                }
            }
            b':' | b',' => {
                i += 1;
                if let Some(f) = stack.last_mut() {
                    f.end_piece();
                }
            }
            _ => {
                // any other operator: `.`, `!`, `-`, `+`, `*`, `/`, `%`, `==`, `!=`, `<`, `<=`,
                // `>`, `>=` (two-character operators count twice: still a bound)
                i += 1;
                if let Some(f) = stack.last_mut() {
                    f.ops += 1;
                }
            }
        }
        // checked as the text is read, so the message points at where the limit is passed
        let open_brackets = stack.len() - 1;
        let current = stack.last().map_or(0, |f| {
            f.ops
                .saturating_add(f.conditionals)
                .saturating_add(ceil_log2(f.and_terms + 1))
                .saturating_add(ceil_log2(f.or_terms + 1))
        });
        if open_brackets.saturating_add(current) > MAX_CAVEAT_EXPRESSION_DEPTH {
            return Err(too_deep(start));
        }
    }
    // brackets left open count as closed at the end
    while let Some(done) = stack.pop() {
        let open = done.open;
        let depth = done.finish();
        match stack.last_mut() {
            Some(parent) => parent.child = parent.child.max(depth),
            None => {
                if depth > MAX_CAVEAT_EXPRESSION_DEPTH {
                    return Err(too_deep(open));
                }
            }
        }
    }
    Ok(())
}

/// Does a string literal with a prefix (`r`, `b`, `rb`, `br`, any case) start at `i`?
fn starts_string(bytes: &[u8], i: usize) -> bool {
    let mut j = i;
    while j < bytes.len() && j - i < 2 && matches!(bytes[j], b'r' | b'R' | b'b' | b'B') {
        j += 1;
    }
    matches!(bytes.get(j), Some(b'"' | b'\''))
}

/// The offset just after the string literal whose opening quote is at `i` (the end of the text
/// if it is not closed).
fn skip_string(bytes: &[u8], i: usize, raw: bool) -> usize {
    let Some(&quote) = bytes.get(i) else {
        return bytes.len();
    };
    let triple = bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote);
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < bytes.len() {
        let c = bytes[j];
        if c == b'\\' && !raw {
            j += 2;
            continue;
        }
        if c == quote {
            if !triple {
                return j + 1;
            }
            if bytes.get(j + 1) == Some(&quote) && bytes.get(j + 2) == Some(&quote) {
                return j + 3;
            }
        }
        if c == b'\n' && !triple {
            // a single-quoted string ends at the line's end (the parser reports it)
            return j;
        }
        j += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(e: &str) -> bool {
        check_caveat_expression(e).is_ok()
    }

    fn chain(op: &str, n: usize) -> String {
        let mut s = String::from("x");
        for _ in 1..n {
            s.push_str(op);
            s.push('1');
        }
        s
    }

    fn nested(open: &str, inner: &str, close: &str, n: usize) -> String {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn log2() {
        assert_eq!(ceil_log2(0), 0);
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(4), 2);
        assert_eq!(ceil_log2(5), 3);
        assert_eq!(ceil_log2(1 << 20), 20);
    }

    #[test]
    fn ordinary_expressions_pass() {
        for e in [
            "x > 1",
            "a == 1 && b == 2 || c.startsWith('x')",
            "l.all(t, t.startsWith(\"a\")) && m['k'] > 1.5e-3",
            "ts < now || x <= y ? true : false",
            "r'raw ((((' + b\"bytes\" + '''tri'ple''' == s",
            "// a comment ((((((\n x > 1",
            "{'a': [1, 2, 3], 'b': [4]}.exists(k, k == s)",
        ] {
            assert!(depth_ok(e), "{e}");
        }
    }

    #[test]
    fn long_arithmetic_chains_are_refused() {
        let limit = MAX_CAVEAT_EXPRESSION_DEPTH;
        assert!(depth_ok(&format!("{} > 0", chain(" + ", limit - 1))));
        let e = check_caveat_expression(&chain("+", 30_000)).unwrap_err();
        assert!(e.message.contains("recursion limit"), "{}", e.message);
        // reported where the bound is passed, not at the end
        assert!(e.offset < 2_000, "{}", e.offset);
        for op in [
            " - ", " * ", " / ", " % ", " == ", " < ", " in ", ".", "[0]",
        ] {
            assert!(!depth_ok(&chain(op, 2 * limit)), "{op}");
        }
    }

    #[test]
    fn logic_chains_are_balanced() {
        // a balanced tree of 10,000 operands is 14 levels deep
        let long_and = vec!["x == 1"; 10_000].join(" && ");
        assert!(depth_ok(&long_and));
        let long_or = vec!["(x == 1 && y)"; 5_000].join(" || ");
        assert!(depth_ok(&long_or));
        // parenthesized on one side, each level counts
        let right_nested = format!("{}x{}", "x && (".repeat(10_000), ")".repeat(10_000));
        assert!(!depth_ok(&right_nested));
    }

    #[test]
    fn nesting_is_refused() {
        let limit = MAX_CAVEAT_EXPRESSION_DEPTH;
        let nesting = MAX_CAVEAT_EXPRESSION_NESTING;
        assert!(depth_ok(&nested("(", "x", ")", nesting)));
        let e = check_caveat_expression(&nested("(", "x", ")", nesting + 1)).unwrap_err();
        assert!(e.message.contains("nested more than"), "{}", e.message);
        assert_eq!(e.offset, nesting);
        assert!(depth_ok(&format!("{}x", "b ? 1 : ".repeat(nesting))));
        assert!(!depth_ok(&format!("{}x", "b ? 1 : ".repeat(nesting + 1))));
        // siblings do not nest
        assert!(depth_ok(&"(x) + ".repeat(limit / 3)));
        for (open, inner, close) in [
            ("(", "x", ")"),
            ("[", "1", "]"),
            ("{1: ", "1", "}"),
            ("f(", "1", ")"),
            ("!", "x", ""),
            ("-", "x", ""),
            ("!(", "x", ")"),
            ("-(", "x", ")"),
            ("x ? 1 : ", "1", ""),
            ("l.all(t, ", "t", ")"),
            ("l.map(t, ", "t", ")"),
            ("dyn(", "x", ").y"),
            ("a.b(", "x", ").c()"),
            ("[", "1", "][0]"),
        ] {
            // unclosed brackets count too
            assert!(!depth_ok(&nested(open, inner, close, 10_000)), "{open}");
            assert!(!depth_ok(&open.repeat(10_000)), "{open}");
        }
    }

    #[test]
    fn macros_count_their_expansion() {
        let limit = MAX_CAVEAT_EXPRESSION_DEPTH;
        let n = limit / (2 + MACRO_EXTRA_DEPTH) + 1;
        assert!(!depth_ok(&nested("l.all(t, ", "t", ")", n)));
        assert!(depth_ok(&nested("l.size(", "t", ")", n)));
    }

    #[test]
    fn strings_and_comments_hide_brackets() {
        let deep = "(".repeat(10_000);
        for e in [
            format!("s == '{deep}'"),
            format!("s == \"{deep}\""),
            format!("s == r'{deep}'"),
            format!("s == b'{deep}'"),
            format!("s == '''{deep}\n'''"),
            format!("s == \"a\\\"{deep}\""),
            format!("s == 1 // {deep}\n"),
        ] {
            assert!(depth_ok(&e), "{e}");
        }
        // a `.` inside a number still counts
        assert!(!depth_ok(&format!("1{}", ".1".repeat(10_000))));
        assert!(!depth_ok(&format!("0{}", ".a".repeat(10_000))));
    }

    #[test]
    fn size_limit() {
        let long = format!("x == '{}'", "a".repeat(MAX_CAVEAT_EXPRESSION_CODE_POINTS));
        let e = check_caveat_expression(&long).unwrap_err();
        assert!(
            e.message.contains("code point size exceeds limit"),
            "{}",
            e.message
        );
        let fits = format!(
            "x == '{}'",
            "é".repeat(MAX_CAVEAT_EXPRESSION_CODE_POINTS - 10)
        );
        assert!(depth_ok(&fits));
    }
}
