//! The member's Prometheus metrics, under etcd's names and labels so that etcd's Grafana dashboard
//! and alert rules work unchanged.
//!
//! Invariants: there is one registry per process (one process is one member), created on first
//! use; every metric measures what its etcd name says, or it is not exported. Gauges that mirror
//! state (leadership, sizes, revisions) are refreshed by the scrape handler just before encoding;
//! counters and histograms are updated where the event happens.
//!
//! etcd gauges whose names end in `_total` (`etcd_debugging_mvcc_watcher_total`,
//! `etcd_debugging_mvcc_watch_stream_total`) are left out: `promtool check metrics` rejects them,
//! and dashboards count watch streams from `grpc_server_started_total - grpc_server_handled_total`
//! for the Watch method.

pub mod grpc;

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Failures building the registry (a programming error: a name registered twice or malformed).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Prometheus refused a metric.
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// Every metric oxcd exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `etcd_server_has_leader`: 1 when the member knows a leader.
    pub has_leader: IntGauge,
    /// `etcd_server_is_leader`: 1 when the member is the leader.
    pub is_leader: IntGauge,
    /// `etcd_server_is_learner`: 1 when the member is a learner.
    pub is_learner: IntGauge,
    /// `etcd_server_leader_changes_seen_total`.
    pub leader_changes: IntCounter,
    /// `etcd_server_proposals_committed_total`: the raft commit index.
    pub proposals_committed: IntCounter,
    /// `etcd_server_proposals_applied_total`: the applied index.
    pub proposals_applied: IntCounter,
    /// `etcd_server_proposals_pending`: proposals waiting to commit.
    pub proposals_pending: IntGauge,
    /// `etcd_server_proposals_failed_total`.
    pub proposals_failed: IntCounter,
    /// `etcd_server_read_indexes_failed_total`: linearizable read confirmations that failed.
    pub read_indexes_failed: IntCounter,
    /// `etcd_server_quota_backend_bytes`.
    pub quota_backend_bytes: IntGauge,
    /// `etcd_server_id{server_id}`.
    pub server_id: IntGaugeVec,
    /// `etcd_server_version{server_version}`.
    pub server_version: IntGaugeVec,
    /// `oxcd_build_info{version}`: 1 for this build's version (with its build label).
    pub build_info: IntGaugeVec,
    /// `oxcd_controller_reconciles_total`: reconciles started by the membership controller.
    pub controller_reconciles: IntCounter,
    /// `oxcd_controller_actions_total{action}`: membership and pod changes made.
    pub controller_actions: IntCounterVec,
    /// `oxcd_controller_blocked_total{reason}`: reconciles that had a step to make and refused.
    pub controller_blocked: IntCounterVec,
    /// `oxcd_controller_members{role}`: voters and learners, as the acting controller last saw.
    pub controller_members: IntGaugeVec,
    /// `etcd_cluster_version{cluster_version}`.
    pub cluster_version: IntGaugeVec,
    /// `etcd_server_client_requests_total{type,client_api_version}`.
    pub client_requests: IntCounterVec,
    /// `etcd_disk_wal_fsync_duration_seconds`: each fsync of the raft log.
    pub wal_fsync: Histogram,
    /// `etcd_disk_backend_commit_duration_seconds`: each commit of applied data.
    pub backend_commit: Histogram,
    /// `etcd_disk_defrag_inflight`.
    pub defrag_inflight: IntGauge,
    /// `etcd_disk_backend_defrag_duration_seconds`.
    pub defrag_duration: Histogram,
    /// `etcd_disk_backend_snapshot_duration_seconds`.
    pub snapshot_duration: Histogram,
    /// `etcd_mvcc_db_total_size_in_bytes`.
    pub db_total_size: IntGauge,
    /// `etcd_mvcc_db_total_size_in_use_in_bytes`.
    pub db_size_in_use: IntGauge,
    /// `oxcd_storage_memtable_bytes{cf}`: RocksDB's memtables not yet dropped, by column family.
    pub storage_memtables: IntGaugeVec,
    /// `oxcd_storage_block_cache_bytes`: RocksDB's shared block cache in use.
    pub storage_block_cache: IntGauge,
    /// `oxcd_storage_table_readers_bytes`: RocksDB's table readers outside the block cache.
    pub storage_table_readers: IntGauge,
    /// `etcd_mvcc_put_total`: puts applied (alone or in a txn).
    pub mvcc_put: IntCounter,
    /// `etcd_mvcc_delete_total`: delete-ranges applied.
    pub mvcc_delete: IntCounter,
    /// `etcd_mvcc_range_total`: ranges served.
    pub mvcc_range: IntCounter,
    /// `etcd_mvcc_txn_total`: txns served.
    pub mvcc_txn: IntCounter,
    /// `etcd_debugging_mvcc_current_revision`.
    pub current_revision: IntGauge,
    /// `etcd_debugging_mvcc_compact_revision`.
    pub compact_revision: IntGauge,
    /// `etcd_debugging_mvcc_db_compaction_keys_total`: stored revisions deleted by compaction.
    pub compaction_keys: IntCounter,
    /// `etcd_debugging_mvcc_events_total`: events sent to watchers.
    pub watch_events: IntCounter,
    /// `etcd_debugging_lease_granted_total`.
    pub lease_granted: IntCounter,
    /// `etcd_debugging_lease_revoked_total`.
    pub lease_revoked: IntCounter,
    /// `etcd_debugging_lease_renewed_total`.
    pub lease_renewed: IntCounter,
    /// `etcd_network_peer_round_trip_time_seconds{To}`.
    pub peer_rtt: HistogramVec,
    /// `etcd_network_peer_sent_bytes_total{To}`.
    pub peer_sent_bytes: IntCounterVec,
    /// `etcd_network_peer_received_bytes_total{From}`.
    pub peer_received_bytes: IntCounterVec,
    /// `etcd_network_peer_sent_failures_total{To}`.
    pub peer_sent_failures: IntCounterVec,
    /// `etcd_network_client_grpc_sent_bytes_total`.
    pub client_grpc_sent_bytes: IntCounter,
    /// `etcd_network_client_grpc_received_bytes_total`.
    pub client_grpc_received_bytes: IntCounter,
    /// `grpc_server_*`.
    pub grpc: grpc::GrpcMetrics,
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    l: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(name, help), l)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    l: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), l)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    start: f64,
    count: usize,
) -> Result<Histogram, MetricsError> {
    let h = Histogram::with_opts(
        HistogramOpts::new(name, help).buckets(exponential_buckets(start, 2.0, count)?),
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    fn build() -> Result<Metrics, MetricsError> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let peer_rtt = HistogramVec::new(
            HistogramOpts::new(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 16)?),
            &["To"],
        )?;
        r.register(Box::new(peer_rtt.clone()))?;
        Ok(Metrics {
            has_leader: gauge(&r, "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.")?,
            is_leader: gauge(&r, "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.")?,
            is_learner: gauge(&r, "etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.")?,
            leader_changes: counter(&r, "etcd_server_leader_changes_seen_total", "The number of leader changes seen.")?,
            proposals_committed: counter(&r, "etcd_server_proposals_committed_total", "The total number of consensus proposals committed.")?,
            proposals_applied: counter(&r, "etcd_server_proposals_applied_total", "The total number of consensus proposals applied.")?,
            proposals_pending: gauge(&r, "etcd_server_proposals_pending", "The current number of pending proposals to commit.")?,
            proposals_failed: counter(&r, "etcd_server_proposals_failed_total", "The total number of failed proposals seen.")?,
            read_indexes_failed: counter(&r, "etcd_server_read_indexes_failed_total", "The total number of failed read indexes seen.")?,
            quota_backend_bytes: gauge(&r, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.")?,
            server_id: gauge_vec(&r, "etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", &["server_id"])?,
            server_version: gauge_vec(&r, "etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.", &["server_version"])?,
            build_info: gauge_vec(&r, "oxcd_build_info", "Which oxcd build is running. 1 for 'version' label with this build's version.", &["version"])?,
            controller_reconciles: counter(&r, "oxcd_controller_reconciles_total", "Reconciles started by the membership controller.")?,
            controller_actions: counter_vec(&r, "oxcd_controller_actions_total", "Membership and pod changes made by the membership controller, by kind.", &["action"])?,
            controller_blocked: counter_vec(&r, "oxcd_controller_blocked_total", "Reconciles whose next step was refused, by reason.", &["reason"])?,
            controller_members: gauge_vec(&r, "oxcd_controller_members", "Members by role, as the acting membership controller last saw them.", &["role"])?,
            cluster_version: gauge_vec(&r, "etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version", &["cluster_version"])?,
            client_requests: counter_vec(&r, "etcd_server_client_requests_total", "The total number of client requests per client version.", &["type", "client_api_version"])?,
            wal_fsync: histogram(&r, "etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.", 0.001, 14)?,
            backend_commit: histogram(&r, "etcd_disk_backend_commit_duration_seconds", "The latency distributions of commit called by backend.", 0.001, 14)?,
            defrag_inflight: gauge(&r, "etcd_disk_defrag_inflight", "Whether or not defrag is active on the member. 1 means active, 0 means not.")?,
            defrag_duration: histogram(&r, "etcd_disk_backend_defrag_duration_seconds", "The latency distribution of backend defragmentation.", 0.1, 13)?,
            snapshot_duration: histogram(&r, "etcd_disk_backend_snapshot_duration_seconds", "The latency distribution of backend snapshots.", 0.01, 17)?,
            db_total_size: gauge(&r, "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.")?,
            db_size_in_use: gauge(&r, "etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.")?,
            storage_memtables: gauge_vec(&r, "oxcd_storage_memtable_bytes", "Bytes held by RocksDB's memtables (active, and immutable until dropped), by column family.", &["cf"])?,
            storage_block_cache: gauge(&r, "oxcd_storage_block_cache_bytes", "Bytes in use in RocksDB's shared block cache.")?,
            storage_table_readers: gauge(&r, "oxcd_storage_table_readers_bytes", "Bytes held by RocksDB's table readers outside the block cache (index and filter blocks).")?,
            mvcc_put: counter(&r, "etcd_mvcc_put_total", "Total number of puts seen by this member.")?,
            mvcc_delete: counter(&r, "etcd_mvcc_delete_total", "Total number of deletes seen by this member.")?,
            mvcc_range: counter(&r, "etcd_mvcc_range_total", "Total number of ranges seen by this member.")?,
            mvcc_txn: counter(&r, "etcd_mvcc_txn_total", "Total number of txns seen by this member.")?,
            current_revision: gauge(&r, "etcd_debugging_mvcc_current_revision", "The current revision of store.")?,
            compact_revision: gauge(&r, "etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.")?,
            compaction_keys: counter(&r, "etcd_debugging_mvcc_db_compaction_keys_total", "Total number of db keys compacted.")?,
            watch_events: counter(&r, "etcd_debugging_mvcc_events_total", "Total number of events sent by this member.")?,
            lease_granted: counter(&r, "etcd_debugging_lease_granted_total", "The total number of granted leases.")?,
            lease_revoked: counter(&r, "etcd_debugging_lease_revoked_total", "The total number of revoked leases.")?,
            lease_renewed: counter(&r, "etcd_debugging_lease_renewed_total", "The number of renewed leases seen by the leader.")?,
            peer_rtt,
            peer_sent_bytes: counter_vec(&r, "etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.", &["To"])?,
            peer_received_bytes: counter_vec(&r, "etcd_network_peer_received_bytes_total", "The total number of bytes received from peers.", &["From"])?,
            peer_sent_failures: counter_vec(&r, "etcd_network_peer_sent_failures_total", "The total number of send failures from peers.", &["To"])?,
            client_grpc_sent_bytes: counter(&r, "etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients.")?,
            client_grpc_received_bytes: counter(&r, "etcd_network_client_grpc_received_bytes_total", "The total number of bytes received from grpc clients.")?,
            grpc: grpc::GrpcMetrics::register(&r)?,
            registry: r,
        })
    }

    /// Encodes every metric in Prometheus' text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a malformed family, which registration rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Moves a counter up to `value` (counters mirroring a monotonic index).
    pub fn advance(counter: &IntCounter, value: u64) {
        let now = counter.get();
        if value > now {
            counter.inc_by(value - now);
        }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| match Metrics::build() {
        Ok(m) => m,
        // Every name above is a fixed, valid, unique literal: a failure here is a programming
        // error caught by the first test that touches metrics.
        Err(e) => panic!("building the metrics registry: {e}"),
    })
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_builds_and_encodes_etcds_names() {
        let m = get();
        m.has_leader.set(1);
        if let Some(mut call) = grpc::Call::start("/etcdserverpb.KV/Range") {
            call.finish(0);
        }
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        for name in [
            "etcd_server_has_leader 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket",
            "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn advance_never_moves_a_counter_back() {
        let c = IntCounter::new("t_total", "t").unwrap_or_else(|e| panic!("{e}"));
        Metrics::advance(&c, 5);
        Metrics::advance(&c, 3);
        assert_eq!(c.get(), 5);
    }
}
