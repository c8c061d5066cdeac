//! The client side of the peer protocol: openraft's network over tonic, plus the calls a member
//! makes on the leader (forwarded proposals, read index, membership changes) and on any member
//! (cluster info, campaign).
//!
//! Invariants: every peer RPC has a deadline (openraft's TTL for raft messages, the request timeout
//! otherwise), connections are lazy and per peer, so an unreachable or slow peer only delays calls
//! to itself. The time of each peer's last successful reply is kept for quorum-safety checks, and
//! forgotten as soon as a call to that peer times out or finds it unreachable.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::snapshot_store::{snapshot_files, SnapError};
use super::TypeConfig;
use crate::proto::oxcdpeerpb::peer_client::PeerClient;
use crate::proto::oxcdpeerpb::{Payload, SnapshotChunk};
use crate::types::Member;

/// The most bytes one AppendEntries message carries when it holds more than one entry; larger
/// ones are split (etcd sends at most 1 MiB per append message; bigger pieces suit our batched
/// entries, small enough that a catch-up never builds a message near the gRPC limit).
pub const APPEND_LIMIT: usize = 16 * 1024 * 1024;

/// A failure to reach a peer or to understand its reply.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer has no usable URL.
    #[error("member {0:x} has no usable peer URL")]
    NoUrl(u64),
    /// Connecting or calling failed.
    #[error("member {id:x}: {msg}")]
    Transport {
        /// The peer.
        id: u64,
        /// What failed.
        msg: String,
    },
    /// The call did not finish in time.
    #[error("member {0:x}: peer request timed out")]
    Timeout(u64),
    /// The peer does not know the call (an older version).
    #[error("member {0:x} does not know this call")]
    Unimplemented(u64),
    /// A payload could not be encoded or decoded.
    #[error("peer payload: {0}")]
    Codec(String),
}

/// The metadata key carrying the sender's cluster ID (hex) on raft messages, as etcd's peers send
/// `X-Etcd-Cluster-ID`.
pub const CLUSTER_ID_HEADER: &str = "x-etcd-cluster-id";

/// The message a member answers a removed member's raft messages with.
pub const REMOVED_MEMBER: &str = "the member has been permanently removed from the cluster";

/// The most snapshot data one chunk carries (less when the peer message limit is smaller).
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// How long a snapshot stream may wait for the receiver to take the next chunk.
const SNAPSHOT_STALL: Duration = Duration::from_secs(60);

/// Connections to peers, by member ID.
pub struct Peers {
    conns: Mutex<HashMap<u64, (String, PeerClient<Channel>)>>,
    last_ok: Mutex<HashMap<u64, Instant>>,
    /// When each peer last replied at all (kept through failures, unlike `last_ok`).
    last_reply: Mutex<HashMap<u64, Instant>>,
    /// Since when each peer has been unreachable (cleared by a successful reply).
    unreachable_since: Mutex<HashMap<u64, Instant>>,
    max_message: usize,
    removed: tokio::sync::watch::Sender<bool>,
    cluster_id: u64,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// Encodes a value for a [`Payload`].
pub fn encode<T: Serialize>(v: &T) -> Result<Payload, PeerError> {
    bincode::serialize(v)
        .map(|data| Payload { data })
        .map_err(|e| PeerError::Codec(e.to_string()))
}

/// Decodes a [`Payload`].
pub fn decode<T: DeserializeOwned>(p: &Payload) -> Result<T, PeerError> {
    bincode::deserialize(&p.data).map_err(|e| PeerError::Codec(e.to_string()))
}

impl Peers {
    /// An empty set of connections of a member of `cluster_id` (0 while joining, when it is not
    /// known yet); messages up to `max_message` bytes.
    pub fn new(max_message: usize, cluster_id: u64) -> Arc<Peers> {
        Arc::new(Peers {
            conns: Mutex::new(HashMap::new()),
            last_ok: Mutex::new(HashMap::new()),
            last_reply: Mutex::new(HashMap::new()),
            unreachable_since: Mutex::new(HashMap::new()),
            max_message,
            removed: tokio::sync::watch::Sender::new(false),
            cluster_id,
        })
    }

    /// Becomes true once a peer has told this member it was removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// A client for member `id` reachable at `url`.
    pub fn client_for_url(&self, id: u64, url: &str) -> Result<PeerClient<Channel>, PeerError> {
        let mut conns = self.conns.lock();
        if let Some((u, c)) = conns.get(&id) {
            if u == url {
                return Ok(c.clone());
            }
        }
        // An https peer is dialed through oxcd's own TLS connector (tonic sees a plain URL).
        let tls = url
            .strip_prefix("https://")
            .map(|rest| (format!("http://{rest}"), crate::tls::peer_client()));
        let target = tls.as_ref().map(|(u, _)| u.as_str()).unwrap_or(url);
        let ep = Endpoint::from_shared(target.to_string())
            .map_err(|e| PeerError::Transport {
                id,
                msg: format!("bad peer URL {url}: {e}"),
            })?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = match tls {
            None => ep.connect_lazy(),
            Some((_, Some(config))) => {
                ep.connect_with_connector_lazy(crate::tls::TlsConnector::new(config))
            }
            Some((_, None)) => {
                return Err(PeerError::Transport {
                    id,
                    msg: format!("{url} is https but peer TLS is not configured (--peer-cert-file, --peer-key-file or --peer-auto-tls)"),
                })
            }
        };
        let client = PeerClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        conns.insert(id, (url.to_string(), client.clone()));
        Ok(client)
    }

    /// A client for member `id` described by `node`.
    pub fn client(&self, id: u64, node: &Member) -> Result<PeerClient<Channel>, PeerError> {
        let url = node.peer_urls.first().ok_or(PeerError::NoUrl(id))?;
        self.client_for_url(id, url)
    }

    /// Records a successful reply from `id`.
    pub fn mark_ok(&self, id: u64) {
        let now = Instant::now();
        self.last_ok.lock().insert(id, now);
        self.last_reply.lock().insert(id, now);
        self.unreachable_since.lock().remove(&id);
    }

    /// Records that `id` could not be reached (kept from the first failure on).
    fn mark_unreachable(&self, id: u64) {
        self.unreachable_since
            .lock()
            .entry(id)
            .or_insert_with(Instant::now);
    }

    /// How long to wait before calling `id` again after it could not be reached: briefly while
    /// it has been down for a short time (a restart), longer once it stays down.
    fn retry_wait(&self, id: u64) -> Duration {
        let since = self.unreachable_since.lock().get(&id).copied();
        match since {
            Some(t) if t.elapsed() >= BACKOFF_FAST_FOR => BACKOFF_SLOW,
            _ => BACKOFF_FAST,
        }
    }

    /// Records a call to `id` that failed with `status` (unreachable, or told it was removed)
    /// and returns the error for it.
    fn failed(&self, id: u64, status: &tonic::Status) -> PeerError {
        crate::metrics::get()
            .peer_sent_failures
            .with_label_values(&[&format!("{id:x}")])
            .inc();
        if status.code() == tonic::Code::Unavailable {
            self.last_ok.lock().remove(&id);
            self.mark_unreachable(id);
        }
        if status.code() == tonic::Code::FailedPrecondition && status.message() == REMOVED_MEMBER {
            self.removed.send_replace(true);
        }
        if status.code() == tonic::Code::Unimplemented {
            return PeerError::Unimplemented(id);
        }
        PeerError::Transport {
            id,
            msg: format!("{}: {}", status.code(), status.message()),
        }
    }

    /// When `id` last replied successfully, even if a call to it has failed since (for the
    /// leader's check-quorum, which a single lost heartbeat must not trip).
    pub fn last_reply(&self, id: u64) -> Option<Instant> {
        self.last_reply.lock().get(&id).copied()
    }

    /// When `id` last replied successfully.
    pub fn last_ok(&self, id: u64) -> Option<Instant> {
        self.last_ok.lock().get(&id).copied()
    }

    /// Runs one call on `id` with a deadline, recording success.
    pub async fn call<F, Fut, R>(
        &self,
        id: u64,
        node: &Member,
        ttl: Duration,
        f: F,
    ) -> Result<R, PeerError>
    where
        F: FnOnce(PeerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let client = self.client(id, node)?;
        let to = format!("{id:x}");
        let metrics = crate::metrics::get();
        let started = Instant::now();
        match tokio::time::timeout(ttl, f(client)).await {
            Err(_) => {
                // Like etcd's broken peer stream: a peer that cannot be reached is not active.
                self.last_ok.lock().remove(&id);
                self.mark_unreachable(id);
                metrics.peer_sent_failures.with_label_values(&[&to]).inc();
                Err(PeerError::Timeout(id))
            }
            Ok(Err(status)) => Err(self.failed(id, &status)),
            Ok(Ok(resp)) => {
                self.mark_ok(id);
                metrics
                    .peer_rtt
                    .with_label_values(&[&to])
                    .observe(started.elapsed().as_secs_f64());
                Ok(resp.into_inner())
            }
        }
    }
}

/// openraft's network factory over [`Peers`].
#[derive(Clone, Debug)]
pub struct PeerNetwork {
    /// The shared connections.
    pub peers: Arc<Peers>,
}

/// openraft's connection to one peer.
pub struct PeerConn {
    target: u64,
    node: Member,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConn {
        PeerConn {
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

fn to_rpc_error<E: std::error::Error>(target: u64, e: PeerError) -> RPCError<u64, Member, E> {
    match e {
        PeerError::Transport { .. } | PeerError::NoUrl(_) | PeerError::Unimplemented(_) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        PeerError::Timeout(_) | PeerError::Codec(_) => {
            let _ = target;
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

impl PeerConn {
    async fn raft_call<Req, Resp, E>(
        &self,
        req: &Req,
        ttl: Duration,
        which: RaftCall,
    ) -> Result<Resp, RPCError<u64, Member, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        RaftError<u64, E>: std::error::Error,
    {
        let mut payload =
            tonic::Request::new(encode(req).map_err(|e| to_rpc_error(self.target, e))?);
        let peer = format!("{:x}", self.target);
        let metrics = crate::metrics::get();
        metrics
            .peer_sent_bytes
            .with_label_values(&[&peer])
            .inc_by(payload.get_ref().data.len() as u64);
        if let Ok(v) = format!("{:x}", self.peers.cluster_id).parse() {
            payload.metadata_mut().insert(CLUSTER_ID_HEADER, v);
        }
        let reply = self
            .peers
            .call(self.target, &self.node, ttl, |mut c| async move {
                match which {
                    RaftCall::Append => c.append_entries(payload).await,
                    RaftCall::Vote => c.vote(payload).await,
                }
            })
            .await
            .map_err(|e| to_rpc_error(self.target, e))?;
        metrics
            .peer_received_bytes
            .with_label_values(&[&peer])
            .inc_by(reply.data.len() as u64);
        let res: Result<Resp, RaftError<u64, E>> =
            decode(&reply).map_err(|e| to_rpc_error(self.target, e))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum RaftCall {
    Append,
    Vote,
}

/// Reads the files of the snapshot in `dir` and hands them to `tx` in chunks of `chunk` bytes,
/// the header in the first. Blocking; returns the bytes read.
fn produce_chunks(
    dir: &std::path::Path,
    header: Vec<u8>,
    chunk: usize,
    tx: &tokio::sync::mpsc::Sender<SnapshotChunk>,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<u64, SnapError> {
    use std::io::Read;
    let files = snapshot_files(dir)?;
    let mut header = Some(header);
    let mut total = 0u64;
    let send = |c: SnapshotChunk| {
        tx.blocking_send(c)
            .map_err(|_| SnapError::Bad("the snapshot stream was closed".into()))?;
        progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<(), SnapError>(())
    };
    if files.is_empty() {
        return Err(SnapError::Bad(format!("{} holds no files", dir.display())));
    }
    let count = files.len();
    for (i, (name, _)) in files.iter().enumerate() {
        let path = dir.join(name);
        let mut f = std::fs::File::open(&path).map_err(|source| SnapError::Io {
            path: path.clone(),
            source,
        })?;
        let mut offset = 0u64;
        loop {
            let mut buf = vec![0u8; chunk];
            let mut filled = 0;
            while filled < chunk {
                let n = f.read(&mut buf[filled..]).map_err(|source| SnapError::Io {
                    path: path.clone(),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            let eof = filled < chunk;
            send(SnapshotChunk {
                header: header.take().unwrap_or_default(),
                file: name.clone(),
                offset,
                data: buf,
                done: eof && i + 1 == count,
            })?;
            offset += filled as u64;
            total += filled as u64;
            crate::crash_point!("snapshot-send");
            if eof {
                break;
            }
        }
    }
    Ok(total)
}

/// The wait between calls to a peer unreachable for less than [`BACKOFF_FAST_FOR`].
const BACKOFF_FAST: Duration = Duration::from_millis(50);
/// How long a peer is called again quickly (long enough for a member to restart).
const BACKOFF_FAST_FOR: Duration = Duration::from_secs(5);
/// The wait between calls to a peer that has stayed unreachable longer.
const BACKOFF_SLOW: Duration = Duration::from_millis(250);

impl RaftNetwork<TypeConfig> for PeerConn {
    /// Waits between calls to an unreachable peer: 50 ms for its first 5 s down (a member that
    /// restarts is reached at once), then 250 ms. openraft asks again after each failure.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.peers.retry_wait(self.target)))
    }

    /// Sends entries to the peer. A message of several entries over [`APPEND_LIMIT`] (or the
    /// peer message limit) is not sent: openraft is told it is too large, with how many entries
    /// fit, and sends them in smaller pieces. A single entry always goes.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let limit = APPEND_LIMIT.min(self.peers.max_message) as u64;
        let entries = rpc.entries.len() as u64;
        if entries > 1 {
            let size = bincode::serialized_size(&rpc).unwrap_or(0);
            if size > limit {
                let fit = (u128::from(entries) * u128::from(limit) / u128::from(size)) as u64;
                let hint = fit.clamp(1, entries - 1);
                tracing::info!(
                    to = %format!("{:x}", self.target),
                    entries,
                    bytes = size,
                    limit,
                    hint,
                    "splitting an append that exceeds the peer message limit"
                );
                return Err(RPCError::PayloadTooLarge(
                    openraft::error::PayloadTooLarge::new_entries_hint(hint),
                ));
            }
        }
        self.raft_call(&rpc, option.hard_ttl(), RaftCall::Append)
            .await
    }

    /// Streams the snapshot directory's files to the peer in chunks over one `SendSnapshot`
    /// call, and waits until the peer has installed it. Nothing but one chunk in flight (and
    /// two queued) is in memory.
    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let started = Instant::now();
        let peer = format!("{:x}", self.target);
        let header = bincode::serialize(&(&vote, &snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let chunk = SNAPSHOT_CHUNK.min(self.peers.max_message / 2).max(4096);
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let dir = snapshot.snapshot.dir.clone();
        // Chunks handed to the stream so far; u64::MAX once all were.
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let producer = {
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                let r = produce_chunks(&dir, header, chunk, &tx, &progress);
                progress.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
                r
            })
        };
        let client = self
            .peers
            .client(self.target, &self.node)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Ok(v) = format!("{:x}", self.peers.cluster_id).parse() {
            req.metadata_mut().insert(CLUSTER_ID_HEADER, v);
        }
        tracing::debug!(
            to = %peer,
            snapshot_id = %snapshot.meta.snapshot_id,
            "sending snapshot"
        );
        let mut client = client;
        let call = client.send_snapshot(req);
        // A receiver that takes no chunk for SNAPSHOT_STALL ends the stream (after the last
        // chunk, the install may take as long as it needs).
        let stalled = async {
            let mut seen = 0;
            loop {
                tokio::time::sleep(SNAPSHOT_STALL).await;
                let now = progress.load(std::sync::atomic::Ordering::SeqCst);
                if now == u64::MAX {
                    std::future::pending::<()>().await;
                }
                if now == seen {
                    return;
                }
                seen = now;
            }
        };
        let reply = tokio::select! {
            closed = cancel => {
                return Err(StreamingError::Closed(closed));
            }
            () = stalled => {
                let e = PeerError::Timeout(self.target);
                return Err(StreamingError::Network(NetworkError::new(&e)));
            }
            r = call => r,
        };
        // A failed call is judged by its status, not by the producer (which then only saw its
        // stream close): an unreachable peer makes openraft back off instead of resending at once.
        let sent = match (&reply, producer.await) {
            (_, Ok(Ok(n))) => n,
            (Err(_), _) => 0,
            (Ok(_), Ok(Err(e))) => {
                tracing::warn!(to = %peer, error = %e, "snapshot stream failed");
                return Err(StreamingError::Network(NetworkError::new(&e)));
            }
            (Ok(_), Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
        };
        let metrics = crate::metrics::get();
        metrics
            .peer_sent_bytes
            .with_label_values(&[&peer])
            .inc_by(sent);
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                if status.code() == tonic::Code::Unavailable {
                    // Down or restarting: openraft calls again after the backoff.
                    tracing::debug!(to = %peer, status = %status.message(), "snapshot stream failed");
                } else {
                    tracing::warn!(to = %peer, status = %status.message(), "snapshot stream failed");
                }
                let e = self.peers.failed(self.target, &status);
                return Err(StreamingError::Unreachable(Unreachable::new(&e)));
            }
        };
        self.peers.mark_ok(self.target);
        let res: Result<SnapshotResponse<u64>, Fatal<u64>> =
            decode(&reply).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        tracing::info!(
            to = %peer,
            bytes = sent,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot sent and installed"
        );
        res.map_err(|f| StreamingError::RemoteError(RemoteError::new(self.target, f)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.raft_call(&rpc, option.hard_ttl(), RaftCall::Vote)
            .await
    }
}
