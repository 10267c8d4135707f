//! Careless and hostile clients against a real server: none may stall the others.
//!
//! Readers that stop reading, and preconditions over filters that no index answers. Each test
//! reproduces a way one client could stall every other client, and checks that it no longer
//! does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use pemba::api::Limits;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::model::{Timestamp, parse_relationship};
use pemba::store::{Datastore, MemoryStore, RelationshipUpdate, UpdateOp};
use tonic::Code;
use tonic::transport::Channel;

const SCHEMA: &str = "
definition user {}

definition document {
    relation viewer: user
    permission view = viewer
}
";

/// Stores `document:d{i}#viewer@user:u{i % users}` for `i` in `0..n`, straight into the store.
fn load(store: &dyn Datastore, n: usize, users: usize) {
    let updates: Vec<RelationshipUpdate> = (0..n)
        .map(|i| RelationshipUpdate {
            op: UpdateOp::Touch,
            relationship: parse_relationship(&format!("document:d{i}#viewer@user:u{}", i % users))
                .unwrap(),
        })
        .collect();
    for chunk in updates.chunks(10_000) {
        store
            .write_relationships(&[], chunk, Timestamp::now())
            .unwrap();
    }
}

async fn server(limits: Limits, relationships: usize) -> TestServer {
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
    let mut s = start_with_limits(Arc::clone(&store), None, None, limits).await;
    s.write_schema(SCHEMA).await.unwrap();
    load(store.as_ref(), relationships, 100);
    s
}

fn read_all_documents() -> pb::ReadRelationshipsRequest {
    pb::ReadRelationshipsRequest {
        consistency: fully_consistent(),
        relationship_filter: Some(pb::RelationshipFilter {
            resource_type: "document".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check_ann(
    s: &TestServer,
) -> impl Future<Output = Result<tonic::Response<pb::CheckPermissionResponse>, tonic::Status>> + use<>
{
    let mut client = s.permissions.clone();
    async move {
        client
            .check_permission(pb::CheckPermissionRequest {
                consistency: fully_consistent(),
                resource: Some(obj("document", "d1")),
                permission: "view".into(),
                subject: Some(subj("user", "u1", "")),
                ..Default::default()
            })
            .await
    }
}

/// 600 ReadRelationships streams whose client never reads: before, each held a thread of the
/// blocking pool (512 at most), so a write, which needs one too, waited for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_readers_hold_no_thread_and_block_no_write() {
    let mut s = server(Limits::default(), 10_000).await;
    // One stalled stream on a connection of its own, read at the end: HTTP/2's connection
    // window is shared by all streams of a connection, so a stream behind 99 unread ones
    // could never be read by this client, whatever the server does.
    let lone = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let lone = PermissionsServiceClient::new(lone)
        .read_relationships(read_all_documents())
        .await
        .unwrap()
        .into_inner();
    let mut held = Vec::new();
    for _ in 0..6 {
        // 100 streams a connection, below HTTP/2's usual limit of concurrent streams.
        let channel = Channel::from_shared(format!("http://{}", s.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..100 {
            let mut client = PermissionsServiceClient::new(channel.clone());
            let stream = client
                .read_relationships(read_all_documents())
                .await
                .unwrap()
                .into_inner();
            held.push(stream);
        }
    }
    // Let every producer fill what the transport buffers and block.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let write = tokio::time::timeout(
        Duration::from_secs(20),
        s.write(vec![touch("document:new#viewer@user:ann")]),
    )
    .await
    .expect("a write waited behind the stalled readers");
    write.unwrap();
    let check = tokio::time::timeout(Duration::from_secs(20), check_ann(&s))
        .await
        .expect("a check waited behind the stalled readers")
        .unwrap()
        .into_inner();
    assert_eq!(
        check.permissionship,
        pb::check_permission_response::Permissionship::HasPermission as i32
    );
    // The stalled streams are still whole: each can be read to the end.
    let n = tokio::time::timeout(
        Duration::from_secs(20),
        lone.filter(|r| std::future::ready(r.is_ok())).count(),
    )
    .await
    .expect("the stalled stream could not be read to its end");
    assert_eq!(n, 10_000);
    drop(held);
}

/// A reader that stops reading for longer than the stall timeout loses its stream with
/// DEADLINE_EXCEEDED, as SpiceDB's `--streaming-api-response-delay-timeout` does; before, the
/// server kept the stream, its buffers and its thread for as long as the client lived.
#[tokio::test]
async fn a_stalled_stream_is_cancelled_with_deadline_exceeded() {
    let limits = Limits {
        stream_stall_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    // More than the client's HTTP/2 windows (5 MB a connection) and the buffers hold.
    let mut s = server(limits, 100_000).await;
    let mut stream = s
        .permissions
        .read_relationships(read_all_documents())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ok = 0usize;
    let err = loop {
        match stream.next().await {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended normally after {ok} results"),
        }
    };
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(ok < 100_000);

    // A reader that keeps reading is unaffected, however long the whole stream takes.
    let all = s.read(read_all_documents()).await.unwrap();
    assert_eq!(all.len(), 100_000);
}

fn must_not_match(filter: pb::RelationshipFilter) -> pb::Precondition {
    pb::Precondition {
        operation: pb::precondition::Operation::MustNotMatch as i32,
        filter: Some(filter),
    }
}

/// A thousand preconditions whose filter only names a resource id: before, each scanned the
/// whole store under the write lock, holding every other writer for minutes. Now the scans of
/// one write have a budget, and a filter that exceeds it is refused.
#[tokio::test]
async fn preconditions_that_would_scan_everything_are_refused() {
    let mut s = server(Limits::default(), 120_000).await;
    let by_id = pb::RelationshipFilter {
        optional_resource_id: "nosuch".into(),
        ..Default::default()
    };
    let err = s
        .permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![touch("document:x#viewer@user:ann")],
            optional_preconditions: vec![must_not_match(by_id); 1000],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason(&err), "ERROR_REASON_INVALID_FILTER");

    // Filters the indexes answer cost a probe each, however many there are.
    let exact = pb::RelationshipFilter {
        resource_type: "document".into(),
        optional_resource_id: "d7".into(),
        optional_relation: "viewer".into(),
        optional_subject_filter: Some(pb::SubjectFilter {
            subject_type: "user".into(),
            optional_subject_id: "nobody".into(),
            optional_relation: None,
        }),
        ..Default::default()
    };
    let by_subject = pb::RelationshipFilter {
        resource_type: "document".into(),
        optional_subject_filter: Some(pb::SubjectFilter {
            subject_type: "user".into(),
            optional_subject_id: "nobody".into(),
            optional_relation: None,
        }),
        ..Default::default()
    };
    let mut preconditions = vec![must_not_match(exact); 500];
    preconditions.extend(vec![must_not_match(by_subject); 500]);
    s.permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![touch("document:x#viewer@user:ann")],
            optional_preconditions: preconditions,
            ..Default::default()
        })
        .await
        .unwrap();

    // And they still fail when they should.
    let held = pb::RelationshipFilter {
        resource_type: "document".into(),
        optional_subject_filter: Some(pb::SubjectFilter {
            subject_type: "user".into(),
            optional_subject_id: "u3".into(),
            optional_relation: None,
        }),
        ..Default::default()
    };
    let err = s
        .permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![touch("document:y#viewer@user:ann")],
            optional_preconditions: vec![must_not_match(held)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

fn import_message(
    ids: impl Iterator<Item = usize>,
    prefix: &str,
) -> pb::ImportBulkRelationshipsRequest {
    pb::ImportBulkRelationshipsRequest {
        relationships: ids
            .map(|i| rel(&format!("document:{prefix}{i}#viewer@user:u{}", i % 100)))
            .collect(),
    }
}

fn count_documents(prefix: &'static str) -> impl Fn(&[pb::ReadRelationshipsResponse]) -> usize {
    move |rs| {
        rs.iter()
            .filter(|r| {
                r.relationship
                    .as_ref()
                    .unwrap()
                    .resource
                    .as_ref()
                    .unwrap()
                    .object_id
                    .starts_with(prefix)
            })
            .count()
    }
}

/// ImportBulk stages each message as it arrives and creates everything at one revision at
/// the end: all of it, or (on a conflict, or a client that stops sending) none of it.
#[tokio::test]
async fn import_streams_in_and_commits_all_or_nothing() {
    let limits = Limits {
        stream_stall_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let mut s = server(limits, 0).await;
    let messages: Vec<_> = (0..40)
        .map(|m| import_message(m * 500..(m + 1) * 500, "i"))
        .collect();
    let resp = s
        .permissions
        .import_bulk_relationships(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.num_loaded, 20_000);
    let all = s.read(read_all_documents()).await.unwrap();
    assert_eq!(count_documents("i")(&all), 20_000);

    // One relationship that already exists, in the last message: nothing is created.
    let mut messages: Vec<_> = (0..10)
        .map(|m| import_message(m * 500..(m + 1) * 500, "j"))
        .collect();
    messages.push(import_message(7..8, "i"));
    let err = s
        .permissions
        .import_bulk_relationships(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let all = s.read(read_all_documents()).await.unwrap();
    assert_eq!(count_documents("j")(&all), 0);

    // The same tuple twice in one import.
    let messages = vec![import_message(0..10, "k"), import_message(5..6, "k")];
    let err = s
        .permissions
        .import_bulk_relationships(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // A client that sends a message and then nothing more loses its import.
    let stalled =
        tokio_stream::iter(vec![import_message(0..500, "s")]).chain(futures::stream::pending());
    let err = s
        .permissions
        .import_bulk_relationships(stalled)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let all = s.read(read_all_documents()).await.unwrap();
    assert_eq!(count_documents("s")(&all) + count_documents("k")(&all), 0);
    assert_eq!(all.len(), 20_000);
}
