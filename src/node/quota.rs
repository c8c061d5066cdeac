//! The backend size, the space quota (etcd's `--quota-backend-bytes` and its NOSPACE alarm) and the
//! gauges a scrape refreshes.
//!
//! Invariants: the database size is that of the replicated state (key-value, lease, auth, members,
//! alarm and meta column families), never the raft log, as etcd's bbolt size excludes its WAL; a
//! write that would take the size past the quota raises NOSPACE through the log before it is
//! refused, so every member agrees the alarm is active.
//!
//! The disk is guarded the same way: every member checks the free space on its data directory's
//! filesystem (at each write it receives, and every [`DISK_CHECK_EVERY`] in any case, since it
//! also writes what others receive) and raises NOSPACE for itself while less than
//! [`disk_reserve`] is left. The reserve keeps room for the writes already under way, the alarm's
//! own log entry and RocksDB's flushes, so a full disk refuses writes with etcd's error instead
//! of failing a log append (after which a member must stop). As with the quota, the operator
//! frees space and disarms the alarm (`etcdctl alarm disarm`); it comes back while space is short.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::apply::{AlarmRefusal, Applied, Op, Pb};
use crate::metrics::{self, Metrics};
use crate::proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use crate::storage::{Cf, DiskSpace, StorageError};

/// What etcd adds to a request's size when it estimates its cost against the quota.
pub const KV_OVERHEAD: u64 = 256;

/// How long a measured database size is reused by the quota check.
const SIZE_TTL: Duration = Duration::from_millis(100);

/// How often every member checks its disk's free space.
pub const DISK_CHECK_EVERY: Duration = Duration::from_millis(250);

/// The free space a member keeps on its disk: a tenth of the filesystem, at least 128 MiB (room
/// for RocksDB to start a new write-ahead log, which it preallocates at about 70 MiB, and to
/// flush a memtable) and at most 1 GiB.
pub fn disk_reserve(total: u64) -> u64 {
    (total / 10).clamp(128 << 20, 1 << 30)
}

/// The measured database size.
#[derive(Debug, Default)]
pub struct SizeCache {
    at: Option<Instant>,
    total: u64,
    disk: Option<(Instant, DiskSpace)>,
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

    fn recent_disk_space(&self) -> Result<DiskSpace, StorageError> {
        {
            let cache = self.size_cache.lock();
            if let Some((at, d)) = cache.disk {
                if at.elapsed() < SIZE_TTL {
                    return Ok(d);
                }
            }
        }
        let d = self.storage.disk_space()?;
        self.size_cache.lock().disk = Some((Instant::now(), d));
        Ok(d)
    }

    /// Whether the disk has less than the reserve (plus `cost`) left.
    fn disk_short(&self, cost: u64) -> Result<Option<DiskSpace>, StorageError> {
        let d = self.recent_disk_space()?;
        Ok((d.available < disk_reserve(d.total).saturating_add(cost)).then_some(d))
    }

    /// etcd's quota check before a write of about `cost` bytes: when the database would grow past
    /// `--quota-backend-bytes`, or the disk would be left with less than its reserve, raises
    /// NOSPACE for this member and refuses the write.
    pub async fn check_quota(&self, cost: u64) -> Result<(), QuotaError> {
        let quota = self.settings.quota_backend_bytes.max(0) as u64;
        let size = self.recent_db_size()?;
        if let Some(d) = self.disk_short(cost)? {
            self.disk_full(d).await;
            return Err(QuotaError::NoSpace(AlarmRefusal::NoSpace));
        }
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

    /// Raises NOSPACE for this member, as its disk is short of space (once: while the alarm is
    /// on, nothing is proposed).
    async fn disk_full(&self, d: DiskSpace) {
        if self.alarms.has(AlarmType::Nospace) {
            return;
        }
        // Measured afresh: space freed just before a disarm must not raise the alarm again.
        let d = match self.storage.disk_space() {
            Ok(now) if now.available < disk_reserve(now.total) => now,
            Ok(now) => {
                self.size_cache.lock().disk = Some((Instant::now(), now));
                return;
            }
            Err(_) => d,
        };
        if self
            .raise_alarm(self.identity.member_id.0, AlarmType::Nospace)
            .await
        {
            tracing::warn!(
                available = d.available,
                reserve = disk_reserve(d.total),
                "the data directory's disk is almost full: raised the NOSPACE alarm"
            );
        }
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
        if let Ok(mem) = self.storage.memory() {
            for (cf, bytes) in mem.memtables {
                m.storage_memtables
                    .with_label_values(&[cf.name()])
                    .set(bytes as i64);
            }
            m.storage_block_cache.set(mem.block_cache as i64);
            m.storage_table_readers.set(mem.table_readers as i64);
        }
        m.compact_revision.set(self.mvcc.compacted_revision());
        let stats = &self.mvcc.hub().stats;
        Metrics::advance(
            &m.watch_events,
            stats.events_sent.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}

/// Checks the disk every [`DISK_CHECK_EVERY`] and raises NOSPACE while it is short of space
/// (this member writes the log and the state of every write, whoever received it).
pub(super) async fn guard_disk(node: Arc<Node>) {
    let mut tick = tokio::time::interval(DISK_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match node.disk_short(0) {
            Ok(Some(d)) => node.disk_full(d).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the disk's free space"),
        }
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
