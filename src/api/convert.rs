//! Wire ↔ model: proto messages validated into `model` values, and model values back to protos.
//!
//! Every proto message a request carries is validated here (the regexes, lengths and required
//! fields of `authzed.api.v1`) as it becomes a `model` value, and model values become proto
//! messages on the way out.

use prost::Message as _;
use serde_json::{Map, Number, Value};

use super::error::{ApiError, ApiResult, Metadata, Reason};
use super::proto::authzed::api::v1 as pb;
use crate::consistency::{Requirement, encode_token};
use crate::model::{
    self, Caveat, Context, ObjectRef, Relationship, RelationshipFilter, Revision, SubjectFilter,
    SubjectRef, SubjectRelationFilter, Timestamp, ids,
};
use crate::store::{Precondition, PreconditionOp};

/// Largest transaction metadata, in encoded bytes.
pub const MAX_TRANSACTION_METADATA_BYTES: usize = 65_000;

fn required<'a, T>(v: Option<&'a T>, path: &str) -> ApiResult<&'a T> {
    v.ok_or_else(|| ApiError::field(path, "value is required"))
}

/// Validates an object type name.
pub fn type_name(s: &str, path: &str) -> ApiResult<String> {
    ids::validate_type_name(s).map_err(|e| ApiError::field(path, e))?;
    Ok(s.to_string())
}

/// Validates a relation or permission name.
pub fn relation_name(s: &str, path: &str) -> ApiResult<String> {
    ids::validate_relation(s).map_err(|e| ApiError::field(path, e))?;
    Ok(s.to_string())
}

/// Validates an optional relation name (empty = none).
pub fn optional_relation(s: &str, path: &str) -> ApiResult<Option<String>> {
    if s.is_empty() {
        Ok(None)
    } else {
        relation_name(s, path).map(Some)
    }
}

/// A resource reference; the wildcard `*` is refused, as resources are concrete objects.
pub fn resource_ref(o: Option<&pb::ObjectReference>, path: &str) -> ApiResult<ObjectRef> {
    let o = required(o, path)?;
    let t = type_name(&o.object_type, &format!("{path}.object_type"))?;
    ids::validate_object_id(&o.object_id)
        .map_err(|e| ApiError::field(&format!("{path}.object_id"), e))?;
    if o.object_id == "*" {
        return Err(ApiError::field(
            &format!("{path}.object_id"),
            "alphanumeric value is required",
        ));
    }
    Ok(ObjectRef::new(t, o.object_id.clone()))
}

/// A subject reference; `*` is accepted (callers that forbid it check) but never with a relation.
pub fn subject_ref(s: Option<&pb::SubjectReference>, path: &str) -> ApiResult<SubjectRef> {
    let s = required(s, path)?;
    let o = required(s.object.as_ref(), &format!("{path}.object"))?;
    let t = type_name(&o.object_type, &format!("{path}.object.object_type"))?;
    ids::validate_object_id(&o.object_id)
        .map_err(|e| ApiError::field(&format!("{path}.object.object_id"), e))?;
    let relation = optional_relation(&s.optional_relation, &format!("{path}.optional_relation"))?;
    if o.object_id == "*" && relation.is_some() {
        return Err(ApiError::field(
            path,
            "optionalrelation must be empty on subject if object ID is a wildcard",
        ));
    }
    Ok(SubjectRef {
        object: ObjectRef::new(t, o.object_id.clone()),
        relation,
    })
}

/// Converts a `google.protobuf.Struct` to JSON, refusing non-finite numbers.
pub fn struct_to_json(s: &prost_types::Struct, path: &str) -> ApiResult<Context> {
    s.fields
        .iter()
        .map(|(k, v)| Ok((k.clone(), value_to_json(v, path)?)))
        .collect()
}

fn value_to_json(v: &prost_types::Value, path: &str) -> ApiResult<Value> {
    use prost_types::value::Kind;
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                return Err(ApiError::field(path, "context numbers must be finite"));
            }
            // Integral values stay integers, so `42` written is `42` read back.
            if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "checked integral and in range"
                )]
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s, path)?),
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .iter()
                .map(|x| value_to_json(x, path))
                .collect::<ApiResult<_>>()?,
        ),
    })
}

/// Converts JSON back to a `google.protobuf.Struct`.
pub fn json_to_struct(m: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A request's caveat context, size-checked.
pub fn request_context(
    s: Option<&prost_types::Struct>,
    path: &str,
    max_bytes: usize,
) -> ApiResult<Context> {
    match s {
        None => Ok(Context::new()),
        Some(s) => {
            let len = s.encoded_len();
            if len > max_bytes {
                return Err(ApiError::invalid(
                    Reason::Unspecified,
                    format!(
                        "request caveat context should have less than {max_bytes} bytes but had {len}"
                    ),
                    Metadata::new(),
                ));
            }
            struct_to_json(s, path)
        }
    }
}

fn timestamp(t: &prost_types::Timestamp, path: &str) -> ApiResult<Timestamp> {
    let nanos = u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| ApiError::field(path, "nanos must be in 0..1e9"))?;
    Ok(Timestamp {
        seconds: t.seconds,
        nanos,
    })
}

/// A relationship to write, its caveat context at most `max_context_bytes` long.
pub fn relationship(
    r: Option<&pb::Relationship>,
    path: &str,
    max_context_bytes: usize,
) -> ApiResult<Relationship> {
    let r = required(r, path)?;
    let resource = resource_ref(r.resource.as_ref(), &format!("{path}.resource"))?;
    let relation = relation_name(&r.relation, &format!("{path}.relation"))?;
    let subject = subject_ref(r.subject.as_ref(), &format!("{path}.subject"))?;
    let caveat = match &r.optional_caveat {
        None => None,
        Some(c) => {
            let cpath = format!("{path}.optional_caveat");
            ids::validate_caveat_name(&c.caveat_name)
                .map_err(|e| ApiError::field(&format!("{cpath}.caveat_name"), e))?;
            let context = match &c.context {
                None => Context::new(),
                Some(s) => {
                    let len = s.encoded_len();
                    if len > max_context_bytes {
                        return Err(ApiError::invalid(
                            Reason::MaxRelationshipContextSize,
                            format!(
                                "relationship caveat context should have less than {max_context_bytes} bytes but had {len}"
                            ),
                            super::error::meta([
                                ("relationship", &format!("{resource}#{relation}@{subject}")),
                                ("context_byte_size", &len.to_string()),
                                (
                                    "max_allowed_context_byte_size",
                                    &max_context_bytes.to_string(),
                                ),
                            ]),
                        ));
                    }
                    struct_to_json(s, &format!("{cpath}.context"))?
                }
            };
            Some(Caveat {
                name: c.caveat_name.clone(),
                context,
            })
        }
    };
    let expires_at = r
        .optional_expires_at
        .as_ref()
        .map(|t| timestamp(t, &format!("{path}.optional_expires_at")))
        .transpose()?;
    Ok(Relationship {
        resource,
        relation,
        subject,
        caveat,
        expires_at,
    })
}

fn id_filter(s: &str, path: &str) -> ApiResult<Option<String>> {
    if s.is_empty() {
        return Ok(None);
    }
    if s == "*" {
        return Err(ApiError::field(path, "alphanumeric value is required"));
    }
    ids::validate_object_id(s).map_err(|e| ApiError::field(path, e))?;
    Ok(Some(s.to_string()))
}

/// A relationship filter; at least one field must be set.
pub fn relationship_filter(
    f: Option<&pb::RelationshipFilter>,
    path: &str,
) -> ApiResult<RelationshipFilter> {
    let f = required(f, path)?;
    let resource_type = if f.resource_type.is_empty() {
        None
    } else {
        Some(type_name(
            &f.resource_type,
            &format!("{path}.resource_type"),
        )?)
    };
    let resource_id = id_filter(
        &f.optional_resource_id,
        &format!("{path}.optional_resource_id"),
    )?;
    let resource_id_prefix = id_filter(
        &f.optional_resource_id_prefix,
        &format!("{path}.optional_resource_id_prefix"),
    )?;
    if resource_id.is_some() && resource_id_prefix.is_some() {
        return Err(ApiError::field(
            path,
            "cannot specify both optional_resource_id and optional_resource_id_prefix",
        ));
    }
    let relation = optional_relation(&f.optional_relation, &format!("{path}.optional_relation"))?;
    let subject = f
        .optional_subject_filter
        .as_ref()
        .map(|s| subject_filter(s, &format!("{path}.optional_subject_filter")))
        .transpose()?;
    let out = RelationshipFilter {
        resource_type,
        resource_id,
        resource_id_prefix,
        relation,
        subject,
    };
    if out.is_empty() {
        return Err(ApiError::invalid(
            Reason::InvalidFilter,
            "at least one field of the relationship filter must be specified",
            Metadata::new(),
        ));
    }
    Ok(out)
}

fn subject_filter(s: &pb::SubjectFilter, path: &str) -> ApiResult<SubjectFilter> {
    let subject_type = type_name(&s.subject_type, &format!("{path}.subject_type"))?;
    let subject_id = if s.optional_subject_id.is_empty() {
        None
    } else {
        ids::validate_object_id(&s.optional_subject_id)
            .map_err(|e| ApiError::field(&format!("{path}.optional_subject_id"), e))?;
        Some(s.optional_subject_id.clone())
    };
    let relation = match &s.optional_relation {
        None => SubjectRelationFilter::Any,
        Some(r) if r.relation.is_empty() => SubjectRelationFilter::Ellipsis,
        Some(r) => SubjectRelationFilter::Relation(relation_name(
            &r.relation,
            &format!("{path}.optional_relation.relation"),
        )?),
    };
    if subject_id.as_deref() == Some("*") && matches!(relation, SubjectRelationFilter::Relation(_))
    {
        return Err(ApiError::field(
            path,
            "optionalrelation must be empty on subject if object ID is a wildcard",
        ));
    }
    Ok(SubjectFilter {
        subject_type,
        subject_id,
        relation,
    })
}

/// A write or delete precondition.
pub fn precondition(p: &pb::Precondition, path: &str) -> ApiResult<Precondition> {
    let op = match pb::precondition::Operation::try_from(p.operation) {
        Ok(pb::precondition::Operation::MustMatch) => PreconditionOp::MustMatch,
        Ok(pb::precondition::Operation::MustNotMatch) => PreconditionOp::MustNotMatch,
        _ => {
            return Err(ApiError::field(
                &format!("{path}.operation"),
                "value must be one of the defined enum values and not unspecified",
            ));
        }
    };
    if p.filter.is_none() {
        return Err(ApiError::invalid(
            Reason::EmptyPrecondition,
            format!("validation error: {path}.filter: value is required"),
            Metadata::new(),
        ));
    }
    Ok(Precondition {
        op,
        filter: relationship_filter(p.filter.as_ref(), &format!("{path}.filter"))?,
    })
}

/// The requested consistency; absent means `minimize_latency`.
pub fn consistency(c: Option<&pb::Consistency>) -> ApiResult<Requirement> {
    use pb::consistency::Requirement as R;
    match c.and_then(|c| c.requirement.as_ref()) {
        None => match c {
            None => Ok(Requirement::MinimizeLatency),
            Some(_) => Err(ApiError::field(
                "consistency.requirement",
                "exactly one field is required in oneof",
            )),
        },
        Some(R::MinimizeLatency(true)) => Ok(Requirement::MinimizeLatency),
        Some(R::FullyConsistent(true)) => Ok(Requirement::FullyConsistent),
        Some(R::MinimizeLatency(false)) => Err(ApiError::field(
            "consistency.minimize_latency",
            "value must equal true",
        )),
        Some(R::FullyConsistent(false)) => Err(ApiError::field(
            "consistency.fully_consistent",
            "value must equal true",
        )),
        Some(R::AtLeastAsFresh(t)) => Ok(Requirement::AtLeastAsFresh(zed_token(
            t,
            "consistency.at_least_as_fresh",
        )?)),
        Some(R::AtExactSnapshot(t)) => Ok(Requirement::AtExactSnapshot(zed_token(
            t,
            "consistency.at_exact_snapshot",
        )?)),
    }
}

fn zed_token(t: &pb::ZedToken, path: &str) -> ApiResult<String> {
    if t.token.is_empty() {
        return Err(ApiError::field(
            &format!("{path}.token"),
            "value length must be at least 1 bytes",
        ));
    }
    Ok(t.token.clone())
}

/// A cursor's token, length-checked.
pub fn cursor_token(c: Option<&pb::Cursor>, path: &str) -> ApiResult<Option<String>> {
    match c {
        None => Ok(None),
        Some(c) if c.token.is_empty() || c.token.len() > 102_400 => Err(ApiError::field(
            &format!("{path}.token"),
            "value length must be between 1 and 102400 bytes, inclusive",
        )),
        Some(c) => Ok(Some(c.token.clone())),
    }
}

/// The token for `rev` of this store.
pub fn zed_token_out(rev: Revision, store_id: &str) -> pb::ZedToken {
    pb::ZedToken {
        token: encode_token(rev, store_id),
    }
}

/// An object reference on the wire.
pub fn object_out(o: &ObjectRef) -> pb::ObjectReference {
    pb::ObjectReference {
        object_type: o.object_type.clone(),
        object_id: o.object_id.clone(),
    }
}

/// A subject reference on the wire.
pub fn subject_out(s: &SubjectRef) -> pb::SubjectReference {
    pb::SubjectReference {
        object: Some(object_out(&s.object)),
        optional_relation: s.relation.clone().unwrap_or_default(),
    }
}

/// A relationship on the wire.
pub fn relationship_out(r: &Relationship) -> pb::Relationship {
    pb::Relationship {
        resource: Some(object_out(&r.resource)),
        relation: r.relation.clone(),
        subject: Some(subject_out(&r.subject)),
        optional_caveat: r.caveat.as_ref().map(|c| pb::ContextualizedCaveat {
            caveat_name: c.name.clone(),
            context: if c.context.is_empty() {
                None
            } else {
                Some(json_to_struct(&c.context))
            },
        }),
        optional_expires_at: r.expires_at.map(timestamp_out),
    }
}

/// A timestamp on the wire.
pub fn timestamp_out(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: i32::try_from(t.nanos).unwrap_or(0),
    }
}

/// The current time, as the store and engine see it.
pub fn now() -> Timestamp {
    model::Timestamp::now()
}
