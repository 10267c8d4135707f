//! Engine unit tests of what the YAML cases cannot express.
//!
//! The shape of Expand trees, expiry reporting, traces, cancellation and deadlines, validation
//! errors, bulk checks, pluggable caveat evaluation. (Data-driven cross-API cases:
//! `tests/cases.rs`.)

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::*;
use crate::model::{Relationship, Revision, parse_relationship};
use crate::schema::CaveatDef;
use crate::store::{MemoryStore, RelationshipUpdate, UpdateOp};

struct Fixture {
    store: MemoryStore,
    schema: CompiledSchema,
    rev: Revision,
    now: Timestamp,
}

impl Fixture {
    fn new(schema: &str, rels: &[&str]) -> Fixture {
        let schema = crate::schema::compile(schema).unwrap();
        let store = MemoryStore::new();
        let now = Timestamp::now();
        let updates: Vec<RelationshipUpdate> = rels
            .iter()
            .map(|r| RelationshipUpdate {
                op: UpdateOp::Touch,
                relationship: parse_relationship(r).unwrap(),
            })
            .collect();
        let rev = if updates.is_empty() {
            store.head_revision().unwrap()
        } else {
            store.write_relationships(&[], &updates, now).unwrap()
        };
        Fixture {
            store,
            schema,
            rev,
            now,
        }
    }

    fn snap(&self) -> Snapshot<'_> {
        Snapshot::new(&self.store, &self.schema, self.rev, self.now)
    }
}

fn req(tuple: &str) -> CheckRequest {
    let r: Relationship = parse_relationship(tuple).unwrap();
    CheckRequest {
        resource: r.resource,
        permission: r.relation,
        subject: r.subject,
        context: Context::new(),
        with_tracing: false,
    }
}

const DOCS: &str = "
definition user {}
definition group {
    relation member: user | group#member
}
definition folder {
    relation viewer: user
    permission view = viewer
}
definition document {
    relation parent: folder
    relation viewer: user | group#member
    relation editor: user
    relation banned: user
    permission edit = editor
    permission view = (viewer + edit + parent->view) - banned
    permission both = viewer & editor
    permission nothing = nil
}
";

fn docs() -> Fixture {
    Fixture::new(
        DOCS,
        &[
            "document:d#viewer@group:eng#member",
            "document:d#viewer@user:ann",
            "document:d#editor@user:bob",
            "document:d#parent@folder:f",
            "folder:f#viewer@user:carl",
            "group:eng#member@user:dan",
        ],
    )
}

fn leaf(object: &str, relation: &str, subjects: &[&str]) -> ExpandTree {
    let (t, id) = object.split_once(':').unwrap();
    ExpandTree::Leaf {
        object: ObjectRef::new(t, id),
        relation: relation.to_string(),
        subjects: subjects
            .iter()
            .map(|s| parse_relationship(&format!("x:x#x@{s}")).unwrap().subject)
            .collect(),
        subject_caveats: vec![None; subjects.len()],
        caveat: None,
    }
}

fn node(op: SetOperation, object: &str, relation: &str, children: Vec<ExpandTree>) -> ExpandTree {
    let (t, id) = object.split_once(':').unwrap();
    ExpandTree::Intermediate {
        operation: op,
        children,
        object: ObjectRef::new(t, id),
        relation: relation.to_string(),
        caveat: None,
    }
}

#[test]
fn expand_has_spicedb_shape() {
    let f = docs();
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let d = ObjectRef::new("document", "d");

    // A relation is a leaf: plain subjects first, then subject sets (not expanded).
    assert_eq!(
        engine.expand(&snap, &d, "viewer").unwrap(),
        leaf("document:d", "viewer", &["user:ann", "group:eng#member"])
    );
    // A permission that is not a set operation is a one-child union.
    assert_eq!(
        engine.expand(&snap, &d, "edit").unwrap(),
        node(
            SetOperation::Union,
            "document:d",
            "edit",
            vec![leaf("document:d", "editor", &["user:bob"])]
        )
    );
    // Exclusion of a union; the arrow is a union over the objects reached, each expanded.
    assert_eq!(
        engine.expand(&snap, &d, "view").unwrap(),
        node(
            SetOperation::Exclusion,
            "document:d",
            "view",
            vec![
                node(
                    SetOperation::Union,
                    "document:d",
                    "view",
                    vec![
                        leaf("document:d", "viewer", &["user:ann", "group:eng#member"]),
                        node(
                            SetOperation::Union,
                            "document:d",
                            "edit",
                            vec![leaf("document:d", "editor", &["user:bob"])]
                        ),
                        node(
                            SetOperation::Union,
                            "document:d",
                            "view",
                            vec![node(
                                SetOperation::Union,
                                "folder:f",
                                "view",
                                vec![leaf("folder:f", "viewer", &["user:carl"])]
                            )]
                        ),
                    ]
                ),
                leaf("document:d", "banned", &[]),
            ]
        )
    );
    // nil is an empty leaf on the permission.
    assert_eq!(
        engine.expand(&snap, &d, "nothing").unwrap(),
        node(
            SetOperation::Union,
            "document:d",
            "nothing",
            vec![leaf("document:d", "nothing", &[])]
        )
    );
}

#[test]
fn validation_errors() {
    let f = docs();
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let err = |t: &str| engine.check(&snap, &req(t)).unwrap_err();
    assert!(
        matches!(err("nope:d#view@user:ann"), EngineError::UnknownDefinition(t) if t == "nope")
    );
    assert!(matches!(
        err("document:d#nope@user:ann"),
        EngineError::UnknownRelationOrPermission { definition, relation }
            if definition == "document" && relation == "nope"
    ));
    assert!(matches!(
        err("document:d#view@robot:r"),
        EngineError::UnknownDefinition(_)
    ));
    assert!(matches!(
        err("document:d#view@group:eng#nope"),
        EngineError::UnknownRelationOrPermission { .. }
    ));
    assert!(matches!(
        err("document:d#view@user:*"),
        EngineError::WildcardSubjectNotAllowed
    ));
    let user = SubjectRef::object("user", "ann");
    assert!(matches!(
        engine.lookup_resources(&snap, "nope", "view", &user, &Context::new()),
        Err(EngineError::UnknownDefinition(_))
    ));
    assert!(matches!(
        engine.lookup_resources(&snap, "document", "nope", &user, &Context::new()),
        Err(EngineError::UnknownRelationOrPermission { .. })
    ));
    let d = ObjectRef::new("document", "d");
    assert!(matches!(
        engine.lookup_subjects(&snap, &d, "view", "robot", None, &Context::new()),
        Err(EngineError::UnknownDefinition(_))
    ));
    assert!(matches!(
        engine.lookup_subjects(&snap, &d, "view", "group", Some("nope"), &Context::new()),
        Err(EngineError::UnknownRelationOrPermission { .. })
    ));
    assert!(matches!(
        engine.expand(&snap, &d, "nope"),
        Err(EngineError::UnknownRelationOrPermission { .. })
    ));
}

#[test]
fn bulk_answers_in_order_with_item_errors() {
    let f = docs();
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let reqs = vec![
        req("document:d#view@user:dan"),
        req("nope:d#view@user:dan"),
        req("document:d#view@user:dan"),
        req("document:d#both@user:bob"),
        req("document:d#view@user:carl"),
    ];
    let out = engine.check_bulk(&snap, &reqs);
    assert_eq!(out.len(), 5);
    let perms: Vec<Option<Permissionship>> = out
        .iter()
        .map(|r| r.as_ref().ok().map(|r| r.permissionship))
        .collect();
    assert_eq!(
        perms,
        vec![
            Some(Permissionship::HasPermission),
            None,
            Some(Permissionship::HasPermission),
            Some(Permissionship::NoPermission),
            Some(Permissionship::HasPermission),
        ]
    );
    for (r, single) in reqs.iter().zip(&out) {
        let alone = engine.check(&snap, r).map(|x| x.permissionship).ok();
        assert_eq!(alone, single.as_ref().ok().map(|x| x.permissionship));
    }
}

#[test]
fn expiry_of_the_relationships_used() {
    let f = Fixture::new(
        "use expiration
        definition user {}
        definition group {
            relation member: user with expiration | user
        }
        definition document {
            relation viewer: group#member with expiration | user
            permission view = viewer
        }",
        &[
            "group:g#member@user:ann[expiration:2300-01-01T00:00:00Z]",
            "document:d#viewer@group:g#member[expiration:2200-01-01T00:00:00Z]",
            "document:d#viewer@user:bob",
        ],
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let ann = engine
        .check(&snap, &req("document:d#view@user:ann"))
        .unwrap();
    assert_eq!(ann.permissionship, Permissionship::HasPermission);
    assert_eq!(
        ann.expires_at,
        crate::model::parse_rfc3339("2200-01-01T00:00:00Z")
    );
    let bob = engine
        .check(&snap, &req("document:d#view@user:bob"))
        .unwrap();
    assert_eq!(bob.expires_at, None);
}

#[test]
fn trace_names_the_sub_problems() {
    let f = docs();
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let mut r = req("document:d#view@user:dan");
    r.with_tracing = true;
    let out = engine.check(&snap, &r).unwrap();
    let trace = out.trace.unwrap();
    assert_eq!(trace.resource, ObjectRef::new("document", "d"));
    assert_eq!(trace.permission, "view");
    assert_eq!(trace.permission_type, PermissionType::Permission);
    assert_eq!(trace.result, Permissionship::HasPermission);
    let viewer = trace
        .children
        .iter()
        .find(|c| c.permission == "viewer")
        .unwrap();
    assert_eq!(viewer.permission_type, PermissionType::Relation);
    assert_eq!(viewer.result, Permissionship::HasPermission);
    assert!(
        viewer
            .children
            .iter()
            .any(|c| c.resource == ObjectRef::new("group", "eng"))
    );
    assert!(
        engine
            .check(&snap, &req("document:d#view@user:dan"))
            .unwrap()
            .trace
            .is_none()
    );
}

#[test]
fn cancellation_and_deadline() {
    let f = docs();
    let engine = Engine::new(EngineConfig::default());
    let flag = AtomicBool::new(true);
    let snap = f.snap().with_cancel_flag(&flag);
    assert!(matches!(
        engine.check(&snap, &req("document:d#view@user:dan")),
        Err(EngineError::Cancelled)
    ));
    assert!(matches!(
        engine.lookup_resources(
            &snap,
            "document",
            "view",
            &SubjectRef::object("user", "dan"),
            &Context::new()
        ),
        Err(EngineError::Cancelled)
    ));
    let past = Instant::now()
        .checked_sub(Duration::from_millis(1))
        .unwrap();
    let snap = f.snap().with_deadline(past);
    assert!(matches!(
        engine.check(&snap, &req("document:d#view@user:dan")),
        Err(EngineError::DeadlineExceeded)
    ));
    let future = Instant::now() + Duration::from_secs(60);
    let snap = f.snap().with_deadline(future);
    assert!(
        engine
            .check(&snap, &req("document:d#view@user:dan"))
            .is_ok()
    );
}

/// An evaluator that decides `allowed` from a boolean parameter and records what it saw.
#[derive(Debug, Default)]
struct FlagEvaluator {
    seen: Mutex<Vec<Context>>,
}

impl CaveatEvaluator for FlagEvaluator {
    fn evaluate(&self, caveat: &CaveatDef, context: &Context) -> Result<CaveatOutcome, String> {
        self.seen.lock().unwrap().push(context.clone());
        match context.get(&caveat.parameters[0].name) {
            Some(serde_json::Value::Bool(true)) => Ok(CaveatOutcome::True),
            Some(serde_json::Value::Bool(false)) => Ok(CaveatOutcome::False),
            Some(_) => Err("not a bool".to_string()),
            None => Ok(CaveatOutcome::Missing(vec![
                caveat.parameters[0].name.clone(),
            ])),
        }
    }
}

#[test]
fn pluggable_caveat_evaluation_with_merged_context() {
    let f = Fixture::new(
        "caveat allowed(ok bool, tag string) { ok && tag != \"\" }
        definition user {}
        definition document {
            relation viewer: user with allowed
            permission view = viewer
        }",
        &[
            "document:d#viewer@user:ann[allowed]",
            r#"document:d#viewer@user:bob[allowed:{"ok":true}]"#,
        ],
    );
    let evaluator = Arc::new(FlagEvaluator::default());
    let engine = Engine::new(EngineConfig::default()).with_caveat_evaluator(evaluator.clone());
    let snap = f.snap();
    let mut r = req("document:d#view@user:ann");
    assert_eq!(
        engine.check(&snap, &r).unwrap().missing_context,
        vec!["ok".to_string()]
    );
    r.context.insert("ok".into(), true.into());
    assert_eq!(
        engine.check(&snap, &r).unwrap().permissionship,
        Permissionship::HasPermission
    );
    r.context.insert("ok".into(), false.into());
    assert_eq!(
        engine.check(&snap, &r).unwrap().permissionship,
        Permissionship::NoPermission
    );
    r.context.insert("ok".into(), 3.into());
    assert!(matches!(
        engine.check(&snap, &r),
        Err(EngineError::CaveatEvaluation(_))
    ));
    // The relationship's context wins over the request's.
    let mut b = req("document:d#view@user:bob");
    b.context.insert("ok".into(), false.into());
    b.context.insert("tag".into(), "x".into());
    assert_eq!(
        engine.check(&snap, &b).unwrap().permissionship,
        Permissionship::HasPermission
    );
    let seen = evaluator.seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last.get("ok"), Some(&serde_json::Value::Bool(true)));
    assert_eq!(
        last.get("tag"),
        Some(&serde_json::Value::String("x".into()))
    );
}

#[test]
fn wide_lookups_agree_with_checks() {
    // 20,000 candidates that each need a check (`view` has an exclusion): LookupResources
    // spreads them over threads, and must return exactly the resources Check allows, once
    // each, sorted by id. (Also a guard against quadratic behaviour: it runs in seconds.)
    let mut rels: Vec<String> = Vec::new();
    for i in 0..20_000 {
        rels.push(format!(
            "document:doc{i:05}#viewer@group:g{}#member",
            i % 50
        ));
        if i % 7 == 3 {
            rels.push(format!("document:doc{i:05}#banned@user:ann"));
        }
    }
    for g in 0..50 {
        rels.push(format!("group:g{g}#member@user:ann"));
    }
    let rel_refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let f = Fixture::new(DOCS, &rel_refs);
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let found: Vec<String> = engine
        .lookup_resources(
            &snap,
            "document",
            "view",
            &SubjectRef::object("user", "ann"),
            &Context::new(),
        )
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.permissionship, Permissionship::HasPermission);
            r.resource_id
        })
        .collect();
    let reqs: Vec<CheckRequest> = (0..20_000)
        .map(|i| req(&format!("document:doc{i:05}#view@user:ann")))
        .collect();
    let allowed: Vec<String> = engine
        .check_bulk(&snap, &reqs)
        .into_iter()
        .zip(&reqs)
        .filter(|(r, _)| r.as_ref().unwrap().permissionship == Permissionship::HasPermission)
        .map(|(_, q)| q.resource.object_id.clone())
        .collect();
    assert_eq!(allowed.len(), 20_000 - 2_857);
    assert_eq!(found, allowed);
    for i in [0, 3, 10, 19_999] {
        let r = req(&format!("document:doc{i:05}#view@user:ann"));
        let want = if i % 7 == 3 {
            Permissionship::NoPermission
        } else {
            Permissionship::HasPermission
        };
        assert_eq!(engine.check(&snap, &r).unwrap().permissionship, want);
    }
}

#[test]
fn bulk_caveat_error_fails_its_chunk() {
    // As SpiceDB's bulk checker (probed): a caveat of one resource failing on the context (here
    // `x` is not an int) fails every item dispatched with it, up to 100 resources a chunk;
    // other subjects, other contexts and the other chunks of the group are answered.
    let mut rels = vec![
        "document:d1#viewer@user:ann".to_string(),
        "document:d2#viewer@user:ann[cx]".to_string(),
        r#"document:d3#viewer@user:ann[cx:{"x":5}]"#.to_string(),
    ];
    for i in 0..150 {
        let caveat = if i == 140 { "[cx]" } else { "" };
        rels.push(format!("document:e{i:03}#viewer@user:ann{caveat}"));
    }
    let rel_refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let f = Fixture::new(
        "caveat cx(x int) { x > 1 }
        definition user {}
        definition document {
            relation viewer: user | user with cx
            permission view = viewer
        }",
        &rel_refs,
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let with_bad = |tuple: &str| {
        let mut r = req(tuple);
        r.context.insert("x".into(), "abc".into());
        r
    };
    let is_type_error =
        |r: &EngineResult<CheckResult>| matches!(r, Err(EngineError::CaveatParameterType(_)));
    let has = |r: &EngineResult<CheckResult>| matches!(r, Ok(c) if c.permissionship == Permissionship::HasPermission);

    let reqs = vec![
        with_bad("document:d1#view@user:ann"),
        with_bad("document:d2#view@user:ann"),
        with_bad("document:d3#view@user:ann"),
        with_bad("document:d4#view@user:ann"),
        with_bad("document:d1#view@user:bob"),
        req("document:d1#view@user:ann"),
    ];
    let out = engine.check_bulk(&snap, &reqs);
    assert!(out[..4].iter().all(is_type_error), "{out:?}");
    assert!(matches!(&out[4], Ok(c) if c.permissionship == Permissionship::NoPermission));
    assert!(has(&out[5]));
    // Alone, d1 and d3 are answered.
    assert!(has(&engine.check(&snap, &reqs[0])));
    assert!(has(&engine.check(&snap, &reqs[2])));

    let reqs: Vec<CheckRequest> = (0..150)
        .map(|i| with_bad(&format!("document:e{i:03}#view@user:ann")))
        .collect();
    let out = engine.check_bulk(&snap, &reqs);
    assert!(out[..100].iter().all(has), "{out:?}");
    assert!(out[100..].iter().all(is_type_error), "{out:?}");
}

#[test]
fn lookup_resources_evaluates_caveated_paths_beside_an_exact_one() {
    // As SpiceDB (probed): the caveat of every relationship the reverse walk follows is
    // evaluated, so a context value of the wrong type for one of them fails LookupResources
    // although an uncaveated path makes the resource a member anyway, or although the path
    // leads to no result (`read`). Check stops at the uncaveated path.
    let f = Fixture::new(
        "caveat named(name string, now timestamp) { name == \"a\" && now > timestamp(\"2000-01-01T00:00:00Z\") }
        caveat cx(x int) { x > 1 }
        definition user {}
        definition group {
            relation member: user | user with cx
        }
        definition team {
            relation member: user with cx
        }
        definition folder {
            relation manager: user | user:* with named | group#member
            relation banned: user
            relation reader: team#member
            permission view = manager
            permission not_banned = manager - banned
            permission read = reader
        }",
        &[
            "folder:f1#manager@user:u1",
            r#"folder:f1#manager@user:*[named:{"name":"b"}]"#,
            "folder:f2#manager@group:g1#member",
            "group:g1#member@user:u1",
            "folder:f2#manager@group:g2#member",
            "group:g2#member@user:u1[cx]",
            "team:t1#member@user:u1[cx]",
        ],
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let u1 = SubjectRef::object("user", "u1");
    let ctx = |k: &str, v: &str| {
        let mut c = Context::new();
        c.insert(k.into(), v.into());
        c
    };
    for perm in ["manager", "view", "not_banned"] {
        for bad in [ctx("now", "notatime"), ctx("x", "abc")] {
            let got = engine.lookup_resources(&snap, "folder", perm, &u1, &bad);
            assert!(
                matches!(got, Err(EngineError::CaveatParameterType(_))),
                "{perm} {bad:?}: {got:?}"
            );
        }
        let ok = engine
            .lookup_resources(&snap, "folder", perm, &u1, &ctx("name", "z"))
            .unwrap();
        let ids: Vec<&str> = ok.iter().map(|r| r.resource_id.as_str()).collect();
        assert_eq!(ids, ["f1", "f2"]);
        assert!(
            ok.iter()
                .all(|r| r.permissionship == Permissionship::HasPermission)
        );
    }
    let read = engine.lookup_resources(&snap, "folder", "read", &u1, &ctx("x", "abc"));
    assert!(
        matches!(read, Err(EngineError::CaveatParameterType(_))),
        "{read:?}"
    );
    let read = engine.lookup_resources(&snap, "folder", "read", &u1, &Context::new());
    assert_eq!(read.unwrap(), Vec::new());
    let mut r = req("folder:f1#manager@user:u1");
    r.context = ctx("now", "notatime");
    assert_eq!(
        engine.check(&snap, &r).unwrap().permissionship,
        Permissionship::HasPermission
    );
}

#[test]
fn lookup_resources_evaluates_caveats_where_spicedb_walks() {
    // As SpiceDB (probed): its walk goes through the first operand of an intersection (and
    // checks the others), and through `.all()` arrows; a caveat met there is evaluated, one met
    // only on a checked operand is not.
    let f = Fixture::new(
        "caveat cx(x int) { x > 1 }
        definition user {}
        definition doc {
            relation owner: user with cx
            relation other: user
            relation parent: doc with cx
            permission both = owner & other
            permission both_reversed = other & owner
            permission all_parents = parent.all(other)
        }",
        &[
            "doc:d1#owner@user:u1[cx]",
            "doc:d2#other@user:u1",
            "doc:d3#parent@doc:d2[cx]",
        ],
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let u1 = SubjectRef::object("user", "u1");
    let mut bad = Context::new();
    bad.insert("x".into(), "abc".into());
    for (perm, fails) in [
        ("both", true),
        ("both_reversed", false),
        ("all_parents", true),
    ] {
        let got = engine.lookup_resources(&snap, "doc", perm, &u1, &bad);
        if fails {
            assert!(
                matches!(got, Err(EngineError::CaveatParameterType(_))),
                "{perm}: {got:?}"
            );
        } else {
            assert_eq!(got.unwrap(), Vec::new(), "{perm}");
        }
    }
}

#[test]
fn caveated_wildcard_is_evaluated_before_the_caveated_subject() {
    // As SpiceDB (probed): it reads a subject's tuple and the wildcard in one query sorted by
    // subject id, `*` first, and evaluates their caveats in that order, stopping at one that
    // holds. So a context failing on the wildcard's caveat fails the check, one failing on the
    // subject's caveat does not when the wildcard's holds.
    let f = Fixture::new(
        "caveat cx(x int) { x > 1 }
        caveat cy(y int) { y > 1 }
        definition user {}
        definition doc {
            relation banned: user with cx | user:* with cy | user with cy | user:* with cx
        }",
        &[
            "doc:d1#banned@user:u1[cx]",
            "doc:d1#banned@user:*[cy]",
            "doc:d2#banned@user:u1[cy]",
            "doc:d2#banned@user:*[cx]",
        ],
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let with_ctx = |tuple: &str| {
        let mut r = req(tuple);
        r.context.insert("x".into(), 5.into());
        r.context.insert("y".into(), "abc".into());
        r
    };
    assert!(matches!(
        engine.check(&snap, &with_ctx("doc:d1#banned@user:u1")),
        Err(EngineError::CaveatParameterType(_))
    ));
    assert_eq!(
        engine
            .check(&snap, &with_ctx("doc:d2#banned@user:u1"))
            .unwrap()
            .permissionship,
        Permissionship::HasPermission
    );
}

#[test]
fn lookup_subjects_of_a_relation_evaluates_each_streamed_subject() {
    // As SpiceDB (probed): LookupSubjects on a relation streams the relation's own subjects and
    // those of each subject set it holds (recursively through relations) as separate results,
    // and its API evaluates the caveat of each one, so a context failing on the caveat of one
    // fails the call although another path makes the subject a member. Under a permission the
    // set operation merges its operands' results first (and Check stops at the uncaveated
    // path).
    let f = Fixture::new(
        "caveat cx(x int) { x > 1 }
        definition user {}
        definition team {
            relation member: user with cx
        }
        definition group {
            relation manager: user | team#member
        }
        definition doc {
            relation manager: user with cx | group#manager
            relation owner: group#manager
            permission manage = manager
        }",
        &[
            "doc:d1#manager@user:u1[cx]",
            "doc:d1#manager@group:g1#manager",
            "group:g1#manager@user:u1",
            "doc:d2#owner@group:g2#manager",
            "group:g2#manager@user:u1",
            "group:g2#manager@team:t1#member",
            "team:t1#member@user:u1[cx]",
        ],
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let mut bad = Context::new();
    bad.insert("x".into(), "abc".into());
    let subjects = |res: (&str, &str), perm: &str, ctx: &Context| {
        engine.lookup_subjects(
            &snap,
            &ObjectRef::new(res.0, res.1),
            perm,
            "user",
            None,
            ctx,
        )
    };
    for (res, perm) in [
        (("doc", "d1"), "manager"),
        (("doc", "d2"), "owner"),
        (("group", "g2"), "manager"),
    ] {
        let got = subjects(res, perm, &bad);
        assert!(
            matches!(got, Err(EngineError::CaveatParameterType(_))),
            "{res:?}#{perm}: {got:?}"
        );
        let ok = subjects(res, perm, &Context::new()).unwrap();
        assert_eq!(ok.len(), 1, "{res:?}#{perm}: {ok:?}");
        assert_eq!(ok[0].permissionship, Permissionship::HasPermission);
    }
    let merged = subjects(("doc", "d1"), "manage", &bad).unwrap();
    assert_eq!(merged.len(), 1, "{merged:?}");
    assert_eq!(merged[0].permissionship, Permissionship::HasPermission);
    let mut r = req("doc:d1#manager@user:u1");
    r.context = bad;
    assert_eq!(
        engine.check(&snap, &r).unwrap().permissionship,
        Permissionship::HasPermission
    );
}

#[test]
fn lookup_resources_evaluates_arrow_caveats_where_spicedb_walks() {
    // As SpiceDB (probed): the caveat of the tupleset relationship of an arrow its walk
    // follows is evaluated before the check of an entry through an intersection or an
    // exclusion, whether or not the check keeps the resource; and of two arrows over the same
    // tupleset only the one it walks counts (`owner.all(parent) & owner->owner` walks the
    // first, so a caveat met only through `owner->owner` is not evaluated).
    let f = Fixture::new(
        "caveat cx(x int) { x > 1 }
        definition user {}
        definition org {
            relation member: user
        }
        definition doc {
            relation owner: doc with cx | doc#edit with cx | doc#any with cx
            relation parent: org
            relation banned: org
            permission both = owner->parent & parent
            permission but = owner->parent - banned
            permission later = parent & owner->parent
            permission edit = owner.all(parent) & owner->owner
            permission any = owner->owner
        }",
        &[
            "doc:d3#owner@doc:d2[cx]",
            "doc:d2#parent@org:o3",
            "doc:d3#banned@org:o3",
            "doc:d5#owner@doc:d4#edit[cx]",
            "doc:d5#owner@doc:d4#any[cx]",
        ],
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let mut bad = Context::new();
    bad.insert("x".into(), "abc".into());
    let o3 = SubjectRef::object("org", "o3");
    for (perm, fails) in [("both", true), ("but", true), ("later", false)] {
        let got = engine.lookup_resources(&snap, "doc", perm, &o3, &bad);
        if fails {
            assert!(
                matches!(got, Err(EngineError::CaveatParameterType(_))),
                "{perm}: {got:?}"
            );
        } else {
            assert_eq!(got.unwrap(), Vec::new(), "{perm}");
        }
    }
    let set = |rel: &str| SubjectRef {
        object: ObjectRef::new("doc", "d4"),
        relation: Some(rel.to_string()),
    };
    let d4_edit = set("edit");
    let got = engine
        .lookup_resources(&snap, "doc", "edit", &d4_edit, &bad)
        .unwrap();
    let ids: Vec<&str> = got.iter().map(|r| r.resource_id.as_str()).collect();
    assert_eq!(ids, ["d4"]);
    let d4_any = set("any");
    let got = engine.lookup_resources(&snap, "doc", "any", &d4_any, &bad);
    assert!(
        matches!(got, Err(EngineError::CaveatParameterType(_))),
        "{got:?}"
    );
}

#[test]
fn lookup_resources_checks_with_the_context_only_on_the_walk() {
    // As SpiceDB (probed): an entry it checks (here the base of the exclusion `read`) is
    // checked with the request context only where its walk goes on to the target; `read`
    // leads to `viewer` only through the second operand of an intersection, which it checks
    // rather than walks, so a context failing on the caveat met there fails LookupResources of
    // `read` but not of `viewer`.
    let f = Fixture::new(
        "caveat cx(x int) { x > 1 }
        definition user {}
        definition group {
            relation member: org#viewer
            relation parent: user
            permission manage = parent & member->read
            permission any = parent + member->read
        }
        definition document {
            relation parent: group#manage
            relation owner: group#any
        }
        definition org {
            relation member: user
            relation viewer: document#parent
            relation owner: document#owner
            relation reader: org#member with cx
            relation banned: user
            permission read = reader - banned
        }",
        &["org:o2#reader@org:o4#member[cx]"],
    );
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let mut bad = Context::new();
    bad.insert("x".into(), "abc".into());
    let o4 = SubjectRef {
        object: ObjectRef::new("org", "o4"),
        relation: Some("member".to_string()),
    };
    for (perm, fails) in [("read", true), ("owner", true), ("viewer", false)] {
        let got = engine.lookup_resources(&snap, "org", perm, &o4, &bad);
        if fails {
            assert!(
                matches!(got, Err(EngineError::CaveatParameterType(_))),
                "{perm}: {got:?}"
            );
        } else {
            assert_eq!(got.unwrap(), Vec::new(), "{perm}");
        }
    }
}

#[test]
fn lookup_resources_does_not_walk_on_from_a_false_caveat() {
    // As SpiceDB (probed): the caveat of a relationship the walk follows is evaluated at that
    // step, and a path whose caveat is false with the request context is not walked further, so
    // a context value of the wrong type for a caveat beyond it does not fail the call; when the
    // first caveat holds, the one beyond is evaluated and fails it.
    let schema = "caveat cx(flag bool, x int) { !flag || x == 2 }
        definition user {}
        definition folder {}
        definition doc {
            relation parent: folder with cx | doc#parent with cx
            relation owner: doc with cx
            permission view = owner->parent
        }";
    let engine = Engine::new(EngineConfig::default());
    let mut bad = Context::new();
    bad.insert("flag".into(), "yes".into());
    let f1 = SubjectRef::object("folder", "f1");
    for (first, fails) in [
        (r#"{"flag":true,"x":3}"#, false),
        (r#"{"flag":false}"#, true),
    ] {
        let d1 = format!("doc:d1#parent@folder:f1[cx:{first}]");
        let d3 = format!("doc:d3#owner@doc:d1[cx:{first}]");
        let f = Fixture::new(
            schema,
            &[
                d1.as_str(),
                "doc:d2#parent@doc:d1#parent[cx]",
                d3.as_str(),
                "doc:d4#owner@doc:d3[cx]",
            ],
        );
        let snap = f.snap();
        for perm in ["parent", "view"] {
            let got = engine.lookup_resources(&snap, "doc", perm, &f1, &bad);
            if fails {
                assert!(
                    matches!(got, Err(EngineError::CaveatParameterType(_))),
                    "{first} {perm}: {got:?}"
                );
            } else {
                assert_eq!(got.unwrap(), Vec::new(), "{first} {perm}");
            }
        }
    }
}

/// A lookup's candidate checks release the graph's read lock between chunks, so a writer, and
/// every check queued behind that writer, never waits for the whole lookup. The ids iterator
/// runs a write (on another thread, as a concurrent client would) when the second chunk
/// starts: if the lock were held across all the ids, the write could never finish.
#[test]
fn candidate_checks_let_a_writer_in_between_chunks() {
    // Leaked, so the writer thread may outlive a failed test instead of deadlocking it.
    let f: &'static Fixture = Box::leak(Box::new(Fixture::new(
        DOCS,
        &["document:d1#viewer@user:ann"],
    )));
    let subject = parse_relationship("document:x#viewer@user:ann")
        .unwrap()
        .subject;
    let ids: Vec<String> = (0..fast::IDS_PER_VIEW * 3)
        .map(|i| format!("d{i}"))
        .collect();
    let mut wrote = false;
    let ids_iter = ids.iter().enumerate().map(|(i, id)| {
        if i == fast::IDS_PER_VIEW {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let u = RelationshipUpdate {
                    op: UpdateOp::Touch,
                    relationship: parse_relationship("document:d9#viewer@user:bob").unwrap(),
                };
                let _ = tx.send(f.store.write_relationships(&[], &[u], Timestamp::now()));
            });
            let written = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the writer waited for the graph's read lock");
            written.unwrap();
            wrote = true;
        }
        id.as_str()
    });
    let answers = fast::check_ids(
        &f.snap(),
        &mut fast::FastMemo::default(),
        50,
        &subject,
        "document",
        "view",
        ids_iter,
    )
    .unwrap();
    assert!(wrote);
    assert_eq!(answers.len(), ids.len());
    assert_eq!(answers.get(1), Some(&Some(true)));
    // Only d1 is ann's.
    assert_eq!(answers.iter().filter(|a| **a == Some(true)).count(), 1);
}

/// A lookup's memo of solved sub-problems grows with no graph lock held: growing a table of
/// millions of entries takes a good part of a second, and under the read lock, with a writer
/// waiting, it stalled the writer and every Check behind it. Each candidate here adds memo
/// entries (its `view`, `viewer`, ...), so over 200,000 candidates the table grows many times;
/// none of those may happen while a view is held.
#[test]
fn candidate_checks_grow_their_memo_outside_the_graph_lock() {
    const N: usize = 200_000;
    let rels: Vec<String> = (0..N)
        .map(|i| {
            format!(
                "document:d{i}#viewer@user:{}",
                if i == 1 { "ann" } else { "bob" }
            )
        })
        .collect();
    let f = Fixture::new(DOCS, &rels.iter().map(String::as_str).collect::<Vec<_>>());
    let subject = parse_relationship("document:x#viewer@user:ann")
        .unwrap()
        .subject;
    let ids: Vec<String> = (0..N).map(|i| format!("d{i}")).collect();
    let mut memo = fast::FastMemo::default();
    let answers = fast::check_ids(
        &f.snap(),
        &mut memo,
        50,
        &subject,
        "document",
        "view",
        ids.iter().map(String::as_str),
    )
    .unwrap();
    assert_eq!(answers.iter().filter(|a| **a == Some(true)).count(), 1);
    assert!(memo.len() >= N, "each candidate is memoised");
    assert_eq!(memo.grown_under_view, 0);
}

/// A page of LookupResources (after an id, at most a limit) is that slice of the whole answer,
/// whatever the page size, through exact members, caveated ones and exclusions alike.
#[test]
fn lookup_resources_pages_are_slices_of_the_whole_answer() {
    let mut rels: Vec<String> = Vec::new();
    for i in 0..700 {
        let doc = format!("d{i:04}");
        match i % 7 {
            0 => rels.push(format!("document:{doc}#banned@user:ann")),
            1 | 2 => rels.push(format!("document:{doc}#editor@user:ann")),
            _ => {}
        }
        if i % 3 != 0 {
            rels.push(format!("document:{doc}#viewer@group:eng#member"));
        }
    }
    rels.push("group:eng#member@user:ann".into());
    let f = Fixture::new(DOCS, &rels.iter().map(String::as_str).collect::<Vec<_>>());
    let engine = Engine::new(EngineConfig::default());
    let snap = f.snap();
    let ann = parse_relationship("document:x#viewer@user:ann")
        .unwrap()
        .subject;
    let whole: Vec<String> = engine
        .lookup_resources(&snap, "document", "view", &ann, &Context::new())
        .unwrap()
        .into_iter()
        .map(|r| r.resource_id)
        .collect();
    assert!(whole.len() > 300, "{}", whole.len());
    for page in [1, 7, 100, 256, 257, 1000] {
        let mut paged: Vec<String> = Vec::new();
        loop {
            let got = engine
                .lookup_resources_page(
                    &snap,
                    "document",
                    "view",
                    &ann,
                    &Context::new(),
                    paged.last().map(String::as_str),
                    page,
                )
                .unwrap();
            assert!(got.len() <= page);
            let done = got.len() < page;
            paged.extend(got.into_iter().map(|r| r.resource_id));
            if done {
                break;
            }
        }
        assert_eq!(paged, whole, "page size {page}");
    }
}

/// A walk kept for a cursor is taken up by the next page of the same request at the same
/// revision, with the clock it ran at: every page of one answer hides the same expired
/// relationships, even when some expire while the client pages. Another request walks anew.
#[test]
fn a_kept_lookup_resumes_with_its_own_clock() {
    let rels: Vec<String> = (0..20)
        .map(|i| format!("document:d{i:02}#viewer@user:ann[expiration:2200-01-01T00:00:00Z]"))
        .collect();
    let f = Fixture::new(
        "use expiration
        definition user {}
        definition document {
            relation viewer: user with expiration
            permission view = viewer
            permission read = viewer
        }",
        &rels.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let engine = Engine::new(EngineConfig::default());
    let ann = SubjectRef::object("user", "ann");
    let ctx = Context::new();
    let first = f.snap();
    let later = Snapshot {
        now: Timestamp {
            seconds: 7_258_118_400, // 2200-01-01T00:00:00Z: every relationship has expired
            nanos: 0,
        },
        ..f.snap()
    };
    let fresh_later = engine
        .lookup_resources(&later, "document", "view", &ann, &ctx)
        .unwrap();
    assert!(fresh_later.is_empty(), "{fresh_later:?}");

    // First page: 5 results, the walk kept.
    let walk = engine
        .start_lookup_resources(&first, "document", "view", &ann, &ctx, false)
        .unwrap();
    assert_eq!(walk.len(), 20);
    let (page, next) = engine
        .resolve_lookup_resources(&first, &walk, 0, 5)
        .unwrap();
    assert!(page.len() >= 5 && next >= 5, "{} {next}", page.len());
    engine.keep_lookup(Arc::clone(&walk));

    // The next page, after expiry: the same walk, answered at its own clock.
    let resumed = engine
        .start_lookup_resources(&later, "document", "view", &ann, &ctx, true)
        .unwrap();
    assert!(Arc::ptr_eq(&resumed, &walk));
    let from = resumed.position_after(Some("d04"));
    let (rest, end) = engine
        .resolve_lookup_resources(&later, &resumed, from, 100)
        .unwrap();
    let ids: Vec<&str> = rest.iter().map(|r| r.resource_id.as_str()).collect();
    assert_eq!(ids.len(), 15, "{ids:?}");
    assert_eq!(ids.first(), Some(&"d05"));
    assert_eq!(end, 20);

    // Another permission, or no cursor: walked again, at the later clock.
    for (permission, resume) in [("read", true), ("view", false)] {
        let other = engine
            .start_lookup_resources(&later, "document", permission, &ann, &ctx, resume)
            .unwrap();
        assert!(!Arc::ptr_eq(&other, &walk));
        assert!(other.is_empty(), "{permission}: {other:?}");
    }
}

/// A walk is resolved only at its own revision: anything else is an internal error, not an
/// answer.
#[test]
fn a_lookup_resolved_at_another_revision_is_an_internal_error() {
    let f = Fixture::new(DOCS, &["document:d1#viewer@user:ann"]);
    let engine = Engine::new(EngineConfig::default());
    let ann = SubjectRef::object("user", "ann");
    let snap = f.snap();
    let walk = engine
        .start_lookup_resources(&snap, "document", "view", &ann, &Context::new(), false)
        .unwrap();
    let elsewhere = Snapshot {
        revision: Revision(f.rev.0 + 1),
        ..snap
    };
    assert!(matches!(
        engine.resolve_lookup_resources(&elsewhere, &walk, 0, 10),
        Err(EngineError::Internal(_))
    ));
}
