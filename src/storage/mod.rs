//! The only user of RocksDB: one instance per member, column families mirroring etcd's buckets.
//!
//! Invariants:
//! - A [`Batch`] is applied atomically; callers put the data and the bookkeeping that must agree
//!   with it (applied log id, compact revision, membership) into the same batch.
//! - A write with `durable = true` is fsynced before [`Storage::write`] returns; [`Storage::sync_wal`]
//!   makes every earlier write durable with one fsync, which is how log appends share a sync.
//! - Errors are [`StorageError`]s; callers treat them as fatal for the member.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

/// A column family: one per kind of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Raft log entries by index.
    RaftLog,
    /// Raft vote, committed and purged log ids.
    RaftMeta,
    /// Revision -> key-value (or tombstone).
    Kv,
    /// Applied log id, membership, compact revision, identity.
    Meta,
    /// Leases.
    Lease,
    /// Users and roles.
    Auth,
    /// Cluster members.
    Members,
    /// Active alarms.
    Alarm,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 8] = [
        Cf::RaftLog,
        Cf::RaftMeta,
        Cf::Kv,
        Cf::Meta,
        Cf::Lease,
        Cf::Auth,
        Cf::Members,
        Cf::Alarm,
    ];

    /// The column families that make up the replicated state machine (what a snapshot carries).
    pub const STATE_MACHINE: [Cf; 6] = [
        Cf::Kv,
        Cf::Meta,
        Cf::Lease,
        Cf::Auth,
        Cf::Members,
        Cf::Alarm,
    ];

    /// The RocksDB name of the column family.
    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::Kv => "kv",
            Cf::Meta => "meta",
            Cf::Lease => "lease",
            Cf::Auth => "auth",
            Cf::Members => "members",
            Cf::Alarm => "alarm",
        }
    }

    /// The stable one-byte tag used in snapshots.
    pub fn tag(self) -> u8 {
        match self {
            Cf::RaftLog => 0,
            Cf::RaftMeta => 1,
            Cf::Kv => 2,
            Cf::Meta => 3,
            Cf::Lease => 4,
            Cf::Auth => 5,
            Cf::Members => 6,
            Cf::Alarm => 7,
        }
    }

    /// The column family with the given snapshot tag.
    pub fn from_tag(tag: u8) -> Option<Cf> {
        Cf::ALL.into_iter().find(|c| c.tag() == tag)
    }
}

/// A storage failure. The member stops on one: its state can no longer be trusted.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error.
    #[error("rocksdb error: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A column family that must exist is missing.
    #[error("column family {0} is missing")]
    MissingCf(&'static str),
    /// Stored bytes could not be decoded.
    #[error("corrupt data in {cf}: {detail}")]
    Corrupt {
        /// The column family.
        cf: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A key and value with its column family.
pub type Row = (Cf, Vec<u8>, Vec<u8>);

/// An atomic set of writes across column families.
#[derive(Default, Debug)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

#[derive(Debug)]
enum BatchOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put(cf, key.into(), value.into()));
    }

    /// Deletes `key` from `cf`.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete(cf, key.into()));
    }

    /// Deletes the keys in `[from, to)` from `cf`.
    pub fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops
            .push(BatchOp::DeleteRange(cf, from.into(), to.into()));
    }

    /// Whether the batch has no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of writes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A filesystem's size and free space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// The filesystem's size.
    pub total: u64,
    /// What an unprivileged writer may still use.
    pub available: u64,
}

/// A handle to the member's RocksDB instance; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
    path: PathBuf,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

/// What RocksDB holds in memory, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageMemory {
    /// Each column family's memtables, the active one and those not yet flushed.
    pub memtables: Vec<(Cf, u64)>,
    /// The block cache the column families share (bounded by its capacity).
    pub block_cache: u64,
    /// What the open table files' readers hold outside the block cache (their index and
    /// filter blocks).
    pub table_readers: u64,
}

/// The most bytes all memtables hold together before RocksDB flushes the oldest.
const MEMTABLE_BUDGET_BYTES: usize = 48 << 20;
/// The block cache every column family's table readers share.
const BLOCK_CACHE_BYTES: usize = 32 << 20;

/// A column family's options: its memtable size by what it holds (the key-values and the raft
/// log take nearly every write; the rest are a few small, often rewritten keys, which a small
/// memtable keeps cheap to insert into), and the shared block cache. A memtable is resident
/// memory until it is flushed: with 16 and 8 MiB for the key-values and the log, one member
/// holding 100,000 keys of 256 bytes was 87-89 MiB resident, with 8 and 4 MiB 76-80, with no
/// fewer puts per second (100 clients).
fn cf_options(cf: Cf, cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(match cf {
        Cf::Kv => 8 << 20,
        Cf::RaftLog => 4 << 20,
        _ => 2 << 20,
    });
    match cf {
        // Log entries are read back seldom and deleted once a snapshot covers them: compressing
        // them (RocksDB zero-fills an output buffer, then snappy runs, on every flush and again
        // on every compaction) was about a seventh of a 64 KiB put's instructions.
        Cf::RaftLog => o.set_compression_type(DBCompressionType::None),
        // The key-values are compressed once, when compaction writes the last level that holds
        // them, not on every flush and every compaction on the way there.
        Cf::Kv => {
            o.set_compression_type(DBCompressionType::None);
            o.set_bottommost_compression_type(DBCompressionType::Snappy);
        }
        _ => {}
    }
    o.set_block_based_table_factory(&shared_cache_tables(cache));
    o
}

/// Table options that read through `cache` (instead of a cache per column family).
fn shared_cache_tables(cache: &rocksdb::Cache) -> rocksdb::BlockBasedOptions {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table
}

/// Options every instance is opened with, read-write or read-only: RocksDB's own LOG at info
/// level (Debian's build logs at debug level, a line for every WAL sync: a formatted write on
/// the fsync path and gigabytes a day under load), rotated and bounded.
fn base_options() -> Options {
    let mut opts = Options::default();
    opts.set_log_level(rocksdb::LogLevel::Info);
    opts.set_max_log_file_size(LOG_FILE_MAX_BYTES);
    opts.set_keep_log_file_num(LOG_FILES_KEPT);
    opts
}

/// The most bytes of one RocksDB info log file before it is rotated.
const LOG_FILE_MAX_BYTES: usize = 16 << 20;
/// The RocksDB info log files kept (the current one included).
const LOG_FILES_KEPT: usize = 4;

impl Storage {
    /// Opens (creating if needed) the RocksDB instance at `path` with every column family.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut opts = base_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // A quiet column family (meta, leases) keeps every log file alive until it is flushed:
        // past this size RocksDB flushes it, so a start after a crash replays a bounded log.
        opts.set_max_total_wal_size(128 << 20);
        // Memory does not grow with the data: every column family's memtables share one budget
        // (past it RocksDB flushes), and every table reader one block cache.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES)?;
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Storage {
            db: Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    /// The directory RocksDB lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn handle(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(cf.name())
            .ok_or(StorageError::MissingCf(cf.name()))
    }

    /// Reads one key.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.handle(cf)?, key)?)
    }

    /// Reads many keys of one column family at once, in order.
    pub fn multi_get(
        &self,
        cf: Cf,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.multi_get_opt(cf, keys, &rocksdb::ReadOptions::default())
    }

    fn multi_get_opt(
        &self,
        cf: Cf,
        keys: &[Vec<u8>],
        ro: &rocksdb::ReadOptions,
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let h = self.handle(cf)?;
        self.db
            .batched_multi_get_cf_opt(h, keys.iter(), false, ro)
            .into_iter()
            .map(|r| r.map(|o| o.map(|s| s.to_vec())).map_err(StorageError::from))
            .collect()
    }

    /// Visits the keys of `cf` in `[from, to)` (to the end when `to` is `None`) in ascending order,
    /// until `visit` returns `false`.
    pub fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let it = self.db.iterator_cf(
            self.handle(cf)?,
            IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        visit_until(it, to, visit)
    }

    /// The last key and value of `cf`, if any.
    pub fn last(&self, cf: Cf) -> Result<Option<Pair>, StorageError> {
        let mut it = self.db.iterator_cf(self.handle(cf)?, IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// Applies `batch` atomically; with `durable` the write is fsynced before returning.
    pub fn write(&self, batch: Batch, durable: bool) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        self.write_with(batch, &wo)
    }

    /// Applies `batch` without the write-ahead log: nothing of it survives a crash until
    /// [`Storage::flush`] has written its column families to table files. For bulk loads whose
    /// caller can redo them after a crash (a snapshot install).
    pub fn write_unlogged(&self, batch: Batch) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.write_with(batch, &wo)
    }

    /// Writes the memtables of `cfs` to table files and waits until they are durable.
    pub fn flush(&self, cfs: &[Cf]) -> Result<(), StorageError> {
        for &cf in cfs {
            self.db.flush_cf(self.handle(cf)?)?;
        }
        Ok(())
    }

    fn write_with(&self, batch: Batch, wo: &WriteOptions) -> Result<(), StorageError> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(cf, k, v) => wb.put_cf(self.handle(cf)?, k, v),
                BatchOp::Delete(cf, k) => wb.delete_cf(self.handle(cf)?, k),
                BatchOp::DeleteRange(cf, from, to) => {
                    wb.delete_range_cf(self.handle(cf)?, from, to)
                }
            }
        }
        self.db.write_opt(wb, wo)?;
        Ok(())
    }

    /// Prepares for process exit: makes the write-ahead log durable, writes every memtable to a
    /// table file (so the next start has no log to replay), and stops RocksDB's background
    /// flushes and compactions, waiting for running ones. Reads and writes still work afterwards,
    /// but nothing runs in the background while the process tears down (a background thread
    /// alive at exit aborts the process).
    pub fn quiesce(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        self.flush(&Cf::ALL)?;
        self.db.cancel_all_background_work(true);
        Ok(())
    }

    /// Makes every earlier write durable with one fsync of the write-ahead log.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Writes a RocksDB checkpoint of every column family to `dir` (which must not exist): a
    /// consistent copy made of hard links to this instance's table files after a flush, so it
    /// costs almost no time or space until compaction replaces those files.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }

    /// Opens the instance at `path` (a checkpoint, for example) read-only, with whatever column
    /// families it has. Column families of [`Cf::ALL`] it lacks fail with
    /// [`StorageError::MissingCf`] when used.
    pub fn open_read_only(path: &Path) -> Result<Storage, StorageError> {
        // The same bounds as a read-write instance: one block cache for every column family
        // (these opens scan whole checkpoints), the info log as `base_options` sets it.
        let opts = base_options();
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES)?;
        let cfs = DB::list_cf(&opts, path)?.into_iter().map(|name| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&shared_cache_tables(&cache));
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors_read_only(&opts, path, cfs, false)?;
        Ok(Storage {
            db: Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    /// A consistent read view of the instance as it is now (a RocksDB snapshot): reads through
    /// it see no later write. Cheap to take; hold it only as long as the read.
    pub fn read_view(&self) -> ReadView<'_> {
        ReadView {
            storage: self,
            snap: self.db.snapshot(),
        }
    }

    /// Reads every key and value of the given column families from one consistent point in time,
    /// into memory: for tests only (a member streams through [`Storage::read_view`]).
    #[cfg(test)]
    pub fn export(&self, cfs: &[Cf]) -> Result<Vec<Row>, StorageError> {
        let snap = self.db.snapshot();
        let mut out = Vec::new();
        for &cf in cfs {
            for item in snap.iterator_cf(self.handle(cf)?, IteratorMode::Start) {
                let (k, v) = item?;
                out.push((cf, k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Adds, to `batch`, the deletion of every key in `cf`.
    pub fn clear_into(&self, cf: Cf, batch: &mut Batch) -> Result<(), StorageError> {
        if let Some((last, _)) = self.last(cf)? {
            let mut end = last;
            end.push(0);
            batch.delete_range(cf, Vec::new(), end);
        }
        Ok(())
    }

    /// Compacts every column family fully (etcd's Defragment), reclaiming space from deletions.
    pub fn compact_all(&self) -> Result<(), StorageError> {
        for cf in Cf::ALL {
            self.db
                .compact_range_cf(self.handle(cf)?, None::<&[u8]>, None::<&[u8]>);
            crate::crash_point!("defrag");
        }
        Ok(())
    }

    /// The size of the filesystem holding the database and the space left on it for this
    /// process, in bytes.
    pub fn disk_space(&self) -> Result<DiskSpace, StorageError> {
        let st = rustix::fs::statvfs(&self.path).map_err(|e| StorageError::Io {
            path: self.path.clone(),
            source: e.into(),
        })?;
        Ok(DiskSpace {
            total: st.f_blocks.saturating_mul(st.f_frsize),
            available: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }

    /// The approximate size of the column families `cfs` on disk (their table files) plus what
    /// their memtables hold, in bytes.
    pub fn size_of(&self, cfs: &[Cf]) -> Result<u64, StorageError> {
        self.sum_property(
            cfs,
            &[
                "rocksdb.total-sst-files-size",
                "rocksdb.size-all-mem-tables",
            ],
        )
    }

    /// The estimated size of the live data in `cfs` (what compaction would leave), in bytes.
    pub fn live_size_of(&self, cfs: &[Cf]) -> Result<u64, StorageError> {
        self.sum_property(
            cfs,
            &[
                "rocksdb.estimate-live-data-size",
                "rocksdb.size-all-mem-tables",
            ],
        )
    }

    /// What RocksDB holds in memory now, in bytes (the `oxcd_storage_*_bytes` gauges).
    pub fn memory(&self) -> Result<StorageMemory, StorageError> {
        Ok(StorageMemory {
            memtables: Cf::ALL
                .iter()
                .map(|&cf| Ok((cf, self.property(cf, "rocksdb.size-all-mem-tables")?)))
                .collect::<Result<_, StorageError>>()?,
            // One cache serves every column family: any of them reports it whole.
            block_cache: self.property(Cf::Kv, "rocksdb.block-cache-usage")?,
            table_readers: self.sum_property(&Cf::ALL, &["rocksdb.estimate-table-readers-mem"])?,
        })
    }

    /// Hands the C heap's free memory back to the system. RocksDB allocates with the C library's
    /// `malloc` (oxcd's own allocations go to mimalloc), and glibc keeps the blocks of flushed
    /// memtables after their release: about 2.5 MiB after 100,000 puts. Cheap enough for a member
    /// going idle; does nothing where the C library is not glibc.
    pub fn release_freed_memory() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `malloc_trim` takes a plain integer, has no preconditions and is safe to call
        // from any thread at any time (glibc locks each arena it trims).
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn sum_property(&self, cfs: &[Cf], props: &[&str]) -> Result<u64, StorageError> {
        let mut total = 0u64;
        for &cf in cfs {
            for p in props {
                total += self.property(cf, p)?;
            }
        }
        Ok(total)
    }

    /// RocksDB's integer property `name` of `cf` (0 when it has none).
    fn property(&self, cf: Cf, name: &str) -> Result<u64, StorageError> {
        Ok(self
            .db
            .property_int_value_cf(self.handle(cf)?, name)?
            .unwrap_or(0))
    }
}

/// Feeds `visit` the items of `it` below `to` until it returns `false`.
fn visit_until<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    it: impl Iterator<Item = Result<(K, V), rocksdb::Error>>,
    to: Option<&[u8]>,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    for item in it {
        let (k, v) = item?;
        if to.is_some_and(|to| k.as_ref() >= to) {
            break;
        }
        if !visit(k.as_ref(), v.as_ref())? {
            break;
        }
    }
    Ok(())
}

/// A consistent point-in-time view of a [`Storage`] (see [`Storage::read_view`]).
pub struct ReadView<'a> {
    storage: &'a Storage,
    snap: rocksdb::Snapshot<'a>,
}

impl std::fmt::Debug for ReadView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView").finish_non_exhaustive()
    }
}

impl ReadView<'_> {
    /// Reads many keys of one column family at once, in order.
    pub fn multi_get(
        &self,
        cf: Cf,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&self.snap);
        self.storage.multi_get_opt(cf, keys, &ro)
    }

    /// Visits the keys of `cf` in `[from, to)` (to the end when `to` is `None`) in ascending
    /// order, until `visit` returns `false`.
    pub fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let it = self.snap.iterator_cf(
            self.storage.handle(cf)?,
            IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        visit_until(it, to, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_atomic_and_scannable() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().map_err(|source| StorageError::Io {
            path: PathBuf::new(),
            source,
        })?;
        let s = Storage::open(dir.path())?;
        let mut b = Batch::new();
        b.put(Cf::Kv, b"a".to_vec(), b"1".to_vec());
        b.put(Cf::Kv, b"b".to_vec(), b"2".to_vec());
        b.put(Cf::Meta, b"m".to_vec(), b"x".to_vec());
        s.write(b, true)?;
        let mut seen = Vec::new();
        s.scan(Cf::Kv, b"", None, |k, _| {
            seen.push(k.to_vec());
            Ok(true)
        })?;
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
        let mut b = Batch::new();
        s.clear_into(Cf::Kv, &mut b)?;
        s.write(b, false)?;
        assert_eq!(s.get(Cf::Kv, b"a")?, None);
        assert_eq!(s.get(Cf::Meta, b"m")?, Some(b"x".to_vec()));
        Ok(())
    }
}
