//! What a running member reports about raft: its membership and role, the leader and term (as
//! etcd's check-quorum sees them), applied and log indexes, and the waits on raft's state
//! (a leader, a change, the member's removal or stop).
//!
//! Invariants: nothing here changes raft state except `shutdown`; every answer is read from
//! openraft's metrics or this member's liveness at the moment of the call.

use std::time::Duration;

use openraft::ServerState;

use super::{membership, MemberInfo, ProposeError, RaftNode};
use crate::types::Member;

/// Notifies of changes to raft's state as the role, the leader and the gauges see it: the
/// vote, role, leader and membership (openraft's server metrics, which change only when one of
/// them does) and the check-quorum flag. Not of log progress: openraft's full metrics change on
/// every append, commit and apply, and each task waiting on them (the health status, the leader
/// gauges, the stop watch: three on every member) was woken for every write.
pub struct RaftWatch {
    server: tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<u64, Member>>,
    lost: tokio::sync::watch::Receiver<bool>,
}

impl RaftWatch {
    /// Waits for the next change; `Err` once raft has stopped.
    pub async fn changed(&mut self) -> Result<(), ProposeError> {
        tokio::select! {
            r = self.server.changed() => r.map_err(|_| ProposeError::Stopped),
            r = self.lost.changed() => {
                if r.is_err() {
                    // The flag's sender lives as long as the member: only raft's end is left.
                    return self.server.changed().await.map_err(|_| ProposeError::Stopped);
                }
                Ok(())
            }
        }
    }
}

impl RaftNode {
    /// The members of the current configuration.
    pub fn members(&self) -> Vec<MemberInfo> {
        membership::members(&self.shared.raft)
    }

    /// Whether this member has been removed: its removal was applied, or the latest membership
    /// configuration excludes it after it had been part of the membership.
    pub fn is_removed(&self) -> bool {
        use std::sync::atomic::Ordering;
        let id = self.shared.id;
        if self.shared.state_machine.was_removed(id) {
            return true;
        }
        let m = self
            .shared
            .raft
            .metrics()
            .borrow()
            .membership_config
            .clone();
        if m.membership().get_node(&id).is_some() {
            self.shared.seen_self.store(true, Ordering::Relaxed);
            return false;
        }
        // Excluded by the latest configuration: removed if it was a member before; a learner
        // still replaying the log up to its own addition is not.
        m.log_id().is_some() && self.shared.seen_self.load(Ordering::Relaxed)
    }

    /// Whether this member is a learner.
    pub fn is_learner(&self) -> bool {
        // Asked on every client request: read the membership in place, without copying it.
        let id = self.shared.id;
        let metrics = self.shared.raft.metrics();
        let m = metrics.borrow();
        let learner = m
            .membership_config
            .membership()
            .learner_ids()
            .any(|l| l == id);
        learner
    }

    /// This member's ID.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Waits until some member is leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ProposeError> {
        let res = self
            .shared
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader elected")
            .await;
        match res {
            Ok(m) => m.current_leader.ok_or(ProposeError::NoLeader),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(ProposeError::NoLeader),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(ProposeError::Stopped),
        }
    }

    /// The current raft term.
    pub fn term(&self) -> u64 {
        self.shared.raft.metrics().borrow().current_term
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<u64> {
        self.shared.raft.metrics().borrow().current_leader
    }

    /// The leader as etcd's CheckQuorum sees it: a leader that has not heard from a quorum for
    /// an election timeout is cut off (etcd's steps down), so it counts as no leader. Followers
    /// report the leader they follow. For the gauges and probes operators watch.
    pub fn known_leader(&self) -> Option<u64> {
        let m = self.shared.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader {
            // A follower that has not heard from its leader for an election timeout knows none.
            return m
                .current_leader
                .filter(|_| !self.shared.liveness.leader_silent());
        }
        (!self.shared.liveness.is_quorum_lost()).then_some(self.shared.id)
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.shared.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The index of the last log entry.
    pub fn last_log_index(&self) -> u64 {
        self.shared
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0)
    }

    /// Whether this member leads, and its current term (read together).
    pub fn leadership(&self) -> (bool, u64) {
        let m = self.shared.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader, m.current_term)
    }

    /// On the leader only (never forwarded): confirms leadership with a quorum and waits until
    /// this member has applied everything committed before, including its own term's first entry.
    pub async fn leader_barrier(&self) -> Result<(), ProposeError> {
        let index = self.shared.local_read_index().await?;
        self.shared.wait_applied(index).await
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.shared
            .state_machine
            .applied()
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// A receiver that changes whenever raft's vote, role, leader or membership changes, or this
    /// leader loses or regains its quorum (not with log progress).
    pub fn leader_changes(&self) -> RaftWatch {
        RaftWatch {
            server: self.shared.raft.server_metrics(),
            lost: self.shared.liveness.quorum_lost(),
        }
    }

    /// Resolves when raft stops, with the reason when it stopped on an error.
    pub async fn stopped(&self) -> Option<String> {
        // Raft's core owns the server metrics' sender: it is gone once the core has ended, and
        // the core reports why in its full metrics before it ends.
        let mut server = self.shared.raft.server_metrics();
        let mut ended = false;
        loop {
            if let Err(e) = &self.shared.raft.metrics().borrow().running_state {
                return Some(e.to_string());
            }
            if ended {
                return None;
            }
            ended = server.changed().await.is_err();
        }
    }

    /// Resolves when this member sees itself removed from the cluster.
    /// (Its own membership says so, or a peer answered its raft messages that way.)
    pub async fn removed(&self) {
        // The membership is part of the server metrics (which change only with it, the vote,
        // the role or the leader).
        let mut rx = self.shared.raft.server_metrics();
        let mut told = self.shared.peers.removed();
        loop {
            if self.is_removed() || *told.borrow_and_update() {
                return;
            }
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                r = told.changed() => {
                    if r.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Stops raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
