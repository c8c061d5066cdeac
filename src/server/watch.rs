//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! Each stream is one task that owns its watchers, subscribes to the [`crate::mvcc::watch::Hub`]
//! before it reads anything, and serves, in order: client requests (create, cancel, progress),
//! committed revisions from the hub, and the progress-notify tick.
//!
//! Invariants:
//! - Every watcher has a `next` revision: it has been sent every matching event below it and
//!   nothing at or above it. Events are delivered in revision order, all events of one revision
//!   in one response (split only with `fragment`), never twice.
//! - A watcher that starts in the past, and every watcher of a stream that lagged behind the hub,
//!   catches up from storage in bounded batches of whole revisions, then continues from the hub.
//! - A watcher whose `next` revision has been compacted is cancelled with `compact_revision`.
//! - The apply path never waits for a stream: the hub is a bounded broadcast, and a stream whose
//!   client does not read only falls behind (and later catches up from storage).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::EtcdError;
use super::{access, guard};
use crate::mvcc::watch::{HubMsg, RevEvents};
use crate::mvcc::{in_range, MvccError, ReadError};
use crate::node::Node;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::Event;

/// Events read from storage per catch-up step (whole revisions, so a step may read a few more).
const CATCH_UP_BATCH: usize = 1000;
/// Responses buffered per stream before the stream waits for its client.
const STREAM_BUFFER: usize = 128;
/// etcd's reason for a client-chosen watch ID that is already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's cancel reason for a create the caller may not make (any auth failure).
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
/// Election timeouts without a leader before a `hasleader` stream is cancelled.
const NO_LEADER_TICKS: u32 = 3;
/// etcd's reason for a watch whose range end is not above its key.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// The Watch service.
#[derive(Clone, Debug)]
pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    /// A Watch service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        WatchService { node }
    }
}

/// The response stream of one Watch call.
pub type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let require_leader = guard::wants_leader(&request);
        let token = access::token(&request);
        Ok(Response::new(open(
            self.node.clone(),
            token,
            require_leader,
            request.into_inner(),
        )))
    }
}

/// Serves one watch stream over `inbound` (gRPC's, or the JSON gateway's) for the caller holding
/// `token`; the responses end when the client goes away.
pub fn open<S>(
    node: Arc<Node>,
    token: Option<String>,
    require_leader: bool,
    inbound: S,
) -> WatchStream
where
    S: tokio_stream::Stream<Item = Result<WatchRequest, Status>> + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let mut stream = WatchStreamTask::new(node, tx);
    stream.token = token;
    tokio::spawn(stream.run(inbound, require_leader));
    Box::pin(ReceiverStream::new(rx))
}

/// One watcher on a stream.
#[derive(Debug)]
struct Watcher {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// The first revision not yet delivered.
    next: i64,
    /// Whether anything was sent since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        let Some(kv) = ev.kv.as_ref() else {
            return false;
        };
        if !in_range(&kv.key, &self.key, &self.range_end) {
            return false;
        }
        let delete = ev.r#type == EventType::Delete as i32;
        !(delete && self.no_delete || !delete && self.no_put)
    }
}

/// The client went away: the stream ends.
struct Gone;

struct WatchStreamTask {
    node: Arc<Node>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// The auth token the stream was opened with: every create needs READ on its range for the
    /// user it names (resolved at each create, as etcd's).
    token: Option<String>,
    /// The highest revision this stream has processed (delivered to every watcher wanting it).
    seen: i64,
}

impl Drop for WatchStreamTask {
    fn drop(&mut self) {
        let stats = &self.node.mvcc.hub().stats;
        stats.streams.fetch_sub(1, Ordering::Relaxed);
        stats
            .watchers
            .fetch_sub(self.watchers.len() as i64, Ordering::Relaxed);
    }
}

impl WatchStreamTask {
    fn new(node: Arc<Node>, tx: mpsc::Sender<Result<WatchResponse, Status>>) -> Self {
        node.mvcc
            .hub()
            .stats
            .streams
            .fetch_add(1, Ordering::Relaxed);
        WatchStreamTask {
            node,
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            token: None,
            seen: 0,
        }
    }

    /// Serves the stream until the client goes away. With `require_leader` (the client's
    /// `hasleader` metadata), the stream is cancelled with `etcdserver: no leader` once this
    /// member has had no leader for [`NO_LEADER_TICKS`] election timeouts, as etcd does.
    async fn run<S>(mut self, mut inbound: S, require_leader: bool)
    where
        S: tokio_stream::Stream<Item = Result<WatchRequest, Status>> + Unpin + Send,
    {
        // Subscribe before anything is read from storage (see the hub's invariants).
        let mut hub = self.node.mvcc.hub().subscribe();
        let period = self.node.settings.watch_progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // A client may close its sending side and keep reading (one create, then events), as
        // etcd allows: the stream then lives until the client stops reading.
        let mut half_closed = false;
        let election = self.node.settings.election;
        let mut leader_check =
            tokio::time::interval_at(tokio::time::Instant::now() + election, election);
        let mut leaderless = 0u32;
        loop {
            let step = tokio::select! {
                req = tokio_stream::StreamExt::next(&mut inbound), if !half_closed => match req {
                    Some(Ok(req)) => self.request(req, &mut hub).await,
                    None => {
                        half_closed = true;
                        Ok(())
                    }
                    Some(Err(_)) => Err(Gone),
                },
                msg = hub.recv() => self.hub_message(msg).await,
                _ = ticker.tick() => self.progress_tick().await,
                _ = leader_check.tick(), if require_leader => {
                    if self.node.raft.known_leader().is_some() {
                        leaderless = 0;
                        Ok(())
                    } else {
                        leaderless += 1;
                        if leaderless >= NO_LEADER_TICKS {
                            self.fail(EtcdError::NoLeader).await
                        } else {
                            Ok(())
                        }
                    }
                }
                _ = self.tx.closed() => Err(Gone),
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }

    async fn fail(&self, e: EtcdError) -> Result<(), Gone> {
        let _ = self.tx.send(Err(e.into())).await;
        Err(Gone)
    }

    fn header(&self, revision: i64) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        Some(self.node.header(revision))
    }

    async fn request(
        &mut self,
        req: WatchRequest,
        hub: &mut broadcast::Receiver<HubMsg>,
    ) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.remove_watcher(c.watch_id) {
                    let rev = self.node.mvcc.current_revision();
                    self.send(WatchResponse {
                        header: self.header(rev),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Deliver everything published so far, then report that revision on watch -1.
                let published = self.node.mvcc.hub().published();
                self.drain(hub).await?;
                self.send(WatchResponse {
                    header: self.header(published.max(self.seen)),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    /// Processes every hub message already waiting, without blocking.
    async fn drain(&mut self, hub: &mut broadcast::Receiver<HubMsg>) -> Result<(), Gone> {
        loop {
            match hub.try_recv() {
                Ok(msg) => self.hub_message(Ok(msg)).await?,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.hub_message(Err(broadcast::error::RecvError::Lagged(n)))
                        .await?
                }
                Err(broadcast::error::TryRecvError::Empty) => return Ok(()),
                Err(broadcast::error::TryRecvError::Closed) => return Err(Gone),
            }
        }
    }

    /// Refuses a create the way etcd does: `created` and `canceled` on watch ID -1, with a reason.
    async fn refuse_create(&self, current: i64, reason: &str) -> Result<(), Gone> {
        self.send(WatchResponse {
            header: self.header(current),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let current = self.node.mvcc.current_revision();
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        if !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end {
            return self.refuse_create(current, EMPTY_RANGE).await;
        }
        if self.node.auth.enabled() || self.token.is_some() {
            let caller = match &self.token {
                Some(t) => self.node.auth.resolve(t),
                None => Ok(crate::auth::Caller::default()),
            };
            let check = caller.and_then(|caller| {
                self.node
                    .auth
                    .check(&caller, crate::auth::Access::Read, &key, &c.range_end)
            });
            if check.is_err() {
                // As etcd: whatever the cause, the requested ID and a PermissionDenied reason.
                return self
                    .send(WatchResponse {
                        header: self.header(current),
                        watch_id: c.watch_id,
                        created: true,
                        canceled: true,
                        cancel_reason: PERMISSION_DENIED.to_string(),
                        ..Default::default()
                    })
                    .await;
            }
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self.refuse_create(current, DUPLICATE_ID).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        let next = if c.start_revision == 0 {
            current + 1
        } else {
            c.start_revision
        };
        let w = Watcher {
            id,
            key,
            range_end: c.range_end,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            next,
            sent_since_tick: false,
        };
        self.send(WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.watchers.insert(id, w);
        self.node
            .mvcc
            .hub()
            .stats
            .watchers
            .fetch_add(1, Ordering::Relaxed);
        if next <= current {
            self.catch_up(Some(id)).await?;
        }
        Ok(())
    }

    /// Removes watcher `id` and keeps the watcher gauge in step; false if there was none.
    fn remove_watcher(&mut self, id: i64) -> bool {
        let found = self.watchers.remove(&id).is_some();
        if found {
            self.node
                .mvcc
                .hub()
                .stats
                .watchers
                .fetch_sub(1, Ordering::Relaxed);
        }
        found
    }

    async fn hub_message(
        &mut self,
        msg: Result<HubMsg, broadcast::error::RecvError>,
    ) -> Result<(), Gone> {
        match msg {
            Ok(HubMsg::Commit(revs)) => {
                for r in revs.iter() {
                    self.deliver(r).await?;
                    self.seen = self.seen.max(r.revision);
                }
                Ok(())
            }
            Ok(HubMsg::Reset | HubMsg::FromStorage)
            | Err(broadcast::error::RecvError::Lagged(_)) => {
                self.node
                    .mvcc
                    .hub()
                    .stats
                    .slow_catch_ups
                    .fetch_add(1, Ordering::Relaxed);
                self.catch_up(None).await
            }
            Err(broadcast::error::RecvError::Closed) => Err(Gone),
        }
    }

    /// Sends one revision's events to every watcher that has not seen that revision yet.
    async fn deliver(&mut self, r: &RevEvents) -> Result<(), Gone> {
        let ids: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.next <= r.revision)
            .map(|w| w.id)
            .collect();
        for id in ids {
            self.deliver_to(id, std::slice::from_ref(r), r.revision)
                .await?;
        }
        Ok(())
    }

    /// Sends the events of `revs` (in revision order) that watcher `id` wants, in one response
    /// (or fragments) whose header carries `header_rev`: one revision's events with the event's
    /// revision when live; up to a history batch of revisions with the store's revision when
    /// catching up, as etcd sends them.
    async fn deliver_to(
        &mut self,
        id: i64,
        revs: &[RevEvents],
        header_rev: i64,
    ) -> Result<(), Gone> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        let Some(last) = revs.last() else {
            return Ok(());
        };
        let mut events: Vec<(i64, Event)> = revs
            .iter()
            .flat_map(|r| {
                r.events
                    .iter()
                    .filter(|e| w.wants(e))
                    .map(move |e| (r.revision, e.clone()))
            })
            .collect();
        let (prev_kv, fragment) = (w.prev_kv, w.fragment);
        if let Some(w) = self.watchers.get_mut(&id) {
            w.next = w.next.max(last.revision + 1);
        }
        if events.is_empty() {
            return Ok(());
        }
        if prev_kv {
            for (revision, ev) in &mut events {
                let Some(kv) = ev.kv.as_ref() else { continue };
                match self.node.mvcc.get_at(&kv.key, *revision - 1) {
                    Ok(prev) => ev.prev_kv = prev,
                    Err(e) => {
                        tracing::error!(error = %e, "reading prev_kv for a watch event");
                        return self.fail(EtcdError::Internal(e.to_string())).await;
                    }
                }
            }
        }
        if let Some(w) = self.watchers.get_mut(&id) {
            w.sent_since_tick = true;
        }
        let n = events.len() as u64;
        let resp = WatchResponse {
            header: self.header(header_rev),
            watch_id: id,
            events: events.into_iter().map(|(_, e)| e).collect(),
            ..Default::default()
        };
        let limit = self.node.settings.max_request_bytes as usize;
        if fragment && resp.encoded_len() > limit {
            self.send_fragments(resp, limit).await?;
        } else {
            self.send(resp).await?;
        }
        self.node
            .mvcc
            .hub()
            .stats
            .events_sent
            .fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Splits a large response into pieces of at most about `limit` bytes, all but the last
    /// marked `fragment`.
    async fn send_fragments(&self, resp: WatchResponse, limit: usize) -> Result<(), Gone> {
        let mut pieces: Vec<Vec<Event>> = vec![Vec::new()];
        let mut size = 0;
        for ev in resp.events {
            let len = ev.encoded_len();
            if size + len > limit && pieces.last().is_some_and(|p| !p.is_empty()) {
                pieces.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(p) = pieces.last_mut() {
                p.push(ev);
            }
        }
        let last = pieces.len() - 1;
        for (i, events) in pieces.into_iter().enumerate() {
            self.send(WatchResponse {
                header: resp.header,
                watch_id: resp.watch_id,
                events,
                fragment: i != last,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Brings one watcher (or every watcher) up to the current revision from storage.
    async fn catch_up(&mut self, only: Option<i64>) -> Result<(), Gone> {
        let ids: Vec<i64> = match only {
            Some(id) => vec![id],
            None => self.watchers.keys().copied().collect(),
        };
        for id in ids {
            while let Some(from) = self.watchers.get(&id).map(|w| w.next) {
                if from > self.node.mvcc.current_revision() {
                    break;
                }
                let mvcc = self.node.mvcc.clone();
                let read =
                    tokio::task::spawn_blocking(move || mvcc.history(from, CATCH_UP_BATCH)).await;
                match read {
                    Ok(Ok(h)) => {
                        // etcd sends a batch of history (up to 1000 revisions) in one
                        // response, headed by the store's revision.
                        let current = self.node.mvcc.current_revision();
                        self.deliver_to(id, &h.revisions, current).await?;
                        if let Some(w) = self.watchers.get_mut(&id) {
                            w.next = w.next.max(h.next);
                        }
                        self.seen = self.seen.max(h.next - 1);
                        if h.done {
                            break;
                        }
                    }
                    Ok(Err(ReadError::Mvcc(MvccError::Compacted))) => {
                        self.remove_watcher(id);
                        let compacted = self.node.mvcc.compacted_revision();
                        // etcd's cancel for a compacted start has a header without a
                        // revision.
                        self.send(WatchResponse {
                            header: self.header(0),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compacted,
                            ..Default::default()
                        })
                        .await?;
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reading watch history");
                        return self.fail(EtcdError::Internal(e.to_string())).await;
                    }
                    Err(e) => {
                        return self.fail(EtcdError::Internal(e.to_string())).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends an empty response to every `progress_notify` watcher that got nothing this period.
    async fn progress_tick(&mut self) -> Result<(), Gone> {
        let rev = self.node.mvcc.hub().published();
        let idle: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.progress_notify && !w.sent_since_tick && w.next > rev)
            .map(|w| w.id)
            .collect();
        for w in self.watchers.values_mut() {
            w.sent_since_tick = false;
        }
        for id in idle {
            self.send(WatchResponse {
                header: self.header(rev),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
