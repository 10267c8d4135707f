//! [`CelCaveatEvaluator`]: compiles each caveat expression once and decides it on a context.
//!
//! An evaluation converts the context's parameters (`convert`), registers `in_cidr`
//! (`ipaddress`) and the cost meters (`meter`), and runs cel-rust; a missing parameter is left
//! undeclared, and when cel-rust fails the expression is walked again by the partial evaluator
//! (`partial`), which tells a missing context from an error.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use ::cel::{Env, IdedExpr, Value};
use dashmap::DashMap;

use crate::engine::caveats::{CaveatError, CaveatEvaluator, CaveatOutcome};
use crate::engine::cel::convert::{convert, type_error};
use crate::engine::cel::ipaddress::in_cidr;
use crate::engine::cel::meter::{MAX_EVALUATION_COST, meter, register_meters};
use crate::engine::cel::partial::{PartialValue, Unbound, walk};
use crate::model::Context;
use crate::schema::CaveatDef;

/// Compiled programs kept at most; the cache is emptied when it grows past this (only schema
/// churn gets there).
const MAX_CACHED_PROGRAMS: usize = 10_000;

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
        let budget = register_meters(&mut ctx, program.metered, program.meters_items)
            .map_err(CaveatError::Evaluation)?;
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
                        PartialValue::Unknown(BTreeSet::from([p.name.clone()])),
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
            Ok(v) => PartialValue::Val(v),
            Err(_) => walk(&program.expr, &ctx, &unbound),
        };
        // an error past the budget may have been absorbed (`false && error`): fail anyway
        if budget.is_some_and(|b| b.is_exceeded()) {
            return Err(eval_error(&format_args!(
                "the evaluation cost budget of {MAX_EVALUATION_COST} was exceeded"
            )));
        }
        match tri {
            PartialValue::Val(Value::Bool(true)) => Ok(CaveatOutcome::True),
            PartialValue::Val(Value::Bool(false)) => Ok(CaveatOutcome::False),
            PartialValue::Val(other) => Err(eval_error(&format_args!(
                "caveat expression must result in a boolean value: found `{}`",
                other.type_of()
            ))),
            PartialValue::Unknown(names) => Ok(CaveatOutcome::Missing(names.into_iter().collect())),
            PartialValue::Err(e) => Err(eval_error(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::caveats::CaveatOutcome;
    use crate::engine::cel::testing::*;
    use serde_json::json;

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
}
