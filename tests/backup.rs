//! Backups end to end: an online checkpoint of a RocksDB server taken while a writer keeps
//! writing, restored with `pemba backup restore`, served again and compared with the source.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{PermissionsServiceClient, SchemaServiceClient, TestServer, rel, touch};
use pemba::api::Limits;
use pemba::api::proto::authzed::api::v1 as pb;
use pemba::api::proto::pemba::admin::v1 as admin;
use pemba::server::ServerOptions;
use pemba::store::{Datastore, MemoryStore, RocksStore};
use tonic::transport::Channel;

const KEY: &str = "backup-test-key";

const SCHEMA: &str = r#"use expiration

caveat allowed(ok bool) {
  ok
}

definition user {}

definition document {
  relation viewer: user | user with allowed | user with expiration
  permission view = viewer
}
"#;

/// A server over `store` writing backups under `backup_dir`, with the key; stops when dropped.
async fn serve(store: Arc<dyn Datastore>, backup_dir: &Path) -> TestServer {
    let options = ServerOptions {
        preshared_keys: vec![KEY.to_string()],
        backup_dir: backup_dir.to_path_buf(),
        ..ServerOptions::default()
    };
    common::start_with_options(store, None, options, Limits::default()).await
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    r
}

async fn write(channel: &Channel, updates: Vec<pb::RelationshipUpdate>) -> pb::ZedToken {
    PermissionsServiceClient::new(channel.clone())
        .write_relationships(authed(pb::WriteRelationshipsRequest {
            updates,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap()
}

/// Every relationship at `consistency`, as sorted debug strings (caveat context and
/// expiration included).
async fn all_relationships(
    channel: &Channel,
    consistency: pb::consistency::Requirement,
) -> Vec<String> {
    use futures::TryStreamExt;
    let mut out: Vec<String> = Vec::new();
    for resource_type in ["document"] {
        let rows: Vec<pb::ReadRelationshipsResponse> =
            PermissionsServiceClient::new(channel.clone())
                .read_relationships(authed(pb::ReadRelationshipsRequest {
                    consistency: Some(pb::Consistency {
                        requirement: Some(consistency.clone()),
                    }),
                    relationship_filter: Some(pb::RelationshipFilter {
                        resource_type: resource_type.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .try_collect()
                .await
                .unwrap();
        out.extend(
            rows.into_iter()
                .map(|r| format!("{:?}", r.relationship.unwrap())),
        );
    }
    out.sort();
    out
}

async fn schema_text(channel: &Channel) -> String {
    SchemaServiceClient::new(channel.clone())
        .read_schema(authed(pb::ReadSchemaRequest {}))
        .await
        .unwrap()
        .into_inner()
        .schema_text
}

fn special_relationships() -> Vec<pb::RelationshipUpdate> {
    let mut caveated = rel("document:plan#viewer@user:cara");
    caveated.optional_caveat = Some(pb::ContextualizedCaveat {
        caveat_name: "allowed".into(),
        context: Some(prost_types::Struct {
            fields: [(
                "ok".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::BoolValue(true)),
                },
            )]
            .into_iter()
            .collect(),
        }),
    });
    let mut expiring = rel("document:plan#viewer@user:eve");
    expiring.optional_expires_at = Some(prost_types::Timestamp {
        seconds: 10_413_792_000, // 2300-01-01
        nanos: 0,
    });
    [caveated, expiring]
        .into_iter()
        .map(|r| pb::RelationshipUpdate {
            operation: pb::relationship_update::Operation::Touch as i32,
            relationship: Some(r),
        })
        .collect()
}

fn pemba(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args(args)
        .env_remove("PEMBA_TOKEN")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_during_writes_restores_to_the_same_state() {
    let data = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let source = serve(
        Arc::new(RocksStore::open(data.path()).unwrap()),
        backups.path(),
    )
    .await;
    SchemaServiceClient::new(source.channel.clone())
        .write_schema(authed(pb::WriteSchemaRequest {
            schema: SCHEMA.into(),
        }))
        .await
        .unwrap();
    write(&source.channel, special_relationships()).await;
    write(
        &source.channel,
        vec![touch("document:plan#viewer@user:ann")],
    )
    .await;

    // A writer that keeps writing while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let channel = source.channel.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                write(
                    &channel,
                    vec![touch(&format!("document:d{n}#viewer@user:u{n}"))],
                )
                .await;
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Through the CLI, with the preshared key from the environment.
    let addr = source.addr.to_string();
    let created = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pemba"))
            .args(["backup", "create", "nightly-1", "--endpoint", &addr])
            .env("PEMBA_TOKEN", KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        created.status.success(),
        "backup create failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).unwrap();
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("revision: "))
        .expect("no revision printed")
        .to_string();
    let backup_path = backups.path().join("nightly-1");
    assert!(
        stdout.contains(&backup_path.display().to_string()),
        "{stdout}"
    );

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 0, "the writer wrote nothing");

    let at_backup = pb::consistency::Requirement::AtExactSnapshot(pb::ZedToken {
        token: token.clone(),
    });
    let source_rels = all_relationships(&source.channel, at_backup.clone()).await;
    let source_head = all_relationships(
        &source.channel,
        pb::consistency::Requirement::FullyConsistent(true),
    )
    .await;
    assert!(
        source_rels.len() < source_head.len(),
        "the writer wrote nothing after the backup: the test would not show consistency"
    );
    let source_schema = schema_text(&source.channel).await;

    // A second backup of the same name is refused.
    let again = admin::backup_service_client::BackupServiceClient::new(source.channel.clone())
        .create_backup(authed(admin::CreateBackupRequest {
            name: "nightly-1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");

    // Restore into a new data dir with the CLI, serve it, compare.
    let restored_dir = tempfile::tempdir().unwrap();
    let target = restored_dir.path().join("data");
    let out = pemba(&[
        "backup",
        "restore",
        "--from",
        backup_path.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second restore into the now non-empty dir is refused without --force.
    let refused = pemba(&[
        "backup",
        "restore",
        "--from",
        backup_path.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(
        !refused.status.success(),
        "restore over existing data accepted"
    );

    let restored_backups = tempfile::tempdir().unwrap();
    let restored = serve(
        Arc::new(RocksStore::open(&target).unwrap()),
        restored_backups.path(),
    )
    .await;
    assert_eq!(schema_text(&restored.channel).await, source_schema);
    let restored_rels = all_relationships(
        &restored.channel,
        pb::consistency::Requirement::FullyConsistent(true),
    )
    .await;
    assert!(
        restored_rels == source_rels,
        "the restored store holds {} relationships, the source {} at the backup's revision",
        restored_rels.len(),
        source_rels.len()
    );
    // The restored store is at the backup's revision: its token reads there too.
    assert_eq!(
        all_relationships(&restored.channel, at_backup).await,
        source_rels
    );
    assert!(
        source_rels.iter().any(|r| r.contains("allowed"))
            && source_rels.iter().any(|r| r.contains("10413792000")),
        "the caveated and expiring relationships are missing: {source_rels:?}"
    );
    drop(source);
    drop(restored);
}

#[tokio::test]
async fn backup_names_must_be_one_plain_component() {
    let backups = tempfile::tempdir().unwrap();
    let root = backups.path().join("root");
    let server = serve(
        Arc::new(RocksStore::open(&backups.path().join("data")).unwrap()),
        &root,
    )
    .await;
    let mut client = admin::backup_service_client::BackupServiceClient::new(server.channel.clone());
    for bad in ["../x", "a/b", "", ".", "..", "/abs"] {
        let err = client
            .create_backup(authed(admin::CreateBackupRequest { name: bad.into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
    }
    assert!(!backups.path().join("x").exists());
    // Without the preshared key the service refuses.
    let err = client
        .create_backup(admin::CreateBackupRequest { name: "ok".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(!root.join("ok").exists());
    // A good name works.
    let ok = client
        .create_backup(authed(admin::CreateBackupRequest { name: "ok".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(root.join("ok").join("CURRENT").is_file(), "{ok:?}");
    assert!(ok.backup_revision.is_some());
    if let Some(handle) = &server.handle {
        handle.abort();
    }
}

#[tokio::test]
async fn the_memory_store_refuses_backups() {
    let backups = tempfile::tempdir().unwrap();
    let server = serve(Arc::new(MemoryStore::new()), backups.path()).await;
    let err = admin::backup_service_client::BackupServiceClient::new(server.channel.clone())
        .create_backup(authed(admin::CreateBackupRequest { name: "m".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        common::reason(&err),
        "PEMBA_ERROR_REASON_UNSUPPORTED_BY_DATASTORE"
    );
}
