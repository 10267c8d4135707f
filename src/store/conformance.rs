//! The conformance suite: one set of named tests every `Datastore` must pass.
//!
//! Instantiated for `MemoryStore` and for `RocksStore` in a temporary directory (SpiceDB
//! `pkg/datastore/test/datastore.go`), plus a model-based property test.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use crate::model::TransactionMetadata;
use crate::model::{
    CaveatMatch, OrphanCheck, Relationship, RelationshipFilter, RelationshipKey, Revision,
    SubjectFilter, SubjectRelationFilter, Timestamp, parse_relationship,
};
use crate::store::encoding::{self, Index};
use crate::store::{
    ChangeOp, Datastore, Precondition, PreconditionOp, RelationshipUpdate, RevisionChanges,
    RocksStore, StoreError, UpdateOp,
};

const NOW: Timestamp = Timestamp {
    seconds: 1_700_000_000,
    nanos: 0,
};

fn at(seconds_after: i64) -> Timestamp {
    Timestamp {
        seconds: NOW.seconds + seconds_after,
        nanos: 0,
    }
}

fn rel(s: &str) -> Relationship {
    parse_relationship(s).unwrap()
}

fn upd(op: UpdateOp, s: &str) -> RelationshipUpdate {
    RelationshipUpdate {
        op,
        relationship: rel(s),
    }
}

fn create(s: &str) -> RelationshipUpdate {
    upd(UpdateOp::Create, s)
}

fn touch(s: &str) -> RelationshipUpdate {
    upd(UpdateOp::Touch, s)
}

fn delete(s: &str) -> RelationshipUpdate {
    upd(UpdateOp::Delete, s)
}

fn write(ds: &dyn Datastore, updates: &[RelationshipUpdate]) -> Revision {
    ds.write_relationships(&[], updates, NOW).unwrap()
}

fn read_at(
    ds: &dyn Datastore,
    rev: Revision,
    f: &RelationshipFilter,
    now: Timestamp,
) -> Vec<Relationship> {
    let page = ds.query(rev, f, None, usize::MAX, now).unwrap();
    assert!(page.next.is_none());
    // The engine's unordered access path must see exactly the same relationships.
    let mut unordered = Vec::new();
    ds.query_all(rev, f, now, &mut unordered).unwrap();
    let sorted = |v: &[Relationship]| {
        let mut t: Vec<String> = v.iter().map(ToString::to_string).collect();
        t.sort();
        t
    };
    assert_eq!(
        sorted(&unordered),
        sorted(&page.relationships),
        "query_all vs query at {rev:?}, filter {f:?}"
    );
    page.relationships
}

fn read(ds: &dyn Datastore, rev: Revision, f: &RelationshipFilter) -> Vec<Relationship> {
    read_at(ds, rev, f, NOW)
}

/// The text of every relationship at `rev`, sorted.
fn texts(ds: &dyn Datastore, rev: Revision) -> Vec<String> {
    let mut v: Vec<String> = read(ds, rev, &RelationshipFilter::default())
        .iter()
        .map(ToString::to_string)
        .collect();
    v.sort();
    v
}

fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| rel(s).to_string()).collect();
    v.sort();
    v
}

fn filter(
    rt: Option<&str>,
    rid: Option<&str>,
    prefix: Option<&str>,
    relation: Option<&str>,
    subject: Option<SubjectFilter>,
) -> RelationshipFilter {
    RelationshipFilter {
        resource_type: rt.map(Into::into),
        resource_id: rid.map(Into::into),
        resource_id_prefix: prefix.map(Into::into),
        relation: relation.map(Into::into),
        subject,
    }
}

fn subj(st: &str, sid: Option<&str>, relation: SubjectRelationFilter) -> Option<SubjectFilter> {
    Some(SubjectFilter {
        subject_type: st.into(),
        subject_id: sid.map(Into::into),
        relation,
    })
}

fn key_filter(s: &str) -> RelationshipFilter {
    let r = rel(s);
    filter(
        Some(&r.resource.object_type),
        Some(&r.resource.object_id),
        None,
        Some(&r.relation),
        subj(
            &r.subject.object.object_type,
            Some(&r.subject.object.object_id),
            match r.subject.relation {
                Some(x) => SubjectRelationFilter::Relation(x),
                None => SubjectRelationFilter::Ellipsis,
            },
        ),
    )
}

/// The components a relationship sorts by in `index`.
fn order_key(index: Index, k: &RelationshipKey) -> Vec<String> {
    let srel = k.subject.relation.clone().unwrap_or_default();
    let (r, s) = (&k.resource, &k.subject.object);
    match index {
        Index::ByResource => vec![
            r.object_type.clone(),
            r.object_id.clone(),
            k.relation.clone(),
            s.object_type.clone(),
            s.object_id.clone(),
            srel,
        ],
        Index::BySubject => vec![
            s.object_type.clone(),
            s.object_id.clone(),
            srel,
            r.object_type.clone(),
            k.relation.clone(),
            r.object_id.clone(),
        ],
    }
}

/// What `query` must return for `f` over `all` (live relationships), in index order.
fn expected(all: &[Relationship], f: &RelationshipFilter, now: Timestamp) -> Vec<Relationship> {
    let index = encoding::plan(f).index;
    let mut v: Vec<Relationship> = all
        .iter()
        .filter(|r| f.matches_relationship(r) && !r.is_expired_at(now))
        .cloned()
        .collect();
    v.sort_by_key(|r| order_key(index, &r.key()));
    v
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[test]
                fn $name() {
                    super::$name(&crate::store::MemoryStore::new());
                }
            )*
        }
        mod rocks_store {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = crate::store::RocksStore::open(dir.path()).unwrap();
                    super::$name(&store);
                }
            )*
        }
        mod postgres_store {
            $(
                #[test]
                fn $name() {
                    if let Some(store) = super::postgres_store() {
                        super::$name(&store);
                    }
                }
            )*
        }
    };
}

/// A fresh PostgreSQL store in a schema of its own, in the database `PEMBA_TEST_POSTGRES_URL`
/// names (`.ci/run` starts a private PostgreSQL and sets it). Without one, `None` (the test
/// says it skipped), unless `PEMBA_REQUIRE_POSTGRES` is set (as `.ci/run` sets it): then the
/// test fails.
pub(crate) fn postgres_store() -> Option<crate::store::PostgresStore> {
    let uri = crate::store::postgres_test_schema_uri()?;
    crate::store::migrate_postgres(&uri, &crate::store::PostgresTls::default()).unwrap();
    Some(crate::store::PostgresStore::open(&uri).unwrap())
}

conformance!(
    empty_store,
    round_trip_with_caveat_and_expiration,
    create_existing_fails_and_writes_nothing,
    touch_overwrites_caveat_and_expiration,
    delete_missing_is_noop,
    create_touch_delete_touch,
    updates_of_one_tuple_apply_in_order,
    precondition_must_match,
    precondition_must_not_match,
    delete_preconditions,
    snapshot_isolation,
    revisions_in_the_future,
    query_filter_shapes,
    paging_returns_each_tuple_once,
    delete_by_filter_limits,
    delete_by_filter_in_many_chunks_is_one_revision,
    expired_relationships,
    schema_versions,
    orphan_checks,
    gc_removes_history_below_horizon,
    gc_removes_expired,
    concurrent_writers_and_readers,
    import_creates_everything_at_one_revision,
    import_is_all_or_nothing,
    import_aborted_leaves_nothing,
    relationship_counters_are_kept_by_name,
    change_log_records_each_revision,
    change_log_of_delete_by_filter_and_import,
    change_log_pages_by_whole_revisions,
    change_log_errors,
    change_log_is_collected_with_history,
    change_log_of_failed_import_and_delete_is_empty,
    subscribe_head_sees_each_commit,
);

fn relationship_counters_are_kept_by_name(ds: &dyn Datastore) {
    assert!(ds.relationship_counters().unwrap().is_empty());
    let head = ds.head_revision().unwrap();
    ds.set_relationship_counter("viewers", Some(b"filter-a"))
        .unwrap();
    ds.set_relationship_counter("all/docs", Some(b"filter-b"))
        .unwrap();
    ds.set_relationship_counter("b", Some(b"")).unwrap();
    assert_eq!(
        ds.relationship_counters().unwrap(),
        [
            ("all/docs".to_string(), b"filter-b".to_vec()),
            ("b".to_string(), Vec::new()),
            ("viewers".to_string(), b"filter-a".to_vec()),
        ]
    );
    // Counters are not data: registering one makes no revision.
    assert_eq!(ds.head_revision().unwrap(), head);
    ds.set_relationship_counter("b", None).unwrap();
    ds.set_relationship_counter("nothing", None).unwrap();
    let names: Vec<String> = ds
        .relationship_counters()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["all/docs", "viewers"]);
}

fn empty_store(ds: &dyn Datastore) {
    assert_eq!(ds.head_revision().unwrap(), Revision::ZERO);
    ds.check_revision(Revision::ZERO).unwrap();
    assert_eq!(ds.unique_id().len(), 16);
    assert!(ds.unique_id().bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(texts(ds, Revision::ZERO).is_empty());
    assert_eq!(ds.read_schema(Revision::ZERO).unwrap(), None);
    assert!(format!("{ds:?}").contains(ds.unique_id()));
}

fn round_trip_with_caveat_and_expiration(ds: &dyn Datastore) {
    let a = r#"document:plan#viewer@user:ann[only_on:{"day":"tue","n":[1,2.5,null]}][expiration:2100-01-01T00:00:00.5Z]"#;
    let b = "document:plan#viewer@group:eng#member";
    let c = "document:plan#editor@user:*";
    let r1 = write(ds, &[create(a), create(b), touch(c)]);
    assert_eq!(r1, Revision(1));
    assert_eq!(ds.head_revision().unwrap(), r1);
    let got = read(
        ds,
        r1,
        &filter(Some("document"), Some("plan"), None, Some("viewer"), None),
    );
    let ann = got
        .iter()
        .find(|r| r.subject.object.object_id == "ann")
        .unwrap();
    assert_eq!(*ann, rel(a));
    assert_eq!(ann.expires_at.unwrap().nanos, 500_000_000);
    assert_eq!(texts(ds, r1), strs(&[a, b, c]));
    assert!(texts(ds, Revision::ZERO).is_empty());
}

fn create_existing_fails_and_writes_nothing(ds: &dyn Datastore) {
    let r1 = write(ds, &[create("document:a#viewer@user:ann")]);
    let err = ds
        .write_relationships(
            &[],
            &[
                create("document:b#viewer@user:bob"),
                create("document:a#viewer@user:ann[cav]"),
            ],
            NOW,
        )
        .unwrap_err();
    match err {
        StoreError::AlreadyExists(k) => assert_eq!(*k, rel("document:a#viewer@user:ann").key()),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(ds.head_revision().unwrap(), r1);
    assert_eq!(texts(ds, r1), strs(&["document:a#viewer@user:ann"]));
}

fn touch_overwrites_caveat_and_expiration(ds: &dyn Datastore) {
    let r1 = write(ds, &[create(r#"document:a#viewer@user:ann[c1:{"a":1}]"#)]);
    let r2 = write(
        ds,
        &[touch(
            r#"document:a#viewer@user:ann[c2:{"b":2}][expiration:2100-01-01T00:00:00Z]"#,
        )],
    );
    let r3 = write(ds, &[touch("document:a#viewer@user:ann")]);
    assert_eq!(
        texts(ds, r1),
        strs(&[r#"document:a#viewer@user:ann[c1:{"a":1}]"#])
    );
    assert_eq!(
        texts(ds, r2),
        strs(&[r#"document:a#viewer@user:ann[c2:{"b":2}][expiration:2100-01-01T00:00:00Z]"#])
    );
    let now = read(ds, r3, &RelationshipFilter::default());
    assert_eq!(now, vec![rel("document:a#viewer@user:ann")]);
}

fn delete_missing_is_noop(ds: &dyn Datastore) {
    let r1 = write(ds, &[create("document:a#viewer@user:ann")]);
    let r2 = write(ds, &[delete("document:a#viewer@user:bob")]);
    assert_eq!(r2, r1.next(), "a write always gets a new revision");
    assert_eq!(texts(ds, r2), strs(&["document:a#viewer@user:ann"]));
    let out = ds
        .delete_relationships(
            &filter(Some("folder"), None, None, None, None),
            &[],
            None,
            false,
            NOW,
        )
        .unwrap();
    assert_eq!((out.revision, out.deleted, out.partial), (r2, 0, false));
    assert_eq!(
        ds.head_revision().unwrap(),
        r2,
        "a delete that matched nothing writes nothing"
    );
    let r3 = write(ds, &[]);
    assert_eq!(r3, r2.next(), "an empty write still commits a revision");
}

fn create_touch_delete_touch(ds: &dyn Datastore) {
    let t = "document:a#viewer@user:ann";
    let r1 = write(ds, &[create(t)]);
    let r2 = write(ds, &[touch(t)]);
    let r3 = write(ds, &[delete(t)]);
    let r4 = write(ds, &[touch(t)]);
    let r5 = write(ds, &[delete(t)]);
    let r6 = write(ds, &[create(t)]);
    for (rev, present) in [
        (r1, true),
        (r2, true),
        (r3, false),
        (r4, true),
        (r5, false),
        (r6, true),
    ] {
        assert_eq!(texts(ds, rev).len(), usize::from(present), "at {rev}");
    }
}

fn updates_of_one_tuple_apply_in_order(ds: &dyn Datastore) {
    let t = "document:a#viewer@user:ann";
    let r1 = write(ds, &[create(t), delete(t), create(&format!("{t}[cav]"))]);
    assert_eq!(texts(ds, r1), strs(&["document:a#viewer@user:ann[cav]"]));
    let err = ds
        .write_relationships(&[], &[delete(t), touch(t), create(t)], NOW)
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(ds.head_revision().unwrap(), r1);
}

fn precondition(op: PreconditionOp, f: RelationshipFilter) -> Precondition {
    Precondition { op, filter: f }
}

fn precondition_must_match(ds: &dyn Datastore) {
    let must = precondition(
        PreconditionOp::MustMatch,
        key_filter("document:a#viewer@user:ann"),
    );
    let err = ds
        .write_relationships(
            std::slice::from_ref(&must),
            &[create("document:b#viewer@user:bob")],
            NOW,
        )
        .unwrap_err();
    match err {
        StoreError::PreconditionFailed(p) => assert_eq!(*p, must),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(ds.head_revision().unwrap(), Revision::ZERO);
    let r1 = write(ds, &[create("document:a#viewer@user:ann")]);
    let r2 = ds
        .write_relationships(
            std::slice::from_ref(&must),
            &[
                create("document:b#viewer@user:bob"),
                delete("document:a#viewer@user:ann"),
            ],
            NOW,
        )
        .unwrap();
    assert_eq!(r2, r1.next());
    assert_eq!(texts(ds, r2), strs(&["document:b#viewer@user:bob"]));
    // The precondition saw the state before the write; now it fails.
    assert!(
        ds.write_relationships(&[must], &[touch("document:c#viewer@user:bob")], NOW)
            .is_err()
    );
    assert_eq!(ds.head_revision().unwrap(), r2);
}

fn precondition_must_not_match(ds: &dyn Datastore) {
    let not = precondition(
        PreconditionOp::MustNotMatch,
        filter(Some("document"), Some("a"), None, None, None),
    );
    let r1 = ds
        .write_relationships(
            std::slice::from_ref(&not),
            &[create("document:a#viewer@user:ann")],
            NOW,
        )
        .unwrap();
    let err = ds
        .write_relationships(
            &[
                precondition(
                    PreconditionOp::MustMatch,
                    filter(Some("document"), None, None, None, None),
                ),
                not.clone(),
            ],
            &[create("document:z#viewer@user:ann")],
            NOW,
        )
        .unwrap_err();
    match err {
        StoreError::PreconditionFailed(p) => assert_eq!(*p, not),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(ds.head_revision().unwrap(), r1);
    assert_eq!(texts(ds, r1), strs(&["document:a#viewer@user:ann"]));
}

fn delete_preconditions(ds: &dyn Datastore) {
    let r1 = write(
        ds,
        &[
            create("document:a#viewer@user:ann"),
            create("document:b#viewer@user:ann"),
        ],
    );
    let all_docs = filter(Some("document"), None, None, None, None);
    let must = precondition(
        PreconditionOp::MustMatch,
        key_filter("document:z#viewer@user:ann"),
    );
    let err = ds
        .delete_relationships(&all_docs, &[must], None, false, NOW)
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed(_)));
    assert_eq!(texts(ds, r1).len(), 2);
    let ok = precondition(
        PreconditionOp::MustMatch,
        key_filter("document:a#viewer@user:ann"),
    );
    let out = ds
        .delete_relationships(&all_docs, &[ok], None, false, NOW)
        .unwrap();
    assert_eq!(
        (out.revision, out.deleted, out.partial),
        (r1.next(), 2, false)
    );
    assert!(texts(ds, out.revision).is_empty());
}

fn snapshot_isolation(ds: &dyn Datastore) {
    let (a, b, c) = (
        "document:a#viewer@user:ann",
        "document:b#viewer@user:bob",
        "folder:c#owner@user:ann",
    );
    let bc = r#"document:b#viewer@user:bob[cav:{"x":true}]"#;
    let r1 = write(ds, &[create(a), create(b)]);
    let r2 = write(ds, &[delete(a)]);
    let r3 = write(ds, &[touch(bc)]);
    let r4 = write(ds, &[create(c)]);
    let out = ds
        .delete_relationships(
            &filter(Some("document"), None, None, None, None),
            &[],
            None,
            false,
            NOW,
        )
        .unwrap();
    let r5 = out.revision;
    assert_eq!(texts(ds, r1), strs(&[a, b]));
    assert_eq!(texts(ds, r2), strs(&[b]));
    assert_eq!(texts(ds, r3), strs(&[bc]));
    assert_eq!(texts(ds, r4), strs(&[bc, c]));
    assert_eq!(texts(ds, r5), strs(&[c]));
    // Filtered reads at an old revision too (both indexes).
    let by_subject = filter(
        None,
        None,
        None,
        None,
        subj("user", Some("bob"), SubjectRelationFilter::Any),
    );
    assert_eq!(read(ds, r1, &by_subject), vec![rel(b)]);
    assert_eq!(read(ds, r3, &by_subject), vec![rel(bc)]);
    assert!(read(ds, r5, &by_subject).is_empty());
}

fn revisions_in_the_future(ds: &dyn Datastore) {
    let r1 = write(ds, &[create("document:a#viewer@user:ann")]);
    let r2 = ds.write_schema("definition user {}", &[], NOW).unwrap();
    assert_eq!(r2, r1.next());
    assert_eq!(ds.head_revision().unwrap(), r2);
    ds.check_revision(r1).unwrap();
    ds.check_revision(r2).unwrap();
    match ds.check_revision(Revision(3)).unwrap_err() {
        StoreError::RevisionInFuture { requested, head } => {
            assert_eq!((requested, head), (Revision(3), r2));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        ds.query(Revision(9), &RelationshipFilter::default(), None, 10, NOW),
        Err(StoreError::RevisionInFuture { .. })
    ));
}

/// A data set with every id / relation / subject shape the filters distinguish.
fn dataset() -> Vec<Relationship> {
    let mut v = Vec::new();
    for (rt, ids) in [
        ("document", &["a", "ab", "abc", "b", "b/x"][..]),
        ("folder", &["a", "ab"][..]),
    ] {
        for id in ids {
            for relation in ["viewer", "owner"] {
                for subject in [
                    "user:ann",
                    "user:bob",
                    "user:*",
                    "group:eng#member",
                    "group:eng",
                    "group:ops#admin",
                ] {
                    // Skip some to make the shapes uneven.
                    if (id.len() + relation.len() + subject.len()) % 3 == 0 {
                        continue;
                    }
                    v.push(rel(&format!("{rt}:{id}#{relation}@{subject}")));
                }
            }
        }
    }
    v
}

fn filter_shapes() -> Vec<RelationshipFilter> {
    use SubjectRelationFilter::{Any, Ellipsis, Relation};
    let member = || Relation("member".to_string());
    vec![
        RelationshipFilter::default(),
        filter(Some("document"), None, None, None, None),
        filter(Some("folder"), None, None, None, None),
        filter(Some("document"), Some("ab"), None, None, None),
        filter(Some("document"), None, Some("a"), None, None),
        filter(Some("document"), None, Some("ab"), Some("viewer"), None),
        filter(Some("document"), None, Some("b/"), None, None),
        filter(Some("document"), None, None, Some("owner"), None),
        filter(Some("document"), Some("a"), None, Some("viewer"), None),
        filter(
            Some("document"),
            Some("a"),
            None,
            Some("viewer"),
            subj("user", None, Any),
        ),
        filter(
            Some("document"),
            Some("a"),
            None,
            Some("viewer"),
            subj("group", None, Ellipsis),
        ),
        filter(
            Some("document"),
            Some("a"),
            None,
            Some("viewer"),
            subj("group", None, member()),
        ),
        filter(
            Some("document"),
            Some("abc"),
            None,
            Some("owner"),
            subj("group", Some("eng"), Any),
        ),
        filter(
            Some("document"),
            Some("abc"),
            None,
            Some("owner"),
            subj("group", Some("eng"), Ellipsis),
        ),
        filter(
            Some("document"),
            Some("a"),
            None,
            Some("viewer"),
            subj("group", Some("eng"), member()),
        ),
        filter(
            Some("document"),
            None,
            None,
            Some("viewer"),
            subj("user", Some("ann"), Ellipsis),
        ),
        filter(
            Some("document"),
            None,
            None,
            Some("viewer"),
            subj("user", Some("*"), Ellipsis),
        ),
        filter(
            Some("document"),
            None,
            Some("a"),
            Some("viewer"),
            subj("user", Some("bob"), Ellipsis),
        ),
        filter(
            Some("folder"),
            None,
            None,
            None,
            subj("group", Some("eng"), member()),
        ),
        filter(
            Some("document"),
            Some("a"),
            None,
            None,
            subj("user", Some("ann"), Any),
        ),
        filter(None, None, None, None, subj("user", None, Any)),
        filter(None, None, None, None, subj("user", Some("ann"), Any)),
        filter(None, None, None, None, subj("group", Some("eng"), Ellipsis)),
        filter(
            None,
            None,
            None,
            None,
            subj("group", None, Relation("admin".to_string())),
        ),
        filter(
            None,
            None,
            None,
            Some("owner"),
            subj("group", Some("ops"), Relation("admin".to_string())),
        ),
        filter(None, None, None, Some("owner"), None),
        filter(None, Some("ab"), None, None, None),
        filter(Some("nothing"), None, None, None, None),
    ]
}

fn query_filter_shapes(ds: &dyn Datastore) {
    let all = dataset();
    let updates: Vec<RelationshipUpdate> = all
        .iter()
        .map(|r| RelationshipUpdate {
            op: UpdateOp::Create,
            relationship: r.clone(),
        })
        .collect();
    let rev = ds.write_relationships(&[], &updates, NOW).unwrap();
    // Delete and re-create some, so older versions sit between the live ones.
    let churn: Vec<RelationshipUpdate> = all
        .iter()
        .step_by(3)
        .map(|r| RelationshipUpdate {
            op: UpdateOp::Touch,
            relationship: r.clone(),
        })
        .collect();
    let rev2 = ds.write_relationships(&[], &churn, NOW).unwrap();
    for f in filter_shapes() {
        let want = expected(&all, &f, NOW);
        assert_eq!(read(ds, rev, &f), want, "filter {f:?}");
        assert_eq!(read(ds, rev2, &f), want, "filter {f:?}");
    }
    assert_eq!(
        read(ds, rev, &RelationshipFilter::default()).len(),
        all.len()
    );
}

fn paging_returns_each_tuple_once(ds: &dyn Datastore) {
    let all = dataset();
    let updates: Vec<RelationshipUpdate> = all
        .iter()
        .map(|r| RelationshipUpdate {
            op: UpdateOp::Touch,
            relationship: r.clone(),
        })
        .collect();
    let rev = ds.write_relationships(&[], &updates, NOW).unwrap();
    for f in filter_shapes() {
        let want = expected(&all, &f, NOW);
        for limit in 1..=7 {
            let mut got = Vec::new();
            let mut after: Option<RelationshipKey> = None;
            loop {
                let page = ds.query(rev, &f, after.as_ref(), limit, NOW).unwrap();
                assert!(page.relationships.len() <= limit);
                got.extend(page.relationships.iter().cloned());
                match page.next {
                    Some(k) => {
                        assert_eq!(page.relationships.len(), limit);
                        assert_eq!(
                            Some(&k),
                            page.relationships.last().map(Relationship::key).as_ref()
                        );
                        after = Some(k);
                    }
                    None => break,
                }
                assert!(got.len() <= want.len() + limit, "paging does not terminate");
            }
            assert_eq!(got, want, "filter {f:?} limit {limit}");
        }
    }
    let zero = ds
        .query(rev, &RelationshipFilter::default(), None, 0, NOW)
        .unwrap();
    assert!(zero.relationships.is_empty());
}

fn delete_by_filter_limits(ds: &dyn Datastore) {
    let viewers: Vec<RelationshipUpdate> = (0..5)
        .map(|i| create(&format!("document:a#viewer@user:u{i}")))
        .chain([create("document:a#owner@user:u0")])
        .collect();
    let r1 = write(ds, &viewers);
    let f = filter(Some("document"), Some("a"), None, Some("viewer"), None);
    match ds
        .delete_relationships(&f, &[], Some(3), false, NOW)
        .unwrap_err()
    {
        StoreError::TooManyToDelete { limit } => assert_eq!(limit, 3),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(ds.head_revision().unwrap(), r1);
    assert_eq!(read(ds, r1, &f).len(), 5);

    let out = ds
        .delete_relationships(&f, &[], Some(3), true, NOW)
        .unwrap();
    assert_eq!(
        (out.revision, out.deleted, out.partial),
        (r1.next(), 3, true)
    );
    // The first three in index order went.
    let left: Vec<String> = read(ds, out.revision, &f)
        .iter()
        .map(|r| r.subject.object.object_id.clone())
        .collect();
    assert_eq!(left, ["u3", "u4"]);

    let out2 = ds
        .delete_relationships(&f, &[], Some(2), false, NOW)
        .unwrap();
    assert_eq!(
        (out2.deleted, out2.partial),
        (2, false),
        "limit equal to matches is not partial"
    );
    let out3 = ds
        .delete_relationships(&f, &[], Some(2), false, NOW)
        .unwrap();
    assert_eq!((out3.revision, out3.deleted), (out2.revision, 0));
    assert_eq!(
        texts(ds, out3.revision),
        strs(&["document:a#owner@user:u0"])
    );
    assert_eq!(read(ds, r1, &f).len(), 5, "history is untouched");
}

/// A delete by filter larger than one of the store's commit chunks (a few thousand) still
/// deletes everything at one revision: the previous revision sees all, the new one none.
fn delete_by_filter_in_many_chunks_is_one_revision(ds: &dyn Datastore) {
    const N: usize = 4_500;
    let creates: Vec<RelationshipUpdate> = (0..N)
        .map(|i| create(&format!("document:big#viewer@user:u{i:05}")))
        .collect();
    for chunk in creates.chunks(1000) {
        write(ds, chunk);
    }
    let before = write(ds, &[create("document:small#viewer@user:ann")]);
    let big = filter(Some("document"), Some("big"), None, Some("viewer"), None);
    let documents = filter(Some("document"), None, None, None, None);

    // A limit above one chunk, with partial deletion: exactly the limit goes, in index order.
    let out = ds
        .delete_relationships(&documents, &[], Some(4_100), true, NOW)
        .unwrap();
    assert_eq!(
        (out.revision, out.deleted, out.partial),
        (before.next(), 4_100, true)
    );
    assert_eq!(ds.head_revision().unwrap(), out.revision);
    assert_eq!(read(ds, before, &documents).len(), N + 1);
    let left = read(ds, out.revision, &big);
    assert_eq!(left.len(), N - 4_100);
    assert_eq!(left[0].subject.object.object_id, "u04100");

    // Without a limit: everything matching, at one revision.
    let all = ds
        .delete_relationships(&big, &[], None, false, NOW)
        .unwrap();
    assert_eq!(
        (all.revision, all.deleted, all.partial),
        (
            out.revision.next(),
            u64::try_from(N - 4_100).unwrap(),
            false
        )
    );
    assert_eq!(
        texts(ds, all.revision),
        strs(&["document:small#viewer@user:ann"])
    );
    assert_eq!(read(ds, before, &big).len(), N, "history is untouched");

    // A limit the matches stay within, larger than a chunk, refusing partial deletion.
    let again: Vec<RelationshipUpdate> = (0..N)
        .map(|i| create(&format!("document:big#viewer@user:v{i:05}")))
        .collect();
    for chunk in again.chunks(1000) {
        write(ds, chunk);
    }
    let head = ds.head_revision().unwrap();
    match ds
        .delete_relationships(&big, &[], Some(4_499), false, NOW)
        .unwrap_err()
    {
        StoreError::TooManyToDelete { limit } => assert_eq!(limit, 4_499),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(ds.head_revision().unwrap(), head);
    assert_eq!(read(ds, head, &big).len(), N);
    let exact = ds
        .delete_relationships(&big, &[], Some(4_500), false, NOW)
        .unwrap();
    assert_eq!(
        (exact.revision, exact.deleted, exact.partial),
        (head.next(), u64::try_from(N).unwrap(), false)
    );
    assert!(read(ds, exact.revision, &big).is_empty());
    assert_eq!(read(ds, head, &big).len(), N);
}

fn expired_relationships(ds: &dyn Datastore) {
    let t = "document:a#viewer@user:ann";
    let expiring = format!("{t}[expiration:2023-11-14T22:13:30Z]"); // NOW + 10s
    assert_eq!(rel(&expiring).expires_at, Some(at(10)));
    let r1 = write(
        ds,
        &[create(&expiring), create("document:b#viewer@user:ann")],
    );
    let all = RelationshipFilter::default();
    assert_eq!(read_at(ds, r1, &all, at(9)).len(), 2);
    assert_eq!(
        read_at(ds, r1, &all, at(10)).len(),
        1,
        "expired at its expiration instant"
    );
    // While live, CREATE fails; once expired it is not live.
    assert!(matches!(
        ds.write_relationships(&[], &[create(t)], at(9)),
        Err(StoreError::AlreadyExists(_))
    ));
    let must = precondition(PreconditionOp::MustMatch, key_filter(t));
    assert!(matches!(
        ds.write_relationships(std::slice::from_ref(&must), &[], at(11)),
        Err(StoreError::PreconditionFailed(_))
    ));
    let out = ds
        .delete_relationships(&key_filter(t), &[], None, false, at(11))
        .unwrap();
    assert_eq!(
        out.deleted, 0,
        "expired relationships are not deleted by filter"
    );
    let r2 = ds
        .write_relationships(&[], &[create(&format!("{t}[cav]"))], at(11))
        .unwrap();
    assert_eq!(
        read_at(ds, r2, &key_filter(t), at(11)),
        vec![rel(&format!("{t}[cav]"))]
    );
    assert_eq!(read_at(ds, r1, &key_filter(t), at(5)), vec![rel(&expiring)]);
    // A relationship written already expired is invisible but allowed.
    let r3 = write(
        ds,
        &[touch(
            "folder:x#viewer@user:ann[expiration:2000-01-01T00:00:00Z]",
        )],
    );
    assert!(read(ds, r3, &filter(Some("folder"), None, None, None, None)).is_empty());
}

fn schema_versions(ds: &dyn Datastore) {
    assert_eq!(ds.read_schema(Revision::ZERO).unwrap(), None);
    let r1 = ds.write_schema("definition user {}", &[], NOW).unwrap();
    let r2 = write(ds, &[create("document:a#viewer@user:ann")]);
    let r3 = ds
        .write_schema("definition user {}\ndefinition document {}", &[], NOW)
        .unwrap();
    assert_eq!(ds.read_schema(Revision::ZERO).unwrap(), None);
    let s1 = ds.read_schema(r1).unwrap().unwrap();
    assert_eq!((s1.text.as_str(), s1.revision), ("definition user {}", r1));
    assert_eq!(ds.read_schema(r2).unwrap(), Some(s1));
    let s3 = ds.read_schema(r3).unwrap().unwrap();
    assert_eq!(s3.revision, r3);
    assert!(s3.text.contains("document"));
}

fn orphan_checks(ds: &dyn Datastore) {
    let caveated = r#"document:a#viewer@user:ann[cav:{"k":1}]"#;
    let r1 = write(ds, &[create(caveated), create("folder:f#owner@user:bob")]);
    let viewers = filter(Some("document"), None, None, Some("viewer"), None);
    let check = |caveat, f: &RelationshipFilter| {
        OrphanCheck {
        filter: f.clone(),
        caveat,
        description: "cannot delete relation `viewer` in object definition `document`, as at least one relationship exists under it".to_string(),
    }
    };
    let r2 = ds
        .write_schema(
            "s2",
            &[
                check(CaveatMatch::Uncaveated, &viewers),
                check(CaveatMatch::Named("other".into()), &viewers),
                check(
                    CaveatMatch::Any,
                    &filter(Some("folder"), None, None, Some("viewer"), None),
                ),
            ],
            NOW,
        )
        .unwrap();
    assert_eq!(r2, r1.next());
    let err = ds
        .write_schema(
            "s3",
            &[
                check(CaveatMatch::Uncaveated, &viewers),
                check(CaveatMatch::Named("cav".into()), &viewers),
            ],
            NOW,
        )
        .unwrap_err();
    match err {
        StoreError::SchemaOrphans {
            description,
            relationship,
        } => {
            assert!(description.starts_with("cannot delete relation `viewer`"));
            assert_eq!(*relationship, rel(caveated));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(ds.head_revision().unwrap(), r2);
    assert_eq!(ds.read_schema(r2).unwrap().unwrap().text, "s2");
    // Deleted (or expired) relationships orphan nothing.
    let r3 = write(ds, &[delete(caveated)]);
    let r4 = ds
        .write_schema("s4", &[check(CaveatMatch::Any, &viewers)], NOW)
        .unwrap();
    assert_eq!(r4, r3.next());
}

fn gc_removes_history_below_horizon(ds: &dyn Datastore) {
    let (a, b, c) = (
        "document:a#viewer@user:ann",
        "document:b#viewer@user:bob",
        "document:c#viewer@user:cid",
    );
    let bc = "document:b#viewer@user:bob[cav]";
    let r1 = ds
        .write_relationships(&[], &[create(a), create(b)], at(0))
        .unwrap();
    ds.write_relationships(&[], &[delete(a)], at(10)).unwrap();
    let r3 = ds.write_relationships(&[], &[touch(bc)], at(20)).unwrap();
    let r4 = ds.write_schema("s1", &[], at(30)).unwrap();
    let r5 = ds.write_schema("s2", &[], at(40)).unwrap();
    let r6 = ds.write_relationships(&[], &[create(c)], at(50)).unwrap();
    assert_eq!(r6, Revision(6));
    assert_eq!(texts(ds, r1), strs(&[a, b]));

    // Nothing is old enough yet.
    let none = ds.gc(at(50), Duration::from_secs(3600)).unwrap();
    assert_eq!(
        (none.relationships, none.schemas, none.horizon),
        (0, 0, Revision::ZERO)
    );

    // Cutoff at(35): the horizon is r4 (committed at(30)).
    let stats = ds.gc(at(100), Duration::from_secs(65)).unwrap();
    assert_eq!(stats.horizon, r4);
    assert_eq!(
        stats.relationships, 2,
        "a's only version and b's first version"
    );
    assert_eq!(stats.schemas, 0, "s1 is the schema at the horizon");
    match ds.check_revision(r3).unwrap_err() {
        StoreError::RevisionTooOld { requested, oldest } => {
            assert_eq!((requested, oldest), (r3, r4))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        ds.query(r1, &RelationshipFilter::default(), None, 10, NOW),
        Err(StoreError::RevisionTooOld { .. })
    ));
    ds.check_revision(r4).unwrap();
    assert_eq!(texts(ds, r4), strs(&[bc]));
    assert_eq!(texts(ds, r6), strs(&[bc, c]));
    assert_eq!(ds.read_schema(r4).unwrap().unwrap().text, "s1");
    let by_subject = filter(
        None,
        None,
        None,
        None,
        subj("user", None, SubjectRelationFilter::Any),
    );
    assert_eq!(read(ds, r6, &by_subject).len(), 2);

    // Idempotent.
    let again = ds.gc(at(100), Duration::from_secs(65)).unwrap();
    assert_eq!(
        (again.relationships, again.schemas, again.horizon),
        (0, 0, r4)
    );

    // Window 0: everything up to the head; s1 is superseded by s2 (r5 <= r6).
    let all = ds.gc(at(100), Duration::ZERO).unwrap();
    assert_eq!((all.relationships, all.schemas, all.horizon), (0, 1, r6));
    assert_eq!(ds.read_schema(r6).unwrap().unwrap().text, "s2");
    assert!(matches!(
        ds.read_schema(r5),
        Err(StoreError::RevisionTooOld { .. })
    ));
    assert_eq!(texts(ds, r6), strs(&[bc, c]));
    ds.check_revision(r6).unwrap();
    assert!(ds.check_revision(r5).is_err());
    // The store keeps working after GC.
    let r7 = write(ds, &[delete(bc), create(a)]);
    assert_eq!(texts(ds, r7), strs(&[a, c]));
    assert_eq!(texts(ds, r6), strs(&[bc, c]));
}

fn gc_removes_expired(ds: &dyn Datastore) {
    let gone = "document:a#viewer@user:ann[expiration:2023-11-14T22:13:25Z]"; // NOW + 5s
    let stays = "document:b#viewer@user:ann[expiration:2100-01-01T00:00:00Z]";
    let r1 = write(ds, &[create(gone), create(stays)]);
    let stats = ds.gc(at(6), Duration::from_secs(3600)).unwrap();
    assert_eq!(
        (stats.relationships, stats.horizon),
        (0, Revision::ZERO),
        "not expired long enough"
    );
    let stats = ds.gc(at(3600 + 5), Duration::from_secs(3600)).unwrap();
    assert_eq!((stats.relationships, stats.horizon), (1, r1));
    assert_eq!(
        read_at(ds, r1, &RelationshipFilter::default(), at(0)),
        vec![rel(stays)]
    );
    // The tuple can be created again.
    let r2 = ds.write_relationships(&[], &[create(gone)], at(0)).unwrap();
    assert_eq!(
        read_at(ds, r2, &RelationshipFilter::default(), at(0)).len(),
        2
    );
}

fn concurrent_writers_and_readers(ds: &dyn Datastore) {
    let seed: Vec<RelationshipUpdate> = (0..50)
        .map(|i| create(&format!("document:d{}#viewer@user:u{i}", i % 7)))
        .collect();
    let fixed = write(ds, &seed);
    let filters = [
        RelationshipFilter::default(),
        filter(Some("document"), Some("d3"), None, Some("viewer"), None),
        filter(
            None,
            None,
            None,
            None,
            subj("user", Some("u10"), SubjectRelationFilter::Any),
        ),
    ];
    let baseline: Vec<Vec<Relationship>> = filters.iter().map(|f| read(ds, fixed, f)).collect();
    std::thread::scope(|s| {
        for w in 0..4 {
            s.spawn(move || {
                for i in 0..25 {
                    let updates = [
                        touch(&format!("document:d{}#viewer@user:w{w}x{i}[cav]", i % 7)),
                        delete(&format!(
                            "document:d{}#viewer@user:u{}",
                            ((w * 25 + i) % 50) % 7,
                            (w * 25 + i) % 50
                        )),
                    ];
                    ds.write_relationships(&[], &updates, NOW).unwrap();
                }
            });
        }
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    for (f, want) in filters.iter().zip(&baseline) {
                        assert_eq!(&read(ds, fixed, f), want);
                    }
                    let head = ds.head_revision().unwrap();
                    ds.check_revision(head).unwrap();
                }
            });
        }
    });
    let head = ds.head_revision().unwrap();
    assert_eq!(head, Revision(fixed.0 + 100));
    assert_eq!(read(ds, head, &RelationshipFilter::default()).len(), 100);
    for (f, want) in filters.iter().zip(&baseline) {
        assert_eq!(&read(ds, fixed, f), want);
    }
}

fn import_creates_everything_at_one_revision(ds: &dyn Datastore) {
    let before = write(
        ds,
        &[create(
            "document:old#viewer@user:ann[expiration:2023-11-14T22:13:21Z]",
        )],
    );
    let id = ds.begin_import().unwrap();
    let all: Vec<Relationship> = (0..4_500)
        .map(|i| rel(&format!("document:d{i}#viewer@user:u{}", i % 7)))
        .collect();
    for chunk in all.chunks(1000) {
        ds.stage_import(id, chunk).unwrap();
    }
    // Staged is not visible, and other writes go on meanwhile.
    let during = write(ds, &[create("document:other#viewer@user:bob")]);
    assert_eq!(
        read_at(ds, during, &key_filter("document:d1#viewer@user:u1"), NOW).len(),
        0
    );
    // An expired relationship may be created again.
    ds.stage_import(id, &[rel("document:old#viewer@user:ann")])
        .unwrap();
    let (rev, n) = ds.commit_import(id, at(10)).unwrap();
    ds.abort_import(id).unwrap();
    assert_eq!(n, 4_501);
    assert_eq!(rev, Revision(during.0 + 1));
    let everything = RelationshipFilter {
        resource_type: Some("document".into()),
        ..RelationshipFilter::default()
    };
    let mut seen = Vec::new();
    ds.query_all(rev, &everything, at(10), &mut seen).unwrap();
    assert_eq!(seen.len(), 4_502);
    seen.clear();
    ds.query_all(during, &everything, at(10), &mut seen)
        .unwrap();
    assert_eq!(
        seen.len(),
        1,
        "the expired one is gone, only `other` is live"
    );
    assert!(before < during);
    // The next write follows the import's revision.
    assert_eq!(
        write(ds, &[create("document:z#viewer@user:zed")]),
        Revision(rev.0 + 1)
    );
}

fn import_is_all_or_nothing(ds: &dyn Datastore) {
    write(ds, &[create("document:d3#viewer@user:u3")]);
    let head = ds.head_revision().unwrap();
    let id = ds.begin_import().unwrap();
    let all: Vec<Relationship> = (0..5_000)
        .map(|i| rel(&format!("document:d{i}#viewer@user:u{i}")))
        .collect();
    // A tuple staged twice is refused when it is staged.
    ds.stage_import(id, &all[..10]).unwrap();
    assert!(matches!(
        ds.stage_import(id, &all[5..6]),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        ds.stage_import(id, &[all[20].clone(), all[20].clone()]),
        Err(StoreError::AlreadyExists(_))
    ));
    ds.stage_import(id, &all[10..]).unwrap();
    // document:d3 is live: nothing is created.
    assert!(matches!(
        ds.commit_import(id, NOW),
        Err(StoreError::AlreadyExists(k)) if k.resource.object_id == "d3"
    ));
    ds.abort_import(id).unwrap();
    assert_eq!(ds.head_revision().unwrap(), head);
    let next = write(ds, &[create("document:x#viewer@user:x")]);
    assert_eq!(next, Revision(head.0 + 1));
    assert_eq!(
        read_at(ds, next, &key_filter("document:d4#viewer@user:u4"), NOW).len(),
        0
    );
    assert_eq!(
        read_at(ds, next, &key_filter("document:d3#viewer@user:u3"), NOW).len(),
        1
    );
}

fn import_aborted_leaves_nothing(ds: &dyn Datastore) {
    let id = ds.begin_import().unwrap();
    ds.stage_import(id, &[rel("document:a#viewer@user:ann")])
        .unwrap();
    ds.abort_import(id).unwrap();
    let (rev, n) = ds.commit_import(id, NOW).unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        read_at(ds, rev, &key_filter("document:a#viewer@user:ann"), NOW).len(),
        0
    );
}

/// Every revision after `after`, read in one go.
fn changes(ds: &dyn Datastore, after: Revision) -> Vec<RevisionChanges> {
    ds.read_changes(after, usize::MAX, usize::MAX).unwrap()
}

/// A revision's changes as sorted `TOUCH text` / `DELETE text` lines.
fn change_lines(r: &RevisionChanges) -> Vec<String> {
    let mut v: Vec<String> = r
        .changes
        .iter()
        .map(|c| {
            let op = match c.op {
                ChangeOp::Touch => "TOUCH",
                ChangeOp::Delete => "DELETE",
            };
            format!("{op} {}", c.relationship)
        })
        .collect();
    v.sort();
    v
}

fn lines(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v
        .iter()
        .map(|l| {
            let (op, r) = l.split_once(' ').unwrap();
            format!("{op} {}", rel(r))
        })
        .collect();
    v.sort();
    v
}

fn change_log_records_each_revision(ds: &dyn Datastore) {
    let base = ds.head_revision().unwrap();
    let ann = "document:a#viewer@user:ann";
    let meta = TransactionMetadata(
        serde_json::json!({"request": "r-1", "nested": {"n": [1, 2.5, true, null]}})
            .as_object()
            .unwrap()
            .clone(),
    );
    let r1 = ds
        .write_relationships_with_metadata(
            &[],
            &[
                create(ann),
                touch(r#"document:b#viewer@user:bob[c1:{"x":1}][expiration:2100-01-01T00:00:00Z]"#),
            ],
            NOW,
            Some(&meta),
        )
        .unwrap();
    let r2 = write(ds, &[touch(ann)]); // changes nothing
    let r3 = write(ds, &[touch(&format!("{ann}[c2]"))]); // changes the caveat
    let r4 = write(
        ds,
        &[
            delete(r#"document:b#viewer@user:bob"#),
            delete("document:z#viewer@user:nobody"),
        ],
    );
    let r5 = ds.write_schema("definition user {}", &[], NOW).unwrap();
    let r6 = write(
        ds,
        &[
            create("document:c#viewer@user:cid"),
            delete("document:c#viewer@user:cid"),
        ],
    );
    // An expired relationship is already gone: deleting it is no change, touching it is one.
    let r7 = write(
        ds,
        &[create(
            "document:e#viewer@user:old[expiration:2000-01-01T00:00:00Z]",
        )],
    );
    let r8 = write(ds, &[delete("document:e#viewer@user:old")]);
    let log = changes(ds, base);
    let revs: Vec<Revision> = log.iter().map(|r| r.revision).collect();
    assert_eq!(
        revs,
        vec![r1, r2, r3, r4, r5, r6, r7, r8],
        "one entry per revision, in order"
    );
    assert_eq!(
        change_lines(&log[0]),
        lines(&[
            "TOUCH document:a#viewer@user:ann",
            r#"TOUCH document:b#viewer@user:bob[c1:{"x":1}][expiration:2100-01-01T00:00:00Z]"#,
        ])
    );
    assert_eq!(
        log[0].metadata.as_ref(),
        Some(&meta),
        "metadata round-trips"
    );
    assert!(!log[0].schema_changed);
    assert!(
        log[1].changes.is_empty(),
        "a TOUCH that changes nothing is no change"
    );
    assert_eq!(log[1].metadata, None);
    assert_eq!(
        change_lines(&log[2]),
        lines(&["TOUCH document:a#viewer@user:ann[c2]"])
    );
    assert_eq!(
        change_lines(&log[3]),
        lines(&[
            r#"DELETE document:b#viewer@user:bob[c1:{"x":1}][expiration:2100-01-01T00:00:00Z]"#
        ]),
        "a DELETE carries the deleted relationship; deleting a missing one is no change"
    );
    assert!(log[4].schema_changed && log[4].changes.is_empty());
    assert!(
        log[5].changes.is_empty(),
        "created and deleted in one write: no change"
    );
    assert_eq!(
        change_lines(&log[6]),
        lines(&["TOUCH document:e#viewer@user:old[expiration:2000-01-01T00:00:00Z]"])
    );
    assert!(log[7].changes.is_empty());
    // Read after any revision: the rest, exactly.
    for (i, r) in revs.iter().enumerate() {
        let rest: Vec<Revision> = changes(ds, *r).iter().map(|c| c.revision).collect();
        assert_eq!(rest, revs[i + 1..].to_vec());
    }
    // Metadata on a delete by filter.
    let r9 = ds
        .delete_relationships_with_metadata(
            &filter(Some("document"), Some("a"), None, None, None),
            &[],
            None,
            false,
            NOW,
            Some(&meta),
        )
        .unwrap()
        .revision;
    let log = changes(ds, r8);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].revision, r9);
    assert_eq!(log[0].metadata.as_ref(), Some(&meta));
    assert_eq!(
        change_lines(&log[0]),
        lines(&["DELETE document:a#viewer@user:ann[c2]"])
    );
}

fn change_log_of_delete_by_filter_and_import(ds: &dyn Datastore) {
    let n = 4_500;
    let id = ds.begin_import().unwrap();
    let all: Vec<Relationship> = (0..n)
        .map(|i| rel(&format!("document:d{i}#viewer@user:u{}", i % 7)))
        .collect();
    for chunk in all.chunks(1000) {
        ds.stage_import(id, chunk).unwrap();
    }
    let before = ds.head_revision().unwrap();
    let (imported, _) = ds.commit_import(id, NOW).unwrap();
    ds.abort_import(id).unwrap();
    let log = changes(ds, before);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].revision, imported);
    assert_eq!(log[0].changes.len(), n);
    assert!(log[0].changes.iter().all(|c| c.op == ChangeOp::Touch));
    let mut got: Vec<String> = log[0]
        .changes
        .iter()
        .map(|c| c.relationship.to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = all.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(got, want, "each imported relationship once");

    let out = ds
        .delete_relationships(
            &filter(Some("document"), None, None, None, None),
            &[],
            None,
            false,
            NOW,
        )
        .unwrap();
    let log = changes(ds, imported);
    assert_eq!(log.len(), 1, "a delete in many chunks is one revision");
    assert_eq!(log[0].revision, out.revision);
    assert_eq!(log[0].changes.len(), n);
    let mut got: Vec<String> = log[0]
        .changes
        .iter()
        .map(|c| c.relationship.to_string())
        .collect();
    got.sort();
    assert_eq!(got, want, "each deleted relationship once");
    assert!(log[0].changes.iter().all(|c| c.op == ChangeOp::Delete));
}

fn change_log_pages_by_whole_revisions(ds: &dyn Datastore) {
    let base = ds.head_revision().unwrap();
    let mut sizes = Vec::new();
    for i in 0..20usize {
        let k = i % 4; // 0..3 changes per revision
        let ups: Vec<RelationshipUpdate> = (0..k)
            .map(|j| create(&format!("document:p{i}#viewer@user:u{j}")))
            .collect();
        write(ds, &ups);
        sizes.push(k);
    }
    let whole = changes(ds, base);
    for max in [1usize, 2, 3, 5, 100] {
        let mut after = base;
        let mut seen = Vec::new();
        loop {
            let page = ds.read_changes(after, max, usize::MAX).unwrap();
            let Some(last) = page.last() else { break };
            after = last.revision;
            let counted: usize = page.iter().map(|r| r.changes.len().max(1)).sum();
            let without_last = counted - page.last().unwrap().changes.len().max(1);
            assert!(without_last < max, "stops at the revision reaching {max}");
            seen.extend(page);
        }
        assert_eq!(seen, whole, "paging by {max} neither skips nor repeats");
    }
}

fn change_log_errors(ds: &dyn Datastore) {
    let r1 = write(ds, &[create("document:a#viewer@user:ann")]);
    assert!(matches!(
        ds.read_changes(r1.next(), 10, usize::MAX),
        Err(StoreError::RevisionInFuture { .. })
    ));
    assert!(ds.read_changes(r1, 10, usize::MAX).unwrap().is_empty());
    let big: Vec<RelationshipUpdate> = (0..100)
        .map(|i| create(&format!("document:big{i}#viewer@user:u{i}")))
        .collect();
    let r2 = write(ds, &big);
    assert!(matches!(
        ds.read_changes(r1, 10, 1_000),
        Err(StoreError::ChangesTooLarge { revision, limit: 1_000 }) if revision == r2
    ));
    assert_eq!(ds.read_changes(r1, 10, 100_000).unwrap().len(), 1);
}

fn change_log_is_collected_with_history(ds: &dyn Datastore) {
    let r1 = write(ds, &[create("document:a#viewer@user:ann")]);
    let r2 = write(ds, &[create("document:b#viewer@user:bob")]);
    // r3 is committed after the cutoff.
    let r3 = ds
        .write_relationships(&[], &[create("document:c#viewer@user:cid")], at(100))
        .unwrap();
    let stats = ds.gc(at(50), Duration::ZERO).unwrap();
    assert_eq!(stats.horizon, r2);
    assert!(matches!(
        ds.read_changes(r1, 10, usize::MAX),
        Err(StoreError::ChangesUnavailable { requested, oldest }) if requested == r1 && oldest == r2
    ));
    let log = changes(ds, r2);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].revision, r3);
}

fn change_log_of_failed_import_and_delete_is_empty(ds: &dyn Datastore) {
    write(ds, &[create("document:d3#viewer@user:u3")]);
    let head = ds.head_revision().unwrap();
    let id = ds.begin_import().unwrap();
    let all: Vec<Relationship> = (0..5_000)
        .map(|i| rel(&format!("document:d{i}#viewer@user:u{i}")))
        .collect();
    ds.stage_import(id, &all).unwrap();
    assert!(ds.commit_import(id, NOW).is_err());
    ds.abort_import(id).unwrap();
    let next = write(ds, &[create("document:x#viewer@user:x")]);
    let log = changes(ds, head);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].revision, next);
    assert_eq!(
        change_lines(&log[0]),
        lines(&["TOUCH document:x#viewer@user:x"])
    );
}

fn subscribe_head_sees_each_commit(ds: &dyn Datastore) {
    let mut rx = ds.subscribe_head().unwrap();
    assert_eq!(*rx.borrow_and_update(), ds.head_revision().unwrap());
    let r1 = write(ds, &[create("document:a#viewer@user:ann")]);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), r1);
    assert!(!rx.has_changed().unwrap());
    let r2 = ds.write_schema("definition user {}", &[], NOW).unwrap();
    assert_eq!(*rx.borrow_and_update(), r2);
}

#[test]
fn rocks_change_log_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = {
        let ds = RocksStore::open(dir.path()).unwrap();
        write(&ds, &[create("document:a#viewer@user:ann")])
    };
    let ds = RocksStore::open(dir.path()).unwrap();
    let log = changes(&ds, Revision::ZERO);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].revision, r1);
    assert_eq!(
        change_lines(&log[0]),
        lines(&["TOUCH document:a#viewer@user:ann"])
    );
}

#[test]
fn rocks_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (id, head) = {
        let ds = RocksStore::open(dir.path()).unwrap();
        assert_eq!(ds.path(), dir.path());
        ds.write_relationships(
            &[],
            &[create(r#"document:a#viewer@user:ann[cav:{"x":1}]"#)],
            at(0),
        )
        .unwrap();
        ds.write_schema("s1", &[], at(10)).unwrap();
        ds.write_relationships(
            &[],
            &[
                delete("document:a#viewer@user:ann"),
                create("document:b#viewer@user:bob"),
            ],
            at(20),
        )
        .unwrap();
        let stats = ds.gc(at(100), Duration::from_secs(85)).unwrap();
        assert_eq!(stats.horizon, Revision(2));
        (ds.unique_id().to_string(), ds.head_revision().unwrap())
    };
    let ds = RocksStore::open(dir.path()).unwrap();
    assert_eq!(ds.unique_id(), id);
    assert_eq!(ds.head_revision().unwrap(), head);
    assert_eq!(head, Revision(3));
    assert_eq!(
        texts(&ds, Revision(3)),
        strs(&["document:b#viewer@user:bob"])
    );
    assert_eq!(
        texts(&ds, Revision(2)),
        strs(&[r#"document:a#viewer@user:ann[cav:{"x":1}]"#])
    );
    assert!(matches!(
        ds.check_revision(Revision(1)),
        Err(StoreError::RevisionTooOld { .. })
    ));
    assert_eq!(ds.read_schema(head).unwrap().unwrap().text, "s1");
    let r4 = write(&ds, &[create("document:c#viewer@user:cid")]);
    assert_eq!(r4, Revision(4));
}

#[test]
fn rocks_open_twice_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = RocksStore::open(dir.path()).unwrap();
    match RocksStore::open(dir.path()).unwrap_err() {
        StoreError::Locked { path } => assert_eq!(path, dir.path().display().to_string()),
        other => panic!("unexpected {other:?}"),
    }
    drop(first);
    RocksStore::open(dir.path()).unwrap();
}

#[test]
fn rocks_refuses_foreign_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = rocksdb::DB::open_default(dir.path()).unwrap();
        db.put(b"\x03junk", b"x").unwrap();
    }
    assert!(matches!(
        RocksStore::open(dir.path()),
        Err(StoreError::Corrupt(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    {
        let db = rocksdb::DB::open_default(dir.path()).unwrap();
        db.put(
            encoding::meta_key(encoding::META_FORMAT),
            99u32.to_be_bytes(),
        )
        .unwrap();
    }
    assert!(matches!(
        RocksStore::open(dir.path()),
        Err(StoreError::Corrupt(_))
    ));
}

// ---- model-based property test ----

const RESOURCES: [&str; 5] = [
    "document:a",
    "document:ab",
    "document:b",
    "folder:a",
    "folder:ab",
];
const RELATIONS: [&str; 2] = ["viewer", "owner"];
const SUBJECTS: [&str; 5] = [
    "user:ann",
    "user:bob",
    "user:*",
    "group:eng#member",
    "group:eng",
];

#[derive(Debug, Clone)]
struct ModelUpdate {
    op: u8,
    resource: usize,
    relation: usize,
    subject: usize,
    caveat: Option<u8>,
    /// 0: none, 1: already expired at NOW, 2: in the future
    expiry: u8,
}

impl ModelUpdate {
    fn to_update(&self) -> RelationshipUpdate {
        let mut r = rel(&format!(
            "{}#{}@{}",
            RESOURCES[self.resource], RELATIONS[self.relation], SUBJECTS[self.subject]
        ));
        if let Some(c) = self.caveat {
            r.caveat = Some(crate::model::Caveat {
                name: format!("cav{c}"),
                context: serde_json::from_str(&format!(r#"{{"v":{c}}}"#)).unwrap(),
            });
        }
        r.expires_at = match self.expiry {
            1 => Some(at(-10)),
            2 => Some(at(1000)),
            _ => None,
        };
        RelationshipUpdate {
            op: match self.op {
                0 => UpdateOp::Create,
                1 => UpdateOp::Touch,
                _ => UpdateOp::Delete,
            },
            relationship: r,
        }
    }
}

#[derive(Debug, Clone)]
enum ModelOp {
    Write {
        precondition: Option<(bool, usize)>,
        updates: Vec<ModelUpdate>,
    },
    DeleteByFilter {
        filter: usize,
        limit: Option<u64>,
        partial: bool,
    },
}

fn model_update() -> impl Strategy<Value = ModelUpdate> {
    (
        0u8..3,
        0..RESOURCES.len(),
        0..RELATIONS.len(),
        0..SUBJECTS.len(),
        proptest::option::of(0u8..3),
        0u8..3,
    )
        .prop_map(
            |(op, resource, relation, subject, caveat, expiry)| ModelUpdate {
                op,
                resource,
                relation,
                subject,
                caveat,
                expiry,
            },
        )
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let n = filter_shapes().len();
    prop_oneof![
        3 => (proptest::option::of((any::<bool>(), 0..n)), proptest::collection::vec(model_update(), 0..5))
            .prop_map(|(precondition, updates)| ModelOp::Write { precondition, updates }),
        1 => (0..n, proptest::option::of(1u64..4), any::<bool>())
            .prop_map(|(filter, limit, partial)| ModelOp::DeleteByFilter { filter, limit, partial }),
    ]
}

type State = BTreeMap<RelationshipKey, Relationship>;

fn live(state: &State) -> Vec<Relationship> {
    state
        .values()
        .filter(|r| !r.is_expired_at(NOW))
        .cloned()
        .collect()
}

/// Applies `ops` to `ds` and to the model, checking after each op and at the end that every
/// revision reads as the model says.
fn check_against_model(ds: &dyn Datastore, ops: &[ModelOp]) -> Result<(), TestCaseError> {
    let filters = filter_shapes();
    let mut history: Vec<State> = vec![State::new()];
    for op in ops {
        let state = history.last().cloned().unwrap_or_default();
        let head = ds.head_revision().unwrap();
        prop_assert_eq!(head.0 as usize, history.len() - 1);
        match op {
            ModelOp::Write {
                precondition,
                updates,
            } => {
                let pre: Vec<Precondition> = precondition
                    .iter()
                    .map(|(must, f)| Precondition {
                        op: if *must {
                            PreconditionOp::MustMatch
                        } else {
                            PreconditionOp::MustNotMatch
                        },
                        filter: filters[*f].clone(),
                    })
                    .collect();
                let updates: Vec<RelationshipUpdate> =
                    updates.iter().map(ModelUpdate::to_update).collect();
                let mut next = state.clone();
                let mut ok = pre.iter().all(|p| {
                    let found = !expected(&live(&state), &p.filter, NOW).is_empty();
                    found == (p.op == PreconditionOp::MustMatch)
                });
                for u in &updates {
                    if !ok {
                        break;
                    }
                    let key = u.relationship.key();
                    let is_live = next.get(&key).is_some_and(|r| !r.is_expired_at(NOW));
                    match u.op {
                        UpdateOp::Create if is_live => ok = false,
                        UpdateOp::Create | UpdateOp::Touch => {
                            next.insert(key, u.relationship.clone());
                        }
                        UpdateOp::Delete => {
                            next.remove(&key);
                        }
                    }
                }
                let got = ds.write_relationships(&pre, &updates, NOW);
                prop_assert_eq!(got.is_ok(), ok, "write {:?}: {:?}", updates, got);
                if ok {
                    history.push(next);
                }
            }
            ModelOp::DeleteByFilter {
                filter,
                limit,
                partial,
            } => {
                let f = &filters[*filter];
                let matches = expected(&live(&state), f, NOW);
                let got = ds.delete_relationships(f, &[], *limit, *partial, NOW);
                let too_many = limit.is_some_and(|l| matches.len() as u64 > l);
                if too_many && !partial {
                    prop_assert!(
                        matches!(got, Err(StoreError::TooManyToDelete { .. })),
                        "{:?}",
                        got
                    );
                    continue;
                }
                let out = got.unwrap();
                let n = limit.map_or(matches.len(), |l| matches.len().min(l as usize));
                prop_assert_eq!(out.deleted as usize, n);
                prop_assert_eq!(out.partial, too_many);
                if n > 0 {
                    let mut next = state.clone();
                    for r in matches.iter().take(n) {
                        next.remove(&r.key());
                    }
                    history.push(next);
                }
                prop_assert_eq!(out.revision.0 as usize, history.len() - 1);
            }
        }
    }
    prop_assert_eq!(ds.head_revision().unwrap().0 as usize, history.len() - 1);
    for (rev, state) in history.iter().enumerate() {
        let all = live(state);
        for f in &filters {
            let got = read(ds, Revision(rev as u64), f);
            prop_assert_eq!(got, expected(&all, f, NOW), "rev {} filter {:?}", rev, f);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn memory_store_matches_model(ops in proptest::collection::vec(model_op(), 1..25)) {
        check_against_model(&crate::store::MemoryStore::new(), &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn rocks_store_matches_model(ops in proptest::collection::vec(model_op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        check_against_model(&RocksStore::open(dir.path()).unwrap(), &ops)?;
    }
}
