//! Request loads: the `put`, `txn`, `mixed` and `range` workloads (`Work`, run by `load`, one
//! request at a time by `run_one`, keys chosen by `Keys`), their `Report` and its `print`, and
//! the `first-write` probe.
//!
//! Invariants: `--clients` workers share `--conns` connections round-robin and draw request
//! numbers from one counter, so together they send exactly `--total` requests; a failed request
//! counts as an error and never as a latency sample; latencies are recorded in microseconds and
//! printed in milliseconds; a txn never puts one key twice (etcd would refuse it); with `--user`,
//! the token is fetched once and sent with every request of the load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use oxcd::proto::etcdserverpb::kv_client::KvClient;
use oxcd::proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

use crate::{channels, Args, BenchError};

/// How the keys of a load are chosen (see `key_for`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keys {
    /// Key size in bytes.
    pub(crate) size: usize,
    /// Number of distinct keys to choose from.
    pub(crate) space: u64,
    /// In order instead of at random.
    pub(crate) sequential: bool,
}

impl Keys {
    /// The key of draw number `n`.
    fn key(&self, n: u64) -> Vec<u8> {
        key_for(n, self.size, self.space, self.sequential)
    }

    /// How many distinct keys can be drawn (longer numbers are truncated to `size` digits).
    pub(crate) fn distinct(&self) -> u64 {
        let digits = u32::try_from(self.size.max(1)).unwrap_or(u32::MAX);
        let by_size = 10u64.checked_pow(digits).unwrap_or(u64::MAX);
        self.space.max(1).min(by_size)
    }
}

/// One request kind; `run_one` builds request number `n` of a load from it.
#[derive(Clone)]
pub(crate) enum Work {
    /// A put of one key.
    Put {
        /// Where the key comes from.
        keys: Keys,
        /// The value.
        value: Vec<u8>,
    },
    /// The same range every time.
    Range(RangeRequest),
    /// A txn without compares putting `ops` distinct keys in its success branch.
    Txn {
        /// Where the keys come from.
        keys: Keys,
        /// Puts per txn.
        ops: usize,
        /// The value of every put.
        value: Vec<u8>,
    },
    /// Of every 100 requests, `read_percent` single-key ranges and the rest puts, evenly spread.
    Mixed {
        /// Where the keys of both ranges and puts come from.
        keys: Keys,
        /// The value of the puts.
        value: Vec<u8>,
        /// Percentage of ranges (at most 100).
        read_percent: u64,
        /// Serializable instead of linearizable ranges.
        serializable: bool,
    },
}

impl Work {
    /// Names of the request kinds of a mixed load, by the index `run_one` returns (empty when
    /// the load has one kind only).
    fn parts(&self) -> &'static [&'static str] {
        match self {
            Work::Mixed { .. } => &["range", "put"],
            _ => &[],
        }
    }
}

/// Key number `k` (`n` in order, or a random one) of `key_space` keys, as a zero-padded decimal
/// number truncated to `key_size` bytes.
fn key_for(n: u64, key_size: usize, key_space: u64, sequential: bool) -> Vec<u8> {
    let k = if sequential {
        n % key_space.max(1)
    } else {
        rand::random::<u64>() % key_space.max(1)
    };
    let mut key = format!("{k:0width$}", width = key_size).into_bytes();
    key.truncate(key_size.max(1));
    key
}

/// The `ops` distinct keys of txn number `n`: draws `n * ops ..` of `keys`, drawn again (a
/// bounded number of times) when a random draw repeats a key, since etcd refuses a txn that
/// puts one key twice. `run` makes sure `keys` has at least `ops` distinct keys.
fn txn_keys(keys: &Keys, n: u64, ops: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(ops);
    for i in 0..ops as u64 {
        let draw = n.wrapping_mul(ops as u64).wrapping_add(i);
        let mut key = keys.key(draw);
        for _ in 0..64 {
            if !out.contains(&key) {
                break;
            }
            key = keys.key(draw);
        }
        out.push(key);
    }
    out
}

/// Whether request `n` of a mixed load is a put: of every 100 consecutive requests, exactly
/// `100 - read_percent` are, spread evenly.
fn mixed_is_write(n: u64, read_percent: u64) -> bool {
    let w = 100 - read_percent.min(100);
    (n + 1) * w / 100 > n * w / 100
}

/// `msg` carrying the auth token, if there is one.
fn authed<T>(msg: T, token: Option<&str>) -> Result<tonic::Request<T>, tonic::Status> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        let v = t
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("the auth token is not ASCII"))?;
        r.metadata_mut().insert("token", v);
    }
    Ok(r)
}

/// Sends request number `n` of `w` and waits for its answer; returns the index of its kind in
/// `w.parts()` (0 for a load of one kind).
async fn run_one(
    c: &mut KvClient<Channel>,
    w: &Work,
    n: u64,
    token: Option<&str>,
) -> Result<usize, tonic::Status> {
    match w {
        Work::Put { keys, value } => {
            let req = PutRequest {
                key: keys.key(n),
                value: value.clone(),
                ..Default::default()
            };
            c.put(authed(req, token)?).await.map(|_| 0)
        }
        Work::Range(r) => c.range(authed(r.clone(), token)?).await.map(|_| 0),
        Work::Txn { keys, ops, value } => {
            let success = txn_keys(keys, n, *ops)
                .into_iter()
                .map(|key| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key,
                        value: value.clone(),
                        ..Default::default()
                    })),
                })
                .collect();
            let req = TxnRequest {
                success,
                ..Default::default()
            };
            c.txn(authed(req, token)?).await.map(|_| 0)
        }
        Work::Mixed {
            keys,
            value,
            read_percent,
            serializable,
        } => {
            if mixed_is_write(n, *read_percent) {
                let req = PutRequest {
                    key: keys.key(n),
                    value: value.clone(),
                    ..Default::default()
                };
                c.put(authed(req, token)?).await.map(|_| 1)
            } else {
                let req = RangeRequest {
                    key: keys.key(n),
                    serializable: *serializable,
                    ..Default::default()
                };
                c.range(authed(req, token)?).await.map(|_| 0)
            }
        }
    }
}

/// The outcome of a load.
pub(crate) struct Report {
    /// Requests sent.
    pub(crate) total: u64,
    /// Requests that failed.
    pub(crate) errors: u64,
    /// Wall-clock time of the whole load.
    pub(crate) elapsed: Duration,
    /// Latency of the successful requests, in microseconds.
    pub(crate) hist: Histogram<u64>,
    /// For a mixed load, the latency of each kind of request (named as in `Work::parts`).
    pub(crate) parts: Vec<(&'static str, Histogram<u64>)>,
    /// The message of the first failure seen.
    pub(crate) first_error: Option<String>,
    /// How many requests failed with each message (empty for keep-alive runs, which count
    /// failures only).
    pub(crate) errors_by_message: std::collections::BTreeMap<String, u64>,
}

/// Runs `total` requests of `work` from `--clients` workers over `--conns` connections
/// (authenticating first if `--user` is given).
pub(crate) async fn load(args: &Args, work: Work, total: u64) -> Result<Report, BenchError> {
    let chans = channels(&args.endpoints, args.conns)?;
    let token: Option<Arc<str>> = match &args.user {
        None => None,
        Some(u) => {
            let (name, password) = u
                .split_once(':')
                .ok_or_else(|| BenchError::Usage("--user wants name:password".to_string()))?;
            let mut a = oxcd::proto::etcdserverpb::auth_client::AuthClient::new(chans[0].clone());
            let r = a
                .authenticate(oxcd::proto::etcdserverpb::AuthenticateRequest {
                    name: name.to_string(),
                    password: password.to_string(),
                })
                .await
                .map_err(|e| BenchError::Usage(format!("authenticate: {}", e.message())))?;
            Some(Arc::from(r.into_inner().token))
        }
    };
    let names = work.parts();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut client = KvClient::new(chans[i % chans.len()].clone());
        let next = next.clone();
        let errors = errors.clone();
        let work = work.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).ok();
            let mut parts: Vec<Option<Histogram<u64>>> =
                names.iter().map(|_| Histogram::new(3).ok()).collect();
            let mut first_error = None;
            let mut by_message = std::collections::BTreeMap::<String, u64>::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t = Instant::now();
                match run_one(&mut client, &work, n, token.as_deref()).await {
                    Ok(part) => {
                        let us = t.elapsed().as_micros() as u64;
                        if let Some(h) = hist.as_mut() {
                            let _ = h.record(us);
                        }
                        if let Some(Some(h)) = parts.get_mut(part) {
                            let _ = h.record(us);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| e.message().to_string());
                        *by_message.entry(e.message().to_string()).or_default() += 1;
                    }
                }
            }
            (hist, parts, first_error, by_message)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?;
    let mut parts = Vec::new();
    for name in names {
        let h = Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?;
        parts.push((*name, h));
    }
    let mut first_error = None;
    let mut errors_by_message = std::collections::BTreeMap::<String, u64>::new();
    for t in tasks {
        if let Ok((Some(h), task_parts, err, by_message)) = t.await {
            for (m, n) in by_message {
                *errors_by_message.entry(m).or_default() += n;
            }
            let _ = hist.add(h);
            for ((_, all), h) in parts.iter_mut().zip(task_parts) {
                if let Some(h) = h {
                    let _ = all.add(h);
                }
            }
            if first_error.is_none() {
                first_error = err;
            }
        }
    }
    Ok(Report {
        total,
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        hist,
        parts,
        first_error,
        errors_by_message,
    })
}

/// Latency quantiles of `h` (microseconds) in milliseconds, as JSON.
fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    serde_json::json!({
        "avg": h.mean() / 1000.0,
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// Prints `r` as a text block or, with `--json`, as one JSON object (`op` = `what`).
pub(crate) fn print(args: &Args, what: &str, r: &Report) {
    let ok = r.total - r.errors;
    let rps = ok as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let ms = |us: u64| us as f64 / 1000.0;
    if args.json {
        let mut v = serde_json::json!({
            "op": what,
            "clients": args.clients,
            "conns": args.conns,
            "total": r.total,
            "errors": r.errors,
            "seconds": r.elapsed.as_secs_f64(),
            "requests_per_sec": rps,
            "latency_ms": latency_json(&r.hist),
            "first_error": r.first_error,
            "errors_by_message": r.errors_by_message,
        });
        if !r.parts.is_empty() {
            let by_op: serde_json::Map<String, serde_json::Value> = r
                .parts
                .iter()
                .map(|(name, h)| {
                    let part = serde_json::json!({"ok": h.len(), "latency_ms": latency_json(h)});
                    (name.to_string(), part)
                })
                .collect();
            v["by_op"] = serde_json::Value::Object(by_op);
        }
        println!("{v}");
        return;
    }
    println!(
        "Summary ({what}, {} clients, {} conns):",
        args.clients, args.conns
    );
    println!("  Total:        {:.4} secs.", r.elapsed.as_secs_f64());
    println!("  Requests/sec: {rps:.1}");
    let line = |h: &Histogram<u64>| {
        format!(
            "avg {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            h.mean() / 1000.0,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        )
    };
    println!("  Latency (ms): {}", line(&r.hist));
    for (name, h) in &r.parts {
        println!("    {name:<6} ({} ok): {}", h.len(), line(h));
    }
    if r.errors > 0 {
        println!(
            "  Errors:       {} (first: {})",
            r.errors,
            r.first_error.as_deref().unwrap_or("")
        );
    }
}

/// The `first-write` subcommand: see `Cmd::FirstWrite`.
pub(crate) async fn first_write(
    args: &Args,
    timeout: Duration,
    attempt: Duration,
) -> Result<(), BenchError> {
    let chans = channels(&args.endpoints, args.conns.max(1))?;
    let start = Instant::now();
    let mut attempts = 0u64;
    while start.elapsed() < timeout {
        for ch in &chans {
            attempts += 1;
            let mut c = KvClient::new(ch.clone());
            let put = c.put(PutRequest {
                key: b"oxcd-bench/first-write".to_vec(),
                value: b"x".to_vec(),
                ..Default::default()
            });
            if let Ok(Ok(_)) = tokio::time::timeout(attempt, put).await {
                let secs = start.elapsed().as_secs_f64();
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"op": "first-write", "seconds": secs, "attempts": attempts})
                    );
                } else {
                    println!("first successful write after {secs:.3} s ({attempts} attempts)");
                }
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BenchError::NoWrite(timeout))
}
