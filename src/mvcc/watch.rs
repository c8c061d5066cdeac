//! The watch hub: committed changes, grouped by revision, fanned out to watch streams; and the
//! history reads that let a stream catch up from storage.
//!
//! Invariants:
//! - A commit is published only after its batch is in RocksDB, while the writer still holds the
//!   index lock, so publications are in revision order and never ahead of storage.
//! - Publishing never blocks: the hub is a bounded broadcast. A stream that falls more than the
//!   buffer behind is told it lagged and catches up from storage ([`crate::mvcc::Mvcc::history`]);
//!   memory is bounded by the buffer, whatever the number or speed of watchers.
//! - The buffer is bounded in bytes too: the key and value bytes of the last [`HUB_CAPACITY`]
//!   messages stay under [`HUB_MAX_BYTES`] plus one commit. A commit that would pass the bound is
//!   published as [`HubMsg::FromStorage`] instead, and streams read its events from storage.
//! - A stream that subscribes before it reads the current revision `C` gets every commit above `C`
//!   from the hub (or a lag notice): together with a storage read up to `C` nothing is missed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// How many commits the hub buffers for slow streams before they must catch up from storage.
pub const HUB_CAPACITY: usize = 1024;
/// About the most key and value bytes the hub's buffer holds.
pub const HUB_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The events of one revision, in the order the transaction made them.
#[derive(Debug, Clone, PartialEq)]
pub struct RevEvents {
    /// The revision.
    pub revision: i64,
    /// Its events (one per key changed).
    pub events: Vec<Event>,
}

/// What the hub carries.
#[derive(Debug, Clone)]
pub enum HubMsg {
    /// The revisions one commit made, ascending.
    Commit(Arc<Vec<RevEvents>>),
    /// The store was replaced (a snapshot was installed): streams must catch up from storage.
    Reset,
    /// A commit too large for the buffer's byte bound: streams read it from storage.
    FromStorage,
}

/// Counters for the watch metrics (`etcd_debugging_mvcc_*`).
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Watchers currently open.
    pub watchers: AtomicI64,
    /// Watch streams currently open.
    pub streams: AtomicI64,
    /// Times a stream fell behind the hub and caught up from storage.
    pub slow_catch_ups: AtomicU64,
    /// Events sent to clients.
    pub events_sent: AtomicU64,
}

/// The fan-out point between the apply path and watch streams.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<HubMsg>,
    published: AtomicI64,
    /// The byte sizes of the messages the buffer holds, oldest first, and their sum.
    sizes: parking_lot::Mutex<(std::collections::VecDeque<usize>, usize)>,
    /// Watch metrics.
    pub stats: WatchStats,
}

impl Hub {
    /// A hub whose last published revision is `current`.
    pub fn new(current: i64) -> Hub {
        let (tx, _) = broadcast::channel(HUB_CAPACITY);
        Hub {
            tx,
            published: AtomicI64::new(current),
            sizes: parking_lot::Mutex::new((std::collections::VecDeque::new(), 0)),
            stats: WatchStats::default(),
        }
    }

    /// A receiver of every message published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HubMsg> {
        self.tx.subscribe()
    }

    /// The highest revision published so far.
    pub fn published(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// Publishes one commit's revisions (never blocks); one that would take the buffer past
    /// [`HUB_MAX_BYTES`] goes as [`HubMsg::FromStorage`].
    pub(crate) fn publish(&self, revs: Vec<RevEvents>, current: i64) {
        if !revs.is_empty() {
            let bytes: usize = revs
                .iter()
                .flat_map(|r| r.events.iter())
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| kv.key.len() + kv.value.len())
                .sum();
            let msg = if self.admit(bytes) {
                HubMsg::Commit(Arc::new(revs))
            } else {
                self.admit(0);
                HubMsg::FromStorage
            };
            let _ = self.tx.send(msg);
        }
        self.published.store(current, Ordering::Release);
    }

    /// Records a message of `bytes` entering the buffer (and the oldest leaving it once the
    /// buffer is full); false, recording nothing, when the bytes would pass the bound.
    fn admit(&self, bytes: usize) -> bool {
        let mut g = self.sizes.lock();
        let (sizes, total) = &mut *g;
        let leaving = if sizes.len() >= HUB_CAPACITY {
            sizes.front().copied().unwrap_or(0)
        } else {
            0
        };
        if bytes > 0 && *total - leaving + bytes > HUB_MAX_BYTES {
            return false;
        }
        if sizes.len() >= HUB_CAPACITY {
            sizes.pop_front();
            *total -= leaving;
        }
        sizes.push_back(bytes);
        *total += bytes;
        true
    }

    /// The key and value bytes the buffer holds now.
    pub fn buffered_bytes(&self) -> usize {
        self.sizes.lock().1
    }

    /// Tells every stream to catch up from storage.
    pub(crate) fn reset(&self, current: i64) {
        self.admit(0);
        let _ = self.tx.send(HubMsg::Reset);
        self.published.store(current, Ordering::Release);
    }
}

/// Groups `(revision, kv, is_delete)` changes (ascending by revision) into per-revision events.
pub(crate) fn group(changes: Vec<(i64, KeyValue, bool)>) -> Vec<RevEvents> {
    let mut out: Vec<RevEvents> = Vec::new();
    for (rev, kv, delete) in changes {
        let ev = Event {
            r#type: if delete {
                EventType::Delete as i32
            } else {
                EventType::Put as i32
            },
            kv: Some(kv),
            prev_kv: None,
        };
        match out.last_mut() {
            Some(last) if last.revision == rev => last.events.push(ev),
            _ => out.push(RevEvents {
                revision: rev,
                events: vec![ev],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(rev: i64, value: usize) -> Vec<RevEvents> {
        group(vec![(
            rev,
            KeyValue {
                key: b"k".to_vec(),
                value: vec![7; value],
                mod_revision: rev,
                ..Default::default()
            },
            false,
        )])
    }

    #[tokio::test]
    async fn the_buffer_holds_a_bounded_number_of_bytes_and_sends_the_rest_through_storage() {
        let hub = Hub::new(1);
        let mut rx = hub.subscribe();
        let big = 1 << 20;
        for rev in 2..202 {
            hub.publish(commit(rev, big), rev);
            assert!(hub.buffered_bytes() <= HUB_MAX_BYTES);
        }
        let mut commits = 0;
        let mut from_storage = 0;
        while let Ok(m) = rx.try_recv() {
            match m {
                HubMsg::Commit(_) => commits += 1,
                HubMsg::FromStorage => from_storage += 1,
                HubMsg::Reset => panic!("no reset was sent"),
            }
        }
        // 64 MiB of 1 MiB commits (each is its key plus 1 MiB); the rest go through storage.
        assert_eq!(commits, HUB_MAX_BYTES / (big + 1));
        assert_eq!(commits + from_storage, 200);
        // Small commits still go through the buffer once big ones have left it.
        for rev in 202..(202 + HUB_CAPACITY as i64) {
            hub.publish(commit(rev, 8), rev);
        }
        assert!(hub.buffered_bytes() < 64 * 1024);
    }
}
