//! Long randomised runs of every decoder and parser on hostile input.
//!
//! Schema text, relationship strings, caveat expressions and contexts, and every request
//! message the API serves.
//!
//! Cases per property come from `PEMBA_FUZZ_CASES` (default 256). Each property runs on a thread
//! with a 2 MiB stack, so unbounded recursion on input depth shows as a crash, not a pass.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a failure is a panic"
)]

use std::sync::Arc;

use futures::StreamExt;
use pb::permissions_service_server::PermissionsService;
use pb::schema_service_server::SchemaService;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::api::{Api, Limits, PermissionsApi, SchemaApi};
use pemba::engine::{CaveatEvaluator, CelCaveatEvaluator, EngineConfig};
use pemba::model::Timestamp;
use pemba::model::tuple::parse_relationship;
use pemba::model::{validate_object_id, validate_relation, validate_type_name};
use pemba::schema::compile;
use pemba::store::MemoryStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use serde_json::Value;
use tonic::{Code, Request};

fn cases() -> u32 {
    std::env::var("PEMBA_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

/// Runs `strategy` through `test` on a thread with a normal 2 MiB stack.
fn run_small_stack<S, M, F>(name: &'static str, make: M, test: F)
where
    M: FnOnce() -> S + Send + 'static,
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
{
    let n = cases();
    let started = std::time::Instant::now();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .stack_size(2 << 20)
        .spawn(move || {
            let strategy = make();
            let mut runner = TestRunner::new(Config {
                cases: n,
                failure_persistence: None,
                ..Config::default()
            });
            runner.run(&strategy, test).map_err(|e| e.to_string())
        })
        .unwrap();
    let outcome = handle.join().expect("property thread crashed");
    eprintln!("{name}: {n} cases in {:?}", started.elapsed());
    if let Err(e) = outcome {
        panic!("{name}: {e}");
    }
}

/// Valid schemas from the repo: the seeds of the mutations.
fn seed_schemas() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["schema", "tests/schema_golden"] {
        let Ok(entries) =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + dir)
        else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "zed")
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                out.push(t);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no seed schemas found");
    out
}

const TOKENS: &[&str] = &[
    "definition",
    "relation",
    "permission",
    "caveat",
    "use",
    "expiration",
    "with",
    "and",
    "nil",
    "any",
    "all",
    "{",
    "}",
    "(",
    ")",
    "<",
    ">",
    ":",
    "|",
    "#",
    "+",
    "-",
    "&",
    "->",
    ".",
    ",",
    "=",
    "*",
    "/",
    "\n",
    " ",
    "//",
    "/*",
    "*/",
    "/**",
    "\"",
    "'",
    ";",
    "user",
    "doc",
    "viewer",
    "x",
    "int",
    "string",
    "map<any>",
    "list<int>",
    "a/b",
    "_",
    "0",
    "9999999999999999999999",
    "é",
    "==",
    "&&",
    "||",
    "!",
    "?",
    "[",
    "]",
    "in",
    "true",
    "false",
    "\\",
    "\t",
    "\u{0}",
];

/// A mutation of `seed`: insert, delete or duplicate a slice.
fn mutate(seed: &str, op: u8, at: usize, len: usize, token: &str) -> String {
    let b = seed.as_bytes();
    let at = at % (b.len() + 1);
    let end = (at + len).min(b.len());
    let mut out: Vec<u8> = Vec::with_capacity(b.len() + 64);
    match op % 3 {
        0 => {
            out.extend_from_slice(&b[..at]);
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(&b[at..]);
        }
        1 => {
            out.extend_from_slice(&b[..at]);
            out.extend_from_slice(&b[end..]);
        }
        _ => {
            out.extend_from_slice(&b[..end]);
            out.extend_from_slice(&b[at..]);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn schema_text() -> BoxedStrategy<String> {
    let seeds = seed_schemas();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        proptest::collection::vec(proptest::sample::select(TOKENS), 0..120)
            .prop_map(|t| t.join(" ")),
        proptest::collection::vec(proptest::sample::select(TOKENS), 0..200)
            .prop_map(|t| t.concat()),
        (
            proptest::sample::select(seeds),
            proptest::collection::vec(
                (
                    any::<u8>(),
                    any::<usize>(),
                    0usize..40,
                    proptest::sample::select(TOKENS)
                ),
                1..6
            )
        )
            .prop_map(|(seed, edits)| {
                edits
                    .into_iter()
                    .fold(seed, |s, (op, at, len, tok)| mutate(&s, op, at, len, tok))
            }),
        // deep nesting, past any sane limit
        (
            1usize..3000,
            proptest::sample::select(vec!["(", "{", "<", "(a + ", "!"])
        )
            .prop_map(|(n, open)| format!("definition d {{ permission p = {} }}", open.repeat(n))),
    ]
    .boxed()
}

/// Property 1: Schema text: Ok, or an error whose position is inside the input.
#[test]
fn schema_text_never_crashes_and_errors_point_inside() {
    run_small_stack("schema", schema_text, |text| {
        if let Err(e) = compile(&text) {
            let lines = text.split('\n').count();
            prop_assert!(
                e.line() >= 1 && e.line() <= lines,
                "line {} of {lines}: {e}",
                e.line()
            );
            let line_chars = text
                .split('\n')
                .nth(e.line() - 1)
                .map_or(0, |l| l.chars().count());
            prop_assert!(
                e.column() >= 1 && e.column() <= line_chars + 1,
                "column {} of {line_chars}: {e}",
                e.column()
            );
            prop_assert!(!e.message().is_empty());
        }
        Ok(())
    });
}

fn relationship_text() -> BoxedStrategy<String> {
    let part = proptest::sample::select(vec![
        "document",
        "user",
        "d",
        "viewer",
        "...",
        "*",
        "",
        "tom",
        "a/b",
        "x_y",
        "é",
        " ",
        ":",
        "#",
        "@",
        "[",
        "]",
        "{",
        "}",
        "\"",
        "c",
        "expiration:",
        "2030-01-01T00:00:00Z",
        "2030-13-01T00:00:00Z",
        "9999999999-01-01T00:00:00.123456789Z",
        "{\"x\":1}",
        "{\"a\":[1,]}",
        "-1",
        "1970-01-01T00:00:00+00:00",
        "T",
        "Z",
        ".",
    ]);
    prop_oneof![
        proptest::collection::vec(part.clone(), 0..20).prop_map(|p| p.concat()),
        proptest::collection::vec(any::<char>(), 0..60).prop_map(|c| c.into_iter().collect()),
        (
            "[a-z]{1,6}",
            "[a-z0-9_|*-]{1,8}",
            "[a-z]{1,6}",
            "[a-z]{1,6}",
            "[a-z0-9_*]{1,8}",
            proptest::option::of("[a-z]{1,6}"),
            proptest::option::of(("[a-z]{1,6}", proptest::option::of(json_object()))),
            proptest::option::of((any::<i64>(), 0..1_000_000_000u32, any::<bool>())),
        )
            .prop_map(|(rt, ri, rel, st, si, sr, cav, exp)| {
                let mut s = format!("{rt}:{ri}#{rel}@{st}:{si}");
                if let Some(r) = sr {
                    s += &format!("#{r}");
                }
                if let Some((n, ctx)) = cav {
                    match ctx {
                        Some(c) => s += &format!("[{n}:{c}]"),
                        None => s += &format!("[{n}]"),
                    }
                }
                if let Some((seconds, nanos, long_form)) = exp {
                    let printed = Timestamp { seconds, nanos }.to_string();
                    // the canonical form, or the same instant with all nine fraction digits
                    // and `+00:00`
                    let text = if long_form {
                        let whole = printed.split(['.', 'Z']).next().unwrap_or_default();
                        format!("{whole}.{nanos:09}+00:00")
                    } else {
                        printed
                    };
                    s += &format!("[expiration:{text}]");
                }
                s
            }),
    ]
    .boxed()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // any finite double (a non-finite one is JSON `null`)
        any::<f64>().prop_map(Value::from),
        "[a-z\\]\\[{}\":,]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map("[a-z]{1,4}", json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Property 2: Relationship strings: Ok or Err; an Ok with valid identifiers prints to text that
/// parses back to the same value (caveat context floats and expirations included).
#[test]
fn relationship_strings_parse_or_refuse_and_round_trip() {
    run_small_stack("relationship", relationship_text, |text| {
        let Ok(rel) = parse_relationship(&text) else {
            return Ok(());
        };
        let valid = validate_type_name(&rel.resource.object_type).is_ok()
            && validate_object_id(&rel.resource.object_id).is_ok()
            && validate_relation(&rel.relation).is_ok()
            && validate_type_name(&rel.subject.object.object_type).is_ok()
            && (rel.subject.object.object_id == "*"
                || validate_object_id(&rel.subject.object.object_id).is_ok())
            && rel
                .subject
                .relation
                .as_deref()
                .is_none_or(|r| validate_relation(r).is_ok())
            && rel
                .caveat
                .as_ref()
                .is_none_or(|c| validate_type_name(&c.name).is_ok());
        if valid {
            let printed = rel.to_string();
            let again = parse_relationship(&printed);
            prop_assert_eq!(again.as_ref(), Ok(&rel), "printed as {}", printed);
        }
        Ok(())
    });
}

const CEL_TOKENS: &[&str] = &[
    "x",
    "s",
    "l",
    "m",
    "b",
    "1",
    "0",
    "-1",
    "9223372036854775807",
    "1.5",
    "\"a\"",
    "'b'",
    "true",
    "false",
    "null",
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "?",
    ":",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "in",
    "size",
    "has",
    "all",
    "exists",
    "map",
    "filter",
    "e",
    "m.k",
    "l[0]",
    "s.startsWith",
    "matches",
    "int",
    "string",
    "\"\\u00\"",
    "x > 0",
    "l.all(e, e > 0)",
    "l.map(e, l.map(f, e))",
    "m[\"k\"]",
    "b\"\"",
    "1u",
    "dyn",
];

fn cel_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(CEL_TOKENS), 1..40)
            .prop_map(|t| t.join(" ")),
        proptest::collection::vec(any::<char>(), 0..60).prop_map(|c| c.into_iter().collect()),
        (
            1usize..500,
            proptest::sample::select(vec!["(", "[", "!", "-", "x + (", "l.map(e, "])
        )
            .prop_map(|(n, open)| format!("{}x", open.repeat(n))),
    ]
}

/// Property 3: Caveat expressions: the schema compiles or is refused; a compiled caveat evaluates with a
/// random context to an outcome or an error, within the evaluation budget.
#[test]
fn caveat_expressions_compile_or_refuse_and_evaluate_or_fail_cleanly() {
    let evaluator = Arc::new(CelCaveatEvaluator::new());
    let context = || {
        proptest::collection::btree_map(
            proptest::sample::select(vec!["x", "s", "l", "m", "b", "z"]),
            json_value(),
            0..6,
        )
    };
    run_small_stack(
        "caveat",
        move || (cel_text(), context()),
        move |(expr, ctx)| {
            let text = format!(
                "caveat c(x int, s string, l list<int>, m map<any>, b bool) {{\n{expr}\n}}\ndefinition user {{}}"
            );
            let Ok(schema) = compile(&text) else {
                return Ok(());
            };
            let caveat = schema.caveat("c");
            prop_assert!(caveat.is_some());
            if let Some(c) = caveat {
                let ctx: serde_json::Map<String, Value> =
                    ctx.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                if let Err(e) = evaluator.evaluate(c, &ctx) {
                    prop_assert!(!e.is_empty());
                }
            }
            Ok(())
        },
    );
}

/// Random bytes decoded as each request type: Ok or a decode error, never a crash.
#[test]
fn random_bytes_decode_or_refuse_as_every_request() {
    run_small_stack(
        "decode",
        || proptest::collection::vec(any::<u8>(), 0..512),
        |bytes| {
            let b = bytes.as_slice();
            let _ = pb::CheckPermissionRequest::decode(b);
            let _ = pb::CheckBulkPermissionsRequest::decode(b);
            let _ = pb::ExpandPermissionTreeRequest::decode(b);
            let _ = pb::LookupResourcesRequest::decode(b);
            let _ = pb::LookupSubjectsRequest::decode(b);
            let _ = pb::ReadRelationshipsRequest::decode(b);
            let _ = pb::WriteRelationshipsRequest::decode(b);
            let _ = pb::DeleteRelationshipsRequest::decode(b);
            let _ = pb::ImportBulkRelationshipsRequest::decode(b);
            let _ = pb::ExportBulkRelationshipsRequest::decode(b);
            let _ = pb::WriteSchemaRequest::decode(b);
            let _ = pb::ReadSchemaRequest::decode(b);
            let _ = pb::ReflectSchemaRequest::decode(b);
            let _ = pb::DiffSchemaRequest::decode(b);
            let _ = pb::ComputablePermissionsRequest::decode(b);
            let _ = pb::DependentRelationsRequest::decode(b);
            // a message that decodes re-encodes to something that decodes to the same message
            if let Ok(m) = pb::WriteRelationshipsRequest::decode(b) {
                let again = pb::WriteRelationshipsRequest::decode(m.encode_to_vec().as_slice());
                prop_assert_eq!(again.ok(), Some(m));
            }
            Ok(())
        },
    );
}

const API_SCHEMA: &str = r#"use expiration
caveat on_day(day int, allowed list<int>) { day in allowed }
definition user {}
definition group { relation member: user | group#member }
definition document {
    relation parent: document
    relation viewer: user | user:* | group#member | user with on_day | user with expiration
    relation banned: user
    permission view = (viewer + parent->view) - banned
    permission both = viewer & parent->view
}
"#;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(vec![
            "user", "group", "document", "viewer", "member", "parent", "banned", "view", "both",
            "on_day", "", "...", "*", "nope",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_/*.#:@ é\\x00-]{0,20}",
        1 => "[a-z]{200,300}",
    ]
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(vec!["a", "b", "c", "*", "", "tom"]).prop_map(str::to_string),
        1 => "[a-zA-Z0-9_|*/=+.@:# é\\x00-]{0,24}",
        1 => "[a-z]{1000,1100}",
    ]
}

fn object() -> impl Strategy<Value = Option<pb::ObjectReference>> {
    proptest::option::weighted(
        0.95,
        (name(), id()).prop_map(|(object_type, object_id)| pb::ObjectReference {
            object_type,
            object_id,
        }),
    )
}

fn subject() -> impl Strategy<Value = Option<pb::SubjectReference>> {
    proptest::option::weighted(
        0.95,
        (object(), prop_oneof![Just(String::new()), name()]).prop_map(
            |(object, optional_relation)| pb::SubjectReference {
                object,
                optional_relation,
            },
        ),
    )
}

fn proto_value() -> impl Strategy<Value = prost_types::Value> {
    use prost_types::value::Kind;
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<bool>().prop_map(Kind::BoolValue),
        any::<f64>().prop_map(Kind::NumberValue),
        prop_oneof![
            Just(1e300),
            Just(-0.5),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(3.0)
        ]
        .prop_map(Kind::NumberValue),
        "[a-z0-9:.\\-]{0,12}".prop_map(Kind::StringValue),
    ];
    leaf.prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(
                inner
                    .clone()
                    .prop_map(|k| prost_types::Value { kind: Some(k) }),
                0..4
            )
            .prop_map(|values| Kind::ListValue(prost_types::ListValue { values })),
            proptest::collection::btree_map(
                "[a-z]{1,4}",
                inner.prop_map(|k| prost_types::Value { kind: Some(k) }),
                0..4
            )
            .prop_map(|fields| Kind::StructValue(prost_types::Struct { fields })),
        ]
    })
    .prop_map(|k| prost_types::Value { kind: Some(k) })
}

fn context() -> impl Strategy<Value = Option<prost_types::Struct>> {
    proptest::option::of(
        proptest::collection::btree_map(
            prop_oneof![
                Just("day".to_string()),
                Just("allowed".to_string()),
                "[a-z]{1,4}"
            ],
            proto_value(),
            0..4,
        )
        .prop_map(|fields| prost_types::Struct { fields }),
    )
}

fn consistency() -> impl Strategy<Value = Option<pb::Consistency>> {
    use pb::consistency::Requirement;
    proptest::option::of(
        prop_oneof![
            any::<bool>().prop_map(Requirement::MinimizeLatency),
            any::<bool>().prop_map(Requirement::FullyConsistent),
            "[A-Za-z0-9=_-]{0,40}"
                .prop_map(|token| Requirement::AtLeastAsFresh(pb::ZedToken { token })),
            "[A-Za-z0-9=_-]{0,40}"
                .prop_map(|token| Requirement::AtExactSnapshot(pb::ZedToken { token })),
        ]
        .prop_map(|r| pb::Consistency {
            requirement: Some(r),
        }),
    )
}

fn relationship() -> impl Strategy<Value = Option<pb::Relationship>> {
    proptest::option::weighted(
        0.95,
        (
            object(),
            name(),
            subject(),
            proptest::option::of((name(), context()).prop_map(|(caveat_name, context)| {
                pb::ContextualizedCaveat {
                    caveat_name,
                    context,
                }
            })),
            proptest::option::of(
                (any::<i64>(), any::<i32>())
                    .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            ),
        )
            .prop_map(
                |(resource, relation, subject, optional_caveat, optional_expires_at)| {
                    pb::Relationship {
                        resource,
                        relation,
                        subject,
                        optional_caveat,
                        optional_expires_at,
                    }
                },
            ),
    )
}

fn filter() -> impl Strategy<Value = Option<pb::RelationshipFilter>> {
    proptest::option::weighted(
        0.9,
        (
            name(),
            prop_oneof![Just(String::new()), id()],
            prop_oneof![Just(String::new()), name()],
            proptest::option::of((
                name(),
                prop_oneof![Just(String::new()), id()],
                proptest::option::of(name()),
            )),
            prop_oneof![3 => Just(String::new()), 1 => id()],
        )
            .prop_map(
                |(
                    resource_type,
                    optional_resource_id,
                    optional_relation,
                    sf,
                    optional_resource_id_prefix,
                )| {
                    pb::RelationshipFilter {
                        resource_type,
                        optional_resource_id,
                        optional_relation,
                        optional_subject_filter: sf.map(
                            |(subject_type, optional_subject_id, rel)| pb::SubjectFilter {
                                subject_type,
                                optional_subject_id,
                                optional_relation: rel.map(|relation| {
                                    pb::subject_filter::RelationFilter { relation }
                                }),
                            },
                        ),
                        optional_resource_id_prefix,
                    }
                },
            ),
    )
}

/// One structurally random request of any type the API serves.
#[derive(Debug, Clone)]
enum Call {
    Check(pb::CheckPermissionRequest),
    Bulk(pb::CheckBulkPermissionsRequest),
    Expand(pb::ExpandPermissionTreeRequest),
    Resources(pb::LookupResourcesRequest),
    Subjects(pb::LookupSubjectsRequest),
    Read(pb::ReadRelationshipsRequest),
    Write(pb::WriteRelationshipsRequest),
    Delete(pb::DeleteRelationshipsRequest),
    Export(pb::ExportBulkRelationshipsRequest),
    WriteSchema(pb::WriteSchemaRequest),
    ReadSchema,
    Reflect(pb::ReflectSchemaRequest),
    Diff(pb::DiffSchemaRequest),
    Computable(pb::ComputablePermissionsRequest),
    Dependent(pb::DependentRelationsRequest),
}

fn call() -> impl Strategy<Value = Call> {
    let check = (
        consistency(),
        object(),
        name(),
        subject(),
        context(),
        any::<bool>(),
    )
        .prop_map(
            |(consistency, resource, permission, subject, context, with_tracing)| {
                pb::CheckPermissionRequest {
                    consistency,
                    resource,
                    permission,
                    subject,
                    context,
                    with_tracing,
                }
            },
        );
    let bulk_item = (object(), name(), subject(), context()).prop_map(
        |(resource, permission, subject, context)| pb::CheckBulkPermissionsRequestItem {
            resource,
            permission,
            subject,
            context,
        },
    );
    let update =
        (0i32..5, relationship()).prop_map(|(operation, relationship)| pb::RelationshipUpdate {
            operation,
            relationship,
        });
    let cursor =
        proptest::option::of("[A-Za-z0-9=_-]{0,40}".prop_map(|token| pb::Cursor { token }));
    prop_oneof![
        4 => check.prop_map(Call::Check),
        2 => (consistency(), proptest::collection::vec(bulk_item, 0..6), any::<bool>()).prop_map(
            |(consistency, items, with_tracing)| Call::Bulk(pb::CheckBulkPermissionsRequest { consistency, items, with_tracing })),
        2 => (consistency(), object(), name()).prop_map(|(consistency, resource, permission)|
            Call::Expand(pb::ExpandPermissionTreeRequest { consistency, resource, permission })),
        2 => (consistency(), name(), name(), subject(), context(), 0u32..20, cursor.clone()).prop_map(
            |(consistency, resource_object_type, permission, subject, context, optional_limit, optional_cursor)|
            Call::Resources(pb::LookupResourcesRequest { consistency, resource_object_type, permission, subject, context, optional_limit, optional_cursor, ..Default::default() })),
        2 => (consistency(), object(), name(), name(), context(), 0i32..4, prop_oneof![Just(String::new()), name()]).prop_map(
            |(consistency, resource, permission, subject_object_type, context, wildcard_option, optional_subject_relation)|
            Call::Subjects(pb::LookupSubjectsRequest { consistency, resource, permission, subject_object_type, context, wildcard_option,
                optional_subject_relation: if optional_subject_relation.is_empty() { String::new() } else { optional_subject_relation },
                ..Default::default() })),
        2 => (consistency(), filter(), 0u32..20, cursor.clone()).prop_map(|(consistency, relationship_filter, optional_limit, optional_cursor)|
            Call::Read(pb::ReadRelationshipsRequest { consistency, relationship_filter, optional_limit, optional_cursor })),
        4 => (proptest::collection::vec(update, 0..8), proptest::collection::vec((0i32..4, filter()).prop_map(|(operation, filter)| pb::Precondition { operation, filter }), 0..2))
            .prop_map(|(updates, optional_preconditions)| Call::Write(pb::WriteRelationshipsRequest { updates, optional_preconditions, ..Default::default() })),
        1 => (filter(), 0u32..5, any::<bool>()).prop_map(|(relationship_filter, optional_limit, optional_allow_partial_deletions)|
            Call::Delete(pb::DeleteRelationshipsRequest { relationship_filter, optional_limit, optional_allow_partial_deletions, ..Default::default() })),
        1 => (consistency(), 0u32..20, cursor, proptest::option::of(filter().prop_filter_map("some", |f| f))).prop_map(|(consistency, optional_limit, optional_cursor, optional_relationship_filter)|
            Call::Export(pb::ExportBulkRelationshipsRequest { consistency, optional_limit, optional_cursor, optional_relationship_filter })),
        1 => schema_text().prop_map(|schema| Call::WriteSchema(pb::WriteSchemaRequest { schema })),
        1 => Just(Call::ReadSchema),
        1 => consistency().prop_map(|consistency| Call::Reflect(pb::ReflectSchemaRequest { consistency, ..Default::default() })),
        1 => (consistency(), schema_text()).prop_map(|(consistency, comparison_schema)| Call::Diff(pb::DiffSchemaRequest { consistency, comparison_schema })),
        1 => (consistency(), name(), name(), prop_oneof![Just(String::new()), name()]).prop_map(|(consistency, definition_name, relation_name, optional_definition_name_filter)|
            Call::Computable(pb::ComputablePermissionsRequest { consistency, definition_name, relation_name, optional_definition_name_filter })),
        1 => (consistency(), name(), name()).prop_map(|(consistency, definition_name, permission_name)|
            Call::Dependent(pb::DependentRelationsRequest { consistency, definition_name, permission_name })),
    ]
}

/// Drains a response stream, returning its first error.
async fn drain<T>(
    r: Result<
        tonic::Response<impl futures::Stream<Item = Result<T, tonic::Status>> + Unpin>,
        tonic::Status,
    >,
) -> Result<(), tonic::Status> {
    let mut s = r?.into_inner();
    while let Some(item) = s.next().await {
        item?;
    }
    Ok(())
}

async fn send(perms: &PermissionsApi, schema: &SchemaApi, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::Check(r) => perms.check_permission(Request::new(r)).await.map(drop),
        Call::Bulk(r) => perms
            .check_bulk_permissions(Request::new(r))
            .await
            .map(drop),
        Call::Expand(r) => perms
            .expand_permission_tree(Request::new(r))
            .await
            .map(drop),
        Call::Resources(r) => drain(perms.lookup_resources(Request::new(r)).await).await,
        Call::Subjects(r) => drain(perms.lookup_subjects(Request::new(r)).await).await,
        Call::Read(r) => drain(perms.read_relationships(Request::new(r)).await).await,
        Call::Write(r) => perms.write_relationships(Request::new(r)).await.map(drop),
        Call::Delete(r) => perms.delete_relationships(Request::new(r)).await.map(drop),
        Call::Export(r) => drain(perms.export_bulk_relationships(Request::new(r)).await).await,
        Call::WriteSchema(r) => schema.write_schema(Request::new(r)).await.map(drop),
        Call::ReadSchema => schema
            .read_schema(Request::new(pb::ReadSchemaRequest {}))
            .await
            .map(drop),
        Call::Reflect(r) => schema.reflect_schema(Request::new(r)).await.map(drop),
        Call::Diff(r) => schema.diff_schema(Request::new(r)).await.map(drop),
        Call::Computable(r) => schema
            .computable_permissions(Request::new(r))
            .await
            .map(drop),
        Call::Dependent(r) => schema.dependent_relations(Request::new(r)).await.map(drop),
    }
}

/// Property 4: Structurally random requests of every type, in sequences against one server state:
/// each answers Ok or a Status whose code is neither Unknown nor Internal.
#[test]
fn random_requests_answer_ok_or_a_clean_status() {
    run_small_stack(
        "api",
        || proptest::collection::vec(call(), 1..12),
        |calls| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            rt.block_on(async {
                let api = Api::new(
                    Arc::new(MemoryStore::new()),
                    EngineConfig::default(),
                    Limits::default(),
                );
                let perms = PermissionsApi(Arc::clone(&api));
                let schema = SchemaApi(api);
                let seeded = send(
                    &perms,
                    &schema,
                    Call::WriteSchema(pb::WriteSchemaRequest {
                        schema: API_SCHEMA.into(),
                    }),
                )
                .await;
                prop_assert!(seeded.is_ok(), "{seeded:?}");
                for c in calls {
                    let shown = format!("{c:?}");
                    if let Err(status) = send(&perms, &schema, c).await {
                        prop_assert!(
                            !matches!(status.code(), Code::Unknown | Code::Internal),
                            "{:?} {} for {}",
                            status.code(),
                            status.message(),
                            shown.chars().take(2000).collect::<String>()
                        );
                    }
                }
                Ok(())
            })
        },
    );
}
