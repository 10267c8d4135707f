//! Crash safety of the real binary: `kill -9` at random moments loses no acknowledged write.
//!
//! Rounds of concurrent writers of multi-relationship transactions, each round ended by
//! `kill -9` at a random moment. After every restart the store must open, every acknowledged
//! transaction must be there in full, and no transaction may be there in part.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test harness: a failed step should abort the test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{free_port, serve_command, wait_listening};
use futures::TryStreamExt as _;
use pb::permissions_service_client::PermissionsServiceClient;
use pb::schema_service_client::SchemaServiceClient;
use pemba::api::proto::authzed::api::v1 as pb;
use rand::{Rng as _, SeedableRng as _};
use tonic::transport::Channel;

fn start(data_dir: &Path, port: u16) -> Child {
    let mut child = serve_command(port)
        .arg("--data-dir")
        .arg(data_dir)
        .env("PEMBA_LOG", "error")
        .spawn()
        .expect("pemba starts");
    // Opening a store after a kill replays its log: give it time.
    wait_listening(&mut child, port, Duration::from_secs(60));
    child
}

const ROUNDS: usize = 10;
const WRITERS: usize = 4;
/// Relationships in one transaction.
const SIZE: usize = 8;

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn relationship(resource: &str, subject: &str) -> pb::Relationship {
    let obj = |t: &str, id: &str| pb::ObjectReference {
        object_type: t.into(),
        object_id: id.into(),
    };
    pb::Relationship {
        resource: Some(obj("document", resource)),
        relation: "viewer".into(),
        subject: Some(pb::SubjectReference {
            object: Some(obj("user", subject)),
            optional_relation: String::new(),
        }),
        optional_caveat: None,
        optional_expires_at: None,
    }
}

/// Transaction `t`: `document:{t}#viewer@user:m0` … `m{SIZE-1}`, created together.
fn transaction(t: &str) -> pb::WriteRelationshipsRequest {
    pb::WriteRelationshipsRequest {
        updates: (0..SIZE)
            .map(|m| pb::RelationshipUpdate {
                operation: pb::relationship_update::Operation::Create as i32,
                relationship: Some(relationship(t, &format!("m{m}"))),
            })
            .collect(),
        ..Default::default()
    }
}

/// Every stored relationship, grouped by transaction: transaction id → its members.
async fn stored(port: u16) -> BTreeMap<String, BTreeSet<String>> {
    let mut client = PermissionsServiceClient::new(channel(port).await);
    let rels: Vec<pb::ReadRelationshipsResponse> = client
        .read_relationships(pb::ReadRelationshipsRequest {
            consistency: Some(pb::Consistency {
                requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
            }),
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: "document".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .try_collect()
        .await
        .unwrap();
    let mut by_tx: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rels {
        let r = r.relationship.unwrap();
        let subject = r.subject.unwrap().object.unwrap().object_id;
        by_tx
            .entry(r.resource.unwrap().object_id)
            .or_default()
            .insert(subject);
    }
    by_tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transactions_survive_kill_9_whole() {
    let seed: u64 = std::env::var("PEMBA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (set PEMBA_CRASH_SEED to replay)");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut attempted_total = 0usize;

    for round in 0..ROUNDS {
        let port = free_port();
        let mut server = start(&data, port);
        if round == 0 {
            SchemaServiceClient::new(channel(port).await)
                .write_schema(pb::WriteSchemaRequest {
                    schema: "definition user {}\n\
                             definition document {\n relation viewer: user\n}"
                        .into(),
                })
                .await
                .unwrap();
        }
        // What every earlier round acknowledged, and nothing half-written.
        let seen = stored(port).await;
        for (t, members) in &seen {
            assert_eq!(
                members.len(),
                SIZE,
                "round {round}: transaction {t} half-applied"
            );
        }
        for t in acked.lock().unwrap().iter() {
            assert!(seen.contains_key(t), "round {round}: acknowledged {t} lost");
        }

        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let acked = Arc::clone(&acked);
            let ch = channel(port).await;
            writers.push(tokio::spawn(async move {
                let mut client = PermissionsServiceClient::new(ch);
                let mut n = 0usize;
                loop {
                    let t = format!("r{round}w{w}t{n}");
                    n += 1;
                    match client.write_relationships(transaction(&t)).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(t);
                        }
                        Err(_) => return n,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        server.kill().unwrap();
        server.wait().unwrap();
        for w in writers {
            attempted_total += w.await.unwrap();
        }
    }

    let port = free_port();
    let mut server = start(&data, port);
    let seen = stored(port).await;
    let acked = acked.lock().unwrap();
    for (t, members) in &seen {
        assert_eq!(members.len(), SIZE, "transaction {t} half-applied");
    }
    for t in acked.iter() {
        assert!(seen.contains_key(t), "acknowledged {t} lost");
    }
    assert!(
        acked.len() >= ROUNDS,
        "too few writes were acknowledged to test anything: {}",
        acked.len()
    );
    eprintln!(
        "{ROUNDS} rounds: {attempted_total} transactions attempted, {} acknowledged, {} stored",
        acked.len(),
        seen.len()
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
