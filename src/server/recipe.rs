//! etcd's concurrency recipes (`client/v3/concurrency`'s Mutex and Election), run inside the
//! member over its own KV, for the Lock and Election services: the same requests etcd's
//! `v3lock` and `v3election` servers send through their in-process client.
//!
//! Invariants:
//! - Every read and write goes through [`KvService`] with the request's caller, so validation,
//!   auth, quota and the log apply exactly as to a client's own requests.
//! - Ownership is by create revision: under `name/`, the key created first holds the lock (or the
//!   leadership); a waiter goes ahead only once every key under the prefix created before its
//!   own is deleted (etcd's `waitDeletes`).
//! - Waiting never polls: a waiter subscribes to the watch hub before it writes or reads, so every
//!   commit after its read reaches it (or a lag or reset notice, on which it reads again); it
//!   reads again only after a commit that touched the key it waits on.
//! - Reads while waiting are local, after this member has applied the waiter's own write (a
//!   write forwarded to the leader may return before this member applied it).
//! - A call dropped while it waits (the client went away) removes its key (a lock) or resigns
//!   (an election), as etcd's recipes do when their context is cancelled.
//! - A lease of 0 means "a new session": a lease of [`SESSION_TTL`] seconds is granted and never
//!   kept alive, as etcd's orphaned `concurrency.Session`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::error::EtcdError;
use super::kv::KvService;
use crate::auth::Caller;
use crate::mvcc::watch::{HubMsg, RevEvents};
use crate::node::Node;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request as Op1;
use crate::proto::etcdserverpb::response_op::Response as Resp1;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::proto::v3electionpb::LeaderResponse;

/// The TTL, in seconds, of the lease granted for a request without one (etcd's default session
/// TTL).
pub const SESSION_TTL: i64 = 60;

/// Leader updates buffered for one Observe stream before the stream waits for its client.
const OBSERVE_BUFFER: usize = 16;

/// etcd's `concurrency.ErrSessionExpired`.
pub const SESSION_EXPIRED: &str = "mutex: session is expired";
/// etcd's `concurrency.ErrElectionNotLeader`.
pub const NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`.
pub const NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`.
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// A held lock: its key and the header of the request that found it held.
#[derive(Debug, Clone, PartialEq)]
pub struct Locked {
    /// The lock key, `name/<lease as hex>`.
    pub key: Vec<u8>,
    /// The header of the transaction (uncontended) or of the last read (after waiting).
    pub header: Option<ResponseHeader>,
}

/// A won election.
#[derive(Debug, Clone, PartialEq)]
pub struct Elected {
    /// The leader key, `name/<lease as hex>`.
    pub key: Vec<u8>,
    /// The leader key's create revision.
    pub rev: i64,
    /// The lease the key is attached to (granted when the request had none).
    pub lease: i64,
    /// The header of the campaign's transaction.
    pub header: Option<ResponseHeader>,
}

/// The stream of one Observe call.
pub type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

/// The recipes for one request: the member, its KV service and the request's caller.
#[derive(Debug, Clone)]
pub struct Recipes {
    node: Arc<Node>,
    kv: KvService,
    caller: Option<Caller>,
}

/// `name` + `/`: the prefix every key of a lock or an election lives under.
pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The end of the range of every key starting with `prefix` (clientv3's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key of `lease` under `prefix`: Go's `fmt.Sprintf("%s%x", prefix, lease)`.
pub fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let id = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut k = prefix.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn header_rev(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

fn create_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

fn op(r: Op1) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn put_op(key: &[u8], value: Vec<u8>, lease: i64) -> RequestOp {
    op(Op1::RequestPut(PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..Default::default()
    }))
}

fn get_op(key: &[u8]) -> RequestOp {
    op(Op1::RequestRange(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }))
}

/// clientv3's `WithFirstCreate` (`first`) or `WithLastCreate` over `prefix`: the one key under it
/// created first or last, optionally among those created at or before `max_create`.
fn top_create(prefix: &[u8], first: bool, max_create: i64) -> RangeRequest {
    let order = if first {
        SortOrder::Ascend
    } else {
        SortOrder::Descend
    };
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_target: SortTarget::Create as i32,
        sort_order: order as i32,
        max_create_revision: max_create,
        serializable: true,
        ..Default::default()
    }
}

/// The key-values of the range response at `i` in `t`.
fn range_kvs(t: &TxnResponse, i: usize) -> Option<&[KeyValue]> {
    match t.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(Resp1::ResponseRange(r)) => Some(r.kvs.as_slice()),
        _ => None,
    }
}

fn malformed(what: &str) -> Status {
    tracing::error!(what, "a recipe transaction answered in an unexpected shape");
    EtcdError::Internal(format!("unexpected {what} response")).into()
}

fn is_delete(e: &Event) -> bool {
    e.r#type == EventType::Delete as i32
}

fn event_key(e: &Event) -> &[u8] {
    e.kv.as_ref().map_or(&[][..], |kv| kv.key.as_slice())
}

/// What a dropped call leaves behind to undo.
#[derive(Debug)]
enum Undo {
    /// Delete a lock key (etcd's `Mutex.Unlock`).
    Delete(DeleteRangeRequest),
    /// Resign an election (a compare-and-delete transaction).
    Txn(TxnRequest),
}

/// Undoes a waiter's write if the call ends before it is disarmed; a call dropped by the server
/// (its client went away) undoes it in a task of its own.
struct Cleanup {
    kv: KvService,
    caller: Option<Caller>,
    undo: Option<Undo>,
}

impl Cleanup {
    fn disarm(mut self) {
        self.undo = None;
    }

    /// Undoes now, for the error paths where etcd undoes before it answers.
    async fn run(mut self) {
        if let Some(u) = self.undo.take() {
            undo(&self.kv, self.caller.as_ref(), u).await;
        }
    }
}

async fn undo(kv: &KvService, c: Option<&Caller>, u: Undo) {
    let res = match u {
        Undo::Delete(d) => kv.do_delete(d, c).await.map(|_| ()),
        Undo::Txn(t) => kv.do_txn(t, c).await.map(|_| ()),
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "removing an abandoned lock or election key failed");
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(u) = self.undo.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to remove an abandoned lock or election key");
            return;
        };
        let kv = self.kv.clone();
        let c = self.caller.clone();
        rt.spawn(async move { undo(&kv, c.as_ref(), u).await });
    }
}

impl Recipes {
    /// The recipes over `node`'s KV for a request from `caller` (as [`super::access::caller`]
    /// resolved it).
    pub fn new(node: Arc<Node>, kv: KvService, caller: Option<Caller>) -> Recipes {
        Recipes { node, kv, caller }
    }

    fn c(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// The session lease for `lease`: `lease` itself, or a new lease of [`SESSION_TTL`] seconds
    /// for 0 (etcd's `concurrency.NewSession` without a lease). An unknown lease is refused by
    /// the write that attaches it (`etcdserver: requested lease not found`).
    pub async fn session(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = super::lease::grant(
            &self.node,
            LeaseGrantRequest {
                ttl: SESSION_TTL,
                id: 0,
            },
        )
        .await?;
        Ok(granted.id)
    }

    /// Waits until this member has applied revision `rev` (a write that may have been applied
    /// by the leader first). `rx` must have been subscribed before `rev` was written.
    async fn catch_up(&self, rx: &mut broadcast::Receiver<HubMsg>, rev: i64) -> Result<(), Status> {
        while self.node.mvcc.current_revision() < rev {
            match rx.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err(EtcdError::Stopped.into()),
            }
        }
        Ok(())
    }

    /// Waits for a commit with an event `hit` accepts (or for a lag or reset notice, after which
    /// the caller must read again).
    async fn wait_event(
        rx: &mut broadcast::Receiver<HubMsg>,
        hit: impl Fn(&Event) -> bool,
    ) -> Result<(), Status> {
        loop {
            match rx.recv().await {
                Ok(HubMsg::Commit(revs)) => {
                    if revs.iter().flat_map(|r| r.events.iter()).any(&hit) {
                        return Ok(());
                    }
                }
                Ok(HubMsg::Reset | HubMsg::FromStorage) | Err(RecvError::Lagged(_)) => {
                    return Ok(())
                }
                Err(RecvError::Closed) => return Err(EtcdError::Stopped.into()),
            }
        }
    }

    /// etcd's `waitDeletes`: waits until no key under `prefix` has a create revision at or below
    /// `max_create`, waiting each time for the last-created such key to be deleted. Reads are
    /// local; `rx` must have been subscribed before this member applied revision `applied`.
    async fn wait_deletes(
        &self,
        rx: &mut broadcast::Receiver<HubMsg>,
        prefix: &[u8],
        max_create: i64,
        applied: i64,
    ) -> Result<Option<ResponseHeader>, Status> {
        // A max create revision of 0 would mean "no limit"; no key is created at or before 0.
        if max_create <= 0 {
            return Ok(Some(self.node.header(self.node.mvcc.current_revision())));
        }
        self.catch_up(rx, applied).await?;
        loop {
            let resp = self
                .kv
                .do_range(top_create(prefix, false, max_create), self.c())
                .await?;
            let Some(last) = resp.kvs.into_iter().next() else {
                return Ok(resp.header);
            };
            Self::wait_event(rx, |e| is_delete(e) && event_key(e) == last.key.as_slice()).await?;
        }
    }

    /// etcd's `Mutex.Lock` on `name` for `lease` (0: a new session lease): puts `name/<lease>`
    /// unless it exists, then waits until every key under `name/` created before it is gone.
    pub async fn lock(&self, name: &[u8], lease: i64) -> Result<Locked, Status> {
        let lease = self.session(lease).await?;
        let pfx = prefix(name);
        let key = session_key(&pfx, lease);
        let mut rx = self.node.mvcc.hub().subscribe();
        let owner = op(Op1::RequestRange(top_create(&pfx, true, 0)));
        let txn = TxnRequest {
            compare: vec![create_is(&key, 0)],
            success: vec![put_op(&key, Vec::new(), lease), owner.clone()],
            failure: vec![get_op(&key), owner],
        };
        let resp = self.kv.do_txn(txn, self.c()).await?;
        let txn_rev = header_rev(&resp.header);
        let my_rev = if resp.succeeded {
            txn_rev
        } else {
            range_kvs(&resp, 0)
                .and_then(|kvs| kvs.first())
                .map(|kv| kv.create_revision)
                .ok_or_else(|| malformed("lock key"))?
        };
        let holder = range_kvs(&resp, 1).ok_or_else(|| malformed("lock owner"))?;
        if holder.first().is_none_or(|kv| kv.create_revision == my_rev) {
            return Ok(Locked {
                key,
                header: resp.header,
            });
        }
        let cleanup = Cleanup {
            kv: self.kv.clone(),
            caller: self.caller.clone(),
            undo: Some(Undo::Delete(DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            })),
        };
        if let Err(e) = self.wait_deletes(&mut rx, &pfx, my_rev - 1, txn_rev).await {
            cleanup.run().await;
            return Err(e);
        }
        // Make sure the session did not expire while waiting (etcd reads its key linearizably).
        let got = match self.read_linearizable(&key).await {
            Ok(g) => g,
            Err(e) => {
                cleanup.run().await;
                return Err(e.into());
            }
        };
        cleanup.disarm();
        if got.kvs.is_empty() {
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        Ok(Locked {
            key,
            header: got.header,
        })
    }

    /// Reads `key` after this member has caught up with the leader.
    async fn read_linearizable(&self, key: &[u8]) -> Result<RangeResponse, EtcdError> {
        self.node.linearizable_barrier().await?;
        self.kv
            .do_range(
                RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
                self.c(),
            )
            .await
    }

    /// etcd's `Mutex.Unlock` as the Unlock RPC runs it: deletes `key`.
    pub async fn unlock(&self, key: Vec<u8>) -> Result<Option<ResponseHeader>, Status> {
        let resp = self
            .kv
            .do_delete(
                DeleteRangeRequest {
                    key,
                    ..Default::default()
                },
                self.c(),
            )
            .await?;
        Ok(resp.header)
    }

    /// etcd's `Election.Campaign` on `name` for `lease` (0: a new session lease) with `value`:
    /// puts `name/<lease>` unless it exists (proclaiming `value` if the existing key holds
    /// another), then waits until every key under `name/` created before it is gone.
    pub async fn campaign(
        &self,
        name: &[u8],
        lease: i64,
        value: Vec<u8>,
    ) -> Result<Elected, Status> {
        let lease = self.session(lease).await?;
        let pfx = prefix(name);
        let key = session_key(&pfx, lease);
        let mut rx = self.node.mvcc.hub().subscribe();
        let txn = TxnRequest {
            compare: vec![create_is(&key, 0)],
            success: vec![put_op(&key, value.clone(), lease)],
            failure: vec![get_op(&key)],
        };
        let resp = self.kv.do_txn(txn, self.c()).await?;
        let txn_rev = header_rev(&resp.header);
        let mut rev = txn_rev;
        if !resp.succeeded {
            let kv = range_kvs(&resp, 0)
                .and_then(|kvs| kvs.first())
                .ok_or_else(|| malformed("campaign key"))?;
            rev = kv.create_revision;
            if kv.value != value {
                if let Err(e) = self.proclaim(&key, rev, lease, value).await {
                    self.resign_cleanup(&key, rev).run().await;
                    return Err(e);
                }
            }
        }
        // Dropped while waiting (the client went away): resign, as etcd on a cancelled context.
        let cleanup = self.resign_cleanup(&key, rev);
        let waited = self.wait_deletes(&mut rx, &pfx, rev - 1, txn_rev).await;
        cleanup.disarm();
        waited?;
        Ok(Elected {
            key,
            rev,
            lease,
            header: resp.header,
        })
    }

    fn resign_cleanup(&self, key: &[u8], rev: i64) -> Cleanup {
        Cleanup {
            kv: self.kv.clone(),
            caller: self.caller.clone(),
            undo: Some(Undo::Txn(resign_txn(key, rev))),
        }
    }

    /// etcd's `Election.Proclaim`: puts `value` on the leader key (attached to `lease`) if it
    /// still has create revision `rev`; otherwise `election: not leader`.
    pub async fn proclaim(
        &self,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: Vec<u8>,
    ) -> Result<Option<ResponseHeader>, Status> {
        let txn = TxnRequest {
            compare: vec![create_is(key, rev)],
            success: vec![put_op(key, value, lease)],
            failure: Vec::new(),
        };
        let resp = self.kv.do_txn(txn, self.c()).await?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(resp.header)
    }

    /// etcd's `Election.Resign`: deletes the leader key if it still has create revision `rev`
    /// (no error when it does not).
    pub async fn resign(&self, key: &[u8], rev: i64) -> Result<Option<ResponseHeader>, Status> {
        let resp = self.kv.do_txn(resign_txn(key, rev), self.c()).await?;
        Ok(resp.header)
    }

    /// The key under `prefix` created first, read locally.
    async fn first_created(&self, prefix: &[u8]) -> Result<RangeResponse, EtcdError> {
        self.kv
            .do_range(top_create(prefix, true, 0), self.c())
            .await
    }

    /// etcd's `Election.Leader`: the key under `name/` created first, or `election: no leader`.
    /// The caller makes the read linearizable (`linearizable_barrier`) first.
    pub async fn leader(&self, name: &[u8]) -> Result<LeaderResponse, Status> {
        let resp = self.first_created(&prefix(name)).await?;
        match resp.kvs.into_iter().next() {
            Some(kv) => Ok(LeaderResponse {
                header: resp.header,
                kv: Some(kv),
            }),
            None => Err(Status::unknown(NO_LEADER)),
        }
    }

    /// etcd's `Election.Observe`: the current leader of `name` (once there is one), then every
    /// change of the leader key's value, then the next leader once it is deleted, and so on
    /// until the client goes away. The first read happens before this returns, so its errors
    /// (such as a permission refusal) answer the call; the caller makes it linearizable first
    /// and passes `rx`, subscribed before that.
    pub async fn observe(
        self,
        name: &[u8],
        rx: broadcast::Receiver<HubMsg>,
    ) -> Result<ObserveStream, Status> {
        let pfx = prefix(name);
        let first = self.first_created(&pfx).await?;
        let (tx, out) = mpsc::channel(OBSERVE_BUFFER);
        tokio::spawn(async move { self.observe_loop(pfx, rx, tx, first).await });
        Ok(Box::pin(ReceiverStream::new(out)))
    }

    async fn observe_loop(
        self,
        pfx: Vec<u8>,
        mut rx: broadcast::Receiver<HubMsg>,
        tx: mpsc::Sender<Result<LeaderResponse, Status>>,
        first: RangeResponse,
    ) {
        let mut first = Some(first);
        // The key and mod revision of the last value sent, so a re-read after a lag does not
        // send the same value twice.
        let mut last_sent: Option<(Vec<u8>, i64)> = None;
        'leader: loop {
            let resp = match first.take() {
                Some(r) => r,
                None => match self.first_created(&pfx).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                },
            };
            let read_rev = header_rev(&resp.header);
            // Commits at or below `seen` are already reflected in what was read or sent.
            let mut seen = read_rev;
            let mut backlog: Option<Arc<Vec<RevEvents>>> = None;
            let kv = match resp.kvs.into_iter().next() {
                Some(kv) => kv,
                None => loop {
                    // No leader yet: the first key put under the prefix is the leader.
                    let msg = tokio::select! {
                        _ = tx.closed() => return,
                        m = rx.recv() => m,
                    };
                    match msg {
                        Ok(HubMsg::Commit(revs)) => {
                            let found = revs
                                .iter()
                                .filter(|r| r.revision > read_rev)
                                .flat_map(|r| r.events.iter())
                                .find(|e| !is_delete(e) && event_key(e).starts_with(&pfx))
                                .and_then(|e| e.kv.clone());
                            if let Some(kv) = found {
                                seen = kv.mod_revision;
                                backlog = Some(revs);
                                break kv;
                            }
                        }
                        Ok(HubMsg::Reset | HubMsg::FromStorage) | Err(RecvError::Lagged(_)) => {
                            continue 'leader
                        }
                        Err(RecvError::Closed) => return,
                    }
                },
            };
            let key = kv.key.clone();
            if !self.send(&tx, &mut last_sent, seen, kv).await {
                return;
            }
            // Follow the leader key: every put is a proclaimed value; a delete ends this leader.
            loop {
                let msg = match backlog.take() {
                    Some(b) => Ok(HubMsg::Commit(b)),
                    None => tokio::select! {
                        _ = tx.closed() => return,
                        m = rx.recv() => m,
                    },
                };
                match msg {
                    Ok(HubMsg::Commit(revs)) => {
                        let from = seen;
                        for r in revs.iter().filter(|r| r.revision > from) {
                            seen = r.revision;
                            for e in r.events.iter().filter(|e| event_key(e) == key.as_slice()) {
                                if is_delete(e) {
                                    continue 'leader;
                                }
                                if let Some(kv) = e.kv.clone() {
                                    if !self.send(&tx, &mut last_sent, r.revision, kv).await {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Ok(HubMsg::Reset | HubMsg::FromStorage) | Err(RecvError::Lagged(_)) => {
                        continue 'leader
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }

    /// Sends `kv` at revision `rev` unless it is the value sent last; false once the client is
    /// gone.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
        last_sent: &mut Option<(Vec<u8>, i64)>,
        rev: i64,
        kv: KeyValue,
    ) -> bool {
        let id = (kv.key.clone(), kv.mod_revision);
        if last_sent.as_ref() == Some(&id) {
            return true;
        }
        *last_sent = Some(id);
        let resp = LeaderResponse {
            header: Some(self.node.header(rev)),
            kv: Some(kv),
        };
        tx.send(Ok(resp)).await.is_ok()
    }
}

/// Deletes `key` if it still has create revision `rev` (etcd's `Election.Resign`).
fn resign_txn(key: &[u8], rev: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![create_is(key, rev)],
        success: vec![op(Op1::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        }))],
        failure: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_etcds() {
        assert_eq!(prefix(b"lk"), b"lk/".to_vec());
        assert_eq!(prefix_end(b"lk/"), b"lk0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(
            session_key(b"lk/", 0x694d_7a3b_1c2d),
            b"lk/694d7a3b1c2d".to_vec()
        );
        assert_eq!(session_key(b"lk/", -1), b"lk/-1".to_vec());
        assert_eq!(
            session_key(b"e/", i64::MIN),
            b"e/-8000000000000000".to_vec()
        );
    }

    #[test]
    fn owner_query_is_first_create() {
        let r = top_create(b"n/", true, 0);
        assert_eq!(r.range_end, b"n0".to_vec());
        assert_eq!(r.limit, 1);
        assert_eq!(r.sort_target, SortTarget::Create as i32);
        assert_eq!(r.sort_order, SortOrder::Ascend as i32);
        let r = top_create(b"n/", false, 7);
        assert_eq!(r.sort_order, SortOrder::Descend as i32);
        assert_eq!(r.max_create_revision, 7);
    }
}
