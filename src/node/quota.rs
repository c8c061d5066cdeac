//! The backend size, the space quota (etcd's `--quota-backend-bytes` and its NOSPACE alarm) and the
//! gauges a scrape refreshes.
//!
//! Invariants: the database size is that of the replicated state (key-value, lease, auth, members,
//! alarm and meta column families), never the raft log, as etcd's bbolt size excludes its WAL; a
//! write that would take the size past the quota raises NOSPACE through the log before it is
//! refused, so every member agrees the alarm is active.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::apply::{AlarmRefusal, Applied, Op, Pb};
use crate::metrics::{self, Metrics};
use crate::proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use crate::storage::{Cf, StorageError};

/// What etcd adds to a request's size when it estimates its cost against the quota.
pub const KV_OVERHEAD: u64 = 256;

/// How long a measured database size is reused by the quota check.
const SIZE_TTL: Duration = Duration::from_millis(100);

/// The measured database size.
#[derive(Debug, Default)]
pub struct SizeCache {
    at: Option<Instant>,
    total: u64,
}

impl Node {
    /// The database size in bytes: allocated, and estimated in use.
    pub fn db_size(&self) -> Result<(u64, u64), StorageError> {
        let total = self.storage.size_of(&Cf::STATE_MACHINE)?;
        let live = self.storage.live_size_of(&Cf::STATE_MACHINE)?;
        let mut cache = self.size_cache.lock();
        cache.at = Some(Instant::now());
        cache.total = total;
        Ok((total, live.min(total)))
    }

    fn recent_db_size(&self) -> Result<u64, StorageError> {
        {
            let cache = self.size_cache.lock();
            if cache.at.is_some_and(|t| t.elapsed() < SIZE_TTL) {
                return Ok(cache.total);
            }
        }
        Ok(self.db_size()?.0)
    }

    /// etcd's quota check before a write of about `cost` bytes: when the database would grow past
    /// `--quota-backend-bytes`, raises NOSPACE for this member and refuses the write.
    pub async fn check_quota(&self, cost: u64) -> Result<(), QuotaError> {
        let quota = self.settings.quota_backend_bytes.max(0) as u64;
        let size = self.recent_db_size()?;
        if size.saturating_add(cost) <= quota {
            return Ok(());
        }
        if self
            .raise_alarm(self.identity.member_id.0, AlarmType::Nospace)
            .await
        {
            tracing::warn!(
                size,
                quota,
                "database space exceeded: raised the NOSPACE alarm"
            );
        }
        Err(QuotaError::NoSpace(AlarmRefusal::NoSpace))
    }

    /// Raises `alarm` for `member` through the log; returns whether it applied (a failure is
    /// logged: the alarm is raised again the next time its condition is seen).
    pub async fn raise_alarm(&self, member: u64, alarm: AlarmType) -> bool {
        let op = Op::Alarm(Pb(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: member,
            alarm: alarm as i32,
        }));
        match self.propose(op).await {
            Ok(Applied::Alarm(_)) => true,
            Ok(other) => {
                tracing::warn!(?other, alarm = alarm.as_str_name(), "raising an alarm");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, alarm = alarm.as_str_name(), "raising an alarm");
                false
            }
        }
    }

    /// Refreshes the gauges that mirror this member's state, before a scrape.
    pub fn refresh_metrics(&self) {
        let m = metrics::get();
        let leader = self.raft.known_leader();
        m.has_leader.set(i64::from(leader.is_some()));
        m.is_leader
            .set(i64::from(leader == Some(self.identity.member_id.0)));
        m.is_learner.set(i64::from(self.raft.is_learner()));
        Metrics::advance(&m.proposals_applied, self.raft.applied_index());
        m.quota_backend_bytes.set(self.settings.quota_backend_bytes);
        if let Ok((total, live)) = self.db_size() {
            m.db_total_size.set(total as i64);
            m.db_size_in_use.set(live as i64);
        }
        m.current_revision.set(self.mvcc.current_revision());
        m.compact_revision.set(self.mvcc.compacted_revision());
        let stats = &self.mvcc.hub().stats;
        Metrics::advance(
            &m.watch_events,
            stats.events_sent.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}

/// Sets the metrics that never change while the member runs, and counts leader changes (each
/// time a leader becomes known that differs from the last one known) until raft stops.
pub(super) async fn watch_leader(node: Arc<Node>) {
    let m = metrics::get();
    m.server_id
        .with_label_values(&[&format!("{:x}", node.identity.member_id.0)])
        .set(1);
    m.server_version
        .with_label_values(&[crate::REPORTED_ETCD_VERSION])
        .set(1);
    m.cluster_version
        .with_label_values(&[crate::ETCD_API_VERSION])
        .set(1);
    m.build_info.with_label_values(&[crate::VERSION]).set(1);
    m.quota_backend_bytes.set(node.settings.quota_backend_bytes);
    let mut last = None;
    let mut changes = node.raft.leader_changes();
    loop {
        let leader = node.raft.known_leader();
        m.has_leader.set(i64::from(leader.is_some()));
        m.is_leader
            .set(i64::from(leader == Some(node.identity.member_id.0)));
        // Counted from raft's view (a cut-off leader that gets its quorum back is no change).
        let leader = node.raft.leader();
        if leader.is_some() && leader != last {
            m.leader_changes.inc();
            last = leader;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Why a write was refused before it was proposed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The quota is exceeded (NOSPACE is raised).
    #[error(transparent)]
    NoSpace(AlarmRefusal),
    /// The database size could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
