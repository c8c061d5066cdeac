//! Fuzz targets: every parser of input from outside the member, as a function of arbitrary bytes.
//!
//! `fuzz/` runs them under libFuzzer (`cargo fuzz run <target>`, nightly); the suite runs each
//! for a few thousand inputs (random bytes and mutations of valid ones) on stable, in the tests
//! below. The surfaces: gRPC requests (protobuf decoding and etcd's checks before the log), the
//! JSON gateway's bodies, peer messages, the configuration file, both backup formats (etcd's
//! bbolt file and oxcd's earlier format) and the storage codecs of keys and rows.
//!
//! Invariants: a target never panics, whatever its input, and never touches anything but a
//! temporary directory of its own; an error is an answer like any other.

use std::io::Write;

use prost::Message;

use crate::proto::etcdserverpb::{
    AuthenticateRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, PutRequest, RangeRequest, TxnRequest, WatchRequest,
};

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: u64 = 128;
/// etcd's default `--max-request-bytes`.
const MAX_REQUEST_BYTES: u64 = 1536 * 1024;

/// gRPC requests: protobuf decoding of each KV request, then etcd's checks.
pub fn grpc_requests(data: &[u8]) {
    if let Ok(r) = RangeRequest::decode(data) {
        let _ = crate::server::validate::range(&r);
    }
    if let Ok(r) = PutRequest::decode(data) {
        let _ = crate::server::validate::put(&r);
        let _ = crate::server::validate::size(&r, MAX_REQUEST_BYTES);
    }
    if let Ok(r) = DeleteRangeRequest::decode(data) {
        let _ = crate::server::validate::delete(&r);
    }
    if let Ok(r) = TxnRequest::decode(data) {
        let _ = crate::server::validate::txn(&r, MAX_TXN_OPS);
    }
    let _ = WatchRequest::decode(data);
    let _ = LeaseGrantRequest::decode(data);
    let _ = LeaseKeepAliveRequest::decode(data);
    let _ = CompactionRequest::decode(data);
    let _ = AuthenticateRequest::decode(data);
}

/// The JSON gateway's bodies: each request type as the gateway parses it, then etcd's checks.
pub fn gateway_json(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<RangeRequest>(data) {
        let _ = crate::server::validate::range(&r);
    }
    if let Ok(r) = serde_json::from_slice::<PutRequest>(data) {
        let _ = crate::server::validate::put(&r);
    }
    if let Ok(r) = serde_json::from_slice::<DeleteRangeRequest>(data) {
        let _ = crate::server::validate::delete(&r);
    }
    if let Ok(r) = serde_json::from_slice::<TxnRequest>(data) {
        let _ = crate::server::validate::txn(&r, MAX_TXN_OPS);
    }
    let _ = serde_json::from_slice::<WatchRequest>(data);
    let _ = serde_json::from_slice::<LeaseGrantRequest>(data);
    let _ = serde_json::from_slice::<AuthenticateRequest>(data);
}

/// Peer messages (bincode payloads).
pub fn peer_messages(data: &[u8]) {
    crate::raft::decode_peer_messages(data);
}

/// A temporary directory of this process, removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `data` to a file in a new temporary directory.
fn as_file(data: &[u8], name: &str) -> Option<(TempDir, std::path::PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "oxcd-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).ok()?;
    let dir = TempDir(dir);
    let path = dir.0.join(name);
    let mut f = std::fs::File::create(&path).ok()?;
    f.write_all(data).ok()?;
    Some((dir, path))
}

/// The configuration file (etcd's YAML keys), loaded and checked as at start-up.
pub fn config_file(data: &[u8]) {
    let Some((_dir, path)) = as_file(data, "oxcd.conf.yml") else {
        return;
    };
    let flags = crate::config::Flags {
        config_file: Some(path),
        ..Default::default()
    };
    if let Ok(c) = crate::config::Config::load(&flags) {
        let _ = c.validate();
    }
}

/// Backup files in both formats: `snapshot status` reads every page and row.
pub fn snapshot_file(data: &[u8]) {
    let Some((_dir, path)) = as_file(data, "backup.db") else {
        return;
    };
    let _ = crate::node::etcd_backup::status(&path);
    let _ = crate::node::snapshot::status(&path);
}

/// The storage codecs: revisions, key-value and lease rows, alarm keys, cluster versions.
pub fn storage_codecs(data: &[u8]) {
    let _ = crate::types::Revision::from_bytes(data);
    let _ = crate::mvcc::decode_row(data);
    let _ = crate::lease::decode_row(data);
    let _ = crate::apply::alarm::parse_row_key(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::apply::downgrade::parse_cluster_version(s);
    }
}

/// A fuzz target: takes any bytes, never panics.
pub type Target = fn(&[u8]);

/// Every target, by name (as `fuzz/fuzz_targets` names them).
pub const TARGETS: &[(&str, Target)] = &[
    ("grpc_requests", grpc_requests),
    ("gateway_json", gateway_json),
    ("peer_messages", peer_messages),
    ("config_file", config_file),
    ("snapshot_file", snapshot_file),
    ("storage_codecs", storage_codecs),
];

#[cfg(test)]
mod tests;
