//! Leases on this member: granting (ID and minimum TTL), and the leader-only expiry task.
//!
//! Invariants:
//! - Only the leader's lessor holds deadlines. It is promoted for the leader's term once this
//!   member has confirmed its leadership and applied everything committed before (its own
//!   barrier, never forwarded), and demoted as soon as the task sees another state or term. The
//!   lessor refuses renewals and expiry for any other term meanwhile, so a late demotion is
//!   harmless.
//! - Expired leases are revoked by proposing `LeaseRevoke` through the log with
//!   [`crate::raft::RaftNode::write_as_leader`], which never forwards: a deposed leader's
//!   proposal fails instead of reaching the new leader.
//! - At most [`REVOKE_RATE`] revokes per second are proposed, so a mass expiry leaves room for
//!   client writes; the rest wait for the next refill.
//! - With checkpointing on, the leader proposes every long lease's remaining TTL once per
//!   interval, so a new leader restarts it from there instead of from the full TTL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::apply::{Applied, Op, Pb};
use crate::lease::REVOKE_RATE;
use crate::proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest,
};
use crate::raft::ProposeError;

/// Most checkpoints in one proposal.
const CHECKPOINTS_PER_OP: usize = 1000;
/// Longest sleep of the expiry task when nothing is due.
const IDLE: Duration = Duration::from_secs(1);

/// The bits of a lease ID taken by the member ID (as etcd's ID generator).
const MEMBER_BITS: u32 = 16;
const SUFFIX_BITS: u32 = 64 - MEMBER_BITS;

/// The first counter value of a member's lease IDs: milliseconds since the epoch, shifted so
/// that IDs from one start do not collide with a later start's.
pub(super) fn lease_id_seed() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (ms & ((1 << 40) - 1)) << 8
}

/// etcd's minimum lease TTL in seconds: one and a half election timeouts (in whole heartbeat
/// ticks), rounded up.
pub fn min_lease_ttl(heartbeat: Duration, election: Duration) -> i64 {
    let hb = heartbeat.as_millis().max(1);
    let ticks = election.as_millis() / hb;
    let ms = (3 * ticks / 2) * hb;
    ms.div_ceil(1000) as i64
}

impl Node {
    /// A new lease ID: this member's ID in the top bits, a counter below, never 0 or negative.
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let n = self
                .lease_ids
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            let prefix = (self.identity.member_id.0 & ((1 << MEMBER_BITS) - 1)) << SUFFIX_BITS;
            let id = ((prefix | (n & ((1 << SUFFIX_BITS) - 1))) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }

    /// The smallest TTL a lease is granted with, in seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        min_lease_ttl(self.settings.heartbeat, self.settings.election)
    }

    /// Grants a lease of `ttl` seconds (raised to the minimum) with `id`, or a new ID when `id`
    /// is 0. The TTL must already be checked against the maximum.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<Applied, ProposeError> {
        let ttl = ttl.max(self.min_lease_ttl());
        // A server-chosen ID can only collide with a client-chosen one; try a fresh one then.
        let attempts = if id == 0 { 3 } else { 1 };
        let mut last = Applied::Nothing;
        for _ in 0..attempts {
            let id = if id == 0 { self.next_lease_id() } else { id };
            last = self
                .propose(Op::LeaseGrant(Pb(LeaseGrantRequest { ttl, id })))
                .await?;
            if !matches!(last, Applied::Failed(_)) {
                break;
            }
        }
        Ok(last)
    }
}

/// Refills at [`REVOKE_RATE`] per second, holding at most half a second's worth.
struct Budget {
    tokens: f64,
    at: tokio::time::Instant,
}

impl Budget {
    fn new(now: tokio::time::Instant) -> Budget {
        Budget {
            tokens: REVOKE_RATE as f64 / 2.0,
            at: now,
        }
    }

    fn available(&mut self, now: tokio::time::Instant) -> usize {
        let cap = REVOKE_RATE as f64 / 2.0;
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * REVOKE_RATE as f64).min(cap);
        self.at = now;
        self.tokens as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }
}

/// Runs the expiry (and checkpoint) loop until the task is aborted.
pub(super) async fn run(node: Arc<Node>) {
    let leases = node.leases.clone();
    // Leadership is polled every heartbeat: following raft's every state change would wake this
    // task several times per write.
    let poll = node.settings.heartbeat.max(Duration::from_millis(10));
    let mut budget = Budget::new(tokio::time::Instant::now());
    let checkpoint_every = node.settings.lease_checkpoint_interval;
    let mut next_checkpoint = None;
    loop {
        let (leader, term) = node.raft.leadership();
        if let Some(t) = leases.primary_term() {
            if !leader || t != term {
                leases.demote();
                next_checkpoint = None;
                tracing::info!(term = t, "no longer leader: lease deadlines dropped");
            }
        }
        if leader && leases.primary_term().is_none() {
            match node.raft.leader_barrier().await {
                Ok(()) if node.raft.leadership() == (true, term) => {
                    leases.promote(node.settings.election, term);
                    next_checkpoint = checkpoint_every.map(|i| tokio::time::Instant::now() + i);
                    tracing::info!(
                        term,
                        leases = leases.len(),
                        "leader holds the lease deadlines"
                    );
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e, "lessor promotion waits for the leader"),
            }
        }
        let mut wake = tokio::time::Instant::now() + poll.min(IDLE);
        if let Some(term) = leases.primary_term() {
            let due = leases.expired(budget.available(tokio::time::Instant::now()), term);
            if !due.is_empty() {
                budget.spend(due.len());
                revoke(&node, due).await;
            }
            if budget.available(tokio::time::Instant::now()) == 0 {
                wake = wake.min(tokio::time::Instant::now() + Duration::from_millis(100));
            } else if let Some(d) = leases.next_deadline() {
                wake = wake.min(tokio::time::Instant::from_std(d));
            }
            if let (Some(at), Some(every)) = (next_checkpoint, checkpoint_every) {
                if tokio::time::Instant::now() >= at {
                    checkpoint(&node, every, term).await;
                    next_checkpoint = Some(tokio::time::Instant::now() + every);
                }
                wake = wake.min(next_checkpoint.unwrap_or(wake));
            }
        }
        tokio::select! {
            _ = leases.deadline_set() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

async fn revoke(node: &Node, ids: Vec<i64>) {
    let ops: Vec<Op> = ids
        .iter()
        .map(|&id| Op::LeaseRevoke(Pb(LeaseRevokeRequest { id })))
        .collect();
    let n = ops.len();
    match node.raft.write_as_leader(Op::Batch(ops)).await {
        Ok(crate::apply::Applied::Batch(results)) => {
            let revoked = results
                .iter()
                .filter(|r| matches!(r, crate::apply::Applied::LeaseRevoked { .. }))
                .count();
            crate::metrics::get().lease_revoked.inc_by(revoked as u64);
            tracing::debug!(count = n, revoked, "revoked expired leases");
        }
        Ok(_) => tracing::debug!(count = n, "revoked expired leases"),
        // The leases stay expired here and are reported again; a new leader decides afresh.
        Err(e) => tracing::warn!(count = n, error = %e, "revoking expired leases failed"),
    }
}

async fn checkpoint(node: &Node, min_ttl: Duration, term: u64) {
    let all = node.leases.checkpoints(min_ttl, term);
    for chunk in all.chunks(CHECKPOINTS_PER_OP) {
        let op = Op::LeaseCheckpoint(Pb(LeaseCheckpointRequest {
            checkpoints: chunk
                .iter()
                .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        }));
        if let Err(e) = node.raft.write_as_leader(op).await {
            tracing::debug!(error = %e, "lease checkpoint not proposed");
            return;
        }
        if node.raft.leadership() != (true, term) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revokes_are_limited_to_the_revoke_rate() {
        let t0 = tokio::time::Instant::now();
        let mut b = Budget::new(t0);
        assert_eq!(
            b.available(t0),
            REVOKE_RATE / 2,
            "half a second's worth at once"
        );
        b.spend(REVOKE_RATE / 2);
        assert_eq!(b.available(t0), 0);
        let later = t0 + Duration::from_millis(100);
        assert_eq!(b.available(later), REVOKE_RATE / 10);
        let much_later = t0 + Duration::from_secs(60);
        assert_eq!(
            b.available(much_later),
            REVOKE_RATE / 2,
            "the budget does not pile up"
        );
    }

    #[test]
    fn the_minimum_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        let ms = Duration::from_millis;
        assert_eq!(min_lease_ttl(ms(100), ms(1000)), 2);
        assert_eq!(min_lease_ttl(ms(100), ms(2000)), 3);
        assert_eq!(min_lease_ttl(ms(50), ms(250)), 1);
        assert_eq!(min_lease_ttl(ms(100), ms(5000)), 8);
    }
}
