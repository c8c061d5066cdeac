//! Backups: the file `etcdctl snapshot save` writes from Maintenance.Snapshot, and
//! `oxcd snapshot restore` / `oxcd snapshot status` that read it.
//!
//! The file is oxcd's own: a magic line, the length of what follows, the rows of the replicated
//! state (key-value, lease, auth, alarm and meta column families) taken from one RocksDB
//! snapshot, zero padding to a multiple of 512 bytes (etcd's clients recognise the checksum by
//! `size % 512 == 32`, as bbolt files are made of pages), then, as etcd appends to its stream,
//! the 32-byte sha256 of everything before it.
//!
//! Invariants: a snapshot is one consistent point in time; a restore refuses a file whose
//! checksum does not match (unless told to skip the check) and never writes into an existing data
//! directory; a restored member keeps every key, revision, lease and user but none of the old
//! cluster's raft history or membership, so it starts as a member of a new cluster.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::storage::{Batch, Cf, Storage, StorageError};

/// The first bytes of every oxcd snapshot file.
pub const MAGIC: &[u8] = b"oxcd-snapshot-v1\n";

/// The size of the trailing checksum.
const SHA_LEN: usize = 32;

/// The content is padded to a multiple of this (bbolt's page size, which etcd's clients expect).
const PAGE: usize = 512;

/// Failures reading or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or the directory written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not an oxcd snapshot.
    #[error("{0}: not an oxcd snapshot (etcd's bbolt snapshots cannot be restored by oxcd)")]
    NotASnapshot(String),
    /// The checksum does not match.
    #[error("snapshot file integrity check failed: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// The trailer.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// The rows could not be decoded.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// The data directory already exists.
    #[error("data-dir {0:?} exists")]
    DataDirExists(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

type Rows = Vec<(u8, Vec<u8>, Vec<u8>)>;

/// The snapshot of `storage`'s replicated state as file bytes, checksum included.
pub fn export(storage: &Storage) -> Result<Vec<u8>, SnapshotError> {
    let rows: Rows = storage
        .export(&Cf::STATE_MACHINE)?
        .into_iter()
        .map(|(cf, k, v)| (cf.tag(), k, v))
        .collect();
    let encoded = bincode::serialize(&rows).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(encoded.len() as u64).to_be_bytes());
    out.extend_from_slice(&encoded);
    out.resize(out.len().div_ceil(PAGE) * PAGE, 0);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads and checks a snapshot file; returns its rows.
fn read(file: &Path, skip_hash_check: bool) -> Result<(Rows, Vec<u8>), SnapshotError> {
    let name = file.display().to_string();
    let data = std::fs::read(file).map_err(|source| SnapshotError::Io {
        path: name.clone(),
        source,
    })?;
    if !data.starts_with(MAGIC) || data.len() < MAGIC.len() + SHA_LEN {
        return Err(SnapshotError::NotASnapshot(name));
    }
    let (body, trailer) = data.split_at(data.len() - SHA_LEN);
    let actual = Sha256::digest(body);
    if !skip_hash_check && actual.as_slice() != trailer {
        return Err(SnapshotError::Checksum {
            expected: hex(trailer),
            actual: hex(&actual),
        });
    }
    let rest = &body[MAGIC.len()..];
    let len = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| SnapshotError::Corrupt("truncated length".to_string()))?;
    let encoded = usize::try_from(len)
        .ok()
        .and_then(|len| rest.get(8..8 + len))
        .ok_or_else(|| SnapshotError::Corrupt(format!("rows of {len} bytes do not fit")))?;
    let rows: Rows =
        bincode::deserialize(encoded).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    Ok((rows, body.to_vec()))
}

/// What `oxcd snapshot status` reports, under etcd's JSON names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// CRC-32 of the snapshot's content.
    pub hash: u32,
    /// The store's revision.
    pub revision: i64,
    /// How many rows (key-value revisions, leases, users, ...) it holds.
    #[serde(rename = "totalKey")]
    pub total_key: usize,
    /// Its size in bytes, checksum included.
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Checks `file` and summarises it.
pub fn status(file: &Path) -> Result<Status, SnapshotError> {
    let (rows, body) = read(file, false)?;
    let revision = rows
        .iter()
        .find(|(tag, k, _)| *tag == Cf::Meta.tag() && k.as_slice() == crate::mvcc::META_CURRENT_REV)
        .and_then(|(_, _, v)| v.as_slice().try_into().ok().map(i64::from_be_bytes))
        .unwrap_or(1);
    Ok(Status {
        hash: crc32fast::hash(&body),
        revision,
        total_key: rows.len(),
        total_size: (body.len() + SHA_LEN) as u64,
    })
}

/// Builds a new member's data directory `data_dir` from `file`: every key, revision, lease, user
/// and alarm, without the old cluster's raft history and membership. The member then starts
/// with `--initial-cluster-state new` and the cluster given on its command line.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    skip_hash_check: bool,
) -> Result<Status, SnapshotError> {
    let (rows, body) = read(file, skip_hash_check)?;
    let dir = data_dir.display().to_string();
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(SnapshotError::DataDirExists(dir));
        }
    }
    let storage = Storage::open(&super::db_path(data_dir))?;
    let mut batch = Batch::new();
    let mut revision = 1;
    let total_key = rows.len();
    for (tag, k, v) in rows {
        let cf = Cf::from_tag(tag)
            .ok_or_else(|| SnapshotError::Corrupt(format!("unknown column family tag {tag}")))?;
        if cf == Cf::Members
            || (cf == Cf::Meta && crate::raft::CLUSTER_META_KEYS.contains(&k.as_slice()))
        {
            continue;
        }
        if cf == Cf::Meta && k.as_slice() == crate::mvcc::META_CURRENT_REV {
            if let Ok(b) = v.as_slice().try_into() {
                revision = i64::from_be_bytes(b);
            }
        }
        batch.put(cf, k, v);
    }
    storage.write(batch, true)?;
    storage.quiesce()?;
    Ok(Status {
        hash: crc32fast::hash(&body),
        revision,
        total_key,
        total_size: (body.len() + SHA_LEN) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_restore_round_trip_and_checks() -> Result<(), SnapshotError> {
        let dir = tempfile::tempdir().map_err(|source| SnapshotError::Io {
            path: String::new(),
            source,
        })?;
        let storage = Storage::open(&dir.path().join("src"))?;
        let mut b = Batch::new();
        b.put(Cf::Kv, b"k".to_vec(), b"v".to_vec());
        b.put(Cf::Meta, b"applied".to_vec(), b"x".to_vec());
        b.put(
            Cf::Meta,
            crate::mvcc::META_CURRENT_REV.to_vec(),
            7i64.to_be_bytes().to_vec(),
        );
        b.put(Cf::RaftLog, b"1".to_vec(), b"entry".to_vec());
        storage.write(b, true)?;
        let bytes = export(&storage)?;
        let file = dir.path().join("snap.db");
        std::fs::write(&file, &bytes).map_err(|source| SnapshotError::Io {
            path: String::new(),
            source,
        })?;
        assert_eq!(status(&file)?.revision, 7);

        let restored = restore(&file, &dir.path().join("dst"), false)?;
        assert_eq!(restored.revision, 7);
        let s = Storage::open(&super::super::db_path(&dir.path().join("dst")))?;
        assert_eq!(s.get(Cf::Kv, b"k")?, Some(b"v".to_vec()));
        assert_eq!(s.get(Cf::Meta, b"applied")?, None);
        assert_eq!(s.get(Cf::RaftLog, b"1")?, None);
        assert!(matches!(
            restore(&file, &dir.path().join("dst"), false),
            Err(SnapshotError::DataDirExists(_))
        ));

        assert_eq!(
            bytes.len() % 512,
            32,
            "etcd's clients find the checksum by the size"
        );
        let mut bad = bytes.clone();
        bad[MAGIC.len() + 9] ^= 1;
        std::fs::write(&file, &bad).map_err(|source| SnapshotError::Io {
            path: String::new(),
            source,
        })?;
        assert!(matches!(
            restore(&file, &dir.path().join("other"), false),
            Err(SnapshotError::Checksum { .. })
        ));
        Ok(())
    }
}
