//! Lease workloads: `lease-keepalive` (`lease_keepalive`) and `lease-expiry` (`lease_expiry`),
//! with the bulk grant and revoke they share.
//!
//! Invariants: leases are granted, and revoked, at most `GRANT_PARALLELISM` at a time spread
//! round-robin over the connections; keep-alive streams hold one request in flight each, pick
//! their lease round-robin and together send at most `--total` renewals; the leases of a
//! keep-alive run are revoked after the measurement (a failed revoke is reported, not fatal);
//! an expiry run fails if any leased key is not deleted before its deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use oxcd::proto::etcdserverpb::kv_client::KvClient;
use oxcd::proto::etcdserverpb::lease_client::LeaseClient;
use oxcd::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
};
use tonic::transport::Channel;

use crate::load::{print, Report};
use crate::watch::open_watchers;
use crate::{channels, now_nanos, Args, BenchError};

/// Lease grants (and revokes) in flight at once: one at a time, 10,000 leases on a 3-member
/// cluster would take a minute of round trips before the load even starts.
const GRANT_PARALLELISM: usize = 64;

/// Grants `n` leases of `ttl` seconds over `chans`, `GRANT_PARALLELISM` at a time; returns
/// (ID, granted TTL, when granted), in no particular order.
async fn grant_leases(
    chans: &[Channel],
    n: usize,
    ttl: i64,
) -> Result<Vec<(i64, i64, Instant)>, BenchError> {
    if chans.is_empty() {
        return Err(BenchError::Usage("no connection to grant leases on".into()));
    }
    futures::stream::iter(0..n)
        .map(|i| {
            let mut c = LeaseClient::new(chans[i % chans.len()].clone());
            async move {
                let r = c
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map_err(|e| BenchError::Lease(e.message().to_string()))?
                    .into_inner();
                Ok::<_, BenchError>((r.id, r.ttl, Instant::now()))
            }
        })
        .buffer_unordered(GRANT_PARALLELISM)
        .try_collect()
        .await
}

/// Revokes `ids` over `chans`, `GRANT_PARALLELISM` at a time, so that a run's leases do not
/// expire in bulk during whatever runs next; returns how many revokes failed.
async fn revoke_leases(chans: &[Channel], ids: &[i64]) -> usize {
    if chans.is_empty() {
        return ids.len();
    }
    futures::stream::iter(ids.iter().enumerate())
        .map(|(i, &id)| {
            let mut c = LeaseClient::new(chans[i % chans.len()].clone());
            async move { c.lease_revoke(LeaseRevokeRequest { id }).await.is_err() }
        })
        .buffer_unordered(GRANT_PARALLELISM)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await
}

/// The `lease-keepalive` subcommand: see `Cmd::LeaseKeepalive`. The leases are revoked after
/// the measurement.
pub(crate) async fn lease_keepalive(
    args: &Args,
    leases: usize,
    total: u64,
) -> Result<(), BenchError> {
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
        parts: Vec::new(),
        errors_by_message: Default::default(),
        first_error,
    };
    let failed = revoke_leases(&chans, &ids).await;
    if failed > 0 {
        eprintln!("oxcd-bench: {failed} of {} lease revokes failed", ids.len());
    }
    print(args, "lease-keepalive", &r);
    Ok(())
}

/// The `lease-expiry` subcommand: see `Cmd::LeaseExpiry`.
pub(crate) async fn lease_expiry(args: &Args, leases: usize, ttl: i64) -> Result<(), BenchError> {
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
