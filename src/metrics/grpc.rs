//! go-grpc-prometheus' server metrics (`grpc_server_*`), which etcd exports and its alerts use, and
//! the client traffic byte counters.
//!
//! Invariants: a call counts once in `grpc_server_started_total` when its request arrives and once
//! in `grpc_server_handled_total` when its status is known (the trailers, or `Canceled` when the
//! client goes away first); messages are counted from the gRPC length-prefixed framing of the
//! bodies, so a message split across HTTP/2 frames counts once. A method's labelled series are
//! looked up once and kept ([`Handles`]), for at most [`MAX_CACHED_METHODS`] methods (paths come
//! from clients: the cache cannot grow without bound).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http_body::{Body, Frame};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use super::MetricsError;

/// The `grpc-status` header or trailer name, parsed once (a lookup by `&str` parses it each time).
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The status code a response's headers (trailers-only) or trailers carry, if any.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The `grpc_server_*` families.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    handling: HistogramVec,
    methods: Arc<parking_lot::RwLock<HashMap<String, Arc<Handles>>>>,
}

/// The most methods whose series are kept resolved; calls to others resolve theirs each time.
pub const MAX_CACHED_METHODS: usize = 256;

/// One method's labelled series, resolved once: a label lookup hashes the labels and takes a
/// lock, several times per call otherwise.
#[derive(Debug)]
struct Handles {
    labels: [String; 3],
    started: IntCounter,
    msg_received: IntCounter,
    msg_sent: IntCounter,
    handling: Histogram,
    handled_ok: IntCounter,
    /// `etcd_server_client_requests_total` of the method's kind (unary or stream).
    client_requests: IntCounter,
}

impl GrpcMetrics {
    pub(super) fn register(r: &Registry) -> Result<GrpcMetrics, MetricsError> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = IntCounterVec::new(
            Opts::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            &labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let msg_received = IntCounterVec::new(
            Opts::new(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
            ),
            &labels,
        )?;
        let msg_sent = IntCounterVec::new(
            Opts::new(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
            ),
            &labels,
        )?;
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &labels,
        )?;
        for c in [&started, &handled, &msg_received, &msg_sent] {
            r.register(Box::new(c.clone()))?;
        }
        r.register(Box::new(handling.clone()))?;
        Ok(GrpcMetrics {
            started,
            handled,
            msg_received,
            msg_sent,
            handling,
            methods: Arc::default(),
        })
    }

    /// The series of `service`/`method` (of `kind`), from the cache when it is there;
    /// `client_requests` is etcd's per-kind request counter, resolved once per method too.
    fn handles(
        &self,
        path: &str,
        service: &str,
        method: &str,
        kind: &str,
        client_requests: &IntCounterVec,
    ) -> Arc<Handles> {
        if let Some(h) = self.methods.read().get(path) {
            return h.clone();
        }
        let l = [kind, service, method];
        let h = Arc::new(Handles {
            labels: [kind.to_string(), service.to_string(), method.to_string()],
            started: self.started.with_label_values(&l),
            msg_received: self.msg_received.with_label_values(&l),
            msg_sent: self.msg_sent.with_label_values(&l),
            handling: self.handling.with_label_values(&l),
            handled_ok: self
                .handled
                .with_label_values(&[kind, service, method, code_name(0)]),
            client_requests: client_requests.with_label_values(&[
                if kind == "unary" { "unary" } else { "stream" },
                crate::ETCD_API_VERSION,
            ]),
        });
        let mut methods = self.methods.write();
        if methods.len() < MAX_CACHED_METHODS {
            methods.insert(path.to_string(), h.clone());
        }
        h
    }
}

/// The kind of a gRPC method, as go-grpc-prometheus labels it.
pub fn method_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("v3electionpb.Election", "Observe")
        | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    }
}

/// gRPC status code names as go-grpc-prometheus writes them.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// One call being measured: its method's series, start time and whether its end was recorded.
#[derive(Debug)]
pub struct Call {
    handles: Arc<Handles>,
    start: Instant,
    done: bool,
}

impl Call {
    /// Starts measuring a call to `path` (`/package.Service/Method`); `None` for other paths.
    pub fn start(path: &str) -> Option<Call> {
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        let kind = method_type(service, method);
        let m = super::get();
        let handles = m
            .grpc
            .handles(path, service, method, kind, &m.client_requests);
        handles.started.inc();
        Some(Call {
            handles,
            start: Instant::now(),
            done: false,
        })
    }

    /// Counts the call in `etcd_server_client_requests_total` (by its kind: unary or stream).
    pub fn count_client_request(&self) {
        self.handles.client_requests.inc();
    }

    fn labels(&self) -> [&str; 3] {
        let l = &self.handles.labels;
        [&l[0], &l[1], &l[2]]
    }

    /// Records the call's end with gRPC status `code` (once).
    pub fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        if code == 0 {
            self.handles.handled_ok.inc();
        } else {
            let [t, s, me] = self.labels();
            super::get()
                .grpc
                .handled
                .with_label_values(&[t, s, me, code_name(code)])
                .inc();
        }
        self.handles
            .handling
            .observe(self.start.elapsed().as_secs_f64());
    }

    /// The counter of this call's messages received from the client (`received`) or sent to
    /// it, for counting from a task that does not hold the call.
    pub fn message_counter(&self, received: bool) -> prometheus::IntCounter {
        if received {
            self.handles.msg_received.clone()
        } else {
            self.handles.msg_sent.clone()
        }
    }

    /// Counts `n` messages received from the client (`received`) or sent to it.
    pub fn messages(&self, received: bool, n: u64) {
        if n == 0 {
            return;
        }
        if received {
            self.handles.msg_received.inc_by(n);
        } else {
            self.handles.msg_sent.inc_by(n);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The response ended without a status: the client went away first.
        self.finish(1);
    }
}

/// Counts gRPC messages in a byte stream of length-prefixed frames (1 flag byte, 4 length bytes).
#[derive(Debug, Default)]
pub struct Framing {
    /// Bytes still to skip in the current message's payload.
    remaining: u64,
    /// Header bytes of the next message seen so far.
    header: Vec<u8>,
}

impl Framing {
    /// Feeds `data`; returns how many messages started in it.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining as usize).min(data.len());
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let need = 5 - self.header.len();
            let take = need.min(data.len());
            self.header.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.header.len() == 5 {
                started += 1;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.remaining = u64::from(len);
                self.header.clear();
            }
        }
        started
    }
}

/// A body that counts bytes and messages of one direction of a call.
pub struct Counted<B> {
    inner: B,
    call: Arc<parking_lot::Mutex<Call>>,
    framing: Framing,
    received: bool,
}

impl<B> Counted<B> {
    /// Wraps `inner`; `received` is true for the request body.
    pub fn new(inner: B, call: Arc<parking_lot::Mutex<Call>>, received: bool) -> Self {
        Counted {
            inner,
            call,
            framing: Framing::default(),
            received,
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let chunk = data.chunk();
                    // A Buf's first chunk is its whole content for the bodies hyper and tonic
                    // produce (Bytes); count what is visible.
                    let n = this.framing.feed(chunk);
                    let bytes = data.remaining() as u64;
                    let m = super::get();
                    if this.received {
                        m.client_grpc_received_bytes.inc_by(bytes);
                    } else {
                        m.client_grpc_sent_bytes.inc_by(bytes);
                    }
                    this.call.lock().messages(this.received, n);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    if !this.received {
                        let code = grpc_status(trailers).unwrap_or(2);
                        this.call.lock().finish(code);
                    }
                }
            }
            // A response that ends without trailers (or a status in its headers) ended abnormally.
            Poll::Ready(None) if !this.received => this.call.lock().finish(2),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_counts_messages_split_across_chunks() {
        let mut f = Framing::default();
        // Two messages of 3 and 0 bytes, fed in awkward pieces.
        let bytes = [0u8, 0, 0, 0, 3, 7, 8, 9, 0, 0, 0, 0, 0];
        assert_eq!(f.feed(&bytes[..2]), 0);
        assert_eq!(f.feed(&bytes[2..6]), 1);
        assert_eq!(f.feed(&bytes[6..]), 1);
        assert_eq!(f.feed(&[0, 0, 0, 0, 1, 5]), 1);
    }

    #[test]
    fn paths_map_to_services_methods_and_types() {
        assert_eq!(method_type("etcdserverpb.Watch", "Watch"), "bidi_stream");
        assert_eq!(method_type("etcdserverpb.KV", "Range"), "unary");
        assert!(Call::start("/etcdserverpb.KV/Range").is_some());
        assert!(Call::start("/metrics").is_none());
        assert_eq!(code_name(8), "ResourceExhausted");
    }

    #[test]
    fn resolved_series_are_kept_for_a_bounded_number_of_methods() {
        let g = &crate::metrics::get().grpc;
        for i in 0..MAX_CACHED_METHODS + 50 {
            let path = format!("/test.Cache/M{i}");
            let mut call = Call::start(&path).unwrap_or_else(|| panic!("{path} is a method"));
            call.finish(0);
            // Cached or not, the call counted in the same series a label lookup finds.
            let l = ["unary", "test.Cache", &path[12..]];
            assert_eq!(g.started.with_label_values(&l).get(), 1);
            assert_eq!(
                g.handled.with_label_values(&[l[0], l[1], l[2], "OK"]).get(),
                1
            );
        }
        assert!(g.methods.read().len() <= MAX_CACHED_METHODS);
    }
}
