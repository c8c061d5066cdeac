//! The checkers must catch what they claim to: each test starts from a small valid history,
//! breaks one guarantee in it, and expects the matching violation (and the valid one passes).

use super::check;
use crate::chaos::workload::{
    default_watchers, Batch, Event, History, Kv, Op, Outcome, Req, Resp, WatchLog,
};

fn kv(key: &str, value: &str, rev: i64, create: i64, version: i64, lease: i64) -> Kv {
    Kv {
        key: key.to_string(),
        value: value.to_string(),
        mod_rev: rev,
        create_rev: create,
        version,
        lease,
    }
}

fn put_ev(k: &Kv, prev: Option<Kv>) -> Event {
    Event {
        rev: k.mod_rev,
        key: k.key.clone(),
        put: true,
        kv: Some(k.clone()),
        prev,
    }
}

fn del_ev(key: &str, rev: i64, prev: Kv) -> Event {
    Event {
        rev,
        key: key.to_string(),
        put: false,
        kv: None,
        prev: Some(prev),
    }
}

fn op(start: u64, end: u64, req: Req, outcome: Outcome) -> Op {
    Op {
        start,
        end,
        req,
        outcome,
    }
}

fn put(key: &str, value: &str, lease: i64) -> Req {
    Req::Put {
        key: key.to_string(),
        value: value.to_string(),
        lease,
    }
}

fn get(key: &str) -> Req {
    Req::Get {
        key: key.to_string(),
        serializable: false,
    }
}

/// A valid history: put a=1 (rev 2), put b=2 with lease 7 (rev 3), read a at 3, a txn that puts
/// a and b (rev 4), delete a (rev 5), lease 7 expires (rev 6: b goes), a read of everything.
/// One reference watcher and one prefix watcher from now (from revision 3).
fn valid() -> History {
    let a2 = kv("ch/a", "v1", 2, 2, 1, 0);
    let b3 = kv("ch/b", "v2", 3, 3, 1, 7);
    let a4 = kv("ch/a", "t1", 4, 2, 2, 0);
    let b4 = kv("ch/b", "t2", 4, 3, 2, 0);
    // The txn's put of b drops the lease: b is no longer attached to 7; use a key of its own.
    let c5 = kv("ch/c", "v3", 5, 5, 1, 7);
    let ops = vec![
        op(
            0,
            10,
            Req::Grant { ttl: 1 },
            Outcome::Ok(Resp::Grant {
                rev: 1,
                id: 7,
                ttl: 1,
            }),
        ),
        op(
            10,
            20,
            put("ch/a", "v1", 0),
            Outcome::Ok(Resp::Put { rev: 2 }),
        ),
        op(
            20,
            30,
            put("ch/b", "v2", 7),
            Outcome::Ok(Resp::Put { rev: 3 }),
        ),
        op(
            30,
            40,
            get("ch/a"),
            Outcome::Ok(Resp::Read {
                rev: 3,
                kvs: vec![a2.clone()],
            }),
        ),
        op(
            40,
            50,
            Req::Txn {
                key: "ch/a".to_string(),
                expect_mod: 2,
                puts: vec![
                    ("ch/a".to_string(), "t1".to_string()),
                    ("ch/b".to_string(), "t2".to_string()),
                ],
            },
            Outcome::Ok(Resp::Txn {
                rev: 4,
                succeeded: true,
                kvs: vec![],
            }),
        ),
        op(
            50,
            60,
            put("ch/c", "v3", 7),
            Outcome::Ok(Resp::Put { rev: 5 }),
        ),
        op(
            60,
            70,
            Req::Delete {
                key: "ch/a".to_string(),
            },
            Outcome::Ok(Resp::Delete { rev: 6, deleted: 1 }),
        ),
        op(
            2_000_000,
            2_000_010,
            Req::List {
                serializable: false,
            },
            Outcome::Ok(Resp::Read {
                rev: 7,
                kvs: vec![b4.clone()],
            }),
        ),
    ];
    let reference = vec![
        Batch {
            at: 15,
            events: vec![put_ev(&a2, None)],
        },
        Batch {
            at: 25,
            events: vec![put_ev(&b3, None)],
        },
        Batch {
            at: 45,
            events: vec![put_ev(&a4, Some(a2.clone())), put_ev(&b4, Some(b3.clone()))],
        },
        Batch {
            at: 55,
            events: vec![put_ev(&c5, None)],
        },
        Batch {
            at: 65,
            events: vec![del_ev("ch/a", 6, a4.clone())],
        },
        // The lease (TTL 1 s, granted at 0) ends at 1.5 s, taking c.
        Batch {
            at: 1_500_000,
            events: vec![del_ev("ch/c", 7, c5.clone())],
        },
    ];
    let specs = default_watchers();
    let from_now = reference
        .iter()
        .filter(|b| b.events[0].rev >= 3)
        .cloned()
        .collect();
    History {
        start_revision: 1,
        final_revision: 7,
        ops,
        watches: vec![
            WatchLog {
                spec: specs[0].clone(),
                from: 1,
                floor: 1,
                batches: reference,
                broken: vec![],
                resumes: 0,
                stream_errors: vec![],
            },
            WatchLog {
                spec: specs[1].clone(),
                from: 3,
                floor: 2,
                batches: from_now,
                broken: vec![],
                resumes: 1,
                stream_errors: vec![],
            },
        ],
    }
}

fn violations(h: &History) -> Vec<String> {
    check(h).violations
}

fn expect(h: &History, needle: &str) {
    let v = violations(h);
    assert!(
        v.iter().any(|l| l.contains(needle)),
        "expected a violation with {needle:?}, got {v:#?}"
    );
}

#[test]
fn a_valid_history_passes() {
    let h = valid();
    let r = check(&h);
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!((r.lost, r.expired, r.revisions), (0, 1, 6));
}

#[test]
fn a_lost_acknowledged_write_is_found() {
    let mut h = valid();
    h.ops.push(op(
        80,
        90,
        put("ch/z", "gone", 0),
        Outcome::Ok(Resp::Put { rev: 8 }),
    ));
    let r = check(&h);
    assert_eq!(r.lost, 1, "{:#?}", r.violations);
    expect(&h, "lost write");
}

#[test]
fn a_stale_read_is_found() {
    let mut h = valid();
    // A read at revision 3 that returns a's value before the put at 2.
    h.ops[3].outcome = Outcome::Ok(Resp::Read {
        rev: 3,
        kvs: vec![],
    });
    expect(&h, "get ch/a at revision 3");
}

#[test]
fn a_read_older_than_a_finished_write_is_found() {
    let mut h = valid();
    // Starts after the txn at revision 4 answered, yet reads at revision 3.
    h.ops.push(op(
        55,
        58,
        get("ch/a"),
        Outcome::Ok(Resp::Read {
            rev: 3,
            kvs: vec![kv("ch/a", "v1", 2, 2, 1, 0)],
        }),
    ));
    expect(&h, "linearizability: a read");
}

#[test]
fn a_write_ordered_before_an_earlier_one_is_found() {
    let mut h = valid();
    // The put at revision 2 claims to have started after the put at 3 finished.
    h.ops[1].start = 35;
    h.ops[1].end = 36;
    expect(&h, "linearizability: a write");
}

#[test]
fn a_refused_operation_that_happened_is_found() {
    let mut h = valid();
    h.ops[2].outcome = Outcome::Refused("requested lease not found".to_string());
    expect(&h, "refused");
}

#[test]
fn a_put_after_its_lease_ended_is_found() {
    let mut h = valid();
    let d8 = kv("ch/d", "late", 8, 8, 1, 7);
    h.ops.push(op(
        1_600_000,
        1_600_010,
        put("ch/d", "late", 7),
        Outcome::Ok(Resp::Put { rev: 8 }),
    ));
    h.watches[0].batches.push(Batch {
        at: 1_600_005,
        events: vec![put_ev(&d8, None)],
    });
    h.final_revision = 8;
    h.watches.truncate(1);
    // The list at 7 is now followed by revision 8: still valid; the put is not.
    expect(&h, "which ended at revision 7");
}

#[test]
fn an_early_lease_expiry_is_found() {
    let mut h = valid();
    h.watches[0].batches[5].at = 900_000;
    h.watches.truncate(1);
    expect(&h, "expired");
}

#[test]
fn watch_faults_are_found() {
    // Out of order.
    let mut h = valid();
    h.watches[0].batches.swap(0, 1);
    expect(&h, "out of order");
    // Delivered twice.
    let mut h = valid();
    let again = h.watches[1].batches[0].clone();
    h.watches[1].batches.push(again);
    expect(&h, "delivered twice");
    // A revision split across two responses.
    let mut h = valid();
    let txn = h.watches[1].batches.remove(1);
    h.watches[1].batches.insert(
        1,
        Batch {
            at: txn.at,
            events: vec![txn.events[0].clone()],
        },
    );
    h.watches[1].batches.insert(
        2,
        Batch {
            at: txn.at,
            events: vec![txn.events[1].clone()],
        },
    );
    expect(&h, "split across responses");
    // An event never delivered to the second watcher.
    let mut h = valid();
    h.watches[1].batches.remove(2);
    expect(&h, "never delivered");
    // A wrong previous pair.
    let mut h = valid();
    h.watches[1].batches[1].events[0].prev = None;
    expect(&h, "revision 4 has");
    // A gap in the reference itself.
    let mut h = valid();
    h.watches[0].batches.remove(3);
    expect(&h, "revisions missing");
    // A cancelled watch.
    let mut h = valid();
    h.watches[1].broken.push("cancelled: compacted".to_string());
    expect(&h, "cancelled");
}

#[test]
fn model_faults_are_found() {
    // A put whose version does not follow.
    let mut h = valid();
    if let Some(kv) = h.watches[0].batches[2].events[0].kv.as_mut() {
        kv.version = 5;
    }
    h.watches.truncate(1);
    expect(&h, "the model says");
    // A txn that ran though its compare failed.
    let mut h = valid();
    if let Req::Txn { expect_mod, .. } = &mut h.ops[4].req {
        *expect_mod = 9;
    }
    expect(&h, "though ch/a's mod revision was 2");
    // A revision nobody made.
    let mut h = valid();
    h.watches[0].batches[4].events[0].key = "ch/b".to_string();
    h.watches.truncate(1);
    let v = violations(&h);
    assert!(!v.is_empty());
}

#[test]
fn lease_faults_around_revokes_are_found() {
    // A revoke answered at revision 7 (the lease ended there, taking c), then a put attached to
    // the revoked lease: etcd refuses such a put.
    let mut h = valid();
    h.ops.push(op(
        1_400_000,
        1_400_010,
        Req::Revoke { id: 7 },
        Outcome::Ok(Resp::Revoke { rev: 7 }),
    ));
    h.ops.push(op(
        1_600_000,
        1_600_010,
        put("ch/d", "late", 7),
        Outcome::Ok(Resp::Put { rev: 8 }),
    ));
    h.watches[0].batches.push(Batch {
        at: 1_600_005,
        events: vec![put_ev(&kv("ch/d", "late", 8, 8, 1, 7), None)],
    });
    h.final_revision = 8;
    h.watches.truncate(1);
    expect(&h, "after its revoke at 7");

    // A revoke refused (the lease was gone) does not excuse an early expiry.
    let mut h = valid();
    h.watches[0].batches[5].at = 900_000;
    h.ops.push(op(
        800_000,
        950_000,
        Req::Revoke { id: 7 },
        Outcome::Refused("requested lease not found".to_string()),
    ));
    h.watches.truncate(1);
    expect(&h, "expired");

    // A revoke answered Ok at another revision than the one its keys went at.
    let mut h = valid();
    h.ops.push(op(
        1_600_000,
        1_600_010,
        Req::Revoke { id: 7 },
        Outcome::Ok(Resp::Revoke { rev: 7 }),
    ));
    h.watches[0].batches[5].at = 1_000_500;
    h.ops.last_mut().expect("op").outcome = Outcome::Ok(Resp::Revoke { rev: 9 });
    h.final_revision = 7;
    expect(&h, "but its keys went at revision 7");
}

#[test]
fn a_watch_from_now_delivering_older_events_is_found() {
    let mut h = valid();
    // The second watcher's first read said revision 3 before it was created: nothing below 4.
    h.watches[1].floor = 4;
    expect(&h, "below where it started");
}

#[test]
fn a_delete_of_unknown_outcome_is_not_taken_for_a_lease_end_a_later_revoke_disproves() {
    // c, the only key of lease 7, goes at revision 7 while a delete of c of unknown outcome is
    // in flight: a delete or the lease's end. A revoke answered Ok at revision 8 (the lease still
    // existed, with no keys left) settles it: the delete happened, the lease ended at 8.
    let mut h = valid();
    let e8 = kv("ch/e", "v4", 8, 8, 1, 0);
    h.ops.push(op(
        1_400_000,
        1_900_000,
        Req::Delete {
            key: "ch/c".to_string(),
        },
        Outcome::Unknown("transport error".to_string()),
    ));
    h.ops.push(op(
        1_600_000,
        1_600_010,
        put("ch/e", "v4", 0),
        Outcome::Ok(Resp::Put { rev: 8 }),
    ));
    h.ops.push(op(
        1_700_000,
        1_700_010,
        Req::Revoke { id: 7 },
        Outcome::Ok(Resp::Revoke { rev: 8 }),
    ));
    h.watches[0].batches.push(Batch {
        at: 1_600_005,
        events: vec![put_ev(&e8, None)],
    });
    if let Some(Outcome::Ok(Resp::Read { rev, kvs })) = h
        .ops
        .iter_mut()
        .find(|o| matches!(o.req, Req::List { .. }))
        .map(|o| &mut o.outcome)
    {
        *rev = 8;
        kvs.push(e8.clone());
    }
    h.final_revision = 8;
    h.watches.truncate(1);
    assert_eq!(violations(&h), Vec::<String>::new());
}
