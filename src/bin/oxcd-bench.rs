//! `oxcd-bench`: a load tool in the style of etcd's `benchmark`, usable against oxcd and the real
//! etcd alike (it speaks only etcd's gRPC API).
//!
//! ```text
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 put --total=10000 --val-size=256
//! oxcd-bench --endpoints=127.0.0.1:2379 range foo --consistency=l --total=10000
//! oxcd-bench --endpoints=127.0.0.1:2379,127.0.0.1:22379 first-write --timeout=30s
//! oxcd-bench --endpoints=127.0.0.1:2379 --conns=10 watch --watchers=1000 --total=500 --put-rate=100
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 put --stalled-watchers=1000
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 lease-keepalive --leases=1000
//! oxcd-bench --endpoints=127.0.0.1:2379 lease-expiry --leases=200 --ttl=2
//! ```
//!
//! Invariants: `--clients` concurrent workers share `--conns` HTTP/2 connections round-robin and
//! together issue exactly `--total` requests; a failed request is counted as an error, not as a
//! latency sample; results print as one human-readable block, or one JSON object with `--json`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use oxcd::proto::etcdserverpb::kv_client::KvClient;
use oxcd::proto::etcdserverpb::lease_client::LeaseClient;
use oxcd::proto::etcdserverpb::watch_client::WatchClient;
use oxcd::proto::etcdserverpb::watch_request::RequestUnion;
use oxcd::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "oxcd-bench", about = "etcd-style load tool for oxcd and etcd")]
struct Args {
    /// Comma-separated host:port endpoints; connections are spread over them.
    #[arg(long, default_value = "127.0.0.1:2379", global = true)]
    endpoints: String,
    /// Number of concurrent clients.
    #[arg(long, default_value_t = 1, global = true)]
    clients: usize,
    /// Number of gRPC connections shared by the clients.
    #[arg(long, default_value_t = 1, global = true)]
    conns: usize,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// `name:password`: authenticate once and send the token with every put and range.
    #[arg(long, global = true)]
    user: Option<String>,
    /// What to run.
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Puts `--total` keys.
    Put {
        /// Total number of puts.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        /// Keys are chosen from this many distinct keys (1 = always the same key).
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        /// Choose keys in order instead of at random.
        #[arg(long)]
        sequential_keys: bool,
        /// Before the load, open this many watchers on every key whose streams are never read
        /// (a stalled watcher must not slow writes).
        #[arg(long, default_value_t = 0)]
        stalled_watchers: usize,
    },
    /// Watch fan-out: `--watchers` watchers on one prefix (spread over `--conns` streams), one
    /// writer putting `--total` keys at `--put-rate` per second; reports events delivered per
    /// second and the put-to-delivery latency.
    Watch {
        /// Number of watchers.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Number of puts.
        #[arg(long, default_value_t = 500)]
        total: u64,
        /// Puts per second.
        #[arg(long, default_value_t = 100)]
        put_rate: u64,
        /// Value size in bytes (at least 16: the value carries the send time).
        #[arg(long, default_value_t = 64)]
        val_size: usize,
    },
    /// Ranges over `key` (to `end`, if given) `--total` times.
    Range {
        /// Start key.
        key: String,
        /// End key (exclusive); empty reads the one key.
        end: Option<String>,
        /// Total number of ranges.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// `l` (linearizable) or `s` (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
        /// Maximum keys returned (0 = no limit).
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// Keep-alive throughput: grants `--leases` leases, then `--clients` keep-alive streams renew
    /// them round-robin, one request in flight per stream, `--total` renewals in all.
    LeaseKeepalive {
        /// Number of leases.
        #[arg(long, default_value_t = 1000)]
        leases: usize,
        /// Total number of keep-alives.
        #[arg(long, default_value_t = 20_000)]
        total: u64,
    },
    /// Expiry latency: grants `--leases` leases of `--ttl` seconds with one key each, watches
    /// the keys, and reports how long after each lease's expiry its key's DELETE arrived.
    LeaseExpiry {
        /// Number of leases.
        #[arg(long, default_value_t = 200)]
        leases: usize,
        /// TTL in seconds.
        #[arg(long, default_value_t = 2)]
        ttl: i64,
    },
    /// Puts one key repeatedly until a put succeeds; prints how long that took (leader failover).
    FirstWrite {
        /// Give up after this long (e.g. `30s`).
        #[arg(long, default_value = "30s", value_parser = parse_secs)]
        timeout: Duration,
        /// Deadline of each attempt (e.g. `500ms`).
        #[arg(long, default_value = "500ms", value_parser = parse_secs)]
        attempt: Duration,
    },
}

/// Failures of the tool itself (a failed request is a counted error, not this).
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// An endpoint could not be parsed.
    #[error("bad endpoint {0}: {1}")]
    Endpoint(String, String),
    /// A bad option.
    #[error("{0}")]
    Usage(String),
    /// `first-write` never succeeded.
    #[error("no write succeeded within {0:?}")]
    NoWrite(Duration),
    /// A watch stream failed.
    #[error("watch: {0}")]
    Watch(String),
    /// A lease grant or a leased put failed, or leased keys were not deleted.
    #[error("lease: {0}")]
    Lease(String),
}

fn create(key: &[u8], range_end: &[u8]) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            ..Default::default()
        })),
    }
}

/// Opens `n` watchers on `[key, range_end)` spread over `chans` (one stream per channel) and
/// waits until every one is created. Returns the response streams (the caller reads them, or
/// holds them unread to stall them) and the senders that keep the streams open.
async fn open_watchers(
    chans: &[Channel],
    n: usize,
    key: &[u8],
    range_end: &[u8],
) -> Result<
    (
        Vec<tonic::Streaming<oxcd::proto::etcdserverpb::WatchResponse>>,
        Vec<tokio::sync::mpsc::Sender<WatchRequest>>,
    ),
    BenchError,
> {
    let mut streams = Vec::new();
    let mut senders = Vec::new();
    let per = n.div_ceil(chans.len().max(1));
    let mut left = n;
    for ch in chans {
        if left == 0 {
            break;
        }
        let k = per.min(left);
        left -= k;
        let (tx, rx) = tokio::sync::mpsc::channel(k + 1);
        for _ in 0..k {
            tx.send(create(key, range_end))
                .await
                .map_err(|e| BenchError::Watch(e.to_string()))?;
        }
        let mut s = WatchClient::new(ch.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| BenchError::Watch(e.to_string()))?
            .into_inner();
        let mut created = 0;
        while created < k {
            match s.message().await {
                Ok(Some(r)) if r.created => created += 1,
                Ok(Some(_)) => {}
                Ok(None) => return Err(BenchError::Watch("stream closed".into())),
                Err(e) => return Err(BenchError::Watch(e.to_string())),
            }
        }
        streams.push(s);
        senders.push(tx);
    }
    Ok((streams, senders))
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn watch_fanout(
    args: &Args,
    watchers: usize,
    total: u64,
    put_rate: u64,
    val_size: usize,
) -> Result<(), BenchError> {
    let chans = channels(&args.endpoints, args.conns.max(1))?;
    let prefix = format!("oxcd-bench/watch/{}/", now_nanos());
    let mut end = prefix.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let (streams, _keep) = open_watchers(&chans, watchers, prefix.as_bytes(), &end).await?;
    let expected = total * watchers as u64;
    let received = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(parking_lot::Mutex::new(
        Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?,
    ));
    let start = Instant::now();
    let mut readers = Vec::new();
    for mut s in streams {
        let received = received.clone();
        let hist = hist.clone();
        readers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).ok();
            let mut n = 0u64;
            while let Ok(Some(r)) = s.message().await {
                let at = now_nanos();
                for ev in &r.events {
                    let Some(kv) = ev.kv.as_ref() else { continue };
                    if kv.value.len() >= 8 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&kv.value[..8]);
                        let sent = u64::from_be_bytes(b);
                        if let Some(h) = local.as_mut() {
                            let _ = h.record(at.saturating_sub(sent) / 1000);
                        }
                    }
                    n += 1;
                }
                if received.fetch_add(r.events.len() as u64, Ordering::Relaxed)
                    + r.events.len() as u64
                    >= expected
                {
                    break;
                }
            }
            if let Some(h) = local {
                let _ = hist.lock().add(h);
            }
            n
        }));
    }
    // The writer has a connection of its own, as a separate client would.
    let mut kv = KvClient::new(channels(&args.endpoints, 1)?.remove(0));
    let gap = Duration::from_secs_f64(1.0 / put_rate.max(1) as f64);
    let mut next = tokio::time::Instant::now();
    let mut put_errors = 0u64;
    for i in 0..total {
        tokio::time::sleep_until(next).await;
        next += gap;
        let mut value = now_nanos().to_be_bytes().to_vec();
        value.resize(val_size.max(16), b'v');
        let put = kv.put(PutRequest {
            key: format!("{prefix}{i:08}").into_bytes(),
            value,
            ..Default::default()
        });
        if put.await.is_err() {
            put_errors += 1;
        }
    }
    let wait = tokio::time::timeout(Duration::from_secs(60), async {
        while received.load(Ordering::Relaxed) < expected - put_errors * watchers as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let elapsed = start.elapsed();
    for r in &readers {
        r.abort();
    }
    let got = received.load(Ordering::Relaxed);
    let h = hist.lock();
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let eps = got as f64 / elapsed.as_secs_f64().max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "op": "watch", "watchers": watchers, "streams": chans.len(), "puts": total,
                "put_errors": put_errors, "events": got, "expected": expected,
                "complete": wait.is_ok(), "seconds": elapsed.as_secs_f64(),
                "events_per_sec": eps,
                "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": h.max() as f64 / 1000.0},
            })
        );
    } else {
        println!("Summary (watch fan-out, {watchers} watchers on {} streams, {total} puts at {put_rate}/s):", chans.len());
        println!(
            "  Events:       {got} of {expected} in {:.3} s ({eps:.0} events/s)",
            elapsed.as_secs_f64()
        );
        println!(
            "  Delivery latency (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            h.max() as f64 / 1000.0
        );
    }
    if wait.is_err() {
        return Err(BenchError::Watch(format!(
            "only {got} of {expected} events arrived within 60 s after the last put"
        )));
    }
    Ok(())
}

/// Grants `n` leases of `ttl` seconds over `chans`; returns (ID, granted TTL, when granted).
async fn grant_leases(
    chans: &[Channel],
    n: usize,
    ttl: i64,
) -> Result<Vec<(i64, i64, Instant)>, BenchError> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = LeaseClient::new(chans[i % chans.len()].clone());
        let r = c
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .map_err(|e| BenchError::Lease(e.message().to_string()))?
            .into_inner();
        out.push((r.id, r.ttl, Instant::now()));
    }
    Ok(out)
}

async fn lease_keepalive(args: &Args, leases: usize, total: u64) -> Result<(), BenchError> {
    let chans = channels(&args.endpoints, args.conns.max(1))?;
    let ids: Arc<Vec<i64>> = Arc::new(
        grant_leases(&chans, leases.max(1), 60)
            .await?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut client = LeaseClient::new(chans[i % chans.len()].clone());
        let (ids, next, errors) = (ids.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).ok();
            let mut first_error = None;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            // etcd (grpc-go) sends the response headers with the first answer, so the stream
            // is opened only once its first request is queued.
            let mut rx = Some(rx);
            let mut inbound = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let id = ids[n as usize % ids.len()];
                let t = Instant::now();
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if let Some(rx) = rx.take() {
                    match client
                        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await
                    {
                        Ok(r) => inbound = Some(r.into_inner()),
                        Err(e) => return (hist, Some(e.message().to_string())),
                    }
                }
                let Some(inbound) = inbound.as_mut() else {
                    break;
                };
                match inbound.message().await {
                    Ok(Some(r)) if r.ttl > 0 => {
                        if let Some(h) = hist.as_mut() {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                    }
                    Ok(Some(_)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| "lease not found (TTL 0)".to_string());
                    }
                    Ok(None) => break,
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| e.message().to_string());
                        break;
                    }
                }
            }
            (hist, first_error)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?;
    let mut first_error = None;
    for t in tasks {
        if let Ok((h, err)) = t.await {
            if let Some(h) = h {
                let _ = hist.add(h);
            }
            if first_error.is_none() {
                first_error = err;
            }
        }
    }
    let r = Report {
        total: total.min(next.load(Ordering::Relaxed)),
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        hist,
        first_error,
    };
    print(args, "lease-keepalive", &r);
    Ok(())
}

async fn lease_expiry(args: &Args, leases: usize, ttl: i64) -> Result<(), BenchError> {
    let chans = channels(&args.endpoints, args.conns.max(1))?;
    let prefix = format!("oxcd-bench/lease/{}/", now_nanos());
    let mut end = prefix.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let (mut streams, _keep) = open_watchers(&chans[..1], 1, prefix.as_bytes(), &end).await?;
    let mut stream = streams.remove(0);
    let granted = grant_leases(&chans, leases.max(1), ttl).await?;
    let mut kv = KvClient::new(chans[0].clone());
    let mut expiry = std::collections::HashMap::new();
    for (i, (id, ttl, at)) in granted.iter().enumerate() {
        let key = format!("{prefix}{i:06}").into_bytes();
        kv.put(PutRequest {
            key: key.clone(),
            value: b"x".to_vec(),
            lease: *id,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::Lease(e.message().to_string()))?;
        expiry.insert(key, *at + Duration::from_secs(*ttl as u64));
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?;
    let max_ttl = granted.iter().map(|g| g.1).max().unwrap_or(ttl).max(1) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(max_ttl * 3 + 30);
    let mut early = 0u64;
    while !expiry.is_empty() {
        let msg = tokio::time::timeout_at(deadline, stream.message()).await;
        let Ok(Ok(Some(r))) = msg else { break };
        let now = Instant::now();
        for ev in r.events.iter().filter(|e| e.r#type == 1) {
            let Some(kv) = ev.kv.as_ref() else { continue };
            if let Some(at) = expiry.remove(&kv.key) {
                match now.checked_duration_since(at) {
                    Some(late) => {
                        let _ = hist.record(late.as_micros() as u64);
                    }
                    None => early += 1,
                }
            }
        }
    }
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let missing = expiry.len();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "op": "lease-expiry", "leases": leases, "ttl": ttl, "missing": missing,
                "early": early,
                "expiry_to_delete_ms": {"avg": hist.mean() / 1000.0, "p50": q(0.5), "p90": q(0.9),
                    "p99": q(0.99), "max": hist.max() as f64 / 1000.0},
            })
        );
    } else {
        println!("Summary (lease expiry, {leases} leases of {ttl} s, one key each):");
        println!(
            "  Expiry to DELETE (ms): avg {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            hist.mean() / 1000.0,
            q(0.5),
            q(0.9),
            q(0.99),
            hist.max() as f64 / 1000.0
        );
        println!("  Deleted before expiry: {early}; never deleted: {missing}");
    }
    if missing > 0 {
        return Err(BenchError::Lease(format!(
            "{missing} keys were not deleted within {} s of their expiry",
            max_ttl * 2 + 30
        )));
    }
    Ok(())
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn channels(endpoints: &str, conns: usize) -> Result<Vec<Channel>, BenchError> {
    let eps: Vec<&str> = endpoints.split(',').filter(|e| !e.is_empty()).collect();
    if eps.is_empty() || conns == 0 {
        return Err(BenchError::Usage(
            "need at least one endpoint and one connection".into(),
        ));
    }
    (0..conns)
        .map(|i| {
            let ep = eps[i % eps.len()];
            let url = if ep.contains("://") {
                ep.to_string()
            } else {
                format!("http://{ep}")
            };
            Endpoint::from_shared(url.clone())
                .map(|e| {
                    e.tcp_nodelay(true)
                        .connect_timeout(Duration::from_secs(3))
                        .connect_lazy()
                })
                .map_err(|e| BenchError::Endpoint(url, e.to_string()))
        })
        .collect()
}

/// One request kind, built for request number `n`.
#[derive(Clone)]
enum Work {
    Put {
        key_size: usize,
        value: Vec<u8>,
        key_space: u64,
        sequential: bool,
    },
    Range(RangeRequest),
}

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

async fn run_one(
    c: &mut KvClient<Channel>,
    w: &Work,
    n: u64,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    match w {
        Work::Put {
            key_size,
            value,
            key_space,
            sequential,
        } => {
            let key = key_for(n, *key_size, *key_space, *sequential);
            let req = PutRequest {
                key,
                value: value.clone(),
                ..Default::default()
            };
            c.put(authed(req, token)?).await.map(|_| ())
        }
        Work::Range(r) => c.range(authed(r.clone(), token)?).await.map(|_| ()),
    }
}

struct Report {
    total: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    first_error: Option<String>,
}

async fn load(args: &Args, work: Work, total: u64) -> Result<Report, BenchError> {
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
            let mut first_error = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t = Instant::now();
                match run_one(&mut client, &work, n, token.as_deref()).await {
                    Ok(()) => {
                        if let Some(h) = hist.as_mut() {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| e.message().to_string());
                    }
                }
            }
            (hist, first_error)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?;
    let mut first_error = None;
    for t in tasks {
        if let Ok((Some(h), err)) = t.await {
            let _ = hist.add(h);
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
        first_error,
    })
}

fn print(args: &Args, what: &str, r: &Report) {
    let ok = r.total - r.errors;
    let rps = ok as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |p: f64| ms(r.hist.value_at_quantile(p));
    if args.json {
        let v = serde_json::json!({
            "op": what,
            "clients": args.clients,
            "conns": args.conns,
            "total": r.total,
            "errors": r.errors,
            "seconds": r.elapsed.as_secs_f64(),
            "requests_per_sec": rps,
            "latency_ms": {
                "avg": r.hist.mean() / 1000.0,
                "p50": q(0.50),
                "p90": q(0.90),
                "p99": q(0.99),
                "p999": q(0.999),
                "max": ms(r.hist.max()),
            },
            "first_error": r.first_error,
        });
        println!("{v}");
        return;
    }
    println!(
        "Summary ({what}, {} clients, {} conns):",
        args.clients, args.conns
    );
    println!("  Total:        {:.4} secs.", r.elapsed.as_secs_f64());
    println!("  Requests/sec: {rps:.1}");
    println!(
        "  Latency (ms): avg {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        r.hist.mean() / 1000.0,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        ms(r.hist.max())
    );
    if r.errors > 0 {
        println!(
            "  Errors:       {} (first: {})",
            r.errors,
            r.first_error.as_deref().unwrap_or("")
        );
    }
}

async fn first_write(args: &Args, timeout: Duration, attempt: Duration) -> Result<(), BenchError> {
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

async fn run(args: Args) -> Result<(), BenchError> {
    match &args.cmd {
        Cmd::Watch {
            watchers,
            total,
            put_rate,
            val_size,
        } => watch_fanout(&args, *watchers, *total, *put_rate, *val_size).await?,
        Cmd::Put {
            total,
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
            stalled_watchers,
        } => {
            // Stalled watchers: created, then never read (held until the load ends).
            let _stalled = if *stalled_watchers > 0 {
                let chans = channels(&args.endpoints, args.conns.max(1))?;
                Some(open_watchers(&chans, *stalled_watchers, &[0], &[0]).await?)
            } else {
                None
            };
            let work = Work::Put {
                key_size: *key_size,
                value: vec![b'v'; *val_size],
                key_space: *key_space_size,
                sequential: *sequential_keys,
            };
            let r = load(&args, work, *total).await?;
            print(&args, "put", &r);
        }
        Cmd::Range {
            key,
            end,
            total,
            consistency,
            limit,
        } => {
            let serializable = match consistency.as_str() {
                "l" => false,
                "s" => true,
                other => {
                    return Err(BenchError::Usage(format!(
                        "--consistency must be l or s, not {other:?}"
                    )))
                }
            };
            let req = RangeRequest {
                key: key.clone().into_bytes(),
                range_end: end.clone().unwrap_or_default().into_bytes(),
                serializable,
                limit: *limit,
                ..Default::default()
            };
            let r = load(&args, Work::Range(req), *total).await?;
            let what = if serializable {
                "range-serializable"
            } else {
                "range-linearizable"
            };
            print(&args, what, &r);
        }
        Cmd::FirstWrite { timeout, attempt } => first_write(&args, *timeout, *attempt).await?,
        Cmd::LeaseKeepalive { leases, total } => lease_keepalive(&args, *leases, *total).await?,
        Cmd::LeaseExpiry { leases, ttl } => lease_expiry(&args, *leases, *ttl).await?,
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxcd-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxcd-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
