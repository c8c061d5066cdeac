//! etcd's JSON gateway (grpc-gateway) on the client port: `POST /v3/<service>/<method>` with the
//! request message as JSON, answered with the response message as JSON, through the same service
//! code gRPC calls.
//!
//! Invariants: JSON follows etcd's mapping (proto field names on output, either name on input,
//! 64-bit integers as strings, bytes as base64, enums by name, zero values omitted, unknown
//! fields ignored); the `Authorization` header carries the auth token; errors carry etcd's gRPC
//! code and text with grpc-gateway's HTTP status; streams answer one `{"result": ...}` line per
//! message. `/v3beta/` paths are the same as `/v3/`.
//! - A call that reaches a service is measured as the gRPC call it stands for (etcd's gateway is
//!   a gRPC client of its own server): `grpc_server_*` and `etcd_server_client_requests_total`
//!   count it under its gRPC service and method, and it is traced as a `grpc.request` span. A
//!   body that does not parse never reaches a service, so it is not counted, as in etcd.
//! - A bidirectional stream (watch, lease keep-alive) reads its request body as it arrives
//!   ([`body`]), so requests can go on being sent while answers come back.

mod body;

use std::future::Future;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::{Stream, StreamExt};
use http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use crate::metrics::grpc::Call;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::server::{lease, watch, Services};

/// The gRPC method a gateway route stands for, from the service field and method names the
/// route macros are given (`kv`, `delete_range` -> `/etcdserverpb.KV/DeleteRange`).
fn grpc_path(service: &str, method: &str) -> String {
    let service = match service {
        "kv" => "etcdserverpb.KV",
        "lease" => "etcdserverpb.Lease",
        "cluster" => "etcdserverpb.Cluster",
        "maintenance" => "etcdserverpb.Maintenance",
        "auth" => "etcdserverpb.Auth",
        "lock" => "v3lockpb.Lock",
        "election" => "v3electionpb.Election",
        other => other,
    };
    let method: String = match method {
        "hash_kv" => "HashKV".to_string(),
        m => m
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect(),
    };
    format!("/{service}/{method}")
}

/// A gateway call being measured as its gRPC call (nothing when the path names no method).
struct Measured {
    call: Option<Call>,
    span: tracing::Span,
}

impl Measured {
    fn start(path: &str) -> Measured {
        match crate::server::http::begin_call(path) {
            Some((call, span)) => Measured {
                call: Some(call),
                span,
            },
            None => Measured {
                call: None,
                span: tracing::Span::none(),
            },
        }
    }

    /// Records a unary call's end: one message each way on success, the request alone on error.
    fn unary_done(mut self, result: Result<(), Code>) {
        if let Some(call) = self.call.as_mut() {
            call.messages(true, 1);
            match result {
                Ok(()) => {
                    call.messages(false, 1);
                    call.finish(0);
                }
                Err(code) => call.finish(code as i32),
            }
        }
    }
}

/// Counts a stream's messages and its end on `call`: each message sent, the error that ends
/// it, or a clean end. A stream dropped before its end counts as `Canceled`.
fn measured<T: Send + 'static>(messages: Messages<T>, call: Option<Call>) -> Messages<T> {
    let Some(call) = call else {
        return messages;
    };
    let call = std::sync::Arc::new(parking_lot::Mutex::new(call));
    let at_end = call.clone();
    let counted = messages.inspect(move |m| match m {
        Ok(_) => call.lock().messages(false, 1),
        Err(s) => call.lock().finish(s.code() as i32),
    });
    let end = futures::stream::once(async move {
        at_end.lock().finish(0);
    })
    .filter_map(|()| async { None });
    Box::pin(counted.chain(end))
}

/// Counts each request message of a stream as received on `call`.
fn count_received<T, S>(
    inbound: S,
    call: Option<&Call>,
) -> impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static
where
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
{
    let counter = call.map(|c| c.message_counter(true));
    inbound.inspect(move |m| {
        if let (Ok(_), Some(c)) = (m, &counter) {
            c.inc();
        }
    })
}

/// grpc-gateway's HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The header grpc-gateway adds to answers that came from the gRPC service.
const GRPC_METADATA_CONTENT_TYPE: &str = "grpc-metadata-content-type";

fn json_response(status: StatusCode, body: String) -> Response {
    if status == StatusCode::OK {
        return (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (
                    header::HeaderName::from_static(GRPC_METADATA_CONTENT_TYPE),
                    "application/grpc",
                ),
            ],
            body,
        )
            .into_response();
    }
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A unary error as etcd's gateway writes it: `{"error":..,"code":..,"message":..}`.
fn error_response(s: &Status) -> Response {
    #[derive(Serialize)]
    struct GatewayError<'a> {
        error: &'a str,
        code: i32,
        message: &'a str,
    }
    let body = GatewayError {
        error: s.message(),
        code: s.code() as i32,
        message: s.message(),
    };
    let json = serde_json::to_string(&body).unwrap_or_default();
    json_response(http_status(s.code()), json)
}

/// A stream error as etcd's gateway writes it, in place of the next message.
fn stream_error_line(s: &Status) -> String {
    let body = serde_json::json!({
        "error": {
            "grpc_code": s.code() as i32,
            "http_code": http_status(s.code()).as_u16(),
            "message": s.message(),
            "http_status": http_status(s.code()).canonical_reason().unwrap_or(""),
        }
    });
    format!("{body}\n")
}

/// Parses one request message; an empty body is the empty message.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A gRPC request carrying the gateway request's auth token.
fn grpc_request<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Serves one unary call of the gRPC method at `path`: JSON in, the service's answer as JSON
/// out, measured as that method.
async fn unary<Req, Resp, F, Fut>(path: &str, headers: HeaderMap, body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    let measured = Measured::start(path);
    let span = measured.span.clone();
    let result = tracing::Instrument::instrument(call(grpc_request(&headers, req)), span).await;
    let (response, outcome) = match result {
        Ok(resp) => match serde_json::to_string(resp.get_ref()) {
            Ok(json) => (json_response(StatusCode::OK, json), Ok(())),
            Err(e) => {
                let s = Status::internal(e.to_string());
                (error_response(&s), Err(s.code()))
            }
        },
        Err(s) => (error_response(&s), Err(s.code())),
    };
    measured.unary_done(outcome);
    response
}

type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves a stream: each message as a `{"result": ...}` line, an error as an `{"error": ...}`
/// line that ends the stream.
fn stream_response<T: Serialize + Send + 'static>(messages: Messages<T>) -> Response {
    let lines = messages.scan(false, |ended, m| {
        if *ended {
            return futures::future::ready(None);
        }
        let line = match m {
            Ok(msg) => match serde_json::to_string(&msg) {
                Ok(json) => format!("{{\"result\":{json}}}\n"),
                Err(e) => {
                    *ended = true;
                    stream_error_line(&Status::internal(e.to_string()))
                }
            },
            Err(s) => {
                *ended = true;
                stream_error_line(&s)
            }
        };
        futures::future::ready(Some(Ok::<_, std::convert::Infallible>(line)))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static(GRPC_METADATA_CONTENT_TYPE),
                "application/grpc",
            ),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}

macro_rules! unary_route {
    ($router:ident, $path:literal, $svc:ident, $trait:ident :: $method:ident) => {
        $router = $router.route(
            $path,
            post(
                |State(s): State<Services>, headers: HeaderMap, body: Bytes| async move {
                    let path = grpc_path(stringify!($svc), stringify!($method));
                    unary(&path, headers, body, |r| async move {
                        $trait::$method(&s.$svc, r).await
                    })
                    .await
                },
            ),
        );
    };
}

/// The gateway's routes under `/v3/` (and `/v3beta/`).
pub fn routes(services: &Services) -> Router {
    let services = services.clone();
    let mut r: Router<Services> = Router::new();
    unary_route!(r, "/kv/range", kv, Kv::range);
    unary_route!(r, "/kv/put", kv, Kv::put);
    unary_route!(r, "/kv/deleterange", kv, Kv::delete_range);
    unary_route!(r, "/kv/txn", kv, Kv::txn);
    unary_route!(r, "/kv/compaction", kv, Kv::compact);
    unary_route!(r, "/lease/grant", lease, Lease::lease_grant);
    unary_route!(r, "/lease/revoke", lease, Lease::lease_revoke);
    unary_route!(r, "/kv/lease/revoke", lease, Lease::lease_revoke);
    unary_route!(r, "/lease/timetolive", lease, Lease::lease_time_to_live);
    unary_route!(r, "/kv/lease/timetolive", lease, Lease::lease_time_to_live);
    unary_route!(r, "/lease/leases", lease, Lease::lease_leases);
    unary_route!(r, "/kv/lease/leases", lease, Lease::lease_leases);
    unary_route!(r, "/cluster/member/add", cluster, Cluster::member_add);
    unary_route!(r, "/cluster/member/remove", cluster, Cluster::member_remove);
    unary_route!(r, "/cluster/member/update", cluster, Cluster::member_update);
    unary_route!(r, "/cluster/member/list", cluster, Cluster::member_list);
    unary_route!(
        r,
        "/cluster/member/promote",
        cluster,
        Cluster::member_promote
    );
    unary_route!(r, "/maintenance/alarm", maintenance, Maintenance::alarm);
    unary_route!(r, "/maintenance/status", maintenance, Maintenance::status);
    unary_route!(
        r,
        "/maintenance/defragment",
        maintenance,
        Maintenance::defragment
    );
    unary_route!(r, "/maintenance/hash", maintenance, Maintenance::hash);
    unary_route!(r, "/maintenance/hashkv", maintenance, Maintenance::hash_kv);
    unary_route!(
        r,
        "/maintenance/transfer-leadership",
        maintenance,
        Maintenance::move_leader
    );
    unary_route!(
        r,
        "/maintenance/downgrade",
        maintenance,
        Maintenance::downgrade
    );
    unary_route!(r, "/auth/enable", auth, Auth::auth_enable);
    unary_route!(r, "/auth/disable", auth, Auth::auth_disable);
    unary_route!(r, "/auth/status", auth, Auth::auth_status);
    unary_route!(r, "/auth/authenticate", auth, Auth::authenticate);
    unary_route!(r, "/auth/user/add", auth, Auth::user_add);
    unary_route!(r, "/auth/user/get", auth, Auth::user_get);
    unary_route!(r, "/auth/user/list", auth, Auth::user_list);
    unary_route!(r, "/auth/user/delete", auth, Auth::user_delete);
    unary_route!(r, "/auth/user/changepw", auth, Auth::user_change_password);
    unary_route!(r, "/auth/user/grant", auth, Auth::user_grant_role);
    unary_route!(r, "/auth/user/revoke", auth, Auth::user_revoke_role);
    unary_route!(r, "/auth/role/add", auth, Auth::role_add);
    unary_route!(r, "/auth/role/get", auth, Auth::role_get);
    unary_route!(r, "/auth/role/list", auth, Auth::role_list);
    unary_route!(r, "/auth/role/delete", auth, Auth::role_delete);
    unary_route!(r, "/auth/role/grant", auth, Auth::role_grant_permission);
    unary_route!(r, "/auth/role/revoke", auth, Auth::role_revoke_permission);
    unary_route!(r, "/lock/lock", lock, Lock::lock);
    unary_route!(r, "/lock/unlock", lock, Lock::unlock);
    unary_route!(r, "/election/campaign", election, Election::campaign);
    unary_route!(r, "/election/proclaim", election, Election::proclaim);
    unary_route!(r, "/election/leader", election, Election::leader);
    unary_route!(r, "/election/resign", election, Election::resign);
    r = r
        .route("/election/observe", post(observe_handler))
        .route("/watch", post(watch_handler))
        .route("/lease/keepalive", post(keepalive_handler))
        .route("/maintenance/snapshot", post(snapshot_handler));
    let v3 = r
        .fallback(gateway_not_found)
        .method_not_allowed_fallback(gateway_method_not_allowed)
        .with_state(services);
    Router::new().nest("/v3", v3.clone()).nest("/v3beta", v3)
}

/// grpc-gateway's answer to an unknown `/v3/` path.
async fn gateway_not_found() -> Response {
    crate::health::text(StatusCode::NOT_FOUND, "Not Found\n")
}

/// grpc-gateway's answer to a method other than POST.
async fn gateway_method_not_allowed() -> Response {
    crate::health::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

/// The request messages of a bidirectional stream, read from `body` as they arrive. The first
/// one is read before the call starts: a body that does not begin with a message fails the
/// call (as before any answer). A later message that does not parse ends the requests, as
/// grpc-gateway stops sending on a decoding error, while the answers go on.
async fn inbound_of<T: DeserializeOwned + Send + 'static>(
    s: &Services,
    body: Body,
) -> Result<impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static, Status> {
    let max = (s.node.settings.max_request_bytes as usize).saturating_add(64 * 1024);
    let mut rest = body::messages::<T>(body, max);
    let first = match rest.next().await {
        Some(Ok(m)) => Some(Ok(m)),
        Some(Err(e)) => return Err(e),
        None => None,
    };
    let rest = rest.take_while(|m| {
        if let Err(e) = m {
            tracing::debug!(error = %e, "a gateway stream's request did not parse: no more requests");
        }
        futures::future::ready(m.is_ok())
    });
    Ok(futures::stream::iter(first).chain(rest))
}

async fn watch_handler(State(s): State<Services>, headers: HeaderMap, body: Body) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let inbound = match inbound_of(&s, body).await {
        Ok(i) => i,
        Err(e) => return error_response(&e),
    };
    let m = Measured::start("/etcdserverpb.Watch/Watch");
    let inbound = count_received(inbound, m.call.as_ref());
    let _entered = m.span.enter();
    stream_response(measured(
        watch::open(s.node.clone(), token, false, inbound),
        m.call,
    ))
}

async fn keepalive_handler(State(s): State<Services>, body: Body) -> Response {
    let inbound = match inbound_of(&s, body).await {
        Ok(i) => i,
        Err(e) => return error_response(&e),
    };
    let m = Measured::start("/etcdserverpb.Lease/LeaseKeepAlive");
    let inbound = count_received(inbound, m.call.as_ref());
    let _entered = m.span.enter();
    stream_response(measured(
        lease::keep_alive_stream(s.node.clone(), inbound),
        m.call,
    ))
}

/// Serves a server-streaming call of the gRPC method at `path`: one JSON request in, its
/// messages as `{"result": ...}` lines.
async fn server_stream<Req, Resp, F, Fut>(
    path: &str,
    headers: HeaderMap,
    body: Bytes,
    call: F,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Messages<Resp>>, Status>>,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let mut m = Measured::start(path);
    if let Some(c) = m.call.as_ref() {
        c.messages(true, 1);
    }
    let span = m.span.clone();
    match tracing::Instrument::instrument(call(grpc_request(&headers, req)), span).await {
        Ok(stream) => stream_response(measured(stream.into_inner(), m.call.take())),
        Err(e) => {
            if let Some(c) = m.call.as_mut() {
                c.finish(e.code() as i32);
            }
            error_response(&e)
        }
    }
}

async fn observe_handler(State(s): State<Services>, headers: HeaderMap, body: Bytes) -> Response {
    server_stream(
        "/v3electionpb.Election/Observe",
        headers,
        body,
        |r| async move { Election::observe(&s.election, r).await },
    )
    .await
}

async fn snapshot_handler(State(s): State<Services>, headers: HeaderMap, body: Bytes) -> Response {
    server_stream(
        "/etcdserverpb.Maintenance/Snapshot",
        headers,
        body,
        |r| async move { Maintenance::snapshot(&s.maintenance, r).await },
    )
    .await
}
