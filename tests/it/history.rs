//! A client workload that records its history, and the checks run on it.
//!
//! Writers put unique values to a few keys, readers read them linearizably, one watcher follows
//! the prefix from revision 1 and resumes after every break from the revision after its last
//! event. Each client keeps a connection per endpoint and moves to the next endpoint when one
//! fails, as etcd's clients do.
//!
//! The checks use etcd's revisions as the witness order: every put has the revision the watch
//! reported it at, every read the revision of its header. The history is linearizable when that
//! order respects real time (an operation that finished before another started has a smaller
//! revision, or for two reads, not a larger one) and every read returns the value of the last
//! put at or below its revision. With the watch also shown to be complete (one event per
//! revision, in order, none missing) and every acknowledged put found in it at its own revision,
//! this checks: no linearizability violation, no lost acknowledged write, a gap-free watch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};
use parking_lot::Mutex;

/// The key prefix the workload uses.
pub const PREFIX: &str = "wl/";

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A put of `value` to `key`.
    Put {
        /// Key.
        key: String,
        /// Value (unique in the history).
        value: String,
    },
    /// A linearizable get of `key`.
    Get {
        /// Key.
        key: String,
    },
}

/// One operation: its interval (microseconds since the workload began) and outcome.
#[derive(Debug, Clone)]
pub struct Op {
    /// When it was sent.
    pub start: u64,
    /// When its answer arrived.
    pub end: u64,
    /// What it was.
    pub kind: Kind,
    /// `None` when it failed (a put may still have happened).
    pub ok: Option<Outcome>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The header revision.
    pub revision: i64,
    /// For a get: the value and mod revision found, if any.
    pub found: Option<(String, i64)>,
}

/// A watch event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its mod revision.
    pub revision: i64,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// A put (else a delete).
    pub put: bool,
}

/// The running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    stop_watch: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
    events: Arc<Mutex<Vec<Seen>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    watcher: tokio::task::JoinHandle<()>,
    endpoints: Vec<String>,
    t0: Instant,
}

/// What a finished workload recorded.
#[derive(Debug)]
pub struct History {
    /// The store's revision once the clients had stopped.
    pub final_revision: i64,
    /// Every operation.
    pub ops: Vec<Op>,
    /// Every watch event, in the order received.
    pub events: Vec<Seen>,
}

fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// Connections to every endpoint, tried in turn.
struct Rotor {
    endpoints: Vec<String>,
    next: usize,
    clients: BTreeMap<usize, Client>,
}

impl Rotor {
    fn new(endpoints: &[String], first: usize) -> Rotor {
        Rotor {
            endpoints: endpoints.to_vec(),
            next: first % endpoints.len().max(1),
            clients: BTreeMap::new(),
        }
    }

    async fn client(&mut self) -> Option<Client> {
        let i = self.next;
        if let Some(c) = self.clients.get(&i) {
            return Some(c.clone());
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(3));
        match Client::connect([self.endpoints[i].clone()], Some(opts)).await {
            Ok(c) => {
                self.clients.insert(i, c.clone());
                Some(c)
            }
            Err(_) => {
                self.fail();
                None
            }
        }
    }

    /// The current endpoint failed: forget its connection and move on.
    fn fail(&mut self) {
        self.clients.remove(&self.next);
        self.next = (self.next + 1) % self.endpoints.len();
    }
}

impl Workload {
    /// Starts `writers` writers over `keys` keys, `readers` readers and one watcher.
    pub fn start(endpoints: &[String], writers: usize, readers: usize, keys: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_watch = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (stop, ops) = (stop.clone(), ops.clone());
            let mut rotor = Rotor::new(endpoints, w);
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("{PREFIX}k{}", (seq as usize + w) % keys);
                    let value = format!("w{w}-{seq}");
                    let Some(mut c) = rotor.client().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let start = micros(t0);
                    let r = tokio::time::timeout(
                        Duration::from_secs(3),
                        c.put(key.as_str(), value.as_str(), None),
                    )
                    .await;
                    let ok = match r {
                        Ok(Ok(resp)) => resp.header().map(|h| Outcome {
                            revision: h.revision(),
                            found: None,
                        }),
                        _ => None,
                    };
                    let failed = ok.is_none();
                    ops.lock().push(Op {
                        start,
                        end: micros(t0),
                        kind: Kind::Put { key, value },
                        ok,
                    });
                    if failed {
                        rotor.fail();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        for r in 0..readers {
            let (stop, ops) = (stop.clone(), ops.clone());
            let mut rotor = Rotor::new(endpoints, r + 1);
            tasks.push(tokio::spawn(async move {
                let mut seq = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("{PREFIX}k{}", (seq + r) % keys);
                    let Some(mut c) = rotor.client().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let start = micros(t0);
                    let resp =
                        tokio::time::timeout(Duration::from_secs(3), c.get(key.as_str(), None))
                            .await;
                    let ok = match resp {
                        Ok(Ok(resp)) => resp.header().map(|h| Outcome {
                            revision: h.revision(),
                            found: resp.kvs().first().map(|kv| {
                                (
                                    String::from_utf8_lossy(kv.value()).to_string(),
                                    kv.mod_revision(),
                                )
                            }),
                        }),
                        _ => None,
                    };
                    let failed = ok.is_none();
                    ops.lock().push(Op {
                        start,
                        end: micros(t0),
                        kind: Kind::Get { key },
                        ok,
                    });
                    if failed {
                        rotor.fail();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        let watcher = {
            let (stop, events) = (stop_watch.clone(), events.clone());
            let mut rotor = Rotor::new(endpoints, 2);
            tokio::spawn(async move {
                let mut from = 1i64;
                while !stop.load(Ordering::Relaxed) {
                    let Some(mut c) = rotor.client().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let opts = WatchOptions::new().with_prefix().with_start_revision(from);
                    let Ok(Ok((_w, mut stream))) =
                        tokio::time::timeout(Duration::from_secs(3), c.watch(PREFIX, Some(opts)))
                            .await
                    else {
                        rotor.fail();
                        continue;
                    };
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let msg =
                            tokio::time::timeout(Duration::from_millis(500), stream.message())
                                .await;
                        match msg {
                            Err(_) => continue,
                            Ok(Ok(Some(resp))) => {
                                if resp.canceled() {
                                    break;
                                }
                                let mut evs = events.lock();
                                for e in resp.events() {
                                    let Some(kv) = e.kv() else { continue };
                                    from = kv.mod_revision() + 1;
                                    evs.push(Seen {
                                        revision: kv.mod_revision(),
                                        key: String::from_utf8_lossy(kv.key()).to_string(),
                                        value: String::from_utf8_lossy(kv.value()).to_string(),
                                        put: e.event_type() == EventType::Put,
                                    });
                                }
                            }
                            Ok(_) => break,
                        }
                    }
                    rotor.fail();
                }
            })
        };
        Workload {
            stop,
            stop_watch,
            ops,
            events,
            clients: tasks,
            watcher,
            endpoints: endpoints.to_vec(),
            t0,
        }
    }

    /// Microseconds since the workload began.
    pub fn now(&self) -> u64 {
        micros(self.t0)
    }

    /// Operations recorded so far.
    pub fn ops_so_far(&self) -> usize {
        self.ops.lock().len()
    }

    /// Stops the writers and readers, reads the final revision, lets the watcher catch up with
    /// it, and returns the history.
    pub async fn finish(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.clients {
            let _ = t.await;
        }
        let mut rotor = Rotor::new(&self.endpoints, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let revision = loop {
            assert!(Instant::now() < deadline, "no member answers a final read");
            if let Some(mut c) = rotor.client().await {
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(3), c.get(PREFIX, None)).await
                {
                    if let Some(h) = r.header() {
                        break h.revision();
                    }
                }
                rotor.fail();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let events = self.events.clone();
        super::harness::wait_until(
            "the watcher to reach the final revision",
            Duration::from_secs(60),
            || {
                let r = events.lock().last().map(|e| e.revision).unwrap_or(0);
                async move { r >= revision }
            },
        )
        .await;
        self.stop_watch.store(true, Ordering::Relaxed);
        let _ = self.watcher.await;
        History {
            final_revision: revision,
            ops: std::mem::take(&mut *self.ops.lock()),
            events: std::mem::take(&mut *self.events.lock()),
        }
    }
}

/// The checks' findings.
#[derive(Debug, Default)]
pub struct Report {
    /// Operations checked (successful puts and reads).
    pub checked: usize,
    /// Puts whose outcome is unknown (failed or timed out).
    pub unknown: usize,
    /// Everything wrong, one line each.
    pub violations: Vec<String>,
}

impl History {
    /// The longest time (ms) in `[from, to]` (µs since start) without a successful put
    /// completing.
    pub fn longest_write_gap_ms(&self, from: u64, to: u64) -> u64 {
        let mut ends: Vec<u64> = self
            .ops
            .iter()
            .filter(|o| matches!(o.kind, Kind::Put { .. }) && o.ok.is_some())
            .map(|o| o.end)
            .filter(|e| *e >= from && *e <= to)
            .collect();
        ends.sort_unstable();
        let mut last = from;
        let mut gap = 0;
        for e in ends.into_iter().chain(std::iter::once(to)) {
            gap = gap.max(e.saturating_sub(last));
            last = e;
        }
        gap / 1000
    }

    /// Runs every check.
    pub fn check(&self) -> Report {
        let mut r = Report::default();
        let v = &mut r.violations;

        // The watch: one event per revision, strictly increasing, from the first revision on,
        // and no revision missing (the workload is the only writer under its prefix).
        let mut by_rev: BTreeMap<i64, &Seen> = BTreeMap::new();
        let mut last = 0;
        for e in &self.events {
            if e.revision <= last {
                v.push(format!(
                    "watch: revision {} after {last} (out of order or repeated)",
                    e.revision
                ));
            }
            last = last.max(e.revision);
            by_rev.insert(e.revision, e);
        }
        if let (Some(first), Some(end)) = (by_rev.keys().next(), by_rev.keys().last()) {
            let missing: Vec<i64> = (*first..=*end)
                .filter(|x| !by_rev.contains_key(x))
                .collect();
            if !missing.is_empty() {
                v.push(format!(
                    "watch: {} revisions missing between {first} and {end}, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
        }

        // Every attempted put's value, to tell phantom writes.
        let mut attempted: BTreeMap<&str, &Op> = BTreeMap::new();
        for o in &self.ops {
            if let Kind::Put { value, .. } = &o.kind {
                attempted.insert(value.as_str(), o);
            }
        }
        for e in by_rev.values() {
            if !attempted.contains_key(e.value.as_str()) {
                v.push(format!(
                    "watch: revision {} holds a value never written: {}",
                    e.revision, e.value
                ));
            }
        }

        // The witness order: (revision, put before read) per successful operation.
        let mut points: Vec<(u64, u64, i64, bool)> = Vec::new(); // (start, end, revision, is_put)
        for o in &self.ops {
            let Some(ok) = &o.ok else {
                if matches!(o.kind, Kind::Put { .. }) {
                    r.unknown += 1;
                }
                continue;
            };
            r.checked += 1;
            match &o.kind {
                Kind::Put { key, value } => {
                    match by_rev.get(&ok.revision) {
                        Some(e) if e.key == *key && e.value == *value && e.put => {}
                        Some(e) => v.push(format!(
                            "acknowledged put {key}={value} at revision {} but the watch has {}={} there",
                            ok.revision, e.key, e.value
                        )),
                        None => v.push(format!(
                            "acknowledged put {key}={value} at revision {} is not in the watch (lost write)",
                            ok.revision
                        )),
                    }
                    points.push((o.start, o.end, ok.revision, true));
                }
                Kind::Get { key } => {
                    let expect = by_rev
                        .range(..=ok.revision)
                        .rev()
                        .find(|(_, e)| e.key == *key)
                        .map(|(rev, e)| (e.value.clone(), *rev));
                    if ok.found != expect {
                        v.push(format!(
                            "read of {key} at revision {} returned {:?}, but the history has {:?}",
                            ok.revision, ok.found, expect
                        ));
                    }
                    points.push((o.start, o.end, ok.revision, false));
                }
            }
        }

        // Real time: whatever finished before an operation started has a smaller revision (or,
        // read before read, not a larger one). Sweep the operations by start time against the
        // largest revision among those that ended earlier.
        let mut by_end = points.clone();
        by_end.sort_by_key(|p| p.1);
        let mut by_start = points;
        by_start.sort_by_key(|p| p.0);
        let (mut i, mut max_put, mut max_read) = (0, i64::MIN, i64::MIN);
        for (start, end, rev, is_put) in by_start {
            while i < by_end.len() && by_end[i].1 < start {
                if by_end[i].3 {
                    max_put = max_put.max(by_end[i].2);
                } else {
                    max_read = max_read.max(by_end[i].2);
                }
                i += 1;
            }
            let bad = if is_put {
                max_put >= rev || max_read >= rev
            } else {
                max_put > rev || max_read > rev
            };
            if bad && v.len() < 50 {
                v.push(format!(
                    "real-time order: the {} [{start}..{end}µs] at revision {rev} started after an operation at revision {} had finished",
                    if is_put { "put" } else { "read" },
                    max_put.max(max_read)
                ));
            }
        }
        r
    }
}
