//! Behaviour with more data than a request's worth: a compaction of a long history deletes in
//! bounded batches while reads and writes go on, and the member pushes back instead of queueing
//! without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_client::{CompactionOptions, GetOptions, Txn, TxnOp};

use crate::harness::{
    count, fill_incompressible, wait_same_hashkv, wait_until, Cluster, Kind, WAIT,
};

/// Keys rewritten per transaction (etcd's default `--max-txn-ops` is 128).
const KEYS: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_of_a_long_history_lets_reads_and_writes_through_between_batches() {
    let c = Cluster::start_with(Kind::Oxcd, 1, &["--experimental-compaction-batch-limit=5"]).await;
    let mut kv = c.members[0].client().await;
    // 400 transactions that each rewrite 128 keys: 51,200 stored revisions, all but the last
    // 128 superseded.
    for round in 0..400u32 {
        let ops: Vec<TxnOp> = (0..KEYS)
            .map(|k| TxnOp::put(format!("hist/{k:03}"), round.to_be_bytes().to_vec(), None))
            .collect();
        kv.txn(Txn::new().and_then(ops)).await.expect("txn");
    }
    let rev = kv
        .get("hist/000", None)
        .await
        .expect("get")
        .header()
        .map(|h| h.revision())
        .expect("header");

    let finished = Arc::new(AtomicBool::new(false));
    let compaction = {
        let mut kv = kv.clone();
        let finished = finished.clone();
        tokio::spawn(async move {
            let r = kv
                .compact(rev, Some(CompactionOptions::new().with_physical()))
                .await;
            finished.store(true, Ordering::SeqCst);
            r
        })
    };
    // Writes and reads while the compaction deletes 51,072 rows five at a time.
    let mut during = 0u32;
    let mut n = 0u32;
    while !finished.load(Ordering::SeqCst) {
        kv.put(format!("during/{n}"), "v", None)
            .await
            .expect("put during the compaction");
        let g = kv
            .get(
                "hist/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("read during the compaction");
        assert_eq!(g.count(), KEYS as i64);
        if !finished.load(Ordering::SeqCst) {
            during += 1;
        }
        n += 1;
    }
    compaction
        .await
        .expect("join")
        .expect("physical compaction");
    let log = c.members[0].log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("finished scheduled compaction"))
        .unwrap_or_else(|| panic!("no compaction finished: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    assert_eq!(v["fields"]["deleted"].as_u64(), Some(51_200 - KEYS as u64));
    assert!(v["fields"]["batches"].as_u64() > Some(10_000), "{line}");
    assert!(
        during >= 3,
        "only {during} writes and reads finished while the compaction ran"
    );
    eprintln!("{during} put+get pairs finished while the compaction deleted in batches");
    // The compacted history is gone, the latest values are not.
    let old = kv
        .get("hist/000", Some(GetOptions::new().with_revision(rev - 1)))
        .await
        .expect_err("compacted");
    assert!(old
        .to_string()
        .contains("required revision has been compacted"));
    let g = kv.get("hist/127", None).await.expect("get");
    assert_eq!(g.kvs()[0].value(), 399u32.to_be_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_under_an_apply_backlog_and_writes_resume_after() {
    // etcd refuses proposals while more than 5000 committed entries wait to be applied; with
    // the bound at 0 any backlog at all makes the member push back, so concurrent writers see it.
    let c = Cluster::start_with(Kind::Oxcd, 1, &["--max-apply-backlog=0"]).await;
    let kv = c.members[0].client().await;
    let refused = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..32 {
        let mut kv = kv.clone();
        let refused = refused.clone();
        writers.push(tokio::spawn(async move {
            let mut ok = 0u32;
            for i in 0..2000 {
                if refused.load(Ordering::SeqCst) {
                    break;
                }
                match kv.put(format!("load/{w}/{i}"), vec![0u8; 1024], None).await {
                    Ok(_) => ok += 1,
                    Err(etcd_client::Error::GRpcStatus(s)) => {
                        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                        assert_eq!(s.message(), "etcdserver: too many requests");
                        refused.store(true, Ordering::SeqCst);
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            ok
        }));
    }
    let mut written = 0;
    for w in writers {
        written += w.await.expect("writer");
    }
    assert!(
        refused.load(Ordering::SeqCst),
        "no write was refused in {written} puts from 32 writers"
    );
    // The backlog drains once the load stops: the member takes writes again.
    let mut kv = kv;
    wait_until("writes to be accepted again", WAIT, || {
        let mut kv = kv.clone();
        async move { kv.put("after", "v", None).await.is_ok() }
    })
    .await;
    let g = kv.get("after", None).await.expect("get");
    assert_eq!(g.kvs()[0].value(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_catches_up_through_appends_split_below_the_message_limit() {
    let mut c = Cluster::start_with(Kind::Oxcd, 3, &[]).await;
    let leader = c.wait_leader().await;
    let lagger = (0..3).find(|&i| i != leader).expect("follower");
    assert!(c.members[lagger].stop().await, "clean exit on SIGTERM");
    let mut kv = c.members[leader].client().await;
    // 48 entries of 1 MiB that do not compress: three times the 16 MiB an append may carry.
    fill_incompressible(&mut kv, "big/", 48, 1 << 20).await;
    c.members[lagger].start();
    wait_until("the lagging member to hold every key", WAIT * 2, || {
        let m = &c.members[lagger];
        async move { count(m, "big/").await == 48 }
    })
    .await;
    let log = c.members[leader].log();
    let line = log
        .lines()
        .find(|l| l.contains("splitting an append that exceeds the peer message limit"))
        .unwrap_or_else(|| panic!("the leader never split an append: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    assert!(
        v["fields"]["bytes"].as_u64() > v["fields"]["limit"].as_u64(),
        "{line}"
    );
    assert!(
        !c.members[lagger]
            .log()
            .contains("installed snapshot from leader"),
        "the member caught up from the log, not a snapshot"
    );
    // Same data everywhere.
    wait_same_hashkv(&c).await;
}
