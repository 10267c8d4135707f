//! The HTTP/JSON gateway against a real server: SpiceDB's routes and JSON, the key, streamed
//! lookups as lines, client-streamed imports, errors as `google.rpc.Status` with grpc-gateway's
//! HTTP statuses, and `/healthz`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test harness: a failed step should abort the test"
)]

use std::sync::Arc;

use pemba::api::{Api, Limits};
use pemba::engine::EngineConfig;
use pemba::server::{self, GatewayListener, ServerOptions};
use pemba::store::{Datastore, MemoryStore};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KEY: &str = "gateway-key";

const SCHEMA: &str = "definition user {}
definition document {
    relation viewer: user
    relation banned: user
    permission view = viewer - banned
}";

/// A server with the gateway; returns the gateway's address.
async fn start() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let api = Api::new(
        Arc::clone(&store),
        EngineConfig::default(),
        Limits::default(),
    );
    let options = ServerOptions {
        preshared_keys: vec![KEY.into()],
        ..ServerOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server::run_with_gateway(
            grpc,
            Some(GatewayListener {
                listener: http,
                tls: None,
            }),
            api,
            store,
            options,
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    (addr, stop)
}

/// One HTTP/1.1 request; the status and the body (chunks joined).
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn reason(error: &Value) -> &str {
    error["details"][0]["reason"].as_str().unwrap_or("")
}

#[tokio::test]
async fn spicedb_routes_answer_json() {
    let (addr, _stop) = start().await;
    let post = |path: &'static str, body: Value| {
        let body = body.to_string();
        async move { call(addr, "POST", path, Some(KEY), &body).await }
    };

    // The key is checked as on gRPC.
    let (status, body) = call(addr, "POST", "/v1/schema/read", None, "{}").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(parse(&body)["code"], 16);
    let (status, body) = call(addr, "POST", "/v1/schema/read", Some("wrong"), "{}").await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = post("/v1/schema/write", json!({ "schema": SCHEMA })).await;
    assert_eq!(status, 200, "{body}");
    assert!(parse(&body)["writtenAt"]["token"].is_string(), "{body}");

    // Field names in camelCase or snake_case, enums by name or number.
    let (status, body) = post(
        "/v1/relationships/write",
        json!({ "updates": [
            { "operation": "OPERATION_CREATE", "relationship": {
                "resource": { "objectType": "document", "objectId": "plan" },
                "relation": "viewer",
                "subject": { "object": { "object_type": "user", "object_id": "ann" } } } },
            { "operation": 1, "relationship": {
                "resource": { "objectType": "document", "objectId": "memo" },
                "relation": "viewer",
                "subject": { "object": { "objectType": "user", "objectId": "ann" } } } }
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = parse(&body)["writtenAt"]["token"]
        .as_str()
        .unwrap()
        .to_string();

    let check = |doc: &str, permission: &str| {
        json!({
            "consistency": { "atLeastAsFresh": { "token": token } },
            "resource": { "objectType": "document", "objectId": doc },
            "permission": permission,
            "subject": { "object": { "objectType": "user", "objectId": "ann" } }
        })
    };
    let (status, body) = post("/v1/permissions/check", check("plan", "view")).await;
    assert_eq!(status, 200, "{body}");
    let answer = parse(&body);
    assert_eq!(
        answer["permissionship"], "PERMISSIONSHIP_HAS_PERMISSION",
        "{body}"
    );
    // Unset fields are written, as grpc-gateway writes them.
    assert!(answer.get("partialCaveatInfo").is_some(), "{body}");

    // An error: a google.rpc.Status with the ErrorInfo reason, and grpc-gateway's status.
    let (status, body) = post("/v1/permissions/check", check("plan", "edit")).await;
    assert_eq!(status, 400, "{body}");
    let error = parse(&body);
    assert_eq!(error["code"], 9, "{body}");
    assert_eq!(
        reason(&error),
        "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION"
    );

    // A streamed lookup: one {"result": ...} line per resource.
    let (status, body) = post(
        "/v1/permissions/resources",
        json!({
            "consistency": { "fullyConsistent": true },
            "resourceObjectType": "document",
            "permission": "view",
            "subject": { "object": { "objectType": "user", "objectId": "ann" } }
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut found: Vec<String> = body
        .lines()
        .map(|l| {
            parse(l)["result"]["resourceObjectId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    found.sort();
    assert_eq!(found, ["memo", "plan"]);

    // A client-streamed import: concatenated JSON objects, one message each; uint64 as a string.
    let rel = |doc: &str| {
        json!({ "resource": { "objectType": "document", "objectId": doc }, "relation": "viewer",
                "subject": { "object": { "objectType": "user", "objectId": "bob" } } })
    };
    let batches = format!(
        "{}\n{}\n",
        json!({ "relationships": [rel("a"), rel("b")] }),
        json!({ "relationships": [rel("c")] })
    );
    let (status, body) = call(
        addr,
        "POST",
        "/v1/relationships/importbulk",
        Some(KEY),
        &batches,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["numLoaded"], "3", "{body}");

    // Malformed JSON, an unknown route, a wrong method.
    let (status, body) = call(addr, "POST", "/v1/permissions/check", Some(KEY), "{nope").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(parse(&body)["code"], 3);
    let (status, body) = call(addr, "POST", "/v1/nothing", Some(KEY), "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        parse(&body),
        json!({ "code": 5, "message": "Not Found", "details": [] })
    );
    let (status, _) = call(addr, "GET", "/v1/schema/read", Some(KEY), "").await;
    assert_eq!(status, 501);

    // Health needs no key.
    let (status, body) = call(addr, "GET", "/healthz", None, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["status"], "SERVING");
    let (status, _) = call(addr, "GET", "/healthz?service=nosuch", None, "").await;
    assert_eq!(status, 404);
}
