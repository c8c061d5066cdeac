//! The in-memory key index: for every key, its changes in revision order.
//!
//! Invariants: each key's events are strictly increasing by revision; a key's version counts the
//! puts since its latest creation; a tombstone ends a generation; compaction at `C` keeps, per key,
//! the last event at or below `C` (dropping it too when it is a tombstone below `C`) and
//! everything above.
//!
//! Layout: one heap block per key ([`Entry`]: the key, then its events packed as varints, each
//! followed by its length so the newest can be read first), in a B-tree set ordered by the key.
//! The index is most of what a member holds per key in memory, so its bytes per key are a
//! measured bound (see the tests).

use std::collections::BTreeSet;
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

/// One change as the index decodes it from an [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    main: i64,
    create: i64,
    version: i64,
    lease: i64,
    sub: i64,
}

impl Stored {
    fn pack(e: KeyEvent) -> Stored {
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
                sub: e.rev.sub,
            },
            EventKind::Tombstone => Stored {
                main: e.rev.main,
                create: 0,
                version: 0,
                lease: 0,
                sub: e.rev.sub,
            },
        }
    }

    fn is_put(&self) -> bool {
        self.version != 0
    }

    fn rev(&self) -> Revision {
        Revision::new(self.main, self.sub)
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

    /// Appends the event as varints: main, sub, version (0 for a tombstone), then for a put
    /// `main - create` (zigzag; 0 for the put that creates a key) and the lease; then one byte
    /// with the length of those varints, so that the events can be read from the last one back
    /// (a read at the current revision looks at the last event only). A usual put takes 8 or 9
    /// bytes where the five fields take 40.
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put_varint(out, self.main as u64);
        put_varint(out, self.sub as u64);
        put_varint(out, self.version as u64);
        if self.is_put() {
            put_varint(out, zigzag(self.main.wrapping_sub(self.create)));
            put_varint(out, self.lease as u64);
        }
        // At most five varints of ten bytes.
        out.push((out.len() - start) as u8);
    }

    /// The bytes [`Stored::encode`] writes.
    fn encoded_len(&self) -> usize {
        let head = varint_len(self.main as u64)
            + varint_len(self.sub as u64)
            + varint_len(self.version as u64);
        let fields = if self.is_put() {
            head + varint_len(zigzag(self.main.wrapping_sub(self.create)))
                + varint_len(self.lease as u64)
        } else {
            head
        };
        fields + 1
    }

    /// Decodes the fields of one event (without its length byte) from the front of `buf`,
    /// advancing it; `None` when `buf` does not start with whole fields (only at an entry's end).
    fn decode(buf: &mut &[u8]) -> Option<Stored> {
        let main = get_varint(buf)? as i64;
        Stored::decode_after_main(main, buf)
    }

    /// [`Stored::decode`] once `main` has been read.
    #[inline]
    fn decode_after_main(main: i64, buf: &mut &[u8]) -> Option<Stored> {
        let sub = get_varint(buf)? as i64;
        let version = get_varint(buf)? as i64;
        if version == 0 {
            return Some(Stored {
                main,
                create: 0,
                version: 0,
                lease: 0,
                sub,
            });
        }
        let create = main.wrapping_sub(unzigzag(get_varint(buf)?));
        let lease = get_varint(buf)? as i64;
        Some(Stored {
            main,
            create,
            version,
            lease,
            sub,
        })
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    // Most fields are below 128: one byte, one branch.
    let (&b, rest) = buf.split_first()?;
    if b < 0x80 {
        *buf = rest;
        return Some(u64::from(b));
    }
    get_long_varint(buf)
}

/// A varint of two or more bytes. Revisions take three bytes up to two million and four up to
/// 268 million: those are read without a loop.
fn get_long_varint(buf: &mut &[u8]) -> Option<u64> {
    let low = |b: u8| u64::from(b & 0x7f);
    match **buf {
        [b0, b1, ref rest @ ..] if b1 < 0x80 => {
            *buf = rest;
            Some(low(b0) | u64::from(b1) << 7)
        }
        [b0, b1, b2, ref rest @ ..] if b2 < 0x80 => {
            *buf = rest;
            Some(low(b0) | low(b1) << 7 | u64::from(b2) << 14)
        }
        [b0, b1, b2, b3, ref rest @ ..] if b3 < 0x80 => {
            *buf = rest;
            Some(low(b0) | low(b1) << 7 | low(b2) << 14 | u64::from(b3) << 21)
        }
        _ => {
            let mut v: u64 = 0;
            for (i, &b) in buf.iter().enumerate().take(10) {
                v |= low(b) << (7 * i);
                if b & 0x80 == 0 {
                    *buf = &buf[i + 1..];
                    return Some(v);
                }
            }
            None
        }
    }
}

/// Entries up to this many bytes are kept at their exact size (most keys have a handful of
/// changes, and their entries are most of the index's memory); longer ones grow by half, so a
/// key written a million times between compactions costs amortized constant time per write.
const EXACT_UP_TO: usize = 256;

/// One key and all its changes in one heap block: the key's length (varint), the key, then the
/// events one after another (see [`Stored::encode`]). Ordered, compared and looked up by the
/// key alone, so the set is a map from keys to their events. Per key the index costs the 24
/// bytes of this handle in a B-tree node plus the block itself, where a map from a boxed key
/// to a vector of events cost 40 in the node plus two blocks.
#[derive(Debug, Clone)]
struct Entry(Vec<u8>);

impl Entry {
    fn new(key: &[u8], ev: &Stored) -> Entry {
        let mut buf = Entry::start(key, ev.encoded_len());
        ev.encode(&mut buf);
        Entry(buf)
    }

    /// A block holding `key`'s length and `key`, with room for exactly `events` bytes more.
    fn start(key: &[u8], events: usize) -> Vec<u8> {
        let len = key.len() as u64;
        let mut buf = Vec::with_capacity(varint_len(len) + key.len() + events);
        put_varint(&mut buf, len);
        buf.extend_from_slice(key);
        buf
    }

    /// The key and the encoded events.
    #[inline]
    fn split(&self) -> (&[u8], &[u8]) {
        let mut buf = self.0.as_slice();
        let len = get_varint(&mut buf)
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0)
            .min(buf.len());
        buf.split_at(len)
    }

    /// The key: on every comparison of a lookup, so keys under 128 bytes (one length byte)
    /// take a shorter path.
    #[inline]
    fn key(&self) -> &[u8] {
        match self.0.split_first() {
            Some((&len, rest)) if len < 0x80 => rest.get(..usize::from(len)).unwrap_or(rest),
            _ => self.split().0,
        }
    }

    fn events(&self) -> Events<'_> {
        Events {
            buf: self.split().1,
            pos: 0,
        }
    }

    /// Adds an event at the end.
    fn push(&mut self, ev: &Stored) {
        let need = ev.encoded_len();
        if self.0.len() + need <= EXACT_UP_TO {
            self.0.reserve_exact(need);
        } else if self.0.capacity() - self.0.len() < need {
            self.0.reserve_exact(need.max(self.0.len() / 2));
        }
        ev.encode(&mut self.0);
    }

    /// The entry with the events from byte `from` of the events on, or `None` when none is
    /// left.
    fn keep_from(&self, from: usize) -> Option<Entry> {
        let (key, events) = self.split();
        let rest = events.get(from..).filter(|r| !r.is_empty())?;
        let mut buf = Entry::start(key, rest.len());
        buf.extend_from_slice(rest);
        Some(Entry(buf))
    }
}

impl std::borrow::Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(other.key())
    }
}

/// The events of an entry, decoded in order, each with the byte range it takes in the events.
struct Events<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Where an event lies in its entry's events: bytes `start..end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// An event found by its revision, decoded only as far as asked.
struct Found<'a> {
    span: Span,
    main: i64,
    /// The fields after `main`.
    rest: &'a [u8],
}

impl Found<'_> {
    /// Whether it is a put, reading no more than its sub and version.
    #[inline]
    fn is_put(&self) -> bool {
        let mut buf = self.rest;
        get_varint(&mut buf).is_some() && get_varint(&mut buf).is_some_and(|v| v != 0)
    }

    fn decode(&self) -> Option<Stored> {
        let mut buf = self.rest;
        Stored::decode_after_main(self.main, &mut buf)
    }
}

impl<'a> Events<'a> {
    /// The last event at or below `at`, found from the last event back.
    #[inline]
    fn last_at_or_below(&self, at: i64) -> Option<Found<'a>> {
        let buf: &'a [u8] = self.buf;
        let mut end = buf.len();
        while end > 0 {
            let len = usize::from(buf[end - 1]);
            let start = end.checked_sub(1 + len)?;
            let mut fields = buf.get(start..end - 1)?;
            let main = get_varint(&mut fields)? as i64;
            if main <= at {
                return Some(Found {
                    span: Span { start, end },
                    main,
                    rest: fields,
                });
            }
            end = start;
        }
        None
    }
}

impl Iterator for Events<'_> {
    type Item = (Span, Stored);

    fn next(&mut self) -> Option<(Span, Stored)> {
        let start = self.pos;
        let mut rest = self.buf.get(start..)?;
        let before = rest.len();
        let e = Stored::decode(&mut rest)?;
        // The fields, then their length byte.
        let end = start + (before - rest.len()) + 1;
        if end > self.buf.len() {
            return None;
        }
        self.pos = end;
        Some((Span { start, end }, e))
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
    keys: BTreeSet<Entry>,
    /// The revision of the last write (1 for an empty store, as etcd).
    pub current: i64,
    /// The revision the store was last compacted at (0 when never).
    pub compacted: i64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            keys: BTreeSet::new(),
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

/// The put that makes `entry`'s key visible at `at`, if any.
#[inline(always)]
fn visible_in(entry: &Entry, at: i64) -> Option<Found<'_>> {
    let found = entry.events().last_at_or_below(at)?;
    found.is_put().then_some(found)
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
        self.visit_stored(key, range_end, at, |k, e| {
            e.decode().is_none_or(|e| f(e.visible(k)))
        });
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
        self.visit_stored(key, range_end, at, |k, e| {
            e.decode().is_none_or(|e| f(k, &e.unpack()))
        });
    }

    fn visit_stored(
        &self,
        key: &[u8],
        range_end: &[u8],
        at: i64,
        mut f: impl FnMut(&[u8], &Found<'_>) -> bool,
    ) {
        if range_end.is_empty() {
            // One key: one descent of the tree (a range's bounds take two).
            if let Some(entry) = self.keys.get(key) {
                if let Some(e) = visible_in(entry, at) {
                    f(entry.key(), &e);
                }
            }
            return;
        }
        let (lo, hi) = bounds(key, range_end);
        if let (Bound::Included(l), Bound::Excluded(h)) = (lo, hi) {
            if l >= h {
                return;
            }
        }
        for entry in self.keys.range::<[u8], _>((lo, hi)) {
            if let Some(e) = visible_in(entry, at) {
                if !f(entry.key(), &e) {
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
        let entry = self.keys.get(key)?;
        visible_in(entry, at)
            .and_then(|e| e.decode())
            .map(|e| e.visible(key))
    }

    /// Records a change. The caller guarantees `rev` is above every revision of `key`.
    pub fn push(&mut self, key: &[u8], ev: KeyEvent) {
        let taken = self.keys.take(key);
        self.put_back(key, taken, &Stored::pack(ev));
    }

    /// Puts `key`'s entry, taken out of the set (`None` for a new key), back with `ev` added.
    /// The set cannot hand out its elements mutably (their keys order it), hence take and put
    /// back.
    fn put_back(&mut self, key: &[u8], taken: Option<Entry>, ev: &Stored) {
        let entry = match taken {
            Some(mut entry) => {
                entry.push(ev);
                entry
            }
            None => Entry::new(key, ev),
        };
        self.keys.insert(entry);
    }

    /// Records a put of `key` at `rev` (above every revision of `key`, as for [`Index::push`])
    /// and returns the put's create revision and version: one lookup where a
    /// [`Index::get`] and a push take two.
    pub fn put(&mut self, key: &[u8], rev: Revision, lease: i64) -> (i64, i64) {
        let taken = self.keys.take(key);
        let prev = taken
            .as_ref()
            .and_then(|e| visible_in(e, rev.main))
            .and_then(|e| e.decode());
        let (create, version) = match prev {
            Some(prev) => (prev.create, prev.version + 1),
            None => (rev.main, 1),
        };
        let ev = Stored::pack(KeyEvent {
            rev,
            kind: EventKind::Put {
                create,
                version,
                lease,
            },
        });
        self.put_back(key, taken, &ev);
        (create, version)
    }

    /// Compacts at `at`: drops the history no read at or above `at` can see and returns the
    /// revisions whose stored values may be deleted.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        // Which keys lose events, and from which byte of their events the rest is kept.
        let mut changed: Vec<(Vec<u8>, usize)> = Vec::new();
        for entry in &self.keys {
            let Some(last) = entry.events().last_at_or_below(at) else {
                continue;
            };
            // The latest change at or below `at` survives, so reads at `at` see it; a tombstone
            // survives only when it is exactly at `at`, so a watch from `at` still sees the
            // delete (a later compaction drops it).
            let from = if last.is_put() || last.main == at {
                last.span.start
            } else {
                last.span.end
            };
            if from == 0 {
                continue;
            }
            for (e_span, e) in entry.events() {
                if e_span.start >= from {
                    break;
                }
                dropped.push(e.rev());
            }
            changed.push((entry.key().to_vec(), from));
        }
        for (key, from) in changed {
            let Some(entry) = self.keys.take(key.as_slice()) else {
                continue;
            };
            if let Some(rest) = entry.keep_from(from) {
                self.keys.insert(rest);
            }
        }
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
        let expected = match prev {
            Some(v) => (v.create, v.version + 1),
            None => (main, 1),
        };
        assert_eq!(idx.put(key, Revision::new(main, 0), 0), expected);
        assert_eq!(
            idx.get(key, main).map(|v| (v.create, v.version)),
            Some(expected)
        );
        idx.current = main;
    }

    fn delete(idx: &mut Index, key: &[u8], main: i64) {
        idx.push(
            key,
            KeyEvent {
                rev: Revision::new(main, 0),
                kind: EventKind::Tombstone,
            },
        );
    }

    #[test]
    fn versions_and_generations() {
        let mut idx = Index::default();
        put(&mut idx, b"a", 2);
        put(&mut idx, b"a", 3);
        delete(&mut idx, b"a", 4);
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

    #[test]
    fn events_round_trip_through_their_encoding() {
        let put = |main, sub, create, version, lease| {
            Stored::pack(KeyEvent {
                rev: Revision::new(main, sub),
                kind: EventKind::Put {
                    create,
                    version,
                    lease,
                },
            })
        };
        let cases = [
            put(2, 0, 2, 1, 0),
            // A create above main exercises the zigzag; leases are any i64.
            put(9, 3, 12, 4, 0x694d_7f8a_1234_5678),
            Stored::pack(KeyEvent {
                rev: Revision::new(1 << 40, 70_000),
                kind: EventKind::Tombstone,
            }),
            put(i64::MAX, i64::MAX, i64::MIN, i64::MAX, -1),
        ];
        let mut entry = Entry::new(&[0xff; 300], &cases[0]);
        for c in &cases[1..] {
            entry.push(c);
        }
        assert_eq!(entry.key(), &[0xff; 300][..]);
        let decoded: Vec<Stored> = entry.events().map(|(_, e)| e).collect();
        assert_eq!(decoded, cases);
        let events = entry.events();
        for c in &cases {
            let found = events.last_at_or_below(c.main);
            assert_eq!(found.as_ref().map(|f| f.is_put()), Some(c.is_put()));
            assert_eq!(found.and_then(|f| f.decode()), Some(*c));
        }
        assert!(events.last_at_or_below(1).is_none());
        for c in &cases {
            let mut buf = Vec::new();
            c.encode(&mut buf);
            assert_eq!(buf.len(), c.encoded_len());
        }
        let usual = Entry::new(b"0000000000000001", &cases[0]);
        assert_eq!(usual.0.len(), 1 + 16 + 6, "a key's first put takes 6 bytes");
    }

    #[test]
    fn a_key_written_many_times_keeps_every_revision() {
        let mut idx = Index::default();
        for main in 2..20_002 {
            put(&mut idx, b"hot", main);
        }
        assert_eq!(idx.get(b"hot", 2).map(|v| v.version), Some(1));
        assert_eq!(idx.get(b"hot", 10_001).map(|v| v.version), Some(10_000));
        assert_eq!(idx.get(b"hot", 20_001).map(|v| v.version), Some(20_000));
        // Grown by half at a time: amortized constant work per write, bounded slack.
        let (len, cap) = idx
            .keys
            .get(b"hot".as_slice())
            .map(|e| (e.0.len(), e.0.capacity()))
            .unwrap_or_default();
        assert!(len > 20_000 * 5 && cap <= len * 2, "{len} bytes in {cap}");
        let dropped = idx.compact(15_000);
        assert_eq!(dropped.len(), 14_998);
        assert_eq!(dropped.first(), Some(&Revision::new(2, 0)));
        assert_eq!(dropped.last(), Some(&Revision::new(14_999, 0)));
        assert_eq!(idx.get(b"hot", 15_000).map(|v| v.version), Some(14_999));
        assert_eq!(idx.get(b"hot", 20_001).map(|v| v.create), Some(2));
        put(&mut idx, b"hot", 20_002);
        assert_eq!(idx.get(b"hot", 20_002).map(|v| v.version), Some(20_001));
    }

    #[test]
    fn compaction_drops_keys_whose_history_ends_in_a_delete() {
        let mut idx = Index::default();
        put(&mut idx, b"a", 2);
        put(&mut idx, b"b", 3);
        delete(&mut idx, b"a", 4);
        idx.current = 4;
        assert_eq!(
            idx.compact(5),
            vec![Revision::new(2, 0), Revision::new(4, 0)]
        );
        assert_eq!(idx.key_count(), 1);
        assert_eq!(idx.range(b"\0", b"\0", 5).len(), 1);
        assert_eq!(idx.compacted, 5);
    }

    /// The index's heap bytes per key, measured, for a million-key store in miniature: 100,000
    /// keys of 16 bytes written twice (as `make bench-scale` does). etcd's tree index holds,
    /// per such key, a 64-byte keyIndex, the 16-byte key, a 48-byte generation, 32 bytes of
    /// revisions and about 23 bytes of B-tree items: about 183 bytes. A map from boxed keys to
    /// vectors of 40-byte events took 174; one block per key with packed events, 84.
    #[test]
    fn memory_per_key_is_at_most_half_of_etcds() {
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
        assert!(per_key <= 183.0 / 2.0, "{per_key:.1} bytes per key");
        assert_eq!(idx.key_count(), KEYS);
    }
}
