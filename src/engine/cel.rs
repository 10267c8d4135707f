//! Step three, graph evaluation — CEL caveats: [`CelCaveatEvaluator`] decides a caveat's
//! expression with the `cel` crate (cel-rust), after converting the JSON context to CEL values
//! by the declared parameter types as SpiceDB does; [`check_context_types`] is the write-time
//! check of a relationship's context.
//!
//! What is added to the `cel` crate, and why:
//! - `ipaddress`: SpiceDB's custom CEL type. Here an opaque value ([`IpAddress`]) with the member
//!   function `ip.in_cidr("10.0.0.0/8")`, registered in every evaluation context; prefix parsing
//!   and containment follow Go's `netip.ParsePrefix` / `Prefix.Contains` (an IPv4 address is
//!   never inside an IPv6 prefix, nor the reverse).
//! - Partial evaluation: SpiceDB evaluates with the missing parameters marked *unknown* (cel-go
//!   partial activation), and reports the unknowns of the result as the missing context.
//!   cel-rust has no unknowns, so a missing parameter is left undeclared, and when the
//!   evaluation fails the expression is walked again by a partial evaluator with cel-go's
//!   rules (see `walk`): `&&` / `||` merge unknowns, any other operation is the first unknown
//!   or failed operand (`ts < now` without context misses `ts` only), comprehensions fold.
//!   Subtrees without unknowns are evaluated by cel-rust; an operation whose operands turned
//!   out known is applied by cel-rust to their values (bound to synthetic variables).
//! - A cost budget ([`MAX_EVALUATION_COST`]): cel-rust has none, and a comprehension runs as
//!   many times as its range has elements, nested ones multiplying. Each compiled expression
//!   has its comprehensions' ranges wrapped in a metering function (see `meter`) that charges
//!   the range's size times the size of the loop's body before the loop runs, and the items a
//!   `map` or `filter` collects by their size; past the budget the evaluation fails. An
//!   expression without comprehensions is left as it is (its work is linear in its size, which
//!   [`crate::schema::limits`] bounds with its depth before cel-rust parses it).
//! - Context conversion (JSON to CEL by declared type) is SpiceDB's `ConvertContextToParameters`:
//!   numbers from integral floats or numeric strings, base64 bytes, Go `time.ParseDuration`
//!   durations, strict RFC 3339 timestamps, lists and string-keyed maps converted element-wise,
//!   `any` passed as is (JSON numbers as doubles, as Go's `structpb` gives them).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ::cel::common::ast::LiteralValue;
use ::cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedEntryExpr, ListExpr, MapEntryExpr, MapExpr,
    SelectExpr, StructFieldExpr, operators,
};
use ::cel::common::types::CelInt;
use ::cel::common::value::{CowVal, Val};
use ::cel::extractors::This;
use ::cel::objects::Opaque;
use ::cel::{Env, ExecutionError, IdedExpr, Value};
use base64::Engine as _;
use chrono::TimeZone as _;
use dashmap::DashMap;
use serde_json::Value as Json;

use crate::engine::caveats::{CaveatError, CaveatEvaluator, CaveatOutcome};
use crate::model::Context;
use crate::schema::{CaveatDef, CaveatType};

/// Compiled programs kept at most; the cache is emptied when it grows past this (only schema
/// churn gets there).
const MAX_CACHED_PROGRAMS: usize = 10_000;

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

/// A compiled caveat expression, as evaluated.
#[derive(Debug)]
struct Compiled {
    /// the expression, comprehensions metered
    expr: IdedExpr,
    /// does it have comprehensions (then each evaluation registers the meters)?
    metered: bool,
    /// does it have a `map` or `filter` (then the item meter is registered too)?
    meters_items: bool,
}

/// The cost budget left to one evaluation. Shared by the metering functions, which cel-rust
/// wants `Send + Sync`.
#[derive(Debug)]
struct Budget {
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
}

/// Evaluates caveats with CEL, compiling each caveat expression once.
pub struct CelCaveatEvaluator {
    env: Arc<Env>,
    programs: DashMap<(String, String), Arc<Compiled>>,
}

impl fmt::Debug for CelCaveatEvaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CelCaveatEvaluator")
            .field("cached_programs", &self.programs.len())
            .finish()
    }
}

impl Default for CelCaveatEvaluator {
    fn default() -> Self {
        CelCaveatEvaluator::new()
    }
}

impl CelCaveatEvaluator {
    /// An evaluator with CEL's standard library.
    pub fn new() -> CelCaveatEvaluator {
        CelCaveatEvaluator {
            env: Arc::new(Env::stdlib()),
            programs: DashMap::new(),
        }
    }

    /// The compiled program of `caveat`, from the cache or compiled now. The expression's size
    /// and depth are bounded first: a caveat stored before the bounds existed reaches here
    /// without the schema's checks, and cel-rust's parser and evaluator recurse on the depth.
    fn program(&self, caveat: &CaveatDef) -> Result<Arc<Compiled>, String> {
        let key = (caveat.name.clone(), caveat.expression.clone());
        if let Some(p) = self.programs.get(&key) {
            return Ok(Arc::clone(p.value()));
        }
        let cannot = |e: &dyn fmt::Display| {
            format!(
                "could not compile the expression of caveat `{}`: {e}",
                caveat.name
            )
        };
        crate::schema::limits::check_caveat_expression(&caveat.expression)
            .map_err(|e| cannot(&e.message))?;
        let program = self
            .env
            .compile(&caveat.expression)
            .map_err(|e| cannot(&e))?;
        let mut expr = program.expression().clone();
        let (metered, meters_items) = meter(&mut expr);
        let program = Arc::new(Compiled {
            expr,
            metered,
            meters_items,
        });
        if self.programs.len() >= MAX_CACHED_PROGRAMS {
            self.programs.clear();
        }
        self.programs.insert(key, Arc::clone(&program));
        Ok(program)
    }
}

impl CaveatEvaluator for CelCaveatEvaluator {
    fn evaluate(&self, caveat: &CaveatDef, context: &Context) -> Result<CaveatOutcome, String> {
        self.evaluate_typed(caveat, context).map_err(|e| match e {
            CaveatError::Evaluation(m) | CaveatError::ParameterType(m) => m,
        })
    }

    fn evaluate_typed(
        &self,
        caveat: &CaveatDef,
        context: &Context,
    ) -> Result<CaveatOutcome, CaveatError> {
        let program = self.program(caveat).map_err(CaveatError::Evaluation)?;
        let mut ctx = ::cel::Context::with_env(Arc::clone(&self.env));
        ctx.add_function("in_cidr", in_cidr)
            .map_err(|e| CaveatError::Evaluation(format!("cannot register `in_cidr`: {e}")))?;
        // expressions without comprehensions (most) pay nothing for the budget
        let budget = program.metered.then(|| Arc::new(Budget::new()));
        if let Some(budget) = &budget {
            let b = Arc::clone(budget);
            // on the value as cel-rust holds it: converting a range to a `Value` and back
            // would copy it
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
                .map_err(|e| CaveatError::Evaluation(format!("cannot register the meter: {e}")))?;
            if program.meters_items {
                let b = Arc::clone(budget);
                ctx.add_function(METER_ITEM, move |item: Value| {
                    b.charge(value_size(&item), "comprehension result")
                        .map(|()| item)
                })
                .map_err(|e| CaveatError::Evaluation(format!("cannot register the meter: {e}")))?;
            }
        }
        let mut unbound = Unbound::new();
        for p in &caveat.parameters {
            match context.get(&p.name) {
                Some(v) => {
                    let value = convert(&p.type_, v).map_err(|e| {
                        CaveatError::ParameterType(type_error(&caveat.name, &p.name, &p.type_, &e))
                    })?;
                    ctx.add_variable_from_value(p.name.clone(), value);
                }
                None => {
                    unbound.insert(
                        p.name.clone(),
                        Tri::Unknown(BTreeSet::from([p.name.clone()])),
                    );
                }
            }
        }
        let eval_error = |e: &dyn fmt::Display| {
            CaveatError::Evaluation(format!(
                "evaluation error for caveat `{}`: {e}",
                caveat.name
            ))
        };
        let tri = match ctx.resolve(&program.expr) {
            Ok(v) => Tri::Val(v),
            Err(_) => walk(&program.expr, &ctx, &unbound),
        };
        // an error past the budget may have been absorbed (`false && error`): fail anyway
        if budget.is_some_and(|b| b.exceeded.load(Ordering::Relaxed)) {
            return Err(eval_error(&format_args!(
                "the evaluation cost budget of {MAX_EVALUATION_COST} was exceeded"
            )));
        }
        match tri {
            Tri::Val(Value::Bool(true)) => Ok(CaveatOutcome::True),
            Tri::Val(Value::Bool(false)) => Ok(CaveatOutcome::False),
            Tri::Val(other) => Err(eval_error(&format_args!(
                "caveat expression must result in a boolean value: found `{}`",
                other.type_of()
            ))),
            Tri::Unknown(names) => Ok(CaveatOutcome::Missing(names.into_iter().collect())),
            Tri::Err(e) => Err(eval_error(&e)),
        }
    }
}

/// Wraps, in `expr`, every comprehension's range in [`METER_RANGE`] (weighed by the nodes of
/// the loop's body) and the item a `map` or `filter` appends in [`METER_ITEM`]. Says whether
/// there was any comprehension, and any item metered. Iterative.
fn meter(expr: &mut IdedExpr) -> (bool, bool) {
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

/// Checks, before writing a relationship, that its context fits `caveat`: every key must be a
/// parameter of the caveat (SpiceDB refuses unknown keys on write) and convert to its type.
pub fn check_context_types(caveat: &CaveatDef, context: &Context) -> Result<(), String> {
    for (key, value) in context {
        let Some(param) = caveat.parameter(key) else {
            return Err(format!(
                "unknown parameter `{key}` for caveat `{}`",
                caveat.name
            ));
        };
        convert(&param.type_, value)
            .map_err(|e| type_error(&caveat.name, key, &param.type_, &e))?;
    }
    Ok(())
}

fn type_error(caveat: &str, param: &str, type_: &CaveatType, why: &str) -> String {
    format!("parameter `{param}` of caveat `{caveat}` expects {type_}, {why}")
}

// ---- partial evaluation ----

/// The value of a subexpression under partial evaluation.
#[derive(Clone)]
enum Tri {
    /// known
    Val(Value),
    /// failed
    Err(ExecutionError),
    /// depends on these missing parameters
    Unknown(BTreeSet<String>),
}

/// Identifiers whose value is not known during partial evaluation: the missing parameters
/// (unknown), and a comprehension's accumulator once it depends on them or failed. Holds only
/// [`Tri::Unknown`] and [`Tri::Err`].
type Unbound = HashMap<String, Tri>;

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
fn walk(expr: &IdedExpr, ctx: &::cel::Context<'_, '_>, unbound: &Unbound) -> Tri {
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
            Tri::Val(v) => apply(
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

fn resolve(ctx: &::cel::Context<'_, '_>, expr: &IdedExpr) -> Tri {
    match ctx.resolve(expr) {
        Ok(v) => Tri::Val(v),
        Err(e) => Tri::Err(e),
    }
}

/// Evaluates every expression of `exprs`; the first that is not a value, else the values.
fn operands<'e>(
    exprs: impl Iterator<Item = &'e IdedExpr>,
    ctx: &::cel::Context<'_, '_>,
    unbound: &Unbound,
) -> Result<Vec<Value>, Tri> {
    // cel-go evaluates every operand before looking at them; the first unknown or error wins
    let results: Vec<Tri> = exprs.map(|e| walk(e, ctx, unbound)).collect();
    let mut values = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Tri::Val(v) => values.push(v),
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
fn apply(ctx: &::cel::Context<'_, '_>, values: Vec<Value>, expr: Expr) -> Tri {
    let mut inner = ctx.new_inner_scope();
    for (i, v) in values.into_iter().enumerate() {
        if let Err(t) = bind(&mut inner, slot_name(i), v) {
            return t;
        }
    }
    resolve(&inner, &IdedExpr { id: 0, expr })
}

fn bind(ctx: &mut ::cel::Context<'_, '_>, name: String, value: Value) -> Result<(), Tri> {
    let val = Box::<dyn Val>::try_from(value).map_err(Tri::Err)?;
    ctx.add_variable_as_val(name, val);
    Ok(())
}

fn walk_call(call: &CallExpr, ctx: &::cel::Context<'_, '_>, unbound: &Unbound) -> Tri {
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
                    Tri::Val(Value::Bool(true)) => walk(&call.args[1], ctx, unbound),
                    Tri::Val(Value::Bool(false)) => walk(&call.args[2], ctx, unbound),
                    Tri::Val(v) => Tri::Err(overload(&call.func_name, &[&v])),
                    other => other,
                };
            }
            (operators::NOT_STRICTLY_FALSE, 1) => {
                return Tri::Val(Value::Bool(!matches!(
                    walk(&call.args[0], ctx, unbound),
                    Tri::Val(Value::Bool(false))
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
) -> Tri {
    let mut unknown = BTreeSet::new();
    let mut error = None;
    for arg in args {
        match walk(arg, ctx, unbound) {
            Tri::Val(Value::Bool(b)) if b == absorbing => return Tri::Val(Value::Bool(b)),
            Tri::Val(Value::Bool(_)) => {}
            Tri::Val(v) => {
                error.get_or_insert_with(|| overload(op, &[&v]));
            }
            Tri::Unknown(u) => unknown.extend(u),
            Tri::Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if !unknown.is_empty() {
        Tri::Unknown(unknown)
    } else if let Some(e) = error {
        Tri::Err(e)
    } else {
        Tri::Val(Value::Bool(!absorbing))
    }
}

/// A comprehension (`exists`, `all`, `exists_one`, `map`, `filter`) as cel-go folds it: an
/// unknown or failed range is the result; otherwise the loop runs with the accumulator bound
/// to a value or, once a step is unknown or fails, to that, and stops when the loop
/// condition is `false`.
fn comprehension(c: &ComprehensionExpr, ctx: &::cel::Context<'_, '_>, unbound: &Unbound) -> Tri {
    let range = match walk(&c.iter_range, ctx, unbound) {
        Tri::Val(v) => v,
        other => return other,
    };
    let items: Vec<(Value, Option<Value>)> = match &range {
        Value::List(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| match c.iter_var2 {
                Some(_) => (
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
            return Tri::Err(ExecutionError::UnexpectedType {
                got: other.type_of().to_string(),
                want: "iterable".to_string(),
            });
        }
    };
    let mut accu = walk(&c.accu_init, ctx, unbound);
    // evaluates `e` with the accumulator and, if given, the iteration variables bound
    let eval_in = |e: &IdedExpr, accu: &Tri, item: Option<&(Value, Option<Value>)>| -> Tri {
        let mut inner = ctx.new_inner_scope();
        let mut scope = unbound.clone();
        match accu {
            Tri::Val(v) => {
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
        if let Tri::Val(Value::Bool(false)) = eval_in(&c.loop_cond, &accu, Some(item)) {
            break;
        }
        accu = eval_in(&c.loop_step, &accu, Some(item));
    }
    eval_in(&c.result, &accu, None)
}

fn overload(op: &str, values: &[&Value]) -> ExecutionError {
    ExecutionError::no_such_overload(op, values.iter().map(|v| v.type_of().to_string()).collect())
}

// ---- ipaddress ----

/// SpiceDB's `ipaddress` parameter type: an IPv4 or IPv6 address, and the zone of an IPv6
/// address written `fe80::1%eth0` (as Go's `netip.Addr`; a zoned address is in no prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddress {
    /// the address
    pub ip: IpAddr,
    /// the IPv6 zone, if any
    pub zone: Option<String>,
}

impl IpAddress {
    /// Parses an address as Go's `netip.ParseAddr`.
    pub fn parse(s: &str) -> Option<IpAddress> {
        match s.split_once('%') {
            Some((addr, zone)) if !zone.is_empty() => Some(IpAddress {
                ip: IpAddr::V6(addr.parse().ok()?),
                zone: Some(zone.to_string()),
            }),
            Some(_) => None,
            None => Some(IpAddress {
                ip: s.parse().ok()?,
                zone: None,
            }),
        }
    }
}

impl Opaque for IpAddress {
    fn runtime_type_name(&self) -> &str {
        "ipaddress"
    }
}

/// `ip.in_cidr("10.0.0.0/8")`: is the address inside the prefix?
fn in_cidr(This(this): This<Value>, cidr: Arc<String>) -> Result<Value, ExecutionError> {
    let ip = match &this {
        Value::Opaque(o) => o.downcast_ref::<IpAddress>(),
        _ => None,
    };
    let Some(ip) = ip else {
        return Err(ExecutionError::no_such_member_overload(
            "in_cidr",
            vec![this.type_of().to_string(), "string".to_string()],
        ));
    };
    let (net, bits) = parse_prefix(&cidr).ok_or_else(|| {
        ExecutionError::function_error("in_cidr", format!("invalid CIDR string: `{cidr}`"))
    })?;
    Ok(Value::Bool(
        ip.zone.is_none() && prefix_contains(net, bits, ip.ip),
    ))
}

/// Parses `addr/bits` as Go's `netip.ParsePrefix`: the bits are decimal without sign or
/// leading zeros, at most 32 (IPv4) or 128 (IPv6).
fn parse_prefix(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = s.rsplit_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if bits.is_empty()
        || !bits.bytes().all(|b| b.is_ascii_digit())
        || (bits.len() > 1 && bits.starts_with('0'))
    {
        return None;
    }
    let bits: u32 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

/// Is `ip` in the prefix `net/bits`? Never across address families.
fn prefix_contains(net: IpAddr, bits: u32, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

// ---- JSON to CEL by parameter type ----

/// A short description of a JSON value for error messages.
fn describe(v: &Json) -> String {
    let kind = match v {
        Json::Null => return "null".to_string(),
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "list",
        Json::Object(_) => "map",
    };
    let mut text = v.to_string();
    if text.len() > 64 {
        let mut end = 64;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    format!("{kind} `{text}`")
}

fn got(v: &Json) -> String {
    format!("got {}", describe(v))
}

/// Converts `v` to a CEL value of type `t`; the error says what was found instead.
fn convert(t: &CaveatType, v: &Json) -> Result<Value, String> {
    Ok(match t {
        CaveatType::Any => any_value(v),
        CaveatType::Bool => match v {
            Json::Bool(b) => Value::Bool(*b),
            _ => return Err(got(v)),
        },
        CaveatType::String => match v {
            Json::String(s) => Value::String(Arc::new(s.clone())),
            _ => return Err(got(v)),
        },
        CaveatType::Int => Value::Int(to_int(v)?),
        CaveatType::Uint => Value::UInt(to_uint(v)?),
        CaveatType::Double => Value::Float(to_double(v)?),
        CaveatType::Bytes => match v {
            Json::String(s) => {
                let cleaned: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(cleaned.as_bytes())
                    .map_err(|e| format!("{}: not base64 ({e})", got(v)))?;
                Value::Bytes(Arc::new(bytes))
            }
            _ => return Err(format!("{} (bytes are a base64 string)", got(v))),
        },
        CaveatType::Duration => match v {
            Json::String(s) => {
                let nanos = parse_go_duration(s).map_err(|e| format!("{}: {e}", got(v)))?;
                Value::Duration(chrono::Duration::nanoseconds(nanos))
            }
            _ => return Err(format!("{} (a duration is a string like `1h30m`)", got(v))),
        },
        CaveatType::Timestamp => match v {
            Json::String(s) => Value::Timestamp(
                parse_rfc3339(s).ok_or_else(|| format!("{}: not an RFC 3339 timestamp", got(v)))?,
            ),
            _ => return Err(format!("{} (a timestamp is an RFC 3339 string)", got(v))),
        },
        CaveatType::IpAddress => match v {
            Json::String(s) => {
                let ip =
                    IpAddress::parse(s).ok_or_else(|| format!("{}: not an IP address", got(v)))?;
                Value::Opaque(Arc::new(ip))
            }
            _ => return Err(got(v)),
        },
        CaveatType::List(item) => match v {
            Json::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    out.push(
                        convert(item, x)
                            .map_err(|e| format!("item at index {i} expects {item}, {e}"))?,
                    );
                }
                Value::List(Arc::new(out))
            }
            _ => return Err(got(v)),
        },
        CaveatType::Map(item) => match v {
            Json::Object(entries) => {
                let mut out = HashMap::with_capacity(entries.len());
                for (k, x) in entries {
                    out.insert(
                        k.clone(),
                        convert(item, x)
                            .map_err(|e| format!("value at key `{k}` expects {item}, {e}"))?,
                    );
                }
                Value::from(out)
            }
            _ => return Err(got(v)),
        },
    })
}

/// An `any` parameter: JSON as is, numbers as doubles (Go's `structpb` has only doubles).
fn any_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(any_value).collect())),
        Json::Object(entries) => Value::from(
            entries
                .iter()
                .map(|(k, x)| (k.clone(), any_value(x)))
                .collect::<HashMap<String, Value>>(),
        ),
    }
}

/// A JSON number or numeric string, as SpiceDB reads numbers (`big.ParseFloat` in base 10).
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

fn number(v: &Json) -> Result<Num, String> {
    match v {
        Json::Number(n) => Ok(if let Some(i) = n.as_i64() {
            Num::I(i)
        } else if let Some(u) = n.as_u64() {
            Num::U(u)
        } else {
            Num::F(n.as_f64().unwrap_or(f64::NAN))
        }),
        Json::String(s) => {
            if let Ok(i) = s.parse::<i64>() {
                return Ok(Num::I(i));
            }
            if let Ok(u) = s.parse::<u64>() {
                return Ok(Num::U(u));
            }
            if is_decimal_float(s)
                && let Ok(f) = s.parse::<f64>()
            {
                return Ok(Num::F(f));
            }
            Err(format!("{} (not a number)", got(v)))
        }
        _ => Err(got(v)),
    }
}

/// `[+-]?(digits[.digits?]|.digits)([eE][+-]?digits)?` or `[+-]?(inf|Inf)`.
fn is_decimal_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    if matches!(&s[i..], "inf" | "Inf") {
        return true;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut mantissa = digits(&mut i);
    if i < b.len() && b[i] == b'.' {
        i += 1;
        mantissa += digits(&mut i);
    }
    if mantissa == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn to_int(v: &Json) -> Result<i64, String> {
    match number(v)? {
        Num::I(i) => Ok(i),
        // Go's big.Float.Int64 saturates
        Num::U(_) => Ok(i64::MAX),
        Num::F(f) if f.is_finite() && f.fract() == 0.0 => Ok(f as i64),
        Num::F(_) => Err(format!("{} (not an integer)", got(v))),
    }
}

fn to_uint(v: &Json) -> Result<u64, String> {
    match number(v)? {
        Num::I(i) => u64::try_from(i).map_err(|_| format!("{} (negative)", got(v))),
        Num::U(u) => Ok(u),
        Num::F(f) if f.is_finite() && f.fract() == 0.0 && f >= 0.0 => Ok(f as u64),
        Num::F(f) if f < 0.0 => Err(format!("{} (negative)", got(v))),
        Num::F(_) => Err(format!("{} (not an integer)", got(v))),
    }
}

fn to_double(v: &Json) -> Result<f64, String> {
    Ok(match number(v)? {
        Num::I(i) => i as f64,
        Num::U(u) => u as f64,
        Num::F(f) => f,
    })
}

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` or `0`, units `ns`, `us`
/// (`µs`, `μs`), `ms`, `s`, `m`, `h`; nanoseconds, at most ±2^63-1.
fn parse_go_duration(orig: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("invalid duration {orig:?}");
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // leading integer
        let mut i = 0;
        let mut v: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(b[i] - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
            i += 1;
        }
        let pre = i > 0;
        // fraction
        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let start = i;
            let mut overflow = false;
            while i < b.len() && b[i].is_ascii_digit() {
                if !overflow {
                    if f > (LIMIT - 1) / 10 {
                        overflow = true;
                    } else {
                        let y = f * 10 + u64::from(b[i] - b'0');
                        if y > LIMIT {
                            overflow = true;
                        } else {
                            f = y;
                            scale *= 10.0;
                        }
                    }
                }
                i += 1;
            }
            post = i > start;
        }
        if !pre && !post {
            return Err(invalid());
        }
        // unit
        let start = i;
        while i < b.len() && !(b[i] == b'.' || b[i].is_ascii_digit()) {
            i += 1;
        }
        if i == start {
            return Err(format!("missing unit in duration {orig:?}"));
        }
        let unit: u64 = match &s[start..i] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("unknown unit {u:?} in duration {orig:?}")),
        };
        s = &s[i..];
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        // -2^63 is representable
        Ok(0i64.wrapping_sub_unsigned(total))
    } else {
        i64::try_from(total).map_err(|_| invalid())
    }
}

/// Go's `time.Parse(time.RFC3339, s)`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, upper-case `T`
/// and `Z`, fraction separated by `.` or `,` (digits past nanoseconds ignored); the result is
/// in UTC.
fn parse_rfc3339(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if (at(i, b'.') || at(i, b',')) && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        let mut n = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if n < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
                n += 1;
            }
            i += 1;
        }
        nanos *= 10u32.pow(9 - n);
    }
    // Go accepts offsets up to 24:60 ("some people do write offsets of 24 hours")
    let offset = if at(i, b'Z') && b.len() == i + 1 {
        0
    } else if (at(i, b'+') || at(i, b'-')) && at(i + 3, b':') && b.len() == i + 6 {
        let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
        if oh > 24 || om > 60 {
            return None;
        }
        let secs = i64::from(oh * 3600 + om * 60);
        if at(i, b'-') { -secs } else { secs }
    } else {
        return None;
    };
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let naive = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    // in UTC: cel-go's `getHours()` and friends read a timestamp in UTC
    let utc = naive.checked_sub_signed(chrono::Duration::seconds(offset))?;
    chrono::FixedOffset::east_opt(0)?
        .from_local_datetime(&utc)
        .single()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::CaveatParam;
    use serde_json::json;

    fn caveat(params: &[(&str, CaveatType)], expression: &str) -> CaveatDef {
        CaveatDef {
            name: "c".to_string(),
            comment: String::new(),
            parameters: params
                .iter()
                .map(|(n, t)| CaveatParam {
                    name: n.to_string(),
                    type_: t.clone(),
                })
                .collect(),
            expression: expression.to_string(),
        }
    }

    fn ctx(v: serde_json::Value) -> Context {
        match v {
            serde_json::Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn eval(c: &CaveatDef, v: serde_json::Value) -> Result<CaveatOutcome, String> {
        CelCaveatEvaluator::new().evaluate(c, &ctx(v))
    }

    fn t() -> Result<CaveatOutcome, String> {
        Ok(CaveatOutcome::True)
    }
    fn f() -> Result<CaveatOutcome, String> {
        Ok(CaveatOutcome::False)
    }
    fn missing_o(names: &[&str]) -> CaveatOutcome {
        CaveatOutcome::Missing(names.iter().map(|s| s.to_string()).collect())
    }

    fn missing(names: &[&str]) -> Result<CaveatOutcome, String> {
        Ok(CaveatOutcome::Missing(
            names.iter().map(|s| s.to_string()).collect(),
        ))
    }

    use CaveatType as T;

    #[test]
    fn int_parameters() {
        let c = caveat(&[("a", T::Int)], "a == 100");
        assert_eq!(eval(&c, json!({"a": 100})), t());
        assert_eq!(eval(&c, json!({"a": 100.0})), t());
        assert_eq!(eval(&c, json!({"a": "100"})), t());
        assert_eq!(eval(&c, json!({"a": "1e2"})), t());
        assert_eq!(eval(&c, json!({"a": "+100"})), t());
        assert_eq!(eval(&c, json!({"a": "100.0"})), t());
        assert_eq!(eval(&c, json!({"a": 7})), f());
        assert_eq!(eval(&c, json!({"a": 1e19})), f());
        for bad in [
            json!(1.5),
            json!("x"),
            json!(" 100"),
            json!("0x64"),
            json!(true),
            json!(null),
            json!([1]),
        ] {
            let err = eval(&c, json!({ "a": bad })).unwrap_err();
            assert!(
                err.contains("parameter `a` of caveat `c` expects int"),
                "{err}"
            );
        }
        // overflow is an evaluation error
        let c = caveat(&[("a", T::Int), ("b", T::Int)], "a + b > 3");
        assert!(
            eval(&c, json!({"a": i64::MAX, "b": 5}))
                .unwrap_err()
                .contains("evaluation error")
        );
    }

    #[test]
    fn uint_double_bool_string() {
        let c = caveat(&[("a", T::Uint)], "a > 3");
        assert_eq!(eval(&c, json!({"a": 5})), t());
        assert_eq!(eval(&c, json!({"a": "7"})), t());
        assert_eq!(eval(&c, json!({"a": 2})), f());
        assert!(eval(&c, json!({"a": -1})).is_err());
        assert!(eval(&c, json!({"a": -1.0})).is_err());
        let c = caveat(&[("a", T::Uint)], "a == 18446744073709551615u");
        assert_eq!(eval(&c, json!({"a": 1e20})), t());

        let c = caveat(&[("a", T::Double)], "a > 1.5");
        assert_eq!(eval(&c, json!({"a": 2})), t());
        assert_eq!(eval(&c, json!({"a": "2.5"})), t());
        assert_eq!(eval(&c, json!({"a": 1.2})), f());
        assert!(eval(&c, json!({"a": false})).is_err());

        let c = caveat(&[("a", T::Bool), ("b", T::Bool)], "!(a && b)");
        assert_eq!(eval(&c, json!({"a": false})), t());
        assert_eq!(eval(&c, json!({"a": true})), missing(&["b"]));
        assert_eq!(eval(&c, json!({"a": true, "b": true})), f());
        assert!(eval(&c, json!({"a": "true"})).is_err());
        assert!(eval(&c, json!({"a": 1})).is_err());

        let c = caveat(&[("s", T::String)], "s.startsWith('ab')");
        assert_eq!(eval(&c, json!({"s": "abc"})), t());
        assert_eq!(eval(&c, json!({"s": "x"})), f());
        assert!(eval(&c, json!({"s": 5})).is_err());
    }

    #[test]
    fn bytes_parameters() {
        let c = caveat(&[("b", T::Bytes)], "b == b'hi'");
        assert_eq!(eval(&c, json!({"b": "aGk="})), t());
        assert_eq!(eval(&c, json!({"b": "aGk=\n"})), t());
        assert_eq!(eval(&c, json!({"b": "aGo="})), f());
        for bad in [json!("!!"), json!("aGk"), json!("aG-_"), json!(3)] {
            assert!(eval(&c, json!({ "b": bad })).is_err());
        }
    }

    #[test]
    fn duration_parameters() {
        let c = caveat(&[("d", T::Duration)], "d == duration('90m')");
        for ok in [
            "1h30m",
            "5400s",
            "+1.5h",
            "5400000ms",
            "5400000000us",
            "5400000000µs",
            "5400000000μs",
            ".5h60m",
        ] {
            assert_eq!(eval(&c, json!({ "d": ok })), t(), "{ok}");
        }
        for bad in [
            json!("1h 30m"),
            json!("90"),
            json!("bad"),
            json!(5),
            json!(""),
        ] {
            assert!(eval(&c, json!({ "d": bad })).is_err(), "{bad}");
        }
        let c = caveat(&[("d", T::Duration)], "d > duration('1h')");
        assert_eq!(eval(&c, json!({"d": "3600000000001ns"})), t());
        assert_eq!(eval(&c, json!({"d": "-2h"})), f());
        assert_eq!(eval(&c, json!({"d": "0"})), f());
        assert_eq!(parse_go_duration("-2562047h47m16.854775808s"), Ok(i64::MIN));
        assert!(parse_go_duration("2562047h47m16.854775808s").is_err());
        assert_eq!(parse_go_duration("1.000000001s"), Ok(1_000_000_001));
    }

    #[test]
    fn timestamp_parameters() {
        let c = caveat(&[("t", T::Timestamp), ("now", T::Timestamp)], "t > now");
        let stored = json!({"t": "2030-01-01T00:00:00Z"});
        let with = |now: &str| {
            let mut v = stored.clone();
            v["now"] = json!(now);
            v
        };
        assert_eq!(eval(&c, with("2020-01-01T00:00:00Z")), t());
        assert_eq!(eval(&c, with("2031-01-01T00:00:00+01:00")), f());
        assert_eq!(eval(&c, with("2030-01-01T00:00:00.5Z")), f());
        assert_eq!(eval(&c, with("2029-12-31T23:59:59.999999999999Z")), t());
        assert_eq!(eval(&c, stored.clone()), missing(&["now"]));
        for bad in [
            "2020-01-01",
            "2030-06-01t00:00:00z",
            "2030-06-01 00:00:00Z",
            "2030-02-30T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T00:00:00+2400",
            "2030-01-01T00:00:00+25:00",
        ] {
            assert!(eval(&c, with(bad)).is_err(), "{bad}");
        }
        // read in UTC, as cel-go; offsets up to 24:60 as Go's time.Parse
        let c = caveat(&[("t", T::Timestamp)], "t.getHours() == 1");
        assert_eq!(eval(&c, json!({"t": "2030-06-01T01:00:00+01:00"})), f());
        assert_eq!(eval(&c, json!({"t": "2030-06-01T01:00:00Z"})), t());
        assert_eq!(eval(&c, json!({"t": "2030-06-02T01:00:00+24:00"})), t());
        assert_eq!(eval(&c, json!({"t": "2030-06-01T01:00:00,5Z"})), t());
        let c = caveat(
            &[("t", T::Timestamp), ("d", T::Duration)],
            "t + d > timestamp('2030-01-01T00:00:00Z') && t.getFullYear() == 2029",
        );
        assert_eq!(
            eval(&c, json!({"t": "2029-12-31T23:00:00Z", "d": "2h"})),
            t()
        );
        assert_eq!(
            eval(&c, json!({"t": "2029-12-31T23:00:00Z", "d": "30m"})),
            f()
        );
    }

    #[test]
    fn list_map_any_parameters() {
        let c = caveat(
            &[("l", T::List(Box::new(T::String))), ("x", T::String)],
            "x in l",
        );
        assert_eq!(eval(&c, json!({"l": ["a", "b"], "x": "a"})), t());
        assert_eq!(eval(&c, json!({"l": ["a"], "x": "z"})), f());
        assert_eq!(eval(&c, json!({"x": "a"})), missing(&["l"]));
        let err = eval(&c, json!({"l": ["a", 1], "x": "a"})).unwrap_err();
        assert!(err.contains("index 1"), "{err}");
        assert!(eval(&c, json!({"l": "a", "x": "a"})).is_err());

        let c = caveat(&[("l", T::List(Box::new(T::Int)))], "2 in l");
        assert_eq!(eval(&c, json!({"l": [1, 2]})), t());
        assert_eq!(eval(&c, json!({"l": [1.0, 2.0]})), t());
        assert_eq!(eval(&c, json!({"l": []})), f());

        let c = caveat(&[("m", T::Map(Box::new(T::Int)))], "m['a'] == 1");
        assert_eq!(eval(&c, json!({"m": {"a": 1}})), t());
        assert_eq!(eval(&c, json!({"m": {"a": 2}})), f());
        assert!(
            eval(&c, json!({"m": {"b": 1}}))
                .unwrap_err()
                .contains("evaluation error")
        );
        assert!(
            eval(&c, json!({"m": {"a": "x"}}))
                .unwrap_err()
                .contains("key `a`")
        );
        assert!(eval(&c, json!({"m": [1]})).is_err());

        let c = caveat(
            &[("m", T::Map(Box::new(T::String)))],
            "has(m.k) && m.k == 'v'",
        );
        assert_eq!(eval(&c, json!({"m": {"k": "v"}})), t());
        assert_eq!(eval(&c, json!({"m": {}})), f());
        assert_eq!(eval(&c, json!({})), missing(&["m"]));

        let c = caveat(
            &[("m", T::Map(Box::new(T::List(Box::new(T::Int)))))],
            "3 in m['k']",
        );
        assert_eq!(eval(&c, json!({"m": {"k": [3]}})), t());
        assert!(eval(&c, json!({"m": {"k": ["a"]}})).is_err());

        let c = caveat(&[("a", T::Any)], "a == 1");
        assert_eq!(eval(&c, json!({"a": 1})), t());
        assert_eq!(eval(&c, json!({"a": "1"})), f());
        assert_eq!(eval(&c, json!({"a": [1]})), f());
        assert_eq!(eval(&c, json!({"a": 1.5})), f());
        let c = caveat(&[("l", T::List(Box::new(T::Any)))], "size(l) > 1");
        assert_eq!(eval(&c, json!({"l": [1, "a"]})), t());
        let c = caveat(&[("m", T::Map(Box::new(T::Any)))], "m.a == 1 && m.b == 'x'");
        assert_eq!(eval(&c, json!({"m": {"a": 1, "b": "x"}})), t());
        assert!(eval(&c, json!({"m": {"a": 1}})).is_err());
    }

    #[test]
    fn ipaddress_in_cidr() {
        let c = caveat(&[("ip", T::IpAddress)], "ip.in_cidr('10.0.0.0/8')");
        assert_eq!(eval(&c, json!({"ip": "10.1.2.3"})), t());
        assert_eq!(eval(&c, json!({"ip": "11.1.2.3"})), f());
        assert_eq!(eval(&c, json!({"ip": "::ffff:10.0.0.1"})), f());
        assert_eq!(eval(&c, json!({"ip": "fe80::1%eth0"})), f());
        assert!(eval(&c, json!({"ip": "010.0.0.1"})).is_err());
        assert!(eval(&c, json!({"ip": "10.0.0.1%eth0"})).is_err());
        assert_eq!(eval(&c, json!({})), missing(&["ip"]));
        assert!(eval(&c, json!({"ip": "nope"})).is_err());
        assert!(eval(&c, json!({"ip": 5})).is_err());

        let c = caveat(
            &[("ip", T::IpAddress), ("net", T::String)],
            "ip.in_cidr(net)",
        );
        let check = |ip: &str, net: &str| eval(&c, json!({"ip": ip, "net": net}));
        assert_eq!(check("2001:db8::1", "2001:db8::/32"), t());
        assert_eq!(check("2001:db9::1", "2001:db8::/32"), f());
        assert_eq!(check("10.0.0.1", "10.0.0.5/24"), t());
        assert_eq!(check("10.0.0.1", "0.0.0.0/0"), t());
        assert_eq!(check("10.0.0.1", "::/0"), f());
        assert_eq!(check("10.0.0.1", "10.0.0.1/32"), t());
        assert_eq!(check("10.0.0.2", "10.0.0.1/32"), f());
        for bad in [
            "bad",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/",
            "10.0.0.0/+8",
        ] {
            assert!(check("10.0.0.1", bad).is_err(), "{bad}");
        }
        // equality of addresses
        let c = caveat(&[("a", T::IpAddress), ("b", T::IpAddress)], "a == b");
        assert_eq!(eval(&c, json!({"a": "10.0.0.1", "b": "10.0.0.1"})), t());
        assert_eq!(eval(&c, json!({"a": "10.0.0.1", "b": "10.0.0.2"})), f());
    }

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

    #[test]
    fn non_bool_results_are_errors() {
        let c = caveat(&[("a", T::Int)], "a + 1");
        let err = eval(&c, json!({"a": 1})).unwrap_err();
        assert!(err.contains("boolean"), "{err}");
        assert_eq!(eval(&c, json!({})), missing(&["a"]));
        let c = caveat(&[("a", T::Any)], "a");
        assert_eq!(eval(&c, json!({"a": true})), t());
        assert!(eval(&c, json!({"a": 1})).is_err());
        let c = caveat(&[("a", T::Any), ("b", T::Bool)], "a && b");
        assert!(eval(&c, json!({"a": 1, "b": true})).is_err());
        assert_eq!(eval(&c, json!({"a": 1, "b": false})), f());
    }

    #[test]
    fn write_time_checks() {
        let c = caveat(
            &[("a", T::Int), ("l", T::List(Box::new(T::String)))],
            "a == 1 && 'x' in l",
        );
        assert!(check_context_types(&c, &ctx(json!({"a": 1, "l": ["x"]}))).is_ok());
        assert!(check_context_types(&c, &ctx(json!({"a": "5"}))).is_ok());
        assert!(check_context_types(&c, &ctx(json!({}))).is_ok());
        let err = check_context_types(&c, &ctx(json!({"a": "x"}))).unwrap_err();
        assert!(
            err.starts_with("parameter `a` of caveat `c` expects int, got string"),
            "{err}"
        );
        assert!(check_context_types(&c, &ctx(json!({"a": 1.5}))).is_err());
        assert!(check_context_types(&c, &ctx(json!({"a": null}))).is_err());
        assert!(check_context_types(&c, &ctx(json!({"l": [1]}))).is_err());
        let err = check_context_types(&c, &ctx(json!({"zzz": 1}))).unwrap_err();
        assert!(err.contains("unknown parameter `zzz`"), "{err}");
    }

    #[test]
    fn programs_are_cached() {
        let ev = CelCaveatEvaluator::new();
        let c = caveat(&[("a", T::Int)], "a == 1");
        for _ in 0..3 {
            assert_eq!(ev.evaluate(&c, &ctx(json!({"a": 1}))), t());
        }
        assert_eq!(ev.programs.len(), 1);
        let c2 = caveat(&[("a", T::Int)], "a == 2");
        assert_eq!(ev.evaluate(&c2, &ctx(json!({"a": 1}))), f());
        assert_eq!(ev.programs.len(), 2);
        let bad = caveat(&[("a", T::Int)], "a ==");
        assert!(ev.evaluate(&bad, &ctx(json!({"a": 1}))).is_err());
    }

    /// Expressions of every shape that makes a deep tree, at the deepest the schema accepts:
    /// compiled (parse and type check), evaluated with their context and partially evaluated
    /// without it, all on a thread with a 2 MiB stack, the size of a Tokio worker's. Release
    /// builds only: a debug build spends several times the stack per level. (At the bounds the
    /// worst shape, nested parentheses in the parser, needs between 512 and 768 KiB; set
    /// `PEMBA_TEST_STACK` to a size in bytes to measure.)
    #[test]
    #[cfg_attr(debug_assertions, ignore = "stack use is measured in release builds")]
    fn the_deepest_accepted_expressions_fit_a_small_stack() {
        use crate::schema::limits::check_caveat_expression;
        type Shape = (&'static str, fn(usize) -> String, serde_json::Value);
        let shapes: Vec<Shape> = vec![
            (
                "x int",
                |n| format!("{}x{} > 0", "(".repeat(n), ")".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "x int",
                |n| format!("x{} > 0", " + 1".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "x int",
                |n| format!("x{} > 0", " - 1 * 2".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "b bool",
                |n| format!("{}b{}", "!(".repeat(n), ")".repeat(n)),
                json!({"b": true}),
            ),
            (
                "b bool",
                |n| format!("{}b", "!".repeat(n)),
                json!({"b": true}),
            ),
            (
                "x int",
                |n| format!("{}x{} > 0", "-(".repeat(n), ")".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "b bool",
                |n| format!("{}b", "b ? false : ".repeat(n)),
                json!({"b": false}),
            ),
            (
                "b bool",
                |n| format!("{}b{}", "b && (".repeat(n), ")".repeat(n)),
                json!({"b": true}),
            ),
            (
                "b bool",
                |n| format!("{}b{}", "b || (".repeat(n), ")".repeat(n)),
                json!({"b": false}),
            ),
            (
                "x int",
                |n| format!("size({}x{}) > 0", "[".repeat(n), "]".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "x int",
                |n| format!("size({}x{}) > 0", "{1: ".repeat(n), "}".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "m map<any>",
                |n| format!("m{} == 1", ".a".repeat(n)),
                json!({"m": {"a": 1}}),
            ),
            (
                "m map<any>",
                |n| format!("m{} == 1", "['a']".repeat(n)),
                json!({"m": {"a": 1}}),
            ),
            (
                "m map<any>",
                |n| format!("has(m{})", ".a".repeat(n)),
                json!({"m": {"a": 1}}),
            ),
            (
                "x int",
                |n| format!("{}x{} > 0", "int(".repeat(n), ")".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "x int",
                |n| format!("dyn(x){} == 1", ".f()".repeat(n)),
                json!({"x": 1}),
            ),
            (
                "l list<int>",
                |n| format!("{}true{}", "l.all(a, ".repeat(n), ")".repeat(n)),
                json!({"l": [1]}),
            ),
            (
                "l list<int>",
                |n| {
                    format!(
                        "{}l.exists(a, a > 0){}",
                        "l.exists_one(b, ".repeat(n),
                        ")".repeat(n)
                    )
                },
                json!({"l": [1]}),
            ),
            (
                "l list<int>",
                |n| format!("size({}1{}) > 0", "l.map(a, ".repeat(n), ")".repeat(n)),
                json!({"l": [1]}),
            ),
            (
                "l list<int>",
                |n| {
                    format!(
                        "size({}[1]{}) > 0",
                        "l.filter(a, a > 0 && size(".repeat(n),
                        ") > 0)".repeat(n)
                    )
                },
                json!({"l": [1]}),
            ),
        ];
        let run = move || {
            for (params, shape, context) in &shapes {
                // the deepest that compiles: within the depth bound, the parser's own limits
                // and the type checker
                let compile = |n: usize| {
                    check_caveat_expression(&shape(n)).ok().and_then(|()| {
                        crate::schema::compile(&format!("caveat c({params}) {{ {} }}", shape(n)))
                            .ok()
                    })
                };
                let mut n = 1;
                while n < 10_000 && check_caveat_expression(&shape(n + 1)).is_ok() {
                    n += 1;
                }
                assert!(n < 10_000, "{params}: no bound");
                while n > 1 && compile(n).is_none() {
                    n -= 1;
                }
                let Some(compiled) = compile(n) else {
                    panic!("{params}: `{}` does not compile", shape(1));
                };
                let Some(def) = compiled.caveat("c") else {
                    panic!("no caveat");
                };
                assert!(n >= 10, "{params}: `{}` is refused", shape(n + 1));
                let ev = CelCaveatEvaluator::new();
                // some shapes fail at run time (`m.a.a` on a number): failing is fine
                let _ = ev.evaluate(def, &ctx(context.clone()));
                let missing = ev.evaluate(def, &Context::new());
                assert!(
                    matches!(missing, Ok(CaveatOutcome::Missing(_))),
                    "{params}: {missing:?}"
                );
            }
        };
        let worker = std::thread::Builder::new()
            .stack_size(
                std::env::var("PEMBA_TEST_STACK")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2 << 20),
            )
            .spawn(run)
            .unwrap();
        worker.join().unwrap();
    }

    /// What the schema's bounds refuse is refused at evaluation too (a caveat stored before the
    /// bounds existed), as an evaluation error.
    #[test]
    fn expressions_past_the_bounds_are_errors() {
        let deep = caveat(&[("x", T::Int)], &format!("x{} > 0", " + 1".repeat(20_000)));
        let err = eval(&deep, json!({"x": 1})).unwrap_err();
        assert!(err.contains("recursion limit"), "{err}");
        let nested = caveat(
            &[("x", T::Int)],
            &format!("{}x{} > 0", "(".repeat(10_000), ")".repeat(10_000)),
        );
        assert!(eval(&nested, json!({})).is_err());
    }

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
