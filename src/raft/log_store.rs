//! The raft log in RocksDB (`raft_log`, `raft_meta`).
//!
//! Invariants:
//! - An append is written at once (so readers see it) and acknowledged to openraft only after an
//!   fsync of the write-ahead log; one fsync covers every append waiting at that moment (group
//!   commit on a dedicated thread).
//! - While the cluster is this member alone ([`LogStore::set_in_place`]), an append is synced
//!   in place instead, before `append` returns, but only when no append is waiting on the sync
//!   thread: acknowledgements stay in log order. A lone member has nothing else for raft to do
//!   meanwhile, and the two thread hand-offs cost it more than the wait. With other members the
//!   thread syncs: a leader sends the entries to its followers while its own fsync runs, and a
//!   follower keeps answering heartbeats (the leader's read-index rounds) during its fsync.
//! - The vote is written with a sync write before `save_vote` returns.
//! - The committed log id is written along with the next append (it may lag on disk, never lead:
//!   openraft only ever reports a committed id that is already in the log).
//! - All writes go through one RocksDB instance in call order, so vote and log I/O stay serialized.
//! - Every change to the log goes through this store, which keeps its cache of the newest entries
//!   ([`super::log_cache`]) equal to what RocksDB holds; reads the cache covers are served from it.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};

use super::log_cache::LogCache;
use super::TypeConfig;
use crate::storage::{Batch, Cf, Storage};

/// A log without an append for this long drops its cache of entries (see
/// [`LogStore::spawn_cache_release`]).
pub const CACHE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

type SErr = StorageError<u64>;

fn idx_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// The log store; cheap to clone (clones share the same RocksDB and sync thread).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    /// The highest committed index openraft has reported.
    committed: std::sync::atomic::AtomicU64,
    syncer: parking_lot::Mutex<Option<mpsc::Sender<LogFlushed<TypeConfig>>>>,
    /// Appends handed to the sync thread and not yet acknowledged.
    at_syncer: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether appends are synced in place (the cluster is this member alone).
    in_place: std::sync::atomic::AtomicBool,
    /// The committed log id openraft last reported, until an append writes it along.
    unsaved_committed: parking_lot::Mutex<Option<Option<LogId<u64>>>>,
    /// The newest entries as appended (bounded).
    cache: parking_lot::Mutex<LogCache>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    /// Stops the sync thread and waits for it, so no thread still uses RocksDB after the log
    /// store is gone (a RocksDB handle closed during process exit can crash it).
    fn drop(&mut self) {
        self.syncer.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// About the encoded size of `e` (its op's estimate plus room for the log id and framing).
fn entry_size_hint(e: &Entry<TypeConfig>) -> usize {
    64 + match &e.payload {
        openraft::EntryPayload::Normal(op) => op.size_hint(),
        _ => 0,
    }
}

/// Deletes the log entries up to and including `log_id` and records it as the last purged one.
pub(crate) fn purge_through(
    storage: &Storage,
    log_id: LogId<u64>,
    durable: bool,
) -> Result<(), SErr> {
    let mut b = Batch::new();
    b.put(
        Cf::RaftMeta,
        KEY_PURGED.to_vec(),
        bincode::serialize(&Some(log_id)).map_err(write_err)?,
    );
    b.delete_range(
        Cf::RaftLog,
        idx_key(0).to_vec(),
        idx_key(log_id.index.saturating_add(1)).to_vec(),
    );
    storage.write(b, durable).map_err(write_err)
}

/// The last purged log id, as recorded.
pub(crate) fn last_purged(storage: &Storage) -> Result<Option<LogId<u64>>, SErr> {
    match storage.get(Cf::RaftMeta, KEY_PURGED).map_err(read_err)? {
        Some(b) => Ok(bincode::deserialize::<Option<LogId<u64>>>(&b).map_err(read_err)?),
        None => Ok(None),
    }
}

/// Syncs the log's writes and records how long it took, for either way an append is synced.
fn sync_and_observe(storage: &Storage) -> Result<(), crate::storage::StorageError> {
    let started = std::time::Instant::now();
    crate::crash_point!("raft-log-before-sync");
    let res = sync_wal(storage);
    crate::crash_point!("raft-log-after-sync");
    crate::metrics::get()
        .wal_fsync
        .observe(started.elapsed().as_secs_f64());
    res
}

/// Syncs the log's writes; the `raft-log-sync-error` failpoint makes it fail as a dying disk
/// would (openraft then stops, and the member with it: after a failed fsync nothing written
/// since the last good one can be trusted).
fn sync_wal(storage: &Storage) -> Result<(), crate::storage::StorageError> {
    crate::error_point!(
        "raft-log-sync-error",
        crate::storage::StorageError::Corrupt {
            cf: "raft log",
            detail: "injected fsync failure".to_string()
        }
    );
    storage.sync_wal()
}

impl LogStore {
    /// Opens the log over `storage` and starts its sync thread.
    pub fn new(storage: Storage) -> io::Result<LogStore> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_storage = storage.clone();
        let at_syncer = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acknowledged = at_syncer.clone();
        let thread = std::thread::Builder::new()
            .name("oxcd-log-sync".to_string())
            .spawn(move || {
                // Ends when every sender is gone.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    let res = sync_and_observe(&sync_storage);
                    let count = waiting.len();
                    for cb in waiting {
                        let r = match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::other(e.to_string())),
                        };
                        cb.log_io_completed(r);
                    }
                    acknowledged.fetch_sub(count, std::sync::atomic::Ordering::SeqCst);
                }
            })?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                committed: std::sync::atomic::AtomicU64::new(0),
                storage,
                syncer: parking_lot::Mutex::new(Some(tx)),
                at_syncer,
                in_place: std::sync::atomic::AtomicBool::new(false),
                unsaved_committed: parking_lot::Mutex::default(),
                cache: parking_lot::Mutex::default(),
                thread: parking_lot::Mutex::new(Some(thread)),
            }),
        })
    }

    /// Starts the task that drops the cache of entries once the log has had no append for
    /// [`CACHE_IDLE`], so an idle member does not keep its last few MiB of writes in memory, and
    /// then hands the C heap's free memory back ([`Storage::release_freed_memory`]). The task
    /// ends once the store is gone.
    pub fn spawn_cache_release(&self) {
        let store = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CACHE_IDLE / 4);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = store.upgrade() else {
                    return;
                };
                let released = inner.cache.lock().clear_if_idle(CACHE_IDLE);
                drop(inner);
                if released {
                    Storage::release_freed_memory();
                    tracing::debug!("log idle: dropped its cache of entries");
                }
            }
        });
    }

    /// Says whether appends are to be synced in place (the cluster is this member alone).
    /// Only how an append is synced depends on it, never whether: a stale answer costs time,
    /// not durability.
    pub fn set_in_place(&self, in_place: bool) {
        self.inner
            .in_place
            .store(in_place, std::sync::atomic::Ordering::SeqCst);
    }

    /// The id of the last entry in the log (or the last purged one), for pre-votes.
    pub fn last_log_id(&self) -> Result<Option<LogId<u64>>, SErr> {
        let last_purged = self.read_meta::<Option<LogId<u64>>>(KEY_PURGED)?.flatten();
        match self.inner.storage.last(Cf::RaftLog).map_err(read_err)? {
            Some((_, v)) => Ok(Some(Self::decode(&v)?.log_id)),
            None => Ok(last_purged),
        }
    }

    /// The highest committed index openraft has reported in this run (0 before the first).
    pub fn committed_index(&self) -> u64 {
        self.inner
            .committed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, SErr> {
        match self
            .inner
            .storage
            .get(Cf::RaftMeta, key)
            .map_err(read_err)?
        {
            None => Ok(None),
            Some(b) => bincode::deserialize(&b).map(Some).map_err(read_err),
        }
    }

    fn decode(raw: &[u8]) -> Result<Entry<TypeConfig>, SErr> {
        bincode::deserialize(raw).map_err(read_err)
    }
}

/// Keeps [`LogStore::set_in_place`] current from raft's server metrics (which change with the
/// membership) until raft stops: in place while the configuration holds member `me` and no
/// other, voter or learner.
pub(super) async fn follow_membership(
    log: LogStore,
    mut server: tokio::sync::watch::Receiver<
        openraft::metrics::RaftServerMetrics<u64, crate::types::Member>,
    >,
    me: u64,
) {
    loop {
        let in_place = {
            let m = server.borrow_and_update();
            let mut nodes = m.membership_config.membership().nodes().map(|(id, _)| *id);
            nodes.next() == Some(me) && nodes.next().is_none()
        };
        log.set_in_place(in_place);
        if server.changed().await.is_err() {
            return;
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e.saturating_add(1)),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        if let Some(end) = end {
            if let Some(hit) = self.inner.cache.lock().get(start, end) {
                return Ok(hit);
            }
        }
        let end_key = end.map(idx_key);
        let mut out = Vec::new();
        self.inner
            .storage
            .scan(
                Cf::RaftLog,
                &idx_key(start),
                end_key.as_ref().map(|k| k.as_slice()),
                |_, v| {
                    out.push(v.to_vec());
                    Ok(true)
                },
            )
            .map_err(read_err)?;
        out.iter().map(|raw| Self::decode(raw)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged = self.read_meta::<Option<LogId<u64>>>(KEY_PURGED)?.flatten();
        let last = match self.inner.storage.last(Cf::RaftLog).map_err(read_err)? {
            Some((_, v)) => Some(Self::decode(&v)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let mut b = Batch::new();
        b.put(
            Cf::RaftMeta,
            KEY_VOTE.to_vec(),
            bincode::serialize(vote).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?,
        );
        self.inner
            .storage
            .write(b, true)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        if let Some(c) = committed {
            crate::metrics::Metrics::advance(&crate::metrics::get().proposals_committed, c.index);
            self.inner
                .committed
                .fetch_max(c.index, std::sync::atomic::Ordering::SeqCst);
        }
        // Written with the next append rather than on its own: a write per commit cost as
        // much as the append itself. What is on disk may lag by an entry or two, which only
        // means a restarted member applies those after its first commit instead of at once.
        *self.inner.unsaved_committed.lock() = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        if let Some(c) = *self.inner.unsaved_committed.lock() {
            return Ok(c);
        }
        Ok(self
            .read_meta::<Option<LogId<u64>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        crate::crash_point!("raft-log-before-append");
        let mut b = Batch::new();
        if let Some(c) = self.inner.unsaved_committed.lock().take() {
            b.put(
                Cf::RaftMeta,
                KEY_COMMITTED.to_vec(),
                bincode::serialize(&c).map_err(write_err)?,
            );
        }
        let mut written = Vec::new();
        for e in entries {
            // Straight into a buffer sized from the op's own estimate: `bincode::serialize`
            // would first run a sizing pass that encodes every protobuf message once more.
            let mut raw = Vec::with_capacity(entry_size_hint(&e));
            bincode::serialize_into(&mut raw, &e).map_err(write_err)?;
            let size = raw.len();
            b.put(Cf::RaftLog, idx_key(e.log_id.index).to_vec(), raw);
            written.push((e, size));
        }
        // The cache follows the write, never runs ahead of it. Should the write fail, what the
        // cache holds at these indexes is gone too (a failed append stops openraft anyway).
        let res = self.inner.storage.write(b, false).map_err(write_err);
        {
            let mut cache = self.inner.cache.lock();
            match res {
                Ok(()) => written
                    .into_iter()
                    .for_each(|(e, size)| cache.push(e, size)),
                Err(_) => cache.clear(),
            }
        }
        res?;
        use std::sync::atomic::Ordering;
        // In place only with nothing at the sync thread: this fsync covers the earlier appends
        // too, but their acknowledgements must not come after this one's.
        if self.inner.in_place.load(Ordering::SeqCst)
            && self.inner.at_syncer.load(Ordering::SeqCst) == 0
        {
            let r = sync_and_observe(&self.inner.storage);
            callback.log_io_completed(r.map_err(|e| io::Error::other(e.to_string())));
            return Ok(());
        }
        let stopped = || write_err(io::Error::other("log sync thread stopped"));
        let syncer = self.inner.syncer.lock();
        let syncer = syncer.as_ref().ok_or_else(stopped)?;
        self.inner.at_syncer.fetch_add(1, Ordering::SeqCst);
        syncer.send(callback).map_err(|_| {
            self.inner.at_syncer.fetch_sub(1, Ordering::SeqCst);
            stopped()
        })
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.inner.cache.lock().remove_from(log_id.index);
        let mut b = Batch::new();
        b.delete_range(Cf::RaftLog, idx_key(log_id.index).to_vec(), vec![0xff; 9]);
        self.inner.storage.write(b, true).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.inner.cache.lock().remove_through(log_id.index);
        purge_through(&self.inner.storage, log_id, false)?;
        tracing::info!(through = log_id.index, "purged the raft log");
        Ok(())
    }
}
