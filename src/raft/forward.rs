//! Forwarded proposals: a member that is not the leader sends the client writes waiting on it to
//! the leader together, in one peer call (`ForwardBatch`), and the leader proposes them together,
//! as etcd's followers hand their proposals to the leader in batched raft messages. One call per
//! write (`Forward`) cost a second HTTP/2 request and answer per write on both ends.
//!
//! Invariants:
//! - Every forwarded write gets exactly one answer: the leader's result for it (its own error
//!   included, such as "not leader" with the leader to try next), or the whole call's error.
//! - At most [`IN_FLIGHT`] batch calls are out at once; writes arriving meanwhile wait and form
//!   the next call. A call carries at most [`batch::MAX_OPS`] writes and about
//!   [`batch::MAX_BYTES`] bytes; the bytes waiting are bounded by [`batch::MAX_QUEUED_BYTES`]
//!   (one write of any size is always let in), past which writes are refused with
//!   `etcdserver: too many requests`.
//! - A leader without `ForwardBatch` (an older oxcd, during a rolling upgrade) answers
//!   `Unimplemented`; the writes of that call then go one by one through `Forward`.
//! - On the leader, a forwarded batch enters the leader's own proposal batching
//!   ([`Shared::write_local_many`]): with no batch in raft and none waiting it is proposed at once
//!   as one entry, otherwise its writes queue with the leader's own and are answered each.
//! - Membership changes are forwarded one by one (`ChangeMembership`); they are rare and
//!   serialized on the leader anyway.
//! - A call to a leader this member stops following is answered at once with "leader changed"
//!   (the writes' outcomes are unknown), so clients retry with the new leader instead of waiting
//!   out the request timeout. Writes still waiting for a call when the leader changes were never
//!   sent: they go to the new leader instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::membership::{MembershipError, MembershipOp, MembershipResult};
use super::peer::{self, PeerError};
use super::{batch, ProposeError, RaftNode, Shared, FORWARD_ATTEMPTS};
use crate::apply::{Applied, Op};

/// Batch calls to the leader out at once. Two: while one call waits for the leader's raft entry,
/// the writes arriving meanwhile are already on their way and join the leader's next entry
/// instead of waiting for the first call's answer.
pub const IN_FLIGHT: usize = 2;

/// One write waiting to be forwarded, the leader to send it to, and where its answer goes.
pub(super) type PendingForward = (u64, Arc<Op>, oneshot::Sender<Result<Applied, ProposeError>>);

/// The results of one call, in the order of its writes.
type Results = Vec<Result<Applied, ProposeError>>;

/// The queue of writes waiting to be forwarded and the bytes in it.
pub(super) struct Queue {
    tx: mpsc::UnboundedSender<PendingForward>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    /// A queue served by a task that forwards through `shared` until `shared` is gone.
    pub(super) fn start(shared: Weak<Shared>) -> Queue {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(shared, rx, queued.clone()));
        Queue { tx, queued }
    }

    /// Forwards `op` to `leader` with the writes waiting beside it, and returns its result.
    pub(super) async fn forward(&self, leader: u64, op: Arc<Op>) -> Result<Applied, ProposeError> {
        let size = op.size_hint();
        batch::reserve(&self.queued, size)?;
        let (tx, rx) = oneshot::channel();
        if self.tx.send((leader, op, tx)).is_err() {
            self.queued.fetch_sub(size, Ordering::SeqCst);
            return Err(ProposeError::Stopped);
        }
        rx.await.map_err(|_| ProposeError::Stopped)?
    }
}

/// Forms calls from the writes in `rx` and sends them, until the member is gone. A call goes to
/// the leader its first write names; a write that named another gets that leader's answer (its
/// "not leader" when it does not lead) and tries again.
async fn run(
    shared: Weak<Shared>,
    mut rx: mpsc::UnboundedReceiver<PendingForward>,
    queued: Arc<AtomicUsize>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let leader = first.0;
        let (waiting, bytes) = batch::gather(&mut rx, first, |p| p.1.size_hint());
        queued.fetch_sub(bytes, Ordering::SeqCst);
        let (ops, txs): (Vec<_>, Vec<_>) = waiting.into_iter().map(|(_, op, tx)| (op, tx)).unzip();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let results = shared.forward_many(leader, &ops).await;
            drop(shared);
            drop(permit);
            match results {
                Ok(results) if results.len() == txs.len() => {
                    for (tx, r) in txs.into_iter().zip(results) {
                        let _ = tx.send(r);
                    }
                }
                Ok(results) => {
                    let e = ProposeError::LeaderUnreachable(format!(
                        "the leader answered {} of {} forwarded writes",
                        results.len(),
                        txs.len()
                    ));
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

impl Shared {
    /// Sends `ops` to `leader` in one call and returns its results, or the call's error. Falls
    /// back to one `Forward` call per write when the leader does not know `ForwardBatch`.
    async fn forward_many(&self, leader: u64, ops: &[Arc<Op>]) -> Result<Results, ProposeError> {
        // Writes that waited for a call while the leader changed were never sent, so nothing of
        // them is applied: they follow the new leader (the caller retries there) instead of
        // being told the leader changed, as a write already sent to the old one is.
        let current = self.raft.metrics().borrow().current_leader;
        match current {
            Some(l) if l == leader => {}
            Some(l) if l != self.id => return Err(ProposeError::NotLeader(l)),
            _ => return Err(ProposeError::LeaderChanged),
        }
        let (id, node) = self.leader_target(Some(leader))?;
        let payload = peer::encode(&ops).map_err(call_err)?;
        let call = self
            .peers
            .call(id, &node, self.request_timeout, |mut c| async move {
                c.forward_batch(payload).await
            });
        let reply = match self.unless_leader_moves(leader, call).await? {
            Ok(reply) => reply,
            Err(PeerError::Unimplemented(_)) => {
                let each = ops.iter().map(|op| self.forward_one(leader, op));
                return Ok(futures::future::join_all(each).await);
            }
            Err(e) => return Err(call_err(e)),
        };
        peer::decode::<Results>(&reply).map_err(call_err)
    }

    /// Sends one write to `leader` through `Forward` (what every oxcd leader answers).
    pub(super) async fn forward_one(&self, leader: u64, op: &Op) -> Result<Applied, ProposeError> {
        let (id, node) = self.leader_target(Some(leader))?;
        let payload = peer::encode(op).map_err(call_err)?;
        let call = self
            .peers
            .call(id, &node, self.request_timeout, |mut c| async move {
                c.forward(payload).await
            });
        let reply = self
            .unless_leader_moves(leader, call)
            .await?
            .map_err(call_err)?;
        peer::decode::<Result<Applied, ProposeError>>(&reply).map_err(call_err)?
    }

    /// Runs `call` to `leader`, unless this member stops following `leader` first: a leader cut
    /// off from the others never answers before the request timeout, and once this member
    /// follows someone else the writes are answered at once as etcd does (leader changed).
    async fn unless_leader_moves<T>(
        &self,
        leader: u64,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, ProposeError> {
        let mut metrics = self.raft.server_metrics();
        let moved_on = async move {
            loop {
                if metrics.borrow_and_update().current_leader != Some(leader) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            r = call => Ok(r),
            () = moved_on => Err(ProposeError::LeaderChanged),
        }
    }

    /// On the leader: proposes forwarded `ops` and answers each. With nothing waiting and a batch
    /// slot free they go into raft at once as one entry; otherwise each joins the leader's queue.
    pub(super) async fn write_local_many(&self, mut ops: Vec<Op>) -> Results {
        let n = ops.len();
        if n <= 1 {
            return match ops.pop() {
                Some(op) => vec![self.write_local(op).await],
                None => Vec::new(),
            };
        }
        if let Err(e) = self.admit().await {
            return vec![Err(e); n];
        }
        if let Some(_slot) = self.slots.direct_slot() {
            return match self.slots.propose(Op::Batch(ops)).await {
                Ok(Applied::Batch(results)) if results.len() == n => {
                    results.into_iter().map(Ok).collect()
                }
                Ok(other) => {
                    tracing::error!(
                        ?other,
                        "a forwarded batch applied to a result of the wrong shape"
                    );
                    vec![Err(ProposeError::Stopped); n]
                }
                Err(e) => vec![Err(e); n],
            };
        }
        let waiting: Vec<_> = ops.into_iter().map(|op| self.enqueue(op)).collect();
        let mut out = Vec::with_capacity(n);
        for w in waiting {
            out.push(match w {
                Ok(rx) => rx.await.unwrap_or(Err(ProposeError::Stopped)),
                Err(e) => Err(e),
            });
        }
        out
    }
}

impl RaftNode {
    /// Carries out a membership change on the leader (forwarding when this member is not it).
    pub async fn change_membership(
        &self,
        op: MembershipOp,
    ) -> Result<MembershipResult, MembershipError> {
        let mut hint = None;
        for _ in 0..FORWARD_ATTEMPTS {
            let res = match hint {
                None => self.shared.change_membership_local(op.clone()).await,
                Some(l) => self.forward_membership(l, &op).await,
            };
            match res {
                Err(MembershipError::Propose(ProposeError::NotLeader(l))) => hint = Some(l),
                other => return other,
            }
        }
        Err(MembershipError::Propose(ProposeError::NoLeader))
    }

    async fn forward_membership(
        &self,
        leader: u64,
        op: &MembershipOp,
    ) -> Result<MembershipResult, MembershipError> {
        let unreachable =
            |e: PeerError| MembershipError::Propose(ProposeError::LeaderUnreachable(e.to_string()));
        let (id, node) = self
            .shared
            .leader_target(Some(leader))
            .map_err(MembershipError::Propose)?;
        let payload = peer::encode(op).map_err(unreachable)?;
        let reply = self
            .shared
            .peers
            .call(id, &node, self.shared.request_timeout, |mut c| async move {
                c.change_membership(payload).await
            })
            .await
            .map_err(unreachable)?;
        peer::decode::<Result<MembershipResult, MembershipError>>(&reply).map_err(unreachable)?
    }
}

/// What a failed peer call (or a payload that cannot be encoded or decoded) means for the writes
/// it carried.
fn call_err(e: PeerError) -> ProposeError {
    match e {
        PeerError::Timeout(_) => ProposeError::Timeout,
        other => ProposeError::LeaderUnreachable(other.to_string()),
    }
}
