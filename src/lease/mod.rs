//! The lease table: granted leases, the keys attached to them, and (on the leader) their deadlines.
//!
//! Invariants:
//! - The replicated part of a lease (ID, granted TTL, checkpointed remaining TTL) changes only
//!   while a command is applied, and its row in the `lease` column family goes into that command's
//!   batch; every member holds the same table. Attached keys are not stored: they are derived
//!   from the keys' own `lease` field, tracked as puts and deletes apply and rebuilt at start-up.
//! - Deadlines are volatile and leader-local. Only a primary lessor has them: it was promoted
//!   for one raft term, by a member that led in that term and had applied everything committed
//!   before it. Renewals, time-to-live and expiry name the caller's current term and are refused
//!   for any other, so a lessor left over from an earlier term never answers or revokes.
//! - Promotion gives every lease its full TTL again (or its checkpointed remaining TTL) plus an
//!   extension, as etcd does; demotion drops every deadline.
//! - Time comes from a [`Clock`], so tests move time by hand.

pub mod clock;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::storage::{Batch, Cf, Storage, StorageError};
pub use clock::{Clock, ManualClock, SystemClock};

/// The largest TTL a lease may be granted with, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How long an expired lease waits before it is reported expired again (its revoke may be lost).
pub const EXPIRED_RETRY: Duration = Duration::from_secs(3);

/// The most leases revoked per second; more expiring at once are spread out.
pub const REVOKE_RATE: usize = 1000;

/// A deterministic refusal of a lease command, returned identically by every member.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum LeaseError {
    /// No lease has this ID.
    #[error("requested lease not found")]
    NotFound,
    /// A lease with this ID exists already.
    #[error("lease already exists")]
    Exists,
}

/// This lessor is not primary for the caller's raft term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the lessor is not primary for this term")]
pub struct NotPrimary;

/// The answer to a keep-alive on this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed for its granted TTL; `clear_checkpoint` when a checkpointed remaining TTL must now
    /// be cleared through the log (a renewed lease has its full TTL again).
    Renewed {
        /// The granted TTL, in seconds.
        ttl: i64,
        /// Whether the lease carries a checkpointed remaining TTL.
        clear_checkpoint: bool,
    },
    /// No such lease.
    NotFound,
    /// The lease has expired and its revoke is pending: wait for it, then ask again.
    Expired,
    /// This member does not hold deadlines (it is not the leader, or not yet caught up).
    NotPrimary,
}

/// A lease's remaining and granted TTL, as `LeaseTimeToLive` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeToLive {
    /// The lease ID.
    pub id: i64,
    /// Seconds left before it expires.
    pub remaining: i64,
    /// The TTL it was granted with.
    pub granted: i64,
    /// Its keys, sorted (only when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// The stored row of a lease.
#[derive(Debug, Clone, Copy)]
struct Record {
    id: i64,
    ttl: i64,
    remaining_ttl: i64,
}

#[derive(Debug, Default)]
struct Lease {
    ttl: i64,
    remaining_ttl: i64,
    keys: BTreeSet<Vec<u8>>,
    deadline: Option<Instant>,
    /// Reported expired by this primary; its revoke is pending.
    expired: bool,
}

impl Lease {
    /// The TTL a refresh starts from: a checkpointed remainder if there is one.
    fn refresh_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<i64, Lease>,
    /// Which lease each leased key is attached to.
    owner: HashMap<Vec<u8>, i64>,
    /// The raft term this lessor was promoted for; `None` when it is not primary.
    primary: Option<u64>,
    /// Deadlines in order; holds exactly the leases whose `deadline` is set.
    queue: BTreeSet<(Instant, i64)>,
}

impl Inner {
    fn set_deadline(&mut self, id: i64, deadline: Option<Instant>) {
        let Some(l) = self.leases.get_mut(&id) else {
            return;
        };
        if let Some(old) = l.deadline.take() {
            self.queue.remove(&(old, id));
        }
        l.deadline = deadline;
        if let Some(d) = deadline {
            self.queue.insert((d, id));
        }
    }

    fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.owner.remove(key) {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.remove(key);
            }
        }
    }
}

/// The lease table of one member.
#[derive(Debug)]
pub struct Lessor {
    storage: Storage,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// Bumped when a lease goes away or primacy changes (renewals waiting on an expired lease
    /// wake up on it).
    changed: tokio::sync::watch::Sender<u64>,
    /// Woken when a deadline is set, so the expiry task can sleep until the earliest one.
    deadline_set: tokio::sync::Notify,
}

/// A stored lease row: ID, granted TTL and checkpointed remaining TTL, 8 bytes big-endian each.
fn decode(raw: &[u8]) -> Result<Record, StorageError> {
    let field = |i: usize| -> Result<i64, StorageError> {
        raw.get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| StorageError::Corrupt {
                cf: "lease",
                detail: format!("a lease row of {} bytes, not 24", raw.len()),
            })
    };
    if raw.len() != 24 {
        return Err(StorageError::Corrupt {
            cf: "lease",
            detail: format!("a lease row of {} bytes, not 24", raw.len()),
        });
    }
    Ok(Record {
        id: field(0)?,
        ttl: field(1)?,
        remaining_ttl: field(2)?,
    })
}

/// A lease's stored row from its ID, granted TTL and remaining TTL (0 when never checkpointed).
pub fn encode_row(id: i64, ttl: i64, remaining_ttl: i64) -> Vec<u8> {
    encode(&Record {
        id,
        ttl,
        remaining_ttl,
    })
}

/// A stored lease row's ID, granted TTL and remaining TTL.
pub fn decode_row(raw: &[u8]) -> Result<(i64, i64, i64), StorageError> {
    decode(raw).map(|r| (r.id, r.ttl, r.remaining_ttl))
}

fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    for v in [r.id, r.ttl, r.remaining_ttl] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

impl Lessor {
    /// Opens the table stored in `storage`. Keys are attached afterwards with [`Lessor::load`].
    pub fn open(storage: Storage, clock: Arc<dyn Clock>) -> Result<Lessor, StorageError> {
        let lessor = Lessor {
            storage,
            clock,
            inner: Mutex::new(Inner::default()),
            changed: tokio::sync::watch::channel(0).0,
            deadline_set: tokio::sync::Notify::new(),
        };
        lessor.load(std::iter::empty())?;
        Ok(lessor)
    }

    /// Replaces the table with what storage holds and attaches `attached` (key, lease) pairs
    /// (at start-up and after a snapshot is installed). A primary lessor refreshes every deadline.
    pub fn load(
        &self,
        attached: impl IntoIterator<Item = (Vec<u8>, i64)>,
    ) -> Result<(), StorageError> {
        let mut leases = HashMap::new();
        self.storage.scan(Cf::Lease, &[], None, |_, v| {
            let r = decode(v)?;
            leases.insert(
                r.id,
                Lease {
                    ttl: r.ttl,
                    remaining_ttl: r.remaining_ttl,
                    ..Default::default()
                },
            );
            Ok(true)
        })?;
        let mut owner = HashMap::new();
        for (key, id) in attached {
            if let Some(l) = leases.get_mut(&id) {
                l.keys.insert(key.clone());
                owner.insert(key, id);
            }
        }
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        let primary = inner.primary;
        *inner = Inner {
            leases,
            owner,
            primary,
            queue: BTreeSet::new(),
        };
        if primary.is_some() {
            let ids: Vec<(i64, i64)> = inner
                .leases
                .iter()
                .map(|(id, l)| (*id, l.refresh_ttl()))
                .collect();
            for (id, ttl) in ids {
                inner.set_deadline(id, Some(now + secs(ttl)));
            }
        }
        drop(inner);
        self.bump();
        Ok(())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a lease with this ID exists (expired leases exist until revoked).
    pub fn exists(&self, id: i64) -> bool {
        self.inner.lock().leases.contains_key(&id)
    }

    /// Grants lease `id` with `ttl` seconds (apply only; the TTL is final, raised by the proposer).
    pub fn grant(&self, batch: &mut Batch, id: i64, ttl: i64) -> Result<(), LeaseError> {
        let mut inner = self.inner.lock();
        if id == 0 || inner.leases.contains_key(&id) {
            // ID 0 means "no lease"; the proposer always picks a real one.
            return Err(if id == 0 {
                LeaseError::NotFound
            } else {
                LeaseError::Exists
            });
        }
        let record = Record {
            id,
            ttl,
            remaining_ttl: 0,
        };
        batch.put(Cf::Lease, id.to_be_bytes().to_vec(), encode(&record));
        inner.leases.insert(
            id,
            Lease {
                ttl,
                ..Default::default()
            },
        );
        if inner.primary.is_some() {
            let deadline = self.clock.now() + secs(ttl);
            inner.set_deadline(id, Some(deadline));
            drop(inner);
            self.deadline_set.notify_one();
        }
        Ok(())
    }

    /// The keys attached to lease `id`, sorted; `None` when there is no such lease.
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.inner
            .lock()
            .leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
    }

    /// Removes lease `id` (apply only, after its keys were deleted).
    pub fn remove(&self, batch: &mut Batch, id: i64) -> Result<(), LeaseError> {
        let mut inner = self.inner.lock();
        inner.set_deadline(id, None);
        let lease = inner.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        for k in &lease.keys {
            inner.owner.remove(k);
        }
        drop(inner);
        batch.delete(Cf::Lease, id.to_be_bytes().to_vec());
        self.bump();
        Ok(())
    }

    /// Records the keys a command changed: a put attaches its key to the put's lease (detaching
    /// it from any other), a delete detaches it.
    pub fn track<'k>(&self, changes: impl IntoIterator<Item = (&'k [u8], Option<i64>)>) {
        let mut inner = self.inner.lock();
        for (key, lease) in changes {
            let lease = lease.unwrap_or(0);
            if inner.owner.get(key) == Some(&lease) {
                continue;
            }
            inner.detach(key);
            if lease != 0 {
                if let Some(l) = inner.leases.get_mut(&lease) {
                    l.keys.insert(key.to_vec());
                    inner.owner.insert(key.to_vec(), lease);
                }
            }
        }
    }

    /// Records a checkpointed remaining TTL for lease `id` (apply only); unknown IDs are ignored.
    pub fn checkpoint(&self, batch: &mut Batch, id: i64, remaining_ttl: i64) {
        let mut inner = self.inner.lock();
        if let Some(l) = inner.leases.get_mut(&id) {
            l.remaining_ttl = remaining_ttl.max(0);
            let record = Record {
                id,
                ttl: l.ttl,
                remaining_ttl: l.remaining_ttl,
            };
            batch.put(Cf::Lease, id.to_be_bytes().to_vec(), encode(&record));
        }
    }

    /// Every lease ID, soonest expiry first as etcd lists them (by ID where no deadline is
    /// known, i.e. on a member that is not primary).
    pub fn leases(&self) -> Vec<i64> {
        let inner = self.inner.lock();
        let mut ids: Vec<(Option<Instant>, i64)> = inner
            .leases
            .iter()
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        // `None` (no deadline) sorts after every deadline.
        ids.sort_unstable_by_key(|(d, id)| (d.is_none(), *d, *id));
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// How many leases exist.
    pub fn len(&self) -> usize {
        self.inner.lock().leases.len()
    }

    /// Whether no lease exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raft term this lessor is primary for, if it is.
    pub fn primary_term(&self) -> Option<u64> {
        self.inner.lock().primary
    }

    /// Becomes primary for raft term `term`: every lease expires `extend` after its (remaining)
    /// TTL from now. When
    /// more than [`REVOKE_RATE`] leases exist, expiries that pile up in one second are spread so
    /// that at most three quarters of the revoke rate fall in any second.
    pub fn promote(&self, extend: Duration, term: u64) {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        inner.primary = Some(term);
        let mut planned: Vec<(Instant, i64)> = inner
            .leases
            .iter()
            .map(|(id, l)| (now + extend + secs(l.refresh_ttl()), *id))
            .collect();
        if planned.len() >= REVOKE_RATE {
            planned.sort_unstable();
            spread(&mut planned, REVOKE_RATE * 3 / 4);
        }
        for (d, id) in planned {
            inner.set_deadline(id, Some(d));
        }
        for l in inner.leases.values_mut() {
            l.expired = false;
        }
        drop(inner);
        self.bump();
        self.deadline_set.notify_one();
    }

    /// Stops being primary: deadlines are dropped until the next promotion.
    pub fn demote(&self) {
        let mut inner = self.inner.lock();
        inner.primary = None;
        inner.queue.clear();
        for l in inner.leases.values_mut() {
            l.deadline = None;
            l.expired = false;
        }
        drop(inner);
        self.bump();
    }

    /// Renews lease `id` for its granted TTL (the keep-alive of the leader of raft term `term`).
    pub fn renew(&self, id: i64, term: u64) -> Renewal {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        if inner.primary != Some(term) {
            return Renewal::NotPrimary;
        }
        let Some(l) = inner.leases.get(&id) else {
            return Renewal::NotFound;
        };
        if l.expired || l.deadline.is_some_and(|d| d <= now) {
            return Renewal::Expired;
        }
        let ttl = l.ttl;
        let clear_checkpoint = l.remaining_ttl > 0;
        inner.set_deadline(id, Some(now + secs(ttl)));
        Renewal::Renewed {
            ttl,
            clear_checkpoint,
        }
    }

    /// The remaining and granted TTL of lease `id` (with its keys when `with_keys`), as the
    /// primary of raft term `term` knows them; `Ok(None)` for no lease.
    pub fn time_to_live(
        &self,
        id: i64,
        with_keys: bool,
        term: u64,
    ) -> Result<Option<TimeToLive>, NotPrimary> {
        let now = self.clock.now();
        let inner = self.inner.lock();
        if inner.primary != Some(term) {
            return Err(NotPrimary);
        }
        Ok(inner.leases.get(&id).map(|l| {
            // etcd truncates the remaining duration to whole seconds.
            let remaining = match l.deadline {
                _ if l.expired => 0,
                Some(d) => d.saturating_duration_since(now).as_secs() as i64,
                None => l.ttl,
            };
            TimeToLive {
                id,
                remaining,
                granted: l.ttl,
                keys: if with_keys {
                    l.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            }
        }))
    }

    /// Up to `limit` leases whose deadline has passed, earliest first. Each is reported again
    /// after [`EXPIRED_RETRY`] if it still exists (its revoke may have been lost). Empty unless
    /// primary for raft term `term`.
    pub fn expired(&self, limit: usize, term: u64) -> Vec<i64> {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        if inner.primary != Some(term) {
            return Vec::new();
        }
        let due: Vec<i64> = inner
            .queue
            .iter()
            .take_while(|(d, _)| *d <= now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        for id in &due {
            inner.set_deadline(*id, Some(now + EXPIRED_RETRY));
            if let Some(l) = inner.leases.get_mut(id) {
                l.expired = true;
            }
        }
        due
    }

    /// The earliest deadline, if this lessor is primary and holds any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.inner.lock().queue.first().map(|(d, _)| *d)
    }

    /// The remaining TTL, in whole seconds rounded up, of every lease whose TTL is longer than
    /// `min_ttl` (the checkpoints the primary of raft term `term` proposes). As etcd, leases that
    /// have expired or have at least their full TTL left are skipped. Empty unless primary.
    pub fn checkpoints(&self, min_ttl: Duration, term: u64) -> Vec<(i64, i64)> {
        let now = self.clock.now();
        let inner = self.inner.lock();
        if inner.primary != Some(term) {
            return Vec::new();
        }
        let mut out: Vec<(i64, i64)> = inner
            .leases
            .iter()
            .filter(|(_, l)| secs(l.ttl) > min_ttl && !l.expired)
            .filter_map(|(id, l)| {
                let left = l.deadline?.checked_duration_since(now)?;
                let left = left.as_secs_f64().ceil() as i64;
                (left > 0 && left < l.ttl).then_some((*id, left))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// A receiver that changes when a lease is removed or primacy changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves when a deadline has been set since the last call (new grants, promotion).
    pub async fn deadline_set(&self) {
        self.deadline_set.notified().await;
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// Pushes deadlines (sorted) later so that no more than `per_second` fall in any one-second
/// window that starts at a deadline.
fn spread(planned: &mut [(Instant, i64)], per_second: usize) {
    let per_second = per_second.max(1);
    let mut window: Option<Instant> = None;
    let mut count = 0usize;
    for entry in planned.iter_mut() {
        let start = match window {
            Some(w) if entry.0 < w + Duration::from_secs(1) => w,
            _ => {
                count = 0;
                entry.0
            }
        };
        count += 1;
        if count > per_second {
            let next = start + Duration::from_secs(1);
            window = Some(next);
            count = 1;
            entry.0 = entry.0.max(next);
        } else {
            window = Some(start);
            entry.0 = entry.0.max(start);
        }
    }
}

#[cfg(test)]
mod tests;
