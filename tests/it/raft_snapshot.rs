//! Raft snapshots at more than toy size: a lagging member catches up from a database of many
//! chunks, and a member SIGKILLed at each step of receiving and installing one restarts cleanly
//! and converges.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{
    connect, count, fill_incompressible, wait_same_hashkv, wait_until, Cluster, Kind, Member, WAIT,
};

/// Values this large make the snapshot many times the 1 MiB chunk.
const VALUE: usize = 24 << 10;

/// The entries of the member's snapshot directory.
fn snap_entries(m: &Member) -> Vec<String> {
    let dir: PathBuf = m.spec.data_dir.join("member").join("snap");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The field `key` of the last (JSON) log line containing `what`.
fn logged_number(log: &str, what: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(what))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["fields"][key].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_catches_up_from_a_snapshot_of_many_chunks() {
    let mut c = Cluster::start_with(Kind::Oxcd, 3, &["--snapshot-count=200"]).await;
    let leader = c.wait_leader().await;
    let lagger = (0..3).find(|&i| i != leader).expect("follower");
    assert!(c.members[lagger].stop().await);
    let others: Vec<String> = (0..3)
        .filter(|&i| i != lagger)
        .map(|i| c.members[i].endpoint())
        .collect();
    let mut kv = connect(&others).await;
    fill_incompressible(&mut kv, "big/", 1600, VALUE).await;

    let started = Instant::now();
    c.members[lagger].start();
    wait_until("the lagging member to hold every key", WAIT * 2, || {
        let m = &c.members[lagger];
        async move { count(m, "big/").await == 1600 }
    })
    .await;
    let took = started.elapsed();
    wait_same_hashkv(&c).await;
    let log = c.members[lagger].log();
    assert!(log.contains("installed snapshot from leader"), "{log}");
    let received = logged_number(&log, "received snapshot; installing", "bytes").expect("bytes");
    assert!(
        received > 16 << 20,
        "the snapshot spans many 1 MiB chunks: {received} bytes"
    );
    eprintln!(
        "caught up through a snapshot of {} MiB in {:.1} s",
        received >> 20,
        took.as_secs_f64()
    );
    // What remains on disk: the member's own snapshots, nothing received or half-made.
    for m in &c.members {
        let entries = snap_entries(m);
        assert!(
            entries.iter().all(|e| e.starts_with("snap-")) && entries.len() <= 2,
            "{}: {entries:?}",
            m.spec.name
        );
    }
    kv.put("after", "v", None).await.expect("write after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_at_each_step_of_an_install_restarts_and_converges() {
    let mut c = Cluster::start_with(Kind::Oxcd, 3, &["--snapshot-count=200"]).await;
    let leader = c.wait_leader().await;
    let lagger = (0..3).find(|&i| i != leader).expect("follower");
    let others: Vec<String> = (0..3)
        .filter(|&i| i != lagger)
        .map(|i| c.members[i].endpoint())
        .collect();
    let mut kv = connect(&others).await;
    assert!(c.members[lagger].stop().await);
    fill_incompressible(&mut kv, "big/", 1200, VALUE).await;

    let mut recovered = 0;
    for (round, step) in [
        "receiving snapshot",
        "received snapshot; installing",
        "copied a snapshot into the state machine",
    ]
    .into_iter()
    .enumerate()
    {
        // Enough new entries that the leader's log has moved past the member again.
        fill_incompressible(&mut kv, &format!("round{round}/"), 500, 16).await;
        let from = c.members[lagger].log().len();
        c.members[lagger].start();
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let log = c.members[lagger].log();
            if log.get(from..).is_some_and(|l| l.contains(step)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the member never logged {step:?}: {}",
                log.get(from..).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        c.members[lagger].kill();
        if c.members[lagger]
            .log()
            .get(from..)
            .is_some_and(|l| l.contains("finishing a snapshot install interrupted by a crash"))
        {
            recovered += 1;
        }
    }
    c.members[lagger].start();
    c.members[lagger].wait_serving().await;
    wait_until("the member to hold every key", WAIT * 2, || {
        let m = &c.members[lagger];
        async move { count(m, "big/").await == 1200 && count(m, "round2/").await == 500 }
    })
    .await;
    wait_same_hashkv(&c).await;
    let log = c.members[lagger].log();
    recovered += log
        .matches("finishing a snapshot install interrupted by a crash")
        .count()
        .saturating_sub(recovered);
    eprintln!("interrupted installs finished on restart: {recovered}");
    let entries = snap_entries(&c.members[lagger]);
    assert!(
        entries.iter().all(|e| e.starts_with("snap-")) && entries.len() <= 2,
        "{entries:?}"
    );
    kv.put("after", "v", None).await.expect("write after");
}
