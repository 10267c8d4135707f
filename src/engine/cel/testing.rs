//! Helpers shared by the CEL tests: caveats, contexts and expected outcomes in one line each.

use crate::engine::caveats::{CaveatEvaluator, CaveatOutcome};
use crate::engine::cel::CelCaveatEvaluator;
use crate::model::Context;
use crate::schema::CaveatParam;
use crate::schema::{CaveatDef, CaveatType};

pub(super) fn caveat(params: &[(&str, CaveatType)], expression: &str) -> CaveatDef {
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

pub(super) fn ctx(v: serde_json::Value) -> Context {
    match v {
        serde_json::Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

pub(super) fn eval(c: &CaveatDef, v: serde_json::Value) -> Result<CaveatOutcome, String> {
    CelCaveatEvaluator::new().evaluate(c, &ctx(v))
}

pub(super) fn t() -> Result<CaveatOutcome, String> {
    Ok(CaveatOutcome::True)
}
pub(super) fn f() -> Result<CaveatOutcome, String> {
    Ok(CaveatOutcome::False)
}
pub(super) fn missing_o(names: &[&str]) -> CaveatOutcome {
    CaveatOutcome::Missing(names.iter().map(|s| s.to_string()).collect())
}

pub(super) fn missing(names: &[&str]) -> Result<CaveatOutcome, String> {
    Ok(CaveatOutcome::Missing(
        names.iter().map(|s| s.to_string()).collect(),
    ))
}

pub(super) use crate::schema::CaveatType as T;
