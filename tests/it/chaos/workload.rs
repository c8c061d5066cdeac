//! The campaign's client workload: clients that send etcd's mix of operations and record each
//! one with its interval and answer, and watchers that record every response they receive.
//!
//! The mix follows etcd's robustness traffic over [`KEYS`] keys: linearizable and serializable
//! gets and lists, puts (some of [`LARGE`] bytes, some attached to a lease), deletes, txns that
//! compare a key's mod revision and put two keys, lease grants and revokes; leases are also left
//! to expire. Every value is unique in the run, so every event in a watch names the operation
//! that caused it.
//!
//! Invariants: an operation is recorded exactly once, after its answer (or failure) arrived, with
//! `start`/`end` in microseconds since the workload began; an error counts as "refused" (certainly
//! not done) only for the errors that can only come before anything is applied, every other error
//! leaves the outcome unknown. Each client keeps a connection per endpoint and moves to the next
//! endpoint when one fails, as etcd's clients do; a watcher resumes from the revision after the
//! last event it received.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use parking_lot::Mutex;

use super::watch::watch_loop;
pub use super::watch::{default_watchers, Batch, Event, WatchLog};

/// The key prefix of every key the workload touches.
pub const PREFIX: &str = "ch/";
/// How many keys the clients share.
pub const KEYS: usize = 10;
/// The size of a large put's value (etcd's robustness traffic uses 32 KiB + 1).
pub const LARGE: usize = 32 * 1024 + 1;
/// How long a client waits for one answer.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// One key-value pair as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Revision of its last change.
    pub mod_rev: i64,
    /// Revision of its creation.
    pub create_rev: i64,
    /// Changes since its creation.
    pub version: i64,
    /// Attached lease (0: none).
    pub lease: i64,
}

impl Kv {
    /// The pair as the client library gives it.
    pub fn of(kv: &KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).to_string(),
            value: String::from_utf8_lossy(kv.value()).to_string(),
            mod_rev: kv.mod_revision(),
            create_rev: kv.create_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    /// A get of one key.
    Get {
        /// Key.
        key: String,
        /// A serializable (possibly stale) read.
        serializable: bool,
    },
    /// A range over the whole prefix.
    List {
        /// A serializable (possibly stale) read.
        serializable: bool,
    },
    /// A put, attached to `lease` unless it is 0.
    Put {
        /// Key.
        key: String,
        /// Value (unique in the run).
        value: String,
        /// Lease ID or 0.
        lease: i64,
    },
    /// A delete of one key.
    Delete {
        /// Key.
        key: String,
    },
    /// If `key`'s mod revision is `expect_mod` (0: absent) then put `puts`, else get `key` and
    /// the puts' keys.
    Txn {
        /// The compared key.
        key: String,
        /// The expected mod revision.
        expect_mod: i64,
        /// The puts of the success branch, in order.
        puts: Vec<(String, String)>,
    },
    /// A lease grant.
    Grant {
        /// TTL in seconds.
        ttl: i64,
    },
    /// A lease revoke.
    Revoke {
        /// Lease ID.
        id: i64,
    },
}

impl Req {
    /// Whether the request may change the store.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Req::Put { .. } | Req::Delete { .. } | Req::Txn { .. } | Req::Revoke { .. }
        )
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// A get or list: the header revision and what was found.
    Read {
        /// Header revision.
        rev: i64,
        /// The pairs found, in key order.
        kvs: Vec<Kv>,
    },
    /// A put.
    Put {
        /// Header revision.
        rev: i64,
    },
    /// A delete.
    Delete {
        /// Header revision.
        rev: i64,
        /// How many keys it deleted.
        deleted: i64,
    },
    /// A txn.
    Txn {
        /// Header revision.
        rev: i64,
        /// Which branch ran.
        succeeded: bool,
        /// The else branch's reads.
        kvs: Vec<Kv>,
    },
    /// A lease grant.
    Grant {
        /// Header revision.
        rev: i64,
        /// The new lease.
        id: i64,
        /// Its TTL as granted (the server may raise it to its minimum).
        ttl: i64,
    },
    /// A lease revoke.
    Revoke {
        /// Header revision.
        rev: i64,
    },
}

impl Resp {
    /// The header revision.
    pub fn rev(&self) -> i64 {
        match self {
            Resp::Read { rev, .. }
            | Resp::Put { rev }
            | Resp::Delete { rev, .. }
            | Resp::Txn { rev, .. }
            | Resp::Grant { rev, .. }
            | Resp::Revoke { rev } => *rev,
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered.
    Ok(Resp),
    /// Refused with an error that comes before anything is applied.
    Refused(String),
    /// Failed or timed out: it may or may not have happened.
    Unknown(String),
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// When it was sent (µs since the workload began).
    pub start: u64,
    /// When its answer arrived.
    pub end: u64,
    /// What was asked.
    pub req: Req,
    /// How it ended.
    pub outcome: Outcome,
}

/// Microseconds since `t0`.
pub fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// Connections to every endpoint, tried in turn.
pub struct Rotor {
    endpoints: Vec<String>,
    next: usize,
    clients: BTreeMap<usize, Client>,
}

impl Rotor {
    /// Starts at endpoint `first`.
    pub fn new(endpoints: &[String], first: usize) -> Rotor {
        Rotor {
            endpoints: endpoints.to_vec(),
            next: first % endpoints.len().max(1),
            clients: BTreeMap::new(),
        }
    }

    /// The current endpoint's connection (made on first use); `None` (and moves on) when it
    /// cannot be made.
    pub async fn client(&mut self) -> Option<Client> {
        let i = self.next;
        if let Some(c) = self.clients.get(&i) {
            return Some(c.clone());
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(OP_TIMEOUT);
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
    pub fn fail(&mut self) {
        self.clients.remove(&self.next);
        self.next = (self.next + 1) % self.endpoints.len();
    }
}

/// A small deterministic generator (xorshift), one per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The state one client carries between operations.
struct ClientState {
    id: usize,
    seq: u64,
    rng: Rng,
    /// The lease it currently attaches puts to.
    lease: Option<i64>,
    /// The mod revision it last saw per key (for its txns' compares).
    seen: BTreeMap<String, i64>,
}

impl ClientState {
    fn key(&mut self) -> String {
        format!("{PREFIX}k{}", self.rng.below(KEYS as u64))
    }

    fn value(&mut self) -> String {
        self.seq += 1;
        format!("c{}-{}", self.id, self.seq)
    }

    /// The next request, by etcd's weights.
    fn next(&mut self) -> Req {
        let roll = self.rng.below(100);
        match roll {
            0..=14 => Req::Get {
                key: self.key(),
                serializable: false,
            },
            15..=24 => Req::Get {
                key: self.key(),
                serializable: true,
            },
            25..=32 => Req::List {
                serializable: false,
            },
            33..=37 => Req::List { serializable: true },
            38..=64 => Req::Put {
                key: self.key(),
                value: self.value(),
                lease: 0,
            },
            65..=67 => {
                let key = self.key();
                let mut value = self.value();
                value.push('-');
                value.push_str(&"x".repeat(LARGE));
                Req::Put {
                    key,
                    value,
                    lease: 0,
                }
            }
            68..=75 => Req::Delete { key: self.key() },
            76..=85 => {
                let k = self.rng.below(KEYS as u64);
                let key = format!("{PREFIX}k{k}");
                // etcd refuses a txn that puts one key twice: the second key differs.
                let other = format!(
                    "{PREFIX}k{}",
                    (k + 1 + self.rng.below(KEYS as u64 - 1)) % KEYS as u64
                );
                let expect_mod = self.seen.get(&key).copied().unwrap_or(0);
                let puts = vec![(key.clone(), self.value()), (other, self.value())];
                Req::Txn {
                    key,
                    expect_mod,
                    puts,
                }
            }
            86..=92 => match self.lease {
                Some(lease) => Req::Put {
                    key: self.key(),
                    value: self.value(),
                    lease,
                },
                None => Req::Grant {
                    ttl: 2 + self.rng.below(3) as i64,
                },
            },
            _ => match self.lease {
                // Half the leases are revoked, the other half left to expire.
                Some(id) if self.rng.below(2) == 0 => Req::Revoke { id },
                Some(_) => {
                    self.lease = None;
                    Req::Grant {
                        ttl: 2 + self.rng.below(3) as i64,
                    }
                }
                None => Req::Grant {
                    ttl: 2 + self.rng.below(3) as i64,
                },
            },
        }
    }

    fn saw(&mut self, kvs: &[Kv]) {
        for kv in kvs {
            self.seen.insert(kv.key.clone(), kv.mod_rev);
        }
    }
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(-1)
}

/// Sends `req` and classifies the answer.
async fn send(c: &mut Client, req: &Req) -> Outcome {
    let classify = |e: etcd_client::Error| {
        let text = e.to_string();
        if text.contains("requested lease not found") {
            Outcome::Refused(text)
        } else {
            Outcome::Unknown(text)
        }
    };
    let fut = async {
        match req {
            Req::Get { key, serializable } => {
                let mut o = GetOptions::new();
                if *serializable {
                    o = o.with_serializable();
                }
                let r = c.get(key.as_str(), Some(o)).await?;
                Ok(Resp::Read {
                    rev: rev_of(r.header()),
                    kvs: r.kvs().iter().map(Kv::of).collect(),
                })
            }
            Req::List { serializable } => {
                let mut o = GetOptions::new().with_prefix();
                if *serializable {
                    o = o.with_serializable();
                }
                let r = c.get(PREFIX, Some(o)).await?;
                Ok(Resp::Read {
                    rev: rev_of(r.header()),
                    kvs: r.kvs().iter().map(Kv::of).collect(),
                })
            }
            Req::Put { key, value, lease } => {
                let o = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                let r = c.put(key.as_str(), value.as_str(), o).await?;
                Ok(Resp::Put {
                    rev: rev_of(r.header()),
                })
            }
            Req::Delete { key } => {
                let r = c.delete(key.as_str(), None).await?;
                Ok(Resp::Delete {
                    rev: rev_of(r.header()),
                    deleted: r.deleted(),
                })
            }
            Req::Txn {
                key,
                expect_mod,
                puts,
            } => {
                let mut reads = vec![TxnOp::get(key.as_str(), None)];
                reads.extend(puts.iter().map(|(k, _)| TxnOp::get(k.as_str(), None)));
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        *expect_mod,
                    )])
                    .and_then(
                        puts.iter()
                            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                            .collect::<Vec<_>>(),
                    )
                    .or_else(reads);
                let r = c.txn(txn).await?;
                let mut kvs = Vec::new();
                for o in r.op_responses() {
                    if let TxnOpResponse::Get(g) = o {
                        kvs.extend(g.kvs().iter().map(Kv::of));
                    }
                }
                Ok(Resp::Txn {
                    rev: rev_of(r.header()),
                    succeeded: r.succeeded(),
                    kvs,
                })
            }
            Req::Grant { ttl } => {
                let r = c.lease_grant(*ttl, None).await?;
                Ok(Resp::Grant {
                    rev: rev_of(r.header()),
                    id: r.id(),
                    ttl: r.ttl(),
                })
            }
            Req::Revoke { id } => {
                let r = c.lease_revoke(*id).await?;
                Ok(Resp::Revoke {
                    rev: rev_of(r.header()),
                })
            }
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(resp)) => Outcome::Ok(resp),
        Ok(Err(e)) => classify(e),
        Err(_) => Outcome::Unknown("timed out".to_string()),
    }
}

/// The running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    stop_watch: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
    acked_writes: Arc<AtomicI64>,
    watches: Vec<Arc<Mutex<WatchLog>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    endpoints: Vec<String>,
    t0: Instant,
}

/// What a finished workload recorded.
#[derive(Debug)]
pub struct History {
    /// The store's revision before the first operation.
    pub start_revision: i64,
    /// The store's revision once the clients had stopped.
    pub final_revision: i64,
    /// Every operation.
    pub ops: Vec<Op>,
    /// Every watcher's log; the first is the reference.
    pub watches: Vec<WatchLog>,
}

impl History {
    /// The longest time (ms) in `[from, to]` (µs on the workload's clock) in which no write
    /// completed successfully.
    pub fn longest_write_gap_ms(&self, from: u64, to: u64) -> u64 {
        let mut ends: Vec<u64> = self
            .ops
            .iter()
            .filter(|o| o.req.writes() && matches!(o.outcome, Outcome::Ok(_)))
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
}

impl Workload {
    /// Starts `clients` clients and the [`default_watchers`] over `endpoints` of a new cluster
    /// (revision 1).
    pub fn start(endpoints: &[String], clients: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_watch = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let acked_writes = Arc::new(AtomicI64::new(0));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for id in 0..clients {
            let (stop, ops, acked) = (stop.clone(), ops.clone(), acked_writes.clone());
            let mut rotor = Rotor::new(endpoints, id);
            tasks.push(tokio::spawn(async move {
                let mut st = ClientState {
                    id,
                    seq: 0,
                    rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0x2545_f491)),
                    lease: None,
                    seen: BTreeMap::new(),
                };
                while !stop.load(Ordering::Relaxed) {
                    let req = st.next();
                    let Some(mut c) = rotor.client().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let start = micros(t0);
                    let outcome = send(&mut c, &req).await;
                    let end = micros(t0);
                    match (&req, &outcome) {
                        (_, Outcome::Ok(Resp::Read { kvs, .. }))
                        | (_, Outcome::Ok(Resp::Txn { kvs, .. })) => st.saw(kvs),
                        (Req::Grant { .. }, Outcome::Ok(Resp::Grant { id, .. })) => {
                            st.lease = Some(*id)
                        }
                        (Req::Revoke { .. }, _) => st.lease = None,
                        (Req::Put { lease, .. }, Outcome::Refused(_)) if *lease != 0 => {
                            st.lease = None
                        }
                        _ => {}
                    }
                    if req.writes() && matches!(outcome, Outcome::Ok(_)) {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    let failed = matches!(outcome, Outcome::Unknown(_));
                    ops.lock().push(Op {
                        start,
                        end,
                        req,
                        outcome,
                    });
                    if failed {
                        rotor.fail();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        let mut watches = Vec::new();
        let mut watchers = Vec::new();
        for spec in default_watchers() {
            let log = Arc::new(Mutex::new(WatchLog {
                spec: spec.clone(),
                from: spec.start,
                floor: spec.start,
                batches: Vec::new(),
                broken: Vec::new(),
                resumes: 0,
                stream_errors: Vec::new(),
            }));
            watches.push(log.clone());
            let stop = stop_watch.clone();
            let rotor = Rotor::new(endpoints, spec.first_endpoint);
            watchers.push(tokio::spawn(watch_loop(spec, log, rotor, stop, t0)));
        }
        Workload {
            stop,
            stop_watch,
            ops,
            acked_writes,
            watches,
            clients: tasks,
            watchers,
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

    /// Acknowledged writes so far.
    pub fn acked_writes(&self) -> i64 {
        self.acked_writes.load(Ordering::Relaxed)
    }

    /// The lowest revision any watcher would resume from (what a compaction may reach without
    /// breaking a resume: etcd refuses a watch that starts below the compacted revision).
    pub fn watch_floor(&self) -> i64 {
        self.watches
            .iter()
            .map(|w| {
                let w = w.lock();
                (w.last_rev() + 1).max(w.from).max(1)
            })
            .min()
            .unwrap_or(1)
    }

    /// Stops the clients, reads the final revision, lets every watcher catch up with it, and
    /// returns the history.
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
                if let Ok(Ok(r)) = tokio::time::timeout(OP_TIMEOUT, c.get(PREFIX, None)).await {
                    if let Some(h) = r.header() {
                        break h.revision();
                    }
                }
                rotor.fail();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The reference watcher must reach the final revision; the others the last revision
        // in their range, which the reference tells.
        let reference = self.watches[0].clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while reference.lock().last_rev() < revision {
            if Instant::now() > deadline {
                // Which member is behind tells whether the watcher sits on a stalled member.
                let mut seen = Vec::new();
                for ep in &self.endpoints {
                    let rev = match Client::connect([ep.clone()], None).await {
                        Ok(mut c) => {
                            let opts = etcd_client::GetOptions::new().with_serializable();
                            match tokio::time::timeout(OP_TIMEOUT, c.get(PREFIX, Some(opts))).await
                            {
                                Ok(Ok(r)) => format!("{:?}", r.header().map(|h| h.revision())),
                                other => format!("no answer ({other:?})"),
                            }
                        }
                        Err(e) => format!("no connection ({e})"),
                    };
                    seen.push(format!("{ep}: {rev}"));
                }
                let w = reference.lock();
                panic!(
                    "timed out waiting for the reference watcher to reach the final revision \
                     {revision}: it is at {}, resumed {} times; members' serializable \
                     revisions: {seen:?}; its last breaks: {:?}; its last stream errors: {:?}",
                    w.last_rev(),
                    w.resumes,
                    w.broken.iter().rev().take(3).collect::<Vec<_>>(),
                    w.stream_errors
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ref_events: Vec<(i64, String)> = reference
            .lock()
            .batches
            .iter()
            .flat_map(|b| b.events.iter().map(|e| (e.rev, e.key.clone())))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        for w in &self.watches[1..] {
            let (spec, from) = {
                let w = w.lock();
                (w.spec.clone(), w.from)
            };
            let want = ref_events
                .iter()
                .filter(|(rev, key)| *rev >= from.max(spec.start) && spec.covers(key))
                .map(|(rev, _)| *rev)
                .max()
                .unwrap_or(0);
            while w.lock().last_rev() < want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.stop_watch.store(true, Ordering::Relaxed);
        for w in self.watchers {
            let _ = w.await;
        }
        History {
            start_revision: 1,
            final_revision: revision,
            ops: std::mem::take(&mut *self.ops.lock()),
            watches: self.watches.iter().map(|w| w.lock().clone()).collect(),
        }
    }
}
