//! OpenTelemetry export of the `pemba` binary: one span per RPC, flushed at SIGTERM.
//!
//! The binary is started with `--otel-endpoint` pointing at an in-process OTLP trace collector.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, serve_command};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use pemba::api::proto::authzed::api::v1 as pb;

/// Keeps every span it receives.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_is_exported_as_a_span_and_flushed_at_shutdown() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let port = free_port();
    let mut server = serve_command(port)
        .args(["--datastore", "memory"])
        .args(["--otel-endpoint", &format!("http://{otlp}")])
        .args([
            "--otel-service-name",
            "pemba-test",
            "--otel-sample-ratio",
            "1",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
        assert!(server.try_wait().unwrap().is_none(), "server exited early");
        assert!(Instant::now() < deadline, "server did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut client = pb::permissions_service_client::PermissionsServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::CheckPermissionRequest {
        resource: Some(pb::ObjectReference {
            object_type: "document".into(),
            object_id: "d1".into(),
        }),
        permission: "view".into(),
        subject: Some(pb::SubjectReference {
            object: Some(pb::ObjectReference {
                object_type: "user".into(),
                object_id: "u1".into(),
            }),
            optional_relation: String::new(),
        }),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "otel-test-1".parse().unwrap());
    // No schema was written: the call fails, and its code is what the span must carry.
    let code = match client.check_permission(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };

    let ok = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "SIGTERM sent");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let spans = collector.0.lock().unwrap().clone();
    let span = spans
        .iter()
        .find(|s| s.name == "authzed.api.v1.PermissionsService/CheckPermission")
        .unwrap_or_else(|| {
            panic!(
                "no CheckPermission span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        attribute(span, "rpc.system"),
        Some(Value::StringValue("grpc".into()))
    );
    assert_eq!(
        attribute(span, "rpc.service"),
        Some(Value::StringValue(
            "authzed.api.v1.PermissionsService".into()
        ))
    );
    assert_eq!(
        attribute(span, "rpc.method"),
        Some(Value::StringValue("CheckPermission".into()))
    );
    assert_eq!(
        attribute(span, "rpc.grpc.status_code"),
        Some(Value::IntValue(code as i64))
    );
    assert_eq!(
        attribute(span, "request_id"),
        Some(Value::StringValue("otel-test-1".into()))
    );
}
