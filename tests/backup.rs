//! Backups end to end: online checkpoints, restore, and export/import of a data file.
//!
//! An online checkpoint of a RocksDB server taken while a writer keeps writing, restored with
//! `pemba backup restore`, served again and compared with the source; `pemba backup export` /
//! `import` of a schema-and-relationships file, plain and over TLS.

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

// ---- export to and import from a file ----

const EXPORT_SCHEMA: &str = r#"use expiration

/** numbers, text and lists in the context */
caveat ctx(f double, s string, l list<int>) {
  f > 0.0 || s == "x" || 1 in l
}

definition user {}

definition group {
  relation member: user | group#member
}

definition document {
  relation viewer: user | user:* | group#member | user with ctx | user with expiration | user with ctx and expiration
  permission view = viewer
}
"#;

/// Every relationship of every definition of [`EXPORT_SCHEMA`], as sorted debug strings of the
/// wire message (caveat context and expiration included, bit for bit).
async fn everything(channel: &Channel) -> Vec<String> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    for resource_type in ["document", "group", "user"] {
        let rows: Vec<pb::ReadRelationshipsResponse> =
            PermissionsServiceClient::new(channel.clone())
                .read_relationships(authed(pb::ReadRelationshipsRequest {
                    consistency: common::fully_consistent(),
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

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

fn text(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.into())),
    }
}

fn with_ctx(mut r: pb::Relationship, f: f64, s: &str) -> pb::Relationship {
    let list = prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(
            prost_types::ListValue {
                values: vec![number(1.0), number(-7.0)],
            },
        )),
    };
    r.optional_caveat = Some(pb::ContextualizedCaveat {
        caveat_name: "ctx".into(),
        context: Some(prost_types::Struct {
            fields: [
                ("f".to_string(), number(f)),
                ("s".to_string(), text(s)),
                ("l".to_string(), list),
            ]
            .into_iter()
            .collect(),
        }),
    });
    r
}

fn expiring(mut r: pb::Relationship, seconds: i64, nanos: i32) -> pb::Relationship {
    r.optional_expires_at = Some(prost_types::Timestamp { seconds, nanos });
    r
}

fn touches(rels: Vec<pb::Relationship>) -> Vec<pb::RelationshipUpdate> {
    rels.into_iter()
        .map(|r| pb::RelationshipUpdate {
            operation: pb::relationship_update::Operation::Touch as i32,
            relationship: Some(r),
        })
        .collect()
}

/// A server on the memory store with [`EXPORT_SCHEMA`], every kind of relationship, and more
/// than one page of plain ones.
async fn exported_source() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let source = serve(Arc::new(MemoryStore::new()), dir.path()).await;
    SchemaServiceClient::new(source.channel.clone())
        .write_schema(authed(pb::WriteSchemaRequest {
            schema: EXPORT_SCHEMA.into(),
        }))
        .await
        .unwrap();
    let special = vec![
        rel("document:plan#viewer@user:ann"),
        rel("document:plan#viewer@user:*"),
        rel("document:plan#viewer@group:eng#member"),
        rel("group:eng#member@group:ops#member"),
        rel("group:ops#member@user:bob"),
        with_ctx(rel("document:plan#viewer@user:cara"), 0.1, "x"),
        with_ctx(
            rel("document:spec#viewer@user:cara"),
            -2.485_345_291_976_323_5e-142,
            "quote \" bracket ]} line\nbreak \u{2028} é",
        ),
        expiring(rel("document:plan#viewer@user:eve"), 10_413_792_000, 0),
        expiring(
            with_ctx(rel("document:spec#viewer@user:eve"), 1e300, ""),
            10_413_792_001,
            123_456_789,
        ),
    ];
    write(&source.channel, touches(special)).await;
    for chunk in 0..3 {
        let rels = (0..900)
            .map(|i| rel(&format!("document:d{chunk}-{i}#viewer@user:u{i}")))
            .collect();
        write(&source.channel, touches(rels)).await;
    }
    source
}

/// Runs the binary with `args` off the async runtime.
async fn run_pemba(args: Vec<String>, key: Option<&'static str>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pemba"));
        command.args(&args).env_remove("PEMBA_TOKEN");
        if let Some(key) = key {
            command.env("PEMBA_TOKEN", key);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_and_import_carry_the_schema_and_every_relationship() {
    let source = exported_source().await;
    let want = everything(&source.channel).await;
    assert_eq!(want.len(), 9 + 2700);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.yaml");
    let out = run_pemba(
        strings(&[
            "backup",
            "export",
            "--endpoint",
            &source.addr.to_string(),
            "--preshared-key",
            KEY,
            "--output",
            file.to_str().unwrap(),
        ]),
        None,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "export failed: {stderr}");
    assert!(stderr.contains("revision: "), "{stderr}");
    assert!(stderr.contains("relationships: 2709"), "{stderr}");
    // Only the file is left in the directory (the temporary one was renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // The same to stdout.
    let to_stdout = run_pemba(
        strings(&["backup", "export", "--endpoint", &source.addr.to_string()]),
        Some(KEY),
    )
    .await;
    assert!(to_stdout.status.success());
    assert_eq!(to_stdout.stdout, std::fs::read(&file).unwrap());

    // Any YAML reader sees a `schema` string and a `relationships` string of one line each.
    let text = std::fs::read_to_string(&file).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(
        doc["schema"].as_str().unwrap(),
        EXPORT_SCHEMA.trim_end(),
        "{text}"
    );
    let lines: Vec<&str> = doc["relationships"].as_str().unwrap().lines().collect();
    assert_eq!(lines.len(), 2709);
    let eve = "document:spec#viewer@user:eve[ctx:{\"f\":1e+300,\"l\":[1,-7],\"s\":\"\"}][expiration:2300-01-01T00:00:01.123456789Z]";
    assert!(
        lines.contains(&eve),
        "{:?}",
        lines
            .iter()
            .filter(|l| l.contains("spec"))
            .collect::<Vec<_>>()
    );
    assert!(lines.contains(&"document:plan#viewer@user:*"));
    assert!(lines.contains(&"group:eng#member@group:ops#member"));

    // Into a fresh server, with the key from the environment.
    let target_dir = tempfile::tempdir().unwrap();
    let target = serve(Arc::new(MemoryStore::new()), target_dir.path()).await;
    let out = run_pemba(
        strings(&[
            "backup",
            "import",
            file.to_str().unwrap(),
            "--endpoint",
            &target.addr.to_string(),
        ]),
        Some(KEY),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("relationships: 2709"), "{stdout}");
    // the same text but for the final newline, which a `|-` block does not keep
    assert_eq!(schema_text(&target.channel).await, EXPORT_SCHEMA.trim_end());
    let got = everything(&target.channel).await;
    assert!(
        got == want,
        "the import differs: {:?}",
        got.iter().zip(&want).find(|(g, w)| g != w).map_or(
            format!("{} and {} relationships", got.len(), want.len()),
            |d| format!("{d:?}")
        )
    );
    // Importing again into the same server fails (they exist) and changes nothing.
    let again = run_pemba(
        strings(&[
            "backup",
            "import",
            file.to_str().unwrap(),
            "--skip-schema",
            "--endpoint",
            &target.addr.to_string(),
        ]),
        Some(KEY),
    )
    .await;
    assert!(!again.status.success(), "a second import succeeded");
    assert_eq!(everything(&target.channel).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_text_file_of_relationships_imports_against_the_servers_schema() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(Arc::new(MemoryStore::new()), dir.path()).await;
    SchemaServiceClient::new(server.channel.clone())
        .write_schema(authed(pb::WriteSchemaRequest {
            schema: EXPORT_SCHEMA.into(),
        }))
        .await
        .unwrap();
    let file = dir.path().join("rels.txt");
    std::fs::write(
        &file,
        "// people\ndocument:plan#viewer@user:ann\n\n  group:eng#member@user:bob  \r\n\
         document:plan#viewer@group:eng#member\n\
         document:plan#viewer@user:cara[ctx:{\"f\":2.5,\"s\":\"y\",\"l\":[]}][expiration:2300-01-01T00:00:00.5Z]\n",
    )
    .unwrap();
    let out = run_pemba(
        strings(&[
            "backup",
            "import",
            file.to_str().unwrap(),
            "--endpoint",
            &server.addr.to_string(),
            "--token",
            KEY,
        ]),
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cara = with_ctx(rel("document:plan#viewer@user:cara"), 2.5, "y");
    if let Some(c) = cara
        .optional_caveat
        .as_mut()
        .and_then(|c| c.context.as_mut())
    {
        c.fields.insert(
            "l".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::ListValue(
                    prost_types::ListValue::default(),
                )),
            },
        );
    }
    let mut want: Vec<String> = [
        rel("document:plan#viewer@user:ann"),
        rel("group:eng#member@user:bob"),
        rel("document:plan#viewer@group:eng#member"),
        expiring(cara, 10_413_792_000, 500_000_000),
    ]
    .into_iter()
    .map(|r| format!("{r:?}"))
    .collect();
    want.sort();
    assert_eq!(everything(&server.channel).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_line_fails_naming_it_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(Arc::new(MemoryStore::new()), dir.path()).await;
    let schema_block = schema_yaml();
    let schema_lines = schema_block.lines().count();
    for (bad, what) in [
        ("document:plan#viewer@user", "not `type:id`"),
        ("document:plan#nosuch@user:ann", "nosuch"),
        (
            "document:plan#viewer@user:ann[ctx:{\"f\":1]",
            "caveat context",
        ),
        (
            "document:plan#viewer@user:ann[expiration:2300-13-01T00:00:00Z]",
            "expiration",
        ),
    ] {
        let file = dir.path().join("bad.yaml");
        std::fs::write(
            &file,
            format!(
                "{schema_block}relationships: |-\n  document:plan#viewer@user:ann\n  // ok so far\n  {bad}\n  document:plan#viewer@user:bob\n"
            ),
        )
        .unwrap();
        let bad_line = schema_lines + 4;
        let out = run_pemba(
            strings(&[
                "backup",
                "import",
                file.to_str().unwrap(),
                "--endpoint",
                &server.addr.to_string(),
            ]),
            Some(KEY),
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: import accepted");
        assert!(
            stderr.contains(&format!("bad.yaml:{bad_line}:")) && stderr.contains(what),
            "{bad}: the error does not name line {bad_line} and `{what}`: {stderr}"
        );
        // Nothing was written: not even the schema.
        let err = SchemaServiceClient::new(server.channel.clone())
            .read_schema(authed(pb::ReadSchemaRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{bad}: {err:?}");
    }
}

/// [`EXPORT_SCHEMA`] as the `schema: |-` block an export writes.
fn schema_yaml() -> String {
    let mut yaml = String::from("schema: |-\n");
    for line in EXPORT_SCHEMA.lines() {
        if line.is_empty() {
            yaml.push('\n');
        } else {
            yaml += &format!("  {line}\n");
        }
    }
    yaml
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_and_import_over_tls_trust_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let port = common::free_port();
    let mut child = common::serve_command(port)
        .args(["--datastore", "memory", "--grpc-preshared-key", KEY])
        .arg("--grpc-tls-cert-path")
        .arg(&cert_path)
        .arg("--grpc-tls-key-path")
        .arg(dir.path().join("key.pem"))
        .spawn()
        .unwrap();
    common::wait_listening(&mut child, port, std::time::Duration::from_secs(30));
    let endpoint = format!("localhost:{port}");
    let ca = cert_path.to_str().unwrap().to_string();

    let input = dir.path().join("in.yaml");
    let mut yaml = schema_yaml();
    yaml += "relationships: |-\n  document:plan#viewer@user:ann\n  group:eng#member@user:bob\n";
    std::fs::write(&input, &yaml).unwrap();
    let import = |extra: &[&str]| {
        let mut args = strings(&["backup", "import", input.to_str().unwrap(), "--endpoint"]);
        args.push(endpoint.clone());
        args.extend(strings(extra));
        run_pemba(args, Some(KEY))
    };
    // Without the CA the server's certificate is not trusted.
    let untrusted = import(&[]).await;
    assert!(!untrusted.status.success(), "plaintext import accepted");
    let imported = import(&["--ca-cert", &ca]).await;
    assert!(
        imported.status.success(),
        "import over TLS failed: {}",
        String::from_utf8_lossy(&imported.stderr)
    );

    let output = dir.path().join("out.yaml");
    let export = |extra: &[&str]| {
        let mut args = strings(&["backup", "export", "--output", output.to_str().unwrap()]);
        args.extend(strings(&["--endpoint", &format!("https://{endpoint}")]));
        args.extend(strings(extra));
        run_pemba(args, Some(KEY))
    };
    let no_ca = export(&[]).await;
    assert!(!no_ca.status.success(), "https without --ca-cert accepted");
    assert!(!output.exists());
    let exported = export(&["--ca-cert", &ca]).await;
    assert!(
        exported.status.success(),
        "export over TLS failed: {}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        yaml.trim_end().to_string() + "\n"
    );

    // `backup create` takes the CA too; the memory store has no checkpoints, which the server
    // says over TLS.
    let args = strings(&[
        "backup",
        "create",
        "b1",
        "--endpoint",
        &endpoint,
        "--ca-cert",
        &ca,
    ]);
    let created = run_pemba(args, Some(KEY)).await;
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(
        !created.status.success() && stderr.contains("FailedPrecondition"),
        "{stderr}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
