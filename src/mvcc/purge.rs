//! Deleting compacted revisions in the background, in bounded batches, as etcd does.
//!
//! Invariants:
//! - A compaction takes effect in two steps. Under the index write lock the index drops the
//!   history below the compact revision, and the revisions whose stored rows may go are queued
//!   here as one [`Job`] before the lock is released. A worker thread then deletes those rows
//!   `batch_limit` at a time, one RocksDB write per batch, holding no index lock, so reads and
//!   writes go on between batches; after each batch it rests twice as long as the batch took.
//! - Until its job is finished a queued revision counts as deleted: HashKV skips it
//!   ([`Pending::contains`]), so members agree on the hash whatever their deletion progress. No
//!   other read can reach it: the index no longer names it and history reads start at or above
//!   the compact revision, above every queued revision.
//! - Jobs finish in the order they were queued; [`Purger::done`] is the highest compact revision
//!   whose rows are all deleted (what a `physical` compaction waits for).
//! - A crash loses nothing: the rows are still on disk, the index rebuilt at start names them
//!   again, and the compaction the store runs at load queues them again.
//! - Replacing the store (a snapshot install) drops the queue; the worker notices at its next
//!   batch. A batch already under way deletes only rows the installed store has compacted too
//!   (the leader's compact revision is at or above this member's, over the same history).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::storage::{Batch, Cf, Storage};
use crate::types::Revision;

/// etcd's default `--experimental-compaction-batch-limit`.
pub const DEFAULT_BATCH_LIMIT: usize = 1000;
/// The longest rest between two batches (etcd 3.5 rests 10 ms after every batch).
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// The stored revisions one compaction leaves to delete.
#[derive(Debug, Clone)]
pub struct Job {
    /// The compact revision.
    pub at: i64,
    /// The revisions to delete, in no particular order.
    pub revs: Arc<Vec<Revision>>,
}

/// The revisions queued for deletion at one moment, sorted, for HashKV to skip.
#[derive(Debug, Default)]
pub struct Pending(Vec<Revision>);

impl Pending {
    /// Whether `rev` is queued for deletion.
    pub fn contains(&self, rev: &Revision) -> bool {
        !self.0.is_empty() && self.0.binary_search(rev).is_ok()
    }
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Raised when the queue is dropped (the store was replaced).
    generation: u64,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    done: tokio::sync::watch::Sender<i64>,
}

/// The background deleter of compacted revisions.
#[derive(Debug)]
pub struct Purger {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Purger {
    /// Starts the worker over `storage`, with nothing queued; [`Purger::reset`] says where the
    /// store stands.
    pub fn start(storage: Storage, batch_limit: usize) -> Purger {
        let (done, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            done,
        });
        let worker = shared.clone();
        let batch_limit = batch_limit.max(1);
        let thread = std::thread::Builder::new()
            .name("oxcd-compactor".to_string())
            .spawn(move || run(&worker, &storage, batch_limit))
            .map_err(|e| tracing::error!(error = %e, "could not start the compaction thread"))
            .ok();
        Purger {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Queues a compaction's revisions. The caller holds the index write lock.
    pub fn queue(&self, job: Job) {
        let mut q = self.shared.queue.lock();
        q.jobs.push_back(job);
        self.shared.wake.notify_all();
    }

    /// Drops every queued job (the store was opened or replaced) and queues `job`, the rows a
    /// store compacted at `compacted` still holds, when given; without one, every compaction up
    /// to `compacted` is done.
    pub fn reset(&self, compacted: i64, job: Option<Job>) {
        let mut q = self.shared.queue.lock();
        q.jobs.clear();
        q.generation += 1;
        match job {
            Some(j) => q.jobs.push_back(j),
            None => self.shared.done.send_modify(|d| *d = (*d).max(compacted)),
        }
        self.shared.wake.notify_all();
    }

    /// The revisions queued now, sorted. The caller holds the index lock, so the queue matches
    /// the index it reads.
    pub fn pending(&self) -> Pending {
        let q = self.shared.queue.lock();
        if q.jobs.is_empty() {
            return Pending::default();
        }
        let mut all: Vec<Revision> = q.jobs.iter().flat_map(|j| j.revs.iter().copied()).collect();
        drop(q);
        all.sort_unstable();
        Pending(all)
    }

    /// The highest compact revision whose rows are all deleted.
    pub fn done(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.done.subscribe()
    }
}

impl Drop for Purger {
    fn drop(&mut self) {
        self.shared.queue.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// The worker: takes the oldest job, deletes its rows batch by batch, then retires it.
fn run(shared: &Shared, storage: &Storage, batch_limit: usize) {
    loop {
        let (job, generation) = {
            let mut q = shared.queue.lock();
            loop {
                if q.stop {
                    return;
                }
                if let Some(j) = q.jobs.front() {
                    break (j.clone(), q.generation);
                }
                shared.wake.wait(&mut q);
            }
        };
        let started = Instant::now();
        let mut deleted = 0usize;
        let mut batches = 0usize;
        let mut chunks = job.revs.chunks(batch_limit);
        let mut chunk = chunks.next();
        while let Some(revs) = chunk {
            {
                let q = shared.queue.lock();
                if q.stop {
                    return;
                }
                if q.generation != generation {
                    break;
                }
            }
            let mut b = Batch::new();
            for r in revs {
                b.delete(Cf::Kv, r.to_bytes().to_vec());
            }
            let batch_started = Instant::now();
            match storage.write(b, false) {
                Ok(()) => {
                    deleted += revs.len();
                    batches += 1;
                    crate::metrics::get()
                        .compaction_keys
                        .inc_by(revs.len() as u64);
                    chunk = chunks.next();
                    if chunk.is_some() {
                        crate::crash_point!("compaction-batch");
                    }
                    // Rest twice as long as the batch took (at most etcd's 10 ms pause), so
                    // deleting takes at most a third of the store's write path from client writes.
                    if chunk.is_some() {
                        std::thread::sleep((batch_started.elapsed() * 2).min(MAX_PAUSE));
                    }
                }
                Err(e) => {
                    // Retried: the rows stay unreachable meanwhile, and a restart queues them again.
                    tracing::error!(error = %e, compact_revision = job.at, "deleting compacted revisions failed; retrying");
                    let q = shared.queue.lock();
                    if q.stop {
                        return;
                    }
                    drop(q);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        let mut q = shared.queue.lock();
        if q.generation != generation {
            continue;
        }
        q.jobs.pop_front();
        drop(q);
        let took = started.elapsed();
        if deleted > 0 {
            tracing::info!(
                compact_revision = job.at,
                deleted,
                batches,
                took_ms = took.as_millis() as u64,
                "finished scheduled compaction"
            );
        }
        shared.done.send_modify(|d| *d = (*d).max(job.at));
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mvcc;
    use crate::storage::{Cf, Storage};

    /// Stored rows in the `kv` column family.
    fn rows(storage: &Storage) -> usize {
        let mut n = 0;
        storage
            .scan(Cf::Kv, &[], None, |_, _| {
                n += 1;
                Ok(true)
            })
            .expect("scan");
        n
    }

    /// Writes `rounds` revisions over `keys` keys (every key rewritten each round).
    fn fill(m: &Mvcc, keys: usize, rounds: usize) {
        for round in 0..rounds {
            for k in 0..keys {
                let mut w = m.writer();
                let mut t = w.begin();
                w.put(
                    &mut t,
                    format!("k{k:04}").as_bytes(),
                    vec![round as u8; 8],
                    0,
                );
                w.end(t);
                w.commit().expect("commit");
            }
        }
    }

    fn compact(m: &Mvcc, rev: i64) {
        let mut w = m.writer();
        w.compact(rev).expect("compact");
        w.commit().expect("commit");
    }

    #[tokio::test]
    async fn compaction_deletes_in_batches_and_hashkv_never_sees_the_difference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let m = Mvcc::open_with(storage.clone(), 7).expect("mvcc");
        fill(&m, 50, 4);
        let current = m.current_revision();
        assert_eq!(rows(&storage), 200);
        compact(&m, current);
        // At once: the compact revision is in force and HashKV skips the rows still queued.
        let (queued_hash, compacted, _) = m.hash_kv(current).expect("hash");
        assert_eq!(compacted, current);
        m.wait_compacted(current).await;
        assert_eq!(rows(&storage), 50, "one row per key is left");
        let (hash, _, _) = m.hash_kv(current).expect("hash");
        assert_eq!(queued_hash, hash);
        // A store that deleted everything at once hashes the same.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let storage2 = Storage::open(dir2.path()).expect("open");
        let whole = Mvcc::open_with(storage2, usize::MAX).expect("mvcc");
        fill(&whole, 50, 4);
        compact(&whole, current);
        whole.wait_compacted(current).await;
        assert_eq!(whole.hash_kv(current).expect("hash").0, hash);
    }

    #[tokio::test]
    async fn a_compaction_cut_short_is_finished_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let m = Mvcc::open(storage.clone()).expect("mvcc");
        fill(&m, 20, 3);
        let current = m.current_revision();
        drop(m);
        // What a crash right after the compaction was applied leaves: the compact revision is
        // recorded, no row is deleted yet.
        let mut b = crate::storage::Batch::new();
        b.put(
            Cf::Meta,
            super::super::META_COMPACT_REV.to_vec(),
            current.to_be_bytes().to_vec(),
        );
        storage.write(b, true).expect("write");
        assert_eq!(rows(&storage), 60);
        let again = Mvcc::open(storage.clone()).expect("reopen");
        assert_eq!(again.compacted_revision(), current);
        let queued = again.hash_kv(current).expect("hash").0;
        again.wait_compacted(current).await;
        assert_eq!(rows(&storage), 20);
        assert_eq!(again.hash_kv(current).expect("hash").0, queued);
    }
}
