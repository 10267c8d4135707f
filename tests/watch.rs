//! WatchService.Watch against a real server over gRPC: order, resumption, errors, filters,
//! metadata, schema messages, checkpoints, slow watchers and shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pemba::api::Limits;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::model::Revision;
use pemba::store::{Datastore, MemoryStore, RocksStore};
use tonic::Code;

use pb::relationship_update::Operation;
use pb::watch_service_client::WatchServiceClient;

const SCHEMA: &str = "
definition user {}

definition folder {
    relation viewer: user
}

definition document {
    relation viewer: user
    relation editor: user
}
";

const PATIENCE: Duration = Duration::from_secs(10);

async fn watch(
    s: &TestServer,
    req: pb::WatchRequest,
) -> Result<tonic::Streaming<pb::WatchResponse>, tonic::Status> {
    WatchServiceClient::new(s.channel.clone())
        .max_decoding_message_size(64 * 1024 * 1024)
        .watch(req)
        .await
        .map(tonic::Response::into_inner)
}

fn from(token: &pb::ZedToken) -> pb::WatchRequest {
    pb::WatchRequest {
        optional_start_cursor: Some(token.clone()),
        ..Default::default()
    }
}

fn revision(s: &TestServer, token: &pb::ZedToken) -> u64 {
    pemba::consistency::decode_token(&token.token, s.store.unique_id())
        .unwrap()
        .unwrap()
        .0
}

fn through(s: &TestServer, m: &pb::WatchResponse) -> u64 {
    revision(s, m.changes_through.as_ref().unwrap())
}

/// The next message, or None if the stream ended; panics after [`PATIENCE`].
async fn next(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
) -> Result<Option<pb::WatchResponse>, tonic::Status> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("no watch message in time")
}

/// Messages until one goes through revision `until`.
async fn collect_until(
    s: &TestServer,
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    until: u64,
) -> Vec<pb::WatchResponse> {
    let mut out = Vec::new();
    loop {
        let m = next(stream).await.unwrap().expect("stream ended early");
        let rev = through(s, &m);
        out.push(m);
        if rev >= until {
            return out;
        }
    }
}

/// An update as `OP text`.
fn line(u: &pb::RelationshipUpdate) -> String {
    let r = u.relationship.as_ref().unwrap();
    let res = r.resource.as_ref().unwrap();
    let sub = r.subject.as_ref().unwrap();
    let so = sub.object.as_ref().unwrap();
    let op = match Operation::try_from(u.operation).unwrap() {
        Operation::Touch => "TOUCH",
        Operation::Delete => "DELETE",
        other => panic!("unexpected operation {other:?}"),
    };
    let mut text = format!(
        "{op} {}:{}#{}@{}:{}",
        res.object_type, res.object_id, r.relation, so.object_type, so.object_id
    );
    if !sub.optional_relation.is_empty() {
        text.push('#');
        text.push_str(&sub.optional_relation);
    }
    if let Some(c) = &r.optional_caveat {
        text.push_str(&format!("[{}]", c.caveat_name));
    }
    if r.optional_expires_at.is_some() {
        text.push_str("[expiring]");
    }
    text
}

fn lines(m: &pb::WatchResponse) -> Vec<String> {
    let mut v: Vec<String> = m.updates.iter().map(line).collect();
    v.sort();
    v
}

fn delete(text: &str) -> pb::RelationshipUpdate {
    update(Operation::Delete, text)
}

async fn server() -> TestServer {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    s
}

/// Updates arrive in commit order, one message per revision with all its changes; a TOUCH
/// that changes nothing and a DELETE of a missing relationship send nothing; resuming from
/// any `changes_through` gives exactly the rest.
#[tokio::test]
async fn commit_order_and_resume_from_any_token() {
    let mut s = server().await;
    let start = s.write(vec![]).await.unwrap();
    let mut stream = watch(&s, pb::WatchRequest::default()).await.unwrap();
    let mut expected: Vec<(u64, Vec<String>)> = Vec::new();
    let mut last = 0;
    for i in 0..30 {
        let ups = match i % 5 {
            0 => vec![
                create(&format!("document:d{i}#viewer@user:u{i}")),
                create(&format!("folder:f{i}#viewer@user:u{i}")),
            ],
            1 => vec![touch(&format!(
                "document:d{}#viewer@user:u{}",
                i - 1,
                i - 1
            ))],
            2 => vec![delete(&format!(
                "document:d{}#viewer@user:u{}",
                i - 2,
                i - 2
            ))],
            3 => vec![delete("document:missing#viewer@user:nobody")],
            _ => vec![touch(&format!("document:d{i}#editor@user:u{i}"))],
        };
        let want: Vec<String> = match i % 5 {
            0 => vec![
                format!("TOUCH document:d{i}#viewer@user:u{i}"),
                format!("TOUCH folder:f{i}#viewer@user:u{i}"),
            ],
            2 => vec![format!("DELETE document:d{}#viewer@user:u{}", i - 2, i - 2)],
            4 => vec![format!("TOUCH document:d{i}#editor@user:u{i}")],
            _ => vec![],
        };
        let written = s.write(ups).await.unwrap();
        let rev = revision(&s, &written);
        if !want.is_empty() {
            expected.push((rev, want));
        }
        last = rev;
    }
    let got = collect_until(&s, &mut stream, last).await;
    let got: Vec<(u64, Vec<String>)> = got.iter().map(|m| (through(&s, m), lines(m))).collect();
    assert_eq!(got, expected);

    // Resume from the start and from every token received: the rest, exactly.
    let mut tokens = vec![start];
    tokens.extend(
        expected
            .iter()
            .map(|(rev, _)| pemba::api::proto::authzed::api::v1::ZedToken {
                token: pemba::consistency::encode_token(Revision(*rev), s.store.unique_id()),
            }),
    );
    for token in tokens {
        let after = revision(&s, &token);
        let rest: Vec<(u64, Vec<String>)> = expected
            .iter()
            .filter(|(r, _)| *r > after)
            .cloned()
            .collect();
        if rest.is_empty() {
            continue;
        }
        let mut stream = watch(&s, from(&token)).await.unwrap();
        let got = collect_until(&s, &mut stream, last).await;
        let got: Vec<(u64, Vec<String>)> = got.iter().map(|m| (through(&s, m), lines(m))).collect();
        assert_eq!(got, rest, "resumed after {after}");
    }
}

/// A watch without a cursor starts at the head: nothing committed before it is sent.
#[tokio::test]
async fn no_cursor_starts_at_the_head() {
    let mut s = server().await;
    s.write(vec![create("document:old#viewer@user:ann")])
        .await
        .unwrap();
    let mut stream = watch(&s, pb::WatchRequest::default()).await.unwrap();
    let rev = s
        .write(vec![create("document:new#viewer@user:ann")])
        .await
        .unwrap();
    let got = collect_until(&s, &mut stream, revision(&s, &rev)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(lines(&got[0]), vec!["TOUCH document:new#viewer@user:ann"]);
}

/// Tokens the watch cannot start from: gone with GC, ahead of the head, another store's,
/// empty, garbage.
#[tokio::test]
async fn unusable_start_tokens() {
    let mut s = server().await;
    let r1 = s
        .write(vec![create("document:a#viewer@user:ann")])
        .await
        .unwrap();
    let r2 = s
        .write(vec![create("document:b#viewer@user:ann")])
        .await
        .unwrap();
    let later = pemba::model::Timestamp {
        seconds: pemba::model::Timestamp::now().seconds + 10,
        nanos: 0,
    };
    let stats = s.store.gc(later, Duration::ZERO).unwrap();
    assert_eq!(stats.horizon.0, revision(&s, &r2));
    let err = watch(&s, from(&r1)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("no longer available"),
        "{}",
        err.message()
    );
    // From the horizon itself it works.
    let mut stream = watch(&s, from(&r2)).await.unwrap();
    let r3 = s
        .write(vec![create("document:c#viewer@user:ann")])
        .await
        .unwrap();
    let got = collect_until(&s, &mut stream, revision(&s, &r3)).await;
    assert_eq!(lines(&got[0]), vec!["TOUCH document:c#viewer@user:ann"]);

    let ahead = pb::ZedToken {
        token: pemba::consistency::encode_token(Revision(1000), s.store.unique_id()),
    };
    let err = watch(&s, from(&ahead)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    let foreign = pb::ZedToken {
        token: pemba::consistency::encode_token(Revision(1), "0123456789abcdef"),
    };
    let err = watch(&s, from(&foreign)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "start revision was generated by a different datastore instance"
    );
    for bad in ["", "not-a-token!"] {
        let err = watch(
            &s,
            from(&pb::ZedToken {
                token: bad.to_string(),
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
}

/// ImportBulk and a delete by filter appear as their individual relationships, each in one
/// message.
#[tokio::test]
async fn import_and_delete_by_filter_show_each_relationship() {
    let mut s = server().await;
    let mut stream = watch(&s, pb::WatchRequest::default()).await.unwrap();
    let n = 3_000;
    let messages: Vec<pb::ImportBulkRelationshipsRequest> = (0..3)
        .map(|m| pb::ImportBulkRelationshipsRequest {
            relationships: (m * n / 3..(m + 1) * n / 3)
                .map(|i| rel(&format!("document:d{i}#viewer@user:u{}", i % 10)))
                .collect(),
        })
        .collect();
    let loaded = s
        .permissions
        .import_bulk_relationships(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
        .num_loaded;
    assert_eq!(loaded, n as u64);
    let deleted = s
        .permissions
        .delete_relationships(pb::DeleteRelationshipsRequest {
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: "document".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.relationships_deleted_count, n as u64);
    let got = collect_until(&s, &mut stream, revision(&s, &deleted.deleted_at.unwrap())).await;
    assert_eq!(got.len(), 2, "one message per revision");
    let mut want: Vec<String> = (0..n)
        .map(|i| format!("TOUCH document:d{i}#viewer@user:u{}", i % 10))
        .collect();
    want.sort();
    assert_eq!(lines(&got[0]), want);
    let want: Vec<String> = want.iter().map(|l| l.replace("TOUCH", "DELETE")).collect();
    let mut want = want;
    want.sort();
    assert_eq!(lines(&got[1]), want);
}

fn metadata(key: &str) -> prost_types::Struct {
    use prost_types::value::Kind;
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "request_id".to_string(),
        prost_types::Value {
            kind: Some(Kind::StringValue(key.to_string())),
        },
    );
    fields.insert(
        "attempt".to_string(),
        prost_types::Value {
            kind: Some(Kind::NumberValue(2.0)),
        },
    );
    prost_types::Struct { fields }
}

/// The metadata a writer sends comes back with its revision; caveats and expirations too.
#[tokio::test]
async fn transaction_metadata_caveats_and_expiration_round_trip() {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(
        "use expiration
         caveat ok(flag bool) { flag }
         definition user {}
         definition document {
             relation viewer: user | user with ok | user with expiration
         }",
    )
    .await
    .unwrap();
    let mut stream = watch(&s, pb::WatchRequest::default()).await.unwrap();
    let mut caveated = rel("document:a#viewer@user:bob");
    caveated.optional_caveat = Some(pb::ContextualizedCaveat {
        caveat_name: "ok".into(),
        context: None,
    });
    let mut expiring = rel("document:a#viewer@user:cid");
    expiring.optional_expires_at = Some(prost_types::Timestamp {
        seconds: 4_102_444_800,
        nanos: 0,
    });
    let written = s
        .permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![
                touch("document:a#viewer@user:ann"),
                pb::RelationshipUpdate {
                    operation: Operation::Create as i32,
                    relationship: Some(caveated),
                },
                pb::RelationshipUpdate {
                    operation: Operation::Create as i32,
                    relationship: Some(expiring),
                },
            ],
            optional_transaction_metadata: Some(metadata("w-1")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    let deleted = s
        .permissions
        .delete_relationships(pb::DeleteRelationshipsRequest {
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: "document".into(),
                optional_resource_id: "a".into(),
                ..Default::default()
            }),
            optional_transaction_metadata: Some(metadata("d-1")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deleted_at
        .unwrap();
    let plain = s
        .write(vec![touch("document:b#viewer@user:ann")])
        .await
        .unwrap();
    let got = collect_until(&s, &mut stream, revision(&s, &plain)).await;
    assert_eq!(got.len(), 3);
    assert_eq!(through(&s, &got[0]), revision(&s, &written));
    assert_eq!(
        lines(&got[0]),
        vec![
            "TOUCH document:a#viewer@user:ann",
            "TOUCH document:a#viewer@user:bob[ok]",
            "TOUCH document:a#viewer@user:cid[expiring]",
        ]
    );
    assert_eq!(got[0].optional_transaction_metadata, Some(metadata("w-1")));
    assert_eq!(got[0].full_revision_metadata, vec![metadata("w-1")]);
    assert_eq!(through(&s, &got[1]), revision(&s, &deleted));
    assert_eq!(
        lines(&got[1]),
        vec![
            "DELETE document:a#viewer@user:ann",
            "DELETE document:a#viewer@user:bob[ok]",
            "DELETE document:a#viewer@user:cid[expiring]",
        ]
    );
    assert_eq!(got[1].optional_transaction_metadata, Some(metadata("d-1")));
    assert_eq!(got[2].optional_transaction_metadata, None);
    assert!(got[2].full_revision_metadata.is_empty());
}

fn kinds(k: &[pb::WatchKind]) -> pb::WatchRequest {
    pb::WatchRequest {
        optional_update_kinds: k.iter().map(|k| *k as i32).collect(),
        ..Default::default()
    }
}

/// The shape of a message: `data`, `schema` or `checkpoint`.
fn shape(m: &pb::WatchResponse) -> &'static str {
    match (m.updates.is_empty(), m.schema_updated, m.is_checkpoint) {
        (false, false, false) => "data",
        (true, true, false) => "schema",
        (true, false, true) => "checkpoint",
        _ => panic!("mixed message {m:?}"),
    }
}

/// With every kind: data, checkpoint, schema, checkpoint (SpiceDB's "watch with all kinds"),
/// then heartbeat checkpoints repeating the revision while idle. Without the kinds, neither
/// schema messages nor checkpoints.
#[tokio::test]
async fn schema_updates_and_checkpoints() {
    let limits = Limits {
        watch_heartbeat: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut s = start_with_limits(Arc::new(MemoryStore::new()), None, None, limits).await;
    s.write_schema(SCHEMA).await.unwrap();
    let mut all = watch(
        &s,
        kinds(&[
            pb::WatchKind::IncludeRelationshipUpdates,
            pb::WatchKind::IncludeSchemaUpdates,
            pb::WatchKind::IncludeCheckpoints,
        ]),
    )
    .await
    .unwrap();
    let mut plain = watch(&s, kinds(&[pb::WatchKind::IncludeSchemaUpdates]))
        .await
        .unwrap();
    let mut checkpoints_only = watch(&s, kinds(&[pb::WatchKind::IncludeCheckpoints]))
        .await
        .unwrap();
    let r1 = s
        .write(vec![create("document:a#viewer@user:ann")])
        .await
        .unwrap();
    let r2 = s
        .write_schema(&format!("{SCHEMA}\ndefinition team {{}}"))
        .await
        .unwrap();
    let (r1, r2) = (revision(&s, &r1), revision(&s, &r2));
    let mut got = collect_until(&s, &mut all, r2).await;
    // The schema message of r2 is followed by its checkpoint.
    got.push(next(&mut all).await.unwrap().unwrap());
    let got: Vec<(&str, u64)> = got.iter().map(|m| (shape(m), through(&s, m))).collect();
    assert_eq!(
        got,
        vec![
            ("data", r1),
            ("checkpoint", r1),
            ("schema", r2),
            ("checkpoint", r2)
        ]
    );
    // Idle: heartbeats repeating the last revision.
    let started = Instant::now();
    for _ in 0..2 {
        let m = next(&mut all).await.unwrap().unwrap();
        assert_eq!((shape(&m), through(&s, &m)), ("checkpoint", r2));
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    let got = collect_until(&s, &mut plain, r2).await;
    let got: Vec<(&str, u64)> = got.iter().map(|m| (shape(m), through(&s, m))).collect();
    assert_eq!(got, vec![("data", r1), ("schema", r2)]);

    // Relationship updates are sent whatever the kinds; schema messages only when asked.
    let got = collect_until(&s, &mut checkpoints_only, r2).await;
    let got: Vec<(&str, u64)> = got.iter().map(|m| (shape(m), through(&s, m))).collect();
    assert_eq!(
        got,
        vec![("data", r1), ("checkpoint", r1), ("checkpoint", r2)]
    );

    // No checkpoints asked for: an idle stream is silent.
    let quiet = tokio::time::timeout(Duration::from_millis(600), plain.message()).await;
    assert!(quiet.is_err(), "{quiet:?}");
}

/// Object types and relationship filters (their union); both together is refused; filters
/// are checked against the schema.
#[tokio::test]
async fn filters() {
    let mut s = server().await;
    let by_type = |t: &[&str]| pb::WatchRequest {
        optional_object_types: t.iter().map(|t| (*t).to_string()).collect(),
        ..Default::default()
    };
    let filter = |t: &str, rel: &str, subject_id: &str| pb::RelationshipFilter {
        resource_type: t.into(),
        optional_relation: rel.into(),
        optional_subject_filter: (!subject_id.is_empty()).then(|| pb::SubjectFilter {
            subject_type: "user".into(),
            optional_subject_id: subject_id.into(),
            optional_relation: None,
        }),
        ..Default::default()
    };
    let by_filters = |f: Vec<pb::RelationshipFilter>| pb::WatchRequest {
        optional_relationship_filters: f,
        ..Default::default()
    };
    let mut folders = watch(&s, by_type(&["folder"])).await.unwrap();
    let mut nothing = watch(&s, by_type(&["nosuchtype"])).await.unwrap();
    let mut union = watch(
        &s,
        by_filters(vec![
            filter("document", "editor", ""),
            filter("folder", "", "bob"),
        ]),
    )
    .await
    .unwrap();
    let last = s
        .write(vec![
            create("document:a#viewer@user:ann"),
            create("document:a#editor@user:ann"),
            create("folder:f#viewer@user:ann"),
            create("folder:g#viewer@user:bob"),
        ])
        .await
        .unwrap();
    let last = revision(&s, &last);
    let got = collect_until(&s, &mut folders, last).await;
    assert_eq!(
        lines(&got[0]),
        vec![
            "TOUCH folder:f#viewer@user:ann",
            "TOUCH folder:g#viewer@user:bob"
        ]
    );
    let got = collect_until(&s, &mut union, last).await;
    assert_eq!(
        lines(&got[0]),
        vec![
            "TOUCH document:a#editor@user:ann",
            "TOUCH folder:g#viewer@user:bob"
        ]
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), nothing.message()).await;
    assert!(quiet.is_err(), "an unknown type matches nothing: {quiet:?}");

    let mut both = by_filters(vec![filter("document", "", "")]);
    both.optional_object_types = vec!["document".into()];
    let err = watch(&s, both).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "cannot specify both object types and relationship filters"
    );
    let err = watch(&s, by_filters(vec![filter("nosuch", "", "")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "ERROR_REASON_UNKNOWN_DEFINITION");
    let err = watch(&s, by_filters(vec![filter("document", "nosuch", "")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION");
    let mut both_ids = filter("document", "", "");
    both_ids.optional_resource_id = "a".into();
    both_ids.optional_resource_id_prefix = "a".into();
    let err = watch(&s, by_filters(vec![both_ids])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// A watcher that stops reading never slows writers; once its buffer has stayed full past the
/// write timeout it is disconnected with RESOURCE_EXHAUSTED, and resuming from the last
/// token it got loses nothing and repeats nothing.
#[tokio::test]
async fn slow_watcher_is_disconnected_and_can_resume() {
    let limits = Limits {
        watch_buffer_length: 4,
        watch_buffer_write_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut s = start_with_limits(Arc::new(MemoryStore::new()), None, None, limits).await;
    s.write_schema(SCHEMA).await.unwrap();
    let start = s.write(vec![]).await.unwrap();
    let mut stream = watch(&s, from(&start)).await.unwrap();
    // Enough to fill the transport's windows and buffers many times over.
    let mut revisions = Vec::new();
    let mut slowest = Duration::ZERO;
    for w in 0..60 {
        let ups = (0..1000)
            .map(|i| {
                create(&format!(
                    "document:w{w}-{i}#viewer@user:some-longer-user-name-{i}"
                ))
            })
            .collect();
        let began = Instant::now();
        let t = s.write(ups).await.unwrap();
        slowest = slowest.max(began.elapsed());
        revisions.push(revision(&s, &t));
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a write waited for the watcher: {slowest:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut received = Vec::new();
    let err = loop {
        match next(&mut stream).await {
            Ok(Some(m)) => received.push(through(&s, &m)),
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("watch fell too far behind"),
        "{}",
        err.message()
    );
    assert!(
        received.len() < revisions.len(),
        "the watcher got everything ({}) before falling behind",
        received.len()
    );
    // Resume from the last token received (or the start).
    let resume = match received.last() {
        Some(r) => pb::ZedToken {
            token: pemba::consistency::encode_token(Revision(*r), s.store.unique_id()),
        },
        None => start,
    };
    let mut stream = watch(&s, from(&resume)).await.unwrap();
    let rest = collect_until(&s, &mut stream, *revisions.last().unwrap()).await;
    received.extend(rest.iter().map(|m| through(&s, m)));
    assert_eq!(received, revisions, "no revision lost or repeated");
}

/// Shutting the server down ends watch streams with UNAVAILABLE.
#[tokio::test]
async fn shutdown_ends_streams_unavailable() {
    let s = server().await;
    let mut stream = watch(&s, pb::WatchRequest::default()).await.unwrap();
    let handle = {
        let mut s = s;
        let h = s.handle.take().unwrap();
        drop(s);
        h
    };
    let err = next(&mut stream).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shutting down"), "{err:?}");
    tokio::time::timeout(PATIENCE, handle)
        .await
        .unwrap()
        .unwrap();
}

/// Opens the RocksDB store in `dir`, waiting (without blocking the runtime, whose tasks
/// still hold the previous server's store) until the previous server has let it go.
async fn open(dir: &std::path::Path) -> Arc<dyn Datastore> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match RocksStore::open(dir) {
            Ok(s) => return Arc::new(s),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot reopen: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Resuming across a restart of a RocksDB server loses nothing.
#[tokio::test]
async fn resume_across_a_restart_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start_with_store(open(dir.path()).await, None, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    let start = s.write(vec![]).await.unwrap();
    let mut stream = watch(&s, from(&start)).await.unwrap();
    let first = s
        .write(vec![create("document:a#viewer@user:ann")])
        .await
        .unwrap();
    let got = collect_until(&s, &mut stream, revision(&s, &first)).await;
    let token = got.last().unwrap().changes_through.clone().unwrap();
    // Written while nobody watches, then the server stops.
    let mut expected = Vec::new();
    for i in 0..5 {
        let t = s
            .write(vec![create(&format!("document:b{i}#viewer@user:ann"))])
            .await
            .unwrap();
        expected.push((
            revision(&s, &t),
            vec![format!("TOUCH document:b{i}#viewer@user:ann")],
        ));
    }
    let h = s.handle.take().unwrap();
    drop(stream);
    drop(s);
    h.await.unwrap();

    let mut s = start_with_store(open(dir.path()).await, None, None).await;
    let mut stream = watch(&s, from(&token)).await.unwrap();
    let t = s
        .write(vec![create("document:c#viewer@user:ann")])
        .await
        .unwrap();
    expected.push((
        revision(&s, &t),
        vec!["TOUCH document:c#viewer@user:ann".to_string()],
    ));
    let got = collect_until(&s, &mut stream, revision(&s, &t)).await;
    let got: Vec<(u64, Vec<String>)> = got.iter().map(|m| (through(&s, m), lines(m))).collect();
    assert_eq!(got, expected);
    s.write_schema(SCHEMA).await.unwrap();
}

/// A gauge's value, or a histogram's sample count, from the process's default registry.
fn metric(name: &str) -> f64 {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&prometheus::gather(), &mut buf)
        .unwrap();
    let count = format!("{name}_count");
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name || n == count).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// The subscriber gauge counts open streams; each revision sent is observed in the lag
/// histogram.
#[tokio::test]
async fn metrics_count_subscribers_and_revisions_sent() {
    assert!(pemba::server::metrics::init_metrics());
    let mut s = server().await;
    let sent_before = metric("pemba_watch_lag_revisions");
    let mut stream = watch(&s, pb::WatchRequest::default()).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while metric("pemba_watch_subscribers") < 1.0 {
        assert!(Instant::now() < deadline, "the subscriber gauge never rose");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rev = s
        .write(vec![create("document:m#viewer@user:ann")])
        .await
        .unwrap();
    collect_until(&s, &mut stream, revision(&s, &rev)).await;
    assert!(metric("pemba_watch_lag_revisions") >= sent_before + 1.0);
}

/// `pemba serve-testing`: each token watches its own store, and shutdown ends the streams
/// with UNAVAILABLE.
#[tokio::test]
async fn serve_testing_watches_per_token_and_ends_at_shutdown() {
    use pemba::server::{self, ServerOptions, testing::Tenants};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tenants = Tenants::new(pemba::engine::EngineConfig::default(), Limits::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server::run_testing(
        listener,
        None,
        tenants,
        ServerOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    fn with<T>(token: &str, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    let mut schema = SchemaServiceClient::new(channel.clone());
    let mut perms = PermissionsServiceClient::new(channel.clone());
    for token in ["a", "b"] {
        schema
            .write_schema(with(
                token,
                pb::WriteSchemaRequest {
                    schema: SCHEMA.into(),
                },
            ))
            .await
            .unwrap();
    }
    let mut stream = WatchServiceClient::new(channel.clone())
        .watch(with("a", pb::WatchRequest::default()))
        .await
        .unwrap()
        .into_inner();
    for (token, doc) in [("b", "other"), ("a", "mine")] {
        perms
            .write_relationships(with(
                token,
                pb::WriteRelationshipsRequest {
                    updates: vec![create(&format!("document:{doc}#viewer@user:ann"))],
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let m = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(lines(&m), vec!["TOUCH document:mine#viewer@user:ann"]);
    stop.send(()).unwrap();
    let err = next(&mut stream).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shutting down"), "{err:?}");
    tokio::time::timeout(PATIENCE, handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
