//! Identifiers and revisions shared by every layer.
//!
//! Invariants: a [`Revision`] orders first by `main` then by `sub`, and its 16-byte big-endian
//! encoding sorts the same way, so RocksDB iterates revisions in order. Member and cluster IDs are
//! etcd's: the first eight bytes of a SHA-1 over the peer URLs and cluster token, so `etcdctl` shows
//! the same IDs an etcd cluster with the same flags would.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// An etcd member ID, printed in hex as etcdctl does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct MemberId(pub u64);

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl MemberId {
    /// Computes a member ID as etcd does for an initial member: SHA-1 over the sorted peer URLs
    /// joined without separator, followed by the cluster token; the first 8 bytes, big-endian.
    pub fn compute(peer_urls: &[String], cluster_token: &str) -> MemberId {
        let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
        urls.sort_unstable();
        let mut hasher = Sha1::new();
        hasher.update(urls.concat().as_bytes());
        hasher.update(cluster_token.as_bytes());
        MemberId(first_u64(&hasher.finalize()))
    }

    /// Computes the ID of a member added at runtime, as etcd does: like [`MemberId::compute`] with
    /// the Unix time of the addition (in seconds, decimal) appended.
    pub fn compute_at(peer_urls: &[String], cluster_token: &str, unix_secs: u64) -> MemberId {
        let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
        urls.sort_unstable();
        let mut hasher = Sha1::new();
        hasher.update(urls.concat().as_bytes());
        hasher.update(cluster_token.as_bytes());
        hasher.update(unix_secs.to_string().as_bytes());
        MemberId(first_u64(&hasher.finalize()))
    }
}

/// An etcd cluster ID, printed in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl ClusterId {
    /// Computes a cluster ID as etcd does: SHA-1 over the sorted member IDs, each as 8 big-endian
    /// bytes; the first 8 bytes of the digest, big-endian.
    pub fn compute(members: &[MemberId]) -> ClusterId {
        let mut ids: Vec<u64> = members.iter().map(|m| m.0).collect();
        ids.sort_unstable();
        let mut hasher = Sha1::new();
        for id in ids {
            hasher.update(id.to_be_bytes());
        }
        ClusterId(first_u64(&hasher.finalize()))
    }
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// A lease ID as carried in requests (0 means no lease).
pub type LeaseId = i64;

/// An MVCC revision: `main` is the cluster-wide revision of a write, `sub` orders the changes made
/// by one write (the ops of a transaction).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Revision {
    /// The cluster-wide revision.
    pub main: i64,
    /// The index of the change within its revision.
    pub sub: i64,
}

impl Revision {
    /// Creates a revision.
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Encodes as 16 big-endian bytes that sort in revision order (revisions are never negative).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.main.to_be_bytes());
        b[8..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    /// Decodes the encoding of [`Revision::to_bytes`]; `None` when the length is wrong.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 16 {
            return None;
        }
        let mut m = [0u8; 8];
        let mut s = [0u8; 8];
        m.copy_from_slice(&b[..8]);
        s.copy_from_slice(&b[8..]);
        Some(Revision {
            main: i64::from_be_bytes(m),
            sub: i64::from_be_bytes(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_etcd_ids() {
        // `etcd` with no flags: peer URL http://localhost:2380, token etcd-cluster.
        let m = MemberId::compute(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(m.to_string(), "8e9e05c52164694d");
        assert_eq!(ClusterId::compute(&[m]).to_string(), "cdf818194e3a8c32");
    }

    #[test]
    fn revision_bytes_sort_in_order() {
        let a = Revision::new(5, 1).to_bytes();
        let b = Revision::new(5, 2).to_bytes();
        let c = Revision::new(6, 0).to_bytes();
        assert!(a < b && b < c);
        assert_eq!(Revision::from_bytes(&b), Some(Revision::new(5, 2)));
    }
}

/// What the cluster knows of a member: etcd's `Member` without the ID (the raft node ID is the ID).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    /// The member's name (empty until it has started).
    pub name: String,
    /// URLs other members reach it on.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it on (empty until it has started).
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}
