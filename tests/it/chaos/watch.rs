//! The campaign's watchers: what each watches, and a loop that records every response and
//! resumes after a break.
//!
//! Invariants: a watcher resumes from the revision after the last event it received; a watch
//! "from now" is bracketed by two linearizable reads (before and after its creation, whose answer
//! the client library keeps to itself), so the checks know that no event below the first may
//! arrive and every event from the second on must; an event without a key-value pair, or a watch
//! the server cancels, is recorded as broken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions};
use parking_lot::Mutex;

use super::workload::{micros, Kv, Rotor, OP_TIMEOUT, PREFIX};

/// One watch event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The revision of the change.
    pub rev: i64,
    /// Key.
    pub key: String,
    /// A put (else a delete).
    pub put: bool,
    /// The pair after a put.
    pub kv: Option<Kv>,
    /// The pair before the change, when the watch asked for it.
    pub prev: Option<Kv>,
}

/// What a watcher watches.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Name, for reports.
    pub name: &'static str,
    /// The key, or the prefix when `prefix`.
    pub key: String,
    /// Watch every key under `key`.
    pub prefix: bool,
    /// The start revision (0: from now).
    pub start: i64,
    /// Ask for each event's previous pair.
    pub prev_kv: bool,
    /// The endpoint it connects to first.
    pub first_endpoint: usize,
}

impl WatchSpec {
    /// Whether `key` is in the watched range.
    pub fn covers(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(&self.key)
        } else {
            key == self.key
        }
    }
}

/// One watch response's events, with the time they arrived.
#[derive(Debug, Clone)]
pub struct Batch {
    /// When (µs since the workload began).
    pub at: u64,
    /// Its events, in order.
    pub events: Vec<Event>,
}

/// What one watcher recorded.
#[derive(Debug, Clone)]
pub struct WatchLog {
    /// What it watched.
    pub spec: WatchSpec,
    /// From this revision on, every event of its range must arrive: the start revision, or for
    /// a watch from now the revision after a linearizable read made once it was created.
    pub from: i64,
    /// No event below this revision may arrive: the start revision, or for a watch from now the
    /// revision after a linearizable read made before it was created.
    pub floor: i64,
    /// Every response with events, in order.
    pub batches: Vec<Batch>,
    /// Watches that could not be created or were cancelled by the server, with the reason.
    pub broken: Vec<String>,
    /// How often it reconnected.
    pub resumes: usize,
    /// Why its last streams failed (the newest few, for diagnostics: a failed stream is not a
    /// violation, the watcher resumes).
    pub stream_errors: Vec<String>,
}

impl WatchLog {
    /// The revision of the last event received (0: none).
    pub fn last_rev(&self) -> i64 {
        self.batches
            .last()
            .and_then(|b| b.events.last())
            .map(|e| e.rev)
            .unwrap_or(0)
    }
}

/// The watchers every run starts: the first one, from revision 1 over the whole prefix with
/// previous pairs, is the reference the checks replay.
pub fn default_watchers() -> Vec<WatchSpec> {
    vec![
        WatchSpec {
            name: "reference",
            key: PREFIX.to_string(),
            prefix: true,
            start: 1,
            prev_kv: true,
            first_endpoint: 0,
        },
        WatchSpec {
            name: "prefix-from-now",
            key: PREFIX.to_string(),
            prefix: true,
            start: 0,
            prev_kv: true,
            first_endpoint: 1,
        },
        WatchSpec {
            name: "one-key",
            key: format!("{PREFIX}k3"),
            prefix: false,
            start: 1,
            prev_kv: false,
            first_endpoint: 2,
        },
        WatchSpec {
            name: "future-revision",
            key: PREFIX.to_string(),
            prefix: true,
            start: 300,
            prev_kv: false,
            first_endpoint: 1,
        },
    ]
}

/// The largest watch answer a watcher accepts (etcd's catch-up answers carry up to 1,000
/// revisions, each possibly a 32 KiB value and its previous one).
const WATCH_RECV_LIMIT: usize = 256 * 1024 * 1024;

/// How many of a watcher's newest stream failures it keeps.
const STREAM_ERRORS_KEPT: usize = 3;

/// One watcher: watches, records, and resumes after every break from the revision after its
/// last event (or where its first watch started).
pub async fn watch_loop(
    spec: WatchSpec,
    log: Arc<Mutex<WatchLog>>,
    mut rotor: Rotor,
    stop: Arc<AtomicBool>,
    t0: Instant,
) {
    let mut next = spec.start;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut c) = rotor.client().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut opts = WatchOptions::new();
        if spec.prefix {
            opts = opts.with_prefix();
        }
        if spec.prev_kv {
            opts = opts.with_prev_key();
        }
        if next > 0 {
            opts = opts.with_start_revision(next);
        }
        // A first watch from now: bracketed by linearizable reads.
        let before = if next == 0 {
            match revision(&mut c).await {
                Some(r) => Some(r),
                None => {
                    rotor.fail();
                    continue;
                }
            }
        } else {
            None
        };
        // etcd's Go client takes answers of any size (its receive limit is 2 GiB); with the
        // crate's default of 4 MiB a watcher that fell behind by many large values would fail to
        // decode the same catch-up answer after every resume and never catch up.
        let mut wc = c.watch_client().max_decoding_message_size(WATCH_RECV_LIMIT);
        let created =
            tokio::time::timeout(OP_TIMEOUT, wc.watch(spec.key.as_str(), Some(opts))).await;
        let Ok(Ok((_watcher, mut stream))) = created else {
            rotor.fail();
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if let Some(before) = before {
            let Some(after) = revision(&mut c).await else {
                rotor.fail();
                continue;
            };
            let mut l = log.lock();
            l.floor = before + 1;
            l.from = after + 1;
            // Should this stream break before its first event, the next one starts where every
            // event is due.
            next = after + 1;
        }
        if !first {
            log.lock().resumes += 1;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let msg = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
            match msg {
                Err(_) => continue,
                Ok(Ok(Some(resp))) => {
                    first = false;
                    if resp.canceled() {
                        log.lock().broken.push(format!(
                            "cancelled at {next}: {} (compact revision {})",
                            resp.cancel_reason(),
                            resp.compact_revision()
                        ));
                        break;
                    }
                    if resp.events().is_empty() {
                        continue;
                    }
                    let mut events = Vec::new();
                    for e in resp.events() {
                        let Some(kv) = e.kv() else {
                            log.lock()
                                .broken
                                .push(format!("an event without a key-value pair after {next}"));
                            continue;
                        };
                        let put = e.event_type() == EventType::Put;
                        events.push(Event {
                            rev: kv.mod_revision(),
                            key: String::from_utf8_lossy(kv.key()).to_string(),
                            put,
                            kv: put.then(|| Kv::of(kv)),
                            prev: e.prev_kv().map(Kv::of),
                        });
                    }
                    if let Some(last) = events.last() {
                        next = last.rev + 1;
                    }
                    log.lock().batches.push(Batch {
                        at: micros(t0),
                        events,
                    });
                }
                Ok(Err(e)) => {
                    let mut l = log.lock();
                    if l.stream_errors.len() == STREAM_ERRORS_KEPT {
                        l.stream_errors.remove(0);
                    }
                    l.stream_errors.push(format!("after {next}: {e}"));
                    break;
                }
                Ok(Ok(None)) => break,
            }
        }
        rotor.fail();
    }
}

/// The store's revision by a linearizable read (None when the member cannot answer).
async fn revision(c: &mut Client) -> Option<i64> {
    let r = tokio::time::timeout(OP_TIMEOUT, c.get(PREFIX, None)).await;
    r.ok()?.ok()?.header().map(|h| h.revision())
}
