//! Lease calls only the leader can answer: keep-alive and time-to-live read the deadlines that
//! only the leader's (primary) lessor holds, so other members forward them over the peer protocol.
//!
//! Invariants:
//! - A call is answered only by a leader whose lessor is primary for its current term and that
//!   confirmed its leadership with a quorum (a read index) less than half an election timeout
//!   before: no other leader can be elected sooner than one election timeout after a quorum last
//!   heard from it. Any other member answers `NotLeader`/`NoLeader` and the caller retries at the
//!   leader. A leader cut off from its quorum therefore stops renewing within half an election
//!   timeout, long before the rest of the cluster could let the lease expire.
//! - A keep-alive of a lease that has expired but is not yet revoked waits for the revoke (then
//!   answers TTL 0) or for a change of primacy (then asks again), as etcd's does.

use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::peer::{self, PeerError};
use super::{ProposeError, RaftNode, Shared};
use crate::apply::{Op, Pb};
use crate::lease::{Renewal, TimeToLive};
use crate::proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest};

/// A lease call for the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCall {
    /// Keep a lease alive.
    Renew(i64),
    /// Report a lease's remaining TTL (and keys).
    TimeToLive {
        /// The lease.
        id: i64,
        /// Whether to list its keys.
        keys: bool,
    },
}

/// The leader's answer to a [`LeaseCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseReply {
    /// The TTL the lease was renewed for; 0 when there is no such lease.
    Renewed(i64),
    /// The lease's TTLs, or `None` when there is no such lease.
    TimeToLive(Option<TimeToLive>),
}

/// How long a leader that has not yet promoted its lessor is waited for.
const PROMOTION_WAIT: Duration = Duration::from_millis(50);

/// The pause between attempts while no leader can be reached.
const RETRY_GAP: Duration = Duration::from_millis(50);

impl Shared {
    /// This member's term if it leads, otherwise who does.
    fn leading_term(&self) -> Result<u64, ProposeError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            Ok(m.current_term)
        } else {
            Err(match m.current_leader {
                Some(l) if l != self.id => ProposeError::NotLeader(l),
                _ => ProposeError::NoLeader,
            })
        }
    }

    /// Answers `call` from this member's lessor: only as the leader, after confirming leadership
    /// with a quorum, and only from a lessor promoted in the current term. Waits while an expired
    /// lease is being revoked or while this leader is still promoting its lessor.
    pub(super) async fn lease_local(&self, call: LeaseCall) -> Result<LeaseReply, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let term = self.leading_term()?;
        self.confirm_leadership(term).await?;
        loop {
            let mut changes = self.leases.changes();
            changes.borrow_and_update();
            if self.leading_term()? != term {
                return Err(ProposeError::NoLeader);
            }
            let wait = match call {
                LeaseCall::Renew(id) => match self.leases.renew(id, term) {
                    Renewal::Renewed {
                        ttl,
                        clear_checkpoint,
                    } => {
                        if clear_checkpoint {
                            self.clear_checkpoint(id).await;
                        }
                        return Ok(LeaseReply::Renewed(ttl));
                    }
                    Renewal::NotFound => return Ok(LeaseReply::Renewed(0)),
                    // Wait for the revoke (then: not found) or a change of primacy.
                    Renewal::Expired => deadline,
                    // This leader is still promoting its lessor.
                    Renewal::NotPrimary => {
                        (tokio::time::Instant::now() + PROMOTION_WAIT).min(deadline)
                    }
                },
                LeaseCall::TimeToLive { id, keys } => {
                    match self.leases.time_to_live(id, keys, term) {
                        Ok(t) => return Ok(LeaseReply::TimeToLive(t)),
                        Err(_) => (tokio::time::Instant::now() + PROMOTION_WAIT).min(deadline),
                    }
                }
            };
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return Err(ProposeError::Stopped);
                    }
                }
                _ = tokio::time::sleep_until(wait) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProposeError::Timeout);
            }
        }
    }

    /// Confirms with a quorum that this member still leads in `term`, unless it did so less than
    /// half an election timeout ago (the check is shared with concurrent linearizable reads).
    async fn confirm_leadership(&self, term: u64) -> Result<(), ProposeError> {
        let now = std::time::Instant::now();
        let fresh = matches!(
            *self.lease_confirmed.lock(),
            Some((t, at)) if t == term && now.duration_since(at) < self.lease_forward_timeout / 2
        );
        if fresh {
            return Ok(());
        }
        // The check starts after `now`, so a quorum heard from this leader after `now`.
        self.local_read_index().await?;
        let mut confirmed = self.lease_confirmed.lock();
        if confirmed.is_none_or(|(t, at)| t < term || (t == term && at < now)) {
            *confirmed = Some((term, now));
        }
        Ok(())
    }

    /// A renewed lease has its full TTL again: its checkpointed remainder is cleared through the
    /// log (best effort, as etcd's is; the next checkpoint overwrites it anyway).
    async fn clear_checkpoint(&self, id: i64) {
        let op = Op::LeaseCheckpoint(Pb(LeaseCheckpointRequest {
            checkpoints: vec![LeaseCheckpoint {
                id,
                remaining_ttl: 0,
            }],
        }));
        if let Err(e) = self.write_local(op).await {
            tracing::debug!(lease = id, error = %e, "clearing a lease checkpoint");
        }
    }
}

impl RaftNode {
    /// Answers a lease call at the leader, forwarding it when this member is not the leader.
    /// While there is no reachable leader it keeps trying (every [`RETRY_GAP`], each forward
    /// bounded by one election timeout, so a stopped leader does not hold renewals past the
    /// grace a new leader gives) until the request timeout.
    async fn lease_call(&self, call: LeaseCall) -> Result<LeaseReply, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.shared.request_timeout;
        let mut hint = None;
        loop {
            let forwarded = hint.is_some();
            let res = match hint.take() {
                None => self.shared.lease_local(call).await,
                Some(l) => self.forward_lease(l, call).await,
            };
            let retry = match res {
                Err(ProposeError::NotLeader(l)) => {
                    hint = Some(l);
                    // A leader that names another one is mid-election: do not ping-pong.
                    forwarded
                }
                Err(ProposeError::NoLeader)
                | Err(ProposeError::LeaderUnreachable(_))
                | Err(ProposeError::Timeout) => true,
                other => return other,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return match res {
                    Err(ProposeError::NotLeader(_)) => Err(ProposeError::NoLeader),
                    other => other,
                };
            }
            if retry {
                tokio::time::sleep_until((now + RETRY_GAP).min(deadline)).await;
            }
        }
    }

    async fn forward_lease(
        &self,
        leader: u64,
        call: LeaseCall,
    ) -> Result<LeaseReply, ProposeError> {
        let (id, node) = self.shared.leader_target(Some(leader))?;
        let payload =
            peer::encode(&call).map_err(|e| ProposeError::LeaderUnreachable(e.to_string()))?;
        let reply = self
            .shared
            .peers
            .call(
                id,
                &node,
                self.shared.lease_forward_timeout,
                |mut c| async move { c.lease(payload).await },
            )
            .await
            .map_err(|e| match e {
                PeerError::Timeout(_) => ProposeError::Timeout,
                other => ProposeError::LeaderUnreachable(other.to_string()),
            })?;
        peer::decode::<Result<LeaseReply, ProposeError>>(&reply)
            .map_err(|e| ProposeError::LeaderUnreachable(e.to_string()))?
    }

    /// Keeps lease `id` alive at the leader; the TTL it was renewed for, 0 when it does not exist.
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ProposeError> {
        match self.lease_call(LeaseCall::Renew(id)).await? {
            LeaseReply::Renewed(ttl) => Ok(ttl),
            LeaseReply::TimeToLive(_) => Err(ProposeError::LeaderUnreachable(
                "the leader answered a keep-alive with a time-to-live".to_string(),
            )),
        }
    }

    /// Lease `id`'s remaining and granted TTL as the leader knows them; `None` when it does not
    /// exist.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<TimeToLive>, ProposeError> {
        match self.lease_call(LeaseCall::TimeToLive { id, keys }).await? {
            LeaseReply::TimeToLive(t) => Ok(t),
            LeaseReply::Renewed(_) => Err(ProposeError::LeaderUnreachable(
                "the leader answered a time-to-live with a keep-alive".to_string(),
            )),
        }
    }

    /// Proposes `op` only if this member leads: a member that is not the leader never forwards
    /// it (lease expiry must not be decided by a deposed leader).
    pub async fn write_as_leader(&self, op: Op) -> Result<crate::apply::Applied, ProposeError> {
        self.shared.write_local(op).await
    }
}
