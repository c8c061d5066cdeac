//! Unit tests of applying ops against a real RocksDB in a temporary directory: batches, txns,
//! leases and their revisions, alarms, and writes guarded by the auth revision.

use std::sync::Arc;

use super::*;
use crate::lease::ManualClock;
use crate::proto::etcdserverpb::RequestOp;
use crate::storage::Storage;

struct Fixture {
    _dir: tempfile::TempDir,
    mvcc: Arc<Mvcc>,
    leases: Lessor,
    auth: AuthStore,
    alarms: Alarms,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(dir.path()).expect("open");
    let mvcc = Mvcc::open(storage.clone()).expect("mvcc");
    let leases = Lessor::open(storage.clone(), Arc::new(ManualClock::default())).expect("lessor");
    let auth = AuthStore::open(storage.clone(), std::time::Duration::from_secs(300)).expect("auth");
    let alarms = Alarms::open(storage).expect("alarms");
    Fixture {
        _dir: dir,
        mvcc,
        leases,
        auth,
        alarms,
    }
}

impl Fixture {
    fn apply(&self, op: Op) -> Applied {
        let mut w = self.mvcc.writer();
        let tables = Tables {
            leases: &self.leases,
            auth: &self.auth,
            alarms: &self.alarms,
        };
        let got = apply_op(&mut w, tables, &op).expect("apply");
        w.commit().expect("commit");
        got
    }

    fn keys(&self) -> Vec<String> {
        let r = self
            .mvcc
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .expect("range");
        r.kvs
            .iter()
            .map(|kv| format!("{}@{}", String::from_utf8_lossy(&kv.key), kv.lease))
            .collect()
    }
}

fn put(key: &str, lease: i64) -> Op {
    Op::Put(Pb(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    }))
}

fn grant(id: i64, ttl: i64) -> Op {
    Op::LeaseGrant(Pb(LeaseGrantRequest { id, ttl }))
}

fn revoke(id: i64) -> Op {
    Op::LeaseRevoke(Pb(LeaseRevokeRequest { id }))
}

fn alarm(action: AlarmAction, alarm: AlarmType) -> Op {
    Op::Alarm(Pb(AlarmRequest {
        action: action as i32,
        member_id: 7,
        alarm: alarm as i32,
    }))
}

#[test]
fn nospace_refuses_growth_until_disarmed_and_corrupt_refuses_everything() {
    let f = fixture();
    let raised = f.apply(alarm(AlarmAction::Activate, AlarmType::Nospace));
    let Applied::Alarm(resp) = raised else {
        panic!("unexpected {raised:?}")
    };
    assert_eq!(resp.0.alarms.len(), 1);
    assert_eq!(f.alarms.list().len(), 1);
    let nospace = Applied::Failed(AlarmRefusal::NoSpace.into());
    assert_eq!(f.apply(put("a", 0)), nospace);
    assert_eq!(f.apply(grant(5, 60)), nospace);
    let txn_put = Op::Txn(Pb(TxnRequest {
        failure: vec![RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"a".to_vec(),
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            })),
        }],
        ..Default::default()
    }));
    assert_eq!(f.apply(txn_put.clone()), nospace);
    // Deletes and compactions still apply, so space can be reclaimed.
    assert!(matches!(
        f.apply(Op::DeleteRange(Pb(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        }))),
        Applied::DeleteRange(_)
    ));
    // The alarm survives a reload from storage.
    f.alarms.load().expect("load");
    assert_eq!(f.alarms.list().len(), 1);
    f.apply(alarm(AlarmAction::Deactivate, AlarmType::Nospace));
    assert!(f.alarms.list().is_empty());
    assert!(matches!(f.apply(put("a", 0)), Applied::Put(_)));
    assert!(matches!(f.apply(txn_put), Applied::Txn(_)));

    f.apply(alarm(AlarmAction::Activate, AlarmType::Corrupt));
    let corrupt = Applied::Failed(AlarmRefusal::Corrupt.into());
    assert_eq!(f.apply(put("b", 0)), corrupt);
    assert_eq!(f.apply(revoke(5)), corrupt);
}

#[test]
fn a_batch_applies_each_op_in_order_with_its_own_revision_and_result() {
    let f = fixture();
    let got = f.apply(Op::Batch(vec![put("a", 0), put("b", 7), put("c", 0)]));
    let Applied::Batch(results) = got else {
        panic!("expected a batch result, got {got:?}");
    };
    let revs: Vec<Option<i64>> = results
        .iter()
        .map(|r| match r {
            Applied::Put(Pb(p)) => p.header.as_ref().map(|h| h.revision),
            _ => None,
        })
        .collect();
    assert_eq!(revs, [Some(2), None, Some(3)]);
    assert_eq!(results[1], Applied::Failed(LeaseError::NotFound.into()));
    assert_eq!(f.mvcc.current_revision(), 3);
}

#[test]
fn a_revoke_deletes_exactly_the_attached_keys_in_one_revision() {
    let f = fixture();
    assert!(matches!(
        f.apply(grant(5, 60)),
        Applied::LeaseGranted { id: 5, ttl: 60, .. }
    ));
    assert_eq!(
        f.apply(grant(5, 10)),
        Applied::Failed(LeaseError::Exists.into())
    );
    for op in [put("a", 5), put("b", 5), put("c", 5), put("d", 0)] {
        f.apply(op);
    }
    // Re-put without a lease detaches; ignore_lease keeps the attachment.
    f.apply(put("c", 0));
    f.apply(Op::Put(Pb(PutRequest {
        key: b"a".to_vec(),
        value: b"w".to_vec(),
        ignore_lease: true,
        ..Default::default()
    })));
    assert_eq!(f.leases.keys(5), Some(vec![b"a".to_vec(), b"b".to_vec()]));
    let before = f.mvcc.current_revision();
    assert_eq!(
        f.apply(revoke(5)),
        Applied::LeaseRevoked {
            revision: before + 1
        }
    );
    assert_eq!(f.keys(), ["c@0", "d@0"]);
    assert!(!f.leases.exists(5));
    assert_eq!(
        f.apply(revoke(5)),
        Applied::Failed(LeaseError::NotFound.into())
    );
    // A revoke with no keys does not raise the revision.
    f.apply(grant(6, 60));
    let rev = f.mvcc.current_revision();
    assert_eq!(f.apply(revoke(6)), Applied::LeaseRevoked { revision: rev });
}

#[test]
fn a_txn_put_with_an_unknown_lease_changes_nothing() {
    let f = fixture();
    let txn = Op::Txn(Pb(TxnRequest {
        success: vec![
            crate::proto::etcdserverpb::RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"x".to_vec(),
                    ..Default::default()
                })),
            },
            crate::proto::etcdserverpb::RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"y".to_vec(),
                    lease: 99,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    }));
    assert_eq!(f.apply(txn), Applied::Failed(LeaseError::NotFound.into()));
    assert!(f.keys().is_empty());
}

#[test]
fn grant_put_and_revoke_in_one_batch_see_each_other_and_restore_rebuilds_keys() {
    let f = fixture();
    f.apply(Op::Batch(vec![grant(1, 60), put("k", 1), put("j", 1)]));
    f.apply(Op::Batch(vec![grant(2, 60), put("m", 2), revoke(1)]));
    assert_eq!(f.keys(), ["m@2"]);
    // Reload without keys, then rebuild the attachments from the store.
    f.leases.load([]).expect("load");
    assert_eq!(f.leases.keys(2), Some(vec![]));
    restore_leases(&f.leases, &f.mvcc).expect("restore");
    assert_eq!(f.leases.keys(2), Some(vec![b"m".to_vec()]));
    assert_eq!(f.leases.leases(), vec![2]);
}

#[test]
fn a_guarded_write_applies_only_at_the_auth_revision_it_was_checked_at() {
    let f = fixture();
    let seen_while_off = f.auth.revision();
    for cmd in [
        AuthCmd::RoleAdd {
            name: "root".to_string(),
        },
        AuthCmd::UserAdd {
            name: "root".to_string(),
            hashed_password: "$2b$04$x".to_string(),
            no_password: false,
        },
        AuthCmd::UserGrantRole {
            user: "root".to_string(),
            role: "root".to_string(),
        },
    ] {
        assert!(matches!(
            f.apply(Op::Auth(cmd)),
            Applied::AuthChanged { .. }
        ));
    }
    let guarded = |rev: u64, checked: bool, key: &str| Op::Guarded {
        auth_revision: rev,
        checked,
        user: if checked {
            "root".to_string()
        } else {
            String::new()
        },
        op: Box::new(put(key, 0)),
    };
    // Auth is still off: the revision moved, but nothing is checked.
    assert!(matches!(
        f.apply(guarded(seen_while_off, false, "a")),
        Applied::Put(_)
    ));
    assert!(matches!(
        f.apply(Op::Auth(AuthCmd::Enable)),
        Applied::AuthChanged { .. }
    ));
    // A write taken without a user before `auth enable` committed is refused.
    assert_eq!(
        f.apply(guarded(f.auth.revision(), false, "b")),
        Applied::Failed(AuthError::UserEmpty.into())
    );
    // A write checked at an older auth revision is refused.
    assert_eq!(
        f.apply(guarded(seen_while_off, true, "b")),
        Applied::Failed(AuthError::OldRevision.into())
    );
    assert!(matches!(
        f.apply(guarded(f.auth.revision(), true, "c")),
        Applied::Put(_)
    ));
    assert_eq!(f.keys(), ["a@0", "c@0"]);
}

#[test]
fn a_guarded_lease_revoke_needs_write_on_the_keys_attached_when_it_applies() {
    let f = fixture();
    let cmds = [
        AuthCmd::RoleAdd {
            name: "root".to_string(),
        },
        AuthCmd::RoleAdd {
            name: "a-writer".to_string(),
        },
        AuthCmd::RoleGrantPermission {
            name: "a-writer".to_string(),
            perm_type: 1,
            key: b"a".to_vec(),
            range_end: Vec::new(),
        },
        AuthCmd::UserAdd {
            name: "root".to_string(),
            hashed_password: "$2b$04$x".to_string(),
            no_password: false,
        },
        AuthCmd::UserAdd {
            name: "u".to_string(),
            hashed_password: "$2b$04$x".to_string(),
            no_password: false,
        },
        AuthCmd::UserGrantRole {
            user: "root".to_string(),
            role: "root".to_string(),
        },
        AuthCmd::UserGrantRole {
            user: "u".to_string(),
            role: "a-writer".to_string(),
        },
        AuthCmd::Enable,
    ];
    for cmd in cmds {
        assert!(matches!(
            f.apply(Op::Auth(cmd)),
            Applied::AuthChanged { .. }
        ));
    }
    f.apply(grant(7, 60));
    f.apply(put("a", 7));
    let revoke_by_u = || Op::Guarded {
        auth_revision: f.auth.revision(),
        checked: true,
        user: "u".to_string(),
        op: Box::new(revoke(7)),
    };
    // Someone attached a key `u` may not write after `u`'s request was checked.
    f.apply(put("z", 7));
    assert_eq!(
        f.apply(revoke_by_u()),
        Applied::Failed(AuthError::PermissionDenied.into())
    );
    assert_eq!(f.keys(), ["a@7", "z@7"]);
    f.apply(put("z", 0));
    assert!(matches!(
        f.apply(revoke_by_u()),
        Applied::LeaseRevoked { .. }
    ));
    assert_eq!(f.keys(), ["z@0"]);
}

/// An entry's buffer is sized from `size_hint`: it must cover what bincode writes (a shortfall
/// copies the whole entry, values and all, into a buffer twice as large).
#[test]
fn size_hint_covers_the_log_encoding() {
    let put = |n: usize| {
        Op::Put(Pb(PutRequest {
            key: format!("key-{n}").into_bytes(),
            value: vec![7u8; n * 100],
            ..Default::default()
        }))
    };
    let ops = vec![
        put(1),
        Op::Batch((0..50).map(put).collect()),
        Op::Guarded {
            auth_revision: 9,
            checked: true,
            user: "alice".into(),
            op: Box::new(Op::Batch((0..10).map(put).collect())),
        },
        Op::Downgrade {
            enabled: true,
            target: "3.5.0".into(),
        },
        Op::Compact(Pb(CompactionRequest {
            revision: 5,
            physical: true,
        })),
    ];
    for op in ops {
        let size = bincode::serialized_size(&op).expect("size") as usize;
        assert!(
            size <= op.size_hint(),
            "{size} > {} for {op:?}",
            op.size_hint()
        );
        assert!(op.size_hint() <= size + 64 * 12, "hint far above {size}");
    }
}
