//! `pemba serve --datastore postgres` as an operator runs it: migrations first, then servers
//! whose data outlives kill -9, several nodes on one database.
//!
//! Needs the PostgreSQL `.ci/run` starts (`PEMBA_TEST_POSTGRES_URL`); without it each test
//! says it skipped, unless `PEMBA_REQUIRE_POSTGRES` is set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{
    PermissionsServiceClient, SchemaServiceClient, create, free_port, fresh, fully_consistent,
    serve_command, touch, update, wait_listening,
};
use pb::watch_service_client::WatchServiceClient;
use pemba::api::proto::authzed::api::v1 as pb;

fn pemba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args(args)
        .env("PEMBA_LOG", "warn")
        .env_remove("PEMBA_TOKEN")
        .env(
            "PEMBA_CONFIG_DIR",
            std::env::temp_dir().join("pemba-pg-test-none"),
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn serve(uri: &str) -> (Child, u16) {
    let port = free_port();
    let mut child = serve_command(port)
        .args(["--datastore", "postgres", "--datastore-conn-uri", uri])
        .args(["--metrics-enabled=false"])
        .spawn()
        .unwrap();
    wait_listening(&mut child, port, Duration::from_secs(30));
    (child, port)
}

/// `pemba serve` on the database `uri`, expected to refuse to start: its output.
fn serve_refused(uri: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args([
            "serve",
            "--datastore",
            "postgres",
            "--datastore-conn-uri",
            uri,
        ])
        .args(["--grpc-addr", "127.0.0.1:0", "--metrics-enabled=false"])
        .output()
        .unwrap()
}

fn at(port: u16, args: &[&str]) -> Output {
    let endpoint = format!("127.0.0.1:{port}");
    let mut all = args.to_vec();
    all.extend_from_slice(&["--endpoint", &endpoint]);
    pemba(&all)
}

/// The tests of this file take turns: one of them stops the database.
static DATABASE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This test's turn on the database, and a new schema in it, migrated. `None` (the test
/// skips) without PostgreSQL, or, for a test that `restarts` it, without the commands to stop
/// and start it (`.ci/run` gives both).
fn migrated(restarts: bool) -> Option<(std::sync::MutexGuard<'static, ()>, String)> {
    let turn = DATABASE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let uri = pemba::store::postgres_test_schema_uri()?;
    if restarts && std::env::var_os("PEMBA_TEST_POSTGRES_STOP").is_none() {
        assert!(std::env::var_os("PEMBA_REQUIRE_POSTGRES").is_none());
        eprintln!("skipped: no PEMBA_TEST_POSTGRES_STOP / _START (as .ci/run sets them)");
        return None;
    }
    assert!(
        pemba(&["datastore", "migrate", "--datastore-conn-uri", &uri])
            .status
            .success()
    );
    Some((turn, uri))
}

/// Migrations are required and repeatable; the data survives kill -9.
#[test]
fn a_postgres_datastore_is_migrated_and_durable() {
    let _turn = DATABASE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(uri) = pemba::store::postgres_test_schema_uri() else {
        return;
    };

    // Without a URI, and before the migrations: refused with what to do.
    let no_uri = Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args([
            "serve",
            "--datastore",
            "postgres",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .env_remove("PEMBA_DATASTORE_CONN_URI")
        .output()
        .unwrap();
    assert_eq!(no_uri.status.code(), Some(3));
    assert!(
        text(&no_uri).contains("--datastore-conn-uri"),
        "{}",
        text(&no_uri)
    );
    let unmigrated = serve_refused(&uri);
    assert_eq!(unmigrated.status.code(), Some(3));
    assert!(
        text(&unmigrated).contains("pemba datastore migrate"),
        "{}",
        text(&unmigrated)
    );

    let migrated = pemba(&["datastore", "migrate", "--datastore-conn-uri", &uri]);
    assert!(migrated.status.success(), "{}", text(&migrated));
    assert!(
        text(&migrated).contains("from schema version 0 to 1"),
        "{}",
        text(&migrated)
    );
    let again = pemba(&["datastore", "migrate", "--datastore-conn-uri", &uri]);
    assert!(text(&again).contains("nothing to do"), "{}", text(&again));

    // Write through the first server, kill -9 it, and read everything back from a new one.
    let (mut first, port) = serve(&uri);
    let wrote = at(port, &["schema", "write", "schema/document_sharing.zed"]);
    assert!(wrote.status.success(), "{}", text(&wrote));
    let rels: Vec<String> = (0..300)
        .map(|i| format!("document:d{i}#viewer@user:u{}", i % 7))
        .collect();
    let mut args = vec!["relationship", "create"];
    args.extend(rels.iter().map(String::as_str));
    assert!(at(port, &args).status.success());
    assert!(
        at(
            port,
            &["relationship", "delete", "document:d0#viewer@user:u0"]
        )
        .status
        .success()
    );
    let before = at(
        port,
        &[
            "permission",
            "lookup-resources",
            "document",
            "view",
            "user:u1",
        ],
    );
    assert!(before.status.success(), "{}", text(&before));

    first.kill().unwrap();
    first.wait().unwrap();
    let (mut restarted, port) = serve(&uri);
    let after = at(
        port,
        &[
            "permission",
            "lookup-resources",
            "document",
            "view",
            "user:u1",
        ],
    );
    assert_eq!(text(&after), text(&before));
    assert_eq!(String::from_utf8_lossy(&after.stdout).lines().count(), 43);
    let check = at(
        port,
        &["permission", "check", "document:d0", "view", "user:u0"],
    );
    assert_eq!(check.status.code(), Some(1), "deleted before the kill");
    let check = at(
        port,
        &["permission", "check", "document:d7", "view", "user:u0"],
    );
    assert_eq!(check.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&at(port, &["schema", "read"]).stdout)
            .contains("definition folder")
    );
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

/// Runs one of the shell commands `.ci/postgres` exports to stop or start the database.
fn database(var: &str) {
    let command = std::env::var(var).unwrap();
    let ok = Command::new("bash")
        .args(["-c", &command])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "{var} failed: {command}");
}

/// While the database is down, writes (and reads that go to it) fail with UNAVAILABLE and
/// checks go on from memory; once it is back, the same server serves writes again by itself,
/// and nothing acknowledged is lost.
#[test]
fn a_database_restart_gives_unavailable_then_service_resumes() {
    let Some((_turn, uri)) = migrated(true) else {
        return;
    };
    let (mut server, port) = serve(&uri);
    assert!(
        at(port, &["schema", "write", "schema/document_sharing.zed"])
            .status
            .success()
    );
    assert!(
        at(
            port,
            &["relationship", "create", "document:a#viewer@user:ann"]
        )
        .status
        .success()
    );

    database("PEMBA_TEST_POSTGRES_STOP");
    let write = at(
        port,
        &["relationship", "create", "document:b#viewer@user:ann"],
    );
    let down = || {
        assert_eq!(write.status.code(), Some(3), "{}", text(&write));
        assert!(text(&write).contains("Unavailable"), "{}", text(&write));
        let check = at(
            port,
            &["permission", "check", "document:a", "view", "user:ann"],
        );
        assert_eq!(check.status.code(), Some(0), "{}", text(&check));
        let read = at(port, &["relationship", "read", "document"]);
        assert!(text(&read).contains("Unavailable"), "{}", text(&read));
    };
    let outcome = std::panic::catch_unwind(down);
    database("PEMBA_TEST_POSTGRES_START");
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }

    // Back by itself: the pool reconnects on the next call.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let write = at(
            port,
            &["relationship", "create", "document:b#viewer@user:ann"],
        );
        if write.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", text(&write));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        at(
            port,
            &["relationship", "create", "document:c#viewer@user:ann"]
        )
        .status
        .success()
    );
    let read = at(port, &["relationship", "read", "document"]);
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "document:a#viewer@user:ann\ndocument:b#viewer@user:ann\ndocument:c#viewer@user:ann\n"
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut again, port) = serve(&uri);
    let found = at(
        port,
        &[
            "permission",
            "lookup-resources",
            "document",
            "view",
            "user:ann",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&found.stdout), "a\nb\nc\n");
    again.kill().unwrap();
    again.wait().unwrap();
}

const SHARED_SCHEMA: &str = "
definition user {}

definition group {
    relation member: user
}

definition document {
    relation viewer: user | group#member
    relation banned: user
    permission view = viewer - banned
}
";

/// Servers killed when dropped, so that a failing test leaves none running (holding the test
/// harness's output open).
struct Reaper(Vec<std::process::Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client of one node.
struct Node {
    permissions: PermissionsServiceClient<tonic::transport::Channel>,
    schema: SchemaServiceClient<tonic::transport::Channel>,
    watch: WatchServiceClient<tonic::transport::Channel>,
}

async fn node(port: u16) -> Node {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Node {
        permissions: PermissionsServiceClient::new(channel.clone()),
        schema: SchemaServiceClient::new(channel.clone()),
        watch: WatchServiceClient::new(channel),
    }
}

impl Node {
    async fn write(
        &mut self,
        updates: Vec<pb::RelationshipUpdate>,
    ) -> Result<pb::ZedToken, tonic::Status> {
        common::write_with(&mut self.permissions, updates).await
    }

    async fn check(&mut self, doc: &str, user: &str, consistency: Option<pb::Consistency>) -> i32 {
        self.permissions
            .check_permission(pb::CheckPermissionRequest {
                consistency,
                resource: Some(common::obj("document", doc)),
                permission: "view".into(),
                subject: Some(common::subj("user", user, "")),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .permissionship
    }

    async fn lookup(&mut self, user: &str, consistency: Option<pb::Consistency>) -> Vec<String> {
        use futures::TryStreamExt;
        let mut ids: Vec<String> = self
            .permissions
            .lookup_resources(pb::LookupResourcesRequest {
                consistency,
                resource_object_type: "document".into(),
                permission: "view".into(),
                subject: Some(common::subj("user", user, "")),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .map_ok(|r| r.resource_object_id)
            .try_collect()
            .await
            .unwrap();
        ids.sort();
        ids
    }
}

impl Node {
    /// Every Check of `users` on `d0`..`d9` and every user's LookupResources, fully
    /// consistent, as lines.
    async fn answers(&mut self, users: &[&str]) -> Vec<String> {
        let mut a = Vec::new();
        for user in users {
            a.push(format!(
                "{user}: {:?}",
                self.lookup(user, fully_consistent()).await
            ));
            for d in 0..10 {
                let doc = format!("d{d}");
                a.push(format!(
                    "{doc} {user} {}",
                    self.check(&doc, user, fully_consistent()).await
                ));
            }
        }
        a
    }
}

const HAS: i32 = pb::check_permission_response::Permissionship::HasPermission as i32;
const HAS_NOT: i32 = pb::check_permission_response::Permissionship::NoPermission as i32;

/// The relationship an update names, as text.
fn update_text(u: &pb::RelationshipUpdate) -> String {
    let r = u.relationship.as_ref().unwrap();
    let (o, s) = (r.resource.as_ref().unwrap(), r.subject.as_ref().unwrap());
    let so = s.object.as_ref().unwrap();
    let rel = if s.optional_relation.is_empty() {
        String::new()
    } else {
        format!("#{}", s.optional_relation)
    };
    format!(
        "{} {}:{}#{}@{}:{}{rel}",
        u.operation, o.object_type, o.object_id, r.relation, so.object_type, so.object_id
    )
}

/// Three nodes on one database. Writes go round-robin over the nodes, and each is read on the
/// two other nodes with its token: both see it at once. Afterwards the three nodes give the
/// same answers to every Check and lookup; a Watch on one node sees every node's writes, in
/// commit order; three creates of one relationship at once, one per node, give one success
/// and two ALREADY_EXISTS; a node started afterwards loads the same state. The second node
/// reaches the database over TLS (verified against the run's CA), when `.ci/run` offers it.
#[test]
fn three_nodes_share_one_database() {
    let Some((_turn, uri)) = migrated(false) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(three_nodes(uri));
}

async fn three_nodes(uri: String) {
    // A long follow interval: a read with a token must not depend on the poller.
    let ca = std::env::var("PEMBA_TEST_POSTGRES_CA").ok();
    let spawn = |uri: String, tls: bool| {
        let port = free_port();
        let mut command = serve_command(port);
        if let (true, Some(ca)) = (tls, &ca) {
            command.args(["--datastore-tls-ca-cert", ca]);
        }
        let mut child = command
            .args(["--datastore", "postgres", "--datastore-conn-uri", &uri])
            .args([
                "--metrics-enabled=false",
                "--datastore-follow-interval-ms",
                "60000",
            ])
            .spawn()
            .unwrap();
        wait_listening(&mut child, port, Duration::from_secs(30));
        (child, port)
    };
    let mut children = Reaper(Vec::new());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (child, port) = spawn(uri.clone(), i == 1);
        children.0.push(child);
        nodes.push(node(port).await);
    }
    if ca.is_some() {
        // The second node's connections are TLS (the others' are not).
        let (client, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let tls: i64 = client
            .query_one("SELECT count(*) FROM pg_stat_ssl WHERE ssl", &[])
            .await
            .unwrap()
            .get(0);
        assert!(tls >= 1, "no TLS connection to the database");
    }
    let written = nodes[0]
        .schema
        .write_schema(pb::WriteSchemaRequest {
            schema: SHARED_SCHEMA.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    let mut watch = nodes[2]
        .watch
        .watch(pb::WatchRequest {
            optional_start_cursor: Some(written.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let users = ["ann", "bob", "cid", "dee", "eve"];
    // What each write changed (a touch of a relationship already there changes nothing, and
    // Watch shows nothing for it), and how many changes each revision has.
    let mut expected_log = Vec::new();
    let mut sizes = Vec::new();
    let mut stored = std::collections::HashSet::new();
    for i in 0..30usize {
        let user = users[i % users.len()];
        let doc = if i % 6 == 5 {
            format!("b{i}")
        } else {
            format!("d{}", i % 10)
        };
        let updates = match i % 6 {
            // a member of a group that can view
            4 => vec![
                touch(&format!("group:g{}#member@user:{user}", i % 2)),
                touch(&format!("document:{doc}#viewer@group:g{}#member", i % 2)),
            ],
            // a viewer who is banned: no permission
            5 => vec![
                touch(&format!("document:b{i}#viewer@user:{user}")),
                touch(&format!("document:b{i}#banned@user:{user}")),
            ],
            _ => vec![touch(&format!("document:{doc}#viewer@user:{user}"))],
        };
        let changed: Vec<String> = updates
            .iter()
            .map(update_text)
            .filter(|t| stored.insert(t.clone()))
            .collect();
        if !changed.is_empty() {
            sizes.push(changed.len());
        }
        expected_log.extend(changed);
        let token = nodes[i % 3].write(updates).await.unwrap();
        let want = if i % 6 == 5 { HAS_NOT } else { HAS };
        for other in [(i + 1) % 3, (i + 2) % 3] {
            assert_eq!(
                nodes[other].check(&doc, user, fresh(&token)).await,
                want,
                "write {i} on node {}, read on node {other}",
                i % 3
            );
        }
        let found = nodes[(i + 1) % 3].lookup(user, fresh(&token)).await;
        assert_eq!(found.contains(&doc), want == HAS, "write {i}: {found:?}");
    }
    // A delete too, written on one node and read on another.
    let gone = nodes[1]
        .write(vec![update(
            pb::relationship_update::Operation::Delete,
            "document:d1#viewer@user:bob",
        )])
        .await
        .unwrap();
    sizes.push(1);
    expected_log.push(update_text(&update(
        pb::relationship_update::Operation::Delete,
        "document:d1#viewer@user:bob",
    )));
    assert_eq!(nodes[2].check("d1", "bob", fresh(&gone)).await, HAS_NOT);

    // The same answers everywhere.
    let mut answers = Vec::new();
    for n in nodes.iter_mut() {
        answers.push(n.answers(&users).await);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
    assert!(answers[0].iter().any(|a| a.ends_with(&format!(" {HAS}"))));

    // The watch on node 2 saw every node's writes, in commit order.
    let mut seen = Vec::new();
    while seen.len() < expected_log.len() {
        let msg = tokio::time::timeout(Duration::from_secs(20), watch.message())
            .await
            .expect("the watch went quiet")
            .unwrap()
            .unwrap();
        seen.extend(msg.updates.iter().map(|u| {
            let op = match pb::relationship_update::Operation::try_from(u.operation).unwrap() {
                pb::relationship_update::Operation::Delete => "Delete",
                _ => "Touch",
            };
            let r = update(
                pb::relationship_update::Operation::Touch,
                "document:x#viewer@user:x",
            );
            let mut r = r;
            r.relationship = u.relationship.clone();
            update_text(&r).replacen(
                &format!("{}", pb::relationship_update::Operation::Touch as i32),
                op,
                1,
            )
        }));
    }
    let expected: Vec<String> = expected_log
        .iter()
        .map(|t| {
            let (op, rest) = t.split_once(' ').unwrap();
            let op = if op == (pb::relationship_update::Operation::Delete as i32).to_string() {
                "Delete"
            } else {
                "Touch"
            };
            format!("{op} {rest}")
        })
        .collect();
    // Within one revision the order is the store's; across revisions it is the commit order.
    assert_eq!(seen.len(), expected.len(), "{seen:#?}");
    let sorted = |v: &[String], chunks: &[usize]| {
        let mut out = Vec::new();
        let mut at = 0;
        for n in chunks {
            let mut c = v[at..at + n].to_vec();
            c.sort();
            out.extend(c);
            at += n;
        }
        out
    };
    assert_eq!(sorted(&seen, &sizes), sorted(&expected, &sizes));

    // One create of one relationship per node, at once: one wins.
    let mut tasks = Vec::new();
    for n in &nodes {
        let mut p = n.permissions.clone();
        tasks.push(tokio::spawn(async move {
            p.write_relationships(pb::WriteRelationshipsRequest {
                updates: vec![create("document:race#viewer@user:ann")],
                ..Default::default()
            })
            .await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().map(|_| ()).map_err(|s| s.code()));
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Err(tonic::Code::AlreadyExists))
            .count(),
        2,
        "{outcomes:?}"
    );

    // A node killed and started again, and a new node, load the same state.
    children.0[0].kill().unwrap();
    children.0[0].wait().unwrap();
    let (again, port) = spawn(uri.clone(), false);
    children.0[0] = again;
    nodes[0] = node(port).await;
    let (fourth, port) = spawn(uri.clone(), true);
    children.0.push(fourth);
    nodes.push(node(port).await);
    let reference = nodes[1].answers(&users).await;
    for i in [0, 3] {
        assert_eq!(nodes[i].answers(&users).await, reference, "node {i}");
    }
}

/// The database restarted under load, with two nodes: one task keeps writing through the
/// first node and another keeps checking on the second. While the database is down, writes
/// fail with UNAVAILABLE and nothing else, and checks go on; once it is back, writes succeed
/// again by themselves, and every acknowledged write is on both nodes.
#[test]
fn a_database_restart_under_load_loses_no_acknowledged_write() {
    let Some((_turn, uri)) = migrated(true) else {
        return;
    };
    let mut servers = Reaper(Vec::new());
    let mut ports = Vec::new();
    for _ in 0..2 {
        let (child, port) = serve(&uri);
        servers.0.push(child);
        ports.push(port);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(restart_under_load(ports));
}

async fn restart_under_load(ports: Vec<u16>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (mut a, mut b) = (node(ports[0]).await, node(ports[1]).await);
    a.schema
        .write_schema(pb::WriteSchemaRequest {
            schema: SHARED_SCHEMA.into(),
        })
        .await
        .unwrap();
    let first = a
        .write(vec![touch("document:w0#viewer@user:ann")])
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = node(ports[0]).await;
    let writing = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let (mut acked, mut refused, mut last) = (Vec::new(), Vec::new(), None);
            let mut i = 1;
            while !stop.load(Ordering::SeqCst) {
                let rel = format!("document:w{i}#viewer@user:ann");
                match writer.write(vec![touch(&rel)]).await {
                    Ok(token) => {
                        acked.push(format!("w{i}"));
                        last = Some(token);
                    }
                    Err(status) => refused.push(status.code()),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, refused, last)
        })
    };
    let mut checker = node(ports[1]).await;
    let checking = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                answers.push(checker.check("w0", "ann", fresh(&first)).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(|| database("PEMBA_TEST_POSTGRES_STOP"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| database("PEMBA_TEST_POSTGRES_START"))
        .await
        .unwrap();
    // Writes succeed again by themselves.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if a.write(vec![touch("document:back#viewer@user:ann")])
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, refused, last) = writing.await.unwrap();
    let answers = checking.await.unwrap();

    assert!(
        refused.iter().all(|c| *c == tonic::Code::Unavailable),
        "{refused:?}"
    );
    assert!(
        !refused.is_empty(),
        "no write was refused while the database was down"
    );
    assert!(acked.len() > 10, "{} writes acknowledged", acked.len());
    assert!(answers.iter().all(|a| *a == HAS), "{answers:?}");
    let last = last.unwrap();
    let on_a = a.lookup("ann", fresh(&last)).await;
    let on_b = b.lookup("ann", fresh(&last)).await;
    for w in &acked {
        assert!(
            on_b.contains(w),
            "{w} acknowledged but not on the second node"
        );
    }
    // (a write refused while its commit went through may be there too: both nodes agree)
    assert_eq!(on_a, on_b);
}
