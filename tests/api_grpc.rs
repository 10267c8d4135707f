//! The gRPC API with a real tonic client against a real server on port 0.
//!
//! Schema and relationship RPCs, validation, error codes and reasons, consistency tokens and
//! paging.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::*;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::consistency::MismatchedTokens;
use tonic::Code;

const SCHEMA: &str = "
definition user {}

definition group {
    relation member: user | group#member
}

/** a document */
definition document {
    relation owner: user
    relation viewer: user | group#member | user:*
    relation banned: user
    permission edit = owner
    permission view = (viewer + edit) - banned
}
";

fn filter(t: &str) -> Option<pb::RelationshipFilter> {
    Some(pb::RelationshipFilter {
        resource_type: t.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn schema_write_read_reflect() {
    let mut s = start(Backend::Memory, None).await;
    let err = s
        .schema
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = s.write_schema("definition user {").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "ERROR_REASON_SCHEMA_PARSE_ERROR");

    let err = s
        .write_schema("definition doc {\n relation viewer: nosuch\n}")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err), "ERROR_REASON_SCHEMA_TYPE_ERROR");

    let token = s.write_schema(SCHEMA).await.unwrap();
    assert!(!token.token.is_empty());
    let got = s
        .schema
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.schema_text, SCHEMA);

    let reflected = s
        .schema
        .reflect_schema(pb::ReflectSchemaRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = reflected
        .definitions
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["document", "group", "user"]);
    let doc = &reflected.definitions[0];
    assert!(doc.comment.contains("a document"), "{:?}", doc.comment);
    let viewer = doc.relations.iter().find(|r| r.name == "viewer").unwrap();
    assert_eq!(viewer.subject_types.len(), 3);
    assert_eq!(doc.permissions.len(), 2);

    let filtered = s
        .schema
        .reflect_schema(pb::ReflectSchemaRequest {
            optional_filters: vec![pb::ReflectionSchemaFilter {
                optional_definition_name_filter: "gro".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.definitions.len(), 1);
    assert_eq!(filtered.definitions[0].name, "group");
}

#[tokio::test]
async fn relationship_writes_and_their_errors() {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    s.write(vec![create("document:plan#viewer@user:ann")])
        .await
        .unwrap();

    let err = s
        .write(vec![create("document:plan#viewer@user:ann")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        reason(&err),
        "ERROR_REASON_ATTEMPT_TO_RECREATE_RELATIONSHIP"
    );

    s.write(vec![touch("document:plan#viewer@user:ann")])
        .await
        .unwrap();

    let cases: Vec<(&str, Code, &str)> = vec![
        (
            "nosuch:plan#viewer@user:ann",
            Code::FailedPrecondition,
            "ERROR_REASON_UNKNOWN_DEFINITION",
        ),
        (
            "document:plan#nosuch@user:ann",
            Code::FailedPrecondition,
            "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION",
        ),
        (
            "document:plan#view@user:ann",
            Code::InvalidArgument,
            "ERROR_REASON_CANNOT_UPDATE_PERMISSION",
        ),
        (
            "document:plan#owner@group:eng#member",
            Code::InvalidArgument,
            "ERROR_REASON_INVALID_SUBJECT_TYPE",
        ),
        (
            "document:plan#owner@user:*",
            Code::InvalidArgument,
            "ERROR_REASON_INVALID_SUBJECT_TYPE",
        ),
        (
            "document:plan#viewer@nosuch:x",
            Code::FailedPrecondition,
            "ERROR_REASON_UNKNOWN_DEFINITION",
        ),
        (
            "document:plan#viewer@group:eng#nosuch",
            Code::FailedPrecondition,
            "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION",
        ),
    ];
    for (text, code, why) in cases {
        let err = s.write(vec![create(text)]).await.unwrap_err();
        assert_eq!(err.code(), code, "{text}: {err:?}");
        assert_eq!(reason(&err), why, "{text}");
        assert!(!err.message().is_empty());
    }

    // malformed ids, types and relations: INVALID_ARGUMENT, no reason
    for bad in [
        "document:pl an#viewer@user:ann",
        "document:*#viewer@user:ann",
        "Document:plan#viewer@user:ann",
        "document:plan#v@user:ann",
        "document:plan#viewer@user:a$b",
    ] {
        let mut r = rel("document:plan#viewer@user:ann");
        let p = pemba::model::parse_relationship(bad).unwrap();
        r.resource = Some(obj(&p.resource.object_type, &p.resource.object_id));
        r.relation = p.relation;
        r.subject = Some(subj(
            &p.subject.object.object_type,
            &p.subject.object.object_id,
            "",
        ));
        let err = s
            .permissions
            .write_relationships(pb::WriteRelationshipsRequest {
                updates: vec![pb::RelationshipUpdate {
                    operation: pb::relationship_update::Operation::Create as i32,
                    relationship: Some(r),
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(
            err.message().contains("validation error"),
            "{bad}: {}",
            err.message()
        );
    }

    let err = s
        .write(vec![
            create("document:x#owner@user:ann"),
            touch("document:x#owner@user:ann"),
        ])
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_UPDATES_ON_SAME_RELATIONSHIP");

    let many: Vec<_> = (0..1001)
        .map(|i| create(&format!("document:d{i}#owner@user:ann")))
        .collect();
    let err = s.write(many).await.unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST");

    let err = s
        .permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![pb::RelationshipUpdate {
                operation: 0,
                relationship: Some(rel("document:x#owner@user:ann")),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = s
        .permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![pb::RelationshipUpdate {
                operation: 1,
                relationship: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("value is required"));
}

#[tokio::test]
async fn preconditions_are_atomic() {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    s.write(vec![create("document:plan#owner@user:ann")])
        .await
        .unwrap();
    let must = |op: pb::precondition::Operation, id: &str| pb::Precondition {
        operation: op as i32,
        filter: Some(pb::RelationshipFilter {
            resource_type: "document".into(),
            optional_resource_id: id.into(),
            ..Default::default()
        }),
    };
    let err = s
        .permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![create("document:new#owner@user:bob")],
            optional_preconditions: vec![must(pb::precondition::Operation::MustMatch, "nosuch")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        reason(&err),
        "ERROR_REASON_WRITE_OR_DELETE_PRECONDITION_FAILURE"
    );
    let read = s
        .read(pb::ReadRelationshipsRequest {
            consistency: fully_consistent(),
            relationship_filter: filter("document"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(read.len(), 1, "nothing written when a precondition fails");

    s.permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![create("document:new#owner@user:bob")],
            optional_preconditions: vec![
                must(pb::precondition::Operation::MustMatch, "plan"),
                must(pb::precondition::Operation::MustNotMatch, "new"),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let err = s
        .permissions
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![create("document:other#owner@user:bob")],
            optional_preconditions: vec![must(pb::precondition::Operation::MustNotMatch, "new")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn paging_returns_each_relationship_once_for_every_page_size() {
    let mut s = start(Backend::Rocks, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    let n = 53;
    let updates = (0..n)
        .map(|i| create(&format!("document:d{i:03}#viewer@user:u{}", i % 5)))
        .collect();
    let token = s.write(updates).await.unwrap();
    // a write after the first page must not show up in later pages: they are pinned to the
    // first page's revision
    let mut late: Vec<String> = Vec::new();
    for size in [1u32, 2, 7, 52, 53, 54, 1000] {
        let mut cursor = None;
        let mut ids = Vec::new();
        let mut first = true;
        loop {
            let page = s
                .read(pb::ReadRelationshipsRequest {
                    consistency: if cursor.is_none() {
                        fresh(&token)
                    } else {
                        None
                    },
                    relationship_filter: filter("document"),
                    optional_limit: size,
                    optional_cursor: cursor.clone(),
                })
                .await
                .unwrap();
            if first {
                s.write(vec![create(&format!("document:zz{size}#viewer@user:late"))])
                    .await
                    .unwrap();
                first = false;
            }
            ids.extend(page.iter().map(|r| {
                r.relationship
                    .as_ref()
                    .unwrap()
                    .resource
                    .as_ref()
                    .unwrap()
                    .object_id
                    .clone()
            }));
            if page.len() < size as usize {
                break;
            }
            cursor = page.last().unwrap().after_result_cursor.clone();
        }
        let mut expected: Vec<String> = (0..n).map(|i| format!("d{i:03}")).collect();
        expected.extend(late.iter().cloned());
        assert_eq!(ids, expected, "page size {size}");
        late.push(format!("zz{size}"));
        late.sort();
    }

    let err = s
        .read(pb::ReadRelationshipsRequest {
            relationship_filter: filter("document"),
            optional_limit: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_EXCEEDS_MAXIMUM_ALLOWABLE_LIMIT");

    let err = s
        .read(pb::ReadRelationshipsRequest {
            relationship_filter: filter("document"),
            optional_cursor: Some(pb::Cursor {
                token: "garbage".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_INVALID_CURSOR");

    let err = s
        .read(pb::ReadRelationshipsRequest {
            relationship_filter: Some(pb::RelationshipFilter::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_INVALID_FILTER");

    let err = s
        .read(pb::ReadRelationshipsRequest {
            relationship_filter: filter("nosuch"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn consistency_tokens() {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    let t1 = s
        .write(vec![create("document:a#owner@user:ann")])
        .await
        .unwrap();
    s.write(vec![create("document:b#owner@user:ann")])
        .await
        .unwrap();
    let at = |c| pb::ReadRelationshipsRequest {
        consistency: Some(pb::Consistency {
            requirement: Some(c),
        }),
        relationship_filter: filter("document"),
        ..Default::default()
    };
    let exact = s
        .read(at(pb::consistency::Requirement::AtExactSnapshot(
            t1.clone(),
        )))
        .await
        .unwrap();
    assert_eq!(exact.len(), 1, "exact snapshot sees only the first write");
    assert_eq!(exact[0].read_at.as_ref().unwrap().token, t1.token);
    let fresh_read = s
        .read(at(pb::consistency::Requirement::AtLeastAsFresh(t1.clone())))
        .await
        .unwrap();
    assert_eq!(fresh_read.len(), 2);
    let latest = s
        .read(at(pb::consistency::Requirement::MinimizeLatency(true)))
        .await
        .unwrap();
    assert_eq!(latest.len(), 2);
    let err = s
        .read(at(pb::consistency::Requirement::MinimizeLatency(false)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = s
        .read(at(pb::consistency::Requirement::AtExactSnapshot(
            pb::ZedToken {
                token: "not-a-token".into(),
            },
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// A ZedToken SpiceDB issued (an application switching over has them stored) is read as
/// another datastore's token: `at_least_as_fresh` follows `--mismatch-zed-token-behavior`
/// (by default: the head), `at_exact_snapshot` is refused.
#[tokio::test]
async fn spicedb_tokens_follow_the_mismatch_behaviour() {
    // SpiceDB's token for revision 1700000000000000000 of a store with id prefix `1b4e28ba`.
    let spicedb = pb::ZedToken {
        token: "Gh8KEzE3MDAwMDAwMDAwMDAwMDAwMDASCDFiNGUyOGJh".into(),
    };
    let read = |c| pb::ReadRelationshipsRequest {
        consistency: Some(pb::Consistency {
            requirement: Some(c),
        }),
        relationship_filter: filter("document"),
        ..Default::default()
    };
    for behaviour in [
        MismatchedTokens::FullConsistency,
        MismatchedTokens::MinLatency,
        MismatchedTokens::Error,
    ] {
        let limits = pemba::api::Limits {
            mismatched_tokens: behaviour,
            ..Default::default()
        };
        let store = std::sync::Arc::new(pemba::store::MemoryStore::new());
        let mut s = start_with_limits(store, None, None, limits).await;
        s.write_schema(SCHEMA).await.unwrap();
        s.write(vec![create("document:a#owner@user:ann")])
            .await
            .unwrap();
        let fresh = s
            .read(read(pb::consistency::Requirement::AtLeastAsFresh(
                spicedb.clone(),
            )))
            .await;
        match behaviour {
            MismatchedTokens::Error => {
                let err = fresh.unwrap_err();
                assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
                assert!(err.message().contains("different datastore"), "{err:?}");
            }
            _ => assert_eq!(fresh.unwrap().len(), 1, "{behaviour:?} reads the head"),
        }
        let err = s
            .read(read(pb::consistency::Requirement::AtExactSnapshot(
                spicedb.clone(),
            )))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{behaviour:?}: {err:?}");
    }
}

#[tokio::test]
async fn deletes_by_filter() {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    let updates = (0..20)
        .map(|i| create(&format!("document:d{i:02}#viewer@user:u{}", i % 2)))
        .collect();
    s.write(updates).await.unwrap();
    let del = |limit, partial| pb::DeleteRelationshipsRequest {
        relationship_filter: Some(pb::RelationshipFilter {
            resource_type: "document".into(),
            optional_subject_filter: Some(pb::SubjectFilter {
                subject_type: "user".into(),
                optional_subject_id: "u0".into(),
                optional_relation: None,
            }),
            ..Default::default()
        }),
        optional_limit: limit,
        optional_allow_partial_deletions: partial,
        ..Default::default()
    };
    let err = s
        .permissions
        .delete_relationships(del(3, false))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&err),
        "ERROR_REASON_TOO_MANY_RELATIONSHIPS_FOR_TRANSACTIONAL_DELETE"
    );
    let r = s
        .permissions
        .delete_relationships(del(3, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.relationships_deleted_count, 3);
    assert_eq!(
        r.deletion_progress,
        pb::delete_relationships_response::DeletionProgress::Partial as i32
    );
    let r = s
        .permissions
        .delete_relationships(del(0, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.relationships_deleted_count, 7);
    let left = s
        .read(pb::ReadRelationshipsRequest {
            consistency: fresh(r.deleted_at.as_ref().unwrap()),
            relationship_filter: filter("document"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 10);
}

#[tokio::test]
async fn orphaning_schema_changes_are_refused() {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    s.write(vec![create("document:plan#viewer@user:*")])
        .await
        .unwrap();
    let without_wildcard = SCHEMA.replace("| user:*", "");
    let err = s.write_schema(&without_wildcard).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "ERROR_REASON_SCHEMA_TYPE_ERROR");
    assert!(
        err.message().contains("document:plan#viewer@user:*"),
        "{}",
        err.message()
    );
    let without_doc =
        "definition user {}\ndefinition group {\n relation member: user | group#member\n}";
    let err = s.write_schema(without_doc).await.unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_SCHEMA_TYPE_ERROR");
    // removing something unused is fine
    let without_banned = SCHEMA
        .replace("    relation banned: user\n", "")
        .replace(" - banned", "");
    s.write_schema(&without_banned).await.unwrap();
}

#[tokio::test]
async fn preshared_key_is_enforced() {
    let mut s = start(Backend::Memory, Some("sekret")).await;
    let err = s
        .schema
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ReadSchemaRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    let err = s.schema.read_schema(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut req = tonic::Request::new(pb::ReadSchemaRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer sekret".parse().unwrap());
    let err = s.schema.read_schema(req).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "authenticated: reaches the handler"
    );
}

#[tokio::test]
async fn garbage_requests_never_panic_the_server() {
    use prost::Message;
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    // Random bytes decoded as requests: whatever decodes must get an answer, not a crash.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Ok(req) = pb::WriteRelationshipsRequest::decode(bytes.as_slice()) {
            let _ = s.permissions.write_relationships(req).await;
        }
        if let Ok(req) = pb::ReadRelationshipsRequest::decode(bytes.as_slice()) {
            let _ = s.read(req).await;
        }
        if let Ok(req) = pb::CheckPermissionRequest::decode(bytes.as_slice()) {
            let _ = s.permissions.check_permission(req).await;
        }
        if let Ok(req) = pb::DeleteRelationshipsRequest::decode(bytes.as_slice()) {
            let _ = s.permissions.delete_relationships(req).await;
        }
        if let Ok(req) = pb::WriteSchemaRequest::decode(bytes.as_slice()) {
            let _ = s.schema.write_schema(req).await;
        }
    }
    // still serving
    s.schema
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap();
    assert!(!s.handle.as_ref().unwrap().is_finished());
}

#[tokio::test]
async fn lookup_resources_pages_return_each_resource_once() {
    use futures::TryStreamExt;
    let mut s = start(Backend::Memory, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    let n = 1203;
    let all: Vec<_> = (0..n)
        .map(|i| {
            // every third document through the group, one in fifty banned
            let via = if i % 3 == 0 {
                format!("document:d{i:04}#viewer@group:eng#member")
            } else {
                format!("document:d{i:04}#viewer@user:ann")
            };
            (i, via)
        })
        .collect();
    for chunk in all.chunks(900) {
        let mut updates: Vec<_> = chunk.iter().map(|(_, t)| create(t)).collect();
        for (i, _) in chunk.iter().filter(|(i, _)| i % 50 == 7) {
            updates.push(create(&format!("document:d{i:04}#banned@user:ann")));
        }
        s.write(updates).await.unwrap();
    }
    let token = s
        .write(vec![create("group:eng#member@user:ann")])
        .await
        .unwrap();
    let expected: Vec<String> = (0..n)
        .filter(|i| i % 50 != 7)
        .map(|i| format!("d{i:04}"))
        .collect();
    let kept_before = resumes("kept");
    // 0: no limit, the whole answer in one stream (sent a batch of results at a time)
    for size in [0u32, 1, 7, 100, 999, 1000] {
        let mut cursor: Option<pb::Cursor> = None;
        let mut got = Vec::new();
        loop {
            let page: Vec<pb::LookupResourcesResponse> = s
                .permissions
                .lookup_resources(pb::LookupResourcesRequest {
                    consistency: if cursor.is_none() {
                        fresh(&token)
                    } else {
                        None
                    },
                    resource_object_type: "document".into(),
                    permission: "view".into(),
                    subject: Some(subj("user", "ann", "")),
                    optional_limit: size,
                    optional_cursor: cursor.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .try_collect()
                .await
                .unwrap();
            got.extend(page.iter().map(|r| r.resource_object_id.clone()));
            if size == 0 || page.len() < size as usize {
                break;
            }
            cursor = page.last().unwrap().after_result_cursor.clone();
        }
        assert_eq!(got.len(), expected.len(), "page size {size}");
        assert_eq!(
            got, expected,
            "page size {size}: each resource once, in order"
        );
    }
    // The pages after the first took up the walk kept by the page before (1179 results: 1178
    // such pages of 1 alone; a page ending on the last candidate keeps nothing, so the empty
    // page after it walks again).
    let kept = resumes("kept") - kept_before;
    assert!(kept >= 1100, "{kept}");

    // A cursor pins its revision: a resource shared after the first page is not in the rest.
    let page = |cursor: Option<pb::Cursor>| pb::LookupResourcesRequest {
        consistency: if cursor.is_none() {
            fresh(&token)
        } else {
            None
        },
        resource_object_type: "document".into(),
        permission: "view".into(),
        subject: Some(subj("user", "ann", "")),
        optional_limit: 500,
        optional_cursor: cursor,
        ..Default::default()
    };
    let mut got: Vec<String> = Vec::new();
    let mut cursor = None;
    loop {
        let part: Vec<pb::LookupResourcesResponse> = s
            .permissions
            .lookup_resources(page(cursor.clone()))
            .await
            .unwrap()
            .into_inner()
            .try_collect()
            .await
            .unwrap();
        if got.is_empty() {
            s.write(vec![create("document:z9999#viewer@user:ann")])
                .await
                .unwrap();
        }
        got.extend(part.iter().map(|r| r.resource_object_id.clone()));
        if part.len() < 500 {
            break;
        }
        cursor = part.last().unwrap().after_result_cursor.clone();
    }
    assert_eq!(
        got, expected,
        "pages after a write still read the first revision"
    );
    // a cursor from another request is refused
    let first = s
        .permissions
        .lookup_resources(pb::LookupResourcesRequest {
            resource_object_type: "document".into(),
            permission: "view".into(),
            subject: Some(subj("user", "ann", "")),
            optional_limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let err = s
        .permissions
        .lookup_resources(pb::LookupResourcesRequest {
            resource_object_type: "document".into(),
            permission: "edit".into(),
            subject: Some(subj("user", "ann", "")),
            optional_cursor: first[0].after_result_cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_INVALID_CURSOR");
}

/// `pemba_lookup_resources_resumes_total{walk}` in this process (the server runs in it).
fn resumes(walk: &str) -> u64 {
    prometheus::gather()
        .iter()
        .filter(|f| f.name() == "pemba_lookup_resources_resumes_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == walk))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// gRPC server reflection, v1 and v1alpha, as grpcurl uses it: with no key, even when the
/// server requires one, it lists the API's services and serves the descriptor of each.
#[tokio::test]
async fn reflection_lists_and_describes_the_api_without_a_key() {
    use prost::Message as _;
    use tonic_reflection::pb::{v1, v1alpha};
    let s = start(Backend::Memory, Some("secret")).await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(s.channel.clone());
    let ask = |request| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([
            ask(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
            ask(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "authzed.api.v1.PermissionsService".into(),
                ),
            ),
        ]))
        .await
        .unwrap()
        .into_inner();
    let listed = replies.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed.message_response
    else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in [
        "authzed.api.v1.PermissionsService",
        "authzed.api.v1.SchemaService",
    ] {
        assert!(names.contains(&service), "{service} not in {names:?}");
    }
    let described = replies.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        described.message_response
    else {
        panic!("not a descriptor: {described:?}");
    };
    let file = prost_types::FileDescriptorProto::decode(
        files.file_descriptor_proto.first().unwrap().as_slice(),
    )
    .unwrap();
    assert_eq!(file.package(), "authzed.api.v1");
    assert!(
        file.service
            .iter()
            .any(|svc| svc.name() == "PermissionsService"
                && svc.method.iter().any(|m| m.name() == "CheckPermission")),
        "{file:?}"
    );

    let mut old = v1alpha::server_reflection_client::ServerReflectionClient::new(s.channel.clone());
    let mut replies = old
        .server_reflection_info(tokio_stream::iter([v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .unwrap()
        .into_inner();
    let listed = replies.message().await.unwrap().unwrap();
    assert!(
        matches!(
            listed.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(ref l))
                if l.service.iter().any(|s| s.name == "authzed.api.v1.SchemaService")
        ),
        "{listed:?}"
    );
}

/// The Experimental service's older RPCs answer as their stable names do: BulkImport creates
/// (and refuses a duplicate, all or nothing), BulkExport pages with its own larger limit,
/// BulkCheckPermission and ExperimentalReflectSchema give the stable answers field for field.
#[tokio::test]
#[allow(
    deprecated,
    reason = "the Experimental service's RPCs are deprecated in the proto; they are what is tested"
)]
async fn experimental_rpcs_answer_as_their_stable_names() {
    use futures::TryStreamExt;
    use pb::experimental_service_client::ExperimentalServiceClient;
    use prost::Message as _;
    let s = start(Backend::Memory, Some("secret")).await;
    let mut exp = ExperimentalServiceClient::with_interceptor(s.channel.clone(), bearer);
    let mut stable = PermissionsServiceClient::with_interceptor(s.channel.clone(), bearer);
    let mut schema = SchemaServiceClient::with_interceptor(s.channel.clone(), bearer);
    schema
        .write_schema(pb::WriteSchemaRequest {
            schema: SCHEMA.into(),
        })
        .await
        .unwrap();

    let batch = |rels: &[&str]| pb::BulkImportRelationshipsRequest {
        relationships: rels.iter().map(|r| rel(r)).collect(),
    };
    let loaded = exp
        .bulk_import_relationships(tokio_stream::iter([
            batch(&["document:a#owner@user:ann", "document:b#viewer@user:bob"]),
            batch(&[
                "document:c#viewer@group:eng#member",
                "group:eng#member@user:cat",
            ]),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(loaded.num_loaded, 4);
    let err = exp
        .bulk_import_relationships(tokio_stream::iter([batch(&[
            "document:d#owner@user:dan",
            "document:a#owner@user:ann",
        ])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let pages: Vec<pb::BulkExportRelationshipsResponse> = exp
        .bulk_export_relationships(pb::BulkExportRelationshipsRequest {
            consistency: fully_consistent(),
            optional_limit: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .try_collect()
        .await
        .unwrap();
    let sizes: Vec<usize> = pages.iter().map(|p| p.relationships.len()).collect();
    assert_eq!(sizes, [3, 1], "document:d was not imported");
    assert!(pages.iter().all(|p| p.after_result_cursor.is_some()));
    // 100,000 is the experimental RPC's maximum; the stable one stops at 10,000.
    let big = |limit| pb::BulkExportRelationshipsRequest {
        consistency: fully_consistent(),
        optional_limit: limit,
        ..Default::default()
    };
    assert!(exp.bulk_export_relationships(big(100_000)).await.is_ok());
    let err = exp
        .bulk_export_relationships(big(100_001))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let items = [("a", "ann"), ("c", "cat"), ("c", "ann"), ("nope", "ann")];
    let old = exp
        .bulk_check_permission(pb::BulkCheckPermissionRequest {
            consistency: fully_consistent(),
            items: items
                .iter()
                .map(|(doc, user)| pb::BulkCheckPermissionRequestItem {
                    resource: Some(obj("document", doc)),
                    permission: "view".into(),
                    subject: Some(subj("user", user, "")),
                    context: None,
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let new = stable
        .check_bulk_permissions(pb::CheckBulkPermissionsRequest {
            consistency: fully_consistent(),
            items: items
                .iter()
                .map(|(doc, user)| pb::CheckBulkPermissionsRequestItem {
                    resource: Some(obj("document", doc)),
                    permission: "view".into(),
                    subject: Some(subj("user", user, "")),
                    context: None,
                })
                .collect(),
            with_tracing: false,
        })
        .await
        .unwrap()
        .into_inner();
    let has = pb::check_permission_response::Permissionship::HasPermission as i32;
    let answers = |permissionships: Vec<Option<i32>>| {
        permissionships
            .into_iter()
            .map(|p| p == Some(has))
            .collect::<Vec<bool>>()
    };
    let old_answers = answers(
        old.pairs
            .iter()
            .map(|p| match &p.response {
                Some(pb::bulk_check_permission_pair::Response::Item(i)) => Some(i.permissionship),
                _ => None,
            })
            .collect(),
    );
    let new_answers = answers(
        new.pairs
            .iter()
            .map(|p| match &p.response {
                Some(pb::check_bulk_permissions_pair::Response::Item(i)) => Some(i.permissionship),
                _ => None,
            })
            .collect(),
    );
    assert_eq!(old_answers, [true, true, false, false]);
    assert_eq!(old_answers, new_answers);
    assert_eq!(old.checked_at, new.checked_at);

    let reflected = exp
        .experimental_reflect_schema(pb::ExperimentalReflectSchemaRequest {
            consistency: fully_consistent(),
            optional_filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let stable_reflected = schema
        .reflect_schema(pb::ReflectSchemaRequest {
            consistency: fully_consistent(),
            optional_filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let old_names: Vec<String> = reflected
        .definitions
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let new_names: Vec<String> = stable_reflected
        .definitions
        .iter()
        .map(|d| d.name.clone())
        .collect();
    assert_eq!(old_names, new_names);
    let mut sorted = old_names.clone();
    sorted.sort();
    assert_eq!(sorted, ["document", "group", "user"]);
    let doc = reflected
        .definitions
        .iter()
        .find(|d| d.name == "document")
        .unwrap();
    assert!(doc.comment.contains("a document"), "{doc:?}");
    assert_eq!(doc.permissions.len(), 2);
    assert!(
        doc.relations
            .iter()
            .any(|r| r.name == "viewer" && r.subject_types.len() == 3),
        "{doc:?}"
    );

    // The schema RPCs answer as SchemaService's, field for field.
    let comparison = SCHEMA.replace(
        "relation banned: user",
        "relation banned: user | group#member",
    );
    let old_diff = exp
        .experimental_diff_schema(pb::ExperimentalDiffSchemaRequest {
            consistency: fully_consistent(),
            comparison_schema: comparison.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let new_diff = schema
        .diff_schema(pb::DiffSchemaRequest {
            consistency: fully_consistent(),
            comparison_schema: comparison,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old_diff.diffs.len(), 1, "{old_diff:?}");
    assert_eq!(old_diff.encode_to_vec(), new_diff.encode_to_vec());
    let old_computable = exp
        .experimental_computable_permissions(pb::ExperimentalComputablePermissionsRequest {
            consistency: fully_consistent(),
            definition_name: "document".into(),
            relation_name: "owner".into(),
            optional_definition_name_filter: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = old_computable
        .permissions
        .iter()
        .map(|p| p.relation_name.as_str())
        .collect();
    assert_eq!(names, ["edit", "view"], "{old_computable:?}");
    let old_dependent = exp
        .experimental_dependent_relations(pb::ExperimentalDependentRelationsRequest {
            consistency: fully_consistent(),
            definition_name: "document".into(),
            permission_name: "edit".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old_dependent.relations.len(), 1, "{old_dependent:?}");
    assert_eq!(old_dependent.relations[0].relation_name, "owner");

    // The key is required, as on the stable services.
    let err = ExperimentalServiceClient::new(s.channel.clone())
        .bulk_check_permission(pb::BulkCheckPermissionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

fn bearer(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut()
        .insert("authorization", "Bearer secret".parse().unwrap());
    Ok(req)
}

/// The request limits the flags set (SpiceDB's `--max-caveat-context-size`,
/// `--max-relationship-context-size`, `--max-bulk-export-relationships-limit`) are what the
/// server enforces.
#[tokio::test]
async fn configured_limits_are_enforced() {
    let limits = pemba::api::Limits {
        max_caveat_context_bytes: 16,
        max_relationship_context_bytes: 16,
        max_export_limit: 5,
        ..Default::default()
    };
    let store = std::sync::Arc::new(pemba::store::MemoryStore::new());
    let mut s = start_with_limits(store, None, None, limits).await;
    s.write_schema(SCHEMA).await.unwrap();
    let context = prost_types::Struct {
        fields: [(
            "a_long_enough_key".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("value".into())),
            },
        )]
        .into(),
    };
    let err = s
        .permissions
        .check_permission(pb::CheckPermissionRequest {
            consistency: fully_consistent(),
            resource: Some(obj("document", "a")),
            permission: "view".into(),
            subject: Some(subj("user", "ann", "")),
            context: Some(context.clone()),
            with_tracing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("less than 16 bytes"), "{err:?}");

    let mut caveated = rel("document:a#viewer@user:ann");
    caveated.optional_caveat = Some(pb::ContextualizedCaveat {
        caveat_name: "some_caveat".into(),
        context: Some(context),
    });
    let err = s
        .write(vec![pb::RelationshipUpdate {
            operation: pb::relationship_update::Operation::Touch as i32,
            relationship: Some(caveated),
        }])
        .await
        .unwrap_err();
    assert_eq!(
        reason(&err),
        "ERROR_REASON_MAX_RELATIONSHIP_CONTEXT_SIZE",
        "{err:?}"
    );

    let export = |limit| pb::ExportBulkRelationshipsRequest {
        consistency: fully_consistent(),
        optional_limit: limit,
        ..Default::default()
    };
    assert!(
        s.permissions
            .export_bulk_relationships(export(5))
            .await
            .is_ok()
    );
    let err = s
        .permissions
        .export_bulk_relationships(export(6))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&err),
        "ERROR_REASON_EXCEEDS_MAXIMUM_ALLOWABLE_LIMIT",
        "{err:?}"
    );
}

/// Relationship counters, with SpiceDB's semantics: a named filter registered once, counted
/// live at the head, unregistered; SpiceDB's errors and reasons for the misuses.
#[tokio::test]
async fn relationship_counters() {
    use pb::experimental_service_client::ExperimentalServiceClient;
    let mut s = start(Backend::Rocks, None).await;
    s.write_schema(SCHEMA).await.unwrap();
    s.write(vec![
        create("document:a#viewer@user:ann"),
        create("document:b#viewer@user:ann"),
        create("document:b#owner@user:bob"),
    ])
    .await
    .unwrap();
    let mut exp = ExperimentalServiceClient::new(s.channel.clone());
    let register =
        |name: &str, resource_type: &str| pb::ExperimentalRegisterRelationshipCounterRequest {
            name: name.into(),
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: resource_type.into(),
                optional_relation: "viewer".into(),
                ..Default::default()
            }),
        };
    let count = |name: &str| pb::ExperimentalCountRelationshipsRequest { name: name.into() };
    exp.experimental_register_relationship_counter(register("viewers", "document"))
        .await
        .unwrap();
    let err = exp
        .experimental_register_relationship_counter(register("viewers", "document"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "ERROR_REASON_COUNTER_ALREADY_REGISTERED");
    let err = exp
        .experimental_register_relationship_counter(register("", "document"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = exp
        .experimental_register_relationship_counter(register("other", "nosuchtype"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_UNKNOWN_DEFINITION", "{err:?}");

    let counted = |r: pb::ExperimentalCountRelationshipsResponse| match r.counter_result {
        Some(pb::experimental_count_relationships_response::CounterResult::ReadCounterValue(v)) => {
            v.relationship_count
        }
        other => panic!("no count: {other:?}"),
    };
    let n = exp
        .experimental_count_relationships(count("viewers"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted(n), 2);
    s.write(vec![create("document:c#viewer@user:cat")])
        .await
        .unwrap();
    let n = exp
        .experimental_count_relationships(count("viewers"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted(n), 3, "counted live at the head");

    let err = exp
        .experimental_count_relationships(count("nosuch"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_COUNTER_NOT_REGISTERED");
    exp.experimental_unregister_relationship_counter(
        pb::ExperimentalUnregisterRelationshipCounterRequest {
            name: "viewers".into(),
        },
    )
    .await
    .unwrap();
    let err = exp
        .experimental_count_relationships(count("viewers"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_COUNTER_NOT_REGISTERED");
    let err = exp
        .experimental_unregister_relationship_counter(
            pb::ExperimentalUnregisterRelationshipCounterRequest {
                name: "viewers".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_COUNTER_NOT_REGISTERED");
}
