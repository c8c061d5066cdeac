//! Writes through a follower: many at once travel to the leader together, and each is answered
//! with its own result (its revision, or its own error), as etcd answers them; a leader that
//! predates batched forwarding (a rolling upgrade) still takes them one by one.

use std::collections::HashSet;

use etcd_client::{GetOptions, PutOptions};

use crate::harness::{Cluster, Kind, Member};

/// Puts in flight at once through the follower.
const WRITES: i64 = 200;

/// Every tenth put names a lease that does not exist.
fn names_missing_lease(i: i64) -> bool {
    i % 10 == 9
}

/// Sends [`WRITES`] puts at once through `m`; checks that each put with a real key is answered
/// with a revision of its own that holds its value, and that each put naming a missing lease
/// gets etcd's error and writes nothing.
async fn concurrent_puts_answered_each(m: &Member) {
    let kv = m.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let mut kv = kv.clone();
        tasks.spawn(async move {
            let key = format!("fw/{i:03}");
            let opts =
                names_missing_lease(i).then(|| PutOptions::new().with_lease(0x7e57_0000 + i));
            let res = kv.put(key.clone(), format!("v{i}"), opts).await;
            (i, key, res)
        });
    }
    let mut revisions = HashSet::new();
    let mut kv = kv.clone();
    while let Some(joined) = tasks.join_next().await {
        let (i, key, res) = joined.expect("put task");
        if names_missing_lease(i) {
            let e = res.expect_err("a put naming a missing lease");
            assert!(
                e.to_string()
                    .contains("etcdserver: requested lease not found"),
                "{}: {e}",
                m.spec.name
            );
            let got = kv.get(key.as_str(), None).await.expect("get");
            assert!(got.kvs().is_empty(), "a refused put wrote {key}");
            continue;
        }
        let rev = res.expect("put").header().expect("header").revision();
        assert!(
            revisions.insert(rev),
            "two puts answered with revision {rev}"
        );
        let got = kv
            .get(key.as_str(), Some(GetOptions::new().with_revision(rev)))
            .await
            .expect("get at the put's revision");
        let kvs = got.kvs();
        assert_eq!(kvs.len(), 1, "{key} at {rev}");
        assert_eq!(kvs[0].value(), format!("v{i}").as_bytes(), "{key} at {rev}");
        assert_eq!(kvs[0].mod_revision(), rev, "{key}");
    }
    let written = (0..WRITES).filter(|&i| !names_missing_lease(i)).count();
    assert_eq!(revisions.len(), written);
}

/// The index of a member that is not the leader.
async fn follower(c: &Cluster) -> usize {
    let leader = c.wait_leader().await;
    (0..c.members.len())
        .find(|&i| i != leader)
        .expect("a follower")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer_as_in_etcd() {
    for kind in [Kind::Oxcd, Kind::Etcd] {
        let c = Cluster::start_with(kind, 3, &[]).await;
        let f = follower(&c).await;
        concurrent_puts_answered_each(&c.members[f]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_batched_forwarding_still_takes_a_followers_writes() {
    let mut c = Cluster::start(3).await;
    // Every member answers ForwardBatch as an older oxcd does (Unimplemented).
    for m in &mut c.members {
        m.kill();
        m.env = vec![(
            "FAILPOINTS".to_string(),
            "peer-forward-batch-unimplemented=return".to_string(),
        )];
        m.start();
    }
    for m in &c.members {
        m.wait_serving().await;
    }
    let f = follower(&c).await;
    concurrent_puts_answered_each(&c.members[f]).await;
    assert!(
        c.members.iter().any(|m| m
            .log()
            .contains("failpoint peer-forward-batch-unimplemented: failing")),
        "no leader was asked for a batch"
    );
}
