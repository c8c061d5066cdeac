//! The server-side Lock and Election services (`v3lockpb.Lock`, `v3electionpb.Election`) through
//! the `etcd-client` crate on a three-member cluster: a second Lock waits for the first to be
//! released (by Unlock, by the holder's lease ending, or not at all when the waiter gives up and
//! its key is removed); an election's Campaign, Proclaim, Leader, Observe and Resign, with etcd's
//! own error texts.
//!
//! "Still pending" is asserted only at a point where the service must not have answered: after
//! the waiter's own key is visible (so its request reached the server) and the holder's key is
//! read back as still present.

use etcd_client::{
    Client, Error, LeaderKey, LeaderResponse, LockOptions, ObserveStream, ProclaimOptions,
    ResignOptions,
};
use tonic::Code;

use crate::harness::{wait_until, Cluster, WAIT};

/// A lease of `ttl` seconds, granted through `c`.
async fn grant(c: &mut Client, ttl: i64) -> i64 {
    c.lease_grant(ttl, None).await.expect("lease grant").id()
}

/// The number of keys equal to `key` (0 or 1).
async fn count(c: &Client, key: &[u8]) -> i64 {
    c.clone().get(key, None).await.expect("get").count()
}

/// The lease `key` is attached to (panics when the key does not exist).
async fn lease_of(c: &Client, key: &[u8]) -> i64 {
    let g = c.clone().get(key, None).await.expect("get");
    g.kvs().first().expect("the key exists").lease()
}

/// Waits until `key` exists (a waiter's request has reached the server and queued it).
async fn wait_exists(c: &Client, key: &[u8], what: &str) {
    wait_until(what, WAIT, || {
        let c = c.clone();
        let key = key.to_vec();
        async move { count(&c, &key).await == 1 }
    })
    .await;
}

/// Waits until `key` is gone.
async fn wait_gone(c: &Client, key: &[u8], what: &str) {
    wait_until(what, WAIT, || {
        let c = c.clone();
        let key = key.to_vec();
        async move { count(&c, &key).await == 0 }
    })
    .await;
}

/// The gRPC code and message of a failed call.
fn status(e: Error) -> (Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other}"),
    }
}

/// The next leader update of an Observe stream, within [`WAIT`].
async fn next(s: &mut ObserveStream) -> LeaderResponse {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("a leader update in time")
        .expect("observe stream ok")
        .expect("observe stream open")
}

/// (key, value) of a leader update.
fn leader_kv(r: &LeaderResponse) -> (Vec<u8>, Vec<u8>) {
    let kv = r.kv().expect("a leader kv");
    (kv.key().to_vec(), kv.value().to_vec())
}

/// The value `leader()` reports for `name`.
async fn leader_value(c: &Client, name: &str) -> Vec<u8> {
    let r = c.clone().leader(name).await.expect("leader");
    r.kv().expect("a leader kv").value().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_lock_waits_until_the_first_is_unlocked() {
    let c = Cluster::start(3).await;
    // Two members, so the waiter is served by a member that need not be the leader.
    let mut a = c.members[0].client().await;
    let mut b = c.members[1].client().await;
    let la = grant(&mut a, 60).await;
    let lb = grant(&mut b, 60).await;

    let held = a
        .lock("mylock", Some(LockOptions::new().with_lease(la)))
        .await
        .expect("first lock");
    let ka = held.key().to_vec();
    assert_eq!(ka, format!("mylock/{la:x}").into_bytes());
    assert!(held.header().expect("header").revision() > 0);
    assert_eq!(
        lease_of(&a, &ka).await,
        la,
        "the lock key carries the lease"
    );

    // Locking again with the same lease is the same acquisition.
    let again = a
        .lock("mylock", Some(LockOptions::new().with_lease(la)))
        .await
        .expect("re-lock with the same lease");
    assert_eq!(again.key(), ka.as_slice());

    let kb = format!("mylock/{lb:x}").into_bytes();
    let mut bw = b.clone();
    let waiter = tokio::spawn(async move {
        bw.lock("mylock", Some(LockOptions::new().with_lease(lb)))
            .await
    });
    wait_exists(&a, &kb, "the second lock's key").await;
    assert_eq!(lease_of(&a, &kb).await, lb);
    assert_eq!(count(&a, &ka).await, 1, "the first lock is still held");
    assert!(
        !waiter.is_finished(),
        "the second Lock returned while the first is held"
    );

    a.unlock(ka.clone()).await.expect("unlock");
    let got = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the second lock in time")
        .expect("lock task")
        .expect("second lock");
    assert_eq!(got.key(), kb.as_slice());
    assert_eq!(count(&a, &ka).await, 0, "unlock deleted the first key");
    assert_eq!(count(&a, &kb).await, 1);

    b.unlock(kb.clone()).await.expect("unlock the second");
    assert_eq!(count(&a, &kb).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_passes_on_when_the_holders_lease_is_revoked() {
    let c = Cluster::start(3).await;
    let mut a = c.members[0].client().await;
    let b = c.members[2].client().await;
    let la = grant(&mut a, 60).await;
    let lb = grant(&mut a, 60).await;

    let ka = a
        .lock("revoked", Some(LockOptions::new().with_lease(la)))
        .await
        .expect("first lock")
        .key()
        .to_vec();
    let kb = format!("revoked/{lb:x}").into_bytes();
    let mut bw = b.clone();
    let waiter = tokio::spawn(async move {
        bw.lock("revoked", Some(LockOptions::new().with_lease(lb)))
            .await
    });
    wait_exists(&a, &kb, "the waiter's key").await;
    assert_eq!(count(&a, &ka).await, 1, "the first lock is still held");
    assert!(
        !waiter.is_finished(),
        "the waiter returned while the lock is held"
    );

    a.lease_revoke(la).await.expect("revoke the holder's lease");
    let got = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiter acquires in time")
        .expect("lock task")
        .expect("second lock");
    assert_eq!(got.key(), kb.as_slice());
    assert_eq!(count(&a, &ka).await, 0, "the revoked lease took its key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_lock_waiter_leaves_no_key() {
    let c = Cluster::start(3).await;
    let mut a = c.members[0].client().await;
    let b = c.members[1].client().await;
    let la = grant(&mut a, 60).await;
    let lb = grant(&mut a, 60).await;
    let lc = grant(&mut a, 60).await;

    let ka = a
        .lock("gaveup", Some(LockOptions::new().with_lease(la)))
        .await
        .expect("first lock")
        .key()
        .to_vec();
    let kb = format!("gaveup/{lb:x}").into_bytes();
    let mut bw = b.clone();
    let waiter = tokio::spawn(async move {
        bw.lock("gaveup", Some(LockOptions::new().with_lease(lb)))
            .await
    });
    wait_exists(&a, &kb, "the waiter's key").await;
    // The client gives up: the server removes its place in the queue, as etcd does.
    waiter.abort();
    wait_gone(&a, &kb, "the abandoned waiter's key to be removed").await;

    // The lock still works: a new waiter gets it after the holder unlocks.
    let kc = format!("gaveup/{lc:x}").into_bytes();
    let mut cw = b.clone();
    let third = tokio::spawn(async move {
        cw.lock("gaveup", Some(LockOptions::new().with_lease(lc)))
            .await
    });
    wait_exists(&a, &kc, "the third lock's key").await;
    a.unlock(ka).await.expect("unlock");
    let got = tokio::time::timeout(WAIT, third)
        .await
        .expect("the third lock in time")
        .expect("lock task")
        .expect("third lock");
    assert_eq!(got.key(), kc.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_observe_resign() {
    let c = Cluster::start(3).await;
    let mut a = c.members[0].client().await;
    let mut b = c.members[1].client().await;
    let mut o = c.members[2].client().await;
    let la = grant(&mut a, 60).await;
    let lb = grant(&mut b, 60).await;

    // A campaigns alone and wins at once.
    let won = a
        .campaign("myelection", "a-1", la)
        .await
        .expect("campaign A");
    let lk: LeaderKey = won.leader().expect("leader key").clone();
    assert_eq!(lk.name(), b"myelection");
    assert_eq!(lk.key(), format!("myelection/{la:x}").as_bytes());
    assert_eq!(lk.lease(), la);
    assert!(lk.rev() > 0);
    assert_eq!(lease_of(&a, lk.key()).await, la);
    assert_eq!(leader_value(&o, "myelection").await, b"a-1");

    // An observer sees the current leader first.
    let mut obs = o.observe("myelection").await.expect("observe");
    let first = next(&mut obs).await;
    assert_eq!(leader_kv(&first), (lk.key().to_vec(), b"a-1".to_vec()));
    assert!(first.header().expect("header").revision() >= lk.rev());

    // B campaigns and waits behind A.
    let kb = format!("myelection/{lb:x}").into_bytes();
    let mut bw = b.clone();
    let campaign_b = tokio::spawn(async move { bw.campaign("myelection", "b-1", lb).await });
    wait_exists(&a, &kb, "B's candidate key").await;

    // A proclaims a new value: the observer sees it, B is still waiting.
    a.proclaim("a-2", Some(ProclaimOptions::new().with_leader(lk.clone())))
        .await
        .expect("proclaim");
    let update = next(&mut obs).await;
    assert_eq!(leader_kv(&update), (lk.key().to_vec(), b"a-2".to_vec()));
    assert_eq!(leader_value(&o, "myelection").await, b"a-2");
    assert_eq!(count(&a, lk.key()).await, 1, "A is still the leader");
    assert!(
        !campaign_b.is_finished(),
        "B's Campaign returned while A leads"
    );

    // A resigns: B becomes the leader and the observer sees B.
    a.resign(Some(ResignOptions::new().with_leader(lk.clone())))
        .await
        .expect("resign");
    let won_b = tokio::time::timeout(WAIT, campaign_b)
        .await
        .expect("B wins in time")
        .expect("campaign task")
        .expect("campaign B");
    let lkb = won_b.leader().expect("leader key").clone();
    assert_eq!(lkb.key(), kb.as_slice());
    assert_eq!(lkb.lease(), lb);
    assert!(lkb.rev() > lk.rev());
    let update = next(&mut obs).await;
    assert_eq!(leader_kv(&update), (kb.clone(), b"b-1".to_vec()));
    assert_eq!(leader_value(&a, "myelection").await, b"b-1");

    // A's leader key is stale now.
    let e = a
        .proclaim("a-3", Some(ProclaimOptions::new().with_leader(lk)))
        .await
        .expect_err("proclaim with a stale leader key");
    assert_eq!(
        status(e),
        (Code::Unknown, "election: not leader".to_string())
    );

    // An election nobody campaigned in has no leader.
    let e = a
        .leader("no-such-election")
        .await
        .expect_err("leader of an empty election");
    assert_eq!(
        status(e),
        (Code::Unknown, "election: no leader".to_string())
    );

    // Proclaim and Resign without a leader key.
    let e = a
        .proclaim("x", None)
        .await
        .expect_err("proclaim without a leader");
    assert_eq!(
        status(e),
        (
            Code::Unknown,
            "\"leader\" field must be provided".to_string()
        )
    );
}
