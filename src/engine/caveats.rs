//! Caveat conditions: what a result carries through caveated relationships, and its evaluation.
//!
//! The and/or/not condition a result carries when it went through caveated relationships, and
//! its evaluation at the end of a request by a pluggable [`CaveatEvaluator`] (the engine's is
//! [`CelCaveatEvaluator`](crate::engine::CelCaveatEvaluator); [`DefaultCaveatEvaluator`] only
//! reports missing context).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::engine::error::{EngineError, EngineResult};
use crate::model::{Caveat, Context};
use crate::schema::{CaveatDef, CompiledSchema};

/// A boolean condition over caveats: the leaves are caveats named on relationships, with the
/// context written on the relationship.
#[derive(Debug, Clone, PartialEq)]
pub enum CaveatExpr {
    /// one relationship's caveat
    Leaf(Arc<Caveat>),
    /// all of them
    And(Vec<CaveatExpr>),
    /// any of them
    Or(Vec<CaveatExpr>),
    /// not this one
    Not(Box<CaveatExpr>),
}

impl fmt::Display for CaveatExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, items: &[CaveatExpr], op: &str| {
            write!(f, "(")?;
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{e}")?;
            }
            write!(f, ")")
        };
        match self {
            CaveatExpr::Leaf(c) => write!(f, "{}", c.name),
            CaveatExpr::And(items) => list(f, items, "&&"),
            CaveatExpr::Or(items) => list(f, items, "||"),
            CaveatExpr::Not(e) => write!(f, "!{e}"),
        }
    }
}

impl CaveatExpr {
    /// `self && other` (flattened; `a && a` is `a`).
    pub(crate) fn and(self, other: CaveatExpr) -> CaveatExpr {
        join(self, other, true)
    }

    /// `self || other` (flattened; `a || a` is `a`).
    pub(crate) fn or(self, other: CaveatExpr) -> CaveatExpr {
        join(self, other, false)
    }

    /// `!self` (`!!a` is `a`).
    pub(crate) fn negate(self) -> CaveatExpr {
        match self {
            CaveatExpr::Not(inner) => *inner,
            e => CaveatExpr::Not(Box::new(e)),
        }
    }
}

/// A condition that may be constant: `True` (unconditional), `False` (never), or a caveat
/// expression. The constructors fold constants, so `True`/`False` never appear inside `Expr`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    /// never
    False,
    /// always
    True,
    /// when the expression holds
    Expr(CaveatExpr),
}

impl Cond {
    /// The condition of a relationship: its caveat, or `True`.
    pub(crate) fn of_caveat(caveat: Option<&Caveat>) -> Cond {
        match caveat {
            Some(c) => Cond::Expr(CaveatExpr::Leaf(Arc::new(c.clone()))),
            None => Cond::True,
        }
    }

    /// Is this the constant `False`?
    pub(crate) fn is_false(&self) -> bool {
        matches!(self, Cond::False)
    }

    /// Is this the constant `True`?
    pub(crate) fn is_true(&self) -> bool {
        matches!(self, Cond::True)
    }

    /// `self && other`.
    pub(crate) fn and(self, other: Cond) -> Cond {
        match (self, other) {
            (Cond::False, _) | (_, Cond::False) => Cond::False,
            (Cond::True, c) | (c, Cond::True) => c,
            (Cond::Expr(a), Cond::Expr(b)) => Cond::Expr(join(a, b, true)),
        }
    }

    /// `self || other`.
    pub(crate) fn or(self, other: Cond) -> Cond {
        match (self, other) {
            (Cond::True, _) | (_, Cond::True) => Cond::True,
            (Cond::False, c) | (c, Cond::False) => c,
            (Cond::Expr(a), Cond::Expr(b)) => Cond::Expr(join(a, b, false)),
        }
    }

    /// `!self`.
    pub(crate) fn not(self) -> Cond {
        match self {
            Cond::True => Cond::False,
            Cond::False => Cond::True,
            Cond::Expr(CaveatExpr::Not(inner)) => Cond::Expr(*inner),
            Cond::Expr(e) => Cond::Expr(CaveatExpr::Not(Box::new(e))),
        }
    }
}

/// `a && b` or `a || b`, flattening nested operations of the same kind and skipping a
/// duplicate of an operand already present (`c || c` is `c`).
fn join(a: CaveatExpr, b: CaveatExpr, and: bool) -> CaveatExpr {
    let mut items = Vec::new();
    for e in [a, b] {
        match (e, and) {
            (CaveatExpr::And(v), true) | (CaveatExpr::Or(v), false) => {
                for x in v {
                    if !items.contains(&x) {
                        items.push(x);
                    }
                }
            }
            (x, _) => {
                if !items.contains(&x) {
                    items.push(x);
                }
            }
        }
    }
    if items.len() == 1
        && let Some(only) = items.pop()
    {
        return only;
    }
    if and {
        CaveatExpr::And(items)
    } else {
        CaveatExpr::Or(items)
    }
}

/// What evaluating one caveat (or a whole condition) gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaveatOutcome {
    /// the caveat holds
    True,
    /// the caveat does not hold
    False,
    /// the caveat cannot be decided: these parameters are missing from the context
    Missing(Vec<String>),
}

/// Why a caveat could not be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaveatError {
    /// the expression failed (SpiceDB's `ERROR_REASON_CAVEAT_EVALUATION_ERROR`)
    Evaluation(String),
    /// a context value does not convert to its parameter's type (SpiceDB's
    /// `ERROR_REASON_CAVEAT_PARAMETER_TYPE_ERROR`)
    ParameterType(String),
}

impl From<CaveatError> for EngineError {
    fn from(e: CaveatError) -> EngineError {
        match e {
            CaveatError::Evaluation(m) => EngineError::CaveatEvaluation(m),
            CaveatError::ParameterType(m) => EngineError::CaveatParameterType(m),
        }
    }
}

/// Decides one caveat for one merged context (request context overridden by the
/// relationship's context). `Err` is an evaluation error, reported as
/// [`EngineError::CaveatEvaluation`].
pub trait CaveatEvaluator: Send + Sync + fmt::Debug {
    /// Evaluates `caveat` with `context`.
    fn evaluate(&self, caveat: &CaveatDef, context: &Context) -> Result<CaveatOutcome, String>;

    /// As [`evaluate`](CaveatEvaluator::evaluate), telling a context value of the wrong type
    /// apart from an evaluation failure (by default every failure is an evaluation failure).
    fn evaluate_typed(
        &self,
        caveat: &CaveatDef,
        context: &Context,
    ) -> Result<CaveatOutcome, CaveatError> {
        self.evaluate(caveat, context)
            .map_err(CaveatError::Evaluation)
    }
}

/// The evaluator used until CEL evaluation exists: reports the parameters missing from the
/// context, and fails when every parameter is present.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultCaveatEvaluator;

impl CaveatEvaluator for DefaultCaveatEvaluator {
    fn evaluate(&self, caveat: &CaveatDef, context: &Context) -> Result<CaveatOutcome, String> {
        let missing: Vec<String> = caveat
            .parameters
            .iter()
            .filter(|p| !context.contains_key(&p.name))
            .map(|p| p.name.clone())
            .collect();
        if missing.is_empty() {
            Err("caveat evaluation is not available yet".to_string())
        } else {
            Ok(CaveatOutcome::Missing(missing))
        }
    }
}

/// Three-valued result while evaluating a condition.
enum ConditionTruth {
    True,
    False,
    Missing(BTreeSet<String>),
}

/// Evaluates `expr` for a request: every leaf with the request context overridden by the
/// leaf's relationship context. Short-circuits `&&` on false and `||` on true.
pub(crate) fn evaluate(
    expr: &CaveatExpr,
    request_context: &Context,
    schema: &CompiledSchema,
    evaluator: &dyn CaveatEvaluator,
) -> EngineResult<CaveatOutcome> {
    Ok(
        match eval(expr, request_context, schema, evaluator, false)? {
            ConditionTruth::True => CaveatOutcome::True,
            ConditionTruth::False => CaveatOutcome::False,
            ConditionTruth::Missing(m) => CaveatOutcome::Missing(m.into_iter().collect()),
        },
    )
}

/// As [`evaluate`], but every operand of an `||` is evaluated, so that an error in any of them
/// fails the evaluation even when another holds. SpiceDB's LookupResources and LookupSubjects
/// evaluate the caveats of the paths to a result one by one (streamed results, not merged), so
/// a context that fails on one path fails the call although another path decides the answer.
pub(crate) fn evaluate_every_path(
    expr: &CaveatExpr,
    request_context: &Context,
    schema: &CompiledSchema,
    evaluator: &dyn CaveatEvaluator,
) -> EngineResult<CaveatOutcome> {
    Ok(
        match eval(expr, request_context, schema, evaluator, true)? {
            ConditionTruth::True => CaveatOutcome::True,
            ConditionTruth::False => CaveatOutcome::False,
            ConditionTruth::Missing(m) => CaveatOutcome::Missing(m.into_iter().collect()),
        },
    )
}

/// `every_path`: `||` evaluates all its operands (an error in any fails) instead of stopping at
/// the first that holds.
fn eval(
    expr: &CaveatExpr,
    ctx: &Context,
    schema: &CompiledSchema,
    evaluator: &dyn CaveatEvaluator,
    every_path: bool,
) -> EngineResult<ConditionTruth> {
    match expr {
        CaveatExpr::Leaf(c) => {
            let def = schema.caveat(&c.name).ok_or_else(|| {
                EngineError::CaveatEvaluation(format!("caveat `{}` not found", c.name))
            })?;
            let outcome = if c.context.is_empty() {
                evaluator.evaluate_typed(def, ctx)
            } else {
                let mut merged = ctx.clone();
                for (k, v) in &c.context {
                    merged.insert(k.clone(), v.clone());
                }
                evaluator.evaluate_typed(def, &merged)
            };
            Ok(match outcome.map_err(EngineError::from)? {
                CaveatOutcome::True => ConditionTruth::True,
                CaveatOutcome::False => ConditionTruth::False,
                CaveatOutcome::Missing(m) => ConditionTruth::Missing(m.into_iter().collect()),
            })
        }
        CaveatExpr::And(items) => {
            let mut missing = BTreeSet::new();
            for e in items {
                match eval(e, ctx, schema, evaluator, every_path)? {
                    ConditionTruth::False => return Ok(ConditionTruth::False),
                    ConditionTruth::True => {}
                    ConditionTruth::Missing(m) => missing.extend(m),
                }
            }
            Ok(if missing.is_empty() {
                ConditionTruth::True
            } else {
                ConditionTruth::Missing(missing)
            })
        }
        CaveatExpr::Or(items) => {
            let mut missing = BTreeSet::new();
            let mut holds = false;
            for e in items {
                match eval(e, ctx, schema, evaluator, every_path)? {
                    ConditionTruth::True if every_path => holds = true,
                    ConditionTruth::True => return Ok(ConditionTruth::True),
                    ConditionTruth::False => {}
                    ConditionTruth::Missing(m) => missing.extend(m),
                }
            }
            Ok(if holds {
                ConditionTruth::True
            } else if missing.is_empty() {
                ConditionTruth::False
            } else {
                ConditionTruth::Missing(missing)
            })
        }
        CaveatExpr::Not(e) => Ok(match eval(e, ctx, schema, evaluator, every_path)? {
            ConditionTruth::True => ConditionTruth::False,
            ConditionTruth::False => ConditionTruth::True,
            m @ ConditionTruth::Missing(_) => m,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(name: &str) -> Cond {
        Cond::of_caveat(Some(&Caveat {
            name: name.to_string(),
            context: Context::new(),
        }))
    }

    #[test]
    fn constants_fold() {
        assert_eq!(Cond::True.and(leaf("a")), leaf("a"));
        assert_eq!(Cond::False.and(leaf("a")), Cond::False);
        assert_eq!(Cond::True.or(leaf("a")), Cond::True);
        assert_eq!(Cond::False.or(leaf("a")), leaf("a"));
        assert_eq!(leaf("a").not().not(), leaf("a"));
        assert_eq!(leaf("a").or(leaf("a")), leaf("a"));
        let abc = leaf("a").and(leaf("b")).and(leaf("c"));
        let Cond::Expr(e) = abc else {
            panic!("not an expression")
        };
        assert_eq!(e.to_string(), "(a && b && c)");
    }

    #[test]
    fn default_evaluator_reports_missing_parameters() {
        let schema = crate::schema::compile(
            "caveat limit(count int, max int) { count < max }\ndefinition user {}",
        )
        .unwrap();
        let Cond::Expr(expr) = leaf("limit") else {
            panic!("not an expression")
        };
        let mut ctx = Context::new();
        ctx.insert("count".into(), 1.into());
        let out = evaluate(&expr, &ctx, &schema, &DefaultCaveatEvaluator).unwrap();
        assert_eq!(out, CaveatOutcome::Missing(vec!["max".to_string()]));
        ctx.insert("max".into(), 2.into());
        assert!(matches!(
            evaluate(&expr, &ctx, &schema, &DefaultCaveatEvaluator),
            Err(EngineError::CaveatEvaluation(_))
        ));
    }
}
