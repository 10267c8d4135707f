//! Partial evaluation as cel-go does it: missing parameters are unknowns, named in the result.
//!
//! SpiceDB evaluates with the missing parameters marked *unknown* (cel-go partial activation),
//! and reports the unknowns of the result as the missing context. cel-rust has no unknowns, so
//! a missing parameter is left undeclared, and when the evaluation fails the expression is
//! walked again by [`walk`] with cel-go's rules: `&&` / `||` merge unknowns, any other operation
//! is the first unknown or failed operand (`ts < now` without context misses `ts` only),
//! comprehensions fold. Subtrees without unknowns are evaluated by cel-rust; an operation whose
//! operands turned out known is applied by cel-rust to their values (bound to synthetic
//! variables).

use std::collections::{BTreeSet, HashMap};

use ::cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedEntryExpr, ListExpr, MapEntryExpr, MapExpr,
    SelectExpr, StructFieldExpr, operators,
};
use ::cel::common::value::Val;
use ::cel::{ExecutionError, IdedExpr, Value};

/// The value of a subexpression under partial evaluation.
#[derive(Clone)]
pub(super) enum PartialValue {
    /// known
    Val(Value),
    /// failed
    Err(ExecutionError),
    /// depends on these missing parameters
    Unknown(BTreeSet<String>),
}

/// Identifiers whose value is not known during partial evaluation: the missing parameters
/// (unknown), and a comprehension's accumulator once it depends on them or failed. Holds only
/// [`PartialValue::Unknown`] and [`PartialValue::Err`].
pub(super) type Unbound = HashMap<String, PartialValue>;

/// Evaluates `expr` as cel-go does with the missing parameters marked unknown. A subtree that
/// mentions no unknown identifier is evaluated by cel-rust as is; elsewhere:
/// - `&&` / `||` are commutative: the absorbing value wins, then the union of the unknowns,
///   then the first error;
/// - `?:` with an unknown or failed condition is that condition; `@not_strictly_false` is true
///   for anything but `false`;
/// - any other call (operators, functions, methods, indexing), list and map literals, and
///   field selection evaluate every operand and take the first (left to right, receiver
///   first) that is unknown or failed; with all operands known, cel-rust applies the
///   operation to their values;
/// - a comprehension over an unknown range is that range; over a known one, the loop runs here
///   with an accumulator that may become unknown.
pub(super) fn walk(
    expr: &IdedExpr,
    ctx: &::cel::Context<'_, '_>,
    unbound: &Unbound,
) -> PartialValue {
    if !mentions(expr, unbound) {
        return resolve(ctx, expr);
    }
    match &expr.expr {
        Expr::Ident(name) => match unbound.get(name) {
            Some(t) => t.clone(),
            None => resolve(ctx, expr),
        },
        Expr::Call(call) => walk_call(call, ctx, unbound),
        Expr::Select(select) => match walk(&select.operand, ctx, unbound) {
            PartialValue::Val(v) => apply(
                ctx,
                vec![v],
                Expr::Select(SelectExpr {
                    operand: Box::new(slot(0)),
                    field: select.field.clone(),
                    test: select.test,
                }),
            ),
            other => other,
        },
        Expr::List(list) => match operands(list.elements.iter(), ctx, unbound) {
            Ok(values) => {
                let elements = (0..values.len()).map(slot).collect();
                apply(
                    ctx,
                    values,
                    Expr::List(ListExpr::new_with_optionals(
                        elements,
                        list.optional_indices.clone(),
                    )),
                )
            }
            Err(t) => t,
        },
        Expr::Map(map) => {
            let mut parts = Vec::new();
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(e) => parts.extend([&e.key, &e.value]),
                    EntryExpr::StructField(f) => parts.push(&f.value),
                }
            }
            match operands(parts.into_iter(), ctx, unbound) {
                Ok(values) => {
                    let mut next = 0;
                    let mut take = || {
                        next += 1;
                        slot(next - 1)
                    };
                    let entries = map
                        .entries
                        .iter()
                        .map(|entry| IdedEntryExpr {
                            id: entry.id,
                            expr: match &entry.expr {
                                EntryExpr::MapEntry(e) => EntryExpr::MapEntry(MapEntryExpr {
                                    key: take(),
                                    value: take(),
                                    optional: e.optional,
                                }),
                                EntryExpr::StructField(f) => {
                                    EntryExpr::StructField(StructFieldExpr {
                                        field: f.field.clone(),
                                        value: take(),
                                        optional: f.optional,
                                    })
                                }
                            },
                        })
                        .collect();
                    apply(ctx, values, Expr::Map(MapExpr { entries }))
                }
                Err(t) => t,
            }
        }
        Expr::Comprehension(c) => comprehension(c, ctx, unbound),
        Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => resolve(ctx, expr),
    }
}

/// Does `expr` mention an identifier of `unbound`? (Bound names that a comprehension inside
/// shadows count too: the walk then only goes deeper than needed.)
fn mentions(expr: &IdedExpr, unbound: &Unbound) -> bool {
    if unbound.is_empty() {
        return false;
    }
    match &expr.expr {
        Expr::Ident(name) => unbound.contains_key(name),
        Expr::Call(call) => {
            call.target.as_deref().is_some_and(|t| mentions(t, unbound))
                || call.args.iter().any(|a| mentions(a, unbound))
        }
        Expr::Select(s) => mentions(&s.operand, unbound),
        Expr::List(l) => l.elements.iter().any(|e| mentions(e, unbound)),
        Expr::Map(m) => m.entries.iter().any(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => mentions(&e.key, unbound) || mentions(&e.value, unbound),
            EntryExpr::StructField(f) => mentions(&f.value, unbound),
        }),
        Expr::Struct(s) => s.entries.iter().any(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => mentions(&e.key, unbound) || mentions(&e.value, unbound),
            EntryExpr::StructField(f) => mentions(&f.value, unbound),
        }),
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .any(|e| mentions(e, unbound)),
        Expr::Literal(_) | Expr::Unspecified => false,
    }
}

fn resolve(ctx: &::cel::Context<'_, '_>, expr: &IdedExpr) -> PartialValue {
    match ctx.resolve(expr) {
        Ok(v) => PartialValue::Val(v),
        Err(e) => PartialValue::Err(e),
    }
}

/// Evaluates every expression of `exprs`; the first that is not a value, else the values.
fn operands<'e>(
    exprs: impl Iterator<Item = &'e IdedExpr>,
    ctx: &::cel::Context<'_, '_>,
    unbound: &Unbound,
) -> Result<Vec<Value>, PartialValue> {
    // cel-go evaluates every operand before looking at them; the first unknown or error wins
    let results: Vec<PartialValue> = exprs.map(|e| walk(e, ctx, unbound)).collect();
    let mut values = Vec::with_capacity(results.len());
    for r in results {
        match r {
            PartialValue::Val(v) => values.push(v),
            other => return Err(other),
        }
    }
    Ok(values)
}

/// The name of the `i`-th synthetic variable holding an evaluated operand.
fn slot_name(i: usize) -> String {
    format!("@pemba_operand_{i}")
}

fn slot(i: usize) -> IdedExpr {
    IdedExpr {
        id: 0,
        expr: Expr::Ident(slot_name(i)),
    }
}

/// Evaluates `expr`, whose operands are the synthetic variables `slot(0..)`, with `values`.
fn apply(ctx: &::cel::Context<'_, '_>, values: Vec<Value>, expr: Expr) -> PartialValue {
    let mut inner = ctx.new_inner_scope();
    for (i, v) in values.into_iter().enumerate() {
        if let Err(t) = bind(&mut inner, slot_name(i), v) {
            return t;
        }
    }
    resolve(&inner, &IdedExpr { id: 0, expr })
}

fn bind(ctx: &mut ::cel::Context<'_, '_>, name: String, value: Value) -> Result<(), PartialValue> {
    let val = Box::<dyn Val>::try_from(value).map_err(PartialValue::Err)?;
    ctx.add_variable_as_val(name, val);
    Ok(())
}

fn walk_call(call: &CallExpr, ctx: &::cel::Context<'_, '_>, unbound: &Unbound) -> PartialValue {
    if call.target.is_none() {
        match (call.func_name.as_str(), call.args.len()) {
            (operators::LOGICAL_AND, n) if n >= 2 => {
                return logic(&call.args, ctx, unbound, false, &call.func_name);
            }
            (operators::LOGICAL_OR, n) if n >= 2 => {
                return logic(&call.args, ctx, unbound, true, &call.func_name);
            }
            (operators::CONDITIONAL, 3) => {
                return match walk(&call.args[0], ctx, unbound) {
                    PartialValue::Val(Value::Bool(true)) => walk(&call.args[1], ctx, unbound),
                    PartialValue::Val(Value::Bool(false)) => walk(&call.args[2], ctx, unbound),
                    PartialValue::Val(v) => PartialValue::Err(overload(&call.func_name, &[&v])),
                    other => other,
                };
            }
            (operators::NOT_STRICTLY_FALSE, 1) => {
                return PartialValue::Val(Value::Bool(!matches!(
                    walk(&call.args[0], ctx, unbound),
                    PartialValue::Val(Value::Bool(false))
                )));
            }
            _ => {}
        }
    }
    let exprs = call.target.as_deref().into_iter().chain(call.args.iter());
    match operands(exprs, ctx, unbound) {
        Ok(values) => {
            let mut slots = (0..values.len()).map(slot);
            let target = if call.target.is_some() {
                slots.next().map(Box::new)
            } else {
                None
            };
            let expr = Expr::Call(CallExpr {
                func_name: call.func_name.clone(),
                target,
                args: slots.collect(),
            });
            apply(ctx, values, expr)
        }
        Err(t) => t,
    }
}

/// `&&` (`absorbing` false) or `||` (`absorbing` true) over `args`, as cel-go: the absorbing
/// value wins, then unknowns, then the first error.
fn logic(
    args: &[IdedExpr],
    ctx: &::cel::Context<'_, '_>,
    unbound: &Unbound,
    absorbing: bool,
    op: &str,
) -> PartialValue {
    let mut unknown = BTreeSet::new();
    let mut error = None;
    for arg in args {
        match walk(arg, ctx, unbound) {
            PartialValue::Val(Value::Bool(b)) if b == absorbing => {
                return PartialValue::Val(Value::Bool(b));
            }
            PartialValue::Val(Value::Bool(_)) => {}
            PartialValue::Val(v) => {
                error.get_or_insert_with(|| overload(op, &[&v]));
            }
            PartialValue::Unknown(u) => unknown.extend(u),
            PartialValue::Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if !unknown.is_empty() {
        PartialValue::Unknown(unknown)
    } else if let Some(e) = error {
        PartialValue::Err(e)
    } else {
        PartialValue::Val(Value::Bool(!absorbing))
    }
}

/// A comprehension (`exists`, `all`, `exists_one`, `map`, `filter`) as cel-go folds it: an
/// unknown or failed range is the result; otherwise the loop runs with the accumulator bound
/// to a value or, once a step is unknown or fails, to that, and stops when the loop
/// condition is `false`.
fn comprehension(
    c: &ComprehensionExpr,
    ctx: &::cel::Context<'_, '_>,
    unbound: &Unbound,
) -> PartialValue {
    let range = match walk(&c.iter_range, ctx, unbound) {
        PartialValue::Val(v) => v,
        other => return other,
    };
    let items: Vec<(Value, Option<Value>)> = match &range {
        Value::List(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| match c.iter_var2 {
                Some(_) => (
                    // a list index fits an i64 on every 64-bit platform; saturating is only a
                    // fallback that no list in memory reaches
                    Value::Int(i64::try_from(i).unwrap_or(i64::MAX)),
                    Some(v.clone()),
                ),
                None => (v.clone(), None),
            })
            .collect(),
        Value::Map(map) => map
            .map
            .iter()
            .map(|(k, v)| (Value::from(k), c.iter_var2.as_ref().map(|_| v.clone())))
            .collect(),
        other => {
            return PartialValue::Err(ExecutionError::UnexpectedType {
                got: other.type_of().to_string(),
                want: "iterable".to_string(),
            });
        }
    };
    let mut accu = walk(&c.accu_init, ctx, unbound);
    // evaluates `e` with the accumulator and, if given, the iteration variables bound
    let eval_in = |e: &IdedExpr,
                   accu: &PartialValue,
                   item: Option<&(Value, Option<Value>)>|
     -> PartialValue {
        let mut inner = ctx.new_inner_scope();
        let mut scope = unbound.clone();
        match accu {
            PartialValue::Val(v) => {
                if let Err(t) = bind(&mut inner, c.accu_var.clone(), v.clone()) {
                    return t;
                }
                scope.remove(&c.accu_var);
            }
            other => {
                scope.insert(c.accu_var.clone(), other.clone());
            }
        }
        if let Some((first, second)) = item {
            if let Err(t) = bind(&mut inner, c.iter_var.clone(), first.clone()) {
                return t;
            }
            scope.remove(&c.iter_var);
            if let (Some(name), Some(v)) = (&c.iter_var2, second) {
                if let Err(t) = bind(&mut inner, name.clone(), v.clone()) {
                    return t;
                }
                scope.remove(name);
            }
        }
        walk(e, &inner, &scope)
    };
    for item in &items {
        if let PartialValue::Val(Value::Bool(false)) = eval_in(&c.loop_cond, &accu, Some(item)) {
            break;
        }
        accu = eval_in(&c.loop_step, &accu, Some(item));
    }
    eval_in(&c.result, &accu, None)
}

fn overload(op: &str, values: &[&Value]) -> ExecutionError {
    ExecutionError::no_such_overload(op, values.iter().map(|v| v.type_of().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use crate::engine::caveats::CaveatOutcome;
    use crate::engine::cel::testing::*;
    use serde_json::json;

    #[test]
    fn partial_evaluation() {
        let c = caveat(&[("a", T::Int), ("b", T::Int)], "a == 1 || b == 2");
        assert_eq!(eval(&c, json!({})), missing(&["a", "b"]));
        assert_eq!(eval(&c, json!({"a": 1})), t());
        assert_eq!(eval(&c, json!({"a": 2})), missing(&["b"]));
        assert_eq!(eval(&c, json!({"b": 2})), t());
        assert_eq!(eval(&c, json!({"a": 2, "b": 3})), f());
        assert_eq!(eval(&c, json!({"a": 2, "zzz": 1})), missing(&["b"]));

        let c = caveat(&[("a", T::Int), ("b", T::Int)], "a == 1 && b == 2");
        assert_eq!(eval(&c, json!({"a": 1})), missing(&["b"]));
        assert_eq!(eval(&c, json!({"b": 3})), f());
        assert_eq!(eval(&c, json!({"a": 2})), f());

        // an operation is its first unknown operand (cel-go), not all its missing parameters
        let c = caveat(&[("a", T::Int), ("b", T::Int)], "a + b > 3");
        assert_eq!(eval(&c, json!({"a": 1})), missing(&["b"]));
        assert_eq!(eval(&c, json!({})), missing(&["a"]));

        let c = caveat(
            &[("a", T::Bool), ("b", T::Int), ("x", T::Int)],
            "a ? b == 1 : x == 2",
        );
        assert_eq!(eval(&c, json!({"a": true})), missing(&["b"]));
        assert_eq!(eval(&c, json!({"a": false, "x": 2})), t());
        assert_eq!(eval(&c, json!({"b": 1, "x": 2})), missing(&["a"]));

        let c = caveat(
            &[("a", T::Int), ("b", T::Int), ("z", T::Int)],
            "(a == 1 || b == 2) && z == 3",
        );
        assert_eq!(eval(&c, json!({})), missing(&["a", "b", "z"]));
        assert_eq!(eval(&c, json!({"z": 3})), missing(&["a", "b"]));
        assert_eq!(eval(&c, json!({"z": 4})), f());
        assert_eq!(eval(&c, json!({"a": 2, "z": 3})), missing(&["b"]));

        // errors are absorbed as in cel-go: false && error, unknown && error
        let c = caveat(
            &[("a", T::Int), ("b", T::Int), ("s", T::String)],
            "a / b == 1 && s == 'x'",
        );
        assert_eq!(eval(&c, json!({"a": 1, "b": 0})), missing(&["s"]));
        assert_eq!(eval(&c, json!({"a": 1, "b": 0, "s": "y"})), f());
        assert_eq!(eval(&c, json!({"s": "y"})), f());
        assert!(eval(&c, json!({"a": 1, "b": 0, "s": "x"})).is_err());
        let c = caveat(&[("a", T::Int), ("b", T::Int)], "a / b == 1 || b == 0");
        assert_eq!(eval(&c, json!({"a": 1, "b": 0})), t());
        assert_eq!(eval(&c, json!({"a": 1})), missing(&["b"]));

        // comprehensions
        let c = caveat(
            &[("l", T::List(Box::new(T::Int))), ("n", T::Int)],
            "l.all(x, x > n)",
        );
        assert_eq!(eval(&c, json!({"l": [5, 6], "n": 1})), t());
        assert_eq!(eval(&c, json!({"l": [5, 6]})), missing(&["n"]));
        assert_eq!(eval(&c, json!({"n": 1})), missing(&["l"]));
        assert_eq!(eval(&c, json!({"l": [], "n": 1})), t());
    }

    /// Missing context as the reference SpiceDB reports it (answers recorded from SpiceDB
    /// through tests/oracle; `None` is an evaluation error).
    #[test]
    fn missing_context_matches_spicedb() {
        use CaveatOutcome::{False as N, True as Y};
        let l = |t: T| T::List(Box::new(t));
        let m = |t: T| T::Map(Box::new(t));
        let ts = "2020-01-01T00:00:00Z";
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            Vec<(&str, T)>,
            &str,
            serde_json::Value,
            Option<CaveatOutcome>,
        )> = vec![
            (
                vec![
                    ("ts", T::Timestamp),
                    ("now", T::Timestamp),
                    ("x", T::Int),
                    ("y", T::Int),
                ],
                "ts < now || x <= y",
                json!({}),
                Some(missing_o(&["ts", "x"])),
            ),
            (
                vec![
                    ("ts", T::Timestamp),
                    ("now", T::Timestamp),
                    ("x", T::Int),
                    ("y", T::Int),
                ],
                "ts < now || x <= y",
                json!({"x": 1}),
                Some(missing_o(&["ts", "y"])),
            ),
            (
                vec![
                    ("ts", T::Timestamp),
                    ("now", T::Timestamp),
                    ("x", T::Int),
                    ("y", T::Int),
                ],
                "ts < now || x <= y",
                json!({"now": ts}),
                Some(missing_o(&["ts", "x"])),
            ),
            (
                vec![("a", T::Int), ("b", T::Int), ("c", T::Int)],
                "a == 1 && b == 2 || c == 3",
                json!({"a": 1}),
                Some(missing_o(&["b", "c"])),
            ),
            (
                vec![("a", T::Int), ("b", T::Int), ("c", T::Int)],
                "a == 1 && b == 2 || c == 3",
                json!({"a": 2}),
                Some(missing_o(&["c"])),
            ),
            (
                vec![("a", T::Int), ("b", T::Int), ("c", T::Int)],
                "a == 1 && b == 2 || c == 3",
                json!({"c": 3}),
                Some(Y),
            ),
            (
                vec![("a", T::Bool), ("b", T::Bool), ("c", T::Int), ("d", T::Int)],
                "(a ? b : c == 1) ? d == 1 : c == 2",
                json!({}),
                Some(missing_o(&["a"])),
            ),
            (
                vec![("a", T::Bool), ("b", T::Bool), ("c", T::Int), ("d", T::Int)],
                "(a ? b : c == 1) ? d == 1 : c == 2",
                json!({"a": false}),
                Some(missing_o(&["c"])),
            ),
            (
                vec![("a", T::Bool), ("b", T::Bool), ("c", T::Int), ("d", T::Int)],
                "(a ? b : c == 1) ? d == 1 : c == 2",
                json!({"a": true, "b": true}),
                Some(missing_o(&["d"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "x in l",
                json!({}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "x in l",
                json!({"x": 1}),
                Some(missing_o(&["l"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l[x] == 1",
                json!({}),
                Some(missing_o(&["l"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l[x] == 1",
                json!({"l": [1]}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("m", m(T::Int)), ("k", T::String)],
                "m[k] == 1",
                json!({"k": "a"}),
                Some(missing_o(&["m"])),
            ),
            (
                vec![("m", m(T::Int)), ("k", T::String)],
                "m[k] == 1",
                json!({"m": {"a": 1}}),
                Some(missing_o(&["k"])),
            ),
            (
                vec![("m", m(T::Int)), ("k", T::String)],
                "m.a == 1 && k == 'x'",
                json!({}),
                Some(missing_o(&["k", "m"])),
            ),
            (
                vec![("m", m(T::Int)), ("k", T::String)],
                "m.a == 1 && k == 'x'",
                json!({"k": "a"}),
                Some(N),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "[x, y].size() == 2",
                json!({}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "[x, y][0] == 1",
                json!({"x": 1}),
                Some(missing_o(&["y"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "{'a': x, 'b': y}['a'] == 1",
                json!({"x": 1}),
                Some(missing_o(&["y"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "-x > y",
                json!({}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l.exists(i, i > x)",
                json!({"x": 1}),
                Some(missing_o(&["l"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l.exists(i, i > x)",
                json!({"l": [1, 2]}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l.exists(i, i > x)",
                json!({"l": []}),
                Some(N),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l.exists(i, i > x)",
                json!({"l": [5], "x": 1}),
                Some(Y),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int), ("y", T::Int)],
                "l.all(i, i > x || i < y)",
                json!({"l": [1, 2]}),
                Some(missing_o(&["x", "y"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int), ("y", T::Int)],
                "l.all(i, i > x || i < y)",
                json!({"l": [1, 2], "y": 0}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l.map(i, i + x).size() == 2",
                json!({"l": [1, 2]}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l.filter(i, i > x).size() == 1",
                json!({"x": 1}),
                Some(missing_o(&["l"])),
            ),
            (
                vec![("l", l(T::Int)), ("x", T::Int)],
                "l.exists_one(i, i > x)",
                json!({"l": [1, 2]}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "1 / 0 == x || y == 1",
                json!({}),
                Some(missing_o(&["y"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "1 / 0 == x || y == 1",
                json!({"y": 2}),
                None,
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "1 / 0 == x || y == 1",
                json!({"y": 1}),
                Some(Y),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "x == 1 / 0 || y == 1",
                json!({"y": 2}),
                Some(missing_o(&["x"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "1 / 0 == x && y == 1",
                json!({"y": 2}),
                Some(N),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "1 / 0 == x && y == 1",
                json!({"y": 1}),
                None,
            ),
            (
                vec![("s", T::String), ("t", T::String)],
                "s.startsWith(t)",
                json!({}),
                Some(missing_o(&["s"])),
            ),
            (
                vec![("s", T::String), ("t", T::String)],
                "s.startsWith(t)",
                json!({"s": "a"}),
                Some(missing_o(&["t"])),
            ),
            (
                vec![("s", T::String), ("t", T::String)],
                "t.size() > 1 && s.contains('a')",
                json!({}),
                Some(missing_o(&["s", "t"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "(x == 1 || true) == (y == 2)",
                json!({}),
                Some(missing_o(&["y"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "!(x == 1 && y == 2)",
                json!({}),
                Some(missing_o(&["x", "y"])),
            ),
            (
                vec![("x", T::Int), ("y", T::Int)],
                "!(x == 1 && y == 2)",
                json!({"x": 2}),
                Some(Y),
            ),
            (
                vec![("m", m(T::Int)), ("x", T::Int)],
                "has(m.a) && x == 1",
                json!({}),
                Some(missing_o(&["m", "x"])),
            ),
            (
                vec![("m", m(T::Int)), ("x", T::Int)],
                "has(m.a) && x == 1",
                json!({"m": {}}),
                Some(N),
            ),
        ];
        for (params, expr, context, want) in cases {
            let c = caveat(&params, expr);
            let got = eval(&c, context.clone());
            match want {
                Some(w) => assert_eq!(got, Ok(w), "{expr} with {context}"),
                None => assert!(got.is_err(), "{expr} with {context}: {got:?}"),
            }
        }
    }
}
