//! `oxcd-bench`: a load tool in the style of etcd's `benchmark`, usable against oxcd and the real
//! etcd alike (it speaks only etcd's gRPC API).
//!
//! ```text
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 put --total=10000 --val-size=256
//! oxcd-bench --endpoints=127.0.0.1:2379 range foo --consistency=l --total=10000
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 txn --ops=4 --total=10000
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 mixed --read-percent=90 --key-space-size=100000
//! oxcd-bench --endpoints=127.0.0.1:2379,127.0.0.1:22379 first-write --timeout=30s
//! oxcd-bench --endpoints=127.0.0.1:2379 --conns=10 watch --watchers=1000 --total=500 --put-rate=100
//! oxcd-bench --endpoints=127.0.0.1:2379 --conns=100 watch --watchers=10000 --total=300
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 put --stalled-watchers=1000
//! oxcd-bench --endpoints=127.0.0.1:2379 --clients=100 --conns=10 lease-keepalive --leases=10000
//! oxcd-bench --endpoints=127.0.0.1:2379 lease-expiry --leases=200 --ttl=2
//! ```
//!
//! Invariants: `--clients` concurrent workers share `--conns` HTTP/2 connections round-robin and
//! together issue exactly `--total` requests; a failed request is counted as an error, not as a
//! latency sample; results print as one human-readable block, or one JSON object with `--json`.
//! Nothing scales worse than linearly in `--watchers` or `--leases` (10,000 of either is routine):
//! watchers are created in one batch per stream, leases are granted (and, after `lease-keepalive`,
//! revoked) `GRANT_PARALLELISM` at a time, and keep-alives pick their lease round-robin.
//!
//! Layout: this file holds the command line (`Args`, `Cmd`), the helpers every workload shares
//! (`BenchError`, `channels`, `now_nanos`, `parse_secs`, `serializable`) and `run`, which
//! dispatches each subcommand; `load` holds the request loads (`put`, `txn`, `mixed`, `range`),
//! their report and `first-write`; `watch` the watch fan-out and the stalled watchers; `lease`
//! lease keep-alive and expiry (and `GRANT_PARALLELISM`).

mod lease;
mod load;
mod watch;

use std::time::Duration;

use clap::{Parser, Subcommand};
use oxcd::proto::etcdserverpb::RangeRequest;
use tonic::transport::{Channel, Endpoint};

use crate::lease::{lease_expiry, lease_keepalive};
use crate::load::{first_write, load, print, Keys, Work};
use crate::watch::{open_watchers, watch_fanout};

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

/// The subcommands: one workload each.
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
    /// Txns without compares, each putting `--ops` distinct keys (chosen as `put` chooses them)
    /// in its success branch; `--total` txns in all.
    Txn {
        /// Total number of txns.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// Puts per txn (etcd refuses more than 128 by default).
        #[arg(long, default_value_t = 4)]
        ops: usize,
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        /// Keys are chosen from this many distinct keys; at least `--ops`, since etcd refuses a
        /// txn that puts one key twice.
        #[arg(long, default_value_t = 100_000)]
        key_space_size: u64,
        /// Choose keys in order instead of at random.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Read/write mix: of every 100 requests, `--read-percent` are single-key ranges and the rest
    /// puts (interleaved evenly), all on keys drawn at random from one key space; `--total`
    /// requests in all. Keys need not exist beforehand (a missing key reads as an empty range).
    Mixed {
        /// Total number of requests.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// Percentage of requests that are ranges (0 to 100).
        #[arg(long, default_value_t = 90)]
        read_percent: u64,
        /// Ranges are `l` (linearizable) or `s` (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size of the puts in bytes.
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        /// Keys are chosen from this many distinct keys (1 = always the same key).
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
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

/// Wall-clock time in nanoseconds since the Unix epoch (0 if the clock is before it).
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Parses a duration such as `500ms`, `30s`, `2m` or `1.5` (seconds).
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

/// `conns` lazily connected channels, spread round-robin over the comma-separated `endpoints`.
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

/// Whether `--consistency` asks for serializable (`s`) rather than linearizable (`l`) reads.
fn serializable(consistency: &str) -> Result<bool, BenchError> {
    match consistency {
        "l" => Ok(false),
        "s" => Ok(true),
        other => Err(BenchError::Usage(format!(
            "--consistency must be l or s, not {other:?}"
        ))),
    }
}

/// Runs the subcommand of `args`.
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
                keys: Keys {
                    size: *key_size,
                    space: *key_space_size,
                    sequential: *sequential_keys,
                },
                value: random_value(*val_size),
            };
            let r = load(&args, work, *total).await?;
            print(&args, "put", &r);
        }
        Cmd::Txn {
            total,
            ops,
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
        } => {
            let keys = Keys {
                size: *key_size,
                space: *key_space_size,
                sequential: *sequential_keys,
            };
            if *ops == 0 || keys.distinct() < *ops as u64 {
                return Err(BenchError::Usage(format!(
                    "--ops={ops} wants 1 or more puts on distinct keys, and --key-space-size and \
                     --key-size allow {} distinct keys",
                    keys.distinct()
                )));
            }
            let work = Work::Txn {
                keys,
                ops: *ops,
                value: random_value(*val_size),
            };
            let r = load(&args, work, *total).await?;
            print(&args, "txn", &r);
        }
        Cmd::Mixed {
            total,
            read_percent,
            consistency,
            key_size,
            val_size,
            key_space_size,
        } => {
            if *read_percent > 100 {
                return Err(BenchError::Usage(format!(
                    "--read-percent must be at most 100, not {read_percent}"
                )));
            }
            let work = Work::Mixed {
                keys: Keys {
                    size: *key_size,
                    space: *key_space_size,
                    sequential: false,
                },
                value: random_value(*val_size),
                read_percent: *read_percent,
                serializable: serializable(consistency)?,
            };
            let r = load(&args, work, *total).await?;
            print(&args, "mixed", &r);
        }
        Cmd::Range {
            key,
            end,
            total,
            consistency,
            limit,
        } => {
            let serializable = serializable(consistency)?;
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

/// Parses the command line and runs it on a multi-threaded runtime.
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

/// One value of `size` random bytes, made once per run and sent with every write, as etcd's
/// `benchmark` tool does: random bytes do not compress, so a store that compresses gains nothing
/// a real workload's values might not give it.
fn random_value(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rand::Rng::fill(&mut rand::thread_rng(), v.as_mut_slice());
    v
}
