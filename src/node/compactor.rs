//! Auto-compaction, etcd's `--auto-compaction-mode`/`--auto-compaction-retention`.
//!
//! Invariants: only the leader compacts, and it does so by proposing `Compact` through the log, so
//! every member compacts at the same revision. `periodic` keeps at least the retention period of
//! history (sampling the revision every tenth of it); `revision` keeps the last N revisions,
//! checked every five minutes as etcd does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::apply::{Applied, Op, Pb};
use crate::config::AutoCompaction;
use crate::proto::etcdserverpb::CompactionRequest;

async fn compact_to(node: &Node, revision: i64) {
    if revision <= node.mvcc.compacted_revision() {
        return;
    }
    let op = Op::Compact(Pb(CompactionRequest {
        revision,
        physical: false,
    }));
    match node.propose(op).await {
        Ok(Applied::Compacted { .. }) => tracing::info!(revision, "auto-compaction done"),
        Ok(other) => tracing::debug!(revision, ?other, "auto-compaction skipped"),
        Err(e) => tracing::warn!(revision, error = %e, "auto-compaction failed"),
    }
}

/// Runs the policy until the task is aborted.
pub async fn run(node: Arc<Node>, policy: AutoCompaction) {
    match policy {
        AutoCompaction::Revision(keep) => {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            loop {
                tick.tick().await;
                if !node.raft.is_leader() {
                    continue;
                }
                let target = node.mvcc.current_revision() - keep;
                if target > 0 {
                    compact_to(&node, target).await;
                }
            }
        }
        AutoCompaction::Periodic(retention) => {
            let every = (retention / 10).max(Duration::from_secs(1));
            let mut tick = tokio::time::interval(every);
            let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
            loop {
                tick.tick().await;
                if !node.raft.is_leader() {
                    samples.clear();
                    continue;
                }
                let now = Instant::now();
                samples.push_back((now, node.mvcc.current_revision()));
                // The newest sample at least `retention` old is the compaction point.
                let mut target = None;
                while let Some(&(at, rev)) = samples.front() {
                    if now.duration_since(at) >= retention {
                        target = Some(rev);
                        samples.pop_front();
                    } else {
                        break;
                    }
                }
                if let Some(rev) = target {
                    compact_to(&node, rev).await;
                }
            }
        }
    }
}
