//! One client port for gRPC and HTTP, as etcd's: HTTP/2 requests with a gRPC content type go to
//! the tonic services, everything else (the JSON gateway, `/metrics`, `/health`, `/livez`,
//! `/readyz`, `/version`) to the HTTP routes. HTTP/1.1 and HTTP/2 (prior knowledge) are told
//! apart by the connection preface.
//!
//! Invariants: every accepted socket gets TCP_NODELAY (small responses must not wait behind
//! Nagle's algorithm); every gRPC call is counted in the `grpc_server_*` metrics; a shutdown stops
//! accepting, lets calls in flight finish for a grace period, then drops the rest.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

use crate::metrics;
use crate::metrics::grpc::{Call, Counted};
use crate::node::Node;
use crate::proto::etcdserverpb::kv_server::KvServer;

/// How long a shutdown waits for calls in flight (watch streams never end by themselves).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The HTTP routes served beside gRPC (the JSON gateway's are merged in by the caller).
pub fn http_routes(node: Arc<Node>) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/version", get(version_handler))
        .merge(crate::health::routes());
    if node.settings.enable_pprof {
        r = r.merge(super::pprof::routes());
    }
    r.fallback(not_found).with_state(node)
}

/// The routes of `--listen-metrics-urls`: `/metrics` and the health endpoints only.
pub fn metrics_routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .merge(crate::health::routes())
        .fallback(not_found)
        .with_state(node)
}

/// Go's `http.NotFound`, which etcd answers unknown paths with.
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

async fn metrics_handler(State(node): State<Arc<Node>>) -> Response {
    node.refresh_metrics();
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::get().encode(),
    )
        .into_response()
}

async fn version_handler() -> Response {
    // etcd's field order: server version, then cluster version.
    let body = format!(
        "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}.0\"}}",
        crate::REPORTED_ETCD_VERSION,
        crate::ETCD_API_VERSION
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The common name of the certificate a TLS client presented (the user, with
/// `--client-cert-auth` and authentication on), carried in each request's extensions.
#[derive(Debug, Clone)]
pub struct ClientCommonName(pub Arc<str>);

/// etcd's access control of HTTP requests on client URLs: `--cors` and `--host-whitelist`
/// (none on the metrics URLs, which etcd serves without it).
#[derive(Debug, Clone, Default)]
pub struct HttpAccess {
    /// Whether requests go through the access control at all.
    pub controlled: bool,
    /// Origins given CORS headers; `None` for any.
    pub cors: Option<Vec<String>>,
    /// Host names a plain-HTTP request may name; `None` for any.
    pub host_whitelist: Option<Vec<String>>,
}

/// The service behind each client connection: gRPC or HTTP by content type.
#[derive(Clone)]
pub struct ClientService {
    grpc: tonic::service::Routes,
    /// The KV service, called directly for `/etcdserverpb.KV/` paths: the hot path skips the
    /// router's path matching, its URL-parameter maps and boxed futures (about 3% of a put's
    /// instructions). The same service is also in `grpc`.
    kv: Option<KvServer<super::kv::KvService>>,
    http: Router,
    common_name: Option<Arc<str>>,
    access: Arc<HttpAccess>,
    /// Whether the connection is TLS (the host whitelist applies only without).
    tls: bool,
    /// The port's gRPC calls whose responses are being produced (see [`super::coalesce`]).
    calls: super::coalesce::Calls,
}

impl ClientService {
    /// Serves `grpc` and `http` together, HTTP under `access`.
    pub fn new(grpc: tonic::service::Routes, http: Router, access: HttpAccess) -> Self {
        ClientService {
            grpc: grpc.prepare(),
            kv: None,
            http,
            common_name: None,
            access: Arc::new(access),
            tls: false,
            calls: super::coalesce::Calls::default(),
        }
    }

    /// Calls `kv` directly for the KV service's paths instead of routing them (it must be the
    /// same service as the one in the routes, so both ways answer alike).
    pub fn with_kv(mut self, kv: KvServer<super::kv::KvService>) -> Self {
        self.kv = Some(kv);
        self
    }
}

/// etcd's CORS headers, for `origin` (`*` for any).
fn add_cors(h: &mut http::HeaderMap, origin: http::HeaderValue) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        http::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        http::HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// The `Access-Control-Allow-Origin` a request gets: `*` when any origin is allowed, its own
/// `Origin` when that is listed, none otherwise (the request is still served).
fn cors_origin<B>(access: &HttpAccess, req: &Request<B>) -> Option<http::HeaderValue> {
    match &access.cors {
        None => Some(http::HeaderValue::from_static("*")),
        Some(list) => req
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| list.iter().any(|l| l == o)))
            .cloned(),
    }
}

/// The host a request names (its `Host`, or the HTTP/2 authority), without the port and IPv6
/// brackets, as etcd's `GetHostname`.
fn hostname<B>(req: &Request<B>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((ip, _)) = rest.split_once(']') {
            return ip.to_string();
        }
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            h.to_string()
        }
        _ => host,
    }
}

/// etcd's answer to a plain-HTTP request naming a host off `--host-whitelist`.
fn host_refused(host: &str) -> Response {
    let body = format!(
        "\netcd received your request, but the Host header was unrecognized.\n\nTo fix this, choose one of the following options:\n- Enable TLS, then any HTTPS request will be allowed.\n- Add the hostname you want to use to the whitelist in settings.\n  - e.g. etcd --host-whitelist {host:?}\n\nThis requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl ClientService {
    /// Serves a request that is not gRPC: the HTTP routes, under etcd's access control when
    /// the port has it.
    fn call_http(&self, req: Request<hyper::body::Incoming>) -> BoxFuture {
        if !self.access.controlled {
            let mut http = self.http.clone();
            return Box::pin(async move { http.call(req.map(Body::new)).await });
        }
        // etcd's access controller: a plain-HTTP request must name a whitelisted host; CORS
        // headers go on every answer to an allowed origin; OPTIONS (a preflight) gets
        // nothing else.
        if !self.tls {
            if let Some(list) = &self.access.host_whitelist {
                let host = hostname(&req);
                if !list.contains(&host) {
                    tracing::warn!(
                        host,
                        "rejecting an HTTP request to prevent DNS rebinding attacks"
                    );
                    let resp = host_refused(&host);
                    return Box::pin(async move { Ok(resp) });
                }
            }
        }
        let origin = cors_origin(&self.access, &req);
        if req.method() == http::Method::OPTIONS {
            let mut resp = StatusCode::OK.into_response();
            if let Some(o) = origin {
                add_cors(resp.headers_mut(), o);
            }
            return Box::pin(async move { Ok(resp) });
        }
        let mut http = self.http.clone();
        Box::pin(async move {
            let mut resp = http.call(req.map(Body::new)).await?;
            if let Some(o) = origin {
                add_cors(resp.headers_mut(), o);
            }
            Ok(resp)
        })
    }
}

impl Service<Request<hyper::body::Incoming>> for ClientService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<hyper::body::Incoming>) -> BoxFuture {
        if let Some(cn) = &self.common_name {
            req.extensions_mut().insert(ClientCommonName(cn.clone()));
        }
        if !is_grpc(&req) {
            // Every HTTP answer carries a date, however it was made (see `with_date`).
            let answer = self.call_http(req);
            return Box::pin(async move { answer.await.map(with_date) });
        }
        let Some((call, span)) = begin_call(req.uri().path()) else {
            let mut grpc = self.grpc.clone();
            return Box::pin(async move {
                grpc.call(req)
                    .await
                    .map(|r| r.map(Body::new).into_response())
            });
        };
        let call = Arc::new(parking_lot::Mutex::new(call));
        let req = req.map(|b| Counted::new(b, call.clone(), true));
        let route = match &self.kv {
            Some(kv) if req.uri().path().starts_with(KV_PATH) => Route::Kv(kv.clone()),
            _ => Route::Any(self.grpc.clone()),
        };
        let in_progress = self.calls.enter();
        Box::pin(tracing::Instrument::instrument(
            async move {
                let resp = match route {
                    Route::Kv(mut kv) => kv.call(req).await?,
                    Route::Any(mut grpc) => grpc.call(req).await?,
                };
                drop(in_progress);
                // A trailers-only response (an error) carries its status in the headers.
                if let Some(code) = crate::metrics::grpc::grpc_status(resp.headers()) {
                    call.lock().finish(code);
                }
                Ok(resp.map(|b| Body::new(Counted::new(b, call, false))))
            },
            span,
        ))
    }
}

/// The path prefix of the KV service's methods.
const KV_PATH: &str = "/etcdserverpb.KV/";

/// Where a gRPC call goes: straight to the KV service, or through the router.
enum Route {
    Kv(KvServer<super::kv::KvService>),
    Any(tonic::service::Routes),
}

/// Starts measuring a call to the gRPC method at `path` (`/package.Service/Method`), whether it
/// came over gRPC or through the JSON gateway: counted in `grpc_server_started_total` and
/// `etcd_server_client_requests_total`, with a `grpc.request` span when tracing is on. `None`
/// for a path that names no method.
pub(crate) fn begin_call(path: &str) -> Option<(Call, tracing::Span)> {
    let call = Call::start(path)?;
    call.count_client_request();
    let span = if crate::telemetry::tracing_enabled() {
        let path = path.trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        tracing::info_span!(
            "grpc.request",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        )
    } else {
        tracing::Span::none()
    };
    Some((call, span))
}

/// Serves one accepted connection (plain or TLS) until it ends or the graceful shutdown ends it.
async fn serve_io<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    svc: ClientService,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = super::coalesce::Coalesced::new(io, svc.calls.clone());
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "client connection ended");
    }
}

/// How client connections are served: no limit on concurrent HTTP/2 streams (as etcd, which
/// lifts grpc-go's), and no `date` header on HTTP/2 responses (grpc-go sends none on gRPC, and
/// hyper's costs a header insert and its HPACK encoding on every response; the HTTP routes add
/// it themselves, see [`with_date`]).
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(None::<u32>)
        .auto_date_header(false);
    builder
}

/// `resp` with a `date` header, when it has none (an HTTP response over HTTP/2, see
/// [`connection_builder`]; HTTP/1.1 responses get hyper's).
fn with_date(mut resp: Response) -> Response {
    if !resp.headers().contains_key(header::DATE) {
        if let Ok(v) =
            http::HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
        {
            resp.headers_mut().insert(header::DATE, v);
        }
    }
    resp
}

/// Accepts connections on `listener` (over TLS with `tls`) and serves `svc` on each until `stop`
/// resolves.
pub async fn serve_listener(
    listener: TcpListener,
    svc: ClientService,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the open connections.
                        tracing::warn!(error = %e, "accepting a client connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "setting TCP_NODELAY");
                }
                let builder = builder.clone();
                let mut svc = svc.clone();
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Some(acceptor) = tls else {
                        serve_io(&builder, stream, svc, watcher).await;
                        return;
                    };
                    let Some(stream) = crate::tls::accept(&acceptor, stream, "client").await else {
                        return;
                    };
                    svc.tls = true;
                    svc.common_name = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(crate::tls::common_name)
                        .map(Arc::from);
                    serve_io(&builder, stream, svc, watcher).await;
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("client connections still open after the grace period; closing them");
    }
}

/// Accepts connections on the unix socket `listener` (etcd's `unix://host:port` client URLs) and
/// serves `svc` on each until `stop` resolves; then removes the socket file at `path`, as etcd
/// does when it closes the listener.
pub async fn serve_unix_listener(
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    svc: ClientService,
    stop: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a unix socket connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let builder = builder.clone();
                let svc = svc.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move { serve_io(&builder, stream, svc, watcher).await });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::debug!(path = %path.display(), error = %e, "removing the unix socket");
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("unix socket connections still open after the grace period; closing them");
    }
}
