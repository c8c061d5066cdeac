//! `oxcd-bench`: a load tool in the style of etcd's `benchmark`, usable against oxcd and the real
//! etcd alike (it speaks only etcd's gRPC API).
//!
//! ```text
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 put --total=10000 --val-size=256
//! oxcd-bench --endpoints=127.0.0.1:2379 range foo --consistency=l --total=10000
//! oxcd-bench --endpoints=127.0.0.1:2379,127.0.0.1:22379 first-write --timeout=30s
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
use oxcd::proto::etcdserverpb::{PutRequest, RangeRequest};
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

async fn run_one(c: &mut KvClient<Channel>, w: &Work, n: u64) -> Result<(), tonic::Status> {
    match w {
        Work::Put {
            key_size,
            value,
            key_space,
            sequential,
        } => {
            let key = key_for(n, *key_size, *key_space, *sequential);
            c.put(PutRequest {
                key,
                value: value.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
        Work::Range(r) => c.range(r.clone()).await.map(|_| ()),
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
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut client = KvClient::new(chans[i % chans.len()].clone());
        let next = next.clone();
        let errors = errors.clone();
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).ok();
            let mut first_error = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t = Instant::now();
                match run_one(&mut client, &work, n).await {
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
        Cmd::Put {
            total,
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
        } => {
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
