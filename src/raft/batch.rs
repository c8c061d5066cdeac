//! Proposal batching on the leader: concurrent client writes waiting for raft are carried by one
//! log entry ([`Op::Batch`]), so the per-entry cost of the log (append, replication, commit,
//! apply) is shared, as etcd shares it across the proposals of one raft `Ready`.
//!
//! Invariants:
//! - A batch is formed from the proposals waiting when a slot frees up: a lone write is proposed
//!   at once, as itself (no added latency at low load). The batching task takes a slot only once
//!   a proposal waits, so an idle slot stays free for the direct path.
//! - At most [`MAX_IN_FLIGHT`] batches are in raft at once; proposals arriving meanwhile wait and
//!   form the next batch. A batch holds at most [`MAX_OPS`] ops and about [`MAX_BYTES`] bytes.
//! - The bytes waiting in the queue are counted ([`MAX_QUEUED_BYTES`]); a proposal that would
//!   take them past the bound is refused before it is queued.
//! - Every proposal gets exactly one answer: its own result, or the batch's error.
//! - A proposal that finds nothing waiting and a batch slot free is proposed at once from the
//!   caller's task ([`Slots::try_direct`]), saving the hops through the batching task; it holds
//!   its slot until answered, so the bound on batches in raft holds for both ways in.
//! - Linearizable reads share leadership checks the same way ([`run_reads`]); a read only ever
//!   shares a check that started after it arrived. On a follower, reads share the request for
//!   the leader's read index the same way ([`run_remote_reads`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::{forward_err, ProposeError, TypeConfig};
use crate::apply::{Applied, Op};

/// Batches proposed to raft at once. One: every proposal that arrives while a batch is in raft
/// waits for the next batch, so each log entry, fsync and apply carries all of them (etcd's raft
/// loop shares one `Ready` the same way). With four in flight a burst was cut into many small
/// entries, each with its own fsync and apply: one member, 10 clients did 1.6 puts per fsync,
/// 5.2k puts/s at 160 µs of CPU each, against 4 per fsync, 7.7-9.7k puts/s at 100 µs with one
/// (100 and 1,000 clients, one and three members: as fast or faster, less CPU). Replication is
/// not pipelined further anyway: openraft keeps one append in flight per follower.
pub const MAX_IN_FLIGHT: usize = 1;
/// Most ops in one batch.
pub const MAX_OPS: usize = 512;
/// About the most bytes of ops in one batch.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// The most bytes of proposals waiting for a batch; past it new proposals are refused with
/// `etcdserver: too many requests` (one proposal of any size is always let in).
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// One waiting proposal and where its answer goes.
pub(super) type Pending = (Op, oneshot::Sender<Result<Applied, ProposeError>>);

/// The slots for batches in raft and the bytes waiting for one, shared by the batching task,
/// direct proposals and the queue's producers.
#[derive(Clone)]
pub(super) struct Slots {
    raft: Raft<TypeConfig>,
    me: u64,
    timeout: Duration,
    lost: watch::Receiver<bool>,
    in_flight: Arc<Semaphore>,
    /// Bytes of proposals waiting for a batch, bounded by [`MAX_QUEUED_BYTES`].
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Slots {
    /// [`MAX_IN_FLIGHT`] free slots for proposals to `raft`, nothing queued.
    pub(super) fn new(
        raft: Raft<TypeConfig>,
        me: u64,
        timeout: Duration,
        lost: watch::Receiver<bool>,
    ) -> Slots {
        Slots {
            raft,
            me,
            timeout,
            lost,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            queued: Arc::default(),
        }
    }

    /// The bytes of proposals waiting for a batch: a producer adds a proposal's bytes before
    /// queueing it, and the batching task takes them off when it forms the batch.
    pub(super) fn queued(&self) -> &std::sync::atomic::AtomicUsize {
        &self.queued
    }

    /// Proposes `op` from the caller's task when no proposal waits for a batch and a slot is
    /// free; otherwise hands `op` back for the queue.
    pub(super) async fn try_direct(&self, op: Op) -> Result<Result<Applied, ProposeError>, Op> {
        let Some(_slot) = self.direct_slot() else {
            return Err(op);
        };
        Ok(self.propose(op).await)
    }

    /// A batch slot for a proposal made from the caller's task, when no proposal waits for a
    /// batch and one is free; the proposal holds it until answered.
    pub(super) fn direct_slot(&self) -> Option<OwnedSemaphorePermit> {
        if self.queued.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return None;
        }
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// Proposes `op` to raft and waits for what applying it produced (the caller holds a slot,
    /// [`Slots::direct_slot`]).
    pub(super) async fn propose(&self, op: Op) -> Result<Applied, ProposeError> {
        write(&self.raft, self.me, self.timeout, self.lost.clone(), op).await
    }
}

/// Counts `size` more bytes of proposals waiting in `queued`, or refuses them with
/// `etcdserver: too many requests` when they would take it past [`MAX_QUEUED_BYTES`] (one
/// proposal of any size always gets in). The taker of a batch subtracts its bytes.
pub(super) fn reserve(
    queued: &std::sync::atomic::AtomicUsize,
    size: usize,
) -> Result<(), ProposeError> {
    use std::sync::atomic::Ordering;
    let before = queued.fetch_add(size, Ordering::SeqCst);
    if before > 0 && before + size > MAX_QUEUED_BYTES {
        queued.fetch_sub(size, Ordering::SeqCst);
        return Err(ProposeError::TooManyRequests);
    }
    Ok(())
}

/// `first` and whatever else waits in `rx` right now, up to [`MAX_OPS`] items and about
/// [`MAX_BYTES`] bytes (`size` of each), with their bytes: one batch.
pub(super) fn gather<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    first: T,
    size: impl Fn(&T) -> usize,
) -> (Vec<T>, usize) {
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < MAX_OPS && bytes < MAX_BYTES {
        match rx.try_recv() {
            Ok(item) => {
                bytes += size(&item);
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    (batch, bytes)
}

/// Forms batches from `rx` and proposes them to raft until every sender is gone.
pub(super) async fn run(slots: Slots, mut rx: mpsc::UnboundedReceiver<Pending>) {
    use std::sync::atomic::Ordering;
    let Slots {
        raft,
        me,
        timeout,
        lost,
        in_flight,
        queued,
    } = slots;
    loop {
        // The slot is taken only once a proposal waits: a free slot must stay free for the
        // direct path while the queue is empty (with one slot, holding it idle here sent every
        // lone write through this task: two more task hops per put).
        let Some(first) = rx.recv().await else {
            return;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (batch, bytes) = gather(&mut rx, first, |p| p.0.size_hint());
        queued.fetch_sub(bytes, Ordering::SeqCst);
        let raft = raft.clone();
        let lost = lost.clone();
        tokio::spawn(async move {
            propose(&raft, me, timeout, lost, batch).await;
            drop(permit);
        });
    }
}

async fn propose(
    raft: &Raft<TypeConfig>,
    me: u64,
    timeout: Duration,
    lost: watch::Receiver<bool>,
    mut batch: Vec<Pending>,
) {
    if batch.len() == 1 {
        if let Some((op, tx)) = batch.pop() {
            let _ = tx.send(write(raft, me, timeout, lost, op).await);
        }
        return;
    }
    let (ops, txs): (Vec<Op>, Vec<_>) = batch.into_iter().unzip();
    match write(raft, me, timeout, lost, Op::Batch(ops)).await {
        Ok(Applied::Batch(results)) if results.len() == txs.len() => {
            for (tx, r) in txs.into_iter().zip(results) {
                let _ = tx.send(Ok(r));
            }
        }
        Ok(other) => {
            tracing::error!(?other, "a batch applied to a result of the wrong shape");
            for tx in txs {
                let _ = tx.send(Err(ProposeError::Stopped));
            }
        }
        Err(e) => {
            for tx in txs {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// Resolves once `lost` says this leader has lost its quorum (never, if its sender is gone).
async fn quorum_lost(mut lost: watch::Receiver<bool>) {
    if lost.wait_for(|l| *l).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn write(
    raft: &Raft<TypeConfig>,
    me: u64,
    timeout: Duration,
    lost: watch::Receiver<bool>,
    op: Op,
) -> Result<Applied, ProposeError> {
    // A leader that loses its quorum fails its pending writes at once (check-quorum) instead of
    // letting them time out; such a write may still be committed by a later leader. (The flag
    // is a leader's: a member that is not leading when the write starts ignores it, as it may
    // not have been cleared yet.)
    let leading = raft.metrics().borrow().state == openraft::ServerState::Leader;
    tokio::select! {
        res = tokio::time::timeout(timeout, raft.client_write(Arc::new(op))) => match res {
            Err(_) => Err(ProposeError::Timeout),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => Err(forward_err(e, me)),
        },
        () = quorum_lost(lost), if leading => Err(ProposeError::QuorumLost),
    }
}

/// One waiting linearizable read and where its read index goes.
pub(super) type PendingRead = oneshot::Sender<Result<u64, ProposeError>>;

/// Serves read-index requests: every read waiting when a leadership check starts shares that
/// check (one heartbeat round to a quorum), as etcd shares one ReadIndex among concurrent reads.
/// A read that arrives while a check is running waits for the next one, so its index is
/// confirmed after it arrived (linearizable).
pub(super) async fn run_reads(
    raft: Raft<TypeConfig>,
    me: u64,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<PendingRead>,
    lost: watch::Receiver<bool>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let leading = raft.metrics().borrow().state == openraft::ServerState::Leader;
        let res = tokio::select! {
            res = tokio::time::timeout(timeout, raft.get_read_log_id()) => match res {
                Err(_) => Err(ProposeError::Timeout),
                Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index).unwrap_or(0)),
                Ok(Err(e)) => Err(super::leader_err(e, me)),
            },
            () = quorum_lost(lost.clone()), if leading => Err(ProposeError::QuorumLost),
        };
        for w in waiting {
            let _ = w.send(res.clone());
        }
    }
}

/// Serves a follower's requests for the leader's read index: every read waiting when a request
/// to the leader starts shares it, so its index is confirmed after each of them arrived. The
/// leader asked is the one the first waiting read names (one that named another gets that
/// leader's answer or its refusal, and tries again). Ends when the member is gone.
pub(super) async fn run_remote_reads(
    shared: std::sync::Weak<super::Shared>,
    mut rx: mpsc::UnboundedReceiver<(u64, PendingRead)>,
) {
    while let Some((leader, first)) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok((_, more)) = rx.try_recv() {
            waiting.push(more);
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let res = shared.remote_read_index(leader).await;
        drop(shared);
        for w in waiting {
            let _ = w.send(res.clone());
        }
    }
}
