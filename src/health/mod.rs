//! etcd's HTTP health endpoints: `/health` (JSON, with `?serializable` and `?exclude=ALARM`), and
//! the Kubernetes-style `/livez` and `/readyz` (plain text, `?verbose`, `?exclude=check`, one
//! path per check).
//!
//! Invariants: `/livez` fails only when this member cannot serve a local read (a member without a
//! leader is alive, and must not be restarted for it); `/readyz` also fails without a leader
//! (a linearizable read cannot be confirmed), on a learner, and under the CORRUPT alarm. Checks
//! never write.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http::{header, Method, StatusCode};

use crate::node::Node;
use crate::proto::etcdserverpb::{AlarmType, RangeRequest};

/// The routes of the health endpoints (state: the node).
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/health", any(health))
        .route("/livez", any(livez))
        .route("/readyz", any(readyz))
        .route("/livez/{check}", any(livez_one))
        .route("/readyz/{check}", any(readyz_one))
}

/// The query parameters of a health request, parsed as Go does (`a=1&a=2` repeats a key; a key
/// without `=` has an empty value).
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    let Some(raw) = raw else { return Vec::new() };
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn has_key(q: &[(String, String)], key: &str) -> bool {
    q.iter().any(|(k, _)| k == key)
}

fn values(q: &[(String, String)], key: &str) -> Vec<String> {
    q.iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect()
}

fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            (header::ALLOW, "GET"),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        "Method Not Allowed\n",
    )
        .into_response()
}

/// How long a linearizable check may wait for a quorum.
fn read_timeout(node: &Node) -> Duration {
    (node.settings.election * 2).max(Duration::from_secs(1))
}

fn alarm_name(t: i32) -> &'static str {
    match AlarmType::try_from(t) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

/// A local (serializable) read, as a health check's probe.
fn serializable_read(node: &Node) -> Result<(), String> {
    let r = RangeRequest {
        key: b"health".to_vec(),
        serializable: true,
        keys_only: true,
        limit: 1,
        ..Default::default()
    };
    node.mvcc.range(&r).map(|_| ()).map_err(|e| e.to_string())
}

/// A read confirmed by a quorum.
async fn linearizable_read(node: &Node) -> Result<(), String> {
    match tokio::time::timeout(read_timeout(node), node.linearizable_barrier()).await {
        Ok(Ok(())) => serializable_read(node),
        // etcd's text for the same failures: `etcdserver: no leader`, `... request timed out`.
        Ok(Err(e)) => Err(format!("etcdserver: {e}")),
        Err(_) => Err("etcdserver: request timed out".to_string()),
    }
}

/// `GET /health`: `{"health":"true","reason":""}`, or 503 with the first failing check.
async fn health(
    method: Method,
    State(node): State<Arc<Node>>,
    RawQuery(raw): RawQuery,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let q = query_pairs(raw.as_deref());
    let excluded = values(&q, "exclude");
    let serializable = q.iter().any(|(k, v)| k == "serializable" && v == "true");
    let reason = health_reason(&node, &excluded, serializable).await;
    let (status, health) = match &reason {
        None => (StatusCode::OK, "true"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "false"),
    };
    let body = serde_json::json!({
        "health": health,
        "reason": reason.unwrap_or_default(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn health_reason(node: &Node, excluded: &[String], serializable: bool) -> Option<String> {
    for a in node.alarms.list() {
        let name = alarm_name(a.alarm);
        if !excluded.iter().any(|e| e == name) {
            return Some(format!("ALARM {name}"));
        }
    }
    if !serializable && node.raft.known_leader().is_none() {
        return Some("RAFT NO LEADER".to_string());
    }
    let read = if serializable {
        serializable_read(node)
    } else {
        linearizable_read(node).await
    };
    read.err().map(|e| format!("QGET ERROR:{e}"))
}

/// The checks of `/livez` and `/readyz`, in etcd's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    async fn run(self, node: &Node) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                if node.alarms.has(AlarmType::Corrupt) {
                    Err("Alarm active:CORRUPT".to_string())
                } else {
                    Ok(())
                }
            }
            Check::SerializableRead => serializable_read(node),
            Check::LinearizableRead => linearizable_read(node).await,
            Check::NonLearner => {
                if node.raft.is_learner() {
                    Err("etcdserver: rpc not supported for learner".to_string())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A plain-text answer as Go's `http.Error` writes it (with `nosniff`); the gateway's 404 and 405
/// answers use it too.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let body: String = body.into();
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (
                header::HeaderName::from_static("x-content-type-options"),
                "nosniff",
            ),
        ],
        body,
    )
        .into_response()
}

/// Runs `checks` (minus the excluded ones) and answers as Kubernetes' healthz does.
async fn run_checks(
    path: &str,
    checks: &[Check],
    method: Method,
    node: &Node,
    raw: Option<String>,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let q = query_pairs(raw.as_deref());
    let excluded = values(&q, "exclude");
    let mut out = String::new();
    let mut failed = false;
    for &c in checks {
        if excluded.iter().any(|e| e == c.name()) {
            out.push_str(&format!("[+]{} excluded: ok\n", c.name()));
            continue;
        }
        match c.run(node).await {
            Ok(()) => out.push_str(&format!("[+]{} ok\n", c.name())),
            Err(e) => {
                failed = true;
                out.push_str(&format!("[-]{} failed: {e}\n", c.name()));
            }
        }
    }
    for e in &excluded {
        if !checks.iter().any(|c| c.name() == e) {
            out.push_str(&format!(
                "warn: some health checks cannot be excluded: no matches for \"{e}\"\n"
            ));
        }
    }
    if failed {
        out.push_str(&format!("{path} check failed\n"));
        return text(StatusCode::SERVICE_UNAVAILABLE, out);
    }
    if has_key(&q, "verbose") {
        out.push_str(&format!("{path} check passed\n"));
        return text(StatusCode::OK, out);
    }
    text(StatusCode::OK, "ok".to_string())
}

async fn livez(method: Method, State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    run_checks("livez", LIVEZ, method, &node, raw).await
}

async fn readyz(
    method: Method,
    State(node): State<Arc<Node>>,
    RawQuery(raw): RawQuery,
) -> Response {
    run_checks("readyz", READYZ, method, &node, raw).await
}

async fn one(
    path: &str,
    checks: &[Check],
    name: &str,
    method: Method,
    node: &Node,
    raw: Option<String>,
) -> Response {
    match checks.iter().find(|c| c.name() == name) {
        Some(c) => run_checks(path, std::slice::from_ref(c), method, node, raw).await,
        None => text(StatusCode::NOT_FOUND, "404 page not found\n".to_string()),
    }
}

async fn livez_one(
    method: Method,
    State(node): State<Arc<Node>>,
    Path(check): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    one("livez", LIVEZ, &check, method, &node, raw).await
}

async fn readyz_one(
    method: Method,
    State(node): State<Arc<Node>>,
    Path(check): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    one("readyz", READYZ, &check, method, &node, raw).await
}
