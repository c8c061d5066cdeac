//! Backups: `oxcd snapshot restore` / `oxcd snapshot status` of a backup file, in etcd's format
//! (what `Maintenance.Snapshot` streams and `etcdctl snapshot save` writes, see
//! [`super::etcd_backup`]) or in the format of oxcd's earlier releases.
//!
//! The earlier format: a magic line, the length of what follows, the rows of the replicated
//! state (key-value, lease, auth, alarm and meta column families) taken from one RocksDB
//! snapshot, zero padding to a multiple of 512 bytes (etcd's clients recognise the checksum by
//! `size % 512 == 32`, as bbolt files are made of pages), then the 32-byte sha256 of
//! everything before it. oxcd no longer writes it (its writer is kept for the tests) but still
//! restores it.
//!
//! Invariants: checking and restoring a file stream it in bounded chunks and batches, never the
//! whole file in memory; a restore refuses a file whose checksum does not match (unless told to
//! skip the check) and never writes into a non-empty data directory; a restored member keeps
//! every key, revision, lease and user but none of the old cluster's raft history or
//! membership, so it starts as a member of a new cluster.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::storage::{Batch, Cf, Storage, StorageError};

/// The first bytes of every oxcd snapshot file.
pub const MAGIC: &[u8] = b"oxcd-snapshot-v1\n";

/// The size of the trailing checksum.
const SHA_LEN: usize = 32;

/// The content is padded to a multiple of this (bbolt's page size, which etcd's clients expect).
#[cfg(test)]
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
    #[error("{0}: neither an etcd snapshot (a bbolt database) nor an oxcd snapshot")]
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
    /// An etcd (bbolt) file could not be read or written.
    #[error(transparent)]
    Bbolt(#[from] super::bbolt::BboltError),
}

/// Rows per restore batch are cut at this many bytes.
const RESTORE_BATCH: usize = 8 << 20;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a file in the earlier format from `storage`'s replicated state to `path`, checksum included, streaming
/// rows from one RocksDB snapshot (bincode's layout of a row list, written row by row, with the
/// count and length filled in afterwards). Returns the file's size.
#[cfg(test)]
pub fn export_to(storage: &Storage, path: &Path) -> Result<u64, SnapshotError> {
    use std::io::{Seek, SeekFrom, Write};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let werr = |e: std::io::Error| SnapshotError::Io {
        path: path.display().to_string(),
        source: e,
    };
    w.write_all(MAGIC).map_err(werr)?;
    w.write_all(&[0u8; 16]).map_err(werr)?;
    let view = storage.read_view();
    let mut count = 0u64;
    let mut encoded = 8u64;
    let mut failed = None;
    for cf in Cf::STATE_MACHINE {
        view.scan(cf, b"", None, |k, v| {
            let row = [cf.tag()];
            let r = w
                .write_all(&row)
                .and_then(|()| w.write_all(&(k.len() as u64).to_le_bytes()))
                .and_then(|()| w.write_all(k))
                .and_then(|()| w.write_all(&(v.len() as u64).to_le_bytes()))
                .and_then(|()| w.write_all(v));
            if let Err(e) = r {
                failed = Some(e);
                return Ok(false);
            }
            count += 1;
            encoded += 17 + (k.len() + v.len()) as u64;
            Ok(true)
        })?;
        if let Some(e) = failed.take() {
            return Err(werr(e));
        }
    }
    drop(view);
    let content = MAGIC.len() as u64 + 8 + encoded;
    let padded = content.div_ceil(PAGE as u64) * PAGE as u64;
    let pad = vec![0u8; (padded - content) as usize];
    w.write_all(&pad).map_err(werr)?;
    let mut file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.seek(SeekFrom::Start(MAGIC.len() as u64))
        .map_err(werr)?;
    file.write_all(&encoded.to_be_bytes()).map_err(werr)?;
    file.write_all(&count.to_le_bytes()).map_err(werr)?;
    // The trailer: the sha256 of everything before it, read back in bounded chunks.
    let (sum, _) = digest(&mut file, padded, path)?;
    file.seek(SeekFrom::End(0)).map_err(werr)?;
    file.write_all(&sum).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    Ok(padded + SHA_LEN as u64)
}

/// The sha256 and CRC-32 of the first `len` bytes of `file`, read in bounded chunks.
fn digest(
    file: &mut std::fs::File,
    len: u64,
    path: &Path,
) -> Result<([u8; SHA_LEN], u32), SnapshotError> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut sha = Sha256::new();
    let mut crc = crc32fast::Hasher::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..want]).map_err(io_err(path))?;
        sha.update(&buf[..want]);
        crc.update(&buf[..want]);
        left -= want as u64;
    }
    let mut out = [0u8; SHA_LEN];
    out.copy_from_slice(&sha.finalize());
    Ok((out, crc.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a snapshot file (magic, checksum unless skipped) without reading it into memory;
/// returns the CRC-32 of its content and its size.
fn check(file: &Path, skip_hash_check: bool) -> Result<(u32, u64), SnapshotError> {
    use std::io::{Read, Seek, SeekFrom};
    let name = file.display().to_string();
    let mut f = std::fs::File::open(file).map_err(io_err(file))?;
    let size = f.metadata().map_err(io_err(file))?.len();
    let mut magic = vec![0u8; MAGIC.len()];
    if size < (MAGIC.len() + SHA_LEN) as u64 || f.read_exact(&mut magic).is_err() || magic != MAGIC
    {
        return Err(SnapshotError::NotASnapshot(name));
    }
    let body = size - SHA_LEN as u64;
    let (actual, crc) = digest(&mut f, body, file)?;
    let mut trailer = [0u8; SHA_LEN];
    f.seek(SeekFrom::Start(body)).map_err(io_err(file))?;
    f.read_exact(&mut trailer).map_err(io_err(file))?;
    if !skip_hash_check && actual != trailer {
        return Err(SnapshotError::Checksum {
            expected: hex(&trailer),
            actual: hex(&actual),
        });
    }
    Ok((crc, size))
}

/// Visits the rows of a checked snapshot file one at a time: (column family tag, key, value).
fn visit_rows(
    file: &Path,
    mut visit: impl FnMut(u8, Vec<u8>, Vec<u8>) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(io_err(file))?;
    let size = f.metadata().map_err(io_err(file))?.len();
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let corrupt = |what: &str| SnapshotError::Corrupt(what.to_string());
    let u64_at = |r: &mut std::io::BufReader<std::fs::File>, what: &str| {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).map_err(|_| corrupt(what)).map(|()| b)
    };
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .map_err(|_| corrupt("truncated magic"))?;
    let len = u64::from_be_bytes(u64_at(&mut r, "truncated length")?);
    if len < 8 || MAGIC.len() as u64 + 8 + len > size {
        return Err(corrupt(&format!("rows of {len} bytes do not fit")));
    }
    let count = u64::from_le_bytes(u64_at(&mut r, "truncated row count")?);
    let mut left = len - 8;
    let mut take = |r: &mut std::io::BufReader<std::fs::File>, n: u64| {
        if n > left {
            return Err(corrupt("a row runs past the end of the rows"));
        }
        left -= n;
        let mut v = vec![0u8; usize::try_from(n).map_err(|_| corrupt("row too large"))?];
        r.read_exact(&mut v).map_err(|_| corrupt("truncated row"))?;
        Ok(v)
    };
    for _ in 0..count {
        let tag = take(&mut r, 1)?[0];
        let klen = take(&mut r, 8)?;
        let k = take(
            &mut r,
            u64::from_le_bytes(klen.try_into().unwrap_or_default()),
        )?;
        let vlen = take(&mut r, 8)?;
        let v = take(
            &mut r,
            u64::from_le_bytes(vlen.try_into().unwrap_or_default()),
        )?;
        visit(tag, k, v)?;
    }
    if left != 0 {
        return Err(corrupt("bytes left after the last row"));
    }
    Ok(())
}

fn current_rev(tag: u8, k: &[u8], v: &[u8]) -> Option<i64> {
    (tag == Cf::Meta.tag() && k == crate::mvcc::META_CURRENT_REV)
        .then(|| v.try_into().ok().map(i64::from_be_bytes))
        .flatten()
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

/// etcd's (go-humanize's) rendering of a size: base 1000, one decimal below 10.
fn humanize_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut e = 0;
    let mut scale = 1f64;
    while e + 1 < units.len() && (n as f64) >= scale * 1000.0 {
        scale *= 1000.0;
        e += 1;
    }
    let val = ((n as f64) / scale * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", units[e])
    } else {
        format!("{val:.0} {}", units[e])
    }
}

impl Status {
    /// The summary as `etcdutl snapshot status -w <format>` prints it (simple, table, json or
    /// fields), ending in a newline.
    pub fn render(&self, format: &str) -> Result<String, String> {
        let hash = format!("{:x}", self.hash);
        let size = humanize_bytes(self.total_size);
        Ok(match format {
            "simple" => format!("{hash}, {}, {}, {size}\n", self.revision, self.total_key),
            "json" => format!(
                "{}\n",
                serde_json::to_string(self).map_err(|e| e.to_string())?
            ),
            "fields" => format!(
                "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
                self.hash, self.revision, self.total_key, self.total_size
            ),
            "table" => {
                // tablewriter's layout: headers centred, cells right-aligned, one space of
                // padding on each side.
                let row = [
                    hash,
                    self.revision.to_string(),
                    self.total_key.to_string(),
                    size,
                ];
                let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
                let widths: Vec<usize> = heads
                    .iter()
                    .zip(&row)
                    .map(|(h, r)| h.len().max(r.len()))
                    .collect();
                let line: String = widths
                    .iter()
                    .map(|w| format!("+{}", "-".repeat(w + 2)))
                    .collect::<String>()
                    + "+\n";
                let head: String = heads
                    .iter()
                    .zip(&widths)
                    .map(|(h, w)| format!("| {h:^w$} "))
                    .collect::<String>()
                    + "|\n";
                let cells: String = row
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("| {v:>w$} "))
                    .collect::<String>()
                    + "|\n";
                format!("{line}{head}{line}{cells}{line}")
            }
            other => {
                return Err(format!(
                    "unsupported output format {other:?}: use simple, table, json or fields"
                ))
            }
        })
    }
}

/// Checks `file` and summarises it (for an etcd file, as `etcdutl snapshot status` does).
pub fn status(file: &Path) -> Result<Status, SnapshotError> {
    if super::etcd_backup::is_etcd_file(file) {
        return super::etcd_backup::status(file);
    }
    let (hash, total_size) = check(file, false)?;
    let mut revision = 1;
    let mut total_key = 0;
    visit_rows(file, |tag, k, v| {
        if let Some(r) = current_rev(tag, &k, &v) {
            revision = r;
        }
        total_key += 1;
        Ok(())
    })?;
    Ok(Status {
        hash,
        revision,
        total_key,
        total_size,
    })
}

/// Refuses a data directory that exists and is not empty.
pub(super) fn ensure_empty(data_dir: &Path) -> Result<(), SnapshotError> {
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(SnapshotError::DataDirExists(data_dir.display().to_string()));
        }
    }
    Ok(())
}

/// Builds a new member's data directory `data_dir` from `file`: every key, revision, lease, user
/// and alarm, without the old cluster's raft history and membership. The member then starts
/// with `--initial-cluster-state new` and the cluster given on its command line. Reads and writes
/// in bounded batches.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    skip_hash_check: bool,
) -> Result<Status, SnapshotError> {
    if super::etcd_backup::is_etcd_file(file) {
        return super::etcd_backup::restore(file, data_dir, skip_hash_check);
    }
    let (hash, total_size) = check(file, skip_hash_check)?;
    ensure_empty(data_dir)?;
    let storage = Storage::open(&super::db_path(data_dir))?;
    let mut batch = Batch::new();
    let mut size = 0usize;
    let mut revision = 1;
    let mut total_key = 0;
    visit_rows(file, |tag, k, v| {
        total_key += 1;
        let cf = Cf::from_tag(tag)
            .ok_or_else(|| SnapshotError::Corrupt(format!("unknown column family tag {tag}")))?;
        if cf == Cf::Members
            || (cf == Cf::Meta && crate::raft::CLUSTER_META_KEYS.contains(&k.as_slice()))
            || (cf == Cf::Meta && k.as_slice() == crate::raft::snapshot_store::KEY_INSTALLING)
        {
            return Ok(());
        }
        if let Some(r) = current_rev(tag, &k, &v) {
            revision = r;
        }
        size += k.len() + v.len();
        batch.put(cf, k, v);
        if size >= RESTORE_BATCH {
            storage.write(std::mem::take(&mut batch), false)?;
            size = 0;
        }
        Ok(())
    })?;
    storage.write(batch, true)?;
    storage.quiesce()?;
    Ok(Status {
        hash,
        revision,
        total_key,
        total_size,
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
        let file = dir.path().join("snap.db");
        export_to(&storage, &file)?;
        let bytes = std::fs::read(&file).map_err(|source| SnapshotError::Io {
            path: String::new(),
            source,
        })?;
        assert_eq!(status(&file)?.revision, 7);
        // The streamed rows have bincode's layout of a row list (the format of earlier files).
        let len = u64::from_be_bytes(bytes[MAGIC.len()..MAGIC.len() + 8].try_into().unwrap());
        let body = &bytes[MAGIC.len() + 8..MAGIC.len() + 8 + len as usize];
        let rows: Vec<(u8, Vec<u8>, Vec<u8>)> = bincode::deserialize(body).unwrap();
        let want: Vec<(u8, Vec<u8>, Vec<u8>)> = storage
            .export(&Cf::STATE_MACHINE)?
            .into_iter()
            .map(|(cf, k, v)| (cf.tag(), k, v))
            .collect();
        assert_eq!(rows, want);

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

        assert_eq!(humanize_bytes(4096), "4.1 kB");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(57344), "57 kB");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(2_101_248), "2.1 MB");
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
