//! The HTTP/JSON gateway: SpiceDB's REST routes, each served by calling the gRPC service in
//! this process.
//!
//! SpiceDB's gateway (grpc-gateway) maps `POST /v1/permissions/check` and the like onto its gRPC
//! methods, with the request message as the JSON body in protobuf's JSON mapping. Here a route
//! names a gRPC method; the body is read into that method's input message through the API's
//! descriptors (`prost-reflect`), framed as a gRPC request and handed to the same tonic routes the
//! gRPC listener serves (key check included), and the gRPC response is written back as JSON:
//! one object for a unary call, `{"result": ...}` lines for a stream, a `google.rpc.Status` object
//! for an error, with the HTTP status grpc-gateway gives its code.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_types::StatusExt as _;
use tower::ServiceExt as _;

use super::ServerError;
use super::http::HttpLimits;

/// SpiceDB's routes: path, gRPC service, method. Every route is `POST` with the whole request
/// message as its body.
const ROUTES: &[(&str, &str, &str)] = &[
    ("/v1/relationships/read", PERMISSIONS, "ReadRelationships"),
    ("/v1/relationships/write", PERMISSIONS, "WriteRelationships"),
    (
        "/v1/relationships/delete",
        PERMISSIONS,
        "DeleteRelationships",
    ),
    ("/v1/permissions/check", PERMISSIONS, "CheckPermission"),
    (
        "/v1/permissions/checkbulk",
        PERMISSIONS,
        "CheckBulkPermissions",
    ),
    (
        "/v1/permissions/expand",
        PERMISSIONS,
        "ExpandPermissionTree",
    ),
    ("/v1/permissions/resources", PERMISSIONS, "LookupResources"),
    ("/v1/permissions/subjects", PERMISSIONS, "LookupSubjects"),
    (
        "/v1/relationships/importbulk",
        PERMISSIONS,
        "ImportBulkRelationships",
    ),
    (
        "/v1/relationships/exportbulk",
        PERMISSIONS,
        "ExportBulkRelationships",
    ),
    ("/v1/schema/read", SCHEMA, "ReadSchema"),
    ("/v1/schema/write", SCHEMA, "WriteSchema"),
    ("/v1/schema/reflectschema", SCHEMA, "ReflectSchema"),
    (
        "/v1/schema/permissions/computable",
        SCHEMA,
        "ComputablePermissions",
    ),
    (
        "/v1/schema/permissions/dependent",
        SCHEMA,
        "DependentRelations",
    ),
    ("/v1/schema/diffschema", SCHEMA, "DiffSchema"),
    ("/v1/watch", WATCH, "Watch"),
    (
        "/v1/experimental/relationships/bulkimport",
        EXPERIMENTAL,
        "BulkImportRelationships",
    ),
    (
        "/v1/experimental/relationships/bulkexport",
        EXPERIMENTAL,
        "BulkExportRelationships",
    ),
    (
        "/v1/experimental/permissions/bulkcheckpermission",
        EXPERIMENTAL,
        "BulkCheckPermission",
    ),
    (
        "/v1/experimental/reflectschema",
        EXPERIMENTAL,
        "ExperimentalReflectSchema",
    ),
    (
        "/v1/experimental/permissions/computable",
        EXPERIMENTAL,
        "ExperimentalComputablePermissions",
    ),
    (
        "/v1/experimental/permissions/dependent",
        EXPERIMENTAL,
        "ExperimentalDependentRelations",
    ),
    (
        "/v1/experimental/diffschema",
        EXPERIMENTAL,
        "ExperimentalDiffSchema",
    ),
    (
        "/v1/experimental/registerrelationshipcounter",
        EXPERIMENTAL,
        "ExperimentalRegisterRelationshipCounter",
    ),
    (
        "/v1/experimental/countrelationships",
        EXPERIMENTAL,
        "ExperimentalCountRelationships",
    ),
    (
        "/v1/experimental/unregisterrelationshipcounter",
        EXPERIMENTAL,
        "ExperimentalUnregisterRelationshipCounter",
    ),
];

const PERMISSIONS: &str = "authzed.api.v1.PermissionsService";
const SCHEMA: &str = "authzed.api.v1.SchemaService";
const WATCH: &str = "authzed.api.v1.WatchService";
const EXPERIMENTAL: &str = "authzed.api.v1.ExperimentalService";

/// The bounds of the gateway's listener. Connections live as long as their clients keep them:
/// a streamed Watch may last for hours.
const LIMITS: HttpLimits = HttpLimits {
    max_connections: 1024,
    header_read_timeout: Duration::from_secs(30),
    connection_lifetime: None,
    close_grace: Duration::from_secs(10),
};

/// A response body: whole, or streamed line by line.
type Body = BoxBody<Bytes, Infallible>;

/// One route's gRPC method.
#[derive(Debug)]
struct GrpcMethod {
    /// `/package.Service/Method`
    path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    client_streaming: bool,
    server_streaming: bool,
}

/// The gateway: its routes and the gRPC services it calls.
#[derive(Debug)]
pub struct Gateway {
    methods: std::collections::HashMap<&'static str, GrpcMethod>,
    grpc: tonic::service::Routes,
    max_body: usize,
}

impl Gateway {
    /// A gateway calling `grpc` (the routes the gRPC listener serves, with their key check); a
    /// request body larger than `max_body` bytes is refused. Only the routes whose service
    /// `grpc` serves are answered; the others get UNIMPLEMENTED from it, as on gRPC.
    pub fn new(grpc: tonic::service::Routes, max_body: usize) -> Result<Gateway, ServerError> {
        let pool = DescriptorPool::decode(crate::api::proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| ServerError::Config(format!("the API's descriptors: {e}")))?;
        let mut methods = std::collections::HashMap::new();
        for (route, service, method) in ROUTES {
            let found = pool
                .get_service_by_name(service)
                .and_then(|s| s.methods().find(|m| m.name() == *method))
                .ok_or_else(|| {
                    ServerError::Config(format!(
                        "gateway route {route}: no method {service}/{method}"
                    ))
                })?;
            methods.insert(
                *route,
                GrpcMethod {
                    path: format!("/{service}/{method}"),
                    input: found.input(),
                    output: found.output(),
                    client_streaming: found.is_client_streaming(),
                    server_streaming: found.is_server_streaming(),
                },
            );
        }
        Ok(Gateway {
            methods,
            grpc,
            max_body,
        })
    }

    /// Answers one HTTP request.
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/healthz" {
            return self.health(&req).await;
        }
        let Some(method) = self.methods.get(req.uri().path()) else {
            return error_response(&tonic::Status::not_found("Not Found"));
        };
        if req.method() != Method::POST {
            return error_response(&tonic::Status::unimplemented("Method Not Allowed"));
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error_response(&tonic::Status::resource_exhausted(format!(
                    "cannot read the request body (at most {} bytes): {e}",
                    self.max_body
                )));
            }
        };
        let frames = match request_frames(method, &body) {
            Ok(f) => f,
            Err(status) => return error_response(&status),
        };
        let Ok(uri) = method.path.parse() else {
            return error_response(&tonic::Status::internal("bad gateway route"));
        };
        let response = self.call(uri, frames, &parts.headers).await;
        relay(method, response).await
    }

    /// Calls gRPC method `uri` of this process's routes with `frames` as the request body,
    /// keeping what of `headers` a gRPC call keeps (see [`forward_headers`]).
    async fn call(
        &self,
        uri: http::Uri,
        frames: Bytes,
        headers: &http::HeaderMap,
    ) -> Response<tonic::body::Body> {
        let mut grpc_request = Request::new(tonic::body::Body::new(Full::new(frames)));
        *grpc_request.method_mut() = Method::POST;
        *grpc_request.uri_mut() = uri;
        forward_headers(headers, grpc_request.headers_mut());
        match self.grpc.clone().oneshot(grpc_request).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// `GET /healthz[?service=NAME]`: the gRPC health check of `NAME` (the whole server by
    /// default): 200 when serving, 503 when not, 404 for an unknown name.
    async fn health(&self, req: &Request<Incoming>) -> Response<Body> {
        let service = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("service=")))
            .unwrap_or("")
            .to_string();
        let check = tonic_health::pb::HealthCheckRequest { service };
        let mut framed = BytesMut::new();
        frame(&mut framed, &check.encode_to_vec());
        let uri = http::Uri::from_static("/grpc.health.v1.Health/Check");
        let response = self.call(uri, framed.freeze(), req.headers()).await;
        let (messages, status) = read_grpc(response).await;
        if status.code() != Code::Ok {
            return error_response(&status);
        }
        let serving = messages
            .first()
            .and_then(|m| tonic_health::pb::HealthCheckResponse::decode(m.clone()).ok())
            .is_some_and(|r| {
                r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            });
        let (code, text) = match serving {
            true => (StatusCode::OK, r#"{"status":"SERVING"}"#),
            false => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"NOT_SERVING"}"#,
            ),
        };
        json_response(code, Bytes::from_static(text.as_bytes()))
    }
}

/// The request body as gRPC frames: one message, or for a client stream a sequence of JSON
/// objects (usually one per line), each one message. An empty body is `{}`.
fn request_frames(method: &GrpcMethod, body: &[u8]) -> Result<Bytes, tonic::Status> {
    let bad = |e: &dyn std::fmt::Display| {
        tonic::Status::invalid_argument(format!("cannot read the request body: {e}"))
    };
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let mut out = BytesMut::new();
    let values: Vec<serde_json::Value> = if body.iter().all(u8::is_ascii_whitespace) {
        vec![serde_json::Value::Object(serde_json::Map::new())]
    } else {
        serde_json::Deserializer::from_slice(body)
            .into_iter::<serde_json::Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?
    };
    if !method.client_streaming && values.len() != 1 {
        return Err(bad(&"expected one JSON object"));
    }
    for value in values {
        let message =
            DynamicMessage::deserialize_with_options(method.input.clone(), value, &options)
                .map_err(|e| bad(&e))?;
        frame(&mut out, &message.encode_to_vec());
    }
    Ok(out.freeze())
}

/// Appends `message` to `out` as one gRPC frame (uncompressed).
fn frame(out: &mut BytesMut, message: &[u8]) {
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
}

/// The HTTP request's headers that the gRPC call keeps: the key, the deadline, the request id,
/// and `Grpc-Metadata-<k>` as `<k>`.
fn forward_headers(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    to.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    to.insert(header::TE, HeaderValue::from_static("trailers"));
    for name in [
        header::AUTHORIZATION.as_str(),
        "grpc-timeout",
        "x-request-id",
    ] {
        if let Some(v) = from.get(name)
            && let Ok(name) = http::HeaderName::from_bytes(name.as_bytes())
        {
            to.insert(name, v.clone());
        }
    }
    for (name, value) in from {
        if let Some(key) = name.as_str().strip_prefix("grpc-metadata-")
            && let Ok(key) = http::HeaderName::from_bytes(key.as_bytes())
        {
            to.append(key, value.clone());
        }
    }
}

/// Events read from a gRPC response body: messages, then its status.
enum Event {
    Message(Bytes),
    End(tonic::Status),
}

/// Reads a gRPC response body frame by frame, sending each message, then the status.
async fn pump(response: Response<tonic::body::Body>, tx: tokio::sync::mpsc::Sender<Event>) {
    let (parts, mut body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        let _ = tx.send(Event::End(status)).await;
        return;
    }
    let mut buffer = BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                let _ = tx
                    .send(Event::End(tonic::Status::internal(
                        "the call ended without a status",
                    )))
                    .await;
                return;
            }
            Some(Err(status)) => {
                let _ = tx.send(Event::End(status)).await;
                return;
            }
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        buffer.extend_from_slice(&data);
                        while buffer.len() >= 5 {
                            let len =
                                u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]])
                                    as usize;
                            if buffer.len() < 5 + len {
                                break;
                            }
                            buffer.advance(5);
                            let message = buffer.split_to(len).freeze();
                            if tx.send(Event::Message(message)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Err(frame) => frame,
                };
                if let Ok(trailers) = frame.into_trailers() {
                    let status = tonic::Status::from_header_map(&trailers).unwrap_or_else(|| {
                        tonic::Status::internal("the call ended without a status")
                    });
                    let _ = tx.send(Event::End(status)).await;
                    return;
                }
            }
        }
    }
}

/// All the messages of a (short) gRPC response, and its status.
async fn read_grpc(response: Response<tonic::body::Body>) -> (Vec<Bytes>, tonic::Status) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(pump(response, tx));
    let mut messages = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Message(m) => messages.push(m),
            Event::End(status) => return (messages, status),
        }
    }
    (
        messages,
        tonic::Status::internal("the call ended without a status"),
    )
}

/// A response message as JSON (protobuf's JSON mapping, unset fields written, as SpiceDB's
/// gateway writes them).
fn message_json(
    descriptor: &MessageDescriptor,
    bytes: Bytes,
) -> Result<serde_json::Value, tonic::Status> {
    let message = DynamicMessage::decode(descriptor.clone(), bytes)
        .map_err(|e| tonic::Status::internal(format!("cannot read the response: {e}")))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| tonic::Status::internal(format!("cannot write the response as JSON: {e}")))?;
    write_unset_messages(descriptor, &mut json);
    Ok(json)
}

/// Writes `null` for every unset message field of `json` (an object of message `descriptor`)
/// and of the messages inside it, as grpc-gateway's `EmitUnpopulated` does; oneof members stay
/// left out. Nesting is bounded by the response message, which the server built.
fn write_unset_messages(descriptor: &MessageDescriptor, json: &mut serde_json::Value) {
    let serde_json::Value::Object(object) = json else {
        return;
    };
    // Well-known types (Struct, Timestamp, ...) have their own JSON forms.
    if descriptor.full_name().starts_with("google.protobuf.") {
        return;
    }
    for field in descriptor.fields() {
        let prost_reflect::Kind::Message(inner) = field.kind() else {
            continue;
        };
        if field.is_map() || field.containing_oneof().is_some() {
            continue;
        }
        match object.get_mut(field.json_name()) {
            None if !field.is_list() => {
                object.insert(field.json_name().to_string(), serde_json::Value::Null);
            }
            None => {}
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    write_unset_messages(&inner, item);
                }
            }
            Some(value) => write_unset_messages(&inner, value),
        }
    }
}

/// Turns the gRPC response into the HTTP one: a unary call's message (or error) whole, a
/// stream's messages as `{"result": ...}` lines, its error as a last `{"error": ...}` line (or
/// as the whole response, with the error's HTTP status, if it comes first).
async fn relay(method: &GrpcMethod, response: Response<tonic::body::Body>) -> Response<Body> {
    if !method.server_streaming {
        let (messages, status) = read_grpc(response).await;
        if status.code() != Code::Ok {
            return error_response(&status);
        }
        let Some(message) = messages.into_iter().next() else {
            return error_response(&tonic::Status::internal("the call returned no message"));
        };
        return match message_json(&method.output, message) {
            Ok(json) => json_response(StatusCode::OK, Bytes::from(json.to_string())),
            Err(status) => error_response(&status),
        };
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(pump(response, tx));
    // The HTTP status must be chosen before the first line: an error before any message is
    // answered as a unary error is.
    let first = match rx.recv().await {
        Some(Event::End(status)) if status.code() != Code::Ok => return error_response(&status),
        Some(Event::End(_)) | None => None,
        Some(Event::Message(m)) => Some(m),
    };
    let output = method.output.clone();
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        let line = |value: serde_json::Value| {
            let mut text = value.to_string();
            text.push('\n');
            Ok(Frame::data(Bytes::from(text)))
        };
        let mut next = first.map(Event::Message);
        while let Some(event) = next.take() {
            let out = match event {
                Event::Message(m) => match message_json(&output, m) {
                    Ok(json) => serde_json::json!({ "result": json }),
                    Err(status) => serde_json::json!({ "error": status_json(&status) }),
                },
                Event::End(status) if status.code() == Code::Ok => return,
                Event::End(status) => serde_json::json!({ "error": status_json(&status) }),
            };
            if lines_tx.send(line(out)).await.is_err() {
                return;
            }
            next = rx.recv().await;
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(lines_rx));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A `google.rpc.Status` as grpc-gateway writes it: code, message, and the `ErrorInfo` detail.
fn status_json(status: &tonic::Status) -> serde_json::Value {
    let details: Vec<serde_json::Value> = status
        .get_error_details()
        .error_info()
        .map(|info| {
            serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": info.reason,
                "domain": info.domain,
                "metadata": info.metadata,
            })
        })
        .into_iter()
        .collect();
    serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details,
    })
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
    }
}

fn json_response(code: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed(Full::new(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: &tonic::Status) -> Response<Body> {
    json_response(
        http_status(status.code()),
        Bytes::from(status_json(status).to_string()),
    )
}

/// Serves the gateway on `listener` (over TLS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "serving the HTTP/JSON gateway");
    }
    let gateway = Arc::new(gateway);
    let service = hyper::service::service_fn(move |req| {
        let gateway = Arc::clone(&gateway);
        async move { Ok::<_, Infallible>(gateway.handle(req).await) }
    });
    let closer = tokio_util::sync::CancellationToken::new();
    let incoming = super::tls::incoming(
        listener,
        super::tls::AcceptOptions {
            tls,
            handshake_timeout,
            closer: closer.clone(),
        },
    );
    super::http::serve(incoming, service, LIMITS, "gateway", shutdown).await;
    closer.cancel();
}
