//! A light type check of caveat expressions, as SpiceDB's WriteSchema does with cel-go's.
//!
//! The expression must parse, name only its parameters and CEL's standard functions, apply
//! operators to operands of matching types (no implicit numeric conversion: `int > 1.0` is
//! refused), and result in a `bool`.
//!
//! The checker is deliberately partial: where it cannot tell a type (a struct literal, an
//! optional, a function outside the table below, an operation on `any`), the type is unknown
//! and nothing is refused. So it refuses a subset of what cel-go refuses, never more.

use std::fmt;

use ::cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};
use ::cel::parser::Parser;

use crate::schema::compiled::{CaveatParam, CaveatType};

/// A CEL type, as far as the checker follows them.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Int,
    Uint,
    Double,
    Bool,
    String,
    Bytes,
    Duration,
    Timestamp,
    Null,
    Ip,
    Type,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// CEL's `dyn` (a parameter of type `any`, `dyn(x)`): accepted by every operation, but not
    /// a boolean result
    Dyn,
    /// the checker does not know: accepted everywhere, also as the result
    Unknown,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Int => write!(f, "int"),
            Ty::Uint => write!(f, "uint"),
            Ty::Double => write!(f, "double"),
            Ty::Bool => write!(f, "bool"),
            Ty::String => write!(f, "string"),
            Ty::Bytes => write!(f, "bytes"),
            Ty::Duration => write!(f, "google.protobuf.Duration"),
            Ty::Timestamp => write!(f, "google.protobuf.Timestamp"),
            Ty::Null => write!(f, "null"),
            Ty::Ip => write!(f, "IPAddress"),
            Ty::Type => write!(f, "type"),
            Ty::List(e) => write!(f, "list({e})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Dyn | Ty::Unknown => write!(f, "dyn"),
        }
    }
}

impl Ty {
    fn of(t: &CaveatType) -> Ty {
        match t {
            CaveatType::Any => Ty::Dyn,
            CaveatType::Bool => Ty::Bool,
            CaveatType::String => Ty::String,
            CaveatType::Int => Ty::Int,
            CaveatType::Uint => Ty::Uint,
            CaveatType::Double => Ty::Double,
            CaveatType::Bytes => Ty::Bytes,
            CaveatType::Duration => Ty::Duration,
            CaveatType::Timestamp => Ty::Timestamp,
            CaveatType::IpAddress => Ty::Ip,
            CaveatType::List(e) => Ty::List(Box::new(Ty::of(e))),
            CaveatType::Map(v) => Ty::Map(Box::new(Ty::String), Box::new(Ty::of(v))),
        }
    }

    /// Dynamic: matches any type.
    fn is_open(&self) -> bool {
        matches!(self, Ty::Dyn | Ty::Unknown)
    }

    /// As in an overload error: `duration` and `timestamp` by their short names.
    fn short(&self) -> String {
        match self {
            Ty::Duration => "duration".to_string(),
            Ty::Timestamp => "timestamp".to_string(),
            other => other.to_string(),
        }
    }
}

/// The more specific of two types that unify, or `None` when they do not.
fn unify(a: &Ty, b: &Ty) -> Option<Ty> {
    match (a, b) {
        (Ty::Unknown, x) | (x, Ty::Unknown) => Some(x.clone()),
        (Ty::Dyn, x) | (x, Ty::Dyn) => Some(x.clone()),
        (Ty::List(x), Ty::List(y)) => Some(Ty::List(Box::new(unify(x, y)?))),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => {
            Some(Ty::Map(Box::new(unify(k1, k2)?), Box::new(unify(v1, v2)?)))
        }
        (x, y) if x == y => Some(x.clone()),
        _ => None,
    }
}

/// Why a caveat expression is refused: the message, and the byte offset in the expression of
/// the node it is about (if known).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CelTypeError {
    pub(crate) message: String,
    pub(crate) offset: Option<usize>,
}

/// Type-checks `expression` over `params`. The error names a position inside the expression
/// (byte offset) when it concerns one node.
pub(crate) fn check_expression(
    expression: &str,
    params: &[CaveatParam],
) -> Result<(), CelTypeError> {
    // The parser recurses on the expression's depth: bound it first.
    if let Err(e) = super::limits::check_caveat_expression(expression) {
        return Err(CelTypeError {
            message: e.message,
            offset: Some(e.offset),
        });
    }
    // The parser is not ours: a panic in it must not take the caller down.
    let parsed = std::panic::catch_unwind(|| Parser::new().parse_with_source_info(expression));
    let (expr, info) = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(errors)) => {
            let first = errors.errors.first();
            let message = first
                .map(|e| {
                    if e.msg.starts_with("Syntax error") {
                        e.msg.clone()
                    } else {
                        format!("Syntax error: {}", e.msg)
                    }
                })
                .unwrap_or_else(|| "Syntax error".to_string());
            let offset = first.and_then(|e| line_col_offset(expression, e.pos));
            return Err(CelTypeError { message, offset });
        }
        Err(_) => {
            return Err(CelTypeError {
                message: "the expression could not be parsed".to_string(),
                offset: None,
            });
        }
    };
    let mut checker = Checker {
        info: &info,
        scope: params
            .iter()
            .map(|p| (p.name.clone(), Ty::of(&p.type_)))
            .collect(),
    };
    let ty = checker.check(&expr)?;
    match ty {
        Ty::Bool | Ty::Unknown => Ok(()),
        other => Err(CelTypeError {
            message: format!("caveat expression must result in a boolean value: found `{other}`"),
            offset: None,
        }),
    }
}

/// The byte offset of a 1-based (line, column) position in `text`.
fn line_col_offset(text: &str, (line, col): (isize, isize)) -> Option<usize> {
    let line = usize::try_from(line).ok()?.checked_sub(1)?;
    let col = usize::try_from(col).ok()?.saturating_sub(1);
    let start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
    Some(start + col)
}

struct Checker<'i> {
    info: &'i SourceInfo,
    /// the variables in scope, innermost last
    scope: Vec<(String, Ty)>,
}

impl Checker<'_> {
    fn err(&self, at: &IdedExpr, message: String) -> CelTypeError {
        CelTypeError {
            message,
            offset: self
                .info
                .offset_for(at.id)
                .and_then(|(start, _)| usize::try_from(start).ok()),
        }
    }

    fn no_overload(
        &self,
        at: &IdedExpr,
        name: &str,
        target: Option<&Ty>,
        args: &[Ty],
    ) -> CelTypeError {
        let list: Vec<String> = args.iter().map(Ty::short).collect();
        let applied = match target {
            Some(t) => format!("{}.({})", t.short(), list.join(", ")),
            None => format!("({})", list.join(", ")),
        };
        self.err(
            at,
            format!("found no matching overload for '{name}' applied to '{applied}'"),
        )
    }

    fn lookup(&self, name: &str) -> Option<Ty> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    }

    fn check(&mut self, e: &IdedExpr) -> Result<Ty, CelTypeError> {
        match &e.expr {
            Expr::Unspecified | Expr::Struct(_) => Ok(Ty::Unknown),
            Expr::Literal(l) => Ok(match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            }),
            Expr::Ident(name) => match self.lookup(name) {
                Some(t) => Ok(t),
                None => match name.as_str() {
                    "int" | "uint" | "double" | "bool" | "string" | "bytes" | "list" | "map"
                    | "null_type" | "type" | "dyn" => Ok(Ty::Type),
                    _ => Err(self.err(
                        e,
                        format!("undeclared reference to '{name}' (in container '')"),
                    )),
                },
            },
            Expr::List(l) => {
                let mut elem = Ty::Unknown;
                for x in &l.elements {
                    let t = self.check(x)?;
                    elem = unify(&elem, &t).unwrap_or(Ty::Dyn);
                }
                if !l.optional_indices.is_empty() {
                    elem = Ty::Unknown;
                }
                Ok(Ty::List(Box::new(elem)))
            }
            Expr::Map(m) => {
                let (mut k, mut v) = (Ty::Unknown, Ty::Unknown);
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            let kt = self.check(&me.key)?;
                            let vt = self.check(&me.value)?;
                            k = unify(&k, &kt).unwrap_or(Ty::Dyn);
                            v = unify(&v, &vt).unwrap_or(Ty::Dyn);
                        }
                        EntryExpr::StructField(_) => return Ok(Ty::Unknown),
                    }
                }
                Ok(Ty::Map(Box::new(k), Box::new(v)))
            }
            Expr::Select(s) => {
                // A qualified name (`a.b`) whose root is no variable: not followed.
                if let Expr::Ident(root) = &s.operand.expr
                    && self.lookup(root).is_none()
                {
                    return Ok(Ty::Unknown);
                }
                let t = self.check(&s.operand)?;
                let field = match &t {
                    Ty::Map(_, v) => (**v).clone(),
                    Ty::Dyn => Ty::Dyn,
                    Ty::Unknown => Ty::Unknown,
                    other => {
                        return Err(self.err(
                            e,
                            format!("type '{}' does not support field selection", other.short()),
                        ));
                    }
                };
                Ok(if s.test { Ty::Bool } else { field })
            }
            Expr::Comprehension(c) => {
                let range = self.check(&c.iter_range)?;
                let (first, second) = match &range {
                    Ty::List(elem) => (Ty::Int, (**elem).clone()),
                    Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    Ty::Unknown => (Ty::Unknown, Ty::Unknown),
                    other => {
                        return Err(self.err(
                            &c.iter_range,
                            format!(
                                "expression of type '{}' cannot be range of a comprehension (must be list, map, or dynamic)",
                                other.short()
                            ),
                        ));
                    }
                };
                let depth = self.scope.len();
                match &c.iter_var2 {
                    Some(v2) => {
                        self.scope.push((c.iter_var.clone(), first));
                        self.scope.push((v2.clone(), second));
                    }
                    None => {
                        let only = match &range {
                            Ty::List(_) => second,
                            _ => first,
                        };
                        self.scope.push((c.iter_var.clone(), only));
                    }
                }
                let result = self.comprehension_body(c);
                self.scope.truncate(depth);
                result
            }
            Expr::Call(call) => {
                let target = match &call.target {
                    // `ns.fn(...)` with `ns` no variable: a namespaced function, not followed.
                    Some(t) if matches!(&t.expr, Expr::Ident(n) if self.lookup(n).is_none()) => {
                        for a in &call.args {
                            self.check(a)?;
                        }
                        return Ok(Ty::Unknown);
                    }
                    Some(t) => Some(self.check(t)?),
                    None => None,
                };
                let mut args = Vec::with_capacity(call.args.len());
                for a in &call.args {
                    args.push(self.check(a)?);
                }
                match target {
                    Some(t) => self.member_call(e, &call.func_name, &t, &args),
                    None => self.call(e, &call.func_name, &args),
                }
            }
        }
    }

    fn comprehension_body(
        &mut self,
        c: &::cel::common::ast::ComprehensionExpr,
    ) -> Result<Ty, CelTypeError> {
        let init = self.check(&c.accu_init)?;
        let depth = self.scope.len();
        self.scope.push((c.accu_var.clone(), init.clone()));
        let step = self.check(&c.loop_step);
        self.scope.truncate(depth);
        let step = step?;
        let accu = unify(&init, &step).unwrap_or(Ty::Dyn);
        self.scope.push((c.accu_var.clone(), accu));
        let out = self.check(&c.loop_cond).and_then(|_| self.check(&c.result));
        self.scope.truncate(depth);
        out
    }

    /// An operator or a global function.
    fn call(&mut self, e: &IdedExpr, name: &str, args: &[Ty]) -> Result<Ty, CelTypeError> {
        let fail = |c: &Self| Err(c.no_overload(e, name, None, args));
        if args.contains(&Ty::Unknown) && name != operators::CONDITIONAL {
            // Unknown operands: only the result type of operators that always give one.
            return Ok(match name {
                operators::LOGICAL_AND
                | operators::LOGICAL_OR
                | operators::LOGICAL_NOT
                | operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS
                | operators::IN
                | operators::NOT_STRICTLY_FALSE
                | "matches" => Ty::Bool,
                _ => Ty::Unknown,
            });
        }
        let numeric = |t: &Ty| matches!(t, Ty::Int | Ty::Uint | Ty::Double);
        match (name, args) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, [a, b]) => {
                if (a.is_open() || *a == Ty::Bool) && (b.is_open() || *b == Ty::Bool) {
                    Ok(Ty::Bool)
                } else {
                    fail(self)
                }
            }
            (operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE, [a]) => {
                if a.is_open() || *a == Ty::Bool {
                    Ok(Ty::Bool)
                } else {
                    fail(self)
                }
            }
            (operators::NEGATE, [a]) => match a {
                Ty::Int | Ty::Double | Ty::Dyn => Ok(a.clone()),
                _ => fail(self),
            },
            (operators::EQUALS | operators::NOT_EQUALS, [a, b]) => match unify(a, b) {
                Some(_) => Ok(Ty::Bool),
                None => fail(self),
            },
            (
                operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS,
                [a, b],
            ) => {
                let comparable = |t: &Ty| {
                    numeric(t)
                        || matches!(
                            t,
                            Ty::String
                                | Ty::Bytes
                                | Ty::Bool
                                | Ty::Timestamp
                                | Ty::Duration
                                | Ty::Dyn
                        )
                };
                match unify(a, b) {
                    Some(t) if comparable(a) && comparable(b) && comparable(&t) => Ok(Ty::Bool),
                    _ => fail(self),
                }
            }
            (operators::ADD, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ok(Ty::Unknown),
                (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => Ok(Ty::Timestamp),
                (Ty::List(_), Ty::List(_)) => unify(a, b).map_or_else(|| fail(self), Ok),
                (x, y)
                    if x == y
                        && (numeric(x) || matches!(x, Ty::String | Ty::Bytes | Ty::Duration)) =>
                {
                    Ok(x.clone())
                }
                _ => fail(self),
            },
            (operators::SUBSTRACT, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ok(Ty::Unknown),
                (Ty::Timestamp, Ty::Timestamp) => Ok(Ty::Duration),
                (Ty::Timestamp, Ty::Duration) => Ok(Ty::Timestamp),
                (x, y) if x == y && (numeric(x) || *x == Ty::Duration) => Ok(x.clone()),
                _ => fail(self),
            },
            (operators::MULTIPLY | operators::DIVIDE, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ok(Ty::Unknown),
                (x, y) if x == y && numeric(x) => Ok(x.clone()),
                _ => fail(self),
            },
            (operators::MODULO, [a, b]) => match (a, b) {
                (Ty::Dyn, _) | (_, Ty::Dyn) => Ok(Ty::Unknown),
                (x, y) if x == y && matches!(x, Ty::Int | Ty::Uint) => Ok(x.clone()),
                _ => fail(self),
            },
            (operators::IN, [a, b]) => match b {
                Ty::List(elem) if unify(a, elem).is_some() => Ok(Ty::Bool),
                Ty::Map(k, _) if unify(a, k).is_some() => Ok(Ty::Bool),
                Ty::Dyn => Ok(Ty::Bool),
                _ => fail(self),
            },
            (operators::INDEX, [a, b]) => match a {
                Ty::List(elem) if matches!(b, Ty::Int | Ty::Uint | Ty::Dyn) => Ok((**elem).clone()),
                Ty::Map(k, v) if unify(k, b).is_some() => Ok((**v).clone()),
                Ty::Dyn => Ok(Ty::Dyn),
                _ => fail(self),
            },
            (operators::CONDITIONAL, [c, x, y]) => {
                if !(c.is_open() || *c == Ty::Bool) {
                    return fail(self);
                }
                unify(x, y).map_or_else(|| fail(self), Ok)
            }
            (operators::OPT_INDEX | operators::OPT_SELECT, _) => Ok(Ty::Unknown),
            ("size", [a]) => match a {
                Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(_, _) | Ty::Dyn => Ok(Ty::Int),
                _ => fail(self),
            },
            ("int", [a]) => match a {
                Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Timestamp | Ty::Dyn => {
                    Ok(Ty::Int)
                }
                _ => fail(self),
            },
            ("uint", [a]) => match a {
                Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Dyn => Ok(Ty::Uint),
                _ => fail(self),
            },
            ("double", [a]) => match a {
                Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Dyn => Ok(Ty::Double),
                _ => fail(self),
            },
            ("string", [a]) => match a {
                Ty::Int
                | Ty::Uint
                | Ty::Double
                | Ty::String
                | Ty::Bytes
                | Ty::Bool
                | Ty::Timestamp
                | Ty::Duration
                | Ty::Dyn => Ok(Ty::String),
                _ => fail(self),
            },
            ("bytes", [a]) => match a {
                Ty::String | Ty::Bytes | Ty::Dyn => Ok(Ty::Bytes),
                _ => fail(self),
            },
            ("bool", [a]) => match a {
                Ty::String | Ty::Bool | Ty::Dyn => Ok(Ty::Bool),
                _ => fail(self),
            },
            ("timestamp", [a]) => match a {
                Ty::String | Ty::Int | Ty::Timestamp | Ty::Dyn => Ok(Ty::Timestamp),
                _ => fail(self),
            },
            ("duration", [a]) => match a {
                Ty::String | Ty::Duration | Ty::Dyn => Ok(Ty::Duration),
                _ => fail(self),
            },
            ("dyn", [_]) => Ok(Ty::Dyn),
            ("type", [_]) => Ok(Ty::Type),
            ("matches", [a, b]) => match (a, b) {
                (Ty::String | Ty::Dyn, Ty::String | Ty::Dyn) => Ok(Ty::Bool),
                _ => fail(self),
            },
            (
                "size" | "int" | "uint" | "double" | "string" | "bytes" | "bool" | "timestamp"
                | "duration" | "dyn" | "type" | "matches",
                _,
            ) => fail(self),
            // Another operator (the parser makes no others), or a function CEL's standard
            // library does not have.
            (n, _) if n.starts_with('_') || n.starts_with('@') || n.starts_with('!') => {
                Ok(Ty::Unknown)
            }
            (n, _) => Err(self.err(
                e,
                format!("undeclared reference to '{n}' (in container '')"),
            )),
        }
    }

    /// `target.name(args)`.
    fn member_call(
        &mut self,
        e: &IdedExpr,
        name: &str,
        target: &Ty,
        args: &[Ty],
    ) -> Result<Ty, CelTypeError> {
        if target.is_open() || args.contains(&Ty::Unknown) {
            return Ok(match name {
                "startsWith" | "endsWith" | "contains" | "matches" | "in_cidr" => Ty::Bool,
                _ => Ty::Unknown,
            });
        }
        let fail = |c: &Self| Err(c.no_overload(e, name, Some(target), args));
        let string_arg = |a: &[Ty]| matches!(a, [Ty::String | Ty::Dyn]);
        match (name, target) {
            ("size", Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(_, _)) if args.is_empty() => {
                Ok(Ty::Int)
            }
            ("startsWith" | "endsWith" | "contains" | "matches", Ty::String)
                if string_arg(args) =>
            {
                Ok(Ty::Bool)
            }
            ("in_cidr", Ty::Ip) if string_arg(args) => Ok(Ty::Bool),
            (
                "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
                | "getDayOfWeek" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds",
                Ty::Timestamp,
            ) if args.is_empty() || string_arg(args) => Ok(Ty::Int),
            ("getHours" | "getMinutes" | "getSeconds" | "getMilliseconds", Ty::Duration)
                if args.is_empty() =>
            {
                Ok(Ty::Int)
            }
            (
                "size" | "startsWith" | "endsWith" | "contains" | "matches" | "in_cidr"
                | "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
                | "getDayOfWeek" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds",
                _,
            ) => fail(self),
            // Extension functions (strings, lists, ...) are not followed.
            _ => Ok(Ty::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(t: &str) -> CaveatType {
        if let Some(inner) = t.strip_prefix("list<").and_then(|x| x.strip_suffix('>')) {
            return CaveatType::List(Box::new(ty(inner)));
        }
        if let Some(inner) = t.strip_prefix("map<").and_then(|x| x.strip_suffix('>')) {
            return CaveatType::Map(Box::new(ty(inner)));
        }
        CaveatType::scalar(t).unwrap()
    }

    fn params(text: &str) -> Vec<CaveatParam> {
        text.split(", ")
            .map(|p| {
                let (name, t) = p.split_once(' ').unwrap();
                CaveatParam {
                    name: name.to_string(),
                    type_: ty(t),
                }
            })
            .collect()
    }

    /// What SpiceDB's WriteSchema answered for each caveat (probed against the reference
    /// SpiceDB): `None` accepted, `Some(message)` refused.
    #[test]
    fn caveat_expressions_as_spicedb_checks_them() {
        let table: &[(&str, &str, Option<&str>)] = &[
            (
                "x int",
                r#"x == "a""#,
                Some("found no matching overload for '_==_' applied to '(int, string)'"),
            ),
            (
                "x int",
                "nosuchparam > 1 || x > 1",
                Some("undeclared reference to 'nosuchparam' (in container '')"),
            ),
            (
                "x int",
                "x + 1",
                Some("caveat expression must result in a boolean value: found `int`"),
            ),
            (
                "x int",
                "x",
                Some("caveat expression must result in a boolean value: found `int`"),
            ),
            ("flag bool", "flag", None),
            (
                "x int",
                "x > 1.0",
                Some("found no matching overload for '_>_' applied to '(int, double)'"),
            ),
            (
                "x double",
                "x > 1",
                Some("found no matching overload for '_>_' applied to '(double, int)'"),
            ),
            (
                "x uint",
                "x > 1",
                Some("found no matching overload for '_>_' applied to '(uint, int)'"),
            ),
            (
                "x int",
                "x > 1u",
                Some("found no matching overload for '_>_' applied to '(int, uint)'"),
            ),
            (
                "x int, y uint",
                "x > y",
                Some("found no matching overload for '_>_' applied to '(int, uint)'"),
            ),
            ("s string", "s.size() > 1", None),
            ("s string", "size(s) > 1", None),
            (
                "s string",
                "s.startsWith(1)",
                Some("found no matching overload for 'startsWith' applied to 'string.(int)'"),
            ),
            ("l list<int>", "1 in l", None),
            (
                "l list<int>",
                r#""a" in l"#,
                Some("found no matching overload for '@in' applied to '(string, list(int))'"),
            ),
            ("m map<int>", r#""a" in m"#, None),
            ("m map<int>", r#"m["a"] > 1"#, None),
            ("m map<int>", "m.a > 1", None),
            ("a any", "a > 1", None),
            (
                "a any",
                "a",
                Some("caveat expression must result in a boolean value: found `dyn`"),
            ),
            ("a any", "a.b == 1", None),
            (
                "t timestamp",
                r#"t > timestamp("2020-01-01T00:00:00Z")"#,
                None,
            ),
            (
                "t timestamp",
                "t > 1",
                Some("found no matching overload for '_>_' applied to '(timestamp, int)'"),
            ),
            ("d duration", r#"d > duration("1h")"#, None),
            (
                "d duration",
                r#"d > "1h""#,
                Some("found no matching overload for '_>_' applied to '(duration, string)'"),
            ),
            ("ip ipaddress", r#"ip.in_cidr("10.0.0.0/8")"#, None),
            (
                "ip ipaddress",
                "ip.in_cidr(1)",
                Some("found no matching overload for 'in_cidr' applied to 'IPAddress.(int)'"),
            ),
            (
                "ip ipaddress",
                r#"ip == "1.2.3.4""#,
                Some("found no matching overload for '_==_' applied to '(IPAddress, string)'"),
            ),
            (
                "x int",
                "x > 1 ? true : 1",
                Some("found no matching overload for '_?_:_' applied to '(bool, bool, int)'"),
            ),
            ("x int", "x > 1 ? true : false", None),
            ("x int", "[x].exists(y, y > 1)", None),
            (
                "x int",
                "[x].map(y, y + 1)",
                Some("caveat expression must result in a boolean value: found `list(int)`"),
            ),
            ("x int", "x / 0 == 1", None),
            ("x int", "int(x) > 1", None),
            ("x int", r#"string(x) == "1""#, None),
            (
                "x int",
                "nosuchfn(x)",
                Some("undeclared reference to 'nosuchfn' (in container '')"),
            ),
            ("x int", "x > 1 &&", Some("Syntax error")),
            ("b bytes", r#"b == b"a""#, None),
            (
                "b bytes",
                r#"b == "a""#,
                Some("found no matching overload for '_==_' applied to '(bytes, string)'"),
            ),
            ("x int", r#"dyn(x) == "a""#, None),
            (
                "x int",
                "x == null",
                Some("found no matching overload for '_==_' applied to '(int, null)'"),
            ),
            (
                "l list<string>",
                "l[0] == 1",
                Some("found no matching overload for '_==_' applied to '(string, int)'"),
            ),
            (
                "l list<string>",
                "l.size() == 1u",
                Some("found no matching overload for '_==_' applied to '(int, uint)'"),
            ),
            (
                "x int",
                "has(x.y)",
                Some("type 'int' does not support field selection"),
            ),
            ("m map<string>", "has(m.y)", None),
            ("x int", "x in [1, 2]", None),
            (
                "x int",
                r#"x in ["a"]"#,
                Some("found no matching overload for '@in' applied to '(int, list(string))'"),
            ),
            (
                "x int",
                "!x",
                Some("found no matching overload for '!_' applied to '(int)'"),
            ),
            ("x int", "-x > 1", None),
            ("flag bool", "!flag", None),
            ("x double", "x > 1.5", None),
            ("x int", "x > 1 && true", None),
            (
                "x int",
                "x == 1u",
                Some("found no matching overload for '_==_' applied to '(int, uint)'"),
            ),
            ("l list<any>", "l[0] == 1", None),
            ("m map<any>", "m.a == 1", None),
            (
                "tags list<string>",
                r#""a" in tags && tags.all(t, t.startsWith("a"))"#,
                None,
            ),
            (
                "m map<int>",
                "m.exists(k, m[k] > 1) && m.all(k, k.size() > 0)",
                None,
            ),
            (
                "n string, now timestamp, ts timestamp",
                r#"ts < now || n == "a""#,
                None,
            ),
        ];
        for (p, expr, want) in table {
            let got = check_expression(expr, &params(p));
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(w), Err(e)) if e.message.starts_with(w) => {}
                _ => panic!("({p}) {expr}: expected {want:?}, got {got:?}"),
            }
        }
    }
}
