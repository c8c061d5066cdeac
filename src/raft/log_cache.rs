//! The newest raft log entries, kept in memory as they were appended, so that applying them
//! (and replicating them to followers that keep up) does not read them back from RocksDB and
//! decode them again.
//!
//! Invariants:
//! - The cache holds one contiguous run of indexes, and every entry in it is the entry the log
//!   in RocksDB holds at that index (or held before a purge removed it): appends are added only
//!   after their write succeeded, a truncate removes what it truncates before it writes, and an
//!   append over existing indexes replaces them and everything after them.
//! - It is bounded: at most [`MAX_BYTES`] bytes of encoded entries and [`MAX_ENTRIES`] entries;
//!   the oldest go first. A read it does not cover whole goes to RocksDB. The bounds are small
//!   on purpose: apply and followers that keep up read entries moments after their append, and
//!   a larger cache shows up one for one in the member's resident memory. For the same reason a
//!   log that has had no append for a while ([`LogCache::clear_if_idle`]) drops its cache.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use openraft::Entry;

use super::TypeConfig;

/// The most bytes of encoded entries kept.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// The most entries kept (see the module doc for why so few).
pub const MAX_ENTRIES: usize = 1024;

/// A contiguous run of the newest log entries; see the module's invariants.
#[derive(Default)]
pub struct LogCache {
    /// Entries with their encoded sizes, by ascending index without gaps.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
    /// When the last entry was added.
    last_push: Option<Instant>,
}

impl LogCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Adds an entry just written to the log (`size` is its encoded length). An entry at an
    /// index already held replaces it and drops everything after it; one that leaves a gap
    /// after the newest held starts the run anew.
    pub fn push(&mut self, entry: Entry<TypeConfig>, size: usize) {
        let index = entry.log_id.index;
        match (self.first_index(), self.last_index()) {
            (Some(first), Some(last)) if index >= first && index <= last => {
                self.remove_from(index);
            }
            (Some(_), Some(last)) if index == last.saturating_add(1) => {}
            (Some(_), Some(_)) => self.clear(),
            _ => {}
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        self.last_push = Some(Instant::now());
        while (self.bytes > MAX_BYTES || self.entries.len() > MAX_ENTRIES) && self.pop_front() {}
    }

    /// Drops the entries at `index` and after (a truncate).
    pub fn remove_from(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) && self.pop_back() {}
    }

    /// Drops the entries up to and including `index` (a purge).
    pub fn remove_through(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) && self.pop_front() {}
    }

    /// Drops the oldest entry and its bytes; false when there is none.
    fn pop_front(&mut self) -> bool {
        let popped = self.entries.pop_front();
        self.forget(popped)
    }

    /// Drops the newest entry and its bytes; false when there is none.
    fn pop_back(&mut self) -> bool {
        let popped = self.entries.pop_back();
        self.forget(popped)
    }

    fn forget(&mut self, popped: Option<(Entry<TypeConfig>, usize)>) -> bool {
        match popped {
            Some((_, size)) => {
                self.bytes -= size;
                true
            }
            None => false,
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops everything when nothing was added for `idle`: whoever reads entries moments after
    /// their append has read them by then. True when it dropped something.
    pub fn clear_if_idle(&mut self, idle: Duration) -> bool {
        let idle = self.last_push.is_some_and(|t| t.elapsed() >= idle);
        if idle && !self.entries.is_empty() {
            self.clear();
            return true;
        }
        false
    }

    /// Copies of the entries `[start, end)`, if the cache holds every one of them.
    pub fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || end > last.saturating_add(1) || start >= end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }

    /// The bytes of encoded entries held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn terms(c: &LogCache, start: u64, end: u64) -> Option<Vec<u64>> {
        c.get(start, end)
            .map(|v| v.iter().map(|e| e.log_id.leader_id.term).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut c = LogCache::default();
        for i in 5..10 {
            c.push(entry(1, i), 10);
        }
        assert_eq!(terms(&c, 5, 10), Some(vec![1; 5]));
        assert_eq!(terms(&c, 7, 9), Some(vec![1; 2]));
        assert_eq!(c.get(4, 6), None, "index 4 is not held");
        assert_eq!(c.get(8, 11), None, "index 10 is not held");
        assert_eq!(c.get(7, 7), None);
        assert_eq!(c.bytes(), 50);
    }

    #[test]
    fn an_append_over_held_indexes_replaces_them_and_what_follows() {
        let mut c = LogCache::default();
        for i in 1..6 {
            c.push(entry(1, i), 10);
        }
        c.push(entry(2, 3), 10);
        assert_eq!(terms(&c, 1, 4), Some(vec![1, 1, 2]));
        assert_eq!(c.get(3, 5), None, "4 and 5 of the old term are gone");
        assert_eq!(c.bytes(), 30);
    }

    #[test]
    fn truncate_purge_and_gaps_drop_what_they_must() {
        let mut c = LogCache::default();
        for i in 1..11 {
            c.push(entry(1, i), 1);
        }
        c.remove_from(8);
        assert_eq!(c.get(7, 9), None);
        assert!(c.get(1, 8).is_some());
        c.remove_through(3);
        assert_eq!(c.get(3, 5), None);
        assert!(c.get(4, 8).is_some());
        c.push(entry(2, 20), 1);
        assert_eq!(c.get(4, 8), None, "a gap starts the run anew");
        assert_eq!(terms(&c, 20, 21), Some(vec![2]));
        assert_eq!(c.bytes(), 1);
    }

    #[test]
    fn an_idle_cache_is_dropped_and_a_busy_one_kept() {
        let mut c = LogCache::default();
        assert!(!c.clear_if_idle(Duration::ZERO), "nothing to drop");
        for i in 1..4 {
            c.push(entry(1, i), 10);
        }
        assert!(!c.clear_if_idle(Duration::from_secs(3600)));
        assert!(c.get(1, 4).is_some());
        assert!(c.clear_if_idle(Duration::ZERO));
        assert_eq!(c.get(1, 2), None);
        assert_eq!(c.bytes(), 0);
        c.push(entry(1, 4), 10);
        assert_eq!(
            terms(&c, 4, 5),
            Some(vec![1]),
            "appends after a drop are cached again"
        );
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut c = LogCache::default();
        for i in 0..(MAX_ENTRIES as u64 + 100) {
            c.push(entry(1, i), 1);
        }
        assert_eq!(c.entries.len(), MAX_ENTRIES);
        assert_eq!(c.first_index(), Some(100));
        let big = MAX_BYTES / 4 + 1;
        for i in 0..4 {
            c.push(entry(1, MAX_ENTRIES as u64 + 100 + i), big);
        }
        assert!(c.bytes() <= MAX_BYTES);
        assert_eq!(c.entries.len(), 3);
    }
}
