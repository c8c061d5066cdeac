//! Watch workloads: the `watch` fan-out (`watch_fanout`) and the watchers that `put
//! --stalled-watchers` opens and never reads (`open_watchers`).
//!
//! Invariants: watchers are spread over the given channels, one stream per channel, and every
//! stream's create requests are queued in one batch before the stream opens, so creating N
//! watchers costs N creates and no more; `open_watchers` returns only once every watcher is
//! created. The fan-out writer has a connection of its own, stamps each value with its send time
//! (so values are at least 16 bytes), and latency samples are kept per stream and merged only
//! after the readers stop, so aborting a reader loses none of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use oxcd::proto::etcdserverpb::kv_client::KvClient;
use oxcd::proto::etcdserverpb::watch_client::WatchClient;
use oxcd::proto::etcdserverpb::watch_request::RequestUnion;
use oxcd::proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tonic::transport::Channel;

use crate::{channels, now_nanos, Args, BenchError};

/// A request creating a watcher on `[key, range_end)` from the current revision.
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
pub(crate) async fn open_watchers(
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

/// The `watch` subcommand: see `Cmd::Watch`.
pub(crate) async fn watch_fanout(
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
    let start = Instant::now();
    let mut readers = Vec::new();
    // One histogram per stream, merged once the readers are stopped: a reader blocked on a
    // stream with nothing more to come is aborted, and its samples must not be lost with it.
    let mut hists = Vec::new();
    for mut s in streams {
        let received = received.clone();
        let local = Arc::new(parking_lot::Mutex::new(
            Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?,
        ));
        hists.push(local.clone());
        readers.push(tokio::spawn(async move {
            while let Ok(Some(r)) = s.message().await {
                let at = now_nanos();
                let mut h = local.lock();
                for ev in &r.events {
                    let Some(kv) = ev.kv.as_ref() else { continue };
                    if kv.value.len() >= 8 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&kv.value[..8]);
                        let sent = u64::from_be_bytes(b);
                        let _ = h.record(at.saturating_sub(sent) / 1000);
                    }
                }
                drop(h);
                if received.fetch_add(r.events.len() as u64, Ordering::Relaxed)
                    + r.events.len() as u64
                    >= expected
                {
                    break;
                }
            }
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
    for r in readers {
        let _ = r.await;
    }
    let got = received.load(Ordering::Relaxed);
    let mut h = Histogram::<u64>::new(3).map_err(|e| BenchError::Usage(e.to_string()))?;
    for local in &hists {
        let _ = h.add(&*local.lock());
    }
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
