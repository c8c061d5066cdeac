//! Durability of a single member: data, revisions and identity survive a clean restart, and a
//! SIGKILL in the middle of a write load loses no write that was acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_client::GetOptions;

use crate::harness::{etcdctl, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_revisions_and_identity_survive_restart() {
    let mut c = Cluster::start(1).await;
    let mut kv = c.client().await;
    for i in 0..20 {
        kv.put(format!("key{i:02}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    kv.delete("key05", None).await.expect("delete");
    kv.compact(5, None).await.expect("compact");
    let before = kv
        .get("key", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let st_before = kv.status().await.expect("status");
    let id_before = st_before.header().expect("h").member_id();
    let cluster_before = st_before.header().expect("h").cluster_id();
    drop(kv);

    assert!(c.members[0].stop().await, "clean exit on SIGTERM");
    c.members[0].start();
    c.members[0].wait_serving().await;
    let mut kv = c.client().await;
    let after = kv
        .get("key", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);
    let view = |kvs: &[etcd_client::KeyValue]| -> Vec<Row> {
        kvs.iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect()
    };
    assert_eq!(view(after.kvs()), view(before.kvs()));
    assert_eq!(
        after.header().expect("h").revision(),
        before.header().expect("h").revision()
    );
    let h = kv.status().await.expect("status");
    assert_eq!(h.header().expect("h").member_id(), id_before);
    assert_eq!(h.header().expect("h").cluster_id(), cluster_before);
    // History and the compaction point survive too.
    let old = kv
        .get("key03", Some(GetOptions::new().with_revision(6)))
        .await
        .expect("old revision");
    assert_eq!(old.kvs()[0].value(), b"v3");
    let e = kv
        .get("key03", Some(GetOptions::new().with_revision(4)))
        .await
        .expect_err("compacted");
    assert!(
        e.to_string()
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{e}"
    );
    // The next write continues the revision sequence.
    let r = kv.put("next", "x", None).await.expect("put");
    assert_eq!(
        r.header().expect("h").revision(),
        before.header().expect("h").revision() + 1
    );
    let ctl = etcdctl(&c.endpoints(), &["get", "key19", "--print-value-only"]);
    assert_eq!(ctl.stdout, "v19\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let mut c = Cluster::start(1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut kv = c.client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}/k{i}");
                match kv.put(key.clone(), format!("value-{i}"), None).await {
                    Ok(_) => acked.push(key),
                    Err(_) => break,
                }
                i += 1;
            }
            acked
        }));
    }
    // Kill once a good number of writes has been acknowledged.
    let mut probe = c.client().await;
    crate::harness::wait_until("writes to be acknowledged", crate::harness::WAIT, || {
        let mut p = probe.clone();
        async move {
            p.get("w", Some(GetOptions::new().with_prefix().with_count_only()))
                .await
                .map(|g| g.count() >= 400)
                .unwrap_or(false)
        }
    })
    .await;
    c.members[0].kill();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(
        acked.len() >= 400,
        "only {} writes acknowledged",
        acked.len()
    );

    c.members[0].start();
    c.members[0].wait_serving().await;
    probe = c.client().await;
    let all = probe
        .get("w", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("get");
    let present: std::collections::HashSet<Vec<u8>> =
        all.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !present.contains(k.as_bytes()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
