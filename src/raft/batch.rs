//! Proposal batching on the leader: concurrent client writes waiting for raft are carried by one
//! log entry ([`Op::Batch`]), so the per-entry cost of the log (append, replication, commit,
//! apply) is shared, as etcd shares it across the proposals of one raft `Ready`.
//!
//! Invariants:
//! - A batch is formed only from proposals already waiting when the previous batch was handed to
//!   raft: a lone write is proposed at once, as itself (no added latency at low load).
//! - At most [`MAX_IN_FLIGHT`] batches are in raft at once; proposals arriving meanwhile wait and
//!   form the next batch. A batch holds at most [`MAX_OPS`] ops and about [`MAX_BYTES`] bytes.
//! - Every proposal gets exactly one answer: its own result, or the batch's error.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{forward_err, ProposeError, TypeConfig};
use crate::apply::{Applied, Op};

/// Batches proposed to raft at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Most ops in one batch.
pub const MAX_OPS: usize = 512;
/// About the most bytes of ops in one batch.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// One waiting proposal and where its answer goes.
pub(super) type Pending = (Op, oneshot::Sender<Result<Applied, ProposeError>>);

/// Forms batches from `rx` and proposes them to `raft` until every sender is gone.
pub(super) async fn run(
    raft: Raft<TypeConfig>,
    me: u64,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.0.size_hint();
        let mut batch = vec![first];
        while batch.len() < MAX_OPS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.0.size_hint();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, me, timeout, batch).await;
            drop(permit);
        });
    }
}

async fn propose(raft: &Raft<TypeConfig>, me: u64, timeout: Duration, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        if let Some((op, tx)) = batch.pop() {
            let _ = tx.send(write(raft, me, timeout, op).await);
        }
        return;
    }
    let (ops, txs): (Vec<Op>, Vec<_>) = batch.into_iter().unzip();
    match write(raft, me, timeout, Op::Batch(ops)).await {
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

async fn write(
    raft: &Raft<TypeConfig>,
    me: u64,
    timeout: Duration,
    op: Op,
) -> Result<Applied, ProposeError> {
    match tokio::time::timeout(timeout, raft.client_write(op)).await {
        Err(_) => Err(ProposeError::Timeout),
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(e)) => Err(forward_err(e, me)),
    }
}
