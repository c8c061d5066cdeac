//! Backups in etcd 3.5's own format: oxcd's replicated state written as the bbolt database etcd's
//! backend keeps (what `Maintenance.Snapshot` streams), and etcd's snapshot files read back into
//! a new member's data directory (`oxcd snapshot restore|status`).
//!
//! etcd's buckets and how oxcd's column families map onto them:
//! - `key`: one row per stored revision. The key is the revision (8-byte big-endian main, `_`,
//!   8-byte big-endian sub) with a `t` appended for a tombstone; the value is `mvccpb.KeyValue`
//!   (a tombstone's holds only the key). oxcd's `kv` rows carry the same `KeyValue` behind a
//!   flag byte; oxcd's tombstones also carry their mod revision, restored from the key.
//! - `meta`: `consistent_index` and `term` (the last applied entry, big-endian u64),
//!   `scheduledCompactRev` and `finishedCompactRev` (a revision key with sub 0).
//! - `lease`: the lease ID (big-endian) to `leasepb.Lease` (ID, TTL, RemainingTTL).
//! - `auth` (`authEnabled` one byte, `authRevision` big-endian u64), `authUsers` and `authRoles`
//!   (the name to `authpb.User` / `authpb.Role`, the encodings oxcd stores).
//! - `alarm`: `etcdserverpb.AlarmMember` as the key, an empty value.
//! - `members` (hex ID to etcd's JSON member), `members_removed` (hex ID to `removed`),
//!   `cluster` (`clusterVersion`, and `downgrade` when a downgrade job was ever set): written for
//!   etcd's tools; a restore drops them, since the restored member starts a new cluster.
//!
//! Invariants: an export reads one RocksDB view (with the compaction queue taken under the same
//! index lock, so rows a compaction has dropped are left out) and streams it into the file; a
//! restore streams the file into batches of bounded size. Neither holds more than a page per tree
//! level, a batch, and the few alarm and member rows in memory. A restore checks etcd's sha256
//! trailer unless told not to, and refuses a non-empty data directory.

use std::io::{Read, Write};
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};

use super::bbolt::{BboltError, Reader, Writer};
use super::snapshot::{SnapshotError, Status};
use crate::mvcc::{Mvcc, META_COMPACT_REV, META_CURRENT_REV};
use crate::proto::authpb::{Role, User};
use crate::proto::etcdserverpb::AlarmMember;
use crate::proto::mvccpb::KeyValue;
use crate::raft::{ClusterFacts, KEY_APPLIED, KEY_MEMBERSHIP, KEY_REMOVED};
use crate::storage::{Batch, Cf, ReadView, Storage};
use crate::types::Revision;

/// The cluster version a backup records (the etcd API oxcd serves).
const CLUSTER_VERSION: &str = "3.5.0";

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's member record in the `members` bucket (Go's JSON of `membership.Member`).
#[derive(serde::Serialize)]
struct MemberJson<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "isLearner", skip_serializing_if = "std::ops::Not::not")]
    is_learner: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

/// etcd's revision key: main, `_`, sub, and `t` for a tombstone.
fn etcd_rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&rev.main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// The revision of an etcd revision key and whether it marks a tombstone.
fn parse_etcd_rev_key(k: &[u8]) -> Option<(Revision, bool)> {
    if (k.len() != 17 && k.len() != 18) || k[8] != b'_' {
        return None;
    }
    let tombstone = match k.get(17) {
        None => false,
        Some(b't') => true,
        Some(_) => return None,
    };
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((Revision { main, sub }, tombstone))
}

fn storage_corrupt(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Corrupt(e.to_string())
}

/// Writes `mvcc`'s store (and the leases, users, roles, alarms and membership beside it) to
/// `path` as an etcd 3.5 backend followed by etcd's sha256 trailer. Returns the file's size.
pub fn export_to(mvcc: &Mvcc, path: &Path) -> Result<u64, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    let out = std::io::BufWriter::with_capacity(1 << 20, file);
    let (view, pending, compacted) = mvcc.backup_view();
    let mut w = Writer::new(out)?;
    write_buckets(&mut w, &view, &pending, compacted)?;
    drop(view);
    let (out, size) = w.finish()?;
    let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    // etcd's trailer: the sha256 of the database, read back in bounded chunks.
    let sum = sha256_of(path, size)?;
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(size)).map_err(io)?;
    file.write_all(&sum).map_err(io)?;
    file.set_len(size + sum.len() as u64).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(size + sum.len() as u64)
}

/// The sha256 of the first `len` bytes of `path`.
fn sha256_of(path: &Path, len: u64) -> Result<[u8; 32], SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?.take(len);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.finalize().into())
}

/// Visits the rows of `cf` under `prefix`, with the prefix stripped.
fn scan_prefix(
    view: &ReadView<'_>,
    cf: Cf,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut failed = None;
    view.scan(cf, prefix, None, |k, v| {
        let Some(rest) = k.strip_prefix(prefix) else {
            return Ok(false);
        };
        match f(rest, v) {
            Ok(()) => Ok(true),
            Err(e) => {
                failed = Some(e);
                Ok(false)
            }
        }
    })?;
    failed.map_or(Ok(()), Err)
}

fn meta_get(view: &ReadView<'_>, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
    Ok(view
        .multi_get(Cf::Meta, &[key.to_vec()])?
        .into_iter()
        .next()
        .flatten())
}

/// Writes etcd's buckets, in bbolt's (byte) order of their names.
fn write_buckets<W: std::io::Write + std::io::Seek>(
    w: &mut Writer<W>,
    view: &ReadView<'_>,
    pending: &crate::mvcc::purge::Pending,
    compacted: i64,
) -> Result<(), SnapshotError> {
    use crate::auth::{KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};
    // alarm: few rows, sorted by their protobuf keys.
    let mut alarms = Vec::new();
    scan_prefix(view, Cf::Alarm, b"", |k, _| {
        let (member_id, alarm) = crate::apply::alarm::parse_row_key(k)
            .ok_or_else(|| storage_corrupt("an alarm row key of the wrong size"))?;
        alarms.push(AlarmMember { member_id, alarm }.encode_to_vec());
        Ok(())
    })?;
    alarms.sort();
    w.bucket(b"alarm")?;
    for a in &alarms {
        w.put(a, &[])?;
    }

    w.bucket(b"auth")?;
    let enabled = view.multi_get(Cf::Auth, &[KEY_ENABLED.to_vec(), KEY_REVISION.to_vec()])?;
    let on = enabled
        .first()
        .cloned()
        .flatten()
        .is_some_and(|v| v.first() == Some(&1));
    w.put(b"authEnabled", &[u8::from(on)])?;
    let revision = enabled
        .get(1)
        .cloned()
        .flatten()
        .unwrap_or_else(|| 1u64.to_be_bytes().to_vec());
    w.put(b"authRevision", &revision)?;
    for (bucket, prefix) in [
        (&b"authRoles"[..], ROLE_PREFIX),
        (b"authUsers", USER_PREFIX),
    ] {
        w.bucket(bucket)?;
        scan_prefix(view, Cf::Auth, prefix, |name, v| Ok(w.put(name, v)?))?;
    }

    w.bucket(b"cluster")?;
    w.put(b"clusterVersion", CLUSTER_VERSION.as_bytes())?;
    if let Some(job) = meta_get(view, crate::apply::downgrade::META_DOWNGRADE)? {
        w.put(b"downgrade", &job)?;
    }

    w.bucket(b"key")?;
    scan_prefix(view, Cf::Kv, b"", |k, v| {
        let rev = Revision::from_bytes(k).ok_or_else(|| storage_corrupt("a bad revision key"))?;
        if pending.contains(&rev) {
            return Ok(());
        }
        let (kv, tombstone) = crate::mvcc::decode_row(v)?;
        if tombstone {
            let tomb = KeyValue {
                key: kv.key,
                ..KeyValue::default()
            };
            w.put(&etcd_rev_key(rev, true), &tomb.encode_to_vec())?;
        } else {
            // The stored row is the flag byte and the KeyValue's encoding: no re-encoding.
            w.put(&etcd_rev_key(rev, false), v.get(1..).unwrap_or_default())?;
        }
        Ok(())
    })?;

    w.bucket(b"lease")?;
    scan_prefix(view, Cf::Lease, b"", |k, v| {
        let (id, ttl, remaining_ttl) = crate::lease::decode_row(v)?;
        let pb = LeasePb {
            id,
            ttl,
            remaining_ttl,
        };
        Ok(w.put(k, &pb.encode_to_vec())?)
    })?;

    let facts = ClusterFacts::decode(
        meta_get(view, KEY_APPLIED)?.as_deref(),
        meta_get(view, KEY_MEMBERSHIP)?.as_deref(),
        meta_get(view, KEY_REMOVED)?.as_deref(),
    )
    .map_err(storage_corrupt)?;
    let mut members: Vec<(String, Vec<u8>)> = facts
        .members
        .iter()
        .map(|(id, m, learner)| {
            let json = MemberJson {
                id: *id,
                peer_urls: &m.peer_urls,
                is_learner: *learner,
                name: &m.name,
                client_urls: &m.client_urls,
            };
            serde_json::to_vec(&json)
                .map(|j| (format!("{id:x}"), j))
                .map_err(storage_corrupt)
        })
        .collect::<Result<_, _>>()?;
    members.sort();
    w.bucket(b"members")?;
    for (id, json) in &members {
        w.put(id.as_bytes(), json)?;
    }
    let mut removed: Vec<String> = facts.removed.iter().map(|id| format!("{id:x}")).collect();
    removed.sort();
    w.bucket(b"members_removed")?;
    for id in &removed {
        w.put(id.as_bytes(), b"removed")?;
    }

    w.bucket(b"meta")?;
    w.put(b"consistent_index", &facts.applied.0.to_be_bytes())?;
    if compacted > 0 {
        let rev = etcd_rev_key(Revision::new(compacted, 0), false);
        w.put(b"finishedCompactRev", &rev)?;
        w.put(b"scheduledCompactRev", &rev)?;
    }
    w.put(b"term", &facts.applied.1.to_be_bytes())?;
    Ok(())
}

/// The byte table of CRC-32C (reflected Castagnoli polynomial).
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Continues a CRC-32 with the Castagnoli polynomial, which `etcdutl snapshot status` reports.
fn crc32c(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = !crc;
    for b in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Checks the sha256 trailer of an etcd snapshot file, as `etcdutl snapshot restore` does: a
/// file whose size is 32 past a multiple of 512 has one. Returns the database's length.
fn check_trailer(file: &Path, skip_hash_check: bool) -> Result<u64, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: file.display().to_string(),
        source,
    };
    let size = std::fs::metadata(file).map_err(io)?.len();
    let has_hash = size % 512 == 32;
    if !has_hash {
        if skip_hash_check {
            return Ok(size);
        }
        return Err(SnapshotError::Corrupt(
            "snapshot missing hash but --skip-hash-check=false".to_string(),
        ));
    }
    let body = size - 32;
    if !skip_hash_check {
        let actual = sha256_of(file, body)?;
        let mut trailer = [0u8; 32];
        let f = std::fs::File::open(file).map_err(io)?;
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut trailer, body).map_err(io)?;
        if actual != trailer {
            return Err(SnapshotError::Checksum {
                expected: hex(&trailer),
                actual: hex(&actual),
            });
        }
    }
    Ok(body)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Visits every bucket's rows of an etcd backend file in order, computing `etcdutl snapshot
/// status`'s summary on the way: (bucket, key, value).
fn scan_file(
    file: &Path,
    mut f: impl FnMut(&[u8], &[u8], &[u8]) -> Result<(), SnapshotError>,
) -> Result<Status, SnapshotError> {
    let r = Reader::open(file)?;
    let mut hash = 0u32;
    let mut revision = 0i64;
    let mut total_key = 0usize;
    for (name, root) in r.buckets()? {
        hash = crc32c(hash, &name);
        let is_key = name == b"key";
        let mut failed = None;
        let res = r.visit(&root, |k, v| {
            hash = crc32c(crc32c(hash, k), v);
            if is_key {
                if let Some((rev, _)) = parse_etcd_rev_key(k) {
                    revision = rev.main;
                }
            }
            total_key += 1;
            f(&name, k, v).map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                BboltError::Misuse(msg)
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        res?;
    }
    Ok(Status {
        hash,
        revision,
        total_key,
        total_size: r.size(),
    })
}

/// Whether `file` is a bbolt database (an etcd backup, or one oxcd wrote).
pub fn is_etcd_file(file: &Path) -> bool {
    Reader::is_bbolt(file)
}

/// `etcdutl snapshot status` of an etcd backup: etcd's hash (CRC-32C over every bucket name,
/// key and value), the revision of the last stored revision, the number of keys in all buckets
/// and the database's size.
pub fn status(file: &Path) -> Result<Status, SnapshotError> {
    scan_file(file, |_, _, _| Ok(()))
}

/// Rows are written in batches of about this many bytes.
const RESTORE_BATCH: usize = 8 << 20;

/// Builds a new member's data directory from an etcd backup: every stored revision, the compact
/// revision, leases, users, roles, the auth flag and revision, and alarms; not the membership
/// or raft history (the member starts a new cluster).
pub fn restore(
    file: &Path,
    data_dir: &Path,
    skip_hash_check: bool,
) -> Result<Status, SnapshotError> {
    use crate::auth::{KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};
    check_trailer(file, skip_hash_check)?;
    super::snapshot::ensure_empty(data_dir)?;
    let storage = Storage::open(&super::db_path(data_dir))?;
    let mut batch = Batch::new();
    let mut size = 0usize;
    let mut compacted = 0i64;
    let mut last = 0i64;
    let st = scan_file(file, |bucket, k, v| {
        let corrupt = |what: &str| {
            SnapshotError::Corrupt(format!(
                "bucket {}: {what}",
                String::from_utf8_lossy(bucket)
            ))
        };
        match bucket {
            b"key" => {
                let (rev, tombstone) =
                    parse_etcd_rev_key(k).ok_or_else(|| corrupt("a bad revision key"))?;
                let mut kv = KeyValue::decode(v).map_err(|e| corrupt(&e.to_string()))?;
                if tombstone {
                    kv = KeyValue {
                        key: kv.key,
                        mod_revision: rev.main,
                        ..KeyValue::default()
                    };
                }
                last = last.max(rev.main);
                batch.put(
                    Cf::Kv,
                    rev.to_bytes().to_vec(),
                    crate::mvcc::encode_row(&kv, tombstone),
                );
            }
            b"meta" if k == b"scheduledCompactRev" || k == b"finishedCompactRev" => {
                let (rev, _) =
                    parse_etcd_rev_key(v).ok_or_else(|| corrupt("a bad compact revision"))?;
                compacted = compacted.max(rev.main);
            }
            b"lease" => {
                let pb = LeasePb::decode(v).map_err(|e| corrupt(&e.to_string()))?;
                batch.put(
                    Cf::Lease,
                    pb.id.to_be_bytes().to_vec(),
                    crate::lease::encode_row(pb.id, pb.ttl, pb.remaining_ttl),
                );
            }
            b"auth" if k == b"authEnabled" => {
                batch.put(
                    Cf::Auth,
                    KEY_ENABLED.to_vec(),
                    vec![u8::from(v.first() == Some(&1))],
                );
            }
            b"auth" if k == b"authRevision" => {
                if v.len() != 8 {
                    return Err(corrupt("authRevision is not 8 bytes"));
                }
                batch.put(Cf::Auth, KEY_REVISION.to_vec(), v.to_vec());
            }
            b"authUsers" => {
                User::decode(v).map_err(|e| corrupt(&e.to_string()))?;
                batch.put(Cf::Auth, [USER_PREFIX, k].concat(), v.to_vec());
            }
            b"authRoles" => {
                Role::decode(v).map_err(|e| corrupt(&e.to_string()))?;
                batch.put(Cf::Auth, [ROLE_PREFIX, k].concat(), v.to_vec());
            }
            b"alarm" => {
                let a = AlarmMember::decode(k).map_err(|e| corrupt(&e.to_string()))?;
                batch.put(
                    Cf::Alarm,
                    crate::apply::alarm::row_key(a.member_id, a.alarm),
                    Vec::new(),
                );
            }
            // members, members_removed, cluster: the restored member starts a new cluster.
            _ => return Ok(()),
        }
        size += k.len() + v.len();
        if size >= RESTORE_BATCH {
            storage.write(std::mem::take(&mut batch), false)?;
            size = 0;
        }
        Ok(())
    })?;
    batch.put(
        Cf::Meta,
        META_COMPACT_REV.to_vec(),
        compacted.to_be_bytes().to_vec(),
    );
    batch.put(
        Cf::Meta,
        META_CURRENT_REV.to_vec(),
        last.max(compacted).max(1).to_be_bytes().to_vec(),
    );
    storage.write(batch, true)?;
    storage.quiesce()?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_crc32c_matches_its_check_value() {
        let rev = Revision { main: 5, sub: 2 };
        assert_eq!(
            parse_etcd_rev_key(&etcd_rev_key(rev, true)),
            Some((rev, true))
        );
        assert_eq!(
            parse_etcd_rev_key(&etcd_rev_key(rev, false)),
            Some((rev, false))
        );
        assert_eq!(parse_etcd_rev_key(b"short"), None);
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
    }
}
