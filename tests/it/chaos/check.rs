//! The checkers run on every recorded history.
//!
//! The reference watcher (from revision 1, whole prefix, previous pairs) gives the store's whole
//! history: one group of events per revision. The checks:
//! - **Watch guarantees**, for every watcher: ordered (revisions increase), unique (no event
//!   twice), atomic (a revision's events arrive in one response), identical to the reference's
//!   events of that revision (previous pairs included), reliable (no revision of its range
//!   missing between where it started and the last revision of its range), resumable (nothing
//!   below its start revision), never cancelled.
//! - **A complete history**: every revision from the first write to the final one is in the
//!   reference, each made by exactly one operation (found by its unique values) or by a lease's
//!   end, and never twice.
//! - **etcd's model**, replayed revision by revision: every event's version, create and mod
//!   revisions and previous pair follow from the state before it; every answered read, failed
//!   txn, empty delete and revoke matches the state at its header revision; a txn's compare held
//!   (or failed) on the state it ran on.
//! - **No lost write**: every acknowledged put, successful txn and non-empty delete is in the
//!   history at the revision its answer gave; nothing refused is.
//! - **Leases**: a lease's keys go in one revision, all at once, exactly once; no key is attached
//!   to a lease after its end; a lease nobody revoked ends no earlier than its TTL after the
//!   grant was sent.
//! - **Linearizability**: the revisions are the witness order (an operation's effects are
//!   visible to whoever reads at or above its revision, which the model check above holds), so
//!   the history is linearizable when that order also respects real time: an operation that
//!   finished before another started has a smaller revision (or, for two reads, not a larger
//!   one). Writes of unknown outcome that happened take part from their start on. Serializable
//!   reads are checked against the model only: they may be stale.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::workload::{Event, History, Kv, Op, Outcome, Req, Resp, WatchLog};

/// The checks' findings for one history.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Operations recorded.
    pub ops: usize,
    /// Operations answered.
    pub answered: usize,
    /// Writes whose outcome is unknown.
    pub unknown: usize,
    /// Acknowledged writes missing from the history.
    pub lost: usize,
    /// Revisions in the history.
    pub revisions: usize,
    /// Leases that ended by expiry (not by a revoke).
    pub expired: usize,
    /// Watch events received, over every watcher.
    pub watch_events: usize,
    /// Watch reconnects, over every watcher.
    pub watch_resumes: usize,
    /// Everything wrong, one line each.
    pub violations: Vec<String>,
}

/// One revision's events as a watcher received them.
struct Group<'a> {
    at: u64,
    events: Vec<&'a Event>,
}

/// Groups a watcher's events by revision, checking order, uniqueness and atomicity.
fn groups_of<'a>(log: &'a WatchLog, v: &mut Vec<String>) -> BTreeMap<i64, Group<'a>> {
    let name = log.spec.name;
    let mut groups: BTreeMap<i64, Group<'a>> = BTreeMap::new();
    let mut last = 0i64;
    let mut seen: BTreeSet<(i64, &str)> = BTreeSet::new();
    for (i, b) in log.batches.iter().enumerate() {
        for (j, e) in b.events.iter().enumerate() {
            if !seen.insert((e.rev, e.key.as_str())) {
                v.push(format!(
                    "watch {name}: event {}@{} delivered twice",
                    e.key, e.rev
                ));
                continue;
            }
            if e.rev < last || (e.rev == last && j == 0 && i > 0) {
                v.push(format!(
                    "watch {name}: revision {} after {last} ({})",
                    e.rev,
                    if e.rev == last {
                        "a revision split across responses"
                    } else {
                        "out of order"
                    }
                ));
            }
            if log.floor > 0 && e.rev < log.floor {
                v.push(format!(
                    "watch {name}: event at revision {} below where it started ({})",
                    e.rev, log.floor
                ));
            }
            if !log.spec.covers(&e.key) {
                v.push(format!(
                    "watch {name}: event for {} outside its range",
                    e.key
                ));
            }
            last = last.max(e.rev);
            groups
                .entry(e.rev)
                .or_insert_with(|| Group {
                    at: b.at,
                    events: Vec::new(),
                })
                .events
                .push(e);
        }
    }
    for b in &log.broken {
        v.push(format!("watch {name}: {b}"));
    }
    groups
}

/// What the model expects an operation's events to be.
fn expected_puts(op: &Op) -> Vec<(&str, &str, i64)> {
    match &op.req {
        Req::Put { key, value, lease } => vec![(key.as_str(), value.as_str(), *lease)],
        Req::Txn { puts, .. } => puts
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str(), 0))
            .collect(),
        _ => Vec::new(),
    }
}

fn short(v: &str) -> &str {
    v.char_indices().nth(40).map_or(v, |(i, _)| &v[..i])
}

/// The replayed store.
#[derive(Default)]
struct Model {
    state: BTreeMap<String, Kv>,
    /// Lease → the revision its keys went.
    ended: HashMap<i64, i64>,
}

impl Model {
    fn keys_of(&self, lease: i64) -> BTreeSet<&str> {
        self.state
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.key.as_str())
            .collect()
    }

    /// Checks a read-like answer against the state (the state at its revision).
    fn check_read(&self, op: &Op, resp: &Resp, v: &mut Vec<String>) {
        let at = resp.rev();
        match (&op.req, resp) {
            (Req::Get { key, .. }, Resp::Read { kvs, .. }) => {
                let want: Vec<Kv> = self.state.get(key).cloned().into_iter().collect();
                if *kvs != want {
                    v.push(format!(
                        "get {key} at revision {at} returned {kvs:?}, the history has {want:?}"
                    ));
                }
            }
            (Req::List { .. }, Resp::Read { kvs, .. }) => {
                let want: Vec<Kv> = self.state.values().cloned().collect();
                if *kvs != want {
                    v.push(format!(
                        "list at revision {at} returned {} pairs {:?}, the history has {} {:?}",
                        kvs.len(),
                        kvs.iter().map(|k| (&k.key, k.mod_rev)).collect::<Vec<_>>(),
                        want.len(),
                        want.iter().map(|k| (&k.key, k.mod_rev)).collect::<Vec<_>>()
                    ));
                }
            }
            (
                Req::Txn {
                    key,
                    expect_mod,
                    puts,
                },
                Resp::Txn { kvs, .. },
            ) => {
                let current = self.state.get(key).map(|kv| kv.mod_rev).unwrap_or(0);
                if current == *expect_mod {
                    v.push(format!(
                        "txn on {key} failed at revision {at} though its mod revision was {current} as compared"
                    ));
                }
                let want: Vec<Kv> = std::iter::once(key)
                    .chain(puts.iter().map(|(k, _)| k))
                    .filter_map(|k| self.state.get(k).cloned())
                    .collect();
                if *kvs != want {
                    v.push(format!(
                        "failed txn's reads at revision {at} returned {kvs:?}, the history has {want:?}"
                    ));
                }
            }
            (Req::Delete { key }, Resp::Delete { .. }) if self.state.contains_key(key) => {
                v.push(format!(
                    "delete of {key} at revision {at} deleted nothing, but the key existed"
                ));
            }
            (Req::Revoke { id }, Resp::Revoke { .. }) => {
                let left = self.keys_of(*id);
                if !left.is_empty() {
                    v.push(format!(
                        "lease {id:x} revoked at revision {at} still holds {left:?}"
                    ));
                }
            }
            _ => {}
        }
    }

    /// Checks each event against the state before it, then applies it.
    fn apply(&mut self, rev: i64, events: &[&Event], v: &mut Vec<String>) {
        for e in events {
            let pre = self.state.get(&e.key);
            if let Some(prev) = &e.prev {
                if Some(prev) != pre {
                    v.push(format!(
                        "event {}@{rev}: previous pair {prev:?}, the history has {pre:?}",
                        e.key
                    ));
                }
            } else if pre.is_some() {
                v.push(format!(
                    "event {}@{rev}: no previous pair given though the key existed",
                    e.key
                ));
            }
            if e.put {
                let Some(kv) = &e.kv else {
                    v.push(format!("put event {}@{rev} without its pair", e.key));
                    continue;
                };
                let (create, version) = match pre {
                    Some(p) => (p.create_rev, p.version + 1),
                    None => (rev, 1),
                };
                if kv.mod_rev != rev || kv.create_rev != create || kv.version != version {
                    v.push(format!(
                        "put event {}@{rev}: mod {} create {} version {}, the model says {rev} {create} {version}",
                        e.key, kv.mod_rev, kv.create_rev, kv.version
                    ));
                }
                if kv.lease != 0 {
                    if let Some(end) = self.ended.get(&kv.lease) {
                        v.push(format!(
                            "put {}@{rev} attached to lease {:x}, which ended at revision {end}",
                            e.key, kv.lease
                        ));
                    }
                }
                self.state.insert(e.key.clone(), kv.clone());
            } else {
                if pre.is_none() {
                    v.push(format!(
                        "delete event {}@{rev} of a key that did not exist",
                        e.key
                    ));
                }
                self.state.remove(&e.key);
            }
        }
    }
}

/// Runs every check on `h`.
pub fn check(h: &History) -> Report {
    let mut r = Report {
        ops: h.ops.len(),
        ..Report::default()
    };
    let mut v = Vec::new();
    let Some(reference) = h.watches.first() else {
        r.violations.push("no reference watcher".to_string());
        return r;
    };
    for w in &h.watches {
        r.watch_events += w.batches.iter().map(|b| b.events.len()).sum::<usize>();
        r.watch_resumes += w.resumes;
    }
    let groups = groups_of(reference, &mut v);
    r.revisions = groups.len();

    // A complete history: every revision up to the final one.
    let missing: Vec<i64> = (h.start_revision + 1..=h.final_revision)
        .filter(|x| !groups.contains_key(x))
        .collect();
    if !missing.is_empty() {
        v.push(format!(
            "reference watch: {} revisions missing up to {}, e.g. {:?}",
            missing.len(),
            h.final_revision,
            &missing[..missing.len().min(5)]
        ));
    }

    // Indexes over the operations.
    let mut by_value: HashMap<&str, usize> = HashMap::new();
    let mut acked_delete_at: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut unknown_deletes: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut grants: HashMap<i64, usize> = HashMap::new();
    let mut revokes: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut reads: Vec<(i64, usize)> = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        match &op.outcome {
            Outcome::Ok(_) => r.answered += 1,
            Outcome::Unknown(_) if op.req.writes() => r.unknown += 1,
            _ => {}
        }
        for (_, value, _) in expected_puts(op) {
            if by_value.insert(value, i).is_some() {
                v.push(format!("workload: value {} used twice", short(value)));
            }
        }
        match (&op.req, &op.outcome) {
            (Req::Delete { .. }, Outcome::Ok(Resp::Delete { rev, deleted })) if *deleted > 0 => {
                acked_delete_at.entry(*rev).or_default().push(i)
            }
            (Req::Delete { key }, Outcome::Unknown(_)) => {
                unknown_deletes.entry(key.as_str()).or_default().push(i)
            }
            (Req::Grant { .. }, Outcome::Ok(Resp::Grant { id, .. })) => {
                grants.insert(*id, i);
            }
            (Req::Revoke { id }, _) => revokes.entry(*id).or_default().push(i),
            _ => {}
        }
        if let Outcome::Ok(resp) = &op.outcome {
            let read_like = match (&op.req, resp) {
                (Req::Get { .. } | Req::List { .. }, _) => true,
                (_, Resp::Txn { succeeded, .. }) => !succeeded,
                (_, Resp::Delete { deleted, .. }) => *deleted == 0,
                (Req::Revoke { .. }, _) => true,
                _ => false,
            };
            if read_like {
                reads.push((resp.rev(), i));
            }
        }
    }
    reads.sort_unstable();
    // A revision that deletes one key, with deletes of unknown outcome on it, goes to the one
    // that started first: the fewest operations finished before it, the weakest real-time claim.
    for ops in unknown_deletes.values_mut() {
        ops.sort_by_key(|&i| std::cmp::Reverse(h.ops[i].start));
    }

    // The last revision each lease had a key attached by a put: a lease cannot have ended
    // before it (used to tell a lease's end from a delete of its only key).
    let mut last_attach: HashMap<i64, i64> = HashMap::new();
    for (&rev, g) in &groups {
        for e in &g.events {
            if let Some(kv) = e.kv.as_ref().filter(|kv| kv.lease != 0) {
                last_attach.insert(kv.lease, rev);
            }
        }
    }

    // Replay, attributing each revision to what made it.
    let mut model = Model::default();
    let mut applied_at: Vec<Option<i64>> = vec![None; h.ops.len()];
    let mut lease_end_write: Vec<(i64, usize)> = Vec::new(); // (revision, revoke op) for real time
    let mut next_read = 0;
    let check_reads_below =
        |model: &Model, upto: i64, next_read: &mut usize, v: &mut Vec<String>| {
            while *next_read < reads.len() && reads[*next_read].0 < upto {
                let (_, i) = reads[*next_read];
                if let Outcome::Ok(resp) = &h.ops[i].outcome {
                    model.check_read(&h.ops[i], resp, v);
                }
                *next_read += 1;
            }
        };
    for (&rev, g) in &groups {
        check_reads_below(&model, rev, &mut next_read, &mut v);
        let puts: Vec<&&Event> = g.events.iter().filter(|e| e.put).collect();
        if !puts.is_empty() {
            let owners: BTreeSet<Option<usize>> = puts
                .iter()
                .map(|e| {
                    e.kv.as_ref()
                        .and_then(|kv| by_value.get(kv.value.as_str()).copied())
                })
                .collect();
            let owner = match owners.iter().collect::<Vec<_>>().as_slice() {
                [Some(i)] => *i,
                _ => {
                    v.push(format!(
                        "revision {rev} holds values no single operation wrote: {:?}",
                        puts.iter()
                            .map(|e| e.kv.as_ref().map(|kv| short(&kv.value).to_string()))
                            .collect::<Vec<_>>()
                    ));
                    model.apply(rev, &g.events, &mut v);
                    continue;
                }
            };
            let op = &h.ops[owner];
            let want = expected_puts(op);
            let got: Vec<(&str, &str, i64)> = g
                .events
                .iter()
                .map(|e| match &e.kv {
                    Some(kv) if e.put => (e.key.as_str(), kv.value.as_str(), kv.lease),
                    _ => (e.key.as_str(), "<delete>", 0),
                })
                .collect();
            if got != want {
                v.push(format!(
                    "revision {rev}: events {:?} are not the operation's {:?}",
                    got.iter()
                        .map(|(k, v, l)| (*k, short(v), *l))
                        .collect::<Vec<_>>(),
                    want.iter()
                        .map(|(k, v, l)| (*k, short(v), *l))
                        .collect::<Vec<_>>()
                ));
            }
            if let Req::Txn {
                key, expect_mod, ..
            } = &op.req
            {
                let current = model.state.get(key).map(|kv| kv.mod_rev).unwrap_or(0);
                if current != *expect_mod {
                    v.push(format!(
                        "txn applied at revision {rev} though {key}'s mod revision was {current}, not {expect_mod}"
                    ));
                }
            }
            match &op.outcome {
                Outcome::Ok(resp) => {
                    let ok = match resp {
                        Resp::Put { rev: at } => *at == rev,
                        Resp::Txn {
                            rev: at, succeeded, ..
                        } => *at == rev && *succeeded,
                        _ => false,
                    };
                    if !ok {
                        v.push(format!(
                            "operation answered {resp:?} but applied at revision {rev}"
                        ));
                    }
                }
                Outcome::Refused(e) => v.push(format!(
                    "operation refused ({e}) but applied at revision {rev}"
                )),
                Outcome::Unknown(_) => {}
            }
            if let Some(before) = applied_at[owner] {
                v.push(format!(
                    "operation applied twice, at revisions {before} and {rev}"
                ));
            }
            applied_at[owner] = Some(rev);
            model.apply(rev, &g.events, &mut v);
            continue;
        }

        // Deletes only: a delete operation, or a lease's end.
        let keys: BTreeSet<&str> = g.events.iter().map(|e| e.key.as_str()).collect();
        let mut attributed = false;
        if let Some(ops) = acked_delete_at.get(&rev) {
            match ops.as_slice() {
                [i] => {
                    if let Req::Delete { key } = &h.ops[*i].req {
                        if keys.len() != 1 || !keys.contains(key.as_str()) {
                            v.push(format!(
                                "delete of {key} answered at revision {rev}, which deletes {keys:?}"
                            ));
                        }
                    }
                    applied_at[*i] = Some(rev);
                    attributed = true;
                }
                many => v.push(format!(
                    "{} deletes answered with revision {rev}",
                    many.len()
                )),
            }
        }
        // What could have ended a lease at this revision: a revoke answered with this revision,
        // else one of unknown outcome sent before the event arrived (a refused one proves the
        // lease had already gone, so it explains nothing).
        let cause = |lease: i64| {
            let ops = revokes.get(&lease)?;
            ops.iter()
                .copied()
                .find(|&i| matches!(&h.ops[i].outcome, Outcome::Ok(resp) if resp.rev() == rev))
                .or_else(|| {
                    ops.iter().copied().find(|&i| {
                        matches!(h.ops[i].outcome, Outcome::Unknown(_)) && h.ops[i].start <= g.at
                    })
                })
        };
        // The earliest a lease nobody revoked may expire: its TTL (as granted, when the server
        // raised it) after the grant was sent.
        let earliest = |lease: i64| {
            grants.get(&lease).map(|&gi| {
                let asked = match h.ops[gi].req {
                    Req::Grant { ttl } => ttl,
                    _ => 0,
                };
                let granted = match &h.ops[gi].outcome {
                    Outcome::Ok(Resp::Grant { ttl, .. }) => *ttl,
                    _ => 0,
                };
                let ttl = asked.max(granted);
                (h.ops[gi].start + ttl.max(0) as u64 * 1_000_000, ttl)
            })
        };
        if !attributed {
            let leases: BTreeSet<i64> = keys
                .iter()
                .map(|k| model.state.get(*k).map(|kv| kv.lease).unwrap_or(0))
                .collect();
            // One key, with a delete of unknown outcome on it sent before the event arrived: a
            // lease end only if nothing says otherwise (no early expiry, no later attachment).
            let deleting = keys.len() == 1
                && keys.iter().all(|k| {
                    unknown_deletes
                        .get(k)
                        .and_then(|ops| ops.last())
                        .is_some_and(|&i| h.ops[i].start <= g.at)
                });
            if let [lease] = leases.iter().copied().collect::<Vec<_>>().as_slice() {
                let lease = *lease;
                let revoke = cause(lease);
                let revoked_here =
                    revoke.is_some_and(|i| matches!(h.ops[i].outcome, Outcome::Ok(_)));
                let early = revoke.is_none() && earliest(lease).is_some_and(|(e, _)| g.at < e);
                let attached_later = last_attach.get(&lease).is_some_and(|&r| r > rev);
                // A revoke answered Ok at a later revision proves the lease outlived this one.
                let revoked_later = revokes.get(&lease).is_some_and(|ops| {
                    ops.iter().any(
                        |&i| matches!(&h.ops[i].outcome, Outcome::Ok(resp) if resp.rev() > rev),
                    )
                });
                let ends =
                    revoked_here || !(deleting && (early || attached_later || revoked_later));
                if lease != 0 && model.keys_of(lease) == keys && ends {
                    attributed = true;
                    if let Some(end) = model.ended.insert(lease, rev) {
                        v.push(format!(
                            "lease {lease:x} ended twice, at revisions {end} and {rev}"
                        ));
                    }
                    match revoke {
                        Some(i) => {
                            if revoked_here {
                                lease_end_write.push((rev, i));
                            } else {
                                // A revoke of unknown outcome that happened.
                                applied_at[i] = Some(rev);
                            }
                        }
                        None => {
                            r.expired += 1;
                            if let Some((e, ttl)) = earliest(lease) {
                                if g.at < e {
                                    v.push(format!(
                                        "lease {lease:x} (TTL {ttl} s) expired {} ms early",
                                        (e - g.at) / 1000
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        if !attributed && keys.len() == 1 {
            let key = keys.iter().next().copied().unwrap_or_default();
            let ops = unknown_deletes.get_mut(key);
            if let Some(ops) = ops.filter(|ops| ops.last().is_some_and(|&i| h.ops[i].start <= g.at))
            {
                if let Some(i) = ops.pop() {
                    applied_at[i] = Some(rev);
                    attributed = true;
                }
            }
        }
        if !attributed {
            v.push(format!(
                "revision {rev} deletes {keys:?}, which no operation or lease explains"
            ));
        }
        model.apply(rev, &g.events, &mut v);
    }
    check_reads_below(&model, i64::MAX, &mut next_read, &mut v);
    if let Some(&(rev, i)) = reads.iter().find(|(rev, _)| {
        *rev > h
            .final_revision
            .max(groups.keys().last().copied().unwrap_or(0))
    }) {
        v.push(format!(
            "{:?} answered at revision {rev}, beyond the history",
            h.ops[i].req
        ));
    }

    // A revoke answered Ok: the lease ended at that revision (its keys went there, or it had
    // none), and nothing may be attached to it afterwards.
    for ops in revokes.values() {
        for &i in ops {
            let (Req::Revoke { id }, Outcome::Ok(resp)) = (&h.ops[i].req, &h.ops[i].outcome) else {
                continue;
            };
            let at = resp.rev();
            if let Some(&end) = model.ended.get(id) {
                if end != at {
                    v.push(format!(
                        "lease {id:x} revoked (answer at revision {at}), but its keys went at revision {end}"
                    ));
                }
            }
            if let Some(&r) = last_attach.get(id) {
                if r > at {
                    v.push(format!(
                        "a key attached to lease {id:x} at revision {r}, after its revoke at {at}"
                    ));
                }
            }
        }
    }

    // No lost write.
    for (i, op) in h.ops.iter().enumerate() {
        let must = match (&op.req, &op.outcome) {
            (Req::Put { .. }, Outcome::Ok(_)) => true,
            (_, Outcome::Ok(Resp::Txn { succeeded, .. })) => *succeeded,
            (_, Outcome::Ok(Resp::Delete { deleted, .. })) => *deleted > 0,
            _ => false,
        };
        if must && applied_at[i].is_none() {
            r.lost += 1;
            if r.lost <= 10 {
                v.push(format!(
                    "acknowledged {:?} (answer {:?}) is not in the history: a lost write",
                    match &op.req {
                        Req::Put { key, value, .. } => format!("put {key}={}", short(value)),
                        other => format!("{other:?}"),
                    },
                    op.outcome
                ));
            }
        }
    }

    real_time(h, &applied_at, &lease_end_write, &mut v);

    // Every other watcher against the reference.
    for w in &h.watches[1..] {
        let mine = groups_of(w, &mut v);
        let name = w.spec.name;
        let from = w.from;
        // Revisions past the final read (leases expiring while the watchers stopped) may reach
        // one watcher and not another.
        for (rev, g) in mine.range(..=h.final_revision) {
            let Some(want) = groups.get(rev) else {
                v.push(format!(
                    "watch {name}: revision {rev} is not in the reference"
                ));
                continue;
            };
            let want: Vec<&Event> = want
                .events
                .iter()
                .copied()
                .filter(|e| w.spec.covers(&e.key))
                .collect();
            let same = want.len() == g.events.len()
                && want.iter().zip(&g.events).all(|(a, b)| {
                    a.key == b.key
                        && a.put == b.put
                        && a.kv == b.kv
                        && (!w.spec.prev_kv || a.prev == b.prev)
                });
            if !same {
                v.push(format!(
                    "watch {name}: revision {rev} has {:?}, the reference {:?}",
                    g.events, want
                ));
            }
        }
        if from <= 0 {
            continue;
        }
        if from > h.final_revision {
            continue;
        }
        let expected: Vec<i64> = groups
            .range(from..=h.final_revision)
            .filter(|(_, g)| g.events.iter().any(|e| w.spec.covers(&e.key)))
            .map(|(rev, _)| *rev)
            .collect();
        let lost: Vec<i64> = expected
            .iter()
            .copied()
            .filter(|rev| !mine.contains_key(rev))
            .collect();
        if !lost.is_empty() {
            v.push(format!(
                "watch {name} (from {from}): {} revisions of its range never delivered, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            ));
        }
    }
    r.violations = v;
    r
}

/// The real-time check: sweeps the operations by start time against the largest revision among
/// those that had finished.
fn real_time(
    h: &History,
    applied_at: &[Option<i64>],
    lease_end: &[(i64, usize)],
    v: &mut Vec<String>,
) {
    let revoke_wrote: BTreeSet<usize> = lease_end.iter().map(|(_, i)| *i).collect();
    // (start, end, revision, is a write)
    let mut points: Vec<(u64, u64, i64, bool)> = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        match &op.outcome {
            Outcome::Ok(resp) => {
                let serializable = matches!(
                    op.req,
                    Req::Get {
                        serializable: true,
                        ..
                    } | Req::List { serializable: true }
                );
                if serializable {
                    continue;
                }
                let write = match (&op.req, resp) {
                    (Req::Put { .. }, _) => true,
                    (_, Resp::Txn { succeeded, .. }) => *succeeded,
                    (_, Resp::Delete { deleted, .. }) => *deleted > 0,
                    (Req::Revoke { .. }, _) => revoke_wrote.contains(&i),
                    _ => false,
                };
                points.push((op.start, op.end, resp.rev(), write));
            }
            Outcome::Unknown(_) => {
                if let Some(rev) = applied_at[i] {
                    points.push((op.start, u64::MAX, rev, true));
                }
            }
            Outcome::Refused(_) => {}
        }
    }
    let mut by_end = points.clone();
    by_end.sort_by_key(|p| p.1);
    let mut by_start = points;
    by_start.sort_by_key(|p| p.0);
    let (mut i, mut max_write, mut max_read) = (0, i64::MIN, i64::MIN);
    let mut found = 0;
    for (start, end, rev, write) in by_start {
        while i < by_end.len() && by_end[i].1 < start {
            if by_end[i].3 {
                max_write = max_write.max(by_end[i].2);
            } else {
                max_read = max_read.max(by_end[i].2);
            }
            i += 1;
        }
        let bad = if write {
            max_write >= rev || max_read >= rev
        } else {
            max_write > rev || max_read > rev
        };
        if bad {
            found += 1;
            if found <= 20 {
                v.push(format!(
                    "linearizability: a {} [{start}..{}µs] at revision {rev} started after an operation at revision {} had finished",
                    if write { "write" } else { "read" },
                    if end == u64::MAX { "?".to_string() } else { end.to_string() },
                    max_write.max(max_read)
                ));
            }
        }
    }
    if found > 20 {
        v.push(format!(
            "linearizability: {} more real-time violations",
            found - 20
        ));
    }
}

#[cfg(test)]
mod tests;
