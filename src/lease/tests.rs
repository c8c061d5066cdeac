//! The lease table driven by a manual clock: no test here waits for real time.

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Storage,
    clock: Arc<ManualClock>,
    lessor: Lessor,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(dir.path()).expect("open storage");
    let clock = Arc::new(ManualClock::default());
    let lessor = Lessor::open(storage.clone(), clock.clone()).expect("open lessor");
    Fixture {
        _dir: dir,
        storage,
        clock,
        lessor,
    }
}

impl Fixture {
    fn grant(&self, id: i64, ttl: i64) -> Result<(), LeaseError> {
        let mut b = Batch::new();
        let r = self.lessor.grant(&mut b, id, ttl);
        self.storage.write(b, false).expect("write");
        r
    }

    fn checkpoint(&self, id: i64, remaining: i64) {
        let mut b = Batch::new();
        self.lessor.checkpoint(&mut b, id, remaining);
        self.storage.write(b, false).expect("write");
    }

    fn reopen(&self) -> Lessor {
        Lessor::open(self.storage.clone(), self.clock.clone()).expect("reopen")
    }
}

const S: Duration = Duration::from_secs(1);

#[test]
fn grant_refuses_an_existing_id_and_keeps_the_first() {
    let f = fixture();
    f.grant(7, 10).expect("first grant");
    assert_eq!(f.grant(7, 20), Err(LeaseError::Exists));
    f.lessor.promote(Duration::ZERO, 1);
    let ttl = f.lessor.time_to_live(7, false, 1).expect("primary");
    assert_eq!(ttl.map(|t| t.granted), Some(10));
}

#[test]
fn only_a_primary_reports_expiry_and_renewal_pushes_it_back() {
    let f = fixture();
    f.grant(1, 5).expect("grant");
    f.clock.advance(60 * S);
    assert!(
        f.lessor.expired(10, 1).is_empty(),
        "a follower never expires"
    );
    assert_eq!(f.lessor.renew(1, 1), Renewal::NotPrimary);

    f.lessor.promote(S, 1);
    f.clock.advance(5 * S);
    assert!(
        f.lessor.expired(10, 1).is_empty(),
        "the extension is honoured"
    );
    assert_eq!(
        f.lessor.renew(1, 1),
        Renewal::Renewed {
            ttl: 5,
            clear_checkpoint: false
        }
    );
    f.clock.advance(4 * S);
    assert!(f.lessor.expired(10, 1).is_empty());
    f.clock.advance(S);
    assert_eq!(f.lessor.expired(10, 1), vec![1]);
    assert_eq!(
        f.lessor.renew(1, 1),
        Renewal::Expired,
        "an expired lease waits for its revoke"
    );
    // Reported once; again only after the retry interval if its revoke was lost.
    assert!(f.lessor.expired(10, 1).is_empty());
    f.clock.advance(EXPIRED_RETRY);
    assert_eq!(f.lessor.expired(10, 1), vec![1]);
}

#[test]
fn demotion_drops_deadlines_and_promotion_restores_the_full_ttl() {
    let f = fixture();
    f.lessor.promote(Duration::ZERO, 1);
    f.grant(1, 10).expect("grant");
    f.clock.advance(8 * S);
    f.lessor.demote();
    f.clock.advance(100 * S);
    assert!(f.lessor.expired(10, 1).is_empty());
    assert!(f.lessor.time_to_live(1, false, 1).is_err());
    f.lessor.promote(2 * S, 1);
    let t = f
        .lessor
        .time_to_live(1, false, 1)
        .expect("primary")
        .expect("lease");
    assert_eq!((t.remaining, t.granted), (12, 10));
}

#[test]
fn a_checkpointed_remaining_ttl_survives_restart_and_is_cleared_by_renewal() {
    let f = fixture();
    f.grant(3, 100).expect("grant");
    f.checkpoint(3, 40);
    let again = f.reopen();
    again.promote(Duration::ZERO, 1);
    let t = again
        .time_to_live(3, false, 1)
        .expect("primary")
        .expect("lease");
    assert_eq!((t.remaining, t.granted), (40, 100));
    assert_eq!(
        again.renew(3, 1),
        Renewal::Renewed {
            ttl: 100,
            clear_checkpoint: true
        }
    );
}

#[test]
fn keys_follow_puts_and_deletes_and_rebuild_on_load() {
    let f = fixture();
    f.grant(1, 10).expect("grant");
    f.grant(2, 10).expect("grant");
    f.lessor.track([
        (&b"a"[..], Some(1)),
        (&b"b"[..], Some(1)),
        (&b"c"[..], Some(2)),
    ]);
    // Re-put b under lease 2, put c without a lease, delete a.
    f.lessor.track([
        (&b"b"[..], Some(2)),
        (&b"c"[..], Some(0)),
        (&b"a"[..], None),
    ]);
    assert_eq!(f.lessor.keys(1), Some(vec![]));
    assert_eq!(f.lessor.keys(2), Some(vec![b"b".to_vec()]));
    assert_eq!(f.lessor.keys(9), None);

    let again = f.reopen();
    again
        .load([(b"b".to_vec(), 2), (b"z".to_vec(), 9)])
        .expect("load");
    assert_eq!(again.keys(2), Some(vec![b"b".to_vec()]));
    assert_eq!(again.leases(), vec![1, 2]);
}

#[test]
fn removal_deletes_the_row_and_wakes_waiters() {
    let f = fixture();
    f.grant(5, 10).expect("grant");
    let mut changes = f.lessor.changes();
    changes.borrow_and_update();
    let mut b = Batch::new();
    f.lessor.remove(&mut b, 5).expect("remove");
    f.storage.write(b, false).expect("write");
    assert!(changes.has_changed().expect("open"));
    assert!(!f.lessor.exists(5));
    assert!(f.reopen().is_empty());
    let mut b = Batch::new();
    assert_eq!(f.lessor.remove(&mut b, 5), Err(LeaseError::NotFound));
}

#[test]
fn expiry_is_reported_in_deadline_order_and_bounded_per_call() {
    let f = fixture();
    f.lessor.promote(Duration::ZERO, 1);
    for (id, ttl) in [(10, 3), (11, 1), (12, 2), (13, 50)] {
        f.grant(id, ttl).expect("grant");
    }
    f.clock.advance(3 * S);
    assert_eq!(f.lessor.expired(2, 1), vec![11, 12]);
    assert_eq!(f.lessor.expired(2, 1), vec![10]);
    assert!(f.lessor.expired(2, 1).is_empty());
}

#[test]
fn a_mass_promotion_spreads_expiries_below_the_revoke_rate() {
    let f = fixture();
    let n = 2 * REVOKE_RATE as i64;
    for id in 1..=n {
        f.grant(id, 10).expect("grant");
    }
    f.lessor.promote(Duration::ZERO, 1);
    f.clock.advance(10 * S);
    let mut seen: BTreeSet<i64> = f.lessor.expired(usize::MAX, 1).into_iter().collect();
    assert!(
        seen.len() <= REVOKE_RATE * 3 / 4,
        "{} leases expire in the first second",
        seen.len()
    );
    f.clock.advance(10 * S);
    seen.extend(f.lessor.expired(usize::MAX, 1));
    assert_eq!(seen.len(), n as usize, "every lease still expires");
}

#[test]
fn checkpoints_cover_long_leases_only_and_round_up() {
    let f = fixture();
    f.lessor.promote(Duration::ZERO, 1);
    f.grant(1, 600).expect("grant");
    f.grant(2, 5).expect("grant");
    f.clock.advance(Duration::from_millis(100_500));
    // Just granted: its whole TTL is left, nothing to checkpoint (as etcd).
    f.grant(3, 600).expect("grant");
    assert_eq!(
        f.lessor.checkpoints(Duration::from_secs(300), 1),
        vec![(1, 500)]
    );
}

#[test]
fn a_lessor_answers_only_for_the_term_it_was_promoted_in() {
    let f = fixture();
    f.grant(1, 5).expect("grant");
    f.lessor.promote(Duration::ZERO, 3);
    assert_eq!(f.lessor.renew(1, 4), Renewal::NotPrimary);
    assert_eq!(f.lessor.time_to_live(1, false, 2), Err(NotPrimary));
    f.clock.advance(10 * S);
    assert!(
        f.lessor.expired(10, 4).is_empty(),
        "a leader of a later term never acts on stale deadlines"
    );
    assert_eq!(f.lessor.expired(10, 3), vec![1]);
}
