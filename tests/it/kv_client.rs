//! The KV API through the `etcd-client` crate (every Range/Put/DeleteRange/Txn/Compact option) and
//! through raw gRPC for requests the crate cannot express (invalid enums, oversized requests),
//! with etcd's gRPC codes and exact error strings.

use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};
use oxcd::proto::etcdserverpb::{self as pb, kv_client::KvClient};
use tonic::Code;

use crate::harness::Cluster;

fn status(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn raw(c: &Cluster) -> KvClient<tonic::transport::Channel> {
    let ch = c.members[0].channel().await;
    KvClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_put_delete_options() {
    let c = Cluster::start(1).await;
    let mut kv = c.client().await;

    // Revisions: each put raises the revision by one; version counts puts since creation.
    let r = kv.put("a", "1", None).await.expect("put");
    let base = r.header().expect("header").revision();
    let h = r.header().expect("header");
    assert!(h.cluster_id() != 0 && h.member_id() != 0 && h.raft_term() != 0);
    kv.put("b", "22", None).await.expect("put");
    kv.put("c", "333", None).await.expect("put");
    let r = kv
        .put("a", "4444", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert_eq!(r.header().expect("h").revision(), base + 3);
    let prev = r.prev_key().expect("prev_kv");
    assert_eq!(prev.value(), b"1");
    assert_eq!(prev.mod_revision(), base);
    kv.put("d\0x", "z", None).await.expect("put");

    let g = kv.get("a", None).await.expect("get");
    let a = &g.kvs()[0];
    assert_eq!(
        (a.create_revision(), a.mod_revision(), a.version()),
        (base, base + 3, 2)
    );
    assert_eq!(g.count(), 1);
    assert_eq!(g.header().expect("h").revision(), base + 4);

    // Ranges: explicit end, prefix, from-key, all keys.
    let g = kv
        .get("a", Some(GetOptions::new().with_range("c")))
        .await
        .expect("range");
    assert_eq!(keys(g.kvs()), ["a", "b"]);
    let g = kv
        .get("d", Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix");
    assert_eq!(keys(g.kvs()), ["d\0x"]);
    let g = kv
        .get("b", Some(GetOptions::new().with_from_key()))
        .await
        .expect("from key");
    assert_eq!(keys(g.kvs()), ["b", "c", "d\0x"]);
    let g = kv
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("all");
    assert_eq!(g.count(), 4);

    // limit, more and count (count ignores the limit).
    let g = kv
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .expect("limit");
    assert_eq!(keys(g.kvs()), ["a", "b"]);
    assert!(g.more());
    assert_eq!(g.count(), 4);

    // Sorting by every target (the last case also limits).
    let cases: [(SortTarget, SortOrder, i64, &[&str]); 5] = [
        (
            SortTarget::Key,
            SortOrder::Descend,
            0,
            &["d\0x", "c", "b", "a"],
        ),
        (
            SortTarget::Value,
            SortOrder::Descend,
            0,
            &["d\0x", "a", "c", "b"],
        ),
        (
            SortTarget::Mod,
            SortOrder::Ascend,
            0,
            &["b", "c", "a", "d\0x"],
        ),
        (
            SortTarget::Create,
            SortOrder::Descend,
            0,
            &["d\0x", "c", "b", "a"],
        ),
        (SortTarget::Version, SortOrder::Descend, 1, &["a"]),
    ];
    for (target, order, limit, want) in cases {
        let opts = GetOptions::new()
            .with_all_keys()
            .with_sort(target, order)
            .with_limit(limit);
        let got = kv.get("", Some(opts)).await.expect("sort");
        assert_eq!(keys(got.kvs()), want, "sort by {target:?} {order:?}");
    }

    // keys_only, count_only, serializable.
    let g = kv
        .get("a", Some(GetOptions::new().with_keys_only()))
        .await
        .expect("keys only");
    assert_eq!(g.kvs()[0].value(), b"");
    assert_eq!(g.kvs()[0].version(), 2);
    let g = kv
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .expect("count only");
    assert!(g.kvs().is_empty());
    assert_eq!(g.count(), 4);
    let g = kv
        .get("b", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable");
    assert_eq!(g.kvs()[0].value(), b"22");

    // min/max mod and create revision filters (count still counts the whole range).
    let g = kv
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_min_mod_revision(base + 1)
                    .with_max_mod_revision(base + 2),
            ),
        )
        .await
        .expect("mod filters");
    assert_eq!(keys(g.kvs()), ["b", "c"]);
    assert_eq!(g.count(), 4);
    let g = kv
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_min_create_revision(base + 2)
                    .with_max_create_revision(base + 4),
            ),
        )
        .await
        .expect("create filters");
    assert_eq!(keys(g.kvs()), ["c", "d\0x"]);

    // Reads at a past revision.
    let g = kv
        .get("a", Some(GetOptions::new().with_revision(base)))
        .await
        .expect("old rev");
    assert_eq!(g.kvs()[0].value(), b"1");
    let g = kv
        .get("c", Some(GetOptions::new().with_revision(base + 1)))
        .await
        .expect("old rev");
    assert!(g.kvs().is_empty());

    // ignore_value keeps the value, ignore_lease keeps the lease; both need the key.
    kv.put("a", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("ignore value");
    let g = kv.get("a", None).await.expect("get");
    assert_eq!(
        (g.kvs()[0].value(), g.kvs()[0].version()),
        (&b"4444"[..], 3)
    );
    kv.put("b", "new", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("ignore lease");
    let e = status(
        kv.put("zz", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .expect_err("missing key"),
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "etcdserver: key not found");
    let e = status(
        kv.put("zz", "v", Some(PutOptions::new().with_lease(42)))
            .await
            .expect_err("no such lease"),
    );
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "etcdserver: requested lease not found");

    // Deletes: a range with prev_kv; version restarts after a delete.
    let d = kv
        .delete(
            "a",
            Some(DeleteOptions::new().with_range("c").with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!(d.deleted(), 2);
    assert_eq!(keys(d.prev_kvs()), ["a", "b"]);
    let d = kv.delete("nothing", None).await.expect("delete none");
    assert_eq!(d.deleted(), 0);
    let rev_before = d.header().expect("h").revision();
    let g = kv.get("zz", None).await.expect("get");
    assert_eq!(
        g.header().expect("h").revision(),
        rev_before,
        "a delete of nothing does not raise the revision"
    );
    kv.put("a", "again", None).await.expect("put");
    let g = kv.get("a", None).await.expect("get");
    assert_eq!(g.kvs()[0].version(), 1);
    assert_eq!(g.kvs()[0].create_revision(), rev_before + 1);
    let d = kv
        .delete("", Some(DeleteOptions::new().with_all_keys()))
        .await
        .expect("delete all");
    assert_eq!(d.deleted(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_targets_and_nesting() {
    let c = Cluster::start(1).await;
    let mut kv = c.client().await;
    let r = kv.put("k1", "v1", None).await.expect("put");
    let rev = r.header().expect("h").revision();
    kv.put("k2", "v2", None).await.expect("put");

    // Every compare target and result, on a present and a missing key.
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value("k1", CompareOp::Equal, "v1"), true),
        (Compare::value("k1", CompareOp::NotEqual, "v1"), false),
        (Compare::value("k1", CompareOp::Greater, "v0"), true),
        (Compare::value("k1", CompareOp::Less, "v0"), false),
        (Compare::version("k1", CompareOp::Equal, 1), true),
        (Compare::version("missing", CompareOp::Equal, 0), true),
        (Compare::create_revision("k1", CompareOp::Equal, rev), true),
        (Compare::mod_revision("k2", CompareOp::Greater, rev), true),
        (Compare::mod_revision("k2", CompareOp::Less, rev), false),
        (Compare::lease("k1", CompareOp::Equal, 0), true),
        (
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        (Compare::value("missing", CompareOp::Equal, ""), false),
        // A range compare: every key in [k1, k3) must satisfy it.
        (
            Compare::version("k1", CompareOp::Equal, 1).with_range("k3"),
            true,
        ),
        (
            Compare::value("k", CompareOp::Equal, "v1").with_prefix(),
            false,
        ),
    ];
    for (i, (cmp, want)) in cases.into_iter().enumerate() {
        let t = Txn::new().when([cmp]).and_then([]).or_else([]);
        let r = kv.txn(t).await.expect("txn");
        assert_eq!(r.succeeded(), want, "compare case {i}");
    }

    // Both branches; a writing txn raises the revision once for all its ops.
    let before = kv.get("k1", None).await.expect("get");
    let before_rev = before.header().expect("h").revision();
    let t = Txn::new()
        .when([Compare::value("k1", CompareOp::Equal, "v1")])
        .and_then([
            TxnOp::put("k3", "v3", None),
            TxnOp::put("k4", "v4", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("k", Some(GetOptions::new().with_prefix())),
            TxnOp::delete("k2", Some(DeleteOptions::new().with_prev_key())),
        ])
        .or_else([TxnOp::put("never", "x", None)]);
    let r = kv.txn(t).await.expect("txn");
    assert!(r.succeeded());
    assert_eq!(r.header().expect("h").revision(), before_rev + 1);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[2] {
        TxnOpResponse::Get(g) => assert_eq!(keys(g.kvs()), ["k1", "k2", "k3", "k4"]),
        other => panic!("expected a range response, got {other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Delete(d) => assert_eq!(keys(d.prev_kvs()), ["k2"]),
        other => panic!("expected a delete response, got {other:?}"),
    }
    let g = kv.get("k3", None).await.expect("get");
    let (k3, rev3) = (&g.kvs()[0], before_rev + 1);
    assert_eq!((k3.create_revision(), k3.mod_revision()), (rev3, rev3));

    let t = Txn::new()
        .when([Compare::value("k1", CompareOp::Equal, "nope")])
        .and_then([TxnOp::put("never", "x", None)])
        .or_else([TxnOp::put("k1", "failed-branch", None)]);
    let r = kv.txn(t).await.expect("txn");
    assert!(!r.succeeded());
    assert_eq!(kv.get("never", None).await.expect("get").count(), 0);

    // A read-only txn does not raise the revision.
    let rev_now = r.header().expect("h").revision();
    let t = Txn::new().and_then([TxnOp::get("k1", None)]);
    let r = kv.txn(t).await.expect("txn");
    assert_eq!(r.header().expect("h").revision(), rev_now);

    // Nested txns share the parent's revision.
    let inner = Txn::new()
        .when([Compare::version("k3", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("n1", "x", None)])
        .or_else([TxnOp::put("n2", "x", None)]);
    let t = Txn::new().and_then([TxnOp::put("n0", "x", None), TxnOp::txn(inner)]);
    let r = kv.txn(t).await.expect("nested txn");
    let rev_nested = r.header().expect("h").revision();
    assert_eq!(rev_nested, rev_now + 1);
    match &r.op_responses()[1] {
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("expected a txn response, got {other:?}"),
    }
    let g = kv.get("n1", None).await.expect("get");
    assert_eq!(g.kvs()[0].mod_revision(), rev_nested);
    assert_eq!(kv.get("n2", None).await.expect("get").count(), 0);

    // Duplicate keys in one branch, and puts under a delete range, are refused.
    for t in [
        Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]),
        Txn::new().and_then([
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
            TxnOp::put("d", "2", None),
        ]),
    ] {
        let e = status(kv.txn(t).await.expect_err("duplicate"));
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "etcdserver: duplicate key given in txn request"
        );
    }
    // The same key in different branches is fine.
    let t = Txn::new()
        .and_then([TxnOp::put("d", "1", None)])
        .or_else([TxnOp::put("d", "2", None)]);
    kv.txn(t).await.expect("same key in two branches");

    // Too many operations (--max-txn-ops 128 by default).
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    let e = status(
        kv.txn(Txn::new().and_then(ops))
            .await
            .expect_err("too many ops"),
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "etcdserver: too many operations in txn request"
    );
    let ops: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    kv.txn(Txn::new().and_then(ops)).await.expect("128 ops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_revision_errors() {
    let c = Cluster::start(1).await;
    let mut kv = c.client().await;
    for i in 0..5 {
        kv.put("k", format!("v{i}"), None).await.expect("put");
    }
    let cur = kv
        .get("k", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();

    let e = status(
        kv.get("k", Some(GetOptions::new().with_revision(cur + 1)))
            .await
            .expect_err("future"),
    );
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );

    kv.compact(cur - 2, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let e = status(
        kv.get("k", Some(GetOptions::new().with_revision(cur - 3)))
            .await
            .expect_err("compacted"),
    );
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let g = kv
        .get("k", Some(GetOptions::new().with_revision(cur - 2)))
        .await
        .expect("at the compact revision");
    assert_eq!(g.kvs()[0].value(), b"v2");
    let e = status(kv.compact(cur - 2, None).await.expect_err("again"));
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let e = status(kv.compact(cur + 10, None).await.expect_err("future"));
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    // Compaction keeps the latest version of every key.
    let g = kv.get("k", None).await.expect("get");
    assert_eq!(g.kvs()[0].value(), b"v4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcds_errors_and_the_server_keeps_serving() {
    let c = Cluster::start(1).await;
    let mut kv = c.client().await;
    let mut raw = raw(&c).await;

    let e = status(kv.put("", "v", None).await.expect_err("empty key"));
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );
    let e = status(kv.get("", None).await.expect_err("empty key"));
    assert_eq!(e.message(), "etcdserver: key is not provided");
    let e = status(kv.delete("", None).await.expect_err("empty key"));
    assert_eq!(e.message(), "etcdserver: key is not provided");

    let e = status(
        kv.put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await
            .expect_err("value with ignore_value"),
    );
    assert_eq!(e.message(), "etcdserver: value is provided");
    let e = status(
        kv.put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_lease().with_lease(5)),
        )
        .await
        .expect_err("lease with ignore_lease"),
    );
    assert_eq!(e.message(), "etcdserver: lease is provided");

    // An invalid sort order or target (beyond the enums).
    for (order, target) in [(7, 0), (0, 9)] {
        let e = raw
            .range(pb::RangeRequest {
                key: b"k".to_vec(),
                sort_order: order,
                sort_target: target,
                ..Default::default()
            })
            .await
            .expect_err("bad sort");
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "etcdserver: invalid sort option")
        );
    }

    // A request larger than --max-request-bytes (1.5 MiB by default) but within gRPC's limit
    // (max-request-bytes + 512 KiB, as etcd sets it).
    let big = vec![b'x'; 1800 * 1024];
    let e = status(kv.put("big", big, None).await.expect_err("too large"));
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    // Just under the limit is accepted.
    kv.put("fits", vec![b'x'; 1024 * 1024], None)
        .await
        .expect("1 MiB value");

    // A negative revision in a range reads the latest, as etcd does.
    kv.put("k", "v", None).await.expect("put");
    let r = raw
        .range(pb::RangeRequest {
            key: b"k".to_vec(),
            revision: -5,
            ..Default::default()
        })
        .await
        .expect("negative revision reads the latest");
    assert_eq!(r.get_ref().kvs[0].value, b"v");

    // The server still serves.
    let g = kv.get("k", None).await.expect("still serving");
    assert_eq!(g.kvs()[0].value(), b"v");
    assert_eq!(kv.get("big", None).await.expect("get").count(), 0);
}
