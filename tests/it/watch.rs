//! Watch: etcd's watch tutorial through the real `etcdctl` (side by side with the real etcd where
//! the output is deterministic), the Watch API through the `etcd-client` crate, a stalled stream
//! that catches up, and a history checker across a leader SIGKILL and a reconnect to another member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
    WatchResponse, WatchStream,
};

use crate::harness::{connect, etcdctl, wait_until, Cluster, CtlProc, Kind, WAIT};

/// The next message of a watch stream, within [`WAIT`].
async fn next(s: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream ok")
        .expect("watch stream open")
}

/// (type, key, value) of each event of a response.
fn events(r: &WatchResponse) -> Vec<(EventType, String, String)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("kv");
            (
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

/// Starts `etcdctl watch args` and puts `key`=`value` until the watch prints it (a plain watch
/// starts at "now", so a put before the watch is registered would not show).
fn watch_until_live(endpoints: &str, args: &[&str], key: &str, value: &str) -> CtlProc {
    let w = CtlProc::spawn(endpoints, args, None);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(etcdctl(endpoints, &["put", key, value]).ok);
        if let Some(l) = w.line(Duration::from_millis(300)) {
            assert_eq!(l, "PUT");
            assert_eq!(w.lines(2), [key, value]);
            return w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch never saw {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_watch_with_etcdctl() {
    let c = Cluster::start(1).await;
    let ep = c.endpoints();

    // watch foo: another client's put shows as PUT / key / value.
    let w = watch_until_live(&ep, &["watch", "foo"], "foo", "bar_watch");
    assert!(etcdctl(&ep, &["put", "foo", "again"]).ok);
    assert!(etcdctl(&ep, &["put", "other", "x"]).ok);
    assert!(etcdctl(&ep, &["del", "foo"]).ok);
    assert_eq!(w.lines(5), ["PUT", "foo", "again", "DELETE", "foo"]);
    drop(w);

    // watch --prefix foo.
    let w = watch_until_live(&ep, &["watch", "--prefix", "foo"], "foo", "p");
    assert!(etcdctl(&ep, &["put", "foo1", "bar1"]).ok);
    assert!(etcdctl(&ep, &["put", "zoo", "no"]).ok);
    assert!(etcdctl(&ep, &["put", "foo2", "bar2"]).ok);
    assert_eq!(w.lines(6), ["PUT", "foo1", "bar1", "PUT", "foo2", "bar2"]);
    drop(w);

    // watch foo foo3: the range [foo, foo3).
    let w = watch_until_live(&ep, &["watch", "foo", "foo3"], "foo2", "r");
    assert!(etcdctl(&ep, &["put", "foo3", "outside"]).ok);
    assert!(etcdctl(&ep, &["put", "foo1", "inside"]).ok);
    assert_eq!(w.lines(3), ["PUT", "foo1", "inside"]);
    drop(w);

    // watch -i: two watch lines on one stream.
    let w = CtlProc::spawn(&ep, &["watch", "-i"], Some("watch foo\nwatch zoo\n"));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(etcdctl(&ep, &["put", "zoo", "z"]).ok);
        if let Some(l) = w.line(Duration::from_millis(300)) {
            assert_eq!(l, "PUT");
            assert_eq!(w.lines(2), ["zoo", "z"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch -i never saw zoo"
        );
    }
    // Both watchers are registered once the later one is: foo shows too.
    assert!(etcdctl(&ep, &["put", "foo", "f"]).ok);
    assert_eq!(w.lines(3), ["PUT", "foo", "f"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_and_compaction_match_etcd() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let mut outputs = Vec::new();
    for c in [&etcd, &oxcd] {
        let ep = c.endpoints();
        for (k, v) in [
            ("foo", "bar"),
            ("foo1", "bar1"),
            ("foo", "bar_new"),
            ("foo1", "bar1_new"),
        ] {
            assert!(etcdctl(&ep, &["put", k, v]).ok);
        }
        assert!(etcdctl(&ep, &["del", "foo"]).ok); // revision 6
        let mut out = Vec::new();
        // History from revision 2: PUT, PUT, DELETE; then live events.
        let w = CtlProc::spawn(&ep, &["watch", "--rev=2", "foo"], None);
        out.extend(w.lines(9));
        assert!(etcdctl(&ep, &["put", "foo", "live"]).ok); // revision 7
        out.extend(w.lines(3));
        drop(w);
        // prev-kv and a prefix from an old revision.
        let w = CtlProc::spawn(
            &ep,
            &["watch", "--rev=3", "--prefix", "foo", "--prev-kv"],
            None,
        );
        out.extend(w.lines(21));
        drop(w);
        // After compaction: older start revisions are cancelled, newer ones replay.
        let compact = etcdctl(&ep, &["compact", "5"]);
        assert_eq!(compact.stdout, "compacted revision 5\n");
        let w = CtlProc::spawn(&ep, &["watch", "--rev=2", "foo"], None);
        // stdout and stderr interleave arbitrarily: compare them as a set.
        let mut rest = w.rest();
        rest.sort();
        out.extend(rest);
        let w = CtlProc::spawn(&ep, &["watch", "--rev=5", "foo"], None);
        out.extend(w.lines(6));
        drop(w);
        outputs.push(out);
    }
    assert_eq!(
        outputs[1], outputs[0],
        "oxcd's etcdctl watch output differs from etcd's"
    );
    let o = &outputs[1];
    assert_eq!(
        o[..12],
        ["PUT", "foo", "bar", "PUT", "foo", "bar_new", "DELETE", "foo", "", "PUT", "foo", "live"]
    );
    assert!(
        o.iter()
            .any(|l| l
                == "watch was canceled (etcdserver: mvcc: required revision has been compacted)"),
        "{o:?}"
    );
    assert_eq!(
        o[o.len() - 6..],
        ["DELETE", "foo", "", "PUT", "foo", "live"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_api_through_etcd_client() {
    let c = Cluster::start(1).await;
    let mut kv = c.client().await;
    let mut wc = c.client().await;

    // Many watchers on one stream, each acknowledged with `created` before its events; filters,
    // prev_kv and client-chosen IDs.
    let (mut watcher, mut stream) = wc
        .watch("a", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let first = watcher.watch_id();
    watcher
        .watch(
            "a",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoPut])
                    .with_prev_key()
                    .with_watch_id(100),
            ),
        )
        .await
        .expect("second watcher");
    let created = next(&mut stream).await;
    assert!(created.created());
    assert_eq!(created.watch_id(), 100);
    watcher
        .watch(
            "a",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoDelete])
                    .with_watch_id(100),
            ),
        )
        .await
        .expect("duplicate id");
    let dup = next(&mut stream).await;
    assert!(dup.created() && dup.canceled());
    assert_eq!(dup.watch_id(), -1);
    assert_eq!(
        dup.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    kv.put("a1", "v1", None).await.expect("put");
    kv.delete("a1", None).await.expect("delete");
    let mut by_watcher: HashMap<i64, Vec<WatchResponse>> = HashMap::new();
    while by_watcher.get(&first).map_or(0, |v| v.len()) < 2
        || by_watcher.get(&100).map_or(0, |v| v.len()) < 1
    {
        let r = next(&mut stream).await;
        by_watcher.entry(r.watch_id()).or_default().push(r);
    }
    let all = &by_watcher[&first];
    assert_eq!(
        events(&all[0]),
        [(EventType::Put, "a1".into(), "v1".into())]
    );
    assert_eq!(
        events(&all[1]),
        [(EventType::Delete, "a1".into(), "".into())]
    );
    let deletes = &by_watcher[&100];
    assert_eq!(deletes.len(), 1, "NOPUT filters the put");
    let ev = &deletes[0].events()[0];
    assert_eq!(ev.event_type(), EventType::Delete);
    assert_eq!(ev.prev_kv().expect("prev_kv").value(), b"v1");
    assert_eq!(
        ev.kv().expect("kv").mod_revision(),
        deletes[0].header().expect("h").revision()
    );

    // A txn's events arrive in one response.
    let t = Txn::new().and_then([
        TxnOp::put("a2", "x", None),
        TxnOp::put("a3", "y", None),
        TxnOp::put("b", "z", None),
    ]);
    kv.txn(t).await.expect("txn");
    let r = next(&mut stream).await;
    assert_eq!(r.watch_id(), first);
    assert_eq!(
        events(&r),
        [
            (EventType::Put, "a2".into(), "x".into()),
            (EventType::Put, "a3".into(), "y".into())
        ]
    );

    // Cancel one watcher: a canceled response, then nothing more for it.
    watcher.cancel_by_id(100).await.expect("cancel");
    let r = next(&mut stream).await;
    assert!(r.canceled());
    assert_eq!(r.watch_id(), 100);

    // Progress request: watch_id -1 with the current revision.
    let cur = kv.put("a4", "p", None).await.expect("put");
    let cur = cur.header().expect("h").revision();
    let r = next(&mut stream).await;
    assert_eq!(r.watch_id(), first);
    watcher.request_progress().await.expect("progress");
    let r = next(&mut stream).await;
    assert_eq!(r.watch_id(), -1);
    assert!(r.events().is_empty());
    assert_eq!(r.header().expect("h").revision(), cur);

    // A start revision in the past replays; a compacted one is cancelled with compact_revision.
    let (_w, mut s) = wc
        .watch("a1", Some(WatchOptions::new().with_start_revision(1)))
        .await
        .expect("watch history");
    // The history comes in one response, as etcd sends it.
    let r = next(&mut s).await;
    assert_eq!(
        events(&r),
        [
            (EventType::Put, "a1".into(), "v1".into()),
            (EventType::Delete, "a1".into(), "".into())
        ]
    );
    kv.compact(cur - 1, None).await.expect("compact");
    let (_w, mut s) = wc
        .watch("a", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .expect("watch compacted");
    let r = next(&mut s).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), cur - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_catches_up_without_blocking_writes() {
    let c = Cluster::start(1).await;
    let mut kv = c.client().await;
    let mut wc = c.client().await;
    let (_w, mut stream) = wc
        .watch(
            "s/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("watch");
    // The client does not read while 3000 revisions are written (more than the hub buffers).
    let value = vec![b'v'; 512];
    for i in 0..3000 {
        tokio::time::timeout(
            Duration::from_secs(10),
            kv.put(format!("s/{:04}", i % 1000), value.clone(), None),
        )
        .await
        .expect("a stalled watcher never blocks writes")
        .expect("put");
    }
    let last = kv.get("s/0999", None).await.expect("get");
    let last = last.kvs()[0].mod_revision();
    // Now it reads: every event exactly once, in order, with the right prev_kv.
    let mut expect_rev = last - 2999;
    let mut versions: HashMap<String, i64> = HashMap::new();
    while expect_rev <= last {
        let r = next(&mut stream).await;
        for e in r.events() {
            let kv = e.kv().expect("kv");
            assert_eq!(kv.mod_revision(), expect_rev, "ordered, unique, no gaps");
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let v = versions.entry(key).or_insert(0);
            *v += 1;
            assert_eq!(kv.version(), *v);
            if *v > 1 {
                assert_eq!(e.prev_kv().expect("prev").version(), *v - 1);
            }
            expect_rev += 1;
        }
    }
}

/// One observed event: (revision, key, is_delete).
type Seen = (i64, String, bool);

/// Watches `prefix` from `start` on `endpoint`, recording responses into `out` until `stop`.
async fn record(
    endpoints: Vec<String>,
    start: i64,
    out: Arc<parking_lot::Mutex<Vec<Vec<Seen>>>>,
    stop: Arc<AtomicBool>,
) {
    let mut next_rev = start;
    let mut idx = 0;
    while !stop.load(Ordering::Relaxed) {
        // Reconnect to the next member, resuming at the last seen revision + 1.
        let ep = endpoints[idx % endpoints.len()].clone();
        idx += 1;
        let Ok(Ok(mut client)) =
            tokio::time::timeout(Duration::from_secs(2), Client::connect([ep], None)).await
        else {
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_rev);
        let Ok(Ok((_w, mut s))) =
            tokio::time::timeout(Duration::from_secs(2), client.watch("h/", Some(opts))).await
        else {
            continue;
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(500), s.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(r))) => {
                    if r.canceled() {
                        break;
                    }
                    let evs: Vec<Seen> = r
                        .events()
                        .iter()
                        .map(|e| {
                            let kv = e.kv().expect("kv");
                            (
                                kv.mod_revision(),
                                String::from_utf8_lossy(kv.key()).into_owned(),
                                e.event_type() == EventType::Delete,
                            )
                        })
                        .collect();
                    if let Some(last) = evs.last() {
                        next_rev = last.0 + 1;
                        out.lock().push(evs);
                    }
                }
                Ok(_) => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_guarantees_across_leader_kill_and_reconnect() {
    let mut c = Cluster::start(3).await;
    let mut kv = c.client().await;
    let start = kv.put("h/start", "0", None).await.expect("put");
    let start = start.header().expect("h").revision();
    let stop = Arc::new(AtomicBool::new(false));
    // One recorder per member; each reconnects round-robin from its own member.
    let mut recorders = Vec::new();
    let mut logs = Vec::new();
    for i in 0..3 {
        let mut eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
        eps.rotate_left(i);
        let out = Arc::new(parking_lot::Mutex::new(Vec::new()));
        logs.push(out.clone());
        recorders.push(tokio::spawn(record(eps, start, out, stop.clone())));
    }
    // A writer: txns of two puts (atomicity) and deletes, through every member, retrying.
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let writer_stop = Arc::new(AtomicBool::new(false));
    let ws = writer_stop.clone();
    let writer = tokio::spawn(async move {
        let mut w = connect(&eps).await;
        let mut i = 0u64;
        while !ws.load(Ordering::Relaxed) {
            let t = Txn::new().and_then([
                TxnOp::put(format!("h/a{}", i % 50), i.to_string(), None),
                TxnOp::put(format!("h/b{}", i % 50), i.to_string(), None),
            ]);
            let _ = tokio::time::timeout(Duration::from_secs(3), w.txn(t)).await;
            if i % 7 == 0 {
                let _ = tokio::time::timeout(
                    Duration::from_secs(3),
                    w.delete(format!("h/a{}", (i + 3) % 50), None),
                )
                .await;
            }
            i += 1;
        }
    });
    let progress = |n: usize| {
        let logs = logs.clone();
        move || {
            let logs = logs.clone();
            async move { logs.iter().all(|l| l.lock().len() >= n) }
        }
    };
    wait_until("events before the kill", WAIT, progress(50)).await;
    let leader = c.wait_leader().await;
    c.members[leader].kill();
    wait_until("events after the kill", WAIT, progress(150)).await;
    writer_stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    c.members[leader].start();
    c.members[leader].wait_serving().await;

    // The truth: the history as recorded by a fresh watch from `start`, checked against ranges.
    let mut fresh = c.client().await;
    let last = fresh
        .put("h/end", "1", Some(PutOptions::new()))
        .await
        .expect("final put");
    let last = last.header().expect("h").revision();
    wait_until("every recorder to reach the end", WAIT, || {
        let logs = logs.clone();
        async move {
            logs.iter().all(|l| {
                l.lock()
                    .last()
                    .and_then(|r| r.last())
                    .is_some_and(|e| e.0 >= last)
            })
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for r in recorders {
        r.await.expect("recorder");
    }
    let (_w, mut s) = fresh
        .watch(
            "h/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .expect("watch");
    let mut truth: Vec<Vec<Seen>> = Vec::new();
    while truth
        .last()
        .and_then(|r| r.last())
        .is_none_or(|e| e.0 < last)
    {
        let r = next(&mut s).await;
        truth.push(
            r.events()
                .iter()
                .map(|e| {
                    let kv = e.kv().expect("kv");
                    (
                        kv.mod_revision(),
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        e.event_type() == EventType::Delete,
                    )
                })
                .collect(),
        );
    }
    // Atomic: a revision's events (a two-put txn) never straddle two responses. History comes
    // in batches of revisions, as etcd sends it.
    let atomic = |responses: &[Vec<Seen>]| {
        responses
            .windows(2)
            .all(|w| w[0].last().map(|e| e.0) < w[1].first().map(|e| e.0))
            && responses
                .iter()
                .all(|r| r.windows(2).all(|p| p[0].0 <= p[1].0))
    };
    assert!(atomic(&truth), "a revision split or out of order");
    let want: Vec<Seen> = truth
        .iter()
        .flatten()
        .filter(|e| e.0 <= last)
        .cloned()
        .collect();
    let g = fresh
        .get(
            "h/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert!(g.count() > 0);
    for (i, log) in logs.iter().enumerate() {
        let log = log.lock();
        // Ordered and unique: revisions increase across responses, none split or repeated.
        assert!(
            atomic(&log),
            "recorder {i}: revisions out of order, repeated or split"
        );
        // Resumable and complete: the same events as the fresh watch, up to `last`.
        let got: Vec<Seen> = log
            .iter()
            .flatten()
            .filter(|e| e.0 <= last)
            .cloned()
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "recorder {i}: missing or extra events"
        );
        assert!(got == want, "recorder {i}: events differ from the history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_streams_tombstones_at_compaction_and_bad_creates() {
    use oxcd::proto::etcdserverpb::watch_client::WatchClient;
    use oxcd::proto::etcdserverpb::watch_request::RequestUnion;
    use oxcd::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};

    let c = Cluster::start(1).await;
    let mut kv = c.client().await;
    kv.put("k", "v", None).await.expect("put");
    let del = kv.delete("k", None).await.expect("delete");
    let del_rev = del.header().expect("h").revision();
    kv.compact(del_rev, None)
        .await
        .expect("compact at the delete");

    let ch = c.members[0].channel().await;
    let mut wc = WatchClient::new(ch);
    let create = |key: &[u8], end: &[u8], start: i64| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            start_revision: start,
            ..Default::default()
        })),
    };
    // One create, then the client closes its side: the stream keeps delivering, and a watch from
    // the compact revision still sees the delete made at that revision.
    let mut s = wc
        .watch(tokio_stream::iter(vec![create(b"k", b"", del_rev)]))
        .await
        .expect("watch")
        .into_inner();
    let first = recv_raw(&mut s).await;
    assert!(first.created);
    let r = recv_raw(&mut s).await;
    assert_eq!(r.events.len(), 1, "{r:?}");
    assert_eq!(r.events[0].r#type, 1, "DELETE at the compact revision");
    kv.put("k", "after", None).await.expect("put");
    let r = recv_raw(&mut s).await;
    assert_eq!(r.events[0].kv.as_ref().expect("kv").value, b"after");

    // A range whose end is not above its key is refused as etcd does.
    let mut s = wc
        .watch(tokio_stream::iter(vec![create(b"b", b"a", 0)]))
        .await
        .expect("watch")
        .into_inner();
    let r = recv_raw(&mut s).await;
    assert!(r.created && r.canceled);
    assert_eq!(r.watch_id, -1);
    assert_eq!(r.cancel_reason, "mvcc: watcher range is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_and_progress_notify() {
    use oxcd::proto::etcdserverpb::watch_client::WatchClient;
    use oxcd::proto::etcdserverpb::watch_request::RequestUnion;
    use oxcd::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};

    let c = Cluster::start_with(
        Kind::Oxcd,
        1,
        &[
            "--max-request-bytes=4096",
            "--watch-progress-notify-interval=200ms",
        ],
    )
    .await;
    let mut kv = c.client().await;
    for i in 0..10 {
        kv.put(format!("f/{i}"), vec![b'x'; 1000], None)
            .await
            .expect("put");
    }
    let ch = c.members[0].channel().await;
    let req = |key: &[u8], end: &[u8], fragment: bool, progress: bool| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            prev_kv: true,
            fragment,
            progress_notify: progress,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(req(b"f/", b"f0", true, false)).await.expect("send");
    let mut s = WatchClient::new(ch.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    assert!(recv_raw(&mut s).await.created);
    // One delete of ten keys with prev_kv: ~20 KB of events in one revision, over 4 KiB.
    kv.delete("f/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    let mut pieces = Vec::new();
    loop {
        let r = recv_raw(&mut s).await;
        let last = !r.fragment;
        pieces.push(r);
        if last {
            break;
        }
    }
    assert!(pieces.len() > 1, "the response was split");
    let total: usize = pieces.iter().map(|p| p.events.len()).sum();
    assert_eq!(total, 10, "every event once across the fragments");
    let rev = pieces[0].header.as_ref().expect("h").revision;
    assert!(pieces
        .iter()
        .all(|p| p.header.as_ref().expect("h").revision == rev));

    // progress_notify: an idle watcher gets an empty response with the current revision.
    tx.send(req(b"idle", b"", false, true)).await.expect("send");
    let created = recv_raw(&mut s).await;
    assert!(created.created);
    let id = created.watch_id;
    let r = recv_raw(&mut s).await;
    assert_eq!(r.watch_id, id);
    assert!(r.events.is_empty());
    assert_eq!(r.header.as_ref().expect("h").revision, rev);
}

/// The next raw watch response, within [`WAIT`].
async fn recv_raw(
    s: &mut tonic::Streaming<oxcd::proto::etcdserverpb::WatchResponse>,
) -> oxcd::proto::etcdserverpb::WatchResponse {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hasleader_stream_is_cancelled_when_the_leader_is_lost() {
    use oxcd::proto::etcdserverpb::watch_client::WatchClient;
    use oxcd::proto::etcdserverpb::watch_request::RequestUnion;
    use oxcd::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};

    let mut c = Cluster::start(3).await;
    let keep = (c.wait_leader().await + 1) % 3;
    let ch = c.members[keep].channel().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })),
    })
    .await
    .expect("send");
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("hasleader", "true".parse().expect("metadata"));
    let mut s = WatchClient::new(ch)
        .watch(req)
        .await
        .expect("watch")
        .into_inner();
    assert!(recv_raw(&mut s).await.created);
    // Without its two peers the member has no leader; the stream ends with etcd's error.
    for i in 0..3 {
        if i != keep {
            c.members[i].kill();
        }
    }
    let end = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("the stream ends in time");
    let status = end.expect_err("an error status, not a message");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "etcdserver: no leader");
    drop(tx);
}

/// What a client sees of watch responses, with IDs and terms left out.
#[derive(Debug, PartialEq)]
struct Observed {
    created: bool,
    canceled: bool,
    header_revision: i64,
    compact_revision: i64,
    events: Vec<(EventType, String, String)>,
}

fn observed(r: &WatchResponse) -> Observed {
    Observed {
        created: r.created(),
        canceled: r.canceled(),
        header_revision: r.header().map(|h| h.revision()).unwrap_or(-1),
        compact_revision: r.compact_revision(),
        events: events(r),
    }
}

/// A watch from the past gets its history in one response headed by the store's revision, then
/// each live revision in its own; a watch from a compacted revision is cancelled with the
/// compact revision and a header without a revision. Side by side with the real etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_responses_are_batched_and_headed_as_etcds() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(1).await;
    let mut runs = Vec::new();
    for c in [&etcd, &oxcd] {
        let mut client = c.client().await;
        for i in 0..5 {
            client
                .put(format!("h{i}"), format!("v{i}"), None)
                .await
                .expect("put");
        }
        client.put("other", "x", None).await.expect("put"); // revision 7
        let mut out = Vec::new();
        let (_w, mut s) = client
            .watch(
                "h",
                Some(WatchOptions::new().with_prefix().with_start_revision(2)),
            )
            .await
            .expect("watch");
        // The crate takes the created response itself; then the history comes at once.
        out.push(observed(&next(&mut s).await));
        client.put("h9", "live", None).await.expect("put"); // revision 8
        out.push(observed(&next(&mut s).await));
        client.compact(4, None).await.expect("compact");
        let (_w2, mut s2) = client
            .watch(
                "h",
                Some(WatchOptions::new().with_prefix().with_start_revision(2)),
            )
            .await
            .expect("watch");
        let first = observed(&next(&mut s2).await);
        out.push(first);
        if !out.last().is_some_and(|s| s.canceled) {
            out.push(observed(&next(&mut s2).await));
        }
        runs.push(out);
    }
    assert_eq!(
        runs[1], runs[0],
        "oxcd's watch responses differ from etcd's"
    );
    let o = &runs[1];
    assert_eq!(o[0].events.len(), 5, "{o:#?}");
    assert_eq!(o[0].header_revision, 7, "{o:#?}");
    assert_eq!(o[1].header_revision, 8, "{o:#?}");
    let cancel = o.last().expect("cancel");
    assert!(
        cancel.canceled && cancel.compact_revision == 4 && cancel.header_revision == 0,
        "{o:#?}"
    );
}
