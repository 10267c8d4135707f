//! SchemaService's questions about the schema over gRPC: DiffSchema, ComputablePermissions and
//! DependentRelations, with a real tonic client against a real server on port 0; and schemas
//! WriteSchema must accept because SpiceDB does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::*;
use pb::reflection_schema_diff::Diff;
use pemba::api::proto::authzed::api::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

const STORED: &str = "
definition user {}

definition folder {
    relation viewer: user
    permission view = viewer
}

/** a document */
definition document {
    relation parent: folder
    relation viewer: user
    permission view = viewer + parent->view
}
";

fn metadata(status: &tonic::Status, key: &str) -> String {
    status
        .get_details_error_info()
        .and_then(|i| i.metadata.get(key).cloned())
        .unwrap_or_default()
}

fn refs(list: &[pb::ReflectionRelationReference]) -> Vec<String> {
    list.iter()
        .map(|r| {
            format!(
                "{}#{}{}",
                r.definition_name,
                r.relation_name,
                if r.is_permission { " (permission)" } else { "" }
            )
        })
        .collect()
}

async fn diff(s: &mut TestServer, comparison: &str) -> Result<Vec<Diff>, tonic::Status> {
    let out = s
        .schema
        .diff_schema(pb::DiffSchemaRequest {
            consistency: fully_consistent(),
            comparison_schema: comparison.into(),
        })
        .await?
        .into_inner();
    assert!(out.read_at.is_some());
    Ok(out.diffs.into_iter().map(|d| d.diff.unwrap()).collect())
}

#[tokio::test]
async fn diff_schema_reports_changes_from_the_stored_schema() {
    let mut s = start(Backend::Memory, None).await;
    // nothing stored: everything is added
    let diffs = diff(&mut s, "definition user {}").await.unwrap();
    assert!(
        matches!(&diffs[..], [Diff::DefinitionAdded(d)] if d.name == "user"),
        "{diffs:?}"
    );

    s.write_schema(STORED).await.unwrap();
    assert!(diff(&mut s, STORED).await.unwrap().is_empty());

    let comparison = "
definition user {}

definition group {
    relation member: user
}

definition folder {
    relation viewer: user
    permission view = viewer
}

/** a document, changed */
definition document {
    relation parent: folder
    relation viewer: user | group#member
    relation editor: user
    permission view = viewer + editor + parent->view
}

caveat adult(age int) { age >= 18 }
";
    let diffs = diff(&mut s, comparison).await.unwrap();
    assert_eq!(diffs.len(), 6, "{diffs:?}");
    assert!(
        matches!(&diffs[0], Diff::DefinitionAdded(d) if d.name == "group" && d.relations.len() == 1)
    );
    assert!(
        matches!(&diffs[1], Diff::CaveatAdded(c) if c.name == "adult" && c.expression == "age >= 18")
    );
    assert!(
        matches!(&diffs[2], Diff::DefinitionDocCommentChanged(d) if d.comment.contains("changed"))
    );
    assert!(
        matches!(&diffs[3], Diff::RelationAdded(r) if r.name == "editor" && r.parent_definition_name == "document")
    );
    assert!(
        matches!(&diffs[4], Diff::PermissionExprChanged(p) if p.name == "view" && p.parent_definition_name == "document")
    );
    match &diffs[5] {
        Diff::RelationSubjectTypeAdded(change) => {
            let relation = change.relation.as_ref().unwrap();
            assert_eq!(relation.name, "viewer");
            // the comparison's relation, with both types
            assert_eq!(relation.subject_types.len(), 2);
            let t = change.changed_subject_type.as_ref().unwrap();
            assert_eq!(t.subject_definition_name, "group");
            assert_eq!(
                t.typeref,
                Some(pb::reflection_type_reference::Typeref::OptionalRelationName("member".into()))
            );
        }
        other => panic!("{other:?}"),
    }

    // removals carry the stored version
    let diffs = diff(&mut s, "definition user {}").await.unwrap();
    let removed: Vec<&str> = diffs
        .iter()
        .map(|d| match d {
            Diff::DefinitionRemoved(d) => d.name.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(removed, ["document", "folder"]);
    assert!(matches!(&diffs[0], Diff::DefinitionRemoved(d) if d.comment.contains("a document")));

    // the comparison is compiled, not type checked, as in SpiceDB
    let diffs = diff(
        &mut s,
        "definition user {}\ndefinition extra { relation owner: nosuchtype }",
    )
    .await
    .unwrap();
    assert!(
        diffs
            .iter()
            .any(|d| matches!(d, Diff::DefinitionAdded(d) if d.name == "extra"))
    );

    // what does not compile is INVALID_ARGUMENT
    let err = diff(&mut s, "definition user {").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "ERROR_REASON_SCHEMA_PARSE_ERROR");
}

#[tokio::test]
async fn diff_schema_reports_caveat_changes() {
    let mut s = start(Backend::Memory, None).await;
    s.write_schema("caveat c(a int, b string) { a > 1 && b == '' }\ndefinition user {}")
        .await
        .unwrap();
    let diffs = diff(
        &mut s,
        "caveat c(a string, d int) { a == '' && d > 1 }\ndefinition user {}",
    )
    .await
    .unwrap();
    assert_eq!(diffs.len(), 4, "{diffs:?}");
    assert!(
        matches!(&diffs[0], Diff::CaveatParameterRemoved(p) if p.name == "b" && p.r#type == "string" && p.parent_caveat_name == "c")
    );
    assert!(
        matches!(&diffs[1], Diff::CaveatParameterAdded(p) if p.name == "d" && p.r#type == "int")
    );
    match &diffs[2] {
        Diff::CaveatParameterTypeChanged(change) => {
            assert_eq!(change.previous_type, "int");
            assert_eq!(change.parameter.as_ref().unwrap().r#type, "string");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&diffs[3], Diff::CaveatExprChanged(c) if c.expression == "a == '' && d > 1"));
}

#[tokio::test]
async fn computable_permissions_and_dependent_relations() {
    let mut s = start(Backend::Memory, None).await;
    // no schema: the definition is unknown
    let err = s
        .schema
        .computable_permissions(pb::ComputablePermissionsRequest {
            definition_name: "user".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "ERROR_REASON_UNKNOWN_DEFINITION");

    s.write_schema(STORED).await.unwrap();
    let got = s
        .schema
        .computable_permissions(pb::ComputablePermissionsRequest {
            consistency: fully_consistent(),
            definition_name: "user".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.read_at.is_some());
    assert_eq!(
        refs(&got.permissions),
        [
            "document#view (permission)",
            "document#viewer",
            "folder#view (permission)",
            "folder#viewer",
        ]
    );
    let got = s
        .schema
        .computable_permissions(pb::ComputablePermissionsRequest {
            definition_name: "folder".into(),
            relation_name: "viewer".into(),
            optional_definition_name_filter: "fol".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refs(&got.permissions), ["folder#view (permission)"]);

    let err = s
        .schema
        .computable_permissions(pb::ComputablePermissionsRequest {
            definition_name: "folder".into(),
            relation_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION");
    assert_eq!(
        err.message(),
        "relation/permission `nope` not found under definition `folder`"
    );
    assert_eq!(metadata(&err, "definition_name"), "folder");

    let got = s
        .schema
        .dependent_relations(pb::DependentRelationsRequest {
            consistency: fully_consistent(),
            definition_name: "document".into(),
            permission_name: "view".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.read_at.is_some());
    assert_eq!(
        refs(&got.relations),
        [
            "document#parent",
            "document#viewer",
            "folder#view (permission)",
            "folder#viewer",
        ]
    );

    let err = s
        .schema
        .dependent_relations(pb::DependentRelationsRequest {
            definition_name: "document".into(),
            permission_name: "viewer".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "the relation `viewer` is not a permission");
    assert_eq!(reason(&err), "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION");

    let err = s
        .schema
        .dependent_relations(pb::DependentRelationsRequest {
            definition_name: "nosuch".into(),
            permission_name: "view".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "object definition `nosuch` not found");
    assert_eq!(reason(&err), "ERROR_REASON_UNKNOWN_DEFINITION");
}

#[tokio::test]
async fn write_schema_accepts_what_spicedb_accepts() {
    let mut s = start(Backend::Memory, None).await;
    // a wildcard reached through a subject relation of the same definition
    s.write_schema(
        "definition user {}\ndefinition team {\n relation member: user | user:*\n relation lead: team#member | user\n}",
    )
    .await
    .unwrap();
    // an annotation naming no definition, without `use typechecking`
    s.write_schema(
        "definition user {}\ndefinition doc {\n relation viewer: user\n permission view: user | nosuch = viewer\n}",
    )
    .await
    .unwrap();
    // ... refused with it
    let err = s
        .write_schema(
            "use typechecking\ndefinition user {}\ndefinition doc {\n relation viewer: user\n permission view: user | nosuch = viewer\n}",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "ERROR_REASON_SCHEMA_TYPE_ERROR");
}
