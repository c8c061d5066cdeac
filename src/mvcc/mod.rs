//! etcd's multi-version store: revisions, the key index, range/put/delete at a revision, compaction.
//!
//! Invariants:
//! - Values live in the `kv` column family keyed by [`Revision`]; the key index lives in memory and
//!   is rebuilt from `kv` at start-up, as etcd does.
//! - Every write raises the revision by one; the ops of one transaction share it (`sub` orders them);
//!   a write that changes nothing (deleting no key) does not raise it.
//! - A [`Writer`] holds the index's write lock from its first change until its batch is in RocksDB,
//!   so readers never see a change whose value is not yet stored.
//! - Deterministic failures (compacted, future revision, missing key) are [`MvccError`] values.
//! - A compaction drops history from the index at once and queues the stored rows it frees to
//!   [`purge::Purger`], which deletes them in bounded batches in the background.
//! - Each commit's changes are published to the watch [`watch::Hub`] after they are in RocksDB
//!   and before the index lock is released, so watchers see revisions in order.

mod codec;
pub mod index;
pub mod purge;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockWriteGuard};

use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::RangeRequest;
use crate::proto::mvccpb::KeyValue;
use crate::storage::{Batch, Cf, Storage, StorageError};
use crate::types::Revision;
use codec::{decode_head, decode_value, encode_value};
pub use index::{in_range, EventKind, Index, KeyEvent, Visible};

/// Meta key of the compact revision.
pub const META_COMPACT_REV: &[u8] = b"compact_rev";
/// Meta key of the current revision.
pub const META_CURRENT_REV: &[u8] = b"current_rev";

/// A revision's stored row (in the `kv` column family under [`Revision::to_bytes`]) for `kv`,
/// a put or a tombstone.
pub fn encode_row(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    encode_value(kv, tombstone)
}

/// The key-value of a stored row and whether it is a tombstone.
pub fn decode_row(raw: &[u8]) -> Result<(KeyValue, bool), StorageError> {
    decode_value(raw)
}

/// A deterministic outcome of an MVCC operation that is not a success.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum MvccError {
    /// The revision asked for has been compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
}

/// Errors of MVCC reads: a deterministic outcome or a storage failure.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A deterministic outcome.
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The read's thread on the blocking pool failed or was cancelled (shutdown).
    #[error("read interrupted: {0}")]
    Interrupted(String),
}

/// The result of a range, without the response header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    /// The key-values, after filters, sorting and limit.
    pub kvs: Vec<KeyValue>,
    /// Whether the limit cut the result.
    pub more: bool,
    /// The number of keys in the range at the read revision (ignoring limit and filters).
    pub count: i64,
    /// The store revision the read saw (etcd reports it in the header).
    pub header_revision: i64,
}

/// The multi-version store.
#[derive(Debug)]
pub struct Mvcc {
    storage: Storage,
    index: RwLock<Index>,
    hub: watch::Hub,
    purger: purge::Purger,
}

/// A slice of history read from storage for a catching-up watcher.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Whole revisions, ascending.
    pub revisions: Vec<watch::RevEvents>,
    /// The first revision not yet read.
    pub next: i64,
    /// Whether `next` is past the current revision (the watcher is caught up).
    pub done: bool,
}

fn read_i64(storage: &Storage, key: &[u8]) -> Result<Option<i64>, StorageError> {
    match storage.get(Cf::Meta, key)? {
        None => Ok(None),
        Some(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            Ok(Some(i64::from_be_bytes(a)))
        }
        Some(_) => Err(StorageError::Corrupt {
            cf: "meta",
            detail: format!("bad length for {}", String::from_utf8_lossy(key)),
        }),
    }
}

impl Mvcc {
    /// Opens the store over `storage`, rebuilding the key index from the `kv` column family,
    /// with etcd's default compaction batch.
    pub fn open(storage: Storage) -> Result<Arc<Mvcc>, StorageError> {
        Self::open_with(storage, purge::DEFAULT_BATCH_LIMIT)
    }

    /// Opens the store; compactions delete at most `batch_limit` stored revisions per write.
    /// Rows a compaction had not deleted when the process stopped are queued again.
    pub fn open_with(storage: Storage, batch_limit: usize) -> Result<Arc<Mvcc>, StorageError> {
        let (index, leftover) = Self::load_index(&storage)?;
        let hub = watch::Hub::new(index.current);
        let purger = purge::Purger::start(storage.clone(), batch_limit);
        purger.reset(index.compacted, leftover);
        Ok(Arc::new(Mvcc {
            storage,
            index: RwLock::new(index),
            hub,
            purger,
        }))
    }

    /// Rebuilds the index from storage, and the deletions a compaction left unfinished.
    fn load_index(storage: &Storage) -> Result<(Index, Option<purge::Job>), StorageError> {
        let mut index = Self::read_index(storage)?;
        let compacted = index.compacted;
        let leftover = index.compact(compacted);
        let job = (!leftover.is_empty()).then(|| {
            tracing::info!(
                compact_revision = compacted,
                revisions = leftover.len(),
                "resuming a compaction that a restart interrupted"
            );
            purge::Job {
                at: compacted,
                revs: Arc::new(leftover),
            }
        });
        Ok((index, job))
    }

    fn read_index(storage: &Storage) -> Result<Index, StorageError> {
        let mut index = Index::default();
        let compacted = read_i64(storage, META_COMPACT_REV)?.unwrap_or(0);
        let current = read_i64(storage, META_CURRENT_REV)?.unwrap_or(1);
        let mut max_seen = 1;
        storage.scan(Cf::Kv, &[], None, |k, v| {
            let rev = Revision::from_bytes(k).ok_or_else(|| StorageError::Corrupt {
                cf: "kv",
                detail: "bad revision key".to_string(),
            })?;
            // The head only: the value is neither decoded nor copied.
            let head = decode_head(v)?;
            let kind = if head.tombstone {
                EventKind::Tombstone
            } else {
                EventKind::Put {
                    create: head.create,
                    version: head.version,
                    lease: head.lease,
                }
            };
            index.push(head.key, KeyEvent { rev, kind });
            max_seen = max_seen.max(rev.main);
            Ok(true)
        })?;
        index.compacted = compacted;
        index.current = current.max(max_seen).max(compacted);
        Ok(index)
    }

    /// Replaces the whole store (a snapshot install): runs `write` and rebuilds the index while
    /// holding the index lock, so no reader sees the new data through the old index, then tells
    /// watchers to catch up.
    pub fn replace(
        &self,
        write: impl FnOnce() -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut index = self.index.write();
        write()?;
        let (loaded, leftover) = Self::load_index(&self.storage)?;
        *index = loaded;
        self.purger.reset(index.compacted, leftover);
        self.hub.reset(index.current);
        Ok(())
    }

    /// Every live key that carries a lease, with its lease (to rebuild lease attachments).
    pub fn leased_keys(&self) -> Vec<(Vec<u8>, i64)> {
        let index = self.index.read();
        index
            .range(&[0], &[0], index.current)
            .into_iter()
            .filter(|v| v.lease != 0)
            .map(|v| (v.key, v.lease))
            .collect()
    }

    /// The watch hub.
    pub fn hub(&self) -> &watch::Hub {
        &self.hub
    }

    /// Reads history from revision `from` on, for a watcher catching up: whole revisions only,
    /// stopping after about `max_events` events. Fails with [`MvccError::Compacted`] when `from`
    /// is below the compacted revision (also when a compaction overtakes the read).
    pub fn history(&self, from: i64, max_events: usize) -> Result<History, ReadError> {
        let (current, compacted) = {
            let i = self.index.read();
            (i.current, i.compacted)
        };
        if from < compacted {
            return Err(MvccError::Compacted.into());
        }
        let mut changes: Vec<(i64, KeyValue, bool)> = Vec::new();
        let start = Revision::new(from.max(1), 0).to_bytes();
        let end = Revision::new(current.saturating_add(1), 0).to_bytes();
        let mut next = current.saturating_add(1);
        self.storage.scan(Cf::Kv, &start, Some(&end), |k, v| {
            let rev =
                Revision::from_bytes(k)
                    .map(|r| r.main)
                    .ok_or_else(|| StorageError::Corrupt {
                        cf: "kv",
                        detail: format!("bad revision key {k:?}"),
                    })?;
            if changes.len() >= max_events && changes.last().is_some_and(|c| c.0 != rev) {
                next = rev;
                return Ok(false);
            }
            let (kv, tombstone) = decode_value(v)?;
            changes.push((rev, kv, tombstone));
            Ok(true)
        })?;
        if self.index.read().compacted > from {
            return Err(MvccError::Compacted.into());
        }
        Ok(History {
            revisions: watch::group(changes),
            next,
            done: next > current,
        })
    }

    /// The key-value `key` had at revision `rev`, if it existed then and is not compacted away.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StorageError> {
        let index = self.index.read();
        if rev < index.compacted {
            return Ok(None);
        }
        match index.get(key, rev) {
            Some(v) => Ok(fetch_values(|k| self.storage.multi_get(Cf::Kv, k), None, &[v])?.pop()),
            None => Ok(None),
        }
    }

    /// The current revision.
    pub fn current_revision(&self) -> i64 {
        self.index.read().current
    }

    /// The compacted revision (0 when never compacted).
    pub fn compacted_revision(&self) -> i64 {
        self.index.read().compacted
    }

    /// Serves a Range as etcd does: revision checks, count, filters, sorting, limit. The index
    /// is read under its lock, together with a RocksDB snapshot; the values are read from that
    /// snapshot after the lock is released, so a large read does not hold up writes.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResult, ReadError> {
        let (plan, view) = {
            let index = self.index.read();
            let plan = plan_range(&index, index.current, r)?;
            (plan, self.storage.read_view())
        };
        finish_range(plan, r, |vis| {
            fetch_values(|k| view.multi_get(Cf::Kv, k), None, vis)
        })
    }

    /// etcd's HashKV: a CRC-32 over every stored change from the compacted revision up to `rev`
    /// (0 means the current revision), identical on every member at the same revision. Returns
    /// the hash, the compact revision and the revision hashed.
    /// The scan runs on a RocksDB snapshot taken under the index lock, after releasing it, and
    /// skips rows a compaction has queued for deletion but not yet deleted.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), ReadError> {
        let (rev, compacted, view, pending) = {
            let index = self.index.read();
            let rev = if rev <= 0 { index.current } else { rev };
            if rev > index.current {
                return Err(MvccError::FutureRevision.into());
            }
            if rev < index.compacted {
                return Err(MvccError::Compacted.into());
            }
            // The queue before the view: a job leaves the queue only after its rows are
            // deleted, so the view cannot hold rows of a job the queue no longer shows.
            let pending = self.purger.pending();
            (rev, index.compacted, self.storage.read_view(), pending)
        };
        let mut h = crc32fast::Hasher::new();
        let end = Revision::new(rev.saturating_add(1), 0).to_bytes();
        view.scan(Cf::Kv, &[], Some(&end), |k, v| {
            let queued = Revision::from_bytes(k).is_some_and(|r| pending.contains(&r));
            if !queued {
                h.update(k);
                h.update(v);
            }
            Ok(true)
        })?;
        Ok((h.finalize(), compacted, rev))
    }

    /// One consistent view for a backup: the storage view (every column family at one point),
    /// the stored revisions a compaction has queued for deletion but not deleted (a backup
    /// leaves them out, as HashKV does) and the compact revision. Taken under the index lock.
    pub fn backup_view(&self) -> (crate::storage::ReadView<'_>, purge::Pending, i64) {
        let index = self.index.read();
        let pending = self.purger.pending();
        (self.storage.read_view(), pending, index.compacted)
    }

    /// Runs `f` with the store on tokio's blocking pool, so a read that scans much (a range over
    /// many keys, a hash of the whole store) never holds one of the async workers that serve
    /// every other request.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Mvcc) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let m = self.clone();
        tokio::task::spawn_blocking(move || f(&m))
            .await
            .map_err(|e| ReadError::Interrupted(e.to_string()))?
    }

    /// Waits until every stored row a compaction at or below `rev` dropped is deleted (what
    /// etcd's `physical` compaction waits for).
    pub async fn wait_compacted(&self, rev: i64) {
        let mut done = self.purger.done();
        // The sender lives as long as the store; an error means the store is going away.
        let _ = done.wait_for(|d| *d >= rev).await;
    }

    /// Starts a write: takes the index's write lock until [`Writer::commit`].
    pub fn writer(&self) -> Writer<'_> {
        Writer {
            mvcc: self,
            index: self.index.write(),
            pending: HashMap::new(),
            changes: Vec::new(),
            batch: Batch::new(),
            purge: Vec::new(),
        }
    }
}

/// A writer's uncommitted puts, by revision: each names its entry in the writer's changes, so
/// a value is held once however many of the batch's reads and watchers want it.
#[derive(Clone, Copy)]
struct Pending<'a> {
    at: &'a HashMap<Revision, usize>,
    changes: &'a [(i64, KeyValue, bool)],
}

impl<'a> Pending<'a> {
    fn get(&self, rev: &Revision) -> Option<&'a KeyValue> {
        self.at
            .get(rev)
            .and_then(|&i| self.changes.get(i))
            .map(|(_, kv, _)| kv)
    }
}

/// The key-values of `vis`: from `pending` (a writer's uncommitted puts) where there, the rest
/// through `multi_get` (the `kv` column family of the store, or of a consistent view of it).
fn fetch_values(
    multi_get: impl FnOnce(&[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError>,
    pending: Option<Pending<'_>>,
    vis: &[Visible],
) -> Result<Vec<KeyValue>, StorageError> {
    let mut out: Vec<Option<KeyValue>> = vec![None; vis.len()];
    let mut missing_keys = Vec::new();
    let mut missing_pos = Vec::new();
    for (i, v) in vis.iter().enumerate() {
        if let Some(kv) = pending.and_then(|p| p.get(&v.rev)) {
            out[i] = Some(kv.clone());
        } else {
            missing_keys.push(v.rev.to_bytes().to_vec());
            missing_pos.push(i);
        }
    }
    if !missing_keys.is_empty() {
        let got = multi_get(&missing_keys)?;
        for (pos, raw) in missing_pos.into_iter().zip(got) {
            let raw = raw.ok_or_else(|| StorageError::Corrupt {
                cf: "kv",
                detail: format!("indexed revision {:?} has no value", vis[pos].rev),
            })?;
            out[pos] = Some(decode_value(&raw)?.0);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// What the index part of a Range found: the keys to fetch and the count.
struct RangePlan {
    vis: Vec<Visible>,
    count: i64,
    view: i64,
}

fn range_in(
    index: &Index,
    view: i64,
    storage: &Storage,
    pending: Option<Pending<'_>>,
    r: &RangeRequest,
) -> Result<RangeResult, ReadError> {
    let plan = plan_range(index, view, r)?;
    finish_range(plan, r, |vis| {
        fetch_values(|k| storage.multi_get(Cf::Kv, k), pending, vis)
    })
}

/// The index part of a Range: revision checks, the count, and the keys whose values are needed
/// (only the first `limit + 1` when nothing reorders or drops keys afterwards, so a page costs
/// what it returns, not what the range holds).
fn plan_range(index: &Index, view: i64, r: &RangeRequest) -> Result<RangePlan, ReadError> {
    let mut rev = r.revision;
    if rev > view {
        return Err(MvccError::FutureRevision.into());
    }
    if rev <= 0 {
        rev = view;
    }
    if rev < index.compacted {
        return Err(MvccError::Compacted.into());
    }
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    if r.count_only {
        return Ok(RangePlan {
            vis: Vec::new(),
            count: index.count(&r.key, &r.range_end, rev) as i64,
            view,
        });
    }
    // Push the limit down only when nothing reorders or drops keys afterwards.
    // Keys come out of the index in key order: only a key-ascending result (no order, or
    // ascending by key; etcd sorts by the other targets even without an order) can stop early.
    let key_order =
        sort_target == SortTarget::Key && matches!(sort_order, SortOrder::None | SortOrder::Ascend);
    let keep = if r.limit > 0 && key_order && !filtered {
        (r.limit as usize).saturating_add(1)
    } else {
        usize::MAX
    };
    let mut vis = Vec::new();
    index.visit_events(&r.key, &r.range_end, rev, |k, e| {
        if let EventKind::Put {
            create,
            version,
            lease,
        } = e.kind
        {
            vis.push(Visible {
                key: k.to_vec(),
                rev: e.rev,
                create,
                version,
                lease,
            });
        }
        vis.len() < keep
    });
    // The page stopped early: count the rest without decoding or copying them.
    let count = if vis.len() < keep {
        vis.len() as i64
    } else {
        index.count(&r.key, &r.range_end, rev) as i64
    };
    // Filters need only the index, so apply them before fetching values.
    vis.retain(|v| {
        !(r.max_mod_revision != 0 && v.rev.main > r.max_mod_revision
            || r.min_mod_revision != 0 && v.rev.main < r.min_mod_revision
            || r.max_create_revision != 0 && v.create > r.max_create_revision
            || r.min_create_revision != 0 && v.create < r.min_create_revision)
    });
    Ok(RangePlan { vis, count, view })
}

/// The value part of a Range: fetch (with `fetch`), sort, limit.
fn finish_range(
    plan: RangePlan,
    r: &RangeRequest,
    fetch: impl FnOnce(&[Visible]) -> Result<Vec<KeyValue>, StorageError>,
) -> Result<RangeResult, ReadError> {
    let RangePlan { vis, count, view } = plan;
    if r.count_only {
        return Ok(RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
            header_revision: view,
        });
    }
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let mut kvs = if r.keys_only && sort_target != SortTarget::Value {
        vis.iter()
            .map(|v| KeyValue {
                key: v.key.clone(),
                create_revision: v.create,
                mod_revision: v.rev.main,
                version: v.version,
                value: Vec::new(),
                lease: v.lease,
            })
            .collect()
    } else {
        fetch(&vis)?
    };
    let order = match (sort_target, sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, o) => o,
    };
    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| match sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResult {
        kvs,
        more,
        count,
        header_revision: view,
    })
}

/// The bookkeeping of one write transaction inside a [`Writer`].
#[derive(Debug, Clone, Copy)]
pub struct TxnState {
    begin: i64,
    changes: i64,
}

impl TxnState {
    /// The revision reads inside the transaction see.
    pub fn view(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    /// Whether the transaction changed anything.
    pub fn changed(&self) -> bool {
        self.changes > 0
    }
}

/// Exclusive access to the store for applying a batch of writes atomically.
pub struct Writer<'a> {
    mvcc: &'a Mvcc,
    index: RwLockWriteGuard<'a, Index>,
    /// The puts of this writer by revision, as positions in `changes`.
    pending: HashMap<Revision, usize>,
    changes: Vec<(i64, KeyValue, bool)>,
    batch: Batch,
    /// Compactions' stored rows, queued for deletion at commit.
    purge: Vec<purge::Job>,
}

impl Writer<'_> {
    /// Begins a write transaction at the current revision.
    pub fn begin(&self) -> TxnState {
        TxnState {
            begin: self.index.current,
            changes: 0,
        }
    }

    /// Ends a write transaction: the revision rises by one when it changed anything.
    pub fn end(&mut self, t: TxnState) -> i64 {
        if t.changed() {
            self.index.current = t.begin + 1;
        }
        self.index.current
    }

    /// The compacted revision.
    pub fn compacted(&self) -> i64 {
        self.index.compacted
    }

    /// How many key changes the writer holds so far (a mark for [`Writer::changes_since`]).
    pub fn change_count(&self) -> usize {
        self.changes.len()
    }

    /// The keys changed since `mark`, in order: a put with its lease, a delete with `None`.
    pub fn changes_since(&self, mark: usize) -> impl Iterator<Item = (&[u8], Option<i64>)> {
        self.changes
            .get(mark..)
            .unwrap_or_default()
            .iter()
            .map(|(_, kv, tombstone)| (kv.key.as_slice(), (!tombstone).then_some(kv.lease)))
    }

    /// The batch the writes go into; other layers add their own writes to it.
    pub fn batch_mut(&mut self) -> &mut Batch {
        &mut self.batch
    }

    fn pending(&self) -> Pending<'_> {
        Pending {
            at: &self.pending,
            changes: &self.changes,
        }
    }

    /// The key as visible inside the transaction.
    pub fn get(&self, t: &TxnState, key: &[u8]) -> Option<Visible> {
        self.index.get(key, t.view())
    }

    /// The keys in range as visible inside the transaction.
    pub fn visible(&self, t: &TxnState, key: &[u8], range_end: &[u8]) -> Vec<Visible> {
        self.index.range(key, range_end, t.view())
    }

    /// Fetches the full key-values of visible keys.
    pub fn values(&self, vis: &[Visible]) -> Result<Vec<KeyValue>, StorageError> {
        fetch_values(
            |k| self.mvcc.storage.multi_get(Cf::Kv, k),
            Some(self.pending()),
            vis,
        )
    }

    /// A Range inside the transaction.
    pub fn range(&self, t: &TxnState, r: &RangeRequest) -> Result<RangeResult, ReadError> {
        range_in(
            &self.index,
            t.view(),
            &self.mvcc.storage,
            Some(self.pending()),
            r,
        )
    }

    /// Puts `key` inside the transaction and returns the new revision.
    pub fn put(&mut self, t: &mut TxnState, key: &[u8], value: Vec<u8>, lease: i64) -> i64 {
        let main = t.begin + 1;
        let rev = Revision::new(main, t.changes);
        t.changes += 1;
        let (create, version) = self.index.put(key, rev, lease);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: main,
            version,
            value,
            lease,
        };
        self.batch
            .put(Cf::Kv, rev.to_bytes().to_vec(), encode_value(&kv, false));
        self.pending.insert(rev, self.changes.len());
        self.changes.push((main, kv, false));
        main
    }

    /// Deletes the keys in range inside the transaction; returns the deleted keys as they were.
    pub fn delete_range(
        &mut self,
        t: &mut TxnState,
        key: &[u8],
        range_end: &[u8],
        want_prev: bool,
    ) -> Result<(i64, Vec<KeyValue>), StorageError> {
        let vis = self.visible(t, key, range_end);
        let prev = if want_prev {
            self.values(&vis)?
        } else {
            Vec::new()
        };
        let main = t.begin + 1;
        for v in &vis {
            let rev = Revision::new(main, t.changes);
            t.changes += 1;
            let tomb = KeyValue {
                key: v.key.clone(),
                mod_revision: main,
                ..Default::default()
            };
            self.batch
                .put(Cf::Kv, rev.to_bytes().to_vec(), encode_value(&tomb, true));
            self.changes.push((main, tomb, true));
            self.index.push(
                &v.key,
                KeyEvent {
                    rev,
                    kind: EventKind::Tombstone,
                },
            );
        }
        Ok((vis.len() as i64, prev))
    }

    /// Compacts the history below `rev`, deleting the values no read can reach any more.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.index.compacted {
            return Err(MvccError::Compacted);
        }
        if rev > self.index.current {
            return Err(MvccError::FutureRevision);
        }
        let dropped = self.index.compact(rev);
        if !self.pending.is_empty() {
            for r in &dropped {
                self.pending.remove(r);
            }
        }
        self.purge.push(purge::Job {
            at: rev,
            revs: Arc::new(dropped),
        });
        self.batch.put(
            Cf::Meta,
            META_COMPACT_REV.to_vec(),
            rev.to_be_bytes().to_vec(),
        );
        Ok(())
    }

    /// Writes the batch (with the current revision) and releases the index.
    pub fn commit(mut self) -> Result<(), StorageError> {
        let current = self.index.current;
        self.batch.put(
            Cf::Meta,
            META_CURRENT_REV.to_vec(),
            current.to_be_bytes().to_vec(),
        );
        let batch = std::mem::take(&mut self.batch);
        let started = std::time::Instant::now();
        self.mvcc.storage.write(batch, false)?;
        crate::metrics::get()
            .backend_commit
            .observe(started.elapsed().as_secs_f64());
        // Queued while the index lock is still held, so HashKV never sees the new compact
        // revision without the rows it frees.
        for job in std::mem::take(&mut self.purge) {
            self.mvcc.purger.queue(job);
        }
        let changes = std::mem::take(&mut self.changes);
        self.mvcc.hub.publish(watch::group(changes), current);
        Ok(())
    }
}

#[cfg(test)]
mod proptests;
