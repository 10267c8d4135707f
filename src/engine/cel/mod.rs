//! CEL caveats: deciding a caveat's expression on a relationship's and a request's context.
//!
//! The pieces, in the order an evaluation meets them:
//! - `evaluate`: [`CelCaveatEvaluator`] compiles each caveat expression once with the `cel`
//!   crate (cel-rust), binds the context's parameters and runs it; the public surface is that
//!   evaluator and the write-time check [`check_context_types`].
//! - `convert`: the JSON context to CEL values by each parameter's declared type, as SpiceDB's
//!   `ConvertContextToParameters` (Go durations, RFC 3339 timestamps, numbers from strings).
//! - `ipaddress`: SpiceDB's custom `ipaddress` type and its `in_cidr` member function,
//!   registered in every evaluation context.
//! - `meter`: the cost budget cel-rust lacks, charged by metering functions wrapped into each
//!   compiled expression's comprehensions.
//! - `partial`: when cel-rust fails because parameters are missing, the expression is walked
//!   again with cel-go's partial-evaluation rules, which name the missing parameters the
//!   result depends on (SpiceDB's missing context).

mod convert;
mod evaluate;
mod ipaddress;
mod meter;
mod partial;
#[cfg(test)]
mod testing;

pub use convert::check_context_types;
pub use evaluate::CelCaveatEvaluator;
