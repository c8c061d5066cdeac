//! A stand-in for the few Kubernetes API endpoints oxcd's membership controller uses: its
//! StatefulSet (get, list and watch by name), its pods (list and watch by label, delete) and
//! Events (create). The state is a plain struct the test edits (replicas, pods, revisions); the
//! server records every request and can be told to fail some.
//!
//! The Docker end-to-end test backs it with containers: a pod delete is seen by the test's
//! StatefulSet emulation, which replaces the container.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// The labels the StatefulSet selects its pods by.
pub const SELECTOR: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "oxcd"),
    ("app.kubernetes.io/instance", "t"),
];

/// A pod as the fake API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePod {
    /// Ready condition.
    pub ready: bool,
    /// `controller-revision-hash`.
    pub revision: String,
    /// Being deleted (deletionTimestamp set).
    pub terminating: bool,
}

/// A request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The body (JSON), for writes.
    pub body: Option<Value>,
}

/// A scripted failure: requests whose `METHOD path` starts with `prefix` get `status`, `times`
/// times.
#[derive(Debug, Clone)]
pub struct Fault {
    /// `"DELETE /api/v1/..."` prefix.
    pub prefix: String,
    /// HTTP status to answer.
    pub status: u16,
    /// How many more requests fail.
    pub times: usize,
}

/// What the fake API serves.
#[derive(Debug)]
pub struct KubeState {
    /// Namespace.
    pub namespace: String,
    /// StatefulSet name.
    pub name: String,
    /// `spec.replicas`.
    pub replicas: u32,
    /// `updateStrategy: OnDelete` (else RollingUpdate).
    pub on_delete: bool,
    /// `status.updateRevision`.
    pub update_revision: String,
    /// The pods by ordinal.
    pub pods: BTreeMap<u32, FakePod>,
    /// Every request.
    pub requests: Vec<Seen>,
    /// Events created.
    pub events: Vec<Value>,
    /// Pods deleted through the API, in order.
    pub deleted: Vec<String>,
    /// Scripted failures.
    pub faults: Vec<Fault>,
    rv: u64,
}

impl KubeState {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn labels(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in SELECTOR {
            m.insert(k.to_string(), json!(v));
        }
        Value::Object(m)
    }

    /// The StatefulSet object.
    pub fn statefulset(&self) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": self.name, "namespace": self.namespace, "uid": "uid-sts",
                "resourceVersion": self.rv.to_string(),
            },
            "spec": {
                "replicas": self.replicas,
                "serviceName": format!("{}-headless", self.name),
                "selector": {"matchLabels": self.labels()},
                "template": {"metadata": {"labels": self.labels()}},
                "updateStrategy": {"type": if self.on_delete { "OnDelete" } else { "RollingUpdate" }},
            },
            "status": {"replicas": self.pods.len(), "updateRevision": self.update_revision},
        })
    }

    /// One pod object.
    pub fn pod(&self, ordinal: u32) -> Option<Value> {
        let p = self.pods.get(&ordinal)?;
        let mut labels = self.labels();
        labels["controller-revision-hash"] = json!(p.revision);
        let mut meta = json!({
            "name": format!("{}-{ordinal}", self.name), "namespace": self.namespace,
            "labels": labels, "resourceVersion": self.rv.to_string(),
        });
        if p.terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Some(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}]},
        }))
    }
}

/// The fake API server; stops when dropped.
pub struct FakeKube {
    /// Its base URL.
    pub url: String,
    /// Its state (edit it, then call [`FakeKube::changed`]).
    pub state: Arc<Mutex<KubeState>>,
    changes: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v
                .replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/");
            (k.to_string(), v)
        })
        .collect()
}

impl FakeKube {
    /// Starts the server on a free loopback port (`bind` overrides the address, for containers).
    pub async fn start(state: KubeState, bind: Option<SocketAddr>) -> FakeKube {
        let listener = tokio::net::TcpListener::bind(
            bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await
        .expect("bind the fake Kubernetes API");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(state));
        let (changes, _) = broadcast::channel(1024);
        let (st, tx) = (state.clone(), changes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (st, tx) = (st.clone(), tx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, tx) = (st.clone(), tx.clone());
                        async move { Ok::<_, Infallible>(handle(req, st, tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        FakeKube {
            url: format!("http://{addr}"),
            state,
            changes,
            task,
        }
    }

    /// Tells open watches that the state changed.
    pub fn changed(&self) {
        self.notifier().changed();
    }

    /// A handle that edits the state and tells the watches, for another thread.
    pub fn notifier(&self) -> Notifier {
        Notifier {
            state: self.state.clone(),
            changes: self.changes.clone(),
        }
    }

    /// The requests seen so far, as `METHOD uri`, and forgets them.
    pub fn take_requests(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().requests)
    }
}

/// Edits the fake API's state from anywhere and wakes its watches.
#[derive(Clone)]
pub struct Notifier {
    /// The state.
    pub state: Arc<Mutex<KubeState>>,
    changes: broadcast::Sender<()>,
}

impl Notifier {
    /// Tells open watches that the state changed.
    pub fn changed(&self) {
        self.state.lock().bump();
        let _ = self.changes.send(());
    }
}

/// A new state: `replicas` ready pods at revision `rev`, updates RollingUpdate.
pub fn state(name: &str, replicas: u32, rev: &str) -> KubeState {
    KubeState {
        namespace: "ns".to_string(),
        name: name.to_string(),
        replicas,
        on_delete: false,
        update_revision: rev.to_string(),
        pods: (0..replicas)
            .map(|o| {
                (
                    o,
                    FakePod {
                        ready: true,
                        revision: rev.to_string(),
                        terminating: false,
                    },
                )
            })
            .collect(),
        requests: Vec::new(),
        events: Vec::new(),
        deleted: Vec::new(),
        faults: Vec::new(),
        rv: 1,
    }
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<KubeState>>,
    changes: broadcast::Sender<()>,
) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path().to_string();
    let q = query(&uri);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    let mut s = st.lock();
    s.requests.push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        body: body.clone(),
    });
    let line = format!("{method} {path}");
    if let Some(f) = s
        .faults
        .iter_mut()
        .find(|f| f.times > 0 && line.starts_with(&f.prefix))
    {
        f.times -= 1;
        let code = f.status;
        return status(code, "InternalError", &format!("scripted failure {code}"));
    }
    let ns = s.namespace.clone();
    let name = s.name.clone();
    let sets = format!("/apis/apps/v1/namespaces/{ns}/statefulsets");
    let pods = format!("/api/v1/namespaces/{ns}/pods");
    let events = format!("/api/v1/namespaces/{ns}/events");
    let rv = s.rv.to_string();
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, path.as_str()) {
        (Method::GET, p) if p == format!("{sets}/{name}") => full(StatusCode::OK, &s.statefulset()),
        (Method::GET, p) if p.starts_with(&format!("{sets}/")) => {
            status(404, "NotFound", "statefulset not found")
        }
        (Method::GET, p) if p == sets => {
            if q.get("fieldSelector") != Some(&format!("metadata.name={name}")) {
                // What a Role limited by resourceNames allows: only a list of that one name.
                return status(403, "Forbidden", "list needs fieldSelector metadata.name");
            }
            if watch {
                drop(s);
                return watch_stream(st, changes, |s| vec![s.statefulset()]);
            }
            full(
                StatusCode::OK,
                &json!({"apiVersion": "apps/v1", "kind": "StatefulSetList",
                        "metadata": {"resourceVersion": rv}, "items": [s.statefulset()]}),
            )
        }
        (Method::GET, p) if p == pods => {
            let want: Vec<String> = SELECTOR.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let got: Vec<String> = q
                .get("labelSelector")
                .map(|l| l.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            if !want.iter().all(|w| got.contains(w)) {
                return status(400, "BadRequest", "unexpected label selector");
            }
            let all =
                |s: &KubeState| -> Vec<Value> { s.pods.keys().filter_map(|o| s.pod(*o)).collect() };
            if watch {
                drop(s);
                return watch_stream(st, changes, all);
            }
            full(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": rv}, "items": all(&s)}),
            )
        }
        (Method::DELETE, p) if p.starts_with(&format!("{pods}/")) => {
            let pod = p.rsplit('/').next().unwrap_or("").to_string();
            let ordinal = pod
                .strip_prefix(&format!("{name}-"))
                .and_then(|o| o.parse::<u32>().ok());
            match ordinal.and_then(|o| s.pod(o).map(|v| (o, v))) {
                Some((o, mut v)) => {
                    s.deleted.push(pod);
                    if let Some(p) = s.pods.get_mut(&o) {
                        p.terminating = true;
                    }
                    s.bump();
                    let _ = changes.send(());
                    v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    full(StatusCode::OK, &v)
                }
                None => status(404, "NotFound", &format!("pods \"{pod}\" not found")),
            }
        }
        (Method::POST, p) if p == events => match body {
            Some(ev) => {
                s.events.push(ev.clone());
                full(StatusCode::CREATED, &ev)
            }
            None => status(400, "BadRequest", "no body"),
        },
        _ => status(404, "NotFound", "no such endpoint in the fake API"),
    }
}

/// A watch: one MODIFIED event per object whenever the state changes, until the client goes
/// away or `timeoutSeconds` (capped at 30 s) passes.
fn watch_stream(
    st: Arc<Mutex<KubeState>>,
    changes: broadcast::Sender<()>,
    objects: impl Fn(&KubeState) -> Vec<Value> + Send + 'static,
) -> Response<Body> {
    let mut rx = changes.subscribe();
    let stream = async_stream(move |tx: tokio::sync::mpsc::Sender<Bytes>| async move {
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(30));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                r = rx.recv() => {
                    if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                        return;
                    }
                    let objs = objects(&st.lock());
                    for o in objs {
                        let line = json!({"type": "MODIFIED", "object": o}).to_string() + "\n";
                        if tx.send(Bytes::from(line)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let mut r = Response::new(stream);
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

/// A streaming body fed by a task.
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(f(tx));
    let s = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(s))
}

use futures::StreamExt;
