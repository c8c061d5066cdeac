//! The watch hub: committed changes, grouped by revision, fanned out to watch streams; and the
//! history reads that let a stream catch up from storage.
//!
//! Invariants:
//! - A commit is published only after its batch is in RocksDB, while the writer still holds the
//!   index lock, so publications are in revision order and never ahead of storage.
//! - Publishing never blocks: the hub is a bounded broadcast. A stream that falls more than the
//!   buffer behind is told it lagged and catches up from storage ([`crate::mvcc::Mvcc::history`]);
//!   memory is bounded by the buffer, whatever the number or speed of watchers.
//! - A stream that subscribes before it reads the current revision `C` gets every commit above `C`
//!   from the hub (or a lag notice): together with a storage read up to `C` nothing is missed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// How many commits the hub buffers for slow streams before they must catch up from storage.
pub const HUB_CAPACITY: usize = 1024;

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

    /// Publishes one commit's revisions (never blocks).
    pub(crate) fn publish(&self, revs: Vec<RevEvents>, current: i64) {
        if !revs.is_empty() {
            let _ = self.tx.send(HubMsg::Commit(Arc::new(revs)));
        }
        self.published.store(current, Ordering::Release);
    }

    /// Tells every stream to catch up from storage.
    pub(crate) fn reset(&self, current: i64) {
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
