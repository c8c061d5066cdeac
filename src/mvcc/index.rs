//! The in-memory key index: for every key, its changes in revision order.
//!
//! Invariants: each key's events are strictly increasing by revision; a key's version counts the
//! puts since its latest creation; a tombstone ends a generation; compaction at `C` keeps, per key,
//! the last event at or below `C` (dropping it too when it is a tombstone) and everything above.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::types::Revision;

/// What one change did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written.
    Put {
        /// Revision (main) of the creation of this generation.
        create: i64,
        /// Version after this put (1 on creation).
        version: i64,
        /// Lease attached by this put.
        lease: i64,
    },
    /// The key was deleted.
    Tombstone,
}

/// One change to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEvent {
    /// When it happened.
    pub rev: Revision,
    /// What happened.
    pub kind: EventKind,
}

/// One change as the index keeps it: 40 bytes instead of a [`KeyEvent`]'s 48, since most of
/// the index's memory is these. A tombstone has version 0, which no put has; a revision's
/// changes are numbered below 2^32 (a transaction's ops are bounded by `--max-txn-ops`, and a
/// delete of billions of keys would not fit in memory anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    main: i64,
    create: i64,
    version: i64,
    lease: i64,
    sub: u32,
}

impl Stored {
    fn pack(e: KeyEvent) -> Stored {
        let sub = u32::try_from(e.rev.sub).unwrap_or(u32::MAX);
        match e.kind {
            EventKind::Put {
                create,
                version,
                lease,
            } => Stored {
                main: e.rev.main,
                create,
                version: version.max(1),
                lease,
                sub,
            },
            EventKind::Tombstone => Stored {
                main: e.rev.main,
                create: 0,
                version: 0,
                lease: 0,
                sub,
            },
        }
    }

    fn is_put(&self) -> bool {
        self.version != 0
    }

    fn rev(&self) -> Revision {
        Revision::new(self.main, i64::from(self.sub))
    }

    fn unpack(&self) -> KeyEvent {
        KeyEvent {
            rev: self.rev(),
            kind: if self.is_put() {
                EventKind::Put {
                    create: self.create,
                    version: self.version,
                    lease: self.lease,
                }
            } else {
                EventKind::Tombstone
            },
        }
    }

    fn visible(&self, key: &[u8]) -> Visible {
        Visible {
            key: key.to_vec(),
            rev: self.rev(),
            create: self.create,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A key as visible at some revision, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    /// The key.
    pub key: Vec<u8>,
    /// The revision of its last modification at or before the read revision.
    pub rev: Revision,
    /// Revision of its creation.
    pub create: i64,
    /// Its version.
    pub version: i64,
    /// Its lease.
    pub lease: i64,
}

/// The key index plus the store's revision counters.
#[derive(Debug, Clone)]
pub struct Index {
    keys: BTreeMap<Box<[u8]>, Vec<Stored>>,
    /// The revision of the last write (1 for an empty store, as etcd).
    pub current: i64,
    /// The revision the store was last compacted at (0 when never).
    pub compacted: i64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            keys: BTreeMap::new(),
            current: 1,
            compacted: 0,
        }
    }
}

/// The bounds of etcd's `[key, range_end)` convention: an empty end is the single key, `"\0"` is
/// every key from `key` on.
pub fn bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if range_end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if range_end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(range_end))
    }
}

/// Whether `k` lies within etcd's `[key, range_end)`.
pub fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == [0] {
        k >= key
    } else {
        k >= key && k < range_end
    }
}

fn visible_in(events: &[Stored], at: i64) -> Option<&Stored> {
    let idx = events.partition_point(|e| e.main <= at);
    if idx == 0 {
        return None;
    }
    let e = &events[idx - 1];
    e.is_put().then_some(e)
}

impl Index {
    /// The keys in `[key, range_end)` visible at revision `at`, in key order.
    pub fn range(&self, key: &[u8], range_end: &[u8], at: i64) -> Vec<Visible> {
        let mut out = Vec::new();
        self.visit_range(key, range_end, at, |v| {
            out.push(v);
            true
        });
        out
    }

    /// Visits the keys in `[key, range_end)` visible at `at` until `f` returns false.
    pub fn visit_range(
        &self,
        key: &[u8],
        range_end: &[u8],
        at: i64,
        mut f: impl FnMut(Visible) -> bool,
    ) {
        self.visit_stored(key, range_end, at, |k, e| f(e.visible(k)));
    }

    /// Visits, without copying anything, the keys in `[key, range_end)` visible at `at` and the
    /// put that makes each visible, until `f` returns false.
    pub fn visit_events(
        &self,
        key: &[u8],
        range_end: &[u8],
        at: i64,
        mut f: impl FnMut(&[u8], &KeyEvent) -> bool,
    ) {
        self.visit_stored(key, range_end, at, |k, e| f(k, &e.unpack()));
    }

    fn visit_stored(
        &self,
        key: &[u8],
        range_end: &[u8],
        at: i64,
        mut f: impl FnMut(&[u8], &Stored) -> bool,
    ) {
        let (lo, hi) = bounds(key, range_end);
        if let (Bound::Included(l), Bound::Excluded(h)) = (lo, hi) {
            if l >= h {
                return;
            }
        }
        for (k, events) in self.keys.range::<[u8], _>((lo, hi)) {
            if let Some(e) = visible_in(events, at) {
                if !f(k, e) {
                    return;
                }
            }
        }
    }

    /// The number of keys in `[key, range_end)` visible at `at`, without copying any.
    pub fn count(&self, key: &[u8], range_end: &[u8], at: i64) -> usize {
        let mut n = 0;
        self.visit_stored(key, range_end, at, |_, _| {
            n += 1;
            true
        });
        n
    }

    /// The key as visible at `at`, if it exists then.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Visible> {
        let events = self.keys.get(key)?;
        visible_in(events, at).map(|e| e.visible(key))
    }

    /// Records a change. The caller guarantees `rev` is above every revision of `key`.
    pub fn push(&mut self, key: &[u8], ev: KeyEvent) {
        match self.keys.get_mut(key) {
            Some(events) => {
                // Most keys keep a handful of revisions: grow those one at a time rather than
                // to the allocator's minimum of four (it is most of the index's memory per key).
                if events.len() < 4 {
                    events.reserve_exact(1);
                }
                events.push(Stored::pack(ev))
            }
            None => {
                self.keys.insert(key.into(), vec![Stored::pack(ev)]);
            }
        }
    }

    /// Compacts at `at`: drops the history no read at or above `at` can see and returns the
    /// revisions whose stored values may be deleted.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, events| {
            let idx = events.partition_point(|e| e.main <= at);
            if idx == 0 {
                return true;
            }
            // The latest change at or below `at` survives, so reads at `at` see it; a tombstone
            // survives only when it is exactly at `at`, so a watch from `at` still sees the
            // delete (a later compaction drops it).
            let last = &events[idx - 1];
            let keep_from = if last.is_put() || last.main == at {
                idx - 1
            } else {
                idx
            };
            dropped.extend(events.drain(..keep_from).map(|e| e.rev()));
            if events.capacity() > 2 * events.len() {
                events.shrink_to_fit();
            }
            !events.is_empty()
        });
        if at > self.compacted {
            self.compacted = at;
        }
        dropped
    }

    /// The number of keys with any history.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(idx: &mut Index, key: &[u8], main: i64) {
        let prev = idx.get(key, main - 1);
        let (create, version) = match prev {
            Some(v) => (v.create, v.version + 1),
            None => (main, 1),
        };
        idx.push(
            key,
            KeyEvent {
                rev: Revision::new(main, 0),
                kind: EventKind::Put {
                    create,
                    version,
                    lease: 0,
                },
            },
        );
        idx.current = main;
    }

    #[test]
    fn versions_and_generations() {
        let mut idx = Index::default();
        put(&mut idx, b"a", 2);
        put(&mut idx, b"a", 3);
        idx.push(
            b"a",
            KeyEvent {
                rev: Revision::new(4, 0),
                kind: EventKind::Tombstone,
            },
        );
        put(&mut idx, b"a", 5);
        assert_eq!(
            idx.get(b"a", 3).map(|v| (v.create, v.version)),
            Some((2, 2))
        );
        assert_eq!(idx.get(b"a", 4), None);
        assert_eq!(
            idx.get(b"a", 5).map(|v| (v.create, v.version)),
            Some((5, 1))
        );
        // A tombstone exactly at the compact revision survives (a watch from 4 sees the delete);
        // the next compaction drops it.
        let dropped = idx.compact(4);
        assert_eq!(dropped.len(), 2);
        assert_eq!(idx.get(b"a", 4), None);
        assert_eq!(idx.get(b"a", 5).map(|v| v.version), Some(1));
        assert_eq!(idx.compact(5), vec![Revision::new(4, 0)]);
        assert_eq!(idx.get(b"a", 5).map(|v| v.version), Some(1));
    }

    #[test]
    fn range_conventions() {
        let mut idx = Index::default();
        for (i, k) in [b"a".as_slice(), b"b", b"c"].iter().enumerate() {
            put(&mut idx, k, 2 + i as i64);
        }
        assert_eq!(idx.range(b"b", b"", 10).len(), 1);
        assert_eq!(idx.range(b"b", b"\0", 10).len(), 2);
        assert_eq!(idx.range(b"a", b"c", 10).len(), 2);
        assert_eq!(idx.range(b"\0", b"\0", 10).len(), 3);
        assert_eq!(idx.range(b"c", b"a", 10).len(), 0);
    }

    /// The index's heap bytes per key, measured, for a million-key store in miniature: 100,000
    /// keys of 16 bytes written twice (as `make bench-scale` does). etcd's tree index holds,
    /// per such key, a 64-byte keyIndex, the 16-byte key, a 48-byte generation, 32 bytes of
    /// revisions and about 23 bytes of B-tree items: about 183 bytes.
    #[test]
    fn memory_per_key_is_at_most_etcds() {
        const KEYS: usize = 100_000;
        let keys: Vec<Vec<u8>> = (0..KEYS).map(|k| format!("{k:016}").into_bytes()).collect();
        let before = crate::test_alloc::live_bytes();
        let mut idx = Index::default();
        let mut main = 1;
        for _ in 0..2 {
            for k in &keys {
                main += 1;
                put(&mut idx, k, main);
            }
        }
        let per_key = (crate::test_alloc::live_bytes() - before) as f64 / KEYS as f64;
        eprintln!("index: {per_key:.1} heap bytes per key with two revisions");
        assert!(per_key <= 183.0, "{per_key:.1} bytes per key");
        assert_eq!(idx.key_count(), KEYS);
    }
}
