//! The cost budget of a caveat evaluation, charged by meters wrapped into its comprehensions.
//!
//! cel-rust has no budget, and a comprehension runs as many times as its range has elements,
//! nested ones multiplying. Each compiled expression has its comprehensions' ranges wrapped in
//! a metering function (see [`meter`]) that charges the range's size times the size of the
//! loop's body before the loop runs, and the items a `map` or `filter` collects by their size;
//! past the budget the evaluation fails. An expression without comprehensions is left as it is
//! (its work is linear in its size, which [`crate::schema::limits`] bounds with its depth before
//! cel-rust parses it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ::cel::common::ast::{CallExpr, EntryExpr, Expr, LiteralValue, operators};
use ::cel::common::types::CelInt;
use ::cel::common::value::CowVal;
use ::cel::{ExecutionError, IdedExpr, Value};

/// The cost budget of one caveat evaluation, in steps: a comprehension costs its range's size
/// times the number of nodes of its body (plus one), and each item a `map` or `filter` collects
/// costs its size (a string or bytes their length, a list or map its elements, recursively).
/// A million is a loop over ten thousand items with a body of a hundred nodes, or a megabyte
/// of collected strings: far above any ordinary caveat, and a few milliseconds of work.
pub const MAX_EVALUATION_COST: u64 = 1_000_000;

/// The metering function wrapped around every comprehension range: `@pemba_range(range,
/// weight)` charges `size(range) * weight` and gives `range` back.
const METER_RANGE: &str = "@pemba_range";

/// The metering function wrapped around the item a `map` or `filter` appends:
/// `@pemba_item(item)` charges its size and gives it back.
const METER_ITEM: &str = "@pemba_item";

/// A function as cel-rust calls it: on its arguments as it holds them.
type RawFunction = Box<
    dyn for<'c, 'v> Fn(
            &mut ::cel::FunctionContext<'c, 'v>,
        ) -> Result<CowVal<'c, 'v>, ExecutionError>
        + Send
        + Sync,
>;

/// The cost budget left to one evaluation. Shared by the metering functions, which cel-rust
/// wants `Send + Sync`.
#[derive(Debug)]
pub(super) struct Budget {
    left: AtomicU64,
    exceeded: AtomicBool,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            left: AtomicU64::new(MAX_EVALUATION_COST),
            exceeded: AtomicBool::new(false),
        }
    }

    /// Spends `cost`, or fails (for good) when less is left.
    fn charge(&self, cost: u64, what: &str) -> Result<(), ExecutionError> {
        let left = self.left.load(Ordering::Relaxed);
        if self.exceeded.load(Ordering::Relaxed) || cost > left {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(ExecutionError::function_error(
                what,
                format!("evaluation cost budget of {MAX_EVALUATION_COST} exceeded"),
            ));
        }
        self.left.store(left - cost, Ordering::Relaxed);
        Ok(())
    }

    /// Has an evaluation gone past the budget (even where the failure was absorbed, as in
    /// `false && error`)?
    pub(super) fn is_exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

/// Registers in `ctx` the metering functions of an expression [`meter`] found comprehensions
/// in (`metered`) and items to meter in (`meters_items`), charging a fresh [`Budget`]: the
/// budget, or `None` for an expression without comprehensions (most), which pays nothing.
pub(super) fn register_meters(
    ctx: &mut ::cel::Context<'_, '_>,
    metered: bool,
    meters_items: bool,
) -> Result<Option<Arc<Budget>>, String> {
    if !metered {
        return Ok(None);
    }
    let budget = Arc::new(Budget::new());
    let b = Arc::clone(&budget);
    // on the value as cel-rust holds it: converting a range to a `Value` and back would copy it
    let range_meter: RawFunction = Box::new(move |call| {
        let weight = call
            .args
            .get(1)
            .and_then(|w| w.downcast_ref::<CelInt>())
            .map_or(1, |w| *w.inner());
        let size = call
            .args
            .first()
            .and_then(|r| r.as_sizer())
            .map_or(0, |r| *r.size().inner());
        let cost = u64::try_from(size)
            .unwrap_or(0)
            .saturating_mul(u64::try_from(weight).unwrap_or(u64::MAX));
        b.charge(cost, "comprehension")?;
        let mut args = std::mem::take(&mut call.args);
        if args.is_empty() {
            return Err(ExecutionError::invalid_argument_count(1, 0));
        }
        Ok(args.swap_remove(0))
    });
    ctx.add_function(METER_RANGE, range_meter)
        .map_err(|e| format!("cannot register the meter: {e}"))?;
    if meters_items {
        let b = Arc::clone(&budget);
        ctx.add_function(METER_ITEM, move |item: Value| {
            b.charge(value_size(&item), "comprehension result")
                .map(|()| item)
        })
        .map_err(|e| format!("cannot register the meter: {e}"))?;
    }
    Ok(Some(budget))
}

/// Wraps, in `expr`, every comprehension's range in [`METER_RANGE`] (weighed by the nodes of
/// the loop's body) and the item a `map` or `filter` appends in [`METER_ITEM`]. Says whether
/// there was any comprehension, and any item metered. Iterative.
pub(super) fn meter(expr: &mut IdedExpr) -> (bool, bool) {
    let mut found = false;
    let mut items = false;
    let mut pending: Vec<&mut IdedExpr> = vec![expr];
    while let Some(e) = pending.pop() {
        match &mut e.expr {
            Expr::Comprehension(c) => {
                found = true;
                let weight = count_nodes(&c.loop_cond)
                    .saturating_add(count_nodes(&c.loop_step))
                    .saturating_add(1);
                let range = std::mem::take(&mut c.iter_range);
                c.iter_range = IdedExpr {
                    id: 0,
                    expr: Expr::Call(CallExpr {
                        func_name: METER_RANGE.to_string(),
                        target: None,
                        args: vec![
                            range,
                            IdedExpr {
                                id: 0,
                                expr: Expr::Literal(LiteralValue::Int(
                                    i64::try_from(weight).unwrap_or(i64::MAX).into(),
                                )),
                            },
                        ],
                    }),
                };
                items |= meter_appended_item(&c.accu_var, &mut c.loop_step);
                pending.extend([
                    &mut c.iter_range,
                    &mut c.accu_init,
                    &mut c.loop_cond,
                    &mut c.loop_step,
                    &mut c.result,
                ]);
            }
            Expr::Call(call) => {
                pending.extend(call.target.as_deref_mut());
                pending.extend(call.args.iter_mut());
            }
            Expr::Select(s) => pending.push(&mut s.operand),
            Expr::List(l) => pending.extend(l.elements.iter_mut()),
            Expr::Map(m) => {
                for entry in &mut m.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(me) => pending.extend([&mut me.key, &mut me.value]),
                        EntryExpr::StructField(f) => pending.push(&mut f.value),
                    }
                }
            }
            Expr::Struct(st) => {
                for entry in &mut st.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(me) => pending.extend([&mut me.key, &mut me.value]),
                        EntryExpr::StructField(f) => pending.push(&mut f.value),
                    }
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    (found, items)
}

/// In the loop step of a `map` or `filter` (`accu + [item]`, possibly as the branch of a
/// `cond ? accu + [item] : accu`), wraps `item` in [`METER_ITEM`]; the shape stays the one
/// cel-rust recognises to append in place. Says whether it did.
fn meter_appended_item(accu: &str, step: &mut IdedExpr) -> bool {
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == accu);
    let append = match &mut step.expr {
        Expr::Call(call) if call.func_name == operators::CONDITIONAL && call.args.len() == 3 => {
            call.args.get_mut(1)
        }
        _ => Some(step),
    };
    let Some(IdedExpr {
        expr: Expr::Call(add),
        ..
    }) = append
    else {
        return false;
    };
    if add.func_name != operators::ADD || add.target.is_some() {
        return false;
    }
    let [lhs, rhs] = add.args.as_mut_slice() else {
        return false;
    };
    if !is_accu(lhs) {
        return false;
    }
    let Expr::List(list) = &mut rhs.expr else {
        return false;
    };
    for item in &mut list.elements {
        let inner = std::mem::take(item);
        *item = IdedExpr {
            id: 0,
            expr: Expr::Call(CallExpr {
                func_name: METER_ITEM.to_string(),
                target: None,
                args: vec![inner],
            }),
        };
    }
    true
}

/// The number of nodes of `expr`. Iterative.
fn count_nodes(expr: &IdedExpr) -> usize {
    let mut n = 0usize;
    let mut pending = vec![expr];
    while let Some(e) = pending.pop() {
        n = n.saturating_add(1);
        match &e.expr {
            Expr::Comprehension(c) => pending.extend([
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ]),
            Expr::Call(call) => {
                pending.extend(call.target.as_deref());
                pending.extend(call.args.iter());
            }
            Expr::Select(s) => pending.push(&s.operand),
            Expr::List(l) => pending.extend(l.elements.iter()),
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => pending.extend([&me.key, &me.value]),
                        EntryExpr::StructField(f) => pending.push(&f.value),
                    }
                }
            }
            Expr::Struct(st) => {
                for entry in &st.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => pending.extend([&me.key, &me.value]),
                        EntryExpr::StructField(f) => pending.push(&f.value),
                    }
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    n
}

/// What a value costs to collect: one, plus a string's or bytes' length, plus the cost of a
/// list's or map's elements. Iterative.
fn value_size(v: &Value) -> u64 {
    let mut size = 0u64;
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        size = size.saturating_add(1);
        match v {
            Value::String(s) => size = size.saturating_add(s.len() as u64),
            Value::Bytes(b) => size = size.saturating_add(b.len() as u64),
            Value::List(l) => pending.extend(l.iter()),
            Value::Map(m) => pending.extend(m.map.values()),
            _ => {}
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::caveats::{CaveatEvaluator, CaveatOutcome};
    use crate::engine::cel::CelCaveatEvaluator;
    use crate::engine::cel::testing::*;
    use serde_json::json;

    #[test]
    fn evaluation_has_a_cost_budget() {
        let list: Vec<i64> = (0..2_000).collect();
        let l = || T::List(Box::new(T::Int));
        // a single loop over the list is fine
        let c = caveat(&[("l", l())], "l.all(a, a >= 0)");
        assert_eq!(eval(&c, json!({ "l": list })), t());
        let c = caveat(&[("l", l())], "size(l.map(a, a * 2)) == 2000");
        assert_eq!(eval(&c, json!({ "l": list })), t());
        // nested loops multiply: 2000^3 steps
        for expr in [
            "l.all(a, l.all(b, l.all(c, a + b + c >= 0)))",
            "l.exists(a, l.exists(b, l.exists(c, a + b + c < 0)))",
            "size(l.map(a, l.map(b, l.map(c, c)))) == 0",
            "size(l.filter(a, l.exists_one(b, l.exists(c, a == c)))) == 0",
        ] {
            let c = caveat(&[("l", l())], expr);
            let err = eval(&c, json!({ "l": list })).unwrap_err();
            assert!(err.contains("cost budget"), "{expr}: {err}");
            // partially evaluated too
            let c = caveat(&[("l", l()), ("z", T::Int)], &format!("{expr} && z == 1"));
            let err = eval(&c, json!({ "l": list })).unwrap_err();
            assert!(err.contains("cost budget"), "{expr}: {err}");
        }
        // an error absorbed by `||` still fails the evaluation
        let c = caveat(
            &[("l", l()), ("b", T::Bool)],
            "b || l.all(a, l.all(b, l.all(c, true)))",
        );
        let err = eval(&c, json!({ "l": list, "b": false })).unwrap_err();
        assert!(err.contains("cost budget"), "{err}");
        // collected strings are charged by their size: 2000 items of 1000 bytes
        let c = caveat(
            &[("l", l()), ("s", T::String)],
            "size(l.map(a, s + s)) == 2000",
        );
        let s = "x".repeat(500);
        let err = eval(&c, json!({ "l": list, "s": s })).unwrap_err();
        assert!(err.contains("cost budget"), "{err}");
        let err = eval(&c, json!({ "l": list, "s": "ab" }));
        assert_eq!(err, t());
        // each evaluation has its own budget
        let ev = CelCaveatEvaluator::new();
        let c = caveat(&[("l", l())], "l.all(a, l.all(b, true))");
        let small: Vec<i64> = (0..100).collect();
        for _ in 0..1_000 {
            assert_eq!(ev.evaluate(&c, &ctx(json!({ "l": small }))), t());
        }
    }

    #[test]
    fn metering_keeps_results() {
        // the rewritten comprehensions answer as before
        let l = || T::List(Box::new(T::Int));
        let m = || T::Map(Box::new(T::Int));
        for (expr, want) in [
            ("l.all(a, a > 0)", true),
            ("l.exists(a, a == 2)", true),
            ("l.exists_one(a, a == 2)", true),
            ("l.map(a, a * 2) == [2, 4, 6]", true),
            ("l.map(a, a > 1, a) == [2, 3]", true),
            ("l.filter(a, a > 1) == [2, 3]", true),
            ("m.all(k, m[k] > 0)", true),
            ("m.map(k, k) == ['a']", true),
            ("l.all(a, l.exists(b, a == b))", true),
            ("l.filter(a, a > 5) == []", true),
            ("[1, 2].map(a, [a]) == [[1], [2]]", true),
        ] {
            let c = caveat(&[("l", l()), ("m", m())], expr);
            let got = eval(&c, json!({"l": [1, 2, 3], "m": {"a": 1}}));
            assert_eq!(
                got,
                Ok(if want {
                    CaveatOutcome::True
                } else {
                    CaveatOutcome::False
                }),
                "{expr}"
            );
        }
        let mut e = ::cel::Env::stdlib()
            .compile("l.map(a, a + 1)")
            .unwrap()
            .expression()
            .clone();
        assert_eq!(meter(&mut e), (true, true));
        assert!(count_nodes(&e) > 3);
        let mut e = ::cel::Env::stdlib()
            .compile("a + 1 > 2")
            .unwrap()
            .expression()
            .clone();
        assert_eq!(meter(&mut e), (false, false));
        let mut e = ::cel::Env::stdlib()
            .compile("l.all(a, a > 1)")
            .unwrap()
            .expression()
            .clone();
        assert_eq!(meter(&mut e), (true, false));
        assert_eq!(value_size(&Value::String(Arc::new("abc".into()))), 4);
    }
}
