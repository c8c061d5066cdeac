//! Property test: the store against a naive model that keeps a full copy of the key space at every
//! revision. Random puts, deletes, multi-op transactions and compactions; reads at random revisions
//! (including compacted and future ones) must agree, and so must a store rebuilt from storage.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8, u8),
    Txn(Vec<(u8, u8)>),
    Compact(i64),
    Read(u8, u8, i64),
}

type Snapshot = BTreeMap<Vec<u8>, KeyValue>;

struct Model {
    // states[r] is the key space at revision r; revision 1 is the empty store.
    states: Vec<Snapshot>,
    compacted: i64,
}

impl Model {
    fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }
    fn put_all(&mut self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        let mut next = self.states[self.states.len() - 1].clone();
        let rev = self.current() + 1;
        for (k, v) in kvs {
            let (create, version) = match next.get(k) {
                Some(p) => (p.create_revision, p.version + 1),
                None => (rev, 1),
            };
            next.insert(
                k.clone(),
                KeyValue {
                    key: k.clone(),
                    create_revision: create,
                    mod_revision: rev,
                    version,
                    value: v.clone(),
                    lease: 0,
                },
            );
        }
        self.states.push(next);
    }
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'a' + (k % 8)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(k, e)| Op::Delete(k, e)),
        1 => proptest::collection::vec((any::<u8>(), any::<u8>()), 1..4).prop_map(Op::Txn),
        1 => (0i64..40).prop_map(Op::Compact),
        3 => (any::<u8>(), any::<u8>(), -2i64..45).prop_map(|(k, e, r)| Op::Read(k, e, r)),
    ]
}

fn check_read(mvcc: &Mvcc, model: &Model, k: u8, e: u8, rev: i64) {
    let start = key(k);
    // e picks: single key, a range, or from-key.
    let end = match e % 3 {
        0 => Vec::new(),
        1 => key(k.saturating_add(e % 5)),
        _ => vec![0],
    };
    let req = RangeRequest {
        key: start.clone(),
        range_end: end.clone(),
        revision: rev,
        ..Default::default()
    };
    let got = mvcc.range(&req);
    let cur = model.current();
    if rev > cur {
        assert!(matches!(
            got,
            Err(ReadError::Mvcc(MvccError::FutureRevision))
        ));
        return;
    }
    let at = if rev <= 0 { cur } else { rev };
    if at < model.compacted {
        assert!(matches!(got, Err(ReadError::Mvcc(MvccError::Compacted))));
        return;
    }
    let want: Vec<KeyValue> = model.states[at as usize]
        .values()
        .filter(|kv| in_range(&kv.key, &start, &end))
        .cloned()
        .collect();
    match got {
        Ok(res) => {
            assert_eq!(res.kvs, want, "read [{start:?},{end:?}) at {at}");
            assert_eq!(res.count, want.len() as i64);
            assert_eq!(res.header_revision, cur);
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn mvcc_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mvcc = Mvcc::open(storage.clone()).expect("mvcc");
        let mut model = Model { states: vec![Snapshot::new(), Snapshot::new()], compacted: 0 };
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let mut w = mvcc.writer();
                    let mut t = w.begin();
                    w.put(&mut t, &key(k), vec![v], 0);
                    w.end(t);
                    w.commit().expect("commit");
                    model.put_all(&[(key(k), vec![v])]);
                }
                Op::Txn(kvs) => {
                    let mut dedup: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
                    for (k, v) in kvs { dedup.insert(key(k), vec![v]); }
                    let list: Vec<_> = dedup.into_iter().collect();
                    let mut w = mvcc.writer();
                    let mut t = w.begin();
                    for (k, v) in &list { w.put(&mut t, k, v.clone(), 0); }
                    w.end(t);
                    w.commit().expect("commit");
                    model.put_all(&list);
                }
                Op::Delete(k, e) => {
                    let start = key(k);
                    let end = if e % 2 == 0 { Vec::new() } else { key(k.saturating_add(e % 4)) };
                    let mut w = mvcc.writer();
                    let mut t = w.begin();
                    let (n, _) = w.delete_range(&mut t, &start, &end, false).expect("delete");
                    w.end(t);
                    w.commit().expect("commit");
                    let last = model.states[model.states.len() - 1].clone();
                    let mut next = last.clone();
                    next.retain(|kk, _| !in_range(kk, &start, &end));
                    let removed = last.len() - next.len();
                    prop_assert_eq!(n as usize, removed);
                    if removed > 0 { model.states.push(next); }
                }
                Op::Compact(r) => {
                    let mut w = mvcc.writer();
                    let res = w.compact(r);
                    w.commit().expect("commit");
                    if r <= model.compacted {
                        prop_assert_eq!(res, Err(MvccError::Compacted));
                    } else if r > model.current() {
                        prop_assert_eq!(res, Err(MvccError::FutureRevision));
                    } else {
                        prop_assert_eq!(res, Ok(()));
                        model.compacted = r;
                    }
                }
                Op::Read(k, e, r) => check_read(&mvcc, &model, k, e, r),
            }
        }
        // A store rebuilt from storage answers the same.
        let reopened = Mvcc::open(storage).expect("reopen");
        prop_assert_eq!(reopened.current_revision(), model.current());
        for k in 0..8u8 {
            for rev in [0, model.compacted.max(1), model.current()] {
                check_read(&reopened, &model, k, 2, rev);
            }
        }
    }
}
