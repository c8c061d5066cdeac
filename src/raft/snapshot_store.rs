//! Raft snapshots on disk: built as RocksDB checkpoints, sent file by file, installed in bounded
//! batches.
//!
//! A snapshot is a directory `<member>/snap/snap-<index>-<nanos>`: a RocksDB checkpoint of the
//! member's instance (hard links to its table files, so building one costs a memtable flush, not
//! a copy of the database) plus `snapshot.meta`, openraft's meta read from that same checkpoint.
//! A leader sends the directory's files in chunks ([`SnapshotFiles`]); a follower writes them
//! into `recv-<nanos>`, then copies the state-machine column families into its own instance.
//!
//! Invariants:
//! - No step holds more than one chunk or one batch of a snapshot in memory.
//! - A snapshot's meta (applied log id, membership) comes from the checkpoint itself.
//! - Installing is crash-safe. openraft purges the log the snapshot covers as soon as it decides
//!   to install, without waiting for the install, so the received directory is recorded under
//!   `meta/installing` ([`Phase::Staged`]) before openraft sees it; the install's first batch
//!   clears the state machine ([`Phase::Copying`]), the rows go in without the write-ahead log
//!   and are flushed to table files, and only then does a last batch remove the record. A member that
//!   starts with the record present installs from the directory before anything reads the state
//!   machine, unless a staged snapshot is not newer than what it applied
//!   ([`SnapStore::recover`]); the directory is deleted only after the record is gone.
//! - A snapshot is never built while one is being installed (it would capture half a state).
//! - Only the newest snapshots are kept ([`KEEP`]); directories left by a crash are removed on
//!   start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::SnapshotMeta;
use parking_lot::RwLock;

use crate::storage::{Batch, Cf, Storage, StorageError};
use crate::types::Member;

/// The `meta` key that marks an install in progress: bincode of ([`Phase`], directory).
pub const KEY_INSTALLING: &[u8] = b"installing";

/// How far an install got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// Received completely; the state machine is untouched.
    Staged,
    /// The state machine is being replaced: it is incomplete until the install finishes.
    Copying,
}

/// The file in a snapshot directory that holds its bincode-encoded meta.
pub const META_FILE: &str = "snapshot.meta";

/// How many built snapshots are kept (the newest, and the one before it for a send in flight).
pub const KEEP: usize = 2;

/// Rows per install batch are cut at this many bytes.
const INSTALL_BATCH_BYTES: usize = 8 << 20;

/// A snapshot's data: the directory that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapData {
    /// The snapshot directory (a RocksDB checkpoint plus [`META_FILE`]).
    pub dir: PathBuf,
}

/// Why a snapshot could not be built, read, received or installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// RocksDB failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Encoded data could not be read or written.
    #[error("snapshot {0}")]
    Codec(String),
    /// The data is not a usable snapshot.
    #[error("bad snapshot: {0}")]
    Bad(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapError + '_ {
    move |source| SnapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Nanoseconds since the epoch: a name suffix that does not repeat.
pub fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> Result<(), SnapError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// Where the snapshots of the member whose instance is `storage` live: `<member>/snap`, beside
/// the instance, on the same file system (checkpoints are hard links).
pub fn snap_dir(storage: &Storage) -> PathBuf {
    storage
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
        .join("snap")
}

/// The snapshots of one member.
#[derive(Debug, Clone)]
pub struct SnapStore {
    storage: Storage,
    dir: PathBuf,
    /// Held for reading while building (a checkpoint), for writing while installing.
    install: Arc<RwLock<()>>,
}

/// The meta of a snapshot, as stored.
pub type Meta = SnapshotMeta<u64, Member>;

impl SnapStore {
    /// The snapshot store beside `storage`'s instance (`<member>/snap`), with what a crash left
    /// half-made removed.
    pub fn open(storage: Storage) -> Result<SnapStore, SnapError> {
        let dir = snap_dir(&storage);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        // Absolute, so the install record names the same directory whatever the working directory
        // of a later start.
        let dir = std::fs::canonicalize(&dir).map_err(io(&dir))?;
        let store = SnapStore {
            storage,
            dir,
            install: Arc::new(RwLock::new(())),
        };
        let installing = store.installing()?;
        for entry in std::fs::read_dir(&store.dir).map_err(io(&store.dir))? {
            let path = entry.map_err(io(&store.dir))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with("backup-") {
                // A backup file a crash left behind while streaming it to a client.
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let half_made = name.starts_with("tmp-")
                || (name.starts_with("recv-")
                    && installing.as_ref().map(|(_, d)| d.as_path()) != Some(path.as_path()))
                || (name.starts_with("snap-") && !path.join(META_FILE).exists());
            if half_made {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        Ok(store)
    }

    /// The directory snapshots live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The received directory of an install that did not finish, and how far it got.
    pub fn installing(&self) -> Result<Option<(Phase, PathBuf)>, SnapError> {
        match self.storage.get(Cf::Meta, KEY_INSTALLING)? {
            None => Ok(None),
            Some(v) => bincode::deserialize::<(Phase, PathBuf)>(&v)
                .map(Some)
                .map_err(|e| SnapError::Codec(format!("install record: {e}"))),
        }
    }

    fn record(phase: Phase, dir: &Path) -> Result<Vec<u8>, SnapError> {
        bincode::serialize(&(phase, dir)).map_err(|e| SnapError::Codec(e.to_string()))
    }

    /// Records the completely received snapshot in `dir` as one to install, durably, before
    /// openraft is told about it.
    pub fn stage(&self, dir: &Path) -> Result<(), SnapError> {
        let mut b = Batch::new();
        b.put(
            Cf::Meta,
            KEY_INSTALLING.to_vec(),
            Self::record(Phase::Staged, dir)?,
        );
        self.storage.write(b, true)?;
        Ok(())
    }

    /// Forgets a staged snapshot openraft did not install (an older one, or a stale leader's)
    /// and deletes its directory. Does nothing once the install has begun.
    pub fn unstage(&self, dir: &Path) -> Result<(), SnapError> {
        let _installing = self.install.write();
        if let Some((Phase::Staged, staged)) = self.installing()? {
            if staged == dir {
                let mut b = Batch::new();
                b.delete(Cf::Meta, KEY_INSTALLING.to_vec());
                self.storage.write(b, true)?;
            }
        }
        if self.installing()?.map(|(_, d)| d).as_deref() != Some(dir) && dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        Ok(())
    }

    /// The meta of the snapshot in `dir`.
    pub fn read_meta(dir: &Path) -> Result<Meta, SnapError> {
        let meta_path = dir.join(META_FILE);
        let bytes = std::fs::read(&meta_path).map_err(io(&meta_path))?;
        bincode::deserialize(&bytes).map_err(|e| SnapError::Codec(e.to_string()))
    }

    /// Builds a snapshot of the instance as it is now: a checkpoint, its meta read from the
    /// checkpoint by `read_meta`. Blocking; run it off the async workers.
    pub fn build(
        &self,
        read_meta: impl FnOnce(&Storage) -> Result<Meta, SnapError>,
    ) -> Result<(Meta, SnapData), SnapError> {
        let _building = self.install.read();
        let tmp = self.dir.join(format!("tmp-{}", nanos()));
        self.storage.checkpoint(&tmp)?;
        let meta = {
            let cp = Storage::open_read_only(&tmp)?;
            if cp.get(Cf::Meta, KEY_INSTALLING)?.is_some() {
                return Err(SnapError::Bad("checkpoint taken during an install".into()));
            }
            read_meta(&cp)?
        };
        let done = self.finish(&tmp, &meta)?;
        Ok((meta, SnapData { dir: done }))
    }

    /// Writes `meta` into the checkpoint at `tmp`, makes it durable and gives it its final name.
    fn finish(&self, tmp: &Path, meta: &Meta) -> Result<PathBuf, SnapError> {
        let bytes = bincode::serialize(meta).map_err(|e| SnapError::Codec(e.to_string()))?;
        let meta_path = tmp.join(META_FILE);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&meta_path).map_err(io(&meta_path))?;
            f.write_all(&bytes).map_err(io(&meta_path))?;
            f.sync_all().map_err(io(&meta_path))?;
        }
        sync_dir(tmp)?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let done = self.dir.join(format!("snap-{index:020}-{}", nanos()));
        std::fs::rename(tmp, &done).map_err(io(tmp))?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(done)
    }

    /// The built snapshots, oldest first.
    fn built(&self) -> Result<Vec<PathBuf>, SnapError> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("snap-"))
                    && p.join(META_FILE).exists()
            })
            .collect();
        // Names are snap-<index, zero-padded>-<nanos>: their order is the snapshots' order.
        out.sort();
        Ok(out)
    }

    /// Deletes all but the newest [`KEEP`] snapshots.
    fn prune(&self) -> Result<(), SnapError> {
        let built = self.built()?;
        let drop = built.len().saturating_sub(KEEP);
        for old in &built[..drop] {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
        Ok(())
    }

    /// The newest snapshot, if any.
    pub fn latest(&self) -> Result<Option<(Meta, SnapData)>, SnapError> {
        let Some(dir) = self.built()?.pop() else {
            return Ok(None);
        };
        let meta = Self::read_meta(&dir)?;
        Ok(Some((meta, SnapData { dir })))
    }

    /// A new, empty directory to receive a snapshot into.
    pub fn receive_dir(&self) -> Result<PathBuf, SnapError> {
        let dir = self.dir.join(format!("recv-{}", nanos()));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Replaces the state machine with the received snapshot in `data`, in bounded batches, then
    /// keeps a checkpoint of the result as this member's own snapshot (with `meta`) and deletes
    /// the received files. Blocking; the caller holds the key index so nothing reads meanwhile.
    pub fn install(&self, meta: &Meta, data: &SnapData) -> Result<SnapData, SnapError> {
        let _installing = self.install.write();
        self.copy_in(&data.dir)?;
        let tmp = self.dir.join(format!("tmp-{}", nanos()));
        self.storage.checkpoint(&tmp)?;
        let own = self.finish(&tmp, meta)?;
        if data.dir.starts_with(&self.dir) {
            std::fs::remove_dir_all(&data.dir).map_err(io(&data.dir))?;
        }
        Ok(SnapData { dir: own })
    }

    /// Finishes an install a crash interrupted, before anything reads the state machine.
    /// `applied` is the index the state machine had applied (meaningless while copying). Returns
    /// the meta of the snapshot installed, if one was; a staged snapshot that is not newer than
    /// `applied` is forgotten instead.
    pub fn recover(&self, applied: u64) -> Result<Option<Meta>, SnapError> {
        let Some((phase, dir)) = self.installing()? else {
            return Ok(None);
        };
        let meta = match Self::read_meta(&dir) {
            Ok(m) => m,
            Err(e) if phase == Phase::Staged => {
                tracing::warn!(dir = %dir.display(), error = %e, "dropping an unreadable staged snapshot");
                self.unstage(&dir)?;
                return Ok(None);
            }
            Err(e) => {
                return Err(SnapError::Bad(format!(
                    "an interrupted snapshot install needs {} but it cannot be read ({e}); \
                     this member's state is incomplete: remove its data directory and let it rejoin",
                    dir.display()
                )))
            }
        };
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        if phase == Phase::Staged && index <= applied {
            self.unstage(&dir)?;
            return Ok(None);
        }
        tracing::warn!(
            dir = %dir.display(),
            snapshot_id = %meta.snapshot_id,
            ?phase,
            "finishing a snapshot install interrupted by a crash"
        );
        self.install(&meta, &SnapData { dir })?;
        Ok(Some(meta))
    }

    /// Clears the state-machine column families and copies them from the checkpoint at `src`,
    /// a batch at a time, between the two writes of the install record.
    fn copy_in(&self, src: &Path) -> Result<(), SnapError> {
        let from = Storage::open_read_only(src)?;
        let mut first = Batch::new();
        for cf in Cf::STATE_MACHINE {
            self.storage.clear_into(cf, &mut first)?;
        }
        first.put(
            Cf::Meta,
            KEY_INSTALLING.to_vec(),
            Self::record(Phase::Copying, src)?,
        );
        self.storage.write(first, true)?;
        let mut rows = 0u64;
        let mut bytes = 0u64;
        for cf in Cf::STATE_MACHINE {
            let mut batch = Batch::new();
            let mut size = 0usize;
            let mut failed = None;
            from.scan(cf, b"", None, |k, v| {
                if cf == Cf::Meta && k == KEY_INSTALLING {
                    return Ok(true);
                }
                batch.put(cf, k.to_vec(), v.to_vec());
                size += k.len() + v.len();
                rows += 1;
                bytes += (k.len() + v.len()) as u64;
                if size >= INSTALL_BATCH_BYTES {
                    if let Err(e) = self.storage.write_unlogged(std::mem::take(&mut batch)) {
                        failed = Some(e);
                        return Ok(false);
                    }
                    size = 0;
                }
                Ok(true)
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            self.storage.write_unlogged(batch)?;
        }
        // The rows went in without the write-ahead log (half the bytes written): they are in
        // table files before the record that the copy is done, and a crash before that redoes it.
        self.storage.flush(&Cf::STATE_MACHINE)?;
        let mut last = Batch::new();
        last.delete(Cf::Meta, KEY_INSTALLING.to_vec());
        self.storage.write(last, true)?;
        tracing::info!(rows, bytes, from = %src.display(), "copied a snapshot into the state machine");
        Ok(())
    }
}

/// The files of a snapshot directory, in the order they are sent (the meta last, so a receiver
/// that has it has everything), with their sizes.
pub fn snapshot_files(dir: &Path) -> Result<Vec<(String, u64)>, SnapError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let md = entry.metadata().map_err(io(&entry.path()))?;
        if md.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), md.len()));
        }
    }
    files.sort_by(|a, b| (a.0 == META_FILE, &a.0).cmp(&(b.0 == META_FILE, &b.0)));
    Ok(files)
}

/// Whether `name` is a plain file name a receiver may create (no directories, no `..`).
pub fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

#[cfg(test)]
mod tests;
