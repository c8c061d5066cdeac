//! The periodic corruption check (`--experimental-corrupt-check-time`), as etcd's leader runs
//! it: the leader hashes its key-value store at its current revision, asks every other member
//! for its hash at the same revision, and raises the CORRUPT alarm for a member whose hash differs
//! while both agree on the compacted revision.
//!
//! With `--experimental-initial-corrupt-check`, a starting member also compares its own hash with
//! every peer's before it serves clients ([`check_initial`]) and refuses to start on a mismatch,
//! as etcd 3.5 does.
//!
//! Invariants: only the leader checks, and only proposes (the alarm goes through the log, so every
//! member refuses key-value commands from then on); a member that has not applied the revision
//! yet, or cannot be reached, is skipped this round, never accused.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::proto::etcdserverpb::AlarmType;

/// Runs the check every `interval` while the member runs.
pub(super) async fn run(node: Arc<Node>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if node.raft.is_leader() {
            check_once(&node).await;
        }
    }
}

/// One round of the check; returns the members found corrupt.
pub async fn check_once(node: &Node) -> Vec<u64> {
    let revision = node.mvcc.current_revision();
    let (hash, compacted, _) = match node.mvcc.blocking(move |m| m.hash_kv(revision)).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "corruption check: hashing the local store failed");
            return Vec::new();
        }
    };
    let me = node.identity.member_id.0;
    let mut corrupt = Vec::new();
    for m in node.raft.members() {
        if m.id == me || m.is_learner {
            continue;
        }
        match node.raft.peer_hash_kv(m.id, revision).await {
            Ok(Ok((theirs, their_compacted, _))) => {
                if their_compacted == compacted && theirs != hash {
                    tracing::error!(
                        member = %format!("{:x}", m.id),
                        revision,
                        local_hash = hash,
                        remote_hash = theirs,
                        "corruption check: a member's key-value hash differs from the leader's"
                    );
                    corrupt.push(m.id);
                }
            }
            Ok(Err(reason)) => tracing::debug!(
                member = %format!("{:x}", m.id),
                %reason,
                "corruption check: member skipped"
            ),
            Err(e) => tracing::debug!(
                member = %format!("{:x}", m.id),
                error = %e,
                "corruption check: member unreachable"
            ),
        }
    }
    for &id in &corrupt {
        node.raise_alarm(id, AlarmType::Corrupt).await;
    }
    corrupt
}

/// Why the initial check refused to let the member serve.
#[derive(Debug, thiserror::Error)]
pub enum InitialCheckError {
    /// The local store could not be hashed.
    #[error("{0} failed to fetch hash ({1})")]
    Hash(crate::types::MemberId, String),
    /// A peer with the same compacted revision has a different hash (etcd's text).
    #[error("{0} found data inconsistency with peers")]
    Inconsistent(crate::types::MemberId),
}

/// The start-up check (`--experimental-initial-corrupt-check`): hashes the local store at its
/// current revision and asks every other member for its hash at that revision. A peer that has
/// not applied it yet, has compacted past it, or cannot be reached is only logged.
pub async fn check_initial(node: &Node) -> Result<(), InitialCheckError> {
    let me = node.identity.member_id;
    let revision = node.mvcc.current_revision();
    tracing::info!(local_member_id = %me, revision, "starting initial corruption check");
    let (hash, compacted, _) = node
        .mvcc
        .blocking(move |m| m.hash_kv(revision))
        .await
        .map_err(|e| InitialCheckError::Hash(me, e.to_string()))?;
    let mut mismatch = 0;
    for m in node.raft.members() {
        if m.id == me.0 {
            continue;
        }
        let peer = format!("{:x}", m.id);
        match node.raft.peer_hash_kv(m.id, revision).await {
            Ok(Ok((theirs, their_compacted, _))) if theirs != hash => {
                if their_compacted == compacted {
                    tracing::warn!(
                        local_member_id = %me,
                        remote_peer_id = %peer,
                        revision,
                        local_hash = hash,
                        remote_hash = theirs,
                        compact_revision = compacted,
                        "found different hash values from remote peer"
                    );
                    mismatch += 1;
                } else {
                    tracing::warn!(
                        local_member_id = %me,
                        remote_peer_id = %peer,
                        local_compact_revision = compacted,
                        remote_compact_revision = their_compacted,
                        "found different compact revision values from remote peer"
                    );
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => tracing::warn!(
                local_member_id = %me,
                remote_peer_id = %peer,
                %reason,
                "cannot fetch hash from remote peer"
            ),
            Err(e) => tracing::warn!(
                local_member_id = %me,
                remote_peer_id = %peer,
                error = %e,
                "cannot fetch hash from remote peer"
            ),
        }
    }
    if mismatch > 0 {
        return Err(InitialCheckError::Inconsistent(me));
    }
    tracing::info!(local_member_id = %me, "initial corruption checking passed; no corruption");
    Ok(())
}
